"""Per-device rollups give exactly what the raw events give, however events and evaluations interleave."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import numpy as np
import pytest

from edgekit.rollout.plan import Release, RolloutPlan, arm
from edgekit.server.aggregate import SETTLE_S, current_devices, window_devices
from edgekit.server.storage import Database, open_database
from tests.server.conftest import postgres_url  # noqa: F401  (the PostgreSQL fixture)

START = 1_700_000_000.0


def _plan() -> RolloutPlan:
    def release(version: str, counter: int) -> Release:
        return Release(version, counter, f"bundles/tiny/tiny-{version}.ekb", version * 64)

    return RolloutPlan(
        "tiny",
        "stable",
        f"tiny-{uuid.uuid4().hex[:8]}",
        "salt",
        release("2", 2),
        release("1", 1),
        stages=(10, 100),
    )


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Database:
    if request.param == "sqlite":
        return open_database(f"sqlite:///{tmp_path / 'r.db'}", tmp_path)
    return open_database(request.getfixturevalue("postgres_url"), tmp_path)


def test_rollups_equal_a_recount_of_the_raw_events(database: Database) -> None:
    rng = np.random.default_rng(3)
    plan = _plan()
    devices = [f"dev-{i}" for i in range(60)]
    bundles = [plan.target.bundle_id, plan.baseline.bundle_id, "f" * 64, None]
    now = START
    for step in range(12):
        rows = []
        for _ in range(int(rng.integers(0, 300))):
            device = devices[int(rng.integers(len(devices)))]
            received = now + float(rng.uniform(-600, 600))  # replicas' clocks and slow requests
            kind = str(rng.choice(["inferences", "crash", "feedback", "install", "trial"]))
            bundle = bundles[int(rng.integers(len(bundles)))]
            payload: dict[str, object] = {
                "inferences": {
                    "inferences": 4,
                    "errors": 1,
                    "latency_ms_buckets": [0, 0, 4] + [0] * 10,
                    "latency_ms_sum": 12.0,
                    "window_s": 600.0,
                },
                "crash": {"during": "inference"},
                "feedback": {"correct": bool(rng.integers(2))},
                "install": {"outcome": str(rng.choice(["activated", "failed"]))},
                "trial": {"outcome": "committed"},
            }[kind]
            if bundle is not None:
                payload["bundle_id"] = bundle
            text = (
                json.dumps(payload) if rng.random() > 0.02 else '{"inferences": "x"}'
            )  # a bad row now and then
            rows.append(
                (
                    f"{device}:{uuid.uuid4().hex}",
                    device,
                    "b",
                    kind,
                    received + float(rng.uniform(-7200, 60)),
                    received,
                    bundle,
                    text,
                )
            )
        database.executemany(
            "INSERT INTO events (event_id, device_id, batch_id, kind, time, received_at, bundle_id, payload) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            rows,
        )
        now += float(rng.uniform(0, 2 * SETTLE_S))
        live = current_devices(database, plan, now)
        again = window_devices(database, plan, now)
        assert live.devices == again.devices, step
        assert live.skipped == again.skipped
    assert any(arm(plan, d) == "treatment" for d in live.devices)
    assert (
        any(d.inferences for d in live.devices.values()) and live.skipped > 0
    )  # parsed, and bad rows counted
