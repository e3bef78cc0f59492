"""Rollout errors are classified by type, never by message: unknown id 404, refused action 409."""

from __future__ import annotations

from typing import Any

from edgekit.errors import EdgekitError, PlanError, RolloutConflictError, RolloutError, UnknownRolloutError
from tests.server.conftest import ADMIN_TOKEN


def test_the_rollout_errors_are_one_tree_under_edgekit_error() -> None:
    from edgekit.bundle_build import BundleError
    from edgekit.rollout.gates import GateConfigError
    from edgekit.server.storage import StorageError
    from edgekit.server.tuf_repo import BundleRefusedError, RepositoryError

    for error in (PlanError, UnknownRolloutError, RolloutConflictError, GateConfigError):
        assert issubclass(error, RolloutError)
    for error in (RolloutError, BundleError, StorageError, RepositoryError, BundleRefusedError):
        assert issubclass(error, EdgekitError)
    from edgekit.server import rollouts

    assert rollouts.RolloutError is RolloutError  # one class, not a second copy


def test_an_unknown_rollout_is_404_and_an_action_its_state_refuses_is_409(start_server: Any) -> None:
    server = start_server()
    for action in ("pause", "resume", "abort", "promote"):
        status, body = server.http.request(
            "POST", f"/v1/admin/rollouts/no-such-rollout/{action}", {}, token=ADMIN_TOKEN
        )
        assert status == 404, (action, body)
    status, started = server.http.request(
        "POST",
        "/v1/admin/rollouts",
        {"model": "tiny", "channel": "stable", "target_version": "1.1.0", "baseline_version": "1.0.0"},
        token=ADMIN_TOKEN,
    )
    assert status == 200, started
    rollout_id = started["plan"]["rollout_id"]
    steps = [
        ("resume", 409),
        ("pause", 200),
        ("pause", 409),
        ("abort", 200),
        ("abort", 409),
        ("promote", 409),
    ]
    for action, expected in steps:
        status, body = server.http.request(
            "POST", f"/v1/admin/rollouts/{rollout_id}/{action}", {}, token=ADMIN_TOKEN
        )
        assert status == expected, (action, body)
