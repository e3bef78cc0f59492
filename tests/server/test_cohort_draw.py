"""`--min-arm-devices`: a rollout's salt is drawn until its first stages have enough registered devices per
arm, counted with the devices' own rule on the plan they download; a start the fleet cannot satisfy is
refused with what to change, and leaves nothing behind; every start reports the arm sizes it drew."""

from __future__ import annotations

import dataclasses
import hashlib
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
from click.testing import CliRunner

from device_runtime.rollout_plan import Plan, decide, parse_plan
from edgekit.cli import cli
from edgekit.errors import RolloutConflictError
from edgekit.rollout.plan import arm
from edgekit.server.cohort_draw import binomial_tail, draw_cohorts
from tests.server.conftest import ADMIN_TOKEN
from tests.server.fleet import GATES

NEED = GATES.min_devices_per_arm + GATES.robust_devices  # what the test gates' exposure check needs per arm


def _start(server: Any, stages: list[int], min_arm_devices: int, **extra: Any) -> tuple[int, Any]:
    body = {"model": "tiny", "target_version": "1.1.0", "baseline_version": "1.0.0", "stages": stages}
    return server.http.request(  # type: ignore[no-any-return]
        "POST", "/v1/admin/rollouts", {**body, "min_arm_devices": min_arm_devices, **extra}, token=ADMIN_TOKEN
    )


def _published(server: Any) -> Plan:
    """The plan devices download: the repository's target file, parsed as a device parses it."""
    repo = server.app.state.service.repo
    digest = repo.published_plan_sha256("tiny", "stable")
    assert digest is not None
    data = (repo.targets_dir / "rollouts" / "tiny" / f"{digest}.stable.json").read_bytes()
    assert hashlib.sha256(data).hexdigest() == digest
    return parse_plan(data, model="tiny", channel="stable")


def test_min_arm_devices_gives_every_early_stage_that_many_devices_per_arm_as_the_devices_count(
    fleet: Any,
) -> None:
    server, _, tokens = fleet  # 240 registered devices: a 1% arm expects 2.4
    status, body = _start(server, [1, 5, 25, 100], 4)
    assert status == 200, body
    plan = _published(server)
    assert plan.rollout_id == body["plan"]["rollout_id"] and plan.salt == body["plan"]["salt"]
    for index, percent in enumerate(plan.stages[:-1]):
        at_stage = dataclasses.replace(plan, stage_index=index)
        arms = Counter(decide(at_stage, device).arm for device in tokens)
        assert arms["treatment"] >= 4 and arms["control"] >= 4, (percent, arms)
    cohorts = body["cohorts"]
    assert cohorts["registered"] == 240 and cohorts["min_arm_devices"] == 4 and cohorts["draws"] >= 1
    assert [s["percent"] for s in cohorts["stages"]] == [1, 5, 25]


@pytest.mark.parametrize("control", [True, False])
def test_every_start_reports_the_arm_sizes_a_recount_with_the_device_rule_gives(
    fleet: Any, control: bool
) -> None:
    server, _, tokens = fleet
    status, body = _start(server, [1, 5, 25, 100], 0, control=control)
    assert status == 200, body
    plan = _published(server)
    cohorts = body["cohorts"]
    assert cohorts["draws"] == 1 and cohorts["registered"] == len(tokens) == 240
    assert cohorts["gate_min_devices"] == NEED
    recounted = []
    for index, percent in enumerate(plan.stages[:-1]):
        arms = Counter(arm(dataclasses.replace(plan, stage_index=index), device) for device in tokens)
        control_arm = arms["control"] if control else None
        recounted.append({"percent": percent, "treatment": arms["treatment"], "control": control_arm})
    assert cohorts["stages"] == recounted
    first = cohorts["stages"][0]
    short = min(first["treatment"], first["control"] if control else first["treatment"]) < NEED
    assert (cohorts["warning"] is not None) == short  # the 1% stage is the smallest
    if short:
        assert "will hold until its deadline (72 h)" in cohorts["warning"]
        assert f"--min-arm-devices {NEED}" in cohorts["warning"] and "--stages" in cohorts["warning"]
    # the existing keys of the response are all there
    assert {"plan", "stage_percent", "decisions"} <= set(body)


def test_arms_the_gates_can_judge_bring_no_warning(fleet: Any) -> None:
    server, _, _ = fleet
    status, body = _start(server, [5, 25, 100], NEED)  # a 5% arm of 240 devices expects 12
    assert status == 200, body
    assert body["cohorts"]["warning"] is None
    assert min(min(s["treatment"], s["control"]) for s in body["cohorts"]["stages"]) >= NEED


def test_a_hopeless_request_is_refused_with_what_to_change_and_nothing_is_stored_or_published(
    fleet: Any,
) -> None:
    server, _, _ = fleet
    status, body = _start(server, [1, 5, 25, 100], 50)
    assert status == 409, body
    message = body["detail"]
    for words in (
        "cannot draw groups of at least 50 devices (--min-arm-devices 50)",
        "of the 240 registered devices, stage 1% expects 2.4 per group",
        "a larger first stage (--stages 20,25,100)",
        "a smaller --min-arm-devices (3 or less)",
        "register more devices (5000 expect 50 per 1% group)",
    ):
        assert words in message, message
    assert server.http.request("GET", "/v1/admin/rollouts", token=ADMIN_TOKEN) == (200, [])
    assert server.app.state.service.repo.published_plan_sha256("tiny", "stable") is None
    assert server.app.state.database.execute("SELECT COUNT(*) FROM decisions")[0][0] == 0
    # the bound of the request itself
    assert _start(server, [1, 5, 25, 100], 100_001)[0] == 400
    assert _start(server, [1, 5, 25, 100], -1)[0] == 400


def test_the_cli_says_the_first_stage_groups_in_words_and_warns_when_the_gates_cannot_judge_them(
    fleet: Any,
) -> None:
    server, _, _ = fleet
    runner = CliRunner(env={"EDGEKIT_ADMIN_TOKEN": ADMIN_TOKEN})
    base = ["rollout", "--server", server.http.base, "start", "--model", "tiny", "--target", "1.1.0"]
    started = runner.invoke(cli, [*base, "--baseline", "1.0.0", "--min-arm-devices", "4"])
    assert started.exit_code == 0, started.output
    lines = started.stdout.splitlines()
    assert lines[0].startswith("started tiny-stable-") and len(lines) == 2, started.stdout
    plan = _published(server)
    groups = Counter(arm(plan, device) for device in (f"sim-{i:04d}" for i in range(240)))
    assert lines[1].startswith(
        f"stage 1%: {groups['treatment']} devices in the update group, {groups['control']} in the control "
        "group, of 240 registered (drawn for at least 4 each: "
    ), lines[1]
    notes = [line for line in started.stderr.splitlines() if line.startswith("note: ")]
    assert len(notes) == (1 if min(groups["treatment"], groups["control"]) < NEED else 0), started.stderr
    if notes:
        assert "will hold until its deadline" in notes[0] and "--min-arm-devices" in notes[0]
    runner.invoke(cli, ["rollout", "--server", server.http.base, "abort", plan.rollout_id])

    refused = runner.invoke(cli, [*base, "--baseline", "1.0.0", "--min-arm-devices", "50", "--json"])
    assert refused.exit_code == 1
    assert "server answered 409: cannot draw groups of at least 50 devices" in refused.stdout
    assert runner.invoke(cli, [*base, "--baseline", "1.0.0", "--min-arm-devices", "-1"]).exit_code == 2


def test_the_draw_refuses_after_its_bounded_draws_and_its_chance_is_the_binomial_tail() -> None:
    devices = [f"dev-{i:05d}" for i in range(300)]

    def always(salt: str) -> Callable[[], str]:
        return lambda: salt

    # A salt source that always gives the same salt, one whose 1% stage is too small: every draw fails.
    small = next(
        salt
        for salt in (f"salt-{i}" for i in range(1000))
        if draw_cohorts(devices, (1, 100), True, 0, always(salt)).stages[0].smallest() < 4
    )
    with pytest.raises(RolloutConflictError) as refused:
        draw_cohorts(devices, (1, 5, 25, 100), True, 4, always(small))
    # 300 devices at 1%: P(X >= 4) = 0.353 per arm, both arms 0.124, 104 draws for 1e-6 odds of failing
    assert "no salt of 104 drawn" in str(refused.value) and "3.0 per group" in str(refused.value)
    assert abs(binomial_tail(300, 0.01, 4) - 0.35276622535745666) < 1e-12
    assert binomial_tail(300, 0.01, 0) == 1.0 and binomial_tail(3, 0.5, 4) == 0.0
