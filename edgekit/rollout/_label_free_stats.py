"""Device-level statistics behind the label-free gates: weighted arm means, their cluster-robust variance,
time-uniform confidence-sequence radii and the greedy removal of the K most influential devices.

Pure numpy, no IO. `edgekit.rollout.label_free` explains in plain words what these numbers mean and why
they stay valid when the server looks every hour; this module only computes them.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np

__all__ = ["ArmSample", "Bound", "cs_radius", "robust_bound"]

# A bound over a batch of candidate arms: (treatment means [b, m], variances [b, m], devices [b]) and the
# control's likewise (None for one-arm statistics) -> one bound per batch row [b].
Moments = tuple[np.ndarray, np.ndarray, np.ndarray]
Bound = Callable[[Moments, Moments | None], np.ndarray]


def cs_radius(variance: np.ndarray, devices: np.ndarray | float, alpha: float, tuned: float) -> np.ndarray:
    """Half-width of a two-sided, time-uniform confidence sequence for a mean over `devices` units.

    Robbins' normal mixture in the asymptotic form of Waudby-Smith et al. (2021, "Time-uniform central
    limit theory"): with per-unit standard deviation s and t units, the radius is
    s * sqrt(2 (t r + 1) / (t^2 r) * log(sqrt(t r + 1) / alpha)), the mixture precision r chosen so the
    sequence is tightest near `tuned` units. `variance` is the variance of the mean (s^2 / t), so the
    radius is sqrt(variance * 2 (t r + 1) / (t r) * log(sqrt(t r + 1) / alpha)).
    """
    t = np.maximum(np.asarray(devices, np.float64), 1.0)
    log_a = -2.0 * math.log(alpha)
    r = (log_a + math.log(log_a + 1.0)) / tuned
    tr = t * r
    factor = 2.0 * (tr + 1.0) / tr * np.log(np.sqrt(tr + 1.0) / alpha)
    return np.sqrt(np.maximum(np.asarray(variance, np.float64), 0.0) * factor)


@dataclass(frozen=True)
class ArmSample:
    """One arm's devices for one statistic: values y [n, m] (one row per device) and weights w [n] > 0.

    `share` marks values that are shares (0..1): their variance gets a binomial floor, so an arm whose
    devices all report exactly the same share (all zero failures, say) is not taken as exact.
    """

    y: np.ndarray
    w: np.ndarray
    share: bool = True

    @staticmethod
    def of(y: np.ndarray | None, w: np.ndarray | None, share: bool = True) -> ArmSample | None:
        """Rows with a positive finite weight and finite values; None when no device has any."""
        if y is None or w is None:
            return None
        values = np.asarray(y, np.float64)
        values = values.reshape(values.shape[0], -1)
        weights = np.asarray(w, np.float64).reshape(-1)
        keep = np.isfinite(weights) & (weights > 0) & np.all(np.isfinite(values), axis=1)
        if not keep.any():
            return None
        return ArmSample(values[keep], weights[keep], share)

    @property
    def devices(self) -> int:
        return int(self.w.size)

    def _sums(self, keep: np.ndarray) -> tuple[np.ndarray, ...]:
        w, y = self.w[keep], self.y[keep]
        w2 = w * w
        return (
            np.array(w.sum()),
            w @ y,
            w2 @ (y * y),
            w2 @ y,
            np.array(w2.sum()),
            np.array(float(keep.sum())),
        )

    def moments(self, keep: np.ndarray) -> Moments:
        """(mean [1, m], variance of the mean [1, m], devices [1]) of the kept devices."""
        sums = self._sums(keep)
        mean, var, n = self._from_sums(*(s[None, ...] for s in sums))
        return mean, var, n

    def leave_one_out(self, keep: np.ndarray) -> tuple[np.ndarray, Moments]:
        """For each kept device: the moments without it (indices [b], moments over a batch of b)."""
        idx = np.flatnonzero(keep)
        w, y = self.w[idx], self.y[idx]
        big_w, a, b, c, d, n = self._sums(keep)
        w2 = (w * w)[:, None]
        sums = (
            big_w - w,
            a[None, :] - w[:, None] * y,
            b[None, :] - w2 * y * y,
            c[None, :] - w2 * y,
            d - w * w,
            n - np.ones_like(w),
        )
        return idx, self._from_sums(*sums)

    def _from_sums(
        self, big_w: np.ndarray, a: np.ndarray, b: np.ndarray, c: np.ndarray, d: np.ndarray, n: np.ndarray
    ) -> Moments:
        """Weighted mean and its cluster-robust (sandwich) variance, devices as clusters, with the
        n / (n - 1) small-sample factor; for shares floored by the binomial variance of the weight."""
        safe_w = np.where(big_w > 0, big_w, 1.0)[..., None]
        mean = a / safe_w
        spread = b - 2.0 * mean * c + mean * mean * d[..., None]
        nn = n[..., None]
        var = np.maximum(spread, 0.0) / (safe_w * safe_w) * nn / np.maximum(nn - 1.0, 1.0)
        if self.share:
            smooth = (a + 0.5) / (safe_w + 1.0)
            var = np.maximum(var, smooth * (1.0 - smooth) / safe_w)
        return mean, var, n.astype(np.float64)


def robust_bound(
    treatment: ArmSample,
    control: ArmSample | None,
    bound: Bound,
    removals: int,
    worst: Literal["min", "max"],
) -> float:
    """The bound after greedily removing `removals` devices per arm, each step the device whose removal
    moves the bound furthest toward `worst` ("min" weakens a rollback case, "max" a pass case).

    Greedy, one device at a time and arm after arm: not the exact worst set of K (a combinatorial
    search), but each step is the exact worst single removal given the previous ones.
    """
    keeps = [np.ones(treatment.devices, bool), None if control is None else np.ones(control.devices, bool)]
    arms = [treatment, control]
    pick = np.argmin if worst == "min" else np.argmax

    def current() -> tuple[Moments, Moments | None]:
        t = treatment.moments(keeps[0])  # type: ignore[arg-type]
        c = None if control is None else control.moments(keeps[1])  # type: ignore[arg-type]
        return t, c

    for _ in range(removals):
        for side in (0, 1):
            arm, keep = arms[side], keeps[side]
            if arm is None or keep is None or keep.sum() <= 2:
                continue
            idx, loo = arm.leave_one_out(keep)
            t, c = current()
            values = bound(loo, c) if side == 0 else bound(t, loo)
            values = np.where(np.isnan(values), np.inf if worst == "min" else -np.inf, values)
            keep[idx[int(pick(values))]] = False
    t, c = current()
    return float(bound(t, c)[0])
