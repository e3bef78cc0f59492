"""Label-free health sketches: what the device sends (`HealthSketch`, per input channel and per output) and
how one inference's input is sampled and binned into it.

Device code (standard library and numpy); `device_runtime.health` explains the sketches, re-exports these
names and holds the reference profile and the device's live `HealthMonitor`. The wire form's bounds belong
to `device_runtime.telemetry_contract` (event kind ``health``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from device_runtime.telemetry_contract import (
    CONFIDENCE_BINS,
    DETECTION_COUNT_EDGES,
    MAX_SAMPLED_PER_INFERENCE,
)

__all__ = [
    "SAMPLED",
    "ChannelSketch",
    "HealthSketch",
    "OutputSketch",
    "bin_counts",
    "channel_axis",
    "channel_values",
    "confidence_bin",
    "detection_bin",
    "fold_values",
]

# Elements of one input read per inference (all channels together; the contract allows up to
# MAX_SAMPLED_PER_INFERENCE). A window of 1000 inferences then holds 256k values of an input: far more than
# ten decile bins need, at a cost that stays in the microseconds whatever the input's size.
SAMPLED = 256
assert SAMPLED <= MAX_SAMPLED_PER_INFERENCE


# ---- channels ------------------------------------------------------------------------------------
def channel_axis(shape: tuple[int, ...]) -> int | None:
    """The axis holding an input's channels (None: the whole tensor is one channel).

    A 3-d or higher tensor with 1-4 entries on axis 1 (NCHW) or, failing that, on its last axis (NHWC).
    """
    if len(shape) >= 3:
        if 1 <= shape[1] <= 4:
            return 1
        if 1 <= shape[-1] <= 4:
            return len(shape) - 1
    return None


def channel_values(array: np.ndarray, axis: int | None, limit: int = SAMPLED) -> np.ndarray:
    """At most about `limit` elements of `array` as [m, channels] (an even stride, views where possible)."""
    if axis is None:
        flat = array.reshape(-1, 1)
    elif axis == array.ndim - 1:
        flat = array.reshape(-1, array.shape[-1])
    elif axis == 1 and array.shape[0] == 1:
        flat = array.reshape(array.shape[1], -1).T
    else:
        flat = np.moveaxis(array, axis, -1).reshape(-1, array.shape[axis])
    per_channel = max(1, limit // flat.shape[1])
    stride = -(-flat.shape[0] // per_channel)
    return flat[::stride] if stride > 1 else flat


def bin_counts(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Counts [channels, edges + 1] of `values` [m, channels]: bin = number of edges strictly below."""
    width = edges.shape[1] + 1
    # searchsorted(side="left") counts the edges strictly below each value; NaN sorts past every edge.
    return np.stack(
        [
            np.bincount(np.searchsorted(edges[c], values[:, c], side="left"), minlength=width)
            for c in range(edges.shape[0])
        ]
    )


# ---- sketches ------------------------------------------------------------------------------------
@dataclass
class ChannelSketch:
    """One input channel: element count, mean, M2 and counts per reference bin (empty: no reference)."""

    n: int = 0
    mean: float = 0.0
    m2: float = 0.0
    bins: list[int] = field(default_factory=list)

    def merge(self, other: ChannelSketch) -> None:
        """Chan's parallel update of count, mean and M2; bin counts add."""
        if other.n:
            total = self.n + other.n
            delta = other.mean - self.mean
            self.mean += delta * other.n / total
            self.m2 += other.m2 + delta * delta * self.n * other.n / total
            self.n = total
        if other.bins:
            self.bins = (
                [a + b for a, b in zip(self.bins, other.bins, strict=True)] if self.bins else list(other.bins)
            )

    @property
    def variance(self) -> float:
        return self.m2 / self.n if self.n else 0.0


@dataclass
class OutputSketch:
    """One output's role sketch: classification (classes, confidence) or detection (detections, scores)."""

    role: str
    counts: list[int]  # classification: per predicted class; detection: per DETECTION_COUNT_EDGES bin
    scores: list[int]  # per confidence/score bin (CONFIDENCE_BINS)
    score_sum: float = 0.0  # detection: sum of detection scores

    def merge(self, other: OutputSketch) -> None:
        if other.role != self.role:
            raise ValueError(f"cannot merge a {other.role} sketch into a {self.role} sketch")
        if len(other.counts) > len(self.counts):
            self.counts += [0] * (len(other.counts) - len(self.counts))
        for i, c in enumerate(other.counts):
            self.counts[i] += c
        self.scores = [a + b for a, b in zip(self.scores, other.scores, strict=True)]
        self.score_sum += other.score_sum

    def to_dict(self) -> dict[str, Any]:
        if self.role == "classification":
            return {"role": self.role, "classes": list(self.counts), "confidence": list(self.scores)}
        return {
            "role": self.role,
            "detections": list(self.counts),
            "scores": list(self.scores),
            "score_sum": self.score_sum,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> OutputSketch:
        if data["role"] == "classification":
            return cls(
                "classification", [int(c) for c in data["classes"]], [int(c) for c in data["confidence"]]
            )
        if data["role"] == "detection":
            return cls(
                "detection",
                [int(c) for c in data["detections"]],
                [int(c) for c in data["scores"]],
                float(data["score_sum"]),
            )
        raise ValueError(f"role {str(data['role'])[:20]!r}")


@dataclass
class HealthSketch:
    """Everything one bundle's predictions showed over a window: mergeable, bounded, no raw values."""

    inferences: int = 0
    window_s: float = 0.0
    inputs: dict[str, list[ChannelSketch]] = field(default_factory=dict)
    outputs: dict[str, OutputSketch] = field(default_factory=dict)

    def merge(self, other: HealthSketch) -> None:
        """Add `other` (a later or parallel window of the same bundle) into this sketch."""
        self.inferences += other.inferences
        self.window_s += other.window_s
        for name, channels in other.inputs.items():
            mine = self.inputs.setdefault(name, [ChannelSketch() for _ in channels])
            if len(mine) != len(channels):
                raise ValueError(f"input {name!r}: {len(mine)} vs {len(channels)} channels")
            for a, b in zip(mine, channels, strict=True):
                a.merge(b)
        for name, sketch in other.outputs.items():
            if name in self.outputs:
                self.outputs[name].merge(sketch)
            else:
                self.outputs[name] = OutputSketch(
                    sketch.role, list(sketch.counts), list(sketch.scores), sketch.score_sum
                )

    def to_payload(self, bundle_id: str, version: str | None) -> dict[str, Any]:
        """The ``health`` telemetry payload (see `device_runtime.telemetry_contract`)."""
        payload: dict[str, Any] = {
            "bundle_id": bundle_id,
            "inferences": self.inferences,
            "window_s": float(self.window_s),
            "inputs": [
                {
                    "name": name,
                    "n": [c.n for c in channels],
                    "mean": [float(c.mean) for c in channels],
                    "m2": [float(c.m2) for c in channels],
                    "bins": [list(c.bins) for c in channels] if channels and channels[0].bins else [],
                }
                for name, channels in self.inputs.items()
            ],
            "outputs": [{"name": name, **sketch.to_dict()} for name, sketch in self.outputs.items()],
        }
        if version is not None:
            payload["version"] = version
        return payload

    @classmethod
    def from_payload(cls, payload: dict[str, Any]) -> HealthSketch:
        """A sketch from a ``health`` payload the contract accepted."""
        sketch = cls(int(payload["inferences"]), float(payload["window_s"]))
        for entry in payload["inputs"]:
            bins = entry["bins"] or [[] for _ in entry["n"]]
            sketch.inputs[entry["name"]] = [
                ChannelSketch(int(n), float(m), float(m2), [int(b) for b in row])
                for n, m, m2, row in zip(entry["n"], entry["mean"], entry["m2"], bins, strict=True)
            ]
        for entry in payload["outputs"]:
            sketch.outputs[entry["name"]] = OutputSketch.from_dict(entry)
        return sketch


def fold_values(channels: list[ChannelSketch], values: np.ndarray, edges: np.ndarray | None) -> None:
    """Fold sampled values [m, channels] into the channel sketches (two-pass moments, then Chan)."""
    data = values.astype(np.float64, copy=False)
    if not np.isfinite(data.sum()):  # NaN or infinity in an input: those rows say nothing, leave them out
        data = data[np.isfinite(data).all(axis=1)]
    n = data.shape[0]
    if n == 0:
        return
    mean = data.mean(axis=0)
    m2 = ((data - mean) ** 2).sum(axis=0)
    counts = bin_counts(data, edges).tolist() if edges is not None else None
    for c, channel in enumerate(channels):
        channel.merge(ChannelSketch(n, float(mean[c]), float(m2[c]), counts[c] if counts is not None else []))


def confidence_bin(score: float) -> int:
    """The confidence bin of a top-1 score (clipped to [0, 1]; bin i holds [i/B, (i+1)/B), 1.0 the last)."""
    if not score > 0.0:  # also NaN
        return 0
    return min(CONFIDENCE_BINS - 1, int(score * CONFIDENCE_BINS))


def detection_bin(count: int) -> int:
    """The detections-per-input bin: bin i holds counts up to DETECTION_COUNT_EDGES[i]."""
    for i, edge in enumerate(DETECTION_COUNT_EDGES):
        if count <= edge:
            return i
    return len(DETECTION_COUNT_EDGES)
