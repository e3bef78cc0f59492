"""Statistics behind the stage gates: the SPRT, conservative Poisson and binomial bounds, latency quantiles.

Pure functions of counts, no IO. `edgekit.rollout.gates` explains why the conditional binomial SPRT stays
valid under continuous monitoring and how its boundaries were chosen; it re-exports `sprt_bounds`,
`sprt_llr` and `latency_quantile` as part of its public surface.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from device_runtime.telemetry import LATENCY_BUCKETS_MS

__all__ = [
    "latency_quantile",
    "latency_quantile_range",
    "poisson_lower",
    "poisson_upper",
    "sprt_bounds",
    "sprt_llr",
    "wilson",
]


def sprt_bounds(alpha: float, beta: float) -> tuple[float, float]:
    """Wald's SPRT boundaries (A, B) = (log((1 - beta)/alpha), log(beta/(1 - alpha)))."""
    return math.log((1 - beta) / alpha), math.log(beta / (1 - alpha))


def sprt_llr(x: float, n: float, exposure_t: float, exposure_c: float, ratio_h1: float) -> float:
    """Log likelihood ratio of the conditional binomial SPRT (H1: rate ratio `ratio_h1` vs H0: 1).

    Args:
        x: treatment events; n: treatment plus control events.
        exposure_t, exposure_c: exposures (device-hours or inferences), both > 0.
        ratio_h1: treatment / control rate ratio under H1.
    """
    # With p0 = h_t / (h_t + h_c) and p1 = r h_t / (r h_t + h_c): p1 / p0 = r (h_t + h_c) / (r h_t + h_c)
    # and (1 - p1) / (1 - p0) = (h_t + h_c) / (r h_t + h_c), so LLR = x log r + n log((h_t + h_c) /
    # (r h_t + h_c)). Written this way it never divides by 1 - p0, which rounds to 0 when the control's
    # exposure is tiny next to the treatment's (a small fleet once its most influential devices are out).
    return x * math.log(ratio_h1) + n * math.log(
        (exposure_t + exposure_c) / (ratio_h1 * exposure_t + exposure_c)
    )


def poisson_lower(x: float, z: float) -> float:
    """Approximate one-sided lower confidence bound on a Poisson mean (Wilson-Hilferty)."""
    if x <= 0:
        return 0.0
    return max(0.0, x * (1 - 1 / (9 * x) - z / (3 * math.sqrt(x))) ** 3)


def poisson_upper(x: float, z: float) -> float:
    """Approximate one-sided upper confidence bound on a Poisson mean (Wilson-Hilferty)."""
    k = x + 1
    return k * (1 - 1 / (9 * k) + z / (3 * math.sqrt(k))) ** 3


def wilson(k: float, n: float, z: float) -> tuple[float, float]:
    """Wilson score interval for a proportion k/n at one-sided z (n > 0)."""
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def latency_quantile(histogram: Sequence[float], q: float) -> float:
    """Quantile `q` of a latency histogram in ms, interpolating linearly inside the bucket.

    Returns infinity when the quantile falls in the overflow bucket (> the last bound), and NaN for an
    empty histogram.
    """
    total = float(sum(histogram))
    if total <= 0:
        return math.nan
    rank = q * total
    cumulative = 0.0
    for i, count in enumerate(histogram):
        if count > 0 and cumulative + count >= rank:
            if i >= len(LATENCY_BUCKETS_MS):
                return math.inf
            lower = 0.0 if i == 0 else float(LATENCY_BUCKETS_MS[i - 1])
            upper = float(LATENCY_BUCKETS_MS[i])
            return lower + (upper - lower) * (rank - cumulative) / count
        cumulative += count
    return math.inf  # unreachable for a consistent histogram


def latency_quantile_range(
    histogram: Sequence[float], q: float, caps: Sequence[float], weight: float, k: int
) -> tuple[float, float]:
    """The lowest and highest quantile `q` (ms) left after removing up to `k` devices of equal `weight`.

    `caps[i]` bounds what the removed devices together weigh in bucket i. For j removed devices the
    removed mass is j * weight; the remainder's quantile is lowest when that mass is taken from the
    highest buckets first (each up to its cap) and highest when taken from the lowest first (moving
    removal mass to a higher bucket makes the remainder stochastically smaller). The extremes over
    j = 0..k bound every actual removal of at most k devices. NaN when nothing might be left, or when the
    caps cannot hold k devices' weight (inconsistent inputs fail closed).
    """
    value = latency_quantile(histogram, q)
    low, high = value, value
    if not any(caps):  # nothing removable
        return low, high
    counts = [float(c) for c in histogram]
    total = math.fsum(counts)
    for j in range(1, k + 1):
        mass = j * weight
        if total - mass <= 0 or sum(caps) < mass * (1 - 1e-9):
            return math.nan, math.nan
        ends = []
        for order in (range(len(counts) - 1, -1, -1), range(len(counts))):
            left, rest = mass, list(counts)
            for i in order:
                taken = min(rest[i], caps[i], left)
                rest[i] -= taken
                left -= taken
            ends.append(latency_quantile(rest, q))
        low, high = min(low, ends[0]), max(high, ends[1])
    return low, high
