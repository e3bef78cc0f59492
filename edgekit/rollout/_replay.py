"""Per-device telemetry to gate decisions: the one place that bounds each device and calls `evaluate`.

The device is the unit of evidence. Each device's telemetry in a stage window (`DeviceTelemetry`) is
capped by what one device can credibly produce in the hours it ran, each device's latency histogram
weighs the same, and every arm carries what its K most influential devices contributed
(`ArmMetrics.removable`), so `evaluate` takes a decision other than hold only when it survives taking
any K devices of each arm away. The server's live evaluation, its replay of stored telemetry and the
pure `replay` below all go through `decide`, so a stored decision is reproduced by the same code.

Caps, per device and hour of that device's exposure (device-hours):

- `MAX_INFERENCES_PER_DEVICE_HOUR` = 360,000: 100 inferences a second, sustained. The densest per-frame
  workloads an edge model serves (voice activity at ~31 frames/s, 30 fps video) stay below it; a claim
  above it is not a device's work.
- `MAX_CRASHES_PER_DEVICE_HOUR` = 60: one a minute. A device crashing faster is in a crash loop, and a
  crash loop is already the worst a device can say; more of it adds no evidence about the release.
- `MAX_FEEDBACK_PER_DEVICE_HOUR` = 3,600: one ground-truth answer a second, a person confirming
  predictions without pause.
- `MAX_INSTALLS_PER_DEVICE_HOUR` = 6 (plus one): an install attempt every ten minutes, the update poll.

Errors are capped by the device's inferences, correct feedback by its feedback, install failures by its
installs. Exposure is the span of the device's reports in the window plus one report interval, so it
never exceeds the window itself (plus that interval).
"""

from __future__ import annotations

import dataclasses
import heapq
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from edgekit.rollout._types import (
    EVENT_COUNTS,
    HISTOGRAM_SIZE,
    ArmMetrics,
    DecisionRecord,
    GateConfig,
    GateConfigError,
    StageDecision,
)

if TYPE_CHECKING:
    from edgekit.rollout.label_free import LabelFreeEvidence

__all__ = [
    "MAX_CRASHES_PER_DEVICE_HOUR",
    "MAX_FEEDBACK_PER_DEVICE_HOUR",
    "MAX_INFERENCES_PER_DEVICE_HOUR",
    "MAX_INSTALLS_PER_DEVICE_HOUR",
    "REPORT_INTERVAL_HOURS",
    "DeviceTelemetry",
    "Evaluation",
    "TelemetryDelta",
    "arm_metrics",
    "decide",
    "exposure_hours",
    "replay",
]

REPORT_INTERVAL_HOURS = 1.0 / 6.0  # hours: devices upload about every ten minutes
MAX_INFERENCES_PER_DEVICE_HOUR = 360_000.0  # inferences per device-hour (100/s)
MAX_CRASHES_PER_DEVICE_HOUR = 60.0  # crashes per device-hour (one a minute: a crash loop)
MAX_FEEDBACK_PER_DEVICE_HOUR = 3_600.0  # feedback events per device-hour (one a second)
MAX_INSTALLS_PER_DEVICE_HOUR = 6.0  # install attempts per hour of the window (one per update poll)
Arm = Literal["treatment", "control"]


@dataclass(frozen=True)
class DeviceTelemetry:
    """What one device of one arm reported in a stage window (raw sums, before any cap).

    Attributes:
        device_id: the device.
        arm: treatment or control.
        reported: it sent telemetry for its arm's release (it counts as one of the arm's devices).
        first, last: times of its first and last such report (seconds since the epoch).
        crashes, inferences, inference_errors, feedback_total, feedback_correct: summed counts.
        installs, install_failures: install attempts of the target (treatment devices) and failures.
        latency_histogram: summed latency bucket counts (`HISTOGRAM_SIZE` entries).
    """

    device_id: str
    arm: Arm
    reported: bool = False
    first: float = math.inf
    last: float = -math.inf
    crashes: int = 0
    inferences: int = 0
    inference_errors: int = 0
    installs: int = 0
    install_failures: int = 0
    feedback_total: int = 0
    feedback_correct: int = 0
    latency_histogram: tuple[int, ...] = field(default=(0,) * HISTOGRAM_SIZE)

    def plus(self, other: DeviceTelemetry) -> DeviceTelemetry:
        """The same device's telemetry over both windows (counts add, spans merge)."""
        values: dict[str, Any] = {name: getattr(self, name) + getattr(other, name) for name in EVENT_COUNTS}
        return DeviceTelemetry(
            device_id=self.device_id,
            arm=self.arm,
            reported=self.reported or other.reported,
            first=min(self.first, other.first),
            last=max(self.last, other.last),
            latency_histogram=tuple(
                a + b for a, b in zip(self.latency_histogram, other.latency_histogram, strict=True)
            ),
            **values,
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (infinite span ends become None)."""
        data: dict[str, Any] = {name: getattr(self, name) for name in EVENT_COUNTS}
        data.update(
            device_id=self.device_id,
            arm=self.arm,
            reported=self.reported,
            first=self.first if math.isfinite(self.first) else None,
            last=self.last if math.isfinite(self.last) else None,
            latency_histogram=list(self.latency_histogram),
        )
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DeviceTelemetry:
        """Inverse of `to_dict`."""
        return cls(
            device_id=str(data["device_id"]),
            arm=data["arm"],
            reported=bool(data["reported"]),
            first=math.inf if data["first"] is None else float(data["first"]),
            last=-math.inf if data["last"] is None else float(data["last"]),
            latency_histogram=tuple(int(c) for c in data["latency_histogram"]),
            **{name: int(data[name]) for name in EVENT_COUNTS},
        )


def exposure_hours(reported: bool, first: float, last: float, stage_started_at: float, until: float) -> float:
    """A device's hours of exposure in the window: the span of its reports plus one report interval,
    never more than the window itself (plus that interval); 0 when it reported nothing."""
    if not reported:
        return 0.0
    window = max(0.0, until - stage_started_at) / 3600.0 + REPORT_INTERVAL_HOURS
    span = max(0.0, min(last, until) - max(first, stage_started_at)) / 3600.0
    return min(span + REPORT_INTERVAL_HOURS, window)


def _capped(device: DeviceTelemetry, stage_started_at: float, until: float) -> dict[str, Any]:
    """One device's bounded contribution: exposure within the window, counts per device-hour."""
    window = max(0.0, until - stage_started_at) / 3600.0 + REPORT_INTERVAL_HOURS
    hours = exposure_hours(device.reported, device.first, device.last, stage_started_at, until)
    inferences = min(device.inferences, MAX_INFERENCES_PER_DEVICE_HOUR * hours)
    feedback = min(device.feedback_total, MAX_FEEDBACK_PER_DEVICE_HOUR * hours)
    installs = min(device.installs, MAX_INSTALLS_PER_DEVICE_HOUR * window + 1)
    samples = sum(device.latency_histogram)
    return {
        "devices": 1.0 if device.reported else 0.0,
        "device_hours": hours,
        "crashes": min(device.crashes, MAX_CRASHES_PER_DEVICE_HOUR * hours),
        "inferences": inferences,
        "inference_errors": min(device.inference_errors, inferences),
        "installs": installs,
        "install_failures": min(device.install_failures, installs),
        "feedback_total": feedback,
        "feedback_correct": min(device.feedback_correct, feedback),
        # latency: the device's shape (normalised) and how many samples it may claim
        "shape": [c / samples for c in device.latency_histogram] if samples > 0 and hours > 0 else None,
        "samples": min(samples, MAX_INFERENCES_PER_DEVICE_HOUR * hours),
    }


def _arm(parts: list[dict[str, Any]], k: int) -> ArmMetrics:
    """Bounded device contributions -> the arm's metrics, with its K most influential devices' share."""
    names = ("devices", "device_hours", *EVENT_COUNTS)
    totals = {name: float(math.fsum(p[name] for p in parts)) for name in names}
    top = {name: float(math.fsum(heapq.nlargest(k, (p[name] for p in parts)))) for name in names}
    # Latency: every device's histogram weighs the same (the arm's samples spread evenly over them), so
    # one device moves the p95 by at most one device's share, whatever it claims.
    timed = [p for p in parts if p["shape"] is not None and p["samples"] > 0]
    histogram = [0.0] * HISTOGRAM_SIZE
    removable_hist = [0.0] * HISTOGRAM_SIZE
    if timed:
        weight = math.fsum(p["samples"] for p in timed) / len(timed)
        for i in range(HISTOGRAM_SIZE):
            masses = [p["shape"][i] * weight for p in timed]
            histogram[i] = math.fsum(masses)
            # The most any K devices weigh in this bucket: what removing K devices can take from it.
            removable_hist[i] = min(histogram[i], math.fsum(heapq.nlargest(k, masses)))
    totals["latency_devices"] = float(len(timed))
    top["latency_devices"] = float(min(k, len(timed)))
    removable = ArmMetrics(**top, latency_histogram=tuple(removable_hist))  # type: ignore[arg-type]
    return ArmMetrics(**totals, latency_histogram=tuple(histogram), removable=removable)  # type: ignore[arg-type]


def arm_metrics(
    devices: Iterable[DeviceTelemetry], *, stage_started_at: float, until: float, robust_devices: int
) -> dict[str, ArmMetrics]:
    """Treatment and control metrics of a stage window from each device's telemetry, bounded per device.

    Args:
        devices: one `DeviceTelemetry` per device (fragments of one device are merged first).
        stage_started_at: the window's start; until: its end (seconds since the epoch).
        robust_devices: K, how many devices per arm the decision must survive losing.
    """
    merged: dict[tuple[str, str], DeviceTelemetry] = {}
    for device in devices:
        key = (device.arm, device.device_id)
        merged[key] = device if key not in merged else merged[key].plus(device)
    parts: dict[str, list[dict[str, Any]]] = {"treatment": [], "control": []}
    for (side, _), device in sorted(merged.items()):
        if side in parts:
            parts[side].append(_capped(device, stage_started_at, until))
    return {side: _arm(found, robust_devices) for side, found in parts.items()}


def decide(
    stage: int,
    devices: Iterable[DeviceTelemetry],
    config: GateConfig,
    now: float,
    stage_started_at: float,
    *,
    skipped_rows: int = 0,
    skipped_example: str | None = None,
    label_free: LabelFreeEvidence | None = None,
) -> StageDecision:
    """The gate decision of a stage at `now` from its devices' telemetry since `stage_started_at`.

    `skipped_rows` stored rows of the window could not be aggregated (`skipped_example` says why for
    one): the decision records them and alerts, without changing its outcome (left out, they cannot
    sway it; holding on them would let one device hold every rollout). `label_free` is the stage
    window's label-free evidence (`edgekit.rollout.label_free.arm_evidence`), or None.
    """
    from edgekit.rollout.gates import evaluate  # gates re-exports this module: import at call time

    arms = arm_metrics(
        devices, stage_started_at=stage_started_at, until=now, robust_devices=config.robust_devices
    )
    control = None if stage == 100 else arms["control"]
    decision = evaluate(stage, arms["treatment"], control, config, now, stage_started_at, label_free)
    if not skipped_rows:
        return decision
    why = f"{skipped_rows} stored telemetry row(s) could not be aggregated and were skipped"
    if skipped_example:
        why += f" (first: {skipped_example[:200]})"
    record = DecisionRecord("telemetry_rows", None, None, skipped_rows, None, None, "pass", why)
    alert = why if decision.alert is None else f"{decision.alert}\n{why}"
    return dataclasses.replace(
        decision, records=(*decision.records, record), alert=alert, skipped_rows=skipped_rows
    )


@dataclass(frozen=True)
class TelemetryDelta:
    """Telemetry of one device received at `time` (seconds since the epoch), as stored by the server."""

    time: float
    telemetry: DeviceTelemetry


@dataclass(frozen=True)
class Evaluation:
    """A gate evaluation at `time` of `stage` (percent), which started at `stage_started_at` (seconds)."""

    time: float
    stage: int
    stage_started_at: float


def replay(events: Sequence[TelemetryDelta | Evaluation], config: GateConfig) -> list[StageDecision]:
    """Recompute the decisions of stored telemetry: the same `decide`, the same inputs.

    Args:
        events: telemetry deltas and evaluations in non-decreasing time order. Each evaluation sees the
            deltas received by then whose reports start at or after its stage start.
        config: the gate config in force.

    Returns:
        One decision per `Evaluation`, in order.

    Raises:
        GateConfigError: events out of time order, or an unknown arm.
    """
    seen: list[TelemetryDelta] = []
    decisions: list[StageDecision] = []
    last = -math.inf
    for event in events:
        if not event.time >= last:
            raise GateConfigError(f"replay events must be in time order: {event.time!r} after {last!r}")
        last = event.time
        if isinstance(event, TelemetryDelta):
            if event.telemetry.arm not in ("treatment", "control"):
                raise GateConfigError(f"unknown arm {event.telemetry.arm!r}; expected treatment or control")
            seen.append(event)
            continue
        window = [d.telemetry for d in seen if d.telemetry.first >= event.stage_started_at]
        decisions.append(decide(event.stage, window, config, event.time, event.stage_started_at))
    return decisions
