"""Label-free stage gates: notice a bad release from what devices predict and see, with no ground truth.

Five gates, each one `DecisionRecord` (metric names are stable): ``class_shift``, ``confidence_shift``,
``input_drift``, ``shadow_agreement``, ``shadow_failures``. The statistics, their assumptions and the
defaults are explained below (in progress: see `edgekit.rollout._label_free_gates`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np

from device_runtime.telemetry_contract import CONFIDENCE_BINS
from edgekit.rollout._label_free_gates import (
    Judge,
    class_shift,
    confidence_shift,
    input_drift,
    rec,
    shadow_agreement,
    shadow_failures,
)
from edgekit.rollout._replay import (
    MAX_CRASHES_PER_DEVICE_HOUR,
    MAX_INFERENCES_PER_DEVICE_HOUR,
    exposure_hours,
)
from edgekit.rollout._types import DecisionRecord, GateConfig
from edgekit.rollout.health_sketches import DeviceHealth, device_weight

__all__ = [
    "LABEL_FREE_METRICS",
    "ArmEvidence",
    "DeviceShadow",
    "LabelFreeEvidence",
    "arm_evidence",
    "label_free_checks",
    "label_free_records",
]

LABEL_FREE_METRICS = ("class_shift", "confidence_shift", "input_drift", "shadow_agreement", "shadow_failures")
_EMPTY: Mapping[str, np.ndarray] = {}


@dataclass(frozen=True)
class ArmEvidence:
    """One arm's devices in the stage window, one row per device (the device is the unit of evidence).

    A row of NaN in a per-device array means the device did not report that signal; it is left out of
    that statistic only. Every array has the same number of rows n.

    Attributes:
        weights: [n] inferences each device may claim (capped per device-hour of exposure), >= 0; a device
            with weight 0 counts for none of the health statistics (classes, confidence, drift).
        classes: [n, C] per-device shares of predicted classes of the primary output (rows sum to 1), or
            None when no device reported any.
        confidence: [n] per-device mean top-1 confidence (classification) or mean score (detection).
        drift: input name -> [n, channels, bins] per-device shares of the input's values per reference bin.
        shadow_compared: [n] shadow comparisons per device (capped), or None without a shadow.
        shadow_agreed: [n] of those, the ones that agreed with the served model.
        shadow_failures: [n] shadow failures plus timeouts (capped).
    """

    weights: np.ndarray
    classes: np.ndarray | None = None
    confidence: np.ndarray | None = None
    drift: Mapping[str, np.ndarray] = field(default_factory=dict)
    shadow_compared: np.ndarray | None = None
    shadow_agreed: np.ndarray | None = None
    shadow_failures: np.ndarray | None = None


@dataclass(frozen=True)
class LabelFreeEvidence:
    """Both arms' evidence and the reference profiles their drift is measured against.

    Attributes:
        treatment, control: the arms (control is ignored at the last stage, 100%).
        reference_treatment: input name -> [channels, bins] expected shares (the target's ``health.json``).
        reference_control: the baseline's (may be empty: an old bundle without a profile).
    """

    treatment: ArmEvidence
    control: ArmEvidence
    reference_treatment: Mapping[str, np.ndarray] = field(default_factory=dict)
    reference_control: Mapping[str, np.ndarray] = field(default_factory=dict)


@dataclass
class DeviceShadow:
    """One device's shadow runs in a stage window (summed over its ``shadow`` events; the server fills it).

    In the treatment the shadow is the candidate next to the served baseline; in the control it is the
    baseline run again next to itself (its self-agreement).
    """

    device_id: str
    arm: str  # treatment | control
    first: float = math.inf  # seconds since the epoch: its first and last shadow event in the window
    last: float = -math.inf
    compared: int = 0
    agreed: int = 0
    failures: int = 0
    timeouts: int = 0

    def add(self, time: float, compared: int, agreed: int, failures: int, timeouts: int) -> None:
        """Fold one more ``shadow`` event of this device in."""
        self.compared += compared
        self.agreed += min(agreed, compared)
        self.failures += failures
        self.timeouts += timeouts
        self.first, self.last = min(self.first, time), max(self.last, time)


# ---- from device sketches to per-device rows ------------------------------------------------------------
def _primary_output(devices: list[DeviceHealth], output: str | None) -> str | None:
    if output is not None:
        return output
    for device in devices:
        for name in device.sketch.outputs:
            return name
    return None


def _confidence(role: str, counts: np.ndarray, scores: np.ndarray, score_sum: float) -> float:
    """Mean top-1 confidence from the confidence bins (their midpoints), or the mean detection score."""
    total = scores.sum()
    if total <= 0:
        return math.nan
    if role == "detection":
        return float(score_sum / total)
    mids = (np.arange(scores.size) + 0.5) / CONFIDENCE_BINS
    return float(mids @ scores / total)


def arm_evidence(
    devices: Iterable[DeviceHealth],
    shadows: Iterable[DeviceShadow],
    stage_started_at: float,
    until: float,
    *,
    output: str | None = None,
) -> dict[str, ArmEvidence]:
    """Treatment and control `ArmEvidence` of a stage window from the devices' sketches and shadow runs.

    Each device's health counts weigh what it may claim (`edgekit.rollout.health_sketches.device_weight`
    times its inferences: capped per device-hour of exposure); its shadow comparisons are capped at
    `MAX_INFERENCES_PER_DEVICE_HOUR` and its failures plus timeouts at `MAX_CRASHES_PER_DEVICE_HOUR` per
    hour of exposure (`edgekit.rollout._replay.exposure_hours`), like the other gate metrics.

    Args:
        devices: one `DeviceHealth` per device and arm (fragments of one device are merged here).
        shadows: one `DeviceShadow` per device and arm.
        stage_started_at, until: the window (seconds since the epoch).
        output: the output whose classes and confidence are compared (default: the first output any
            device reported, in device-id order).
    """
    health: dict[tuple[str, str], DeviceHealth] = {}
    for device in devices:
        key = (device.arm, device.device_id)
        if key in health:  # fragments of one device: their sketches add, their spans join
            before = health[key]
            merged = DeviceHealth(device.device_id, device.arm)
            merged.add(before.first, before.sketch)
            merged.add(device.first, device.sketch)
            merged.first = min(before.first, device.first)
            merged.last = max(before.last, device.last)
            health[key] = merged
        else:
            health[key] = device
    shadow: dict[tuple[str, str], DeviceShadow] = {}
    for part in shadows:
        key = (part.arm, part.device_id)
        if key in shadow:
            base = shadow[key]
            joined = DeviceShadow(part.device_id, part.arm)
            joined.add(base.first, base.compared, base.agreed, base.failures, base.timeouts)
            joined.add(part.first, part.compared, part.agreed, part.failures, part.timeouts)
            joined.last = max(base.last, part.last)
            shadow[key] = joined
        else:
            shadow[key] = part
    ordered = sorted(health.values(), key=lambda d: (d.arm, d.device_id))
    name = _primary_output(ordered, output)
    width = 0
    for d in ordered:
        out = d.sketch.outputs.get(name) if name is not None else None
        if out is not None:
            width = max(width, len(out.counts))
    channels: dict[str, tuple[int, int]] = {}
    for d in ordered:
        for input_name, sketches in d.sketch.inputs.items():
            if sketches and sketches[0].bins:
                channels.setdefault(input_name, (len(sketches), len(sketches[0].bins)))
    arms: dict[str, ArmEvidence] = {}
    for arm in ("treatment", "control"):
        ids = sorted({i for a, i in health if a == arm} | {i for a, i in shadow if a == arm})
        n = len(ids)
        weights = np.zeros(n)
        classes = np.full((n, width), np.nan) if width else None
        confidence = np.full(n, np.nan)
        drift = {k: np.full((n, *shape), np.nan) for k, shape in channels.items()}
        compared, agreed, failures = np.zeros(n), np.zeros(n), np.zeros(n)
        any_shadow = False
        for row, device_id in enumerate(ids):
            dh = health.get((arm, device_id))
            if dh is not None and dh.sketch.inferences > 0:
                weights[row] = device_weight(dh, stage_started_at, until) * dh.sketch.inferences
                out = dh.sketch.outputs.get(name) if name is not None else None
                if out is not None:
                    counts = np.array(out.counts, np.float64)
                    if classes is not None and counts.sum() > 0:
                        classes[row, : counts.size] = counts / counts.sum()
                        classes[row, counts.size :] = 0.0
                    confidence[row] = _confidence(
                        out.role, counts, np.array(out.scores, np.float64), out.score_sum
                    )
                for input_name, shape in channels.items():
                    found = dh.sketch.inputs.get(input_name)
                    if found is None or len(found) != shape[0] or len(found[0].bins) != shape[1]:
                        continue
                    bins = np.array([c.bins for c in found], np.float64)
                    totals = bins.sum(axis=1, keepdims=True)
                    if np.all(totals > 0):
                        drift[input_name][row] = bins / totals
            runs = shadow.get((arm, device_id))
            if runs is not None:
                any_shadow = True
                hours = exposure_hours(True, runs.first, runs.last, stage_started_at, until)
                compared[row] = min(runs.compared, MAX_INFERENCES_PER_DEVICE_HOUR * hours)
                agreed[row] = min(runs.agreed, compared[row])
                failures[row] = min(runs.failures + runs.timeouts, MAX_CRASHES_PER_DEVICE_HOUR * hours)
        arms[arm] = ArmEvidence(
            weights=weights,
            classes=classes,
            confidence=None if np.all(np.isnan(confidence)) else confidence,
            drift={k: v for k, v in drift.items() if not np.all(np.isnan(v))},
            shadow_compared=compared if any_shadow else None,
            shadow_agreed=agreed if any_shadow else None,
            shadow_failures=failures if any_shadow else None,
        )
    return arms


def label_free_checks(
    stage: int, evidence: LabelFreeEvidence | None, config: GateConfig
) -> tuple[list[DecisionRecord], list[str]]:
    """The label-free records (in `LABEL_FREE_METRICS` order) and the alerts they raise for operators."""
    if evidence is None:
        return [rec(m, "pass", "not judged: no health telemetry") for m in LABEL_FREE_METRICS], []
    judge = Judge(config, stage == 100)
    alerts: list[str] = []
    records = [
        class_shift(evidence, judge),
        confidence_shift(evidence, judge),
        input_drift(evidence, judge, alerts),
        shadow_agreement(evidence, judge),
        shadow_failures(evidence, judge),
    ]
    return records, alerts


def label_free_records(
    stage: int, evidence: LabelFreeEvidence | None, config: GateConfig
) -> list[DecisionRecord]:
    """One `DecisionRecord` per label-free gate, in `LABEL_FREE_METRICS` order (see the module docstring).

    Args:
        stage: the stage percent (100: no control arm; only input drift, against the reference profile
            alone, and shadow failures apply).
        evidence: both arms' evidence, or None (every gate "not judged: no health telemetry", pass).
        config: thresholds (`GateConfig`).
    """
    return label_free_checks(stage, evidence, config)[0]
