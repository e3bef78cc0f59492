"""Value types of the fleet simulator: the fleet model, a regression, one run's result, a summary."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Literal

from edgekit.rollout.gates import GateConfig
from edgekit.rollout.plan import RolloutError

__all__ = [
    "LABEL_FREE_KINDS",
    "REGRESSION_KINDS",
    "SWAP_PAIRS",
    "EvaluationRow",
    "FleetModel",
    "Outcome",
    "Regression",
    "RegressionKind",
    "RunResult",
    "SimulationError",
    "Summary",
]

RegressionKind = Literal[
    "crash", "errors", "accuracy", "latency", "label_swap", "input_shift", "confidence_drop"
]
REGRESSION_KINDS: tuple[str, ...] = (
    "crash",
    "errors",
    "accuracy",
    "latency",
    "label_swap",
    "input_shift",
    "confidence_drop",
)
LABEL_FREE_KINDS: tuple[str, ...] = ("label_swap", "input_shift", "confidence_drop")
SWAP_PAIRS: tuple[str, ...] = ("random", "extreme")
Outcome = Literal["rolled_back", "complete", "stuck", "stopped"]


class SimulationError(RolloutError):
    """A fleet model, regression or simulation request is invalid (the message says which value and why)."""


@dataclass(frozen=True)
class FleetModel:
    """A statistical model of the device fleet and of its telemetry.

    Raises:
        SimulationError: on any out-of-range value (checked at construction).
    """

    devices: int = 100_000  # devices at the start of the rollout
    crash_hazard_per_hour: float = 1e-3  # crashes per device-hour of the baseline release
    error_rate: float = 0.01  # failed inferences per inference, baseline
    inferences_per_device_hour: float = 10.0  # inferences per device-hour
    accuracy: float = 0.90  # share of correct predictions where the app reports ground truth, baseline
    feedback_share: float = 0.05  # share of inferences with ground truth reported
    latency_median_ms: float = 20.0  # ms, lognormal median of inference latency, baseline
    latency_sigma: float = 0.5  # lognormal shape of inference latency
    install_failure_share: float = 0.002  # failed installs / installs
    telemetry_loss: float = 0.01  # share of telemetry reports lost for good
    offline_share: float = 0.10  # share of devices offline in an hour (their reports wait for the next)
    clock_skew_hours: float = 0.25  # hours, standard deviation of device clock error on report times
    join_rate: float = 0.0005  # devices joining per hour, as a share of `devices`
    update_delay_hours: float = 1.0  # hours, mean delay before a device runs the release its stage asks
    report_interval_hours: float = 1 / 6  # hours between a device's telemetry uploads
    eval_every_hours: int = 1  # hours between gate evaluations
    max_hours: int = 240  # hours simulated at most; a run still undecided then is "stuck"
    hostile_devices: int = 0  # devices per arm that lie in the worst direction every hour (see simulate)
    # Label-free signals (edgekit.rollout._sim_label_free): off, the label-free gates are not judged.
    health_telemetry: bool = False  # devices report health sketches (and shadow results in shadow stages)
    classes: int = 10  # classes of the primary output
    class_skew: float = 1.0  # Zipf exponent of the fleet's class mix (0: equally frequent classes)
    class_concentration: float = 20.0  # a device's mix ~ Dirichlet(this x fleet mix): lower, more diverse
    confidence_mean: float = 0.85  # mean top-1 confidence of the baseline, over devices
    confidence_spread: float = 0.05  # standard deviation of devices' mean top-1 confidence
    confidence_noise: float = 0.15  # standard deviation of one inference's top-1 confidence
    inference_rate_spread: float = 0.7  # coefficient of variation of devices' inference rates (0: equal)
    input_channels: int = 1  # channels of the input the health sketches bin
    input_concentration: float = 50.0  # a device's input bins ~ Dirichlet(this x fleet shares)
    shadow_sample: float = 0.1  # share of inferences also run in shadow, in shadow stages
    engine_nondeterminism: float = 0.001  # share of self-shadow comparisons that disagree
    target_disagreement: float = 0.02  # share a healthy target disagrees with the baseline on, over that

    def __post_init__(self) -> None:
        def need(ok: bool, what: str) -> None:
            if not ok:
                raise SimulationError(f"FleetModel: {what}")

        for name, value in dataclasses.asdict(self).items():
            if name == "health_telemetry":
                need(isinstance(value, bool), f"health_telemetry must be a bool, got {value!r}")
                continue
            need(
                isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value),
                f"{name} must be a finite number, got {value!r}",
            )
        need(isinstance(self.devices, int) and self.devices >= 1, "devices must be an integer >= 1")
        need(isinstance(self.max_hours, int) and self.max_hours >= 1, "max_hours must be an integer >= 1")
        need(
            isinstance(self.hostile_devices, int) and 0 <= self.hostile_devices <= 100,
            "hostile_devices must be an integer in [0, 100]",
        )
        need(
            isinstance(self.eval_every_hours, int) and self.eval_every_hours >= 1,
            "eval_every_hours must be an integer >= 1",
        )
        for name in ("error_rate", "accuracy", "feedback_share", "install_failure_share"):
            need(0 <= getattr(self, name) <= 1, f"{name} must lie in [0, 1]")
        for name in ("telemetry_loss", "offline_share"):
            need(0 <= getattr(self, name) < 1, f"{name} must lie in [0, 1)")
        need(0 < self.report_interval_hours <= 1, "report_interval_hours must lie in (0, 1]")
        need(
            isinstance(self.classes, int) and 2 <= self.classes <= 1000,
            "classes must be an integer in [2, 1000]",
        )
        need(
            isinstance(self.input_channels, int) and 1 <= self.input_channels <= 16,
            "input_channels must be an integer in [1, 16]",
        )
        for name in ("class_concentration", "input_concentration"):
            need(getattr(self, name) > 0, f"{name} must be > 0")
        for name in ("class_skew", "confidence_spread", "confidence_noise", "inference_rate_spread"):
            need(getattr(self, name) >= 0, f"{name} must be >= 0")
        need(0 < self.confidence_mean <= 1, "confidence_mean must lie in (0, 1]")
        need(0 < self.shadow_sample <= 1, "shadow_sample must lie in (0, 1]")
        for name in ("engine_nondeterminism", "target_disagreement"):
            need(0 <= getattr(self, name) < 1, f"{name} must lie in [0, 1)")
        need(self.latency_median_ms > 0 and self.latency_sigma > 0, "latency median and sigma must be > 0")
        for name in (
            "crash_hazard_per_hour",
            "inferences_per_device_hour",
            "clock_skew_hours",
            "join_rate",
            "update_delay_hours",
        ):
            need(getattr(self, name) >= 0, f"{name} must be >= 0")


@dataclass(frozen=True)
class Regression:
    """How the target release is worse than the baseline.

    Attributes:
        kind: crash (hazard x amount), errors (error rate x amount), latency (latency x amount), accuracy
            (amount percentage points added to accuracy: -2 is a 2 pp drop), or a label-free kind (needs
            `FleetModel.health_telemetry`): label_swap (two classes' labels swapped on a share `amount` of
            their predictions, 1 = all), input_shift (a share `amount` of the inputs inverted, v -> 1 - v),
            confidence_drop (mean top-1 confidence lower by `amount`).
        amount: the factor (crash, errors, latency; > 0), percentage points (accuracy) or share (0, 1]
            (label-free kinds).
        pair: label_swap only: which two classes, `random` (uniform over the C (C - 1) / 2 pairs, drawn
            per run) or `extreme` (the most and the least frequent class).
    """

    kind: RegressionKind
    amount: float
    pair: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in REGRESSION_KINDS:
            raise SimulationError(
                f"regression kind must be one of {', '.join(REGRESSION_KINDS)}, got {self.kind!r}"
            )
        if not isinstance(self.amount, int | float) or not math.isfinite(self.amount):
            raise SimulationError(f"regression amount must be a finite number, got {self.amount!r}")
        if self.kind == "label_swap":
            if self.pair is None:
                object.__setattr__(self, "pair", "random")
            if self.pair not in SWAP_PAIRS:
                raise SimulationError(
                    f"a label_swap pair is one of {', '.join(SWAP_PAIRS)}, got {self.pair!r}"
                )
        elif self.pair is not None:
            raise SimulationError(f"only a label_swap names a pair, not {self.kind}")
        if self.kind in LABEL_FREE_KINDS and not 0 < self.amount <= 1:
            raise SimulationError(f"a {self.kind} amount is a share in (0, 1], got {self.amount!r}")
        if self.kind != "accuracy" and self.amount <= 0:
            raise SimulationError(f"a {self.kind} regression is a factor > 0, got {self.amount!r}")
        if self.kind == "accuracy" and not -100 <= self.amount <= 100:
            raise SimulationError(
                f"an accuracy change is in percentage points [-100, 100], got {self.amount!r}"
            )

    @classmethod
    def parse(cls, text: str) -> Regression:
        """Parse `KIND:AMOUNT`, for example `crash:2.0`, `errors:1.5`, `latency:1.5`, `accuracy:-2`,
        `input_shift:1`, `confidence_drop:0.15`, or `label_swap:PAIR[:SHARE]` (PAIR `random` or
        `extreme`; SHARE of the two classes' predictions swapped, default 1).

        Raises:
            SimulationError: not of that form, unknown kind or invalid amount.
        """
        kind, sep, amount = text.partition(":")
        pair, _, share = amount.strip().partition(":")
        if kind.strip() == "label_swap" and pair in SWAP_PAIRS:
            try:
                return cls("label_swap", float(share) if share else 1.0, pair)
            except ValueError:
                pass  # an unreadable share: the message below
        try:
            value = float(amount)
        except ValueError:
            value = math.nan
        if not sep or not math.isfinite(value):
            raise SimulationError(
                f"regression {text!r}: expected KIND:AMOUNT with KIND one of {', '.join(REGRESSION_KINDS)}, "
                "for example crash:2.0, accuracy:-2 or label_swap:random"
            )
        return cls(kind.strip(), value)  # type: ignore[arg-type]

    def __str__(self) -> str:
        if self.kind == "label_swap" and self.amount == 1:
            return f"label_swap:{self.pair}"
        if self.kind == "label_swap":
            return f"label_swap:{self.pair}:{self.amount:g}"
        return f"{self.kind}:{self.amount:g}"


@dataclass(frozen=True)
class EvaluationRow:
    """One gate evaluation of a simulated run, reduced to what the plots and summaries need.

    Attributes:
        hour: simulated hours since the rollout started.
        stage: the stage percent evaluated.
        outcome: promote, hold or rollback.
        treatment_devices: devices running the target release at that hour.
        statistics: metric -> (outcome, statistic) of every record of the decision.
    """

    hour: int
    stage: int
    outcome: str
    treatment_devices: int
    statistics: dict[str, tuple[str, float | None]]


@dataclass(frozen=True)
class RunResult:
    """One simulated rollout.

    Attributes:
        outcome: rolled_back, complete, stuck (still undecided after `max_hours`), or stopped (reached
            the `stop_at_stage` it was asked to stop at).
        last_stage: the stage percent the run ended in.
        end_hour: hour of the rollback or completion (`max_hours` when stuck).
        stage_starts: (stage percent, hour it started) in order.
        hours_to_full: hour the 100% stage started, None if it never did.
        exposed_devices: devices that ran the target release by `end_hour`.
        rollback_metrics: the checks that asked for the rollback (empty otherwise).
        evaluations: every evaluation, in order.
    """

    outcome: Outcome
    last_stage: int
    end_hour: int
    stage_starts: tuple[tuple[int, int], ...]
    hours_to_full: int | None
    exposed_devices: int
    rollback_metrics: tuple[str, ...]
    evaluations: tuple[EvaluationRow, ...] = field(repr=False)


@dataclass(frozen=True)
class Summary:
    """Figures over many runs of one scenario (see `to_dict` for the JSON)."""

    model: FleetModel
    regression: Regression | None
    gates: GateConfig
    runs: int
    seed: int
    stages: tuple[int, ...]
    halted_before_stage: dict[int, float]  # stage number (2 = second stage) -> share of runs that never left
    rolled_back_before_stage: dict[int, float]  # the same, counting rollbacks only
    rolled_back: float  # share of runs rolled back
    stuck: float  # share of runs undecided at max_hours
    complete: float  # share of runs complete
    mean_exposed_devices: float | None  # devices, mean over rolled-back runs
    mean_exposed_devices_all: float  # devices, mean over all runs at their end
    hours_to_full: dict[str, float | None]  # mean, p50, p95 of runs reaching 100%; share within 96 h
    rollback_metrics: dict[str, int]  # check -> runs it rolled back
    seconds: float  # wall-clock seconds of the whole simulation
    runs_per_second: float
    shadow_stages: tuple[int, ...] = ()  # stage percents in which the treatment ran the target in shadow
    stop_at_stage: int | None = None  # runs stopped when they reached this stage percent (None: never)

    @property
    def false_halt_rate(self) -> float | None:
        """Share of A/A runs rolled back (None when a regression is simulated)."""
        return self.rolled_back if self.regression is None else None

    @property
    def false_promote_rate(self) -> float | None:
        """Share of regressed runs promoted past the first stage (None for A/A)."""
        return None if self.regression is None else 1 - self.halted_before_stage.get(2, 1.0)

    def to_dict(self, *, timing: bool = True) -> dict[str, Any]:
        """JSON-ready figures; `timing=False` leaves out wall-clock fields (for reproducible output)."""
        data: dict[str, Any] = {
            "devices": self.model.devices,
            "regression": None if self.regression is None else str(self.regression),
            "runs": self.runs,
            "seed": self.seed,
            "stages": list(self.stages),
            "rolled_back": self.rolled_back,
            "stuck": self.stuck,
            "complete": self.complete,
            "false_halt_rate": self.false_halt_rate,
            "false_promote_rate": self.false_promote_rate,
            "hostile_devices": self.model.hostile_devices,
            "health_telemetry": self.model.health_telemetry,
            "feedback_share": self.model.feedback_share,
            "shadow_stages": list(self.shadow_stages),
            "stop_at_stage": self.stop_at_stage,
            "mean_exposed_devices": self.mean_exposed_devices,
            "mean_exposed_devices_all": self.mean_exposed_devices_all,
            "hours_to_full": self.hours_to_full,
            "rollback_metrics": dict(sorted(self.rollback_metrics.items())),
            "model": dataclasses.asdict(self.model),
        }
        for k, share in self.halted_before_stage.items():
            data[f"halted_before_stage_{k}"] = share
        for k, share in self.rolled_back_before_stage.items():
            data[f"rolled_back_before_stage_{k}"] = share
        if timing:
            data["seconds"] = self.seconds
            data["runs_per_second"] = self.runs_per_second
            data["seconds_per_run"] = self.seconds / self.runs
        return data


# -- one run -----------------------------------------------------------------------------------------------
