"""Four of the label-free gates, one function each: class shift, confidence shift, shadow agreement and
shadow failures, and what every gate shares (`Judge`, `verdict`, `robust`); input drift has its own
module, `edgekit.rollout._label_free_drift`. `edgekit.rollout.label_free` explains the statistics and
thresholds in plain words and is the public entry point; this module turns evidence into records.
"""

from __future__ import annotations

from collections.abc import Callable
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
from edgekit.rollout._types import DecisionRecord, GateConfig

if TYPE_CHECKING:
    from edgekit.rollout.label_free import ArmEvidence, LabelFreeEvidence

__all__ = [
    "Judge",
    "class_shift",
    "confidence_shift",
    "presence",
    "rec",
    "robust",
    "shadow_agreement",
    "shadow_failures",
    "verdict",
]


rec = DecisionRecord.of  # every label-free check builds its record the way the other gates do


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

    def unready(
        self,
        metric: str,
        what: str,
        t: ArmSample | None,
        c: ArmSample | None,
        limit: float,
        *,
        needs_control: bool = True,
    ) -> DecisionRecord | None:
        """The record of a gate that cannot be judged (`presence`) or not yet (too few devices per arm:
        the treatment's alone when the gate `needs_control` not), else None: then `t` (and, when it
        `needs_control`, `c`) is not None."""
        absent = presence(metric, what, t, c, needs_control, self.final)
        if absent is not None:
            return absent
        assert t is not None and (c is not None or not needs_control)
        ok, least = self.enough(t, c) if needs_control and c is not None else self.enough(t)
        return None if ok else self.need(metric, least, limit)

    def need(self, metric: str, least: int, threshold: float) -> DecisionRecord:
        detail = (
            f"{max(least, 0)} devices per arm report it{self.k_words()}, "
            f"need {self.config.min_devices_per_arm} (minimum exposure not reached)"
        )
        return rec(metric, "hold", detail, n=max(least, 0), threshold=threshold)

    def k_words(self) -> str:
        return f", without the {self.k} most influential devices per arm" if self.k else ""


def presence(
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


def verdict(
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


def robust(
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
    unready = judge.unready(metric, "predicted classes", t, c, limit)
    if unready is not None:
        return unready
    assert t is not None and c is not None
    width = max(t.y.shape[1], c.y.shape[1])
    t, c = _pad(t, width), _pad(c, width)  # padding adds classes, not devices

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
    return verdict(metric, what, shift, (low, high), limit, judge, n=t.devices + c.devices)


# ---- confidence shift ----------------------------------------------------------------------------------
def confidence_shift(ev: LabelFreeEvidence, judge: Judge) -> DecisionRecord:
    """Drop of the mean top-1 confidence (or detection score): control minus treatment."""
    t = ArmSample.of(ev.treatment.confidence, ev.treatment.weights, share=False)
    c = ArmSample.of(ev.control.confidence, ev.control.weights, share=False)
    return _mean_shift(
        "confidence_shift",
        "confidence",
        t,
        c,
        judge.config.max_confidence_drop,
        judge,
        lambda mt, mc: f"mean confidence treatment {mt:.3f} vs control {mc:.3f}: drop",
        drop=True,
    )


def _mean_shift(
    metric: str,
    reported: str,
    t: ArmSample | None,
    c: ArmSample | None,
    limit: float,
    judge: Judge,
    words: Callable[[float, float], str],
    *,
    drop: bool,
) -> DecisionRecord:
    """A gate on the difference of the arms' means of one value: treatment minus control, or control
    minus treatment when it watches a `drop`. `words(treatment mean, control mean)` names the value."""
    unready = judge.unready(metric, reported, t, c, limit)
    if unready is not None:
        return unready
    assert t is not None and c is not None
    mt, mc = float(_mean(t)[0]), float(_mean(c)[0])
    first, second = (c, t) if drop else (t, c)  # the bounds are on first minus second
    bounds = robust(first, second, _difference(judge), judge)
    value = mc - mt if drop else mt - mc
    return verdict(metric, words(mt, mc), value, bounds, limit, judge, n=t.devices + c.devices, t=mt, c=mc)


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
    return _mean_shift(
        "shadow_agreement",
        "shadow comparisons",
        _disagreement(ev.treatment),
        _disagreement(ev.control),
        judge.config.max_shadow_disagreement_excess,
        judge,
        lambda dt, dc: (
            f"the candidate disagrees with the served model on {100 * dt:.2f}% of shadowed inputs, the "
            f"baseline with itself on {100 * dc:.2f}%: excess disagreement"
        ),
        drop=False,
    )


def shadow_failures(ev: LabelFreeEvidence, judge: Judge) -> DecisionRecord:
    """Guardrail on the treatment alone: the share of shadow runs that failed or timed out."""
    metric, limit = "shadow_failures", judge.config.max_shadow_failure_share
    t, c = _failures(ev.treatment), _failures(ev.control)
    unready = judge.unready(metric, "shadow runs", t, c, limit, needs_control=False)
    if unready is not None:
        return unready
    assert t is not None

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
    return verdict(metric, what, ft, robust(t, None, make, judge), limit, judge, n=t.devices, t=ft, c=fc)
