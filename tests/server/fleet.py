"""A synthetic fleet for server tests: many devices' telemetry over real HTTP, and an injected clock."""

from __future__ import annotations

import shutil
import time
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from edgekit.rollout.plan import RolloutPlan, arm
from tests.server.conftest import ADMIN_TOKEN, SMALL_FLEET, LiveServer, empty_database

HOUR = 3600.0
# A small fleet never sees enough crashes to *prove* equality, so a crash or error rate whose upper bound
# is below these counts as negligible (the defaults are tuned for 100k devices).
GATES = replace(
    SMALL_FLEET,
    negligible_crash_rate_per_device_hour=0.2,
    negligible_error_rate=0.05,
    min_latency_samples=10,
    max_crash_rate_per_device_hour=0.3,
    max_install_failure_share=0.2,
)


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def register_many(server: LiveServer, count: int) -> dict[str, str]:
    from edgekit.server import ingest

    database = server.app.state.database if hasattr(server.app.state, "database") else None
    tokens = {}
    for index in range(count):
        device_id = f"sim-{index:04d}"
        if database is not None:
            tokens[device_id] = ingest.register_device(database, device_id, "rpi4", time.time())
        else:
            status, body = server.http.request(
                "POST",
                "/v1/admin/devices",
                {"device_id": device_id, "hardware_id": "rpi4"},
                token=ADMIN_TOKEN,
            )
            assert status == 200
            tokens[device_id] = body["token"]
    return tokens


def send(
    server: LiveServer, device_id: str, token: str, events: list[tuple[str, float, dict[str, Any]]]
) -> None:
    body = {
        "schema": "edgekit.telemetry/v1",
        "batch_id": uuid.uuid4().hex,
        "device_id": device_id,
        "sent_at": time.time(),
        "events": [{"id": uuid.uuid4().hex, "kind": k, "time": t, "payload": p} for k, t, p in events],
    }
    status, answer = server.http.request("POST", "/v1/telemetry", body, token=token)
    assert status == 200, answer


def fleet_telemetry(
    server: LiveServer,
    plan: RolloutPlan,
    tokens: dict[str, str],
    start: float,
    *,
    crash_every_hours: float | None = None,
) -> dict[str, int]:
    """Two hours of reports from every synthetic device in the treatment or control arm."""
    counts = {"treatment": 0, "control": 0}
    for device_id, token in tokens.items():
        side = arm(plan, device_id)
        if side not in counts:
            continue
        counts[side] += 1
        bundle = plan.target.bundle_id if side == "treatment" else plan.baseline.bundle_id
        buckets = [0, 0, 50, 10, 0, 0, 0, 0, 0, 0, 0, 0, 0]
        events = [
            (
                "inferences",
                start + h * HOUR,
                {
                    "bundle_id": bundle,
                    "inferences": 60,
                    "errors": 0,
                    "latency_ms_buckets": buckets,
                    "latency_ms_sum": 240.0,
                    "window_s": 600.0,  # the telemetry contract bounds counts by the time they cover
                },
            )
            for h in (0.1, 1.0, 2.0)
        ]
        if side == "treatment":
            events.append(("install", start + 0.05 * HOUR, {"outcome": "activated", "bundle_id": bundle}))
        if crash_every_hours and side == "treatment":
            events += [("crash", start + h * HOUR, {"bundle_id": bundle}) for h in (0.5, 1.5)]
        send(server, device_id, token, events)
    return counts


def start_rollout(server: LiveServer, target: str, baseline: str, stages: list[int]) -> RolloutPlan:
    status, body = server.http.request(
        "POST",
        "/v1/admin/rollouts",
        {"model": "tiny", "target_version": target, "baseline_version": baseline, "stages": stages},
        token=ADMIN_TOKEN,
    )
    assert status == 200, body
    return RolloutPlan.from_dict(body["plan"])


def evaluate(server: LiveServer) -> dict[str, Any]:
    status, body = server.http.request("POST", "/v1/admin/evaluate", token=ADMIN_TOKEN)
    assert status == 200 and len(body) == 1, body
    return dict(body[0])


@pytest.fixture(params=["sqlite", "postgresql"])
def fleet(
    request: pytest.FixtureRequest, start_server: Any, deployment: Any, tmp_path: Path
) -> tuple[LiveServer, Clock, dict[str, str]]:
    """A live server over a fresh copy of the published repository, on SQLite and on PostgreSQL."""
    clock = Clock()
    data_dir = tmp_path / "data"  # each test starts from the freshly published repository
    shutil.copytree(deployment.data_dir, data_dir, symlinks=True)
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'fleet.db'}"
    else:
        url = empty_database(request.getfixturevalue("postgres_url"), tmp_path)
    server = start_server(clock=clock, gates=GATES, db_url=url, data_dir=data_dir)
    return server, clock, register_many(server, 240)
