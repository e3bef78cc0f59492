"""The plan the server publishes is the plan every device reads: one contract, `device_runtime.rollout_plan`.

The server's `RolloutPlan` in every state is published through a real `TufRepository`; the published bytes
go through the device's parser and decision. A hypothesis test checks that the device's `decide` and the
server's `arm` / `wanted_release` agree with each other and with the documented cohort formula.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from device_runtime.rollout_plan import STATES, Plan, decide, parse_plan
from edgekit.rollout.plan import Release, RolloutPlan, arm, wanted_release
from edgekit.server.tuf_repo import TufRepository
from tests.device_runtime.runtime_fixtures import Releases, build_releases

DEVICE_IDS = [f"device-{i:04d}" for i in range(400)]


@pytest.fixture(scope="module")
def releases(tmp_path_factory: pytest.TempPathFactory) -> Releases:
    return build_releases(tmp_path_factory.mktemp("releases"))


def _release(releases: Releases, version: str, counter: int) -> Release:
    return Release(version, counter, f"bundles/tiny/tiny-{version}.ekb", releases.bundle_ids[version])


def _in_every_state(start: RolloutPlan) -> dict[str, RolloutPlan]:
    t = start.stage_started_at
    walked = start.promote(t + 3600).promote(t + 7200)
    return {
        "running": walked,
        "paused": walked.pause(),
        "halted": walked.halt("crash_rate LLR 7.1 >= 6.8 — halted by the gate"),
        "rolled_back": walked.pause().roll_back("aborted by operator"),
        "complete": walked.promote(t + 9000).complete(),
    }


def test_the_published_plan_round_trips_through_the_device_parser_in_every_state(
    releases: Releases, tmp_path: Path
) -> None:
    offline = tmp_path / "offline"
    repo = TufRepository.init(tmp_path / "data", offline_keys_dir=offline, release_keys=[releases.public_key])
    for version in ("1.0.0", "1.1.0"):
        repo.add_bundle(releases.bundles[version], offline_keys_dir=offline)
    start = RolloutPlan(
        model="tiny",
        channel="stable",
        rollout_id="tiny-stable-1700000000-abc123",
        salt="0f" * 16,
        target=_release(releases, "1.1.0", 2),
        baseline=_release(releases, "1.0.0", 1),
        stage_started_at=1_700_000_000,
    )
    plans = _in_every_state(start)
    assert sorted(plans) == sorted(STATES)
    for state, plan in plans.items():
        published = repo.set_plan("tiny", "stable", plan.to_dict())
        directory, _, name = published.path.rpartition("/")
        data = (repo.targets_dir / directory / f"{published.sha256}.{name}").read_bytes()
        assert data == plan.to_bytes(), state  # the canonical bytes, nothing else
        device = parse_plan(data, model="tiny", channel="stable")
        assert type(device) is Plan and device.to_dict() == plan.to_dict(), state
        assert RolloutPlan.from_json(data) == plan, state
        for device_id in DEVICE_IDS:
            decision = decide(device, device_id)
            assert decision.arm == arm(plan, device_id), (state, device_id)
            assert decision.wanted == wanted_release(plan, device_id), (state, device_id)
        assert json.loads(data)["state"] == state


# ---- device decide vs server arm, for any salt, id and stage --------------------------------------------
def _documented_arm(salt: str, device_id: str, percent: int, control: bool) -> str:
    u = int.from_bytes(hashlib.sha256(salt.encode() + device_id.encode()).digest()[:8], "big") / 2**64
    p = percent / 100
    return "treatment" if u < p else "control" if control and p <= u < 2 * p else "other"


@st.composite
def _plans(draw: st.DrawFn) -> RolloutPlan:
    control = draw(st.booleans())
    ceiling = 50 if control else 99
    early = draw(st.lists(st.integers(1, ceiling), unique=True, max_size=6))
    stages = (*sorted(early), 100)
    state = draw(st.sampled_from(STATES))
    index = len(stages) - 1 if state == "complete" else draw(st.integers(0, len(stages) - 1))
    target = Release("2.0.0", 2, "bundles/m/m-2.0.0.ekb", "b" * 64)
    baseline = Release("1.0.0", 1, "bundles/m/m-1.0.0.ekb", "a" * 64)
    return RolloutPlan(
        model="m",
        channel="stable",
        rollout_id="r-1",
        salt=draw(st.text(min_size=1, max_size=64)),
        target=target,
        baseline=baseline,
        stages=stages,
        stage_index=index,
        state=state,  # type: ignore[arg-type]
        control=control,
        reason="gate" if state in ("halted", "rolled_back") else "",
    )


@settings(max_examples=300, deadline=None)
@given(plan=_plans(), device_ids=st.lists(st.text(max_size=40), min_size=1, max_size=20))
def test_device_decide_and_server_arm_agree_for_any_salt_id_and_stage(
    plan: RolloutPlan, device_ids: list[str]
) -> None:
    device = parse_plan(plan.to_bytes())
    for device_id in device_ids:
        decision = decide(device, device_id)
        expected = _documented_arm(plan.salt, device_id, plan.stage_percent, plan.control)
        assert decision.arm == arm(plan, device_id) == expected
        assert decision.wanted == wanted_release(plan, device_id)
        if plan.state == "complete":
            assert decision.wanted == plan.target
        elif plan.state in ("halted", "rolled_back"):
            assert decision.wanted == plan.baseline
        else:
            assert decision.wanted == (plan.target if expected == "treatment" else plan.baseline)
