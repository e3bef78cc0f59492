"""Latency of a reference vs a candidate model on this host, measured interleaved in the same run.

Rounds alternate between the two models so that a noisy neighbour or a frequency change hits both; the
figure per model is the median over rounds of the mean time per call. Inference runs on one intra-op
thread by default: per-core figures are steadier and closer to a busy device.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from device_runtime.engines import Engine, load_engine

__all__ = ["LatencyConfig", "compare_latency", "is_slower"]


@dataclass(frozen=True)
class LatencyConfig:
    """How to measure: batch sizes, rounds, time per round (seconds), threads, noise tolerance."""

    batch_sizes: tuple[int, ...] = (1, 32)
    rounds: int = 7
    seconds_per_round: float = 0.05  # seconds per model per round
    warmup_calls: int = 3
    threads: int | None = 1
    tolerance: float = 0.05  # a candidate counts as slower only beyond this share (noise margin)


def _time_calls(engine: Engine, feeds: dict[str, np.ndarray], seconds: float) -> float:
    calls = 0
    start = time.perf_counter()
    while True:
        engine.run(feeds)
        calls += 1
        elapsed = time.perf_counter() - start
        if elapsed >= seconds and calls >= 2:
            return elapsed / calls


def _feeds_for(
    sample: dict[str, np.ndarray], batch: int, batch_axes: Mapping[str, int | None] | None = None
) -> dict[str, np.ndarray]:
    """`batch` samples tiled from `sample` on each input's batch axis (axis 0 unless given; None: as is)."""
    out = {}
    for name, array in sample.items():
        axis = (batch_axes or {}).get(name, 0)
        if axis is None:
            out[name] = array
            continue
        reps = math.ceil(batch / array.shape[axis])
        tiled = np.concatenate([array] * reps, axis=axis)
        out[name] = np.ascontiguousarray(np.take(tiled, np.arange(batch), axis=axis))
    return out


def compare_latency(
    reference: Path,
    candidate: Path,
    sample: dict[str, np.ndarray],
    config: LatencyConfig | None = None,
    *,
    batch_axes: Mapping[str, int | None] | None = None,
) -> dict[str, Any]:
    """Measure both models at each batch size; return the report's `latency` section.

    `ratio` is reference time / candidate time: above 1 the candidate is faster. `batch_axes`: each
    input's batch axis (default 0; None for an input fed as it is).
    """
    config = config or LatencyConfig()
    engines = {
        "reference": load_engine(reference, threads=config.threads),
        "candidate": load_engine(candidate, threads=config.threads),
    }
    result: dict[str, Any] = {
        "batch_sizes": list(config.batch_sizes),
        "threads": config.threads,
        "rounds": config.rounds,
        "reference_ms": {},
        "candidate_ms": {},
        "ratio": {},
    }
    for batch in config.batch_sizes:
        feeds = _feeds_for(sample, batch, batch_axes)
        for engine in engines.values():
            for _ in range(config.warmup_calls):
                engine.run(feeds)
        per_round: dict[str, list[float]] = {"reference": [], "candidate": []}
        for round_index in range(config.rounds):
            order = ("reference", "candidate") if round_index % 2 == 0 else ("candidate", "reference")
            for name in order:
                per_round[name].append(_time_calls(engines[name], feeds, config.seconds_per_round))
        ref_ms = 1000.0 * statistics.median(per_round["reference"])
        cand_ms = 1000.0 * statistics.median(per_round["candidate"])
        result["reference_ms"][str(batch)] = ref_ms
        result["candidate_ms"][str(batch)] = cand_ms
        result["ratio"][str(batch)] = ref_ms / cand_ms if cand_ms > 0 else math.inf
    result["tolerance"] = config.tolerance
    result["slower"] = is_slower(result["ratio"], config.tolerance)
    return result


def is_slower(ratios: dict[str, float], tolerance: float) -> bool:
    """True when the candidate is slower than the reference beyond the noise tolerance.

    The geometric mean of the per-batch speed-ups decides, so one batch size cannot hide another.
    """
    values = [r for r in ratios.values() if r > 0 and math.isfinite(r)]
    if not values:
        return False
    geometric_mean = math.exp(sum(math.log(r) for r in values) / len(values))
    return geometric_mean < 1.0 - tolerance
