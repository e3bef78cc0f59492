"""Devices' label-free health sketches merged per arm, with the per-device bounds the gates use.

The device is the unit of evidence here too. A device's health sketches of a stage window (summed over its
``health`` events, `device_runtime.health.HealthSketch`) weigh at most what one device can credibly claim
in the hours it ran: its weight is ``min(1, MAX_INFERENCES_PER_DEVICE_HOUR * hours / inferences)``, with
exposure hours as `edgekit.rollout._replay.exposure_hours` computes them for every other gate metric. Every
count of a device (classes, confidence bins, detections, input elements and bins) is scaled by its weight,
so a device that claims a million inferences in a minute moves the arm as much as one honest device of that
minute, no more. Moments merge by the weighted form of Chan's formula.

`ArmHealth` is what a label-free gate reads: class and confidence shares per output, input bin shares and
population stability (PSI) against a reference profile per channel, means and variances.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from device_runtime.health import HealthProfile, HealthSketch
from edgekit.rollout._replay import MAX_INFERENCES_PER_DEVICE_HOUR, exposure_hours

__all__ = [
    "PSI_FLOOR",
    "ArmHealth",
    "DeviceHealth",
    "device_weight",
    "merge_arms",
    "population_stability",
]

PSI_FLOOR = 1e-4  # share given to an empty bin, so PSI stays finite (the usual convention)


@dataclass
class DeviceHealth:
    """One device's health sketches of its arm's release in a stage window (summed over its events)."""

    device_id: str
    arm: str  # treatment | control
    first: float = math.inf  # seconds since the epoch: its first and last health event in the window
    last: float = -math.inf
    sketch: HealthSketch = field(default_factory=HealthSketch)

    def add(self, time: float, sketch: HealthSketch) -> None:
        """Fold one more ``health`` event of this device in; an event that does not merge (another channel
        count, another role) raises ValueError and leaves the device exactly as it was."""
        merged = copy.deepcopy(self.sketch)
        merged.merge(sketch)
        self.sketch = merged
        self.first, self.last = min(self.first, time), max(self.last, time)


def device_weight(device: DeviceHealth, stage_started_at: float, until: float) -> float:
    """The share (0..1) of the device's counts that it may claim: capped per device-hour of exposure."""
    inferences = device.sketch.inferences
    if inferences <= 0:
        return 0.0
    hours = exposure_hours(True, device.first, device.last, stage_started_at, until)
    return min(1.0, MAX_INFERENCES_PER_DEVICE_HOUR * hours / inferences)


def population_stability(expected: np.ndarray, observed: np.ndarray, floor: float = PSI_FLOOR) -> float:
    """PSI = sum((o - e) * ln(o / e)) over bins of two share vectors (empty bins count as `floor`)."""
    e = np.maximum(np.asarray(expected, np.float64), floor)
    o = np.maximum(np.asarray(observed, np.float64), floor)
    return float(np.sum((o - e) * np.log(o / e)))


@dataclass
class _Channels:
    n: np.ndarray
    mean: np.ndarray
    m2: np.ndarray
    bins: np.ndarray | None  # [channels, bins], weighted counts


@dataclass
class _Output:
    role: str
    counts: np.ndarray
    scores: np.ndarray
    score_sum: float = 0.0


def _pad(a: np.ndarray, width: int) -> np.ndarray:
    return a if a.shape[-1] >= width else np.concatenate([a, np.zeros(width - a.shape[-1])])


@dataclass
class ArmHealth:
    """The weighted merge of one arm's device sketches (counts are device-bounded, hence floats)."""

    devices: int = 0
    inferences: float = 0.0
    inputs: dict[str, _Channels] = field(default_factory=dict)
    outputs: dict[str, _Output] = field(default_factory=dict)

    def add(self, sketch: HealthSketch, weight: float) -> None:
        """Merge one device's sketch, every count scaled by `weight`."""
        if weight <= 0.0 or sketch.inferences <= 0:
            return
        self.devices += 1
        self.inferences += weight * sketch.inferences
        for name, channels in sketch.inputs.items():
            n = weight * np.array([c.n for c in channels], np.float64)
            mean = np.array([c.mean for c in channels], np.float64)
            m2 = weight * np.array([c.m2 for c in channels], np.float64)
            bins = weight * np.array([c.bins for c in channels], np.float64) if channels[0].bins else None
            mine = self.inputs.get(name)
            if mine is None or mine.n.shape != n.shape:
                if mine is None:
                    self.inputs[name] = _Channels(n, mean, m2, bins)
                continue  # a device reporting another channel count for the input: not comparable
            total = mine.n + n
            safe = np.where(total > 0, total, 1.0)
            delta = mean - mine.mean
            mine.m2 = mine.m2 + m2 + delta * delta * mine.n * n / safe
            mine.mean = mine.mean + delta * n / safe
            mine.n = total
            if bins is not None:
                if mine.bins is None:
                    mine.bins = bins
                elif mine.bins.shape == bins.shape:
                    mine.bins = mine.bins + bins
        for name, out in sketch.outputs.items():
            counts = weight * np.array(out.counts, np.float64)
            scores = weight * np.array(out.scores, np.float64)
            merged = self.outputs.get(name)
            if merged is None:
                self.outputs[name] = _Output(out.role, counts, scores, weight * out.score_sum)
            elif merged.role == out.role:
                width = max(merged.counts.size, counts.size)
                merged.counts = _pad(merged.counts, width) + _pad(counts, width)
                merged.scores = merged.scores + scores
                merged.score_sum += weight * out.score_sum

    # ---- what a gate reads -------------------------------------------------------------------------
    def class_shares(self, output: str, classes: int | None = None) -> np.ndarray | None:
        """Shares of predicted classes (classification) or of detections-per-input bins (detection)."""
        out = self.outputs.get(output)
        if out is None or out.counts.sum() <= 0:
            return None
        counts = out.counts if classes is None else _pad(out.counts, classes)
        return counts / counts.sum()

    def confidence_shares(self, output: str) -> np.ndarray | None:
        """Shares of top-1 confidence bins (classification) or detection score bins."""
        out = self.outputs.get(output)
        if out is None or out.scores.sum() <= 0:
            return None
        return out.scores / out.scores.sum()

    def mean_score(self, output: str) -> float | None:
        """Detection: the mean detection score."""
        out = self.outputs.get(output)
        if out is None or out.role != "detection" or out.scores.sum() <= 0:
            return None
        return float(out.score_sum / out.scores.sum())

    def bin_shares(self, input_name: str) -> np.ndarray | None:
        """[channels, bins] shares of the input's values per reference bin."""
        channels = self.inputs.get(input_name)
        if channels is None or channels.bins is None:
            return None
        totals = channels.bins.sum(axis=1, keepdims=True)
        return np.divide(channels.bins, np.where(totals > 0, totals, 1.0))

    def psi(self, reference: HealthProfile) -> dict[str, list[float]]:
        """Population stability per input channel against the reference profile's bin shares."""
        found: dict[str, list[float]] = {}
        for name, ref in reference.inputs.items():
            shares = self.bin_shares(name)
            if shares is None or shares.shape != ref.expected.shape:
                continue
            found[name] = [population_stability(e, o) for e, o in zip(ref.expected, shares, strict=True)]
        return found

    def to_dict(self, reference: HealthProfile | None = None) -> dict[str, Any]:
        """JSON-ready view (status and dashboard)."""
        inputs = {}
        for name, c in self.inputs.items():
            variance = np.divide(c.m2, np.where(c.n > 0, c.n, 1.0))
            inputs[name] = {
                "elements": c.n.tolist(),
                "mean": c.mean.tolist(),
                "variance": variance.tolist(),
                "bin_shares": None if c.bins is None else self.bin_shares(name).tolist(),  # type: ignore[union-attr]
            }
        if reference is not None:
            for name, values in self.psi(reference).items():
                inputs[name]["psi"] = values
        outputs = {}
        for name, out in self.outputs.items():
            shares = self.class_shares(name)
            confidence = self.confidence_shares(name)
            outputs[name] = {
                "role": out.role,
                "class_shares" if out.role == "classification" else "detections_shares": None
                if shares is None
                else shares.tolist(),
                "confidence_shares" if out.role == "classification" else "score_shares": None
                if confidence is None
                else confidence.tolist(),
            }
            if out.role == "detection":
                outputs[name]["mean_score"] = self.mean_score(name)
        return {
            "devices": self.devices,
            "inferences": self.inferences,
            "inputs": inputs,
            "outputs": outputs,
        }


def merge_arms(
    devices: Iterable[DeviceHealth], stage_started_at: float, until: float
) -> dict[str, ArmHealth]:
    """Per arm (treatment, control): the device-bounded merge of every device's sketches."""
    arms = {"treatment": ArmHealth(), "control": ArmHealth()}
    for device in devices:
        if device.arm in arms:
            arms[device.arm].add(device.sketch, device_weight(device, stage_started_at, until))
    return arms
