"""Device-level statistics behind the label-free gates: weighted arm means, their cluster-robust variance,
time-uniform confidence-sequence radii and the greedy removal of the K most influential devices.

Pure numpy, no IO. `edgekit.rollout.label_free` explains in plain words what these numbers mean and why
they stay valid when the server looks every hour; this module only computes them.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from typing import Literal

import numpy as np

__all__ = ["MAX_SET_CLASSES", "SHORTLIST", "ArmSample", "Bound", "SetSample", "cs_radius", "robust_bound"]

MAX_SET_CLASSES = 10  # classes up to which the class shift's pass bound looks at every set of classes

SHORTLIST = 32  # devices per arm and criterion tried at each greedy removal step (see leave_one_out)

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
        if values.ndim == 0 or values.shape[0] == 0:  # an arm without a device: nothing reported
            return None
        values = values.reshape(values.shape[0], -1)
        weights = np.asarray(w, np.float64).reshape(-1)
        keep = np.isfinite(weights) & (weights > 0) & np.all(np.isfinite(values), axis=1)
        if not keep.any():
            return None
        return ArmSample(values[keep], weights[keep], share)

    @property
    def devices(self) -> int:
        return int(self.w.size)

    @cached_property
    def terms(self) -> tuple[np.ndarray, ...]:
        """Each device's share of the sums behind the moments: w, w y, w^2 y^2, w^2 y, w^2, 1."""
        w, y = self.w, self.y
        w2 = w * w
        return w, w[:, None] * y, w2[:, None] * y * y, w2[:, None] * y, w2, np.ones_like(w)

    @cached_property
    def sums(self) -> tuple[np.ndarray, ...]:
        """The sums over every device (see `terms`)."""
        return tuple(np.asarray(t.sum(axis=0)) for t in self.terms)

    def moments(self, sums: tuple[np.ndarray, ...] | None = None) -> Moments:
        """(mean [1, m], variance of the mean [1, m], devices [1]) from `sums` (default: every device)."""
        return self.from_sums(*(s[None, ...] for s in (self.sums if sums is None else sums)))

    def shortlist(self, size: int) -> np.ndarray:
        """Indices of the devices most able to move the arm: the `size` that move the mean most (weight x
        distance from the mean, summed over columns) and the `size` that carry most of the variance
        (weight^2 x that distance squared). Removing any other device moves the mean and the variance
        less, so the greedy removal only tries these."""
        if self.devices <= 2 * size:
            return np.arange(self.devices)
        dev = np.abs(self.y - self.sums[1] / self.sums[0]).sum(axis=1)
        pull, spread = self.w * dev, self.w * self.w * dev * dev
        return np.union1d(np.argpartition(-pull, size)[:size], np.argpartition(-spread, size)[:size])

    def leave_one_out(self, sums: tuple[np.ndarray, ...], idx: np.ndarray) -> Moments:
        """The moments without each device of `idx` in turn (a batch of len(idx)), from the `sums` of
        the devices still counted."""
        loo = tuple(total[None, ...] - term[idx] for total, term in zip(sums, self.terms, strict=True))
        return self.from_sums(*loo)

    def from_sums(
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


@dataclass(frozen=True)
class SetSample(ArmSample):
    """Class shares seen through every set of classes A: its moments are those of each set's share (the
    nonempty subsets of all classes but the last; a set and its complement carry the same difference),
    the variance of a set's share taken from the devices' full cluster-robust covariance of the classes,
    so the negative covariance of shares that sum to 1 is not lost. At most `MAX_SET_CLASSES` classes."""

    @cached_property
    def sets(self) -> np.ndarray:
        """[C, M] indicators: column j is the set of classes whose bits are set in j + 1."""
        classes = self.y.shape[1]
        codes = np.arange(1, 2 ** (classes - 1))
        return ((codes[None, :] >> np.arange(classes)[:, None]) & 1).astype(np.float64)

    @cached_property
    def terms(self) -> tuple[np.ndarray, ...]:
        """As `ArmSample.terms`, with w^2 y y' (flattened [C * C]) for the covariance."""
        w, y = self.w, self.y
        w2 = w * w
        outer = (w2[:, None, None] * y[:, :, None] * y[:, None, :]).reshape(w.size, -1)
        return w, w[:, None] * y, outer, w2[:, None] * y, w2, np.ones_like(w)

    def from_sums(
        self, big_w: np.ndarray, a: np.ndarray, b: np.ndarray, c: np.ndarray, d: np.ndarray, n: np.ndarray
    ) -> Moments:
        safe_w = np.where(big_w > 0, big_w, 1.0)[..., None]
        mean = a / safe_w
        k = mean.shape[-1]
        outer = b.reshape(*b.shape[:-1], k, k)
        mc = mean[..., :, None] * c[..., None, :]
        cov = (
            outer
            - mc
            - np.swapaxes(mc, -1, -2)
            + d[..., None, None] * mean[..., :, None] * mean[..., None, :]
        )
        nn = n[..., None, None]
        cov = cov / (safe_w[..., None] ** 2) * nn / np.maximum(nn - 1.0, 1.0)
        sets = self.sets
        set_mean = mean @ sets
        set_var = ((cov @ sets) * sets).sum(axis=-2)
        smooth = (set_mean * safe_w + 0.5) / (safe_w + 1.0)
        return set_mean, np.maximum(set_var, smooth * (1.0 - smooth) / safe_w), n.astype(np.float64)


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
    arms = [treatment, control]
    sums = [None if arm is None else arm.sums for arm in arms]
    now = [None if arm is None else arm.moments() for arm in arms]  # the moments of the devices left
    if removals <= 0:
        return float(bound(treatment.moments(), None if control is None else control.moments())[0])
    candidates = [None if arm is None else list(arm.shortlist(SHORTLIST)) for arm in arms]
    pick = np.argmin if worst == "min" else np.argmax
    for _ in range(removals):
        for side in (0, 1):
            arm, total, live = arms[side], sums[side], candidates[side]
            if arm is None or total is None or not live or total[5] <= 2:
                continue
            idx = np.array(live)
            loo = arm.leave_one_out(total, idx)
            t = now[0]
            assert t is not None
            values = bound(loo, now[1]) if side == 0 else bound(t, loo)
            values = np.where(np.isnan(values), np.inf if worst == "min" else -np.inf, values)
            gone = int(idx[int(pick(values))])
            live.remove(gone)
            sums[side] = total = tuple(s - term[gone] for s, term in zip(total, arm.terms, strict=True))
            now[side] = arm.moments(total)
    t = now[0]
    assert t is not None
    return float(bound(t, now[1])[0])
