"""Label-free gates through `evaluate` and `decide`: which regression each gate catches, what it leaves
alone, and how missing evidence is recorded. Fleets come from the seeded model in test_label_free_fleets.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from device_runtime.health import ChannelSketch, HealthSketch, OutputSketch
from edgekit.rollout._replay import MAX_INFERENCES_PER_DEVICE_HOUR, DeviceTelemetry, decide
from edgekit.rollout.gates import ArmMetrics, GateConfig, GateConfigError, StageDecision, evaluate
from edgekit.rollout.health_sketches import DeviceHealth
from edgekit.rollout.label_free import (
    LABEL_FREE_METRICS,
    ArmEvidence,
    DeviceShadow,
    LabelFreeEvidence,
    arm_evidence,
    label_free_checks,
    label_free_records,
)
from tests.rollout.test_label_free_fleets import (
    BRIGHTER,
    INVERTED,
    REFERENCE,
    Release,
    World,
    last_look,
)

CONFIG = GateConfig(min_devices_per_arm=50)
HOUR = 3600.0
ARM = ArmMetrics(devices=400, device_hours=4000.0)  # exposure only: no classic gate can roll back


def _evaluate(
    evidence: LabelFreeEvidence | None, stage: int = 1, config: GateConfig = CONFIG
) -> StageDecision:
    control = None if stage == 100 else ARM
    return evaluate(stage, ARM, control, config, now=48 * HOUR, stage_started_at=0.0, label_free=evidence)


def _record(decision: StageDecision, metric: str):  # type: ignore[no-untyped-def]
    return next(r for r in decision.records if r.metric == metric)


def _rolled_back(decision: StageDecision) -> list[str]:
    return [r.metric for r in decision.records if r.outcome == "rollback"]


def test_a_label_swap_of_two_unequally_frequent_classes_is_rolled_back_by_class_shift() -> None:
    decision = _evaluate(last_look(1, release=Release(swap=(0, 1))))  # classes seen on 30% and 5%
    assert decision.outcome == "rollback" and _rolled_back(decision) == ["class_shift"]
    shift = _record(decision, "class_shift")
    assert shift.statistic is not None and shift.threshold == 0.10 and shift.statistic > 0.10
    assert "class 0" in shift.detail and "total variation" in shift.detail and "lower bound" in shift.detail
    assert decision.alert is not None and "class_shift" in decision.alert


def test_the_same_fleet_without_the_swap_passes_every_label_free_gate() -> None:
    decision = _evaluate(last_look(1, devices=1000))  # heterogeneous devices: a pass needs ~1,000 per arm
    assert [_record(decision, m).outcome for m in LABEL_FREE_METRICS] == ["pass"] * 5


def test_inverted_inputs_are_rolled_back_by_input_drift() -> None:
    decision = _evaluate(last_look(2, release=Release(inputs=INVERTED)))
    assert _rolled_back(decision) == ["input_drift"]
    drift = _record(decision, "input_drift")
    assert drift.treatment_value is not None and drift.treatment_value > 1.0  # PSI of inverted images
    assert drift.control_value is not None and drift.control_value < 0.1
    assert drift.threshold == 0.25 and "PSI" in drift.detail and "excess" in drift.detail


@pytest.mark.parametrize("same_bins", [False, True])
def test_a_world_drifting_for_both_arms_alerts_without_rolling_back(same_bins: bool) -> None:
    decision = _evaluate(last_look(3, world=World(inputs=BRIGHTER), same_bins=same_bins))
    drift = _record(decision, "input_drift")
    assert drift.treatment_value is not None and drift.treatment_value > 1.0  # PSI of the brighter world
    assert drift.control_value is not None and drift.control_value > 1.0
    assert drift.outcome != "rollback" and decision.outcome != "rollback"
    assert decision.alert is not None and "input drift in both arms" in decision.alert
    if same_bins:  # both profiles bin alike: the arms' inputs are compared directly, and alike they pass
        assert drift.outcome == "pass" and "the arms' inputs differ by PSI at most" in drift.detail


def test_a_release_drifting_more_than_the_world_is_still_rolled_back() -> None:
    decision = _evaluate(last_look(3, world=World(inputs=BRIGHTER), release=Release(inputs=INVERTED)))
    assert _rolled_back(decision) == ["input_drift"]


def test_shadow_disagreement_beyond_the_baselines_self_disagreement_is_rolled_back() -> None:
    decision = _evaluate(last_look(4, release=Release(disagreement=0.15)))
    assert _rolled_back(decision) == ["shadow_agreement"]
    agreement = _record(decision, "shadow_agreement")
    assert agreement.treatment_value is not None and agreement.control_value is not None
    assert agreement.treatment_value - agreement.control_value > 0.1
    assert "disagrees" in agreement.detail and agreement.threshold == 0.05


def test_failing_shadow_runs_are_rolled_back_by_the_shadow_failure_guardrail() -> None:
    decision = _evaluate(last_look(5, release=Release(failures=0.2)))
    assert _rolled_back(decision) == ["shadow_failures"]


def test_a_confidence_drop_is_rolled_back_by_confidence_shift() -> None:
    decision = _evaluate(last_look(6, release=Release(confidence_drop=0.25)))
    assert _rolled_back(decision) == ["confidence_shift"]
    record = _record(decision, "confidence_shift")
    assert record.control_value is not None and record.treatment_value is not None
    assert record.control_value - record.treatment_value > 0.2


def _without(arm: ArmEvidence, what: str) -> ArmEvidence:
    if what == "shadow":
        return dataclasses.replace(arm, shadow_compared=None, shadow_agreed=None, shadow_failures=None)
    return dataclasses.replace(arm, **{what: {} if what == "drift" else None})


@pytest.mark.parametrize(
    ("what", "metrics"),
    [
        ("classes", ["class_shift"]),
        ("confidence", ["confidence_shift"]),
        ("drift", ["input_drift"]),
        ("shadow", ["shadow_agreement", "shadow_failures"]),
    ],
)
@pytest.mark.parametrize("side", ["treatment", "control"])
def test_evidence_missing_in_one_arm_holds_its_gate(what: str, metrics: list[str], side: str) -> None:
    evidence = last_look(7, release=Release(swap=(0, 1)))
    evidence = dataclasses.replace(evidence, **{side: _without(getattr(evidence, side), what)})
    decision = _evaluate(evidence)
    for metric in metrics:
        record = _record(decision, metric)
        assert record.outcome == "hold" and "fail closed" in record.detail
    assert decision.outcome != "promote"


def test_evidence_of_a_kind_missing_in_both_arms_is_not_judged_and_passes() -> None:
    evidence = last_look(8, shadow=False)
    records = {r.metric: r for r in label_free_records(1, evidence, CONFIG)}
    for metric in ("shadow_agreement", "shadow_failures"):
        assert records[metric].outcome == "pass" and records[metric].detail.startswith("not judged")
    assert records["class_shift"].outcome == "pass" and not records["class_shift"].detail.startswith("not")


def test_without_health_telemetry_every_label_free_gate_is_not_judged_and_passes() -> None:
    decision = _evaluate(None)
    for metric in LABEL_FREE_METRICS:
        record = _record(decision, metric)
        assert record.outcome == "pass" and record.detail == "not judged: no health telemetry"
        assert record.threshold is not None and record.threshold > 0
    assert label_free_checks(1, None, CONFIG) == (label_free_records(1, None, CONFIG), [])


def test_the_last_stage_judges_only_input_drift_alone_and_shadow_failures() -> None:
    evidence = last_look(9, release=Release(swap=(0, 1), inputs=INVERTED, failures=0.2))
    decision = _evaluate(evidence, stage=100)
    outcomes = {m: _record(decision, m) for m in LABEL_FREE_METRICS}
    for metric in ("class_shift", "confidence_shift", "shadow_agreement"):
        assert outcomes[metric].outcome == "pass" and "no control arm" in outcomes[metric].detail
    # Alone, drift cannot tell the release from the world: it holds and alerts, never rolls back.
    assert outcomes["input_drift"].outcome == "hold" and "judged alone" in outcomes["input_drift"].detail
    assert decision.alert is not None and "no control to compare" in decision.alert
    assert outcomes["shadow_failures"].outcome == "rollback" and decision.outcome == "rollback"


def test_an_arm_of_zero_devices_is_nothing_reported_not_an_error() -> None:
    # What arm_evidence gives for an arm without a device (the last stage's control, say): arrays of 0 rows.
    evidence = last_look(9, release=Release())
    empty = ArmEvidence(
        weights=np.zeros(0),
        classes=np.zeros((0, 10)),
        confidence=np.zeros(0),
        drift={
            name: np.zeros((0, *np.asarray(ref).shape)) for name, ref in evidence.reference_control.items()
        },
        shadow_compared=np.zeros(0),
        shadow_agreed=np.zeros(0),
        shadow_failures=np.zeros(0),
    )
    decision = _evaluate(dataclasses.replace(evidence, control=empty), stage=1)
    for metric in ("class_shift", "confidence_shift", "shadow_agreement"):
        assert _record(decision, metric).outcome == "hold"  # present in one arm only: fail closed
    assert _evaluate(dataclasses.replace(evidence, control=empty), stage=100).outcome != "rollback"


def test_a_baseline_without_a_reference_profile_leaves_drift_judged_against_the_target_alone() -> None:
    evidence = last_look(10)
    evidence = dataclasses.replace(
        evidence, reference_control={}, control=dataclasses.replace(evidence.control, drift={})
    )
    drift = _record(_evaluate(evidence), "input_drift")
    assert drift.outcome == "pass" and "no reference profile" in drift.detail


def test_too_few_devices_hold_with_the_minimum_named() -> None:
    evidence = last_look(11, devices=40, release=Release(swap=(0, 1)))
    shift = _record(_evaluate(evidence), "class_shift")
    assert shift.outcome == "hold" and "need 50" in shift.detail


def test_label_free_records_are_json_ready() -> None:
    decision = _evaluate(last_look(12, release=Release(swap=(0, 1), inputs=INVERTED)), stage=100)
    data = json.loads(json.dumps(decision.to_dict(), allow_nan=False))
    assert {r["metric"] for r in data["records"]} >= set(LABEL_FREE_METRICS)


@pytest.mark.parametrize(
    "overrides",
    [
        {"label_free_alpha": 0.0},
        {"label_free_pass_alpha": 0.5},
        {"label_free_tuned_devices": 0.5},
        {"max_class_shift": 0.0},
        {"max_confidence_drop": 1.0},
        {"psi_pass": 0.3, "psi_rollback": 0.25},
        {"max_shadow_disagreement_excess": -0.1},
        {"max_shadow_failure_share": float("nan")},
    ],
)
def test_gate_config_refuses_out_of_range_label_free_thresholds(overrides: dict[str, float]) -> None:
    with pytest.raises(GateConfigError):
        GateConfig(**overrides)


# ---- from device sketches, through decide ---------------------------------------------------------------
def _sketch(classes: list[int], *, inverted: bool = False) -> HealthSketch:
    inferences = sum(classes)
    shares = (np.linspace(0.02, 0.18, 10) if inverted else np.full(10, 0.1)) * inferences * 100
    channel = ChannelSketch(n=inferences * 100, mean=0.5, m2=1.0, bins=[int(v) for v in shares])
    confidence = [0] * 7 + [inferences // 2, inferences - inferences // 2, 0]
    return HealthSketch(
        inferences=inferences,
        window_s=3600.0,
        inputs={"image": [channel]},
        outputs={"probs": OutputSketch("classification", list(classes), confidence)},
    )


def _devices(rng: np.random.Generator, arm: str, n: int, swap: bool) -> list[DeviceHealth]:
    found = []
    for i in range(n):
        mix = rng.dirichlet(3.0 * np.array([3.0, 0.5, 1.0, 1.0, 1.0, 1.0, 1.0, 0.5]))
        counts = rng.multinomial(int(rng.integers(50, 500)), mix)
        if swap:
            counts[[0, 1]] = counts[[1, 0]]
        device = DeviceHealth(f"{arm}-{i}", arm)
        device.add(HOUR, _sketch([int(c) for c in counts]))
        device.add(4 * HOUR, _sketch([int(c) for c in rng.multinomial(100, mix)][::1]))
        found.append(device)
    return found


def test_decide_rolls_back_a_label_swap_from_device_sketches_with_no_feedback() -> None:
    rng = np.random.default_rng(0)
    health = _devices(rng, "treatment", 150, swap=True) + _devices(rng, "control", 150, swap=False)
    telemetry = [
        DeviceTelemetry(d.device_id, d.arm, True, HOUR, 4 * HOUR, inferences=d.sketch.inferences)  # type: ignore[arg-type]
        for d in health
    ]
    arms = arm_evidence(health, [], 0.0, 5 * HOUR)
    evidence = LabelFreeEvidence(arms["treatment"], arms["control"])
    decision = decide(1, telemetry, CONFIG, 5 * HOUR, 0.0, label_free=evidence)
    assert decision.outcome == "rollback" and _rolled_back(decision) == ["class_shift"]
    assert _record(decision, "accuracy").detail.startswith("no feedback")  # no labels were needed
    healthy = LabelFreeEvidence(arms["control"], arms["control"])
    assert (
        _record(decide(1, telemetry, CONFIG, 5 * HOUR, 0.0, label_free=healthy), "class_shift").outcome
        == "pass"
    )


def test_arm_evidence_caps_each_device_to_what_it_may_claim() -> None:
    loud = DeviceHealth("loud", "treatment")
    loud.add(HOUR, _sketch([10**9, 0, 0]))  # a billion inferences claimed in one report
    quiet = DeviceHealth("quiet", "treatment")
    quiet.add(HOUR, _sketch([0, 100, 0]))
    liar = DeviceShadow("loud", "treatment")
    liar.add(HOUR, compared=10**9, agreed=0, failures=10**6, timeouts=10**6)
    arms = arm_evidence([loud, quiet], [liar], 0.0, 2 * HOUR)
    treatment = arms["treatment"]
    hours = 1.0 / 6.0  # one report: its span is one report interval
    assert treatment.weights.max() <= MAX_INFERENCES_PER_DEVICE_HOUR * hours + 1e-6
    assert treatment.classes is not None and treatment.classes.shape == (2, 3)
    assert np.allclose(treatment.classes.sum(axis=1), 1.0)
    assert treatment.shadow_compared is not None and treatment.shadow_failures is not None
    assert treatment.shadow_compared.max() <= MAX_INFERENCES_PER_DEVICE_HOUR * hours + 1e-6
    assert treatment.shadow_failures.max() <= 60 * hours + 1e-6
    assert arms["control"].weights.size == 0


def test_arm_evidence_merges_fragments_of_one_device() -> None:
    parts = []
    for t in (HOUR, 2 * HOUR):
        part = DeviceHealth("d", "control")
        part.add(t, _sketch([5, 5]))
        parts.append(part)
    shadows = [DeviceShadow("d", "control"), DeviceShadow("d", "control")]
    shadows[0].add(HOUR, 10, 9, 0, 0)
    shadows[1].add(2 * HOUR, 10, 10, 1, 0)
    control = arm_evidence(parts, shadows, 0.0, 3 * HOUR)["control"]
    assert control.weights.size == 1 and control.weights[0] == 20
    assert control.shadow_compared is not None and control.shadow_compared[0] == 20
    assert control.shadow_agreed is not None and control.shadow_agreed[0] == 19
    assert control.drift["image"].shape == (1, 1, 10) and REFERENCE.shape == (3, 10)


def test_arm_evidence_keeps_each_arms_own_bins() -> None:
    treatment, control = DeviceHealth("t", "treatment"), DeviceHealth("c", "control")
    treatment.add(HOUR, _sketch([5, 5]))  # ten bins
    sketch = _sketch([5, 5])
    sketch.inputs["image"][0].bins = sketch.inputs["image"][0].bins[:8]  # a baseline profile of eight
    control.add(HOUR, sketch)
    arms = arm_evidence([treatment, control], [], 0.0, 2 * HOUR)
    assert arms["treatment"].drift["image"].shape == (1, 1, 10)
    assert arms["control"].drift["image"].shape == (1, 1, 8)
