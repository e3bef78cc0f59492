"""The five label-free gates, one function each: class shift, confidence shift, input drift, shadow
agreement and shadow failures. `edgekit.rollout.label_free` explains the statistics and thresholds in plain
words and is the public entry point; this module turns evidence into `DecisionRecord`s.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from edgekit.rollout._label_free_stats import (
    MAX_SET_CLASSES,
    ArmSample,
    Bound,
    Moments,
    SetSample,
    cs_radius,
    robust_bound,
)
from edgekit.rollout._types import DecisionRecord, GateConfig, MetricOutcome
from edgekit.rollout.health_sketches import PSI_FLOOR

if TYPE_CHECKING:
    from edgekit.rollout.label_free import ArmEvidence, LabelFreeEvidence

__all__ = [
    "Judge",
    "class_shift",
    "confidence_shift",
    "input_drift",
    "rec",
    "shadow_agreement",
    "shadow_failures",
]


def rec(
    metric: str,
    outcome: MetricOutcome,
    detail: str,
    *,
    t: float | None = None,
    c: float | None = None,
    n: float = 0,
    stat: float | None = None,
    threshold: float | None = None,
) -> DecisionRecord:
    """A record; non-finite values stay as they are (`StageDecision.to_dict` turns them into null)."""
    return DecisionRecord(metric, t, c, int(n), stat, threshold, outcome, detail)


@dataclass(frozen=True)
class Judge:
    """What every gate needs: the config and whether this is the last stage (no control arm)."""

    config: GateConfig
    final: bool

    @property
    def k(self) -> int:
        return self.config.robust_devices

    def radius(self, var: np.ndarray, n: np.ndarray, alpha: float) -> np.ndarray:
        return cs_radius(var, n, alpha, self.config.label_free_tuned_devices)

    def enough(self, *arms: ArmSample) -> tuple[bool, int]:
        """Whether every arm keeps `min_devices_per_arm` devices once its K most influential are gone."""
        least = min(a.devices for a in arms) - self.k
        return least >= self.config.min_devices_per_arm, least

    def need(self, metric: str, least: int, threshold: float) -> DecisionRecord:
        detail = (
            f"{max(least, 0)} devices per arm report it{self.k_words()}, "
            f"need {self.config.min_devices_per_arm} (minimum exposure not reached)"
        )
        return rec(metric, "hold", detail, n=max(least, 0), threshold=threshold)

    def k_words(self) -> str:
        return f", without the {self.k} most influential devices per arm" if self.k else ""


def _presence(
    metric: str, what: str, t: ArmSample | None, c: ArmSample | None, needs_control: bool, final: bool
) -> DecisionRecord | None:
    """The record of a gate that cannot be judged (no data, one arm only, no control arm), else None."""
    if final and needs_control:
        return rec(metric, "pass", f"not judged: the last stage has no control arm to compare {what} with")
    if t is None and (c is None or final):
        return rec(metric, "pass", f"not judged: no {what} reported")
    if not final and (t is None) != (c is None):
        side, other = ("treatment", "control") if t is not None else ("control", "treatment")
        return rec(metric, "hold", f"{side} devices report {what} and {other} devices none: fail closed")
    return None


def _decide(
    metric: str,
    what: str,
    value: float,
    bounds: tuple[float, float],
    limit: float,
    judge: Judge,
    *,
    n: int,
    t: float | None = None,
    c: float | None = None,
    pass_limit: float | None = None,
) -> DecisionRecord:
    """Rollback when the lower bound is above `limit`, pass when the upper bound is within `pass_limit`
    (default `limit`), else hold."""
    low, high = bounds
    ok = limit if pass_limit is None else pass_limit
    k = judge.k_words()
    if low > limit:
        detail = f"{what} {value:.3f} > {limit:g} (lower bound {low:.3f}{k})"
        return rec(metric, "rollback", detail, t=t, c=c, n=n, stat=low, threshold=limit)
    if high <= ok:
        detail = f"{what} {value:.3f}, within {ok:g} (upper bound {high:.3f}{k})"
        return rec(metric, "pass", detail, t=t, c=c, n=n, stat=high, threshold=ok)
    span = f"bounds {low:.3f} .. {high:.3f}" if np.isfinite(low) else f"upper bound {high:.3f}"
    detail = f"{what} {value:.3f}, not yet shown within {ok:g} ({span}{k})"
    return rec(metric, "hold", detail, t=t, c=c, n=n, stat=high, threshold=ok)


def _mean(arm: ArmSample) -> np.ndarray:
    return arm.moments()[0][0]


def _robust(
    t: ArmSample, c: ArmSample | None, make: Callable[[float, bool], Bound], judge: Judge
) -> tuple[float, float]:
    """(lower bound at the rollback alpha, upper bound at the pass alpha), each after removing the K
    devices per arm that most weaken that case."""
    cfg = judge.config
    low = robust_bound(t, c, make(cfg.label_free_alpha, True), judge.k, "min")
    high = robust_bound(t, c, make(cfg.label_free_pass_alpha, False), judge.k, "max")
    return low, high


def _difference(judge: Judge) -> Callable[[float, bool], Bound]:
    """Bounds on (first arm mean - second arm mean) of a single value."""

    def make(alpha: float, lower: bool) -> Bound:
        def bound(a: Moments, b: Moments | None) -> np.ndarray:
            assert b is not None
            d = (a[0] - b[0])[..., 0]
            r = judge.radius((a[1] + b[1])[..., 0], np.minimum(a[2], b[2]), alpha)
            return d - r if lower else d + r

        return bound

    return make


# ---- class shift -------------------------------------------------------------------------------------
def _pad(a: ArmSample, width: int) -> ArmSample:
    if a.y.shape[1] >= width:
        return a
    return ArmSample(np.pad(a.y, ((0, 0), (0, width - a.y.shape[1]))), a.w, a.share)


def class_shift(ev: LabelFreeEvidence, judge: Judge) -> DecisionRecord:
    """Total variation distance between the arms' predicted-class shares."""
    metric, limit = "class_shift", judge.config.max_class_shift
    t = ArmSample.of(ev.treatment.classes, ev.treatment.weights)
    c = ArmSample.of(ev.control.classes, ev.control.weights)
    absent = _presence(metric, "predicted classes", t, c, True, judge.final)
    if absent is not None:
        return absent
    assert t is not None and c is not None
    width = max(t.y.shape[1], c.y.shape[1])
    t, c = _pad(t, width), _pad(c, width)
    ok, least = judge.enough(t, c)
    if not ok:
        return judge.need(metric, least, limit)

    def make(alpha: float, lower: bool) -> Bound:
        per_class = alpha / width  # Bonferroni across classes

        def bound(a: Moments, b: Moments | None) -> np.ndarray:
            assert b is not None
            d = np.abs(a[0] - b[0])
            r = judge.radius(a[1] + b[1], np.minimum(a[2], b[2])[..., None], per_class)
            return 0.5 * (np.maximum(d - r, 0.0) if lower else d + r).sum(axis=-1)

        return bound

    def by_sets(alpha: float, lower: bool) -> Bound:
        # TVD = the largest |difference| of the share of any set of classes; Bonferroni across the sets.
        def bound(a: Moments, b: Moments | None) -> np.ndarray:
            assert b is not None and not lower
            d = np.abs(a[0] - b[0])
            r = judge.radius(a[1] + b[1], np.minimum(a[2], b[2])[..., None], alpha / d.shape[-1])
            return np.max(d + r, axis=-1)

        return bound

    cfg = judge.config
    low = robust_bound(t, c, make(cfg.label_free_alpha, True), judge.k, "min")
    if 2 <= width <= MAX_SET_CLASSES:
        high = robust_bound(
            SetSample(t.y, t.w),
            SetSample(c.y, c.w),
            by_sets(cfg.label_free_pass_alpha, False),
            judge.k,
            "max",
        )
    else:
        high = robust_bound(t, c, make(cfg.label_free_pass_alpha, False), judge.k, "max")
    mt, mc = _mean(t), _mean(c)
    shift = 0.5 * float(np.abs(mt - mc).sum())
    top = int(np.argmax(np.abs(mt - mc)))
    what = (
        f"treatment predicts class {top} on {100 * mt[top]:.1f}% of inputs vs {100 * mc[top]:.1f}% in "
        f"control ({t.devices} vs {c.devices} devices): total variation over {width} classes"
    )
    return _decide(metric, what, shift, (low, high), limit, judge, n=t.devices + c.devices)


# ---- confidence shift ----------------------------------------------------------------------------------
def confidence_shift(ev: LabelFreeEvidence, judge: Judge) -> DecisionRecord:
    """Drop of the mean top-1 confidence (or detection score): control minus treatment."""
    metric, limit = "confidence_shift", judge.config.max_confidence_drop
    t = ArmSample.of(ev.treatment.confidence, ev.treatment.weights, share=False)
    c = ArmSample.of(ev.control.confidence, ev.control.weights, share=False)
    absent = _presence(metric, "confidence", t, c, True, judge.final)
    if absent is not None:
        return absent
    assert t is not None and c is not None
    ok, least = judge.enough(t, c)
    if not ok:
        return judge.need(metric, least, limit)
    mt, mc = float(_mean(t)[0]), float(_mean(c)[0])
    what = f"mean confidence treatment {mt:.3f} vs control {mc:.3f}: drop"
    bounds = _robust(c, t, _difference(judge), judge)  # control first: the bound is on control - treatment
    return _decide(metric, what, mc - mt, bounds, limit, judge, n=t.devices + c.devices, t=mt, c=mc)


# ---- shadow ------------------------------------------------------------------------------------------
def _disagreement(arm: ArmEvidence) -> ArmSample | None:
    if arm.shadow_compared is None or arm.shadow_agreed is None:
        return None
    compared = np.asarray(arm.shadow_compared, np.float64)
    agreed = np.minimum(np.asarray(arm.shadow_agreed, np.float64), compared)
    share = 1.0 - agreed / np.where(compared > 0, compared, 1.0)
    return ArmSample.of(share, compared)


def _failures(arm: ArmEvidence) -> ArmSample | None:
    if arm.shadow_compared is None or arm.shadow_failures is None:
        return None
    failed = np.asarray(arm.shadow_failures, np.float64)
    runs = np.asarray(arm.shadow_compared, np.float64) + failed
    return ArmSample.of(failed / np.where(runs > 0, runs, 1.0), runs)


def shadow_agreement(ev: LabelFreeEvidence, judge: Judge) -> DecisionRecord:
    """The candidate's disagreement with the served baseline, in excess of the baseline's own."""
    metric, limit = "shadow_agreement", judge.config.max_shadow_disagreement_excess
    t, c = _disagreement(ev.treatment), _disagreement(ev.control)
    absent = _presence(metric, "shadow comparisons", t, c, True, judge.final)
    if absent is not None:
        return absent
    assert t is not None and c is not None
    ok, least = judge.enough(t, c)
    if not ok:
        return judge.need(metric, least, limit)
    dt, dc = float(_mean(t)[0]), float(_mean(c)[0])
    what = (
        f"the candidate disagrees with the served model on {100 * dt:.2f}% of shadowed inputs, the baseline "
        f"with itself on {100 * dc:.2f}%: excess disagreement"
    )
    bounds = _robust(t, c, _difference(judge), judge)
    return _decide(metric, what, dt - dc, bounds, limit, judge, n=t.devices + c.devices, t=dt, c=dc)


def shadow_failures(ev: LabelFreeEvidence, judge: Judge) -> DecisionRecord:
    """Guardrail on the treatment alone: the share of shadow runs that failed or timed out."""
    metric, limit = "shadow_failures", judge.config.max_shadow_failure_share
    t, c = _failures(ev.treatment), _failures(ev.control)
    absent = _presence(metric, "shadow runs", t, c, False, judge.final)
    if absent is not None:
        return absent
    assert t is not None
    ok, least = judge.enough(t)
    if not ok:
        return judge.need(metric, least, limit)

    def make(alpha: float, lower: bool) -> Bound:
        def bound(a: Moments, b: Moments | None) -> np.ndarray:
            r = judge.radius(a[1][..., 0], a[2], alpha)
            return a[0][..., 0] - r if lower else a[0][..., 0] + r

        return bound

    ft = float(_mean(t)[0])
    fc = None if c is None else float(_mean(c)[0])
    what = f"{100 * ft:.2f}% of the candidate's shadow runs failed or timed out"
    if fc is not None:
        what += f" (the control's self-shadow runs {100 * fc:.2f}%)"
    what += ": failure share"
    return _decide(metric, what, ft, _robust(t, None, make, judge), limit, judge, n=t.devices, t=ft, c=fc)


# ---- input drift ---------------------------------------------------------------------------------------
def _psi_terms(o: np.ndarray, e: np.ndarray) -> np.ndarray:
    """Per-bin PSI terms (o - e) ln(o / e), shares floored like `population_stability`."""
    o, e = np.maximum(o, PSI_FLOOR), np.maximum(e, PSI_FLOOR)
    return (o - e) * np.log(o / e)


@dataclass(frozen=True)
class _Channels:
    """The judged channels of one arm: columns per bin, where each channel starts, its reference."""

    sample: ArmSample
    expected: np.ndarray  # [columns]
    starts: np.ndarray  # [channels] first column of each channel
    names: list[str]  # "input[channel]" per channel


def _channels(arm: ArmEvidence, reference: Mapping[str, np.ndarray], inputs: list[str]) -> _Channels | None:
    columns, expected, starts, names = [], [], [], []
    at = 0
    for name in inputs:
        shares = np.asarray(arm.drift[name], np.float64)
        ref = np.asarray(reference[name], np.float64)
        n, channels, bins = shares.shape
        columns.append(shares.reshape(n, channels * bins))
        expected.append(ref.reshape(-1))
        for ch in range(channels):
            starts.append(at + ch * bins)
            names.append(f"{name}[{ch}]" if channels > 1 else name)
        at += channels * bins
    sample = ArmSample.of(np.concatenate(columns, axis=1), arm.weights)
    if sample is None:
        return None
    return _Channels(sample, np.concatenate(expected), np.array(starts), names)


def _psi_bounds(
    arm: _Channels, m: np.ndarray, v: np.ndarray, n: np.ndarray, alpha: float, judge: Judge
) -> tuple[np.ndarray, np.ndarray]:
    """Per channel (lower, upper) PSI over every bin share within its confidence interval (a box: PSI is
    convex in each share, so its minimum is at the reference share clipped into the box and its maximum
    at a corner), [batch, channels] each."""
    r = judge.radius(v, n[..., None], alpha)
    lo, hi = np.clip(m - r, 0.0, 1.0), np.clip(m + r, 0.0, 1.0)
    e = np.broadcast_to(arm.expected, m.shape)
    low = _psi_terms(np.clip(e, lo, hi), e)
    high = np.maximum(_psi_terms(lo, e), _psi_terms(hi, e))
    return np.add.reduceat(low, arm.starts, axis=-1), np.add.reduceat(high, arm.starts, axis=-1)


def _psi_point(arm: _Channels) -> tuple[np.ndarray, np.ndarray]:
    """Per channel: PSI of the arm's weighted shares, and the same less its small-sample bias (the
    sum over bins of var(share) / share, the expected PSI of pure sampling noise; (bins - 1) / n for
    n independent elements)."""
    m, v, _ = arm.sample.moments()
    psi = np.add.reduceat(_psi_terms(m[0], arm.expected), arm.starts)
    bias = np.add.reduceat(v[0] / np.maximum(m[0], PSI_FLOOR), arm.starts)
    return psi, psi - bias


def _has(arm: ArmEvidence, reference: Mapping[str, np.ndarray], name: str) -> bool:
    """The arm reports the input's bins in the shape of its reference profile, for some device."""
    shares = arm.drift.get(name)
    ref = reference.get(name)
    if shares is None or ref is None or np.asarray(shares).shape[1:] != np.asarray(ref).shape:
        return False
    return ArmSample.of(np.asarray(shares).reshape(len(shares), -1), arm.weights) is not None


def input_drift(ev: LabelFreeEvidence, judge: Judge, alerts: list[str]) -> DecisionRecord:
    """Population stability per input channel: the treatment's against the target's reference profile, in
    excess of the control's against the baseline's (a world that drifts for both arms is not the release)."""
    metric, cfg = "input_drift", judge.config
    ref_t, ref_c = ev.reference_treatment, ev.reference_control
    t_inputs = sorted(name for name in ev.treatment.drift if _has(ev.treatment, ref_t, name))
    c_inputs = [] if judge.final else sorted(n for n in ev.control.drift if _has(ev.control, ref_c, n))
    missing = (
        []
        if judge.final
        else sorted(
            {n for n in ref_c if n not in c_inputs and n in t_inputs}
            | {n for n in ref_t if n not in t_inputs and n in c_inputs}
        )
    )
    if missing:
        detail = f"input bins of {', '.join(missing)} reported by one arm only: fail closed"
        return rec(metric, "hold", detail, threshold=cfg.psi_pass)
    if not t_inputs:
        why = "no input bins against a reference profile reported"
        if ev.treatment.drift and not ref_t:
            why = "the release carries no reference profile (health.json) to measure input drift against"
        return rec(metric, "pass", f"not judged: {why}", threshold=cfg.psi_pass)
    paired = [
        n
        for n in t_inputs
        if n in c_inputs and np.asarray(ref_t[n]).shape[0] == np.asarray(ref_c[n]).shape[0]
    ]
    lone = [n for n in t_inputs if n not in paired]
    t_all = _channels(ev.treatment, ref_t, t_inputs)
    assert t_all is not None
    ok, least = judge.enough(t_all.sample)
    t_pair = _channels(ev.treatment, ref_t, paired) if paired else None
    c_pair = _channels(ev.control, ref_c, paired) if paired else None
    if c_pair is not None:
        ok, least = judge.enough(t_all.sample, c_pair.sample)
    if not ok:
        return judge.need(metric, least, cfg.psi_pass)
    psi_t, fair_t = _psi_point(t_all)
    worst = int(np.argmax(fair_t))
    name = t_all.names[worst]
    what = (
        f"input {name}: PSI {psi_t[worst]:.3f} against the target's reference ({fair_t[worst]:.3f} less bias)"
    )
    lows, highs, control_psi = [], [], None
    if t_pair is not None and c_pair is not None:
        columns = t_pair.sample.y.shape[1] + c_pair.sample.y.shape[1]

        def make(alpha: float, lower: bool) -> Bound:
            per_bin = alpha / columns  # Bonferroni across every bin of both arms

            def bound(a: Moments, b: Moments | None) -> np.ndarray:
                assert b is not None and t_pair is not None and c_pair is not None
                t_low, t_high = _psi_bounds(t_pair, *a, per_bin, judge)
                c_low, c_high = _psi_bounds(c_pair, *b, per_bin, judge)
                return np.max(t_low - c_high if lower else t_high - c_low, axis=-1)

            return bound

        low, high = _robust(t_pair.sample, c_pair.sample, make, judge)
        lows.append(low)
        highs.append(high)
        psi_c, fair_c = _psi_point(c_pair)
        drifting = _psi_bounds(
            c_pair,
            *c_pair.sample.moments(),
            cfg.label_free_alpha / columns,
            judge,
        )[0][0]
        moved = [f"{c_pair.names[i]} {psi_c[i]:.3f}" for i in np.flatnonzero(drifting > cfg.psi_rollback)]
        if moved:
            alerts.append(
                f"input drift in both arms: the control's inputs moved from the baseline's reference too "
                f"(PSI {', '.join(moved)}; lower bounds > {cfg.psi_rollback:g}): the inputs changed, "
                "not only the release"
            )
        if name in c_pair.names:
            j = c_pair.names.index(name)
            control_psi = float(psi_c[j])
            what += f", control {psi_c[j]:.3f} against the baseline's ({fair_c[j]:.3f} less bias): excess"
    if lone:
        t_lone = _channels(ev.treatment, ref_t, lone)
        assert t_lone is not None
        columns = t_lone.sample.y.shape[1]

        def alone(alpha: float, lower: bool) -> Bound:
            def bound(a: Moments, b: Moments | None) -> np.ndarray:
                assert t_lone is not None
                pair = _psi_bounds(t_lone, *a, alpha / columns, judge)
                return np.max(pair[0] if lower else pair[1], axis=-1)

            return bound

        highs.append(
            robust_bound(t_lone.sample, None, alone(cfg.label_free_pass_alpha, False), judge.k, "max")
        )
        low_alone = robust_bound(t_lone.sample, None, alone(cfg.label_free_alpha, True), judge.k, "min")
        why = "the last stage has no control arm" if judge.final else "the baseline has no reference profile"
        if low_alone > cfg.psi_rollback:
            alerts.append(
                f"input drift with no control to compare ({why}): {', '.join(lone)} PSI lower bound "
                f"{low_alone:.3f} > {cfg.psi_rollback:g}; the release is not rolled back for it"
            )
        if not paired:
            what += f" ({why}: judged alone, never rolled back):"
    value = float(psi_t[worst] - (control_psi or 0.0))
    low = max(lows) if lows else -np.inf
    return _decide(
        metric,
        what,
        value,
        (float(low), float(max(highs))),
        cfg.psi_rollback,
        judge,
        n=t_all.sample.devices,
        t=float(psi_t[worst]),
        c=control_psi,
        pass_limit=cfg.psi_pass,
    )
