"""Latency of a reference vs a candidate model on this host, measured interleaved in the same run.

Rounds alternate between the two models so that a noisy neighbour or a frequency change hits both; each
round gives one paired speed-up (reference time / candidate time). The verdict comes from a t-interval
on the per-round log speed-ups (the geometric mean over batch sizes per round): "slower" only when the
whole interval is below 1, "faster" only when it is above 1, else "inconclusive". This host is rarely the
device (an x86 build box without VNNI vs an ARM phone with dot-product instructions), so the figure is
reported with the CPU named and a slower verdict is a warning; refusing is the caller's choice.
Inference runs on one intra-op thread by default: per-core figures are steadier and closer to a busy
device.
"""

from __future__ import annotations

import math
import platform
import statistics
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from converters._quiet import load_engine
from device_runtime.engines import Engine

__all__ = ["LatencyConfig", "compare_latency", "host_cpu", "speed_verdict"]

# Two-sided 95% Student t quantiles by degrees of freedom (1-30); beyond, the normal 1.96 is close enough.
_T95 = (
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
    2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
    2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
)  # fmt: skip


@dataclass(frozen=True)
class LatencyConfig:
    """How to measure: batch sizes, rounds, time per round (seconds), threads."""

    batch_sizes: tuple[int, ...] = (1, 32)
    rounds: int = 9  # paired rounds per batch size; the interval narrows with more
    seconds_per_round: float = 0.05  # seconds per model per round
    warmup_calls: int = 3
    threads: int | None = 1


def host_cpu() -> dict[str, Any]:
    """This host's CPU: model name, architecture and whether it has int8 dot-product instructions."""
    from converters.quantize_onnx import cpu_has_vnni

    name = ""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as handle:
            line = next((line for line in handle if line.startswith("model name")), "")
        name = line.split(":", 1)[1].strip() if ":" in line else ""
    except OSError:
        pass
    return {
        "name": name or platform.processor() or "unknown CPU",
        "machine": platform.machine(),
        "vnni": cpu_has_vnni(),
    }


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

    `ratio` is the median reference time / median candidate time: above 1 the candidate is faster.
    `round_ratios` keeps the paired per-round speed-ups the verdict is computed from. `batch_axes`: each
    input's batch axis (default 0; None for an input fed as it is).
    """
    config = config or LatencyConfig()
    engines = {
        "reference": load_engine(reference, threads=config.threads),
        "candidate": load_engine(candidate, threads=config.threads),
    }
    result: dict[str, Any] = {
        "host": host_cpu(),
        "batch_sizes": list(config.batch_sizes),
        "threads": config.threads,
        "rounds": config.rounds,
        "reference_ms": {},
        "candidate_ms": {},
        "ratio": {},
        "round_ratios": {},
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
        key = str(batch)
        result["reference_ms"][key] = ref_ms
        result["candidate_ms"][key] = cand_ms
        result["ratio"][key] = ref_ms / cand_ms if cand_ms > 0 else math.inf
        result["round_ratios"][key] = [
            r / c for r, c in zip(per_round["reference"], per_round["candidate"], strict=True) if c > 0
        ]
    result.update(speed_verdict(result["round_ratios"]))
    return result


def speed_verdict(round_ratios: Mapping[str, Sequence[float]]) -> dict[str, Any]:
    """Decide faster / slower / inconclusive from paired per-round speed-ups, per batch size.

    Per round, the speed-ups of the batch sizes are combined by their geometric mean (so one batch size
    cannot hide another); a 95% t-interval on the mean of the log speed-ups gives `speedup_interval`.
    "slower" needs the whole interval below 1, "faster" the whole interval above 1. Fewer than two
    usable rounds give "inconclusive".
    """
    series = {
        batch: [math.log(r) for r in ratios if r > 0 and math.isfinite(r)]
        for batch, ratios in round_ratios.items()
    }
    rounds = min((len(s) for s in series.values()), default=0)
    combined = [statistics.fmean(s[i] for s in series.values()) for i in range(rounds)]
    result = _interval(combined)
    result["slower"] = result["verdict"] == "slower"
    result["per_batch"] = {batch: _interval(logs) for batch, logs in series.items()}
    return result


def _interval(logs: Sequence[float]) -> dict[str, Any]:
    """Geometric-mean speed-up, its 95% t-interval and the verdict, from per-round log speed-ups."""
    if len(logs) < 2:
        return {"speedup": None, "speedup_interval": None, "verdict": "inconclusive"}
    mean = statistics.fmean(logs)
    spread = statistics.stdev(logs) / math.sqrt(len(logs))
    t = _T95[len(logs) - 2] if len(logs) - 1 <= len(_T95) else 1.96
    low, high = math.exp(mean - t * spread), math.exp(mean + t * spread)
    verdict = "slower" if high < 1.0 else "faster" if low > 1.0 else "inconclusive"
    return {"speedup": math.exp(mean), "speedup_interval": [low, high], "verdict": verdict}
