"""The input drift gate: population stability per input channel, the treatment's against the target's
reference profile in excess of the control's against the baseline's. `edgekit.rollout.label_free` explains
the statistic, its bounds and thresholds in plain words.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from edgekit.rollout._label_free_gates import Judge, rec, verdict
from edgekit.rollout._label_free_stats import ArmSample, Bound, Moments, robust_bound
from edgekit.rollout._types import DecisionRecord
from edgekit.rollout.health_sketches import PSI_FLOOR

if TYPE_CHECKING:
    from edgekit.rollout.label_free import ArmEvidence, LabelFreeEvidence

__all__ = ["input_drift"]


def _psi_terms(o: np.ndarray, e: np.ndarray) -> np.ndarray:
    """Per-bin PSI terms (o - e) ln(o / e), shares floored like `population_stability`."""
    o, e = np.maximum(o, PSI_FLOOR), np.maximum(e, PSI_FLOOR)
    return (o - e) * np.log(o / e)


def _between(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Per-bin PSI terms between two share vectors, (x - y) ln(x / y), floored like `_psi_terms`; jointly
    convex in (x, y), so over a box of shares it is largest at one of its corners."""
    x, y = np.maximum(x, PSI_FLOOR), np.maximum(y, PSI_FLOOR)
    return (x - y) * np.log(x / y)


def _same_bins(ev: LabelFreeEvidence, names: list[str]) -> bool:
    """Both profiles' bin edges are known and equal for every input of `names`."""
    for name in names:
        a, b = ev.edges_treatment.get(name), ev.edges_control.get(name)
        if a is None or b is None or np.shape(a) != np.shape(b) or not np.allclose(a, b):
            return False
    return bool(names)


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
    if len(shares) == 0:
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
    psi_c, fair_c = _psi_point(c_pair) if c_pair is not None else (np.zeros(0), np.zeros(0))
    paired_at = {} if c_pair is None else {ch: i for i, ch in enumerate(c_pair.names)}
    # The channel the detail names: the largest excess over the control (bias removed on both sides).
    excess = [
        fair_t[i] - (fair_c[paired_at[ch]] if ch in paired_at else 0.0) for i, ch in enumerate(t_all.names)
    ]
    worst = int(np.argmax(excess))
    name = t_all.names[worst]
    what = (
        f"input {name}: PSI {psi_t[worst]:.3f} against the target's reference ({fair_t[worst]:.3f} less bias)"
    )
    lows, highs, control_psi, what_between = [], [], None, ""
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

        same = _same_bins(ev, paired)
        pass_alpha = cfg.label_free_pass_alpha / (2 if same else 1)  # split when passing two ways
        low = robust_bound(t_pair.sample, c_pair.sample, make(cfg.label_free_alpha, True), judge.k, "min")
        high = robust_bound(t_pair.sample, c_pair.sample, make(pass_alpha, False), judge.k, "max")
        if same:
            # Both arms bin alike: the arms' inputs may also be compared directly. Under a drifting world
            # the excess of two PSIs against the references is loose (each PSI's bounds widen as it grows);
            # PSI between the arms stays near 0 when the release changes nothing.
            def direct(a: Moments, b: Moments | None) -> np.ndarray:
                assert b is not None and t_pair is not None
                per_bin = pass_alpha / columns
                rt, rc = (
                    judge.radius(a[1], a[2][..., None], per_bin),
                    judge.radius(b[1], b[2][..., None], per_bin),
                )
                corners = [
                    _between(np.clip(x, 0.0, 1.0), np.clip(y, 0.0, 1.0))
                    for x in (a[0] - rt, a[0] + rt)
                    for y in (b[0] - rc, b[0] + rc)
                ]
                terms = np.maximum.reduce(corners)
                return np.max(np.add.reduceat(terms, t_pair.starts, axis=-1), axis=-1)

            between = robust_bound(t_pair.sample, c_pair.sample, direct, judge.k, "max")
            if between < high:
                high = between
                what_between = f" (the arms' inputs differ by PSI at most {between:.3f})"
        lows.append(low)
        highs.append(high)
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
        if name in paired_at:
            j = paired_at[name]
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
    if what_between:
        what = what.removesuffix(": excess") + what_between + ": excess"
    value = float(psi_t[worst] - (control_psi or 0.0))
    low = max(lows) if lows else -np.inf
    return verdict(
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
