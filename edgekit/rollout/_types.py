"""Values and configuration of the stage gates: telemetry per arm, thresholds, records and decisions.

Frozen dataclasses with no IO and no decisions of their own: `ArmMetrics` (one arm's cumulative
telemetry, able to say which of its fields cannot be trusted), `GateConfig` (thresholds with units, checked
at construction), and the `DecisionRecord`s and `StageDecision` that `edgekit.rollout.gates.evaluate`
returns. `edgekit.rollout.gates` explains the defaults and re-exports the public names.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass
from typing import Any, Literal

from device_runtime.telemetry import LATENCY_BUCKETS_MS
from edgekit.rollout.plan import RolloutError

__all__ = [
    "EVENT_COUNTS",
    "HISTOGRAM_SIZE",
    "ArmMetrics",
    "DecisionRecord",
    "GateConfig",
    "GateConfigError",
    "MetricOutcome",
    "Outcome",
    "StageDecision",
]

Outcome = Literal["promote", "hold", "rollback"]
MetricOutcome = Literal["pass", "hold", "rollback"]
HISTOGRAM_SIZE = len(LATENCY_BUCKETS_MS) + 1  # fixed buckets plus one overflow bucket (> 5000 ms)
# The event counts a device's telemetry sums (per device in a replay, per arm in `ArmMetrics`).
EVENT_COUNTS = (
    "crashes",
    "inferences",
    "inference_errors",
    "installs",
    "install_failures",
    "feedback_total",
    "feedback_correct",
)
_SCALARS = ("devices", "device_hours", *EVENT_COUNTS, "latency_devices")


class GateConfigError(RolloutError):
    """A gate configuration or replay input is invalid (the message says which value and why)."""


def _is_count(value: object) -> bool:
    """A finite real number (numpy scalars included), not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True)
class ArmMetrics:
    """Cumulative telemetry of one arm (treatment or control) since the stage started.

    Counts are floats so that missing values can arrive as NaN and be refused by `evaluate` (fail closed)
    instead of failing at construction.

    `removable` says how much of each field the most influential few devices (`GateConfig.robust_devices`)
    contributed: per field, the sum of the K largest per-device contributions (their `devices` is K, their
    `latency_histogram` the histogram mass K devices carry). `evaluate` takes a decision other than hold
    only when it survives taking any such amounts away from each arm, so no K devices can steer it. None
    means nothing is removable (arm totals without per-device knowledge, as in unit tests).

    Attributes:
        devices: distinct devices that reported (devices).
        device_hours: hours the model ran, summed over devices (device-hours).
        crashes: process deaths during load or inference (events).
        inferences: inferences run (events).
        inference_errors: inferences that failed (events).
        installs: install attempts of the arm's release (events; the control arm usually has none).
        install_failures: install or verify failures among them (events).
        latency_histogram: inference counts per latency bucket: `LATENCY_BUCKETS_MS` upper bounds (ms),
            then one overflow bucket; `HISTOGRAM_SIZE` entries.
        feedback_total: predictions with ground truth reported by the app (events).
        feedback_correct: those that were correct (events).
        latency_devices: devices whose histograms make up `latency_histogram`, each weighing the same
            (devices; 0 when unknown).
        removable: the K most influential devices' share of every field (see above), or None. Its
            `latency_histogram` holds, per bucket, the most that K devices weigh in that bucket, and its
            `latency_devices` is K.
    """

    devices: float = 0
    device_hours: float = 0.0
    crashes: float = 0
    inferences: float = 0
    inference_errors: float = 0
    installs: float = 0
    install_failures: float = 0
    latency_histogram: tuple[float, ...] = (0,) * HISTOGRAM_SIZE
    feedback_total: float = 0
    feedback_correct: float = 0
    latency_devices: float = 0
    removable: ArmMetrics | None = None

    def plus(self, other: ArmMetrics) -> ArmMetrics:
        """Field-wise sum (telemetry deltas add up; `devices` in a delta counts newly seen devices).

        Raises:
            GateConfigError: the histograms have different lengths.
        """
        if len(self.latency_histogram) != len(other.latency_histogram):
            raise GateConfigError(
                f"latency histograms of {len(self.latency_histogram)} and {len(other.latency_histogram)} "
                f"buckets cannot be added; both must have {HISTOGRAM_SIZE}"
            )
        summed: dict[str, Any] = {name: getattr(self, name) + getattr(other, name) for name in _SCALARS}
        summed["latency_histogram"] = tuple(
            a + b for a, b in zip(self.latency_histogram, other.latency_histogram, strict=True)
        )
        # Top-K of a sum is at most the sum of the top-Ks: adding removables stays conservative.
        mine, theirs = self.removable, other.removable
        summed["removable"] = mine if theirs is None else theirs if mine is None else mine.plus(theirs)
        return ArmMetrics(**summed)

    def problems(self) -> dict[str, str]:
        """Fields whose values cannot be trusted, mapped to why (empty when all is well)."""
        found: dict[str, str] = {}
        for name in _SCALARS:
            value = getattr(self, name)
            if not _is_count(value):
                found[name] = f"{name}={value!r} is missing or not a finite number"
            elif value < 0:
                found[name] = f"{name}={value!r} is negative"
        hist = self.latency_histogram
        if not isinstance(hist, tuple) or len(hist) != HISTOGRAM_SIZE:
            found["latency_histogram"] = f"latency_histogram must have {HISTOGRAM_SIZE} buckets"
        elif not all(
            isinstance(c, int | float) and not isinstance(c, bool) and math.isfinite(c) and c >= 0
            for c in hist
        ):
            found["latency_histogram"] = "latency_histogram has a missing, non-finite or negative count"
        for part, whole in (
            ("inference_errors", "inferences"),
            ("install_failures", "installs"),
            ("feedback_correct", "feedback_total"),
        ):
            if part not in found and whole not in found and getattr(self, part) > getattr(self, whole):
                found[part] = f"{part}={getattr(self, part)!r} exceeds {whole}={getattr(self, whole)!r}"
        if self.removable is not None:
            # What the most influential devices contributed must itself be valid and within the total.
            for name, why in self.removable.problems().items():
                found.setdefault(name, f"removable {why}")
            for name in _SCALARS:
                if name not in found and getattr(self.removable, name) > getattr(self, name):
                    found[name] = f"removable {name} exceeds the arm's {name}={getattr(self, name)!r}"
            if "latency_histogram" not in found and sum(self.removable.latency_histogram) > sum(
                self.latency_histogram
            ):
                found["latency_histogram"] = "removable latency mass exceeds the arm's histogram"
        return found


@dataclass(frozen=True)
class GateConfig:
    """Gate thresholds. The `edgekit.rollout.gates` docstring explains why the defaults are what they are,
    and `edgekit.rollout.label_free` those of the label-free gates.

    Raises:
        GateConfigError: on any out-of-range value (checked at construction).
    """

    alpha: float = 0.001  # probability, SPRT false rollback bound per metric and stage (before 1 - beta)
    beta: float = 0.1  # probability, SPRT miss rate at the H1 ratio
    crash_ratio_h1: float = 2.0  # treatment / control crash rate per device-hour under H1
    error_ratio_h1: float = 1.5  # treatment / control error rate per inference under H1
    min_devices_per_arm: int = 100  # devices
    min_device_hours_per_arm: float = 500.0  # device-hours
    min_expected_events: float = 5.0  # treatment events expected under H0 before an SPRT decides
    max_crash_rate_per_device_hour: float = 0.01  # crashes per device-hour, absolute guardrail
    max_error_rate: float = 0.05  # errors per inference, absolute guardrail
    negligible_crash_rate_per_device_hour: float = 1e-4  # crashes per device-hour
    negligible_error_rate: float = 1e-4  # errors per inference
    max_install_failure_share: float = 0.02  # failed installs / installs
    max_latency_p95_ratio: float = 1.2  # treatment p95 / control p95 above which the stage holds
    rollback_latency_p95_ratio: float = 2.0  # treatment p95 / control p95 above which it rolls back
    min_latency_samples: int = 1000  # inferences in each arm's histogram
    max_accuracy_drop_pp: float = 2.0  # percentage points, control accuracy minus treatment accuracy
    min_feedback_per_arm: int = 200  # feedback events per arm before accuracy is judged
    z_pass: float = 1.645  # one-sided z for the bound that must clear a guardrail to pass
    z_rollback: float = 3.0  # one-sided z for the bound that must breach a guardrail to roll back
    stage_deadline_hours: float = 72.0  # hours; past it a stage without a decision alerts
    stage_min_hours: tuple[tuple[int, float], ...] = ((1, 36.0), (5, 12.0), (25, 4.0), (100, 6.0))  # hours
    default_stage_min_hours: float = 12.0  # hours, for stages not in stage_min_hours
    robust_devices: int = 3  # devices per arm (K) whose removal every non-hold decision must survive
    # Label-free gates (`edgekit.rollout.label_free` explains each default).
    label_free_alpha: float = 2e-4  # probability: time-uniform false rollback bound, per gate and stage
    label_free_pass_alpha: float = 0.05  # probability, time-uniform miss bound of the bound a pass must clear
    label_free_tuned_devices: float = 1000.0  # devices per arm where the confidence sequences are tightest
    max_class_shift: float = 0.10  # total variation distance between the arms' predicted-class shares
    max_confidence_drop: float = 0.10  # mean top-1 confidence (or detection score), control minus treatment
    psi_pass: float = 0.10  # population stability per input channel (excess over control) that passes
    psi_rollback: float = 0.25  # PSI excess over control's own above which the release rolls back
    max_shadow_disagreement_excess: float = 0.05  # share of shadowed inputs above self-disagreement
    max_shadow_failure_share: float = 0.02  # failed or timed-out shadow runs / shadow runs

    def __post_init__(self) -> None:
        def need(ok: bool, what: str) -> None:
            if not ok:
                raise GateConfigError(f"GateConfig: {what}")

        for name, value in dataclasses.asdict(self).items():
            if name != "stage_min_hours":
                need(
                    isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value),
                    f"{name} must be a finite number, got {value!r}",
                )
        need(0 < self.alpha < 0.5 and 0 < self.beta < 0.5, "alpha and beta must lie in (0, 0.5)")
        need(self.crash_ratio_h1 > 1 and self.error_ratio_h1 > 1, "ratios under H1 must be > 1")
        need(
            1 <= self.max_latency_p95_ratio <= self.rollback_latency_p95_ratio,
            "need 1 <= hold <= rollback p95 ratio",
        )
        need(0 < self.max_install_failure_share < 1, "max_install_failure_share must lie in (0, 1)")
        need(0 <= self.max_accuracy_drop_pp < 100, "max_accuracy_drop_pp must lie in [0, 100)")
        need(0 < self.z_pass <= self.z_rollback, "need 0 < z_pass <= z_rollback")
        need(self.stage_deadline_hours > 0, "stage_deadline_hours must be > 0")
        need(
            isinstance(self.robust_devices, int) and 0 <= self.robust_devices <= 100,
            f"robust_devices must be an integer in [0, 100] (devices), got {self.robust_devices!r}",
        )
        need(
            0 < self.label_free_alpha < 0.5 and 0 < self.label_free_pass_alpha < 0.5,
            "label_free_alpha and label_free_pass_alpha must lie in (0, 0.5)",
        )
        need(self.label_free_tuned_devices >= 1, "label_free_tuned_devices must be >= 1 (devices)")
        for name in (
            "max_class_shift",
            "max_confidence_drop",
            "max_shadow_disagreement_excess",
            "max_shadow_failure_share",
        ):
            need(0 < getattr(self, name) < 1, f"{name} must lie in (0, 1), got {getattr(self, name)!r}")
        need(0 < self.psi_pass <= self.psi_rollback, "need 0 < psi_pass <= psi_rollback")
        for name in (
            "min_devices_per_arm",
            "min_device_hours_per_arm",
            "min_expected_events",
            "max_crash_rate_per_device_hour",
            "max_error_rate",
            "negligible_crash_rate_per_device_hour",
            "negligible_error_rate",
            "min_latency_samples",
            "min_feedback_per_arm",
            "default_stage_min_hours",
        ):
            need(getattr(self, name) >= 0, f"{name} must be >= 0")
        for pair in self.stage_min_hours:
            need(
                isinstance(pair, tuple)
                and len(pair) == 2
                and isinstance(pair[0], int)
                and 0 < pair[0] <= 100
                and isinstance(pair[1], int | float)
                and math.isfinite(pair[1])
                and pair[1] >= 0,
                f"stage_min_hours entries must be (stage percent, hours >= 0), got {pair!r}",
            )

    def min_hours(self, stage: int) -> float:
        """Minimum duration of `stage` (percent) in hours."""
        return dict(self.stage_min_hours).get(stage, self.default_stage_min_hours)


@dataclass(frozen=True)
class DecisionRecord:
    """One check of one stage evaluation: what was measured, against what, and what it says.

    Attributes:
        metric: which check ("crash_rate", "exposure", ...).
        treatment_value: the treatment's measured value (units in `detail`), None if not applicable.
        control_value: the control's measured value, None if not applicable.
        n: the sample size behind the statistic (events, devices, inferences or feedback).
        statistic: the test statistic (LLR, ratio, bound, hours), None if not computed.
        threshold: the boundary the statistic was compared with, None if not applicable.
        outcome: pass, hold or rollback.
        detail: one human-readable sentence.
    """

    metric: str
    treatment_value: float | None
    control_value: float | None
    n: int
    statistic: float | None
    threshold: float | None
    outcome: MetricOutcome
    detail: str

    @classmethod
    def of(
        cls,
        metric: str,
        outcome: MetricOutcome,
        detail: str,
        *,
        t: float | None = None,
        c: float | None = None,
        n: float = 0,
        stat: float | None = None,
        threshold: float | None = None,
    ) -> DecisionRecord:
        """A record from a check's short names; non-finite values stay as they are (`StageDecision.to_dict`
        turns them into null)."""
        return cls(metric, t, c, int(n), stat, threshold, outcome, detail)


@dataclass(frozen=True)
class StageDecision:
    """The immutable result of one stage evaluation.

    Attributes:
        outcome: promote (at 100%: complete), hold or rollback.
        records: every check made, in a fixed order.
        alert: a message for operators when something needs a human (invalid telemetry, a passed
            deadline, a rollback), else None.
        stage: the stage percent evaluated.
        time: when it was evaluated (seconds since the Unix epoch).
        skipped_rows: stored telemetry rows of the window that could not be aggregated and were left
            out (an anomaly for the dashboard; it never changes the outcome by itself).
    """

    outcome: Outcome
    records: tuple[DecisionRecord, ...]
    alert: str | None
    stage: int
    time: float
    skipped_rows: int = 0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict; non-finite floats become None (JSON has no NaN or Infinity)."""

        def clean(value: Any) -> Any:
            return None if isinstance(value, float) and not math.isfinite(value) else value

        data = dataclasses.asdict(self)
        data["records"] = [{k: clean(v) for k, v in r.items()} for r in data["records"]]
        return data
