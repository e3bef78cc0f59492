"""A plan change stored but never published (the process died between the two) is published by the next
evaluation: devices never stay on a plan the server has left."""

from __future__ import annotations

import hashlib
from typing import Any

from device_runtime.rollout_plan import parse_plan
from edgekit.rollout.plan import RolloutPlan
from tests.server.fleet import evaluate, start_rollout


def _published(server: Any, plan: RolloutPlan) -> dict[str, Any]:
    """The plan devices would download: the repository's target file, parsed as a device parses it."""
    repo = server.app.state.service.repo
    digest = repo.published_plan_sha256(plan.model, plan.channel)
    assert digest is not None
    data = (repo.targets_dir / "rollouts" / plan.model / f"{digest}.{plan.channel}.json").read_bytes()
    assert hashlib.sha256(data).hexdigest() == digest
    return parse_plan(data, model=plan.model, channel=plan.channel).to_dict()


def test_a_promotion_stored_by_a_process_that_died_before_publishing_it_is_published_next(fleet: Any) -> None:
    server, clock, _ = fleet
    plan = start_rollout(server, "1.1.0", "1.0.0", [10, 50, 100])
    assert _published(server, plan)["stage_index"] == 0
    # What a replica that stored its promotion and was killed before `set_plan` leaves behind.
    clock.now += 60
    promoted = plan.promote(clock.now)
    server.app.state.database.execute(
        "UPDATE rollouts SET plan = ?, updated_at = ? WHERE rollout_id = ?",
        (promoted.to_json(), clock.now, plan.rollout_id),
    )
    assert _published(server, plan)["stage_index"] == 0, "the repository lags the database"
    result = evaluate(server)  # the next evaluator run (no telemetry: it holds)
    assert result["decision"]["outcome"] == "hold" and result["stage_percent"] == 50
    published = _published(server, plan)
    assert published["stage_index"] == 1 and published == parse_plan(
        promoted.to_dict(), model=plan.model, channel=plan.channel
    ).to_dict()
    before = server.app.state.service.repo.status()
    evaluate(server)  # in step: nothing is written again
    assert server.app.state.service.repo.status() == before
