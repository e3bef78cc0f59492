"""Label-free model health: the reference profile a bundle carries, and mergeable on-device sketches.

A bundle may carry ``health.json`` (``edgekit.health/v1``, signed like every member): per model input, per
channel, the mean, variance and quantile bin edges of the calibration or golden data after the device's
preprocessing, with the share of that data in each bin; per output, the predicted-class and confidence
distributions (classification) or the detections-per-input and score distributions (detection).

On the device, `HealthMonitor` keeps, per bundle, bounded sketches of what `Runtime.predict` saw:

- per input channel: count, mean and M2 (Welford, merged with Chan's formula) and counts per reference
  bin (so the server computes population stability directly); at most `SAMPLED` elements of each
  input are read per inference (an even stride), so the cost does not grow with the input;
- per classification output: counts per predicted class and per confidence bin (top-1 score after the
  output's activation, clipped to [0, 1], bins of width 1/`CONFIDENCE_BINS`);
- per detection output: counts of detections per input (`DETECTION_COUNT_EDGES`) and per score bin.

Sketches merge exactly (counts add; moments by Chan's formula), so the merge of the parts equals the sketch
of the whole, up to float rounding of the moments. Only these aggregates leave the device, never an input
value. The wire form and its bounds belong to `device_runtime.telemetry_contract` (event kind ``health``).
The sketch types and the sampling and binning of one input are `device_runtime._health_sketch`
(re-exported here); this module holds the reference profile and the live `HealthMonitor`.
Device code: standard library and numpy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from device_runtime._health_sketch import (
    SAMPLED,
    ChannelSketch,
    HealthSketch,
    OutputSketch,
    bin_counts,
    channel_axis,
    channel_values,
    confidence_bin,
    detection_bin,
    fold_values,
)
from device_runtime.errors import InstallError
from device_runtime.telemetry_contract import (
    CONFIDENCE_BINS,
    DETECTION_COUNT_EDGES,
    MAX_HEALTH_CHANNELS,
    MAX_HEALTH_CLASSES,
    MAX_HEALTH_INPUTS,
    MAX_HEALTH_OUTPUTS,
    MAX_QUANTILE_EDGES,
)

__all__ = [
    "HEALTH_FILE",
    "PROFILE_SCHEMA",
    "SAMPLED",
    "ChannelSketch",
    "HealthMonitor",
    "HealthProfile",
    "HealthSketch",
    "InputReference",
    "OutputSketch",
    "bin_counts",
    "build_profile",
    "channel_axis",
    "channel_values",
    "parse_profile",
]

HEALTH_FILE = "health.json"
PROFILE_SCHEMA = "edgekit.health/v1"
REFERENCE_SAMPLED = 4096  # elements of each reference sample the profile reads (made once, on the host)
QUANTILES = 10  # the profile's bins per channel: deciles of the reference data
_BUFFER = 64  # inferences whose sampled inputs are buffered before the moments are folded (amortized)


# ---- the reference profile ---------------------------------------------------------------------------
@dataclass(frozen=True)
class InputReference:
    """One input's reference: channel axis, per-channel mean, variance, bin edges and bin shares."""

    axis: int | None
    mean: tuple[float, ...]
    variance: tuple[float, ...]
    edges: np.ndarray  # [channels, edges] float64, ascending per channel
    expected: np.ndarray  # [channels, edges + 1] shares of the reference data per bin

    def to_dict(self) -> dict[str, Any]:
        return {
            "axis": self.axis,
            "mean": list(self.mean),
            "variance": list(self.variance),
            "edges": self.edges.tolist(),
            "expected": self.expected.tolist(),
        }


@dataclass(frozen=True)
class HealthProfile:
    """A bundle's reference profile (``health.json``)."""

    samples: int
    inputs: dict[str, InputReference]
    outputs: dict[str, dict[str, Any]]  # output name -> the sketch of the reference data (wire form)

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": PROFILE_SCHEMA,
            "samples": self.samples,
            "inputs": {name: ref.to_dict() for name, ref in self.inputs.items()},
            "outputs": self.outputs,
        }


def _floats(value: Any, where: str, length: int | None = None) -> list[float]:
    if not isinstance(value, list) or (length is not None and len(value) != length):
        raise InstallError(
            f"health.json: {where} must be a list of {length or 'some'} numbers", reason="health"
        )
    out = []
    for v in value:
        if type(v) not in (int, float) or not math.isfinite(v):
            raise InstallError(f"health.json: {where} holds a non-finite or non-number", reason="health")
        out.append(float(v))
    return out


def parse_profile(document: Any) -> HealthProfile:
    """A reference profile from its parsed JSON, every field bounded.

    Raises:
        InstallError: reason "health": not an ``edgekit.health/v1`` profile within the bounds.
    """

    def refuse(message: str) -> InstallError:
        return InstallError(
            f"health.json: {message}; rebuild the bundle with edgekit bundle", reason="health"
        )

    if not isinstance(document, dict) or document.get("schema") != PROFILE_SCHEMA:
        raise refuse(f"not an {PROFILE_SCHEMA} profile")
    samples, inputs, outputs = document.get("samples"), document.get("inputs"), document.get("outputs")
    if (
        type(samples) is not int
        or samples < 1
        or not isinstance(inputs, dict)
        or not isinstance(outputs, dict)
    ):
        raise refuse("samples (>= 1), inputs and outputs are required")
    if len(inputs) > MAX_HEALTH_INPUTS or len(outputs) > MAX_HEALTH_OUTPUTS:
        raise refuse(f"at most {MAX_HEALTH_INPUTS} inputs and {MAX_HEALTH_OUTPUTS} outputs")
    parsed: dict[str, InputReference] = {}
    for name, ref in inputs.items():
        if not isinstance(ref, dict):
            raise refuse(f"input {name[:40]!r} is not an object")
        axis = ref.get("axis")
        if axis is not None and (type(axis) is not int or not 0 <= axis < 8):
            raise refuse(f"input {name[:40]!r}: axis must be null or 0..7")
        mean = _floats(ref.get("mean"), f"inputs.{name[:40]}.mean")
        channels = len(mean)
        if not 1 <= channels <= MAX_HEALTH_CHANNELS:
            raise refuse(f"input {name[:40]!r}: 1..{MAX_HEALTH_CHANNELS} channels")
        variance = _floats(ref.get("variance"), f"inputs.{name[:40]}.variance", channels)
        rows = ref.get("edges")
        if not isinstance(rows, list) or len(rows) != channels:
            raise refuse(f"input {name[:40]!r}: one list of edges per channel")
        edges = np.array([_floats(r, f"inputs.{name[:40]}.edges") for r in rows], dtype=np.float64)
        if edges.ndim != 2 or not 1 <= edges.shape[1] <= MAX_QUANTILE_EDGES or np.any(np.diff(edges) < 0):
            raise refuse(f"input {name[:40]!r}: 1..{MAX_QUANTILE_EDGES} ascending edges per channel")
        shares = ref.get("expected")
        if not isinstance(shares, list) or len(shares) != channels:
            raise refuse(f"input {name[:40]!r}: one list of bin shares per channel")
        expected = np.array(
            [_floats(r, f"inputs.{name[:40]}.expected", edges.shape[1] + 1) for r in shares], dtype=np.float64
        )
        if np.any(expected < 0) or np.any(np.abs(expected.sum(axis=1) - 1.0) > 1e-6):
            raise refuse(f"input {name[:40]!r}: bin shares must be >= 0 and sum to 1")
        parsed[name] = InputReference(axis, tuple(mean), tuple(variance), edges, expected)
    for name, sketch in outputs.items():
        try:
            OutputSketch.from_dict(sketch)
        except (KeyError, TypeError, ValueError) as e:
            raise refuse(f"output {name[:40]!r} is not a sketch ({e})") from e
    return HealthProfile(samples, parsed, outputs)


# ---- live accumulation on the device -------------------------------------------------------------
class _InputAccumulator:
    """Sampled values of one input, buffered and folded `_BUFFER` inferences at a time.

    The hot path (same shape as the call before) is one strided view and one copy into the buffer."""

    __slots__ = ("axis", "buffer", "channels", "edges", "fill", "mode", "shape", "stride", "width")

    def __init__(self, axis: int | None, channels: int, edges: np.ndarray | None) -> None:
        self.axis, self.edges = axis, edges
        self.channels = [ChannelSketch() for _ in range(channels)]
        self.buffer: np.ndarray | None = None
        self.fill = 0
        self.shape: tuple[int, ...] | None = None
        self.mode, self.stride, self.width = 0, 1, channels

    def _start(self, array: np.ndarray) -> None:
        """A new input shape: fold what is buffered, then plan the sampling and a buffer for this shape."""
        self.fold()
        values = channel_values(array, self.axis)
        axis, width = self.axis, values.shape[1]
        per_channel = max(1, SAMPLED // width)
        if axis is None or axis == array.ndim - 1:
            self.mode, rows = 0, array.size // width  # reshape(-1, C)[::stride]
        elif axis == 1 and array.shape[0] == 1:
            self.mode, rows = 1, array.size // width  # reshape(C, -1)[:, ::stride].T
        else:
            self.mode, rows = 2, 0  # any other layout: channel_values
        self.stride = max(1, -(-rows // per_channel))
        self.shape, self.width = array.shape, width
        self.buffer = np.empty((_BUFFER, *values.shape), np.float32)  # half the cache footprint

    def add(self, array: np.ndarray) -> None:
        if array.shape != self.shape:
            self._start(array)
        assert self.buffer is not None
        mode = self.mode
        if mode == 0:
            self.buffer[self.fill] = array.reshape(-1, self.width)[:: self.stride]
        elif mode == 1:
            self.buffer[self.fill] = array.reshape(self.width, -1)[:, :: self.stride].T
        else:
            self.buffer[self.fill] = channel_values(array, self.axis)
        self.fill += 1
        if self.fill == _BUFFER:
            self.fold()

    def fold(self) -> None:
        if self.buffer is not None and self.fill:
            fold_values(
                self.channels, self.buffer[: self.fill].reshape(-1, self.buffer.shape[-1]), self.edges
            )
        self.fill = 0


class _OutputAccumulator:
    """Per-inference role observations as Python ints, counted when the window closes."""

    __slots__ = ("classes", "role", "scores", "width")

    def __init__(self, role: str, width: int) -> None:
        self.role, self.width = role, width
        self.classes: list[int] = []
        self.scores: list[float] = []

    def sketch(self) -> OutputSketch:
        # Classification: as many counts as the highest class seen (classes past the cap share the last).
        width = min(self.width, max(self.classes) + 1) if self.role == "classification" else self.width
        counts = np.bincount(np.minimum(self.classes, width - 1), minlength=width)
        scores = [0] * CONFIDENCE_BINS
        if self.role == "classification":
            for s in self.scores:
                scores[confidence_bin(s)] += 1
            return OutputSketch(self.role, counts.tolist(), scores)
        for s in self.scores:
            scores[confidence_bin(s)] += 1
        return OutputSketch(self.role, counts.tolist(), scores, float(sum(self.scores)))


class _Live:
    """One bundle's open window."""

    __slots__ = ("first", "inferences", "inputs", "outputs")

    def __init__(self, first: float) -> None:
        self.first = first
        self.inferences = 0
        self.inputs: dict[str, _InputAccumulator] = {}
        self.outputs: dict[str, _OutputAccumulator] = {}


class HealthMonitor:
    """Per-bundle health sketches of the predictions served; drained as ``health`` payloads per window.

    Not thread-safe on its own: the runtime calls it under its lock.
    """

    def __init__(self, *, every: int, seconds: float) -> None:
        self._every, self._seconds = every, seconds
        self._live: dict[str, tuple[str | None, _Live]] = {}
        self._most = 0  # inferences of the fullest open window
        self._oldest = math.inf  # start of the oldest open window

    def observe(
        self,
        bundle_id: str,
        version: str | None,
        profile: HealthProfile | None,
        feeds: dict[str, Any],
        result: Any,
        now: float,
    ) -> None:
        """Count one prediction (`result`: a `PredictionResult`) of `feeds` into the bundle's window."""
        # Every predict with health on calls this: no per-call containers beyond what the counts need.
        entry = self._live.get(bundle_id)
        if entry is None:
            entry = self._live[bundle_id] = (version, _Live(now))
            self._oldest = min(self._oldest, now)
        live = entry[1]
        # Outputs are read before anything is counted, and counted with the inference only when all were
        # read: a window's histograms always sum to its inference count, which the wire contract checks.
        top = result.top_index
        if top is not None and result.top_k:
            top, score = int(top), float(result.top_k[0][1])
        else:
            top = None
        marks = self._detections(result.decoded) if result.decoded else ()
        inputs = live.inputs
        for name, value in feeds.items():
            accumulator = inputs.get(name)
            try:
                if accumulator is None:
                    self._add_input(live, name, value, profile.inputs if profile is not None else {})
                else:
                    accumulator.add(value)
            except Exception:  # an input this sketch cannot read: its channels stop, the rest goes on
                inputs.pop(name, None)
        if top is not None:
            out = live.outputs.get("top-1")
            if out is None and len(live.outputs) < MAX_HEALTH_OUTPUTS:
                out = live.outputs["top-1"] = _OutputAccumulator("classification", MAX_HEALTH_CLASSES)
            if out is not None:
                out.classes.append(top)
                out.scores.append(score)
        for name, index, scores in marks:
            out = live.outputs.get(name)
            if out is None:
                if len(live.outputs) >= MAX_HEALTH_OUTPUTS:
                    continue
                out = live.outputs[name] = _OutputAccumulator("detection", len(DETECTION_COUNT_EDGES) + 1)
            out.classes.append(index)
            if out.role == "classification":  # a detection output named like the top-1 sketch
                out.scores.append(scores[0])
            else:
                out.scores.extend(scores)
        live.inferences += 1
        if live.inferences > self._most:
            self._most = live.inferences

    @staticmethod
    def _detections(decoded: dict[str, dict[str, Any]]) -> list[tuple[str, int, list[float]]]:
        """(output name, detections-per-input bin, clipped scores) of each detection output."""
        marks = []
        for name, output in decoded.items():
            if output.get("role") != "detection":
                continue
            found = output.get("detections", [])
            scores = [min(1.0, max(0.0, float(d["score"]))) for d in found]
            marks.append((name, detection_bin(len(found)), scores))
        return marks

    @staticmethod
    def _add_input(live: _Live, name: str, value: Any, references: dict[str, InputReference]) -> None:
        """The first value of an input in this window: plan its sketch, then count the value."""
        if len(live.inputs) >= MAX_HEALTH_INPUTS:
            return
        array = np.asarray(value)
        if array.dtype.kind not in "iuf" or array.size == 0:
            return
        ref = references.get(name)
        axis = ref.axis if ref is not None else channel_axis(array.shape)
        channels = 1 if axis is None else int(array.shape[axis])
        if channels > MAX_HEALTH_CHANNELS:
            axis, channels = None, 1
        edges = ref.edges if ref is not None and ref.edges.shape[0] == channels else None
        accumulator = live.inputs[name] = _InputAccumulator(axis, channels, edges)
        accumulator.add(value)

    def due(self, now: float) -> bool:
        """A window is full (`every` inferences) or old (`seconds`)."""
        return self._most >= self._every or now - self._oldest >= self._seconds

    def drain(self, now: float) -> list[dict[str, Any]]:
        """Close every open window: one ``health`` payload per bundle that served predictions."""
        payloads = []
        for bundle_id, (version, live) in self._live.items():
            if not live.inferences:
                continue
            sketch = HealthSketch(live.inferences, max(0.0, min(now - live.first, 3600.0)))
            for name, accumulator in live.inputs.items():
                accumulator.fold()
                sketch.inputs[name] = accumulator.channels
            for name, out in live.outputs.items():
                sketch.outputs[name] = out.sketch()
            payloads.append(sketch.to_payload(bundle_id, version))
        self._live.clear()
        self._most, self._oldest = 0, math.inf
        return payloads


# ---- the reference, built on the host from calibration or golden data -----------------------------
def build_profile(samples: list[dict[str, np.ndarray]], results: list[Any]) -> HealthProfile:
    """The reference profile of preprocessed `samples` (one feed dict per inference) and the
    `PredictionResult`-like `results` the device's postprocessing made of them (same order)."""
    inputs: dict[str, InputReference] = {}
    for name in list(samples[0])[:MAX_HEALTH_INPUTS]:
        first = np.asarray(samples[0][name])
        if first.dtype.kind not in "iuf" or first.size == 0:
            continue
        axis = channel_axis(first.shape)
        channels = 1 if axis is None else int(first.shape[axis])
        if channels > MAX_HEALTH_CHANNELS:
            axis, channels = None, 1
        values = np.concatenate(
            [
                channel_values(np.asarray(s[name]), axis, REFERENCE_SAMPLED).astype(np.float64)
                for s in samples
                if name in s
            ]
        )
        edges = np.quantile(values, np.arange(1, QUANTILES) / QUANTILES, axis=0).T  # [channels, Q - 1]
        expected = bin_counts(values, edges) / values.shape[0]
        inputs[name] = InputReference(
            axis, tuple(values.mean(axis=0).tolist()), tuple(values.var(axis=0).tolist()), edges, expected
        )
    monitor = HealthMonitor(every=len(samples) + 1, seconds=math.inf)
    for result in results:
        monitor.observe("reference", None, None, {}, result, 0.0)
    drained = monitor.drain(0.0)
    outputs = (
        {o["name"]: {k: v for k, v in o.items() if k != "name"} for o in drained[0]["outputs"]}
        if drained
        else {}
    )
    return HealthProfile(len(samples), inputs, outputs)
