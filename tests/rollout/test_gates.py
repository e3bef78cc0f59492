"""Stage gates: SPRT math, fail-closed holds, guardrails, a seeded fleet simulation and replay."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest

from edgekit.rollout.gates import (
    HISTOGRAM_SIZE,
    ArmMetrics,
    DeviceTelemetry,
    Evaluation,
    GateConfig,
    GateConfigError,
    StageDecision,
    TelemetryDelta,
    evaluate,
    latency_quantile,
    replay,
    sprt_bounds,
    sprt_llr,
)
from edgekit.rollout.gates import decide as decide_devices
from edgekit.rollout.label_free import LABEL_FREE_METRICS

CONFIG = GateConfig()
START = 1_700_000_000.0
HOUR = 3600.0
# Latency shape: most inferences 10-20 ms, p95 inside the 20-50 ms bucket.
SHAPE = (0, 0, 0, 10, 80, 8, 2, 0, 0, 0, 0, 0, 0)


def hist(inferences: float, shape: tuple[int, ...] = SHAPE) -> tuple[float, ...]:
    return tuple(inferences * s / sum(shape) for s in shape)


def arm_metrics(
    hours: float, crashes: float, *, devices: float = 1000, errors: float | None = None, **kw: object
):
    """Cumulative telemetry of `devices` devices over `hours` hours, 10 inferences per device-hour."""
    inferences = 10 * devices * hours
    values: dict[str, object] = {
        "devices": devices,
        "device_hours": devices * hours,
        "crashes": crashes,
        "inferences": inferences,
        "inference_errors": inferences * 1e-3 if errors is None else errors,
        "installs": devices,
        "install_failures": 0,
        "latency_histogram": hist(inferences),
    }
    values.update(kw)
    return ArmMetrics(**values)  # type: ignore[arg-type]


def decide(treatment, control, hours: float, stage: int = 1, config: GateConfig = CONFIG) -> StageDecision:
    return evaluate(stage, treatment, control, config, START + hours * HOUR, START)


def record(decision: StageDecision, metric: str):
    return next(r for r in decision.records if r.metric == metric)


# -- SPRT math -------------------------------------------------------------------------------------------


def test_sprt_bounds_are_walds() -> None:
    a, b = sprt_bounds(0.001, 0.1)
    assert a == pytest.approx(math.log(900))  # log((1 - 0.1) / 0.001) = 6.8024
    assert b == pytest.approx(math.log(0.1 / 0.999))  # -2.3016


def test_sprt_llr_equal_exposure_by_hand() -> None:
    # p0 = 1/2, p1 = 2/3: 10 log(4/3) + 2 log(2/3) = 2.8768 - 0.8109 = 2.0659
    assert sprt_llr(10, 12, 100, 100, 2.0) == pytest.approx(2.0659, abs=1e-4)
    assert sprt_llr(0, 0, 100, 100, 2.0) == 0.0


def test_sprt_llr_unequal_exposure_by_hand() -> None:
    # p0 = 100/400 = 0.25, p1 = 200/500 = 0.4: 3 log(1.6) + 7 log(0.8) = 1.4100 - 1.5620 = -0.1520
    assert sprt_llr(3, 10, 100, 300, 2.0) == pytest.approx(-0.1520, abs=1e-4)


def test_crash_regression_rolls_back_exactly_at_the_upper_boundary() -> None:
    # Every event in the treatment adds log(4/3) = 0.2877; A = 6.8024 needs 24 of them (23 give 6.617).
    control = arm_metrics(10, 0)
    held = decide(arm_metrics(10, 23), control, 10)
    assert record(held, "crash_rate").outcome == "hold"
    assert record(held, "crash_rate").statistic == pytest.approx(23 * math.log(4 / 3))
    rolled = decide(arm_metrics(10, 24), control, 10)
    crash = record(rolled, "crash_rate")
    assert (rolled.outcome, crash.outcome) == ("rollback", "rollback")
    assert crash.threshold == pytest.approx(math.log(900))
    assert (crash.n, crash.treatment_value, crash.control_value) == (24, 24 / 10_000, 0.0)
    assert rolled.alert is not None and "crash_rate" in rolled.alert


def test_crash_metric_passes_at_the_lower_boundary() -> None:
    # 5 vs 15 events: 5 log(4/3) + 15 log(2/3) = -4.64 <= B
    passed = decide(arm_metrics(40, 5), arm_metrics(40, 15), 40)
    assert record(passed, "crash_rate").outcome == "pass"
    assert passed.outcome == "promote"
    assert passed.alert is None


def test_too_few_expected_events_holds_even_below_the_lower_boundary() -> None:
    # 0 vs 6 events gives LLR 6 log(2/3) = -2.43 <= B, but only 3 treatment events expected under H0
    # (and 0 crashes in 10,000 device-hours is not yet negligible: upper bound 3e-4 per device-hour).
    held = decide(arm_metrics(10, 0), arm_metrics(10, 6), 40)
    crash = record(held, "crash_rate")
    assert crash.outcome == "hold" and "expected under H0" in crash.detail
    assert held.outcome == "hold"


def test_negligible_rates_pass_without_events() -> None:
    # A model that never crashes: no SPRT can finish, but 0 crashes in 100,000 device-hours is negligible.
    decision = decide(arm_metrics(100, 0), arm_metrics(100, 0), 100, config=dataclasses.replace(CONFIG))
    assert record(decision, "crash_rate").outcome == "pass"
    assert decision.outcome == "promote"


# -- fail closed -----------------------------------------------------------------------------------------


def test_no_decision_before_minimum_exposure() -> None:
    # 30 vs 0 crashes would cross A, but 50 devices per arm is below the minimum of 100.
    few = dict(devices=50)
    decision = decide(arm_metrics(200, 30, **few), arm_metrics(200, 0, **few), 200)
    assert decision.outcome == "hold"
    assert record(decision, "exposure").outcome == "hold"
    assert "minimum exposure not reached" in record(decision, "crash_rate").detail
    assert record(decision, "crash_rate").outcome == "hold"


def test_a_healthy_stage_waits_for_its_minimum_duration() -> None:
    early = decide(arm_metrics(35, 30), arm_metrics(35, 30), 35)
    assert early.outcome == "hold"
    assert [r.metric for r in early.records if r.outcome != "pass"] == ["duration"]
    assert decide(arm_metrics(36, 30), arm_metrics(36, 30), 36).outcome == "promote"


@pytest.mark.parametrize(
    "treatment,control,needle",
    [
        pytest.param(arm_metrics(40, math.nan), arm_metrics(40, 30), "crashes", id="nan-crashes"),
        pytest.param(
            arm_metrics(40, 30, device_hours=math.inf), arm_metrics(40, 30), "device_hours", id="inf"
        ),
        pytest.param(arm_metrics(40, 30), arm_metrics(40, -1), "negative", id="negative"),
        pytest.param(
            arm_metrics(40, 30, errors=10**7), arm_metrics(40, 30), "exceeds", id="errors>inferences"
        ),
        pytest.param(
            arm_metrics(40, 30, latency_histogram=(1, 2)), arm_metrics(40, 30), "buckets", id="hist"
        ),
        pytest.param(arm_metrics(40, 30), None, "control telemetry missing", id="no-control"),
        pytest.param(None, arm_metrics(40, 30), "treatment telemetry missing", id="no-treatment"),
    ],
)
def test_bad_or_missing_telemetry_holds_and_alerts(treatment, control, needle: str) -> None:
    decision = decide(treatment, control, 40)
    assert decision.outcome == "hold"
    assert decision.alert is not None and needle in decision.alert
    assert record(decision, "telemetry").outcome == "hold"


def test_bad_telemetry_does_not_mask_a_guardrail_breach() -> None:
    treatment = arm_metrics(40, 2000, feedback_total=math.nan)  # 0.05 crashes per device-hour
    decision = decide(treatment, arm_metrics(40, 30), 40)
    assert decision.outcome == "rollback"
    assert record(decision, "accuracy").outcome == "hold"


def test_stage_past_deadline_without_evidence_holds_and_alerts() -> None:
    few = dict(devices=50)
    decision = decide(arm_metrics(80, 10, **few), arm_metrics(80, 10, **few), 80)
    assert decision.outcome == "hold"
    assert record(decision, "deadline").outcome == "hold"
    assert (
        decision.alert is not None and "past its deadline" in decision.alert and "exposure" in decision.alert
    )


def test_stage_past_deadline_with_evidence_still_promotes() -> None:
    decision = decide(arm_metrics(80, 60), arm_metrics(80, 60), 80)
    assert decision.outcome == "promote" and decision.alert is None


def test_clock_before_stage_start_holds_and_alerts() -> None:
    decision = decide(arm_metrics(40, 30), arm_metrics(40, 30), -1)
    assert decision.outcome == "hold"
    assert decision.alert is not None and "clock" in decision.alert


# -- guardrails and other metrics ------------------------------------------------------------------------


def test_crash_guardrail_rolls_back_regardless_of_exposure_and_control() -> None:
    # 0.03 crashes per device-hour in both arms: no relative regression, but above the absolute 0.01.
    few = dict(devices=20)
    decision = decide(arm_metrics(50, 30, **few), arm_metrics(50, 30, **few), 50)
    assert decision.outcome == "rollback"
    guard = record(decision, "crash_guardrail")
    assert guard.outcome == "rollback" and guard.statistic is not None and guard.statistic > 0.01


def test_install_failure_share_rolls_back() -> None:
    decision = decide(arm_metrics(40, 30, install_failures=100), arm_metrics(40, 30), 40)
    assert record(decision, "install_failures").outcome == "rollback"
    assert decision.outcome == "rollback"


def test_install_failures_near_the_limit_hold() -> None:
    decision = decide(arm_metrics(40, 30, install_failures=20), arm_metrics(40, 30), 40)
    assert record(decision, "install_failures").outcome == "hold"
    assert decision.outcome == "hold"


def test_latency_quantile_interpolates_inside_buckets() -> None:
    counts = [0] * HISTOGRAM_SIZE
    counts[4] = 100  # all in (10, 20] ms
    assert latency_quantile(counts, 0.95) == pytest.approx(19.5)
    counts[-1] = 100  # half beyond 5000 ms
    assert latency_quantile(counts, 0.95) == math.inf
    assert math.isnan(latency_quantile([0] * HISTOGRAM_SIZE, 0.95))


@pytest.mark.parametrize(
    "shape,outcome",
    [
        pytest.param((0, 0, 0, 10, 78, 10, 2, 0, 0, 0, 0, 0, 0), "pass", id="similar"),
        pytest.param((0, 0, 0, 5, 75, 15, 5, 0, 0, 0, 0, 0, 0), "hold", id="slower"),
        pytest.param((0, 0, 0, 0, 0, 10, 60, 30, 0, 0, 0, 0, 0), "rollback", id="much-slower"),
    ],
)
def test_latency_p95_ratio(shape: tuple[int, ...], outcome: str) -> None:
    treatment = arm_metrics(40, 30, latency_histogram=hist(400_000, shape))
    assert record(decide(treatment, arm_metrics(40, 30), 40), "latency_p95").outcome == outcome


@pytest.mark.parametrize(
    "correct_t,total,outcome",
    [
        pytest.param(9000, 10_000, "pass", id="same-accuracy"),
        pytest.param(8000, 10_000, "rollback", id="10pp-drop"),
        pytest.param(8850, 10_000, "hold", id="1.5pp-drop-inconclusive"),
        pytest.param(90, 100, "hold", id="too-little-feedback"),
    ],
)
def test_accuracy_from_feedback(correct_t: int, total: int, outcome: str) -> None:
    treatment = arm_metrics(40, 30, feedback_total=total, feedback_correct=correct_t)
    control = arm_metrics(40, 30, feedback_total=total, feedback_correct=int(0.9 * total))
    assert record(decide(treatment, control, 40), "accuracy").outcome == outcome


def test_no_feedback_is_recorded_and_passes() -> None:
    accuracy = record(decide(arm_metrics(40, 30), arm_metrics(40, 30), 40), "accuracy")
    assert accuracy.outcome == "pass" and "no feedback" in accuracy.detail


def test_last_stage_checks_guardrails_only_and_completes_after_its_minimum() -> None:
    fleet = arm_metrics(6, 600, devices=100_000)
    done = decide(fleet, None, 6, stage=100)
    assert done.outcome == "promote"
    metrics = ("telemetry", "exposure", "crash_guardrail", "error_guardrail", "install_failures")
    assert [r.metric for r in done.records] == [*metrics, *LABEL_FREE_METRICS, "duration", "deadline"]
    assert decide(fleet, None, 5, stage=100).outcome == "hold"
    assert decide(arm_metrics(6, 10_000, devices=100_000), None, 6, stage=100).outcome == "rollback"


def test_decisions_are_json_ready_records() -> None:
    decision = decide(arm_metrics(40, 30), arm_metrics(40, 30), 40)
    data = json.loads(json.dumps(decision.to_dict(), allow_nan=False))
    assert data["outcome"] == "promote"
    fields = "metric treatment_value control_value n statistic threshold outcome detail"
    assert set(data["records"][0]) == set(fields.split())
    with pytest.raises(dataclasses.FrozenInstanceError):
        decision.outcome = "hold"  # type: ignore[misc]


@pytest.mark.parametrize(
    "changes",
    [
        pytest.param({"alpha": 0.0}, id="alpha-zero"),
        pytest.param({"beta": 0.7}, id="beta-large"),
        pytest.param({"crash_ratio_h1": 1.0}, id="ratio-one"),
        pytest.param({"min_devices_per_arm": -1}, id="negative-min"),
        pytest.param({"alpha": math.nan}, id="nan"),
        pytest.param({"max_latency_p95_ratio": 3.0}, id="hold-above-rollback"),
        pytest.param({"stage_min_hours": ((1, -2.0),)}, id="negative-duration"),
    ],
)
def test_invalid_config_is_refused(changes: dict[str, object]) -> None:
    with pytest.raises(GateConfigError):
        GateConfig(**changes)  # type: ignore[arg-type]


def test_unknown_stage_is_refused() -> None:
    with pytest.raises(GateConfigError, match="stage"):
        decide(arm_metrics(1, 0), arm_metrics(1, 0), 1, stage=0)


# -- simulation and replay -------------------------------------------------------------------------------

DEVICES = 1000
HAZARD = 1e-3  # crashes per device-hour
HOURS = 96


def hourly_deltas(rng: np.random.Generator, ratio: float) -> np.ndarray:
    """Poisson crash and error counts per hour: columns crashes_t, crashes_c, errors_t, errors_c."""
    lam = [DEVICES * HAZARD * ratio, DEVICES * HAZARD, DEVICES * 10 * 1e-3, DEVICES * 10 * 1e-3]
    return rng.poisson(lam, size=(HOURS, 4))


def delta(crashes: float, errors: float, first_hour: bool) -> ArmMetrics:
    inferences = DEVICES * 10
    return ArmMetrics(
        devices=DEVICES if first_hour else 0,
        device_hours=DEVICES,
        crashes=crashes,
        inferences=inferences,
        inference_errors=errors,
        installs=DEVICES if first_hour else 0,
        install_failures=0,
        latency_histogram=hist(inferences),
    )


def run_stage(counts: np.ndarray) -> tuple[str, int, list[StageDecision]]:
    """Evaluate the 1% stage every hour until it promotes or rolls back (or 96 h pass)."""
    totals = {"treatment": ArmMetrics(), "control": ArmMetrics()}
    decisions = []
    for hour in range(HOURS):
        totals["treatment"] = totals["treatment"].plus(delta(counts[hour, 0], counts[hour, 2], hour == 0))
        totals["control"] = totals["control"].plus(delta(counts[hour, 1], counts[hour, 3], hour == 0))
        decision = evaluate(
            1, totals["treatment"], totals["control"], CONFIG, START + (hour + 1) * HOUR, START
        )
        decisions.append(decision)
        if decision.outcome != "hold":
            return decision.outcome, hour + 1, decisions
    return "hold", HOURS, decisions


@pytest.mark.slow
def test_simulated_fleet_catches_regressions_without_false_alarms() -> None:
    rng = np.random.default_rng(20240601)
    runs = 300
    aa = [run_stage(hourly_deltas(rng, 1.0))[0] for _ in range(runs)]
    regressed = [run_stage(hourly_deltas(rng, 2.0))[0] for _ in range(runs)]
    false_rollbacks = aa.count("rollback") / runs
    detected = regressed.count("rollback") / runs
    assert false_rollbacks <= 0.02, false_rollbacks
    assert detected >= 0.90, detected
    assert aa.count("promote") / runs >= 0.9  # healthy releases move on within 96 h


def device_hour(device: str, side: str, hour: int, crashes: int, errors: int) -> DeviceTelemetry:
    """One device's report of one hour: 10 inferences, its crashes and errors."""
    at = START + hour * HOUR + 600
    return DeviceTelemetry(
        device,
        side,  # type: ignore[arg-type]
        reported=True,
        first=at,
        last=at + 1800,
        crashes=crashes,
        inferences=10,
        inference_errors=errors,
        latency_histogram=(0, 0, 0, 1, 8, 1, 0, 0, 0, 0, 0, 0, 0),
    )


def test_replay_of_stored_telemetry_reproduces_the_decisions() -> None:
    rng = np.random.default_rng(7)
    config = dataclasses.replace(CONFIG, min_devices_per_arm=10, min_device_hours_per_arm=10.0)
    events: list[TelemetryDelta | Evaluation] = []
    seen: list[DeviceTelemetry] = []
    live = []
    for hour in range(24):
        for side, hazard in (("treatment", 0.2), ("control", 0.05)):
            for d in range(40):
                crashes = int(rng.poisson(hazard))
                report = device_hour(f"{side}-{d}", side, hour, crashes, int(rng.binomial(10, 0.01)))
                seen.append(report)
                events.append(TelemetryDelta(START + hour * HOUR + 2400, report))
        at = START + (hour + 1) * HOUR
        events.append(Evaluation(at, 1, START))
        live.append(decide_devices(1, seen, config, at, START))
    assert replay(events, config) == live
    assert any(d.outcome == "rollback" for d in live)  # a 4x crash regression is caught
    assert replay(events, config) == replay(list(events), config)  # deterministic


def test_replay_counts_only_the_current_stage() -> None:
    before = device_hour("t-0", "treatment", -5, 1000, 0)  # from the previous stage
    inside = [
        device_hour(f"{side}-{d}", side, 1, 0, 0) for side in ("treatment", "control") for d in range(5)
    ]
    events: list[TelemetryDelta | Evaluation] = [
        TelemetryDelta(START - 10, before),
        *(TelemetryDelta(START + 2 * HOUR, d) for d in inside),
        Evaluation(START + 40 * HOUR, 1, START),
    ]
    (decision,) = replay(events, CONFIG)
    assert decision == decide_devices(1, inside, CONFIG, START + 40 * HOUR, START)


def test_replay_refuses_events_out_of_order() -> None:
    events: list[TelemetryDelta | Evaluation] = [
        Evaluation(START + 10, 1, START),
        TelemetryDelta(START, DeviceTelemetry("d", "treatment")),
    ]
    with pytest.raises(GateConfigError, match="time order"):
        replay(events, CONFIG)


# -- robustness to a few devices -------------------------------------------------------------------------


@pytest.mark.parametrize("k", [-1, 1.5, True, 101])
def test_robust_devices_must_be_a_small_non_negative_integer(k: object) -> None:
    with pytest.raises(GateConfigError, match="robust_devices"):
        GateConfig(robust_devices=k)  # type: ignore[arg-type]


def test_removable_share_larger_than_the_arm_is_invalid_telemetry() -> None:
    treatment = dataclasses.replace(arm_metrics(40, 5), removable=ArmMetrics(crashes=6))
    decision = decide(treatment, arm_metrics(40, 15), 40)
    assert decision.outcome == "hold" and "removable crashes exceeds" in (decision.alert or "")


def test_a_decision_must_survive_losing_the_most_influential_devices() -> None:
    # 24 treatment crashes roll back (see above) unless 3 devices brought 5 of them.
    control = arm_metrics(10, 0)
    rolled = decide(arm_metrics(10, 24), control, 10)
    assert rolled.outcome == "rollback"
    few = dataclasses.replace(
        arm_metrics(10, 24), removable=ArmMetrics(devices=3, crashes=5, device_hours=30)
    )
    held = decide(few, control, 10)
    assert (
        record(held, "crash_rate").outcome == "hold"
        and "most influential" in record(held, "crash_rate").detail
    )


def test_latency_quantile_range_brackets_the_quantile() -> None:
    from edgekit.rollout._stats import latency_quantile_range

    histogram = [0, 0, 0, 10, 80, 8, 2, 0, 0, 0, 0, 0, 0]
    p95 = latency_quantile(histogram, 0.95)
    assert latency_quantile_range(histogram, 0.95, [0] * 13, 1.0, 3) == (p95, p95)
    low, high = latency_quantile_range(histogram, 0.95, [0, 0, 0, 6, 6, 6, 2, 0, 0, 0, 0, 0, 0], 2.0, 3)
    assert low < p95 < high
