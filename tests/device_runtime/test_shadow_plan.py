"""The plan's optional `shadow` key: canonical bytes of old plans, round trips, checks and the decision."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pytest

from device_runtime.rollout_plan import Plan, PlanError, Release, Shadow, decide, parse_plan
from edgekit.errors import PlanError as HostPlanError
from edgekit.rollout.plan import RolloutPlan, shadow_from_dict

TARGET = Release("1.1.0", 2, "bundles/tiny/tiny-1.1.0.ekb", "b" * 64)
BASELINE = Release("1.0.0", 1, "bundles/tiny/tiny-1.0.0.ekb", "a" * 64)
DEVICES = [f"device-{i:04d}" for i in range(2000)]
# The canonical bytes of this plan before the shadow key existed (SHA-256 of the document main wrote).
OLD_PLAN_SHA256 = "6a33d631c4d41d6d3fcec3ea4ee4569a2ca69347d61d3f035b9c2f1590fc34ce"


def plan(**changes: Any) -> RolloutPlan:
    fields: dict[str, Any] = {
        "model": "tiny",
        "channel": "stable",
        "rollout_id": "tiny-stable-1",
        "salt": "0f" * 16,
        "target": TARGET,
        "baseline": BASELINE,
        "stage_started_at": 1_700_000_000,
    }
    return RolloutPlan(**{**fields, **changes})


def test_a_plan_without_shadow_keeps_the_canonical_bytes_it_had() -> None:
    old = plan()
    assert hashlib.sha256(old.to_bytes()).hexdigest() == OLD_PLAN_SHA256
    assert "shadow" not in old.to_dict()
    # An explicit null reads as no shadow trial and writes back the old bytes.
    document = {**json.loads(old.to_bytes()), "shadow": None}
    assert parse_plan(json.dumps(document)).to_bytes() == old.to_bytes()
    assert RolloutPlan.from_dict(document) == old


def test_the_shadow_key_round_trips_through_device_and_server_and_survives_transitions() -> None:
    shadowed = plan(shadow=Shadow(stages=(1, 5), sample=0.25, max_cpu=1))
    data = shadowed.to_bytes()
    assert json.loads(data)["shadow"] == {"stages": [1, 5], "sample": 0.25, "max_cpu": 1.0}
    device = parse_plan(data, model="tiny", channel="stable")
    assert type(device) is Plan and device.to_bytes() == data
    assert RolloutPlan.from_json(data) == shadowed
    walked = shadowed.promote(1_700_000_100).pause().resume().promote(1_700_000_200)
    assert walked.shadow == shadowed.shadow
    assert walked.halt("gate").shadow == shadowed.shadow
    assert walked.promote(1_700_000_300).complete().shadow == shadowed.shadow


@pytest.mark.parametrize(
    ("shadow", "words"),
    [
        ({"stages": [2], "sample": 0.1, "max_cpu": 0.2}, "not among the plan's stages"),
        ({"stages": [1, 100], "sample": 0.1, "max_cpu": 0.2}, "last stage"),
        ({"stages": [5, 1], "sample": 0.1, "max_cpu": 0.2}, "strictly increasing"),
        ({"stages": [], "sample": 0.1, "max_cpu": 0.2}, "non-empty list"),
        ({"stages": [True], "sample": 0.1, "max_cpu": 0.2}, "non-empty list"),
        ({"stages": 1, "sample": 0.1, "max_cpu": 0.2}, "JSON list"),
        ({"stages": [1], "sample": 0, "max_cpu": 0.2}, "sample must be a number in (0, 1]"),
        ({"stages": [1], "sample": 1.5, "max_cpu": 0.2}, "sample must be a number in (0, 1]"),
        ({"stages": [1], "sample": 0.1, "max_cpu": float("nan")}, "max_cpu must be a number in (0, 1]"),
        ({"stages": [1], "sample": "0.1", "max_cpu": 0.2}, "sample must be a number"),
        ({"stages": [1], "sample": 0.1}, "missing keys ['max_cpu']"),
        ({"stages": [1], "sample": 0.1, "max_cpu": 0.2, "x": 1}, "unknown keys ['x']"),
        ([1], "JSON object or null"),
    ],
)
def test_an_invalid_shadow_key_is_refused_by_device_and_server(shadow: object, words: str) -> None:
    document = {**plan().to_dict(), "shadow": shadow}
    with pytest.raises(PlanError, match=r"plan\.shadow") as caught:
        parse_plan(document)
    assert words in str(caught.value)
    with pytest.raises(HostPlanError, match=r"plan\.shadow"):
        RolloutPlan.from_dict(document)
    if isinstance(shadow, dict) and set(shadow) == {"stages", "sample", "max_cpu"}:
        with pytest.raises(HostPlanError, match=r"plan\.shadow"):
            plan(shadow=shadow_from_dict(shadow))  # construction path of `edgekit rollout start`


def test_a_shadow_stage_keeps_everyone_on_the_baseline_and_shadows_target_and_baseline() -> None:
    shadowed = plan(shadow=Shadow(stages=(1, 5), sample=0.1, max_cpu=0.2))
    for current in (shadowed, shadowed.pause(), shadowed.promote(1_700_000_100)):
        assert current.is_shadow_stage
        arms = {"treatment": 0, "control": 0, "other": 0}
        for device_id in DEVICES:
            decision = decide(current, device_id)
            arms[decision.arm] += 1
            assert decision.wanted == BASELINE
            expected = {"treatment": TARGET, "control": BASELINE, "other": None}[decision.arm]
            assert decision.shadow == expected
            assert decision.shadow_config == (None if expected is None else current.shadow)
        assert arms["treatment"] and arms["control"]  # both arms were exercised


def test_outside_a_shadow_stage_or_a_running_plan_nobody_shadows() -> None:
    shadowed = plan(shadow=Shadow(stages=(1,), sample=0.1, max_cpu=0.2))
    serving = shadowed.promote(1_700_000_100)  # 5%: the treatment serves the target
    assert not serving.is_shadow_stage
    halted = shadowed.halt("gate")
    assert halted.is_shadow_stage  # the stage is, but a halted plan shadows nothing
    unshadowed = plan()
    for device_id in DEVICES[:500]:
        decision = decide(serving, device_id)
        assert decision.shadow is None and decision.shadow_config is None
        assert decision.wanted == (TARGET if decision.arm == "treatment" else BASELINE)
        assert decide(halted, device_id).shadow is None
        assert decide(halted, device_id).wanted == BASELINE
        plain = decide(unshadowed, device_id)
        assert plain.shadow is None
        assert plain.wanted == (TARGET if plain.arm == "treatment" else BASELINE)
