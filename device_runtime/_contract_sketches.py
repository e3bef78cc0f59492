"""The telemetry contract's sketch kinds: ``health`` (label-free sketches) and ``shadow`` (shadow trials).

Their typed payloads and parsers; the rules are documented in `device_runtime.telemetry_contract`, which
dispatches to `parse_health` and `parse_shadow` and re-exports the payload types.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from device_runtime._contract_fields import (
    _OUTPUT,
    CONFIDENCE_BINS,
    DETECTION_COUNT_EDGES,
    HISTOGRAM_SIZE,
    MAX_ABS_MOMENT,
    MAX_DETECTIONS_PER_INPUT,
    MAX_HEALTH_CHANNELS,
    MAX_HEALTH_CLASSES,
    MAX_HEALTH_INPUTS,
    MAX_HEALTH_OUTPUTS,
    MAX_INFERENCES_PER_S,
    MAX_QUANTILE_EDGES,
    MAX_SAMPLED_PER_INFERENCE,
    MAX_WINDOW_S,
    MIN_WINDOW_S,
    SHADOW_ROLES,
    _bundle,
    _counts,
    _fail,
    _int,
    _keys,
    _match,
    _number,
    _one_of,
    _unique,
    _version,
)

__all__ = [
    "HealthChannels",
    "HealthOutput",
    "HealthPayload",
    "ShadowOutput",
    "ShadowPayload",
    "parse_health",
    "parse_shadow",
]


@dataclass(frozen=True, slots=True)
class HealthChannels:
    """One input's channel sketches: counts, means, M2s, and counts per reference bin (() without one)."""

    name: str
    n: tuple[int, ...]
    mean: tuple[float, ...]
    m2: tuple[float, ...]
    bins: tuple[tuple[int, ...], ...]


@dataclass(frozen=True, slots=True)
class HealthOutput:
    """One output's role sketch. classification: ``counts`` per predicted class, ``scores`` per confidence
    bin; detection: ``counts`` per `DETECTION_COUNT_EDGES` bin, ``scores`` per score bin, ``score_sum``."""

    name: str
    role: str
    counts: tuple[int, ...]
    scores: tuple[int, ...]
    score_sum: float = 0.0


@dataclass(frozen=True, slots=True)
class HealthPayload:
    """Label-free health sketches of one bundle over one reporting window (`device_runtime.health`)."""

    bundle_id: str
    version: str | None
    inferences: int
    window_s: float
    inputs: tuple[HealthChannels, ...]
    outputs: tuple[HealthOutput, ...]


@dataclass(frozen=True, slots=True)
class ShadowOutput:
    """One output's shadow agreement: runs compared and runs whose output agreed with the served one."""

    name: str
    role: str
    compared: int
    agreed: int


@dataclass(frozen=True, slots=True)
class ShadowPayload:
    """A shadow trial over one reporting window: the shadow bundle against the served one."""

    bundle_id: str  # the shadow bundle
    served_bundle_id: str
    compared: int
    agreed: int
    outputs: tuple[ShadowOutput, ...]  # sorted by name
    failures: int
    timeouts: int
    skipped_cpu: int
    latency_histogram: tuple[int, ...]  # len(LATENCY_BUCKETS_MS) + 1 counts of compared runs
    version: str | None = None
    window_s: float | None = None
    dropped: int = 0
    stopped: bool = False


_HEALTH_REQUIRED = frozenset(("bundle_id", "inferences", "window_s", "inputs", "outputs"))
_HEALTH_ALLOWED = _HEALTH_REQUIRED | {"version"}
_CHANNEL_KEYS = frozenset(("name", "n", "mean", "m2", "bins"))
_CLASSIFICATION_KEYS = frozenset(("name", "role", "classes", "confidence"))
_DETECTION_KEYS = frozenset(("name", "role", "detections", "scores", "score_sum"))


def _health_channels(entry: dict[str, Any], inferences: int) -> HealthChannels:
    _keys("health input", entry, _CHANNEL_KEYS, _CHANNEL_KEYS)
    n = _counts(entry["n"], "inputs[].n", 1, MAX_HEALTH_CHANNELS)
    channels = len(n)
    if max(n) > inferences * MAX_SAMPLED_PER_INFERENCE:
        raise _fail(
            "out-of-range", f"inputs[].n: more than {MAX_SAMPLED_PER_INFERENCE} elements per inference"
        )
    means, m2s = entry["mean"], entry["m2"]
    if type(means) is not list or type(m2s) is not list or not len(means) == len(m2s) == channels:
        raise _fail("histogram-length", f"inputs[].mean and m2 need one number per channel ({channels})")
    mean = tuple(_number(v, "inputs[].mean", -MAX_ABS_MOMENT, MAX_ABS_MOMENT) for v in means)
    m2 = tuple(_number(v, "inputs[].m2", 0.0, math.inf) for v in m2s)
    if any(c == 0 and (a != 0.0 or b != 0.0) for c, a, b in zip(n, mean, m2, strict=True)):
        raise _fail("sketch-inconsistent", "inputs[]: a channel with no elements has a mean or M2")
    rows = entry["bins"]
    if type(rows) is not list or len(rows) not in (0, channels):
        raise _fail("histogram-length", f"inputs[].bins: [] or one list per channel ({channels})")
    bins = tuple(
        _counts(row, "inputs[].bins[]", 2, MAX_QUANTILE_EDGES + 1, count)
        for row, count in zip(rows, n, strict=False)
    )
    if len({len(b) for b in bins}) > 1:
        raise _fail("histogram-length", "inputs[].bins: every channel has the same number of bins")
    return HealthChannels(entry["name"], n, mean, m2, bins)


def _health_output(entry: dict[str, Any], inferences: int) -> HealthOutput:
    role = _one_of(entry.get("role"), "outputs[].role", ("classification", "detection"))
    if role == "classification":
        _keys("health output", entry, _CLASSIFICATION_KEYS, _CLASSIFICATION_KEYS)
        classes = _counts(entry["classes"], "outputs[].classes", 1, MAX_HEALTH_CLASSES, inferences)
        confidence = _counts(
            entry["confidence"], "outputs[].confidence", CONFIDENCE_BINS, CONFIDENCE_BINS, inferences
        )
        return HealthOutput(entry["name"], role, classes, confidence)
    _keys("health output", entry, _DETECTION_KEYS, _DETECTION_KEYS)
    width = len(DETECTION_COUNT_EDGES) + 1
    detections = _counts(entry["detections"], "outputs[].detections", width, width, inferences)
    scores = _counts(entry["scores"], "outputs[].scores", CONFIDENCE_BINS, CONFIDENCE_BINS)
    lowest = sum(c * (low + 1) for c, low in zip(detections[1:], DETECTION_COUNT_EDGES, strict=False))
    highest = sum(
        c * high
        for c, high in zip(detections, (*DETECTION_COUNT_EDGES, MAX_DETECTIONS_PER_INPUT), strict=True)
    )
    total = sum(scores)
    if not lowest <= total <= highest:
        raise _fail(
            "sketch-inconsistent",
            f"outputs[].scores count {total} detections; the detections bins allow {lowest}..{highest}",
        )
    score_sum = _number(entry["score_sum"], "outputs[].score_sum", 0.0, float(highest))
    low = sum(c * i / CONFIDENCE_BINS for i, c in enumerate(scores))
    high = sum(c * (i + 1) / CONFIDENCE_BINS for i, c in enumerate(scores))
    if not low * (1 - 1e-9) - 1e-9 <= score_sum <= high * (1 + 1e-9) + 1e-9:
        raise _fail("sketch-inconsistent", f"outputs[].score_sum {score_sum:g} is outside {low:g}..{high:g}")
    return HealthOutput(entry["name"], role, detections, scores, score_sum)


def parse_health(p: Any) -> HealthPayload:
    _keys("health", p, _HEALTH_REQUIRED, _HEALTH_ALLOWED)
    window = _number(p["window_s"], "window_s", 0.0, MAX_WINDOW_S)
    limit = int(MAX_INFERENCES_PER_S * (window if window > MIN_WINDOW_S else MIN_WINDOW_S))
    inferences = _int(p["inferences"], "inferences", 1, limit)
    inputs = _unique(p["inputs"], "inputs", MAX_HEALTH_INPUTS)
    outputs = _unique(p["outputs"], "outputs", MAX_HEALTH_OUTPUTS)
    return HealthPayload(
        _bundle(p["bundle_id"]),
        _version(p),
        inferences,
        window,
        tuple(_health_channels(e, inferences) for e in inputs),
        tuple(_health_output(e, inferences) for e in outputs),
    )


_SHADOW_REQUIRED = frozenset(
    (
        "bundle_id",
        "served_bundle_id",
        "compared",
        "agreed",
        "outputs",
        "failures",
        "timeouts",
        "skipped_cpu",
        "latency_histogram",
    )
)
_SHADOW_ALLOWED = _SHADOW_REQUIRED | {"version", "window_s", "dropped", "stopped"}
_SHADOW_OUTPUT_KEYS = frozenset(("role", "compared", "agreed"))


def _shadow_output(name: Any, entry: Any, limit: int) -> ShadowOutput:
    _match(name, "outputs key", _OUTPUT, "a tensor name")
    _keys("shadow output", entry, _SHADOW_OUTPUT_KEYS, _SHADOW_OUTPUT_KEYS)
    role = _one_of(entry["role"], "outputs[].role", SHADOW_ROLES)
    compared = _int(entry["compared"], "outputs[].compared", 0, limit)
    agreed = _int(entry["agreed"], "outputs[].agreed", 0, limit)
    if agreed > compared:
        raise _fail("sketch-inconsistent", f"outputs[{name[:40]!r}]: agreed {agreed} > compared {compared}")
    return ShadowOutput(name, role, compared, agreed)


def parse_shadow(p: Any) -> ShadowPayload:
    _keys("shadow", p, _SHADOW_REQUIRED, _SHADOW_ALLOWED)
    window: float | None = None
    if p.get("window_s") is not None:
        window = _number(p["window_s"], "window_s", 0.0, MAX_WINDOW_S)
    span = MAX_WINDOW_S if window is None else max(window, MIN_WINDOW_S)
    limit = int(MAX_INFERENCES_PER_S * span)
    compared = _int(p["compared"], "compared", 0, limit)
    agreed = _int(p["agreed"], "agreed", 0, limit)
    if agreed > compared:
        raise _fail("sketch-inconsistent", f"agreed {agreed} > compared {compared}")
    outputs = p["outputs"]
    if type(outputs) is not dict:
        raise _fail(
            "wrong-type", f"outputs must be an object of output name -> counts, got {type(outputs).__name__}"
        )
    if len(outputs) > MAX_HEALTH_OUTPUTS:
        raise _fail("too-long", f"outputs has {len(outputs)} entries, more than {MAX_HEALTH_OUTPUTS}")
    parsed = tuple(_shadow_output(name, entry, limit) for name, entry in sorted(outputs.items()))
    if compared and not parsed:
        raise _fail("sketch-inconsistent", f"{compared} runs compared but no output is reported")
    if any(o.compared > compared for o in parsed):
        raise _fail("sketch-inconsistent", "an output compared more runs than the primary output's compared")
    if parsed and all((o.compared, o.agreed) != (compared, agreed) for o in parsed):
        raise _fail("sketch-inconsistent", "compared and agreed are not any output's (the primary output's)")
    histogram = _counts(p["latency_histogram"], "latency_histogram", HISTOGRAM_SIZE, HISTOGRAM_SIZE, compared)
    stopped = p.get("stopped", False)
    if type(stopped) is not bool:
        raise _fail("wrong-type", f"stopped must be true or false, got {type(stopped).__name__}")
    return ShadowPayload(
        _bundle(p["bundle_id"]),
        _bundle(p["served_bundle_id"], "served_bundle_id"),
        compared,
        agreed,
        parsed,
        _int(p["failures"], "failures", 0, limit),
        _int(p["timeouts"], "timeouts", 0, limit),
        _int(p["skipped_cpu"], "skipped_cpu", 0, limit),
        histogram,
        _version(p),
        window,
        _int(p.get("dropped", 0), "dropped", 0, limit),
        stopped,
    )
