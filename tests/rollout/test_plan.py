"""Rollout plans: cohorts devices compute themselves, the state machine, strict canonical JSON."""

from __future__ import annotations

import dataclasses
import hashlib
import json

import pytest

from device_runtime import rollout_plan
from edgekit.rollout.plan import PlanError, Release, RolloutPlan, arm, cohort_u, wanted_release

TARGET = Release(
    version="1.1.0", release_counter=7, target_path="bundles/cat/cat-1.1.0.ekb", bundle_id="b" * 64
)
BASELINE = Release(
    version="1.0.0", release_counter=6, target_path="bundles/cat/cat-1.0.0.ekb", bundle_id="a" * 64
)
IDS = [f"device-{i:06d}" for i in range(100_000)]


def make_plan(**changes: object) -> RolloutPlan:
    plan = RolloutPlan(
        model="cat",
        channel="stable",
        rollout_id="r-1",
        salt="salt-2024",
        target=TARGET,
        baseline=BASELINE,
        stage_started_at=1_700_000_000.0,
    )
    return dataclasses.replace(plan, **changes)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def us() -> list[float]:
    return [cohort_u("salt-2024", d) for d in IDS]


def test_cohort_values_are_stable_across_releases() -> None:
    # Devices compute the same function; these values must never change.
    assert cohort_u("salt-2024", "device-0001") == 0.6970527317184556
    assert cohort_u("salt-2024", "device-0002") == 0.3623525012893332
    assert cohort_u("salt-2024", "pixel-7a-42") == 0.7917287058058314


def test_cohort_is_sha256_of_salt_then_id_big_endian() -> None:
    digest = hashlib.sha256(b"s" + b"d").digest()
    assert cohort_u("s", "d") == int.from_bytes(digest[:8], "big") / 2**64
    assert cohort_u("s", "d") != cohort_u("d", "s")


def test_stages_are_nested(us: list[float]) -> None:
    cohorts = {}
    for index, percent in enumerate((1, 5, 25, 100)):
        plan = make_plan(stage_index=index)
        cohorts[percent] = {d for d in IDS[:20_000] if arm(plan, d) == "treatment"}
    assert cohorts[1] <= cohorts[5] <= cohorts[25] <= cohorts[100]
    assert cohorts[100] == set(IDS[:20_000])


@pytest.mark.parametrize("index,percent", [(0, 1), (1, 5), (2, 25)])
def test_treatment_and_control_shares_match_the_stage(us: list[float], index: int, percent: int) -> None:
    p = percent / 100
    treatment = sum(u < p for u in us) / len(us)
    control = sum(p <= u < 2 * p for u in us) / len(us)
    tolerance = 4 * (p * (1 - p) / len(us)) ** 0.5  # 4 standard errors
    assert abs(treatment - p) < tolerance
    assert abs(control - p) < tolerance


def test_control_is_disjoint_from_treatment_and_the_same_size(us: list[float]) -> None:
    plan = make_plan(stage_index=1)
    arms = [arm(plan, d) for d in IDS]
    treatment = {d for d, a in zip(IDS, arms, strict=True) if a == "treatment"}
    control = {d for d, a in zip(IDS, arms, strict=True) if a == "control"}
    assert not treatment & control
    assert abs(len(treatment) - len(control)) < 4 * (2 * 100_000 * 0.05) ** 0.5
    for d, u in zip(IDS[:1000], us[:1000], strict=True):
        assert arm(plan, d) == ("treatment" if u < 0.05 else "control" if u < 0.10 else "other")


def test_no_control_at_100_percent_or_when_disabled() -> None:
    full = make_plan(stage_index=3)
    assert {arm(full, d) for d in IDS[:2000]} == {"treatment"}
    plain = make_plan(stage_index=1, control=False)
    assert "control" not in {arm(plain, d) for d in IDS[:2000]}


def test_wanted_release_follows_state_and_arm() -> None:
    plan = make_plan(stage_index=2)
    inside = next(d for d in IDS if arm(plan, d) == "treatment")
    outside = next(d for d in IDS if arm(plan, d) == "control")
    assert wanted_release(plan, inside) == TARGET
    assert wanted_release(plan, outside) == BASELINE
    assert wanted_release(plan.pause(), inside) == TARGET
    assert wanted_release(plan.halt("crash regression"), inside) == BASELINE
    assert wanted_release(plan.roll_back("bad"), inside) == BASELINE
    done = make_plan(stage_index=3).complete()
    assert wanted_release(done, outside) == TARGET


def test_transitions_walk_the_stages() -> None:
    plan = make_plan()
    t = plan.stage_started_at
    plan = plan.promote(t + 3600)
    assert (plan.stage_percent, plan.stage_started_at) == (5, t + 3600)
    plan = plan.hold().pause().resume().promote(t + 7200).promote(t + 9000)
    assert plan.at_last_stage and plan.state == "running"
    assert plan.complete().state == "complete"


@pytest.mark.parametrize(
    "action,match",
    [
        pytest.param(lambda p: p.complete(), "promote to 100% first", id="complete-before-last-stage"),
        pytest.param(lambda p: p.resume(), "cannot resume a plan that is running", id="resume-running"),
        pytest.param(lambda p: p.promote(p.stage_started_at - 1), "check the server clock", id="clock-back"),
        pytest.param(
            lambda p: p.pause().promote(p.stage_started_at + 1), "cannot promote", id="promote-paused"
        ),
        pytest.param(lambda p: p.halt(""), "non-empty reason", id="halt-without-reason"),
        pytest.param(lambda p: p.halt("x").resume(), "cannot resume", id="resume-halted"),
        pytest.param(lambda p: p.roll_back("x").roll_back("y"), "cannot roll back", id="roll-back-twice"),
        pytest.param(lambda p: p.roll_back("x").pause(), "cannot pause", id="pause-rolled-back"),
        pytest.param(
            lambda p: dataclasses.replace(p, stage_index=3).promote(p.stage_started_at + 1),
            "call complete",
            id="promote-past-last",
        ),
    ],
)
def test_invalid_transitions_are_refused(action: object, match: str) -> None:
    with pytest.raises(PlanError, match=match):
        action(make_plan())  # type: ignore[operator]


def test_halt_and_roll_back_keep_the_reason() -> None:
    halted = make_plan().halt("crash_rate LLR 7.1 >= 6.8")
    assert halted.reason == "crash_rate LLR 7.1 >= 6.8"
    assert halted.roll_back("confirmed").state == "rolled_back"


@pytest.mark.parametrize(
    "changes,match",
    [
        pytest.param({"stages": (1, 5, 25)}, "last stage must be 100", id="no-100"),
        pytest.param({"stages": (5, 1, 100)}, "strictly increasing", id="decreasing"),
        pytest.param({"stages": (0, 100)}, r"in \(0, 100\]", id="zero"),
        pytest.param({"stages": (1, 75, 100)}, "<= 50%", id="control-does-not-fit"),
        pytest.param({"stages": ()}, "non-empty", id="empty"),
        pytest.param({"stage_index": 4}, "stage_index", id="index-out-of-range"),
        pytest.param({"state": "done"}, "state must be one of", id="unknown-state"),
        pytest.param({"control": 1}, "control must be true or false", id="control-not-bool"),
        pytest.param({"salt": ""}, "salt", id="empty-salt"),
        pytest.param({"model": "bad name"}, "model must be", id="model-name"),
        pytest.param({"stage_deadline_hours": 0}, "stage_deadline_hours", id="zero-deadline"),
        pytest.param({"stage_started_at": float("nan")}, "finite", id="nan-start"),
        pytest.param({"baseline": TARGET}, "same release", id="same-release"),
        pytest.param({"state": "complete"}, "last stage", id="complete-early"),
    ],
)
def test_invalid_plans_are_refused(changes: dict[str, object], match: str) -> None:
    with pytest.raises(PlanError, match=match):
        make_plan(**changes)


def test_release_counter_must_be_a_non_negative_integer() -> None:
    # Release is the device contract's own class: it raises the contract's PlanError.
    path, bundle_id = "bundles/cat/cat-1.ekb", "c" * 64
    with pytest.raises(rollout_plan.PlanError, match="release_counter"):
        Release(version="1", release_counter=-1, target_path=path, bundle_id=bundle_id)
    with pytest.raises(rollout_plan.PlanError, match="release_counter"):
        Release(version="1", release_counter=True, target_path=path, bundle_id=bundle_id)  # type: ignore[arg-type]


def test_json_round_trip_is_canonical() -> None:
    plan = make_plan(stage_index=1, stage_started_at=1_700_000_000)
    text = plan.to_json()
    assert RolloutPlan.from_json(text) == plan
    assert RolloutPlan.from_json(text.encode()).to_json() == text
    assert text == json.dumps(json.loads(text), sort_keys=True, separators=(",", ":"))
    assert '"stages":[1,5,25,100]' in text and '"stage_started_at":1700000000.0' in text


def _mutated(mutate: object) -> str:
    data = json.loads(make_plan().to_json())
    mutate(data)  # type: ignore[operator]
    return json.dumps(data)


@pytest.mark.parametrize(
    "text,match",
    [
        pytest.param("{", "not valid JSON", id="truncated"),
        pytest.param("[]", "JSON object", id="not-object"),
        pytest.param(_mutated(lambda d: d.update(extra=1)), "unknown keys", id="unknown-key"),
        pytest.param(_mutated(lambda d: d.pop("salt")), "missing keys", id="missing-key"),
        pytest.param(_mutated(lambda d: d["target"].pop("bundle_id")), "target: missing", id="release-key"),
        pytest.param(_mutated(lambda d: d.update(stages="1,5")), "JSON list", id="stages-string"),
        pytest.param(_mutated(lambda d: d.update(stage_index=1.0)), "stage_index", id="float-index"),
        pytest.param(
            _mutated(lambda d: d.update(stage_started_at="0")), "stage_started_at", id="string-time"
        ),
        pytest.param(
            _mutated(lambda d: d["target"].update(release_counter="7")),
            "release_counter",
            id="string-counter",
        ),
        pytest.param('{"salt": "a", "salt": "b"}', "duplicate JSON key", id="duplicate-key"),
        pytest.param(
            _mutated(lambda d: d.update(stage_deadline_hours=1)).replace(
                '"stage_deadline_hours": 1', '"stage_deadline_hours": NaN'
            ),
            "NaN",
            id="nan",
        ),
    ],
)
def test_strict_json_refuses_bad_documents(text: str, match: str) -> None:
    with pytest.raises(PlanError, match=match):
        RolloutPlan.from_json(text)
