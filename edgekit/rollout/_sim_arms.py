"""The simulator's fleet arms, hour by hour: telemetry drawn from a release's rates and delivered late as
devices' uploads are, and each arm's `ArmMetrics` built the way the server builds it (per-device caps, the K
most influential devices' share, hostile devices at the contract's limits).

`simulate.simulate_run` drives these through the real gates; nothing here decides anything.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

from device_runtime.telemetry import LATENCY_BUCKETS_MS
from edgekit.rollout._replay import (
    MAX_CRASHES_PER_DEVICE_HOUR,
    MAX_FEEDBACK_PER_DEVICE_HOUR,
    MAX_INFERENCES_PER_DEVICE_HOUR,
    MAX_INSTALLS_PER_DEVICE_HOUR,
)
from edgekit.rollout._sim_types import FleetModel, Regression
from edgekit.rollout.gates import ArmMetrics

# Integer telemetry fields carried per arm and hour, in this order, then the latency histogram.
_COUNTS = ("crashes", "inferences", "inference_errors", "installs", "install_failures")
_FEEDBACK = ("feedback_total", "feedback_correct")
_N_HIST = len(LATENCY_BUCKETS_MS) + 1
N_COUNTS = len(_COUNTS) + len(_FEEDBACK) + _N_HIST
_MAX_DELAY_HOURS = 8  # hours; offline queues still waiting after this arrive in the last slot


def delay_kernel(model: FleetModel) -> np.ndarray:
    """Share of an hour's telemetry that arrives 0, 1, ... hours later (sums to 1)."""
    # A report leaves at the device's next upload, a uniform wait of up to one interval: the data of the
    # last interval/2 of an hour on average misses that hour's evaluation.
    late = model.report_interval_hours / 2
    kernel = np.zeros(_MAX_DELAY_HOURS + 1)
    kernel[0], kernel[1] = 1 - late, late
    # Offline hours add a geometric number of hours (a device is offline each hour with offline_share).
    o = model.offline_share
    offline = np.array([(1 - o) * o**k for k in range(_MAX_DELAY_HOURS + 1)])
    offline[-1] += 1 - offline.sum()
    combined = np.convolve(kernel, offline)[: _MAX_DELAY_HOURS + 1]
    combined[-1] += 1 - combined.sum()
    return np.clip(combined, 0, 1) / np.clip(combined, 0, 1).sum()


def _latency_probs(median_ms: float, sigma: float) -> np.ndarray:
    """Probability of each latency bucket (then the overflow) for a lognormal latency."""
    cdf = [
        0.5 * (1 + math.erf((math.log(b) - math.log(median_ms)) / (sigma * math.sqrt(2))))
        for b in LATENCY_BUCKETS_MS
    ]
    probs = np.diff(np.array([0.0, *cdf, 1.0]))
    return np.clip(probs, 0, 1) / np.clip(probs, 0, 1).sum()


@dataclass(frozen=True)
class _Release:
    crash_hazard: float
    error_rate: float
    accuracy: float
    latency_probs: np.ndarray


def releases(model: FleetModel, regression: Regression | None) -> tuple[_Release, _Release]:
    base = _Release(
        model.crash_hazard_per_hour,
        model.error_rate,
        model.accuracy,
        _latency_probs(model.latency_median_ms, model.latency_sigma),
    )
    if regression is None:
        return base, base
    r = regression
    target = _Release(
        base.crash_hazard * (r.amount if r.kind == "crash" else 1),
        min(1.0, base.error_rate * (r.amount if r.kind == "errors" else 1)),
        min(1.0, max(0.0, base.accuracy + (r.amount / 100 if r.kind == "accuracy" else 0))),
        _latency_probs(
            model.latency_median_ms * (r.amount if r.kind == "latency" else 1), model.latency_sigma
        )
        if r.kind == "latency"
        else base.latency_probs,
    )
    return target, base


def draw_hour(
    rng: np.random.Generator,
    release: _Release,
    device_hours: float,
    installs: int,
    model: FleetModel,
    shares: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """One arm-hour of telemetry split by arrival: (device-hours, counts) per slot of `shares`.

    `shares` are the shares of the hour's reports that arrive 0, 1, ... hours later (their sum is below 1
    by the share lost). Each report carries its exposure and its events together, so every slot is drawn
    as its own thinned Poisson process, nested counts (errors of inferences, correct of feedback) within
    it: a slot's accuracy or error rate is exactly as noisy as its size makes it, no more.
    """
    hours = device_hours * shares
    counts = np.zeros((len(shares), N_COUNTS), dtype=np.int64)
    if device_hours > 0:
        inferences = rng.poisson(hours * model.inferences_per_device_hour)
        feedback = rng.binomial(inferences, model.feedback_share)
        counts[:, 0] = rng.poisson(hours * release.crash_hazard)
        counts[:, 1] = inferences
        counts[:, 2] = rng.binomial(inferences, release.error_rate)
        counts[:, 5] = feedback
        counts[:, 6] = rng.binomial(feedback, release.accuracy)
        counts[:, 7:] = rng.multinomial(inferences, release.latency_probs)
    if installs > 0:
        arrived = rng.multinomial(installs, [*shares, max(0.0, 1 - float(shares.sum()))])[:-1]
        counts[:, 3] = arrived
        counts[:, 4] = rng.binomial(arrived, model.install_failure_share)
    return hours, counts


def _metrics(devices: int, device_hours: float, counts: np.ndarray) -> ArmMetrics:
    c = counts.tolist()
    return ArmMetrics(
        devices=float(devices),
        device_hours=float(device_hours),
        crashes=float(c[0]),
        inferences=float(c[1]),
        inference_errors=float(c[2]),
        installs=float(c[3]),
        install_failures=float(c[4]),
        feedback_total=float(c[5]),
        feedback_correct=float(c[6]),
        latency_histogram=tuple(float(x) for x in c[7:]),
    )


_NORMAL = NormalDist()


def _top_counts(total: float, devices: int, k: int) -> list[float]:
    """The k largest per-device counts, approximately, when `total` Poisson events spread over `devices`
    alike: the Poisson quantiles at 1 - (j - 1/2) / devices, j = 1..k (exact sums for small means, the
    normal approximation above a mean of 30)."""
    if devices <= 0 or total <= 0:
        return [0.0] * k
    mu = total / devices
    found = []
    for j in range(1, k + 1):
        if j > devices:
            found.append(0.0)
            continue
        p = 1 - (j - 0.5) / devices
        if mu > 30:
            value = mu + _NORMAL.inv_cdf(p) * math.sqrt(mu)
        else:
            term = cdf = math.exp(-mu)
            value = 0.0
            while cdf < p and value < 10 * mu + 50:
                value += 1
                term *= mu / value
                cdf += term
        found.append(min(float(value), total))
    return found


def _hostile(lie: str, exposure: float, window: float) -> dict[str, float]:
    """One hostile device's window at the per-device caps: `bad` looks as broken as a device can, `good`
    as healthy (and as busy) as one can."""
    inferences = MAX_INFERENCES_PER_DEVICE_HOUR * exposure
    installs = MAX_INSTALLS_PER_DEVICE_HOUR * window + 1
    feedback = MAX_FEEDBACK_PER_DEVICE_HOUR * exposure
    bad = lie == "bad"
    return {
        "devices": 1.0,
        "device_hours": exposure,
        "crashes": MAX_CRASHES_PER_DEVICE_HOUR * exposure if bad else 0.0,
        "inferences": inferences,
        "inference_errors": inferences if bad else 0.0,
        "installs": installs,
        "install_failures": installs if bad else 0.0,
        "feedback_total": feedback,
        "feedback_correct": 0.0 if bad else feedback,
        "bucket": float(_N_HIST - 1 if bad else 0),
    }


def arm_metrics(
    devices: int,
    device_hours: float,
    counts: np.ndarray,
    *,
    elapsed: float,
    model: FleetModel,
    k: int,
    lie: str | None,
    control: bool,
) -> ArmMetrics:
    """An arm's metrics as the server would build them from its devices: with what its k most
    influential devices contributed, and with `model.hostile_devices` lying devices (`lie`) mixed in."""
    honest = _metrics(devices, device_hours, counts)
    if k <= 0 and not model.hostile_devices:
        return honest  # the plain gates on an honest fleet: arm totals are all they use
    exposure = elapsed + model.report_interval_hours  # the most one device can have in this window
    liars = [_hostile(lie, exposure, elapsed) for _ in range(model.hostile_devices)] if lie else []
    if control:
        for liar in liars:
            liar["installs"] = liar["install_failures"] = 0.0  # control devices install nothing
    values: dict[str, float] = {}
    top: dict[str, float] = {}
    for name in ("crashes", "inferences", "inference_errors", "feedback_total", "feedback_correct"):
        total = float(getattr(honest, name))
        lies = [liar[name] for liar in liars]
        values[name] = total + sum(lies)
        top[name] = sum(heapq.nlargest(k, [*_top_counts(total, devices, k), *lies]))
    for name in ("installs", "install_failures"):  # one install per device
        total = float(getattr(honest, name))
        lies = [liar[name] for liar in liars]
        values[name] = total + sum(lies)
        top[name] = sum(heapq.nlargest(k, [*([1.0] * int(min(k, total))), *lies]))
    values["devices"] = devices + len(liars)
    top["devices"] = float(min(k, values["devices"]))
    values["device_hours"] = device_hours + exposure * len(liars)
    top["device_hours"] = min(values["device_hours"], k * exposure)
    # Latency: every device weighs the same (the arm's samples spread evenly); a liar's sits in one bucket.
    hist = np.array(honest.latency_histogram, dtype=float)
    samples = float(hist.sum())
    timed = devices if samples > 0 else 0
    weighed = timed + len(liars)
    caps = np.zeros(_N_HIST)
    if weighed:
        weight = (samples + sum(liar["inferences"] for liar in liars)) / weighed
        if timed:
            shape = hist / samples
            # The k heaviest devices in a bucket: k devices' weight at the bucket's share plus 3 sigma of
            # one device's multinomial noise (its samples are samples / timed).
            spread = np.sqrt(shape * (1 - shape) / max(samples / timed, 1.0))
            hist = shape * weight * timed
            caps = np.minimum(hist, k * weight * np.minimum(1.0, shape + 3 * spread))
        for liar in liars:
            bucket = int(liar["bucket"])
            hist[bucket] += weight
            caps[bucket] += weight  # top-k of the union <= the honest top-k plus every liar
        caps = np.minimum(caps, hist)
    removable = ArmMetrics(
        **top,  # type: ignore[arg-type]
        latency_histogram=tuple(caps.tolist()),
        latency_devices=float(min(k, weighed)),
    )
    return ArmMetrics(
        **values,  # type: ignore[arg-type]
        latency_histogram=tuple(hist.tolist()),
        latency_devices=float(weighed),
        removable=removable if k > 0 else None,
    )
