"""Phased rollouts end to end on loopback: real server, TUF, real device runtimes, telemetry, gates.

A few real devices (Runtime + TUF Updater + Uploader) follow the plan while a few hundred synthetic
devices send telemetry through the same HTTP endpoint, so the gates see a fleet. The server's clock is
injected: a rollout's hours pass in milliseconds.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from edgekit.rollout.plan import RolloutPlan, arm
from tests.server.conftest import ADMIN_TOKEN, SMALL_FLEET, LiveServer

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


@pytest.fixture()
def fleet(start_server: Any, deployment: Any, tmp_path: Path) -> tuple[LiveServer, Clock, dict[str, str]]:
    import shutil

    clock = Clock()
    data_dir = tmp_path / "data"  # each test starts from the freshly published repository
    shutil.copytree(deployment.data_dir, data_dir, symlinks=True)
    server = start_server(
        clock=clock, gates=GATES, db_url=f"sqlite:///{tmp_path / 'fleet.db'}", data_dir=data_dir
    )
    return server, clock, register_many(server, 240)


def test_a_healthy_release_promotes_stage_by_stage_to_everyone(
    fleet: Any, deployment: Any, tmp_path: Path
) -> None:
    server, clock, tokens = fleet
    plan = start_rollout(server, "1.1.0", "1.0.0", [10, 50, 100])
    seen = []
    for _ in range(3):
        counts = fleet_telemetry(server, plan, tokens, clock.now)
        clock.now += 3 * HOUR
        result = evaluate(server)
        seen.append((result["stage_percent"], result["decision"]["outcome"], counts))
        plan = RolloutPlan.from_dict(
            server.http.request("GET", f"/v1/admin/rollouts/{plan.rollout_id}", token=ADMIN_TOKEN)[1]["plan"]
        )
    assert [outcome for _, outcome, _ in seen] == ["promote", "promote", "promote"], seen
    assert plan.state == "complete"
    devices = real_devices(server, deployment, tmp_path, count=3)
    assert {d.update() for d in devices} == {"1.1.0"}  # every real device follows the plan to the target
    _, status = server.http.request("GET", f"/v1/admin/rollouts/{plan.rollout_id}", token=ADMIN_TOKEN)
    decisions = status["decisions"]
    assert decisions[0]["outcome"] == "start" and all(d["records"] for d in decisions[1:])
    record = next(r for r in decisions[1]["records"] if r["metric"] == "crash_rate")
    assert {"treatment_value", "control_value", "n", "statistic", "threshold", "outcome"} <= set(record)
    assert_replay_reproduces(server, plan.rollout_id, expected=3)


def test_a_crashing_release_halts_at_the_first_stage_and_rolls_back(
    fleet: Any, deployment: Any, tmp_path: Path
) -> None:
    server, clock, tokens = fleet
    plan = start_rollout(server, "1.2.0", "1.0.0", [10, 50, 100])
    exposed = treatment_device(plan, tmp_path, server, deployment)
    assert exposed.update() == "1.2.0", "a treatment device runs the new release"
    bystander = next(f"bystander-{i}" for i in range(1000) if arm(plan, f"bystander-{i}") == "other")
    assert RealDevice(server, deployment, tmp_path / bystander, bystander).update() == "1.0.0"
    fleet_telemetry(server, plan, tokens, clock.now, crash_every_hours=1.0)
    clock.now += 3 * HOUR
    result = evaluate(server)
    assert result["decision"]["outcome"] == "rollback" and result["state"] == "rolled_back"
    assert result["stage_percent"] == 10, "halted before leaving the first stage"
    crash = next(r for r in result["decision"]["records"] if r["metric"] == "crash_rate")
    assert crash["outcome"] == "rollback" and crash["treatment_value"] > crash["control_value"], crash
    assert crash["statistic"] >= crash["threshold"], "the SPRT crossed its upper boundary"
    assert exposed.update() == "1.0.0", "exposed devices return to the baseline"
    clock.now += 60  # a control device's crash arrives after the decision, stamped before it
    late = next(d for d in tokens if arm(plan, d) == "control")
    send(
        server, late, tokens[late], [("crash", clock.now - 2 * HOUR, {"bundle_id": plan.baseline.bundle_id})]
    )
    assert_replay_reproduces(server, plan.rollout_id, expected=1)


def assert_replay_reproduces(server: LiveServer, rollout_id: str, *, expected: int) -> None:
    """Replaying stored telemetry through the same gate code gives the stored decisions, record for record."""
    replayed = server.app.state.service.replay(rollout_id)
    assert len(replayed) == expected
    for stored, decision in replayed:
        again = decision.to_dict()
        assert again["outcome"] == stored["outcome"]
        assert json.loads(json.dumps(again["records"])) == stored["records"]


class RealDevice:
    """A device: Runtime + TUF Updater against the live server (the app's bootstrap root pinned)."""

    def __init__(self, server: LiveServer, deployment: Any, folder: Path, device_id: str) -> None:
        from device_runtime import Runtime
        from device_runtime.updater import Updater, UpdaterConfig
        from tests.device_runtime.runtime_fixtures import config

        self.runtime = Runtime(
            replace(config(folder / "store", deployment.releases, trial_inferences=1), device_id=device_id)
        )
        self.updater = Updater(
            UpdaterConfig(
                metadata_url=f"{server.http.base}/repo/metadata/",
                targets_url=f"{server.http.base}/repo/targets/",
                metadata_dir=folder / "tuf",
                download_dir=folder / "downloads",
                model="tiny",
                channel="stable",
                device_id=device_id,
                bootstrap_root=deployment.root_json.read_bytes(),
            )
        )

    def update(self) -> str:
        outcome = self.updater.update(self.runtime)
        assert outcome.status in ("installed", "up-to-date"), outcome
        return str(self.runtime.status()["active"]["version"])


def real_devices(server: LiveServer, deployment: Any, tmp_path: Path, *, count: int) -> list[RealDevice]:
    return [RealDevice(server, deployment, tmp_path / f"device-{i}", f"real-{i}") for i in range(count)]


def treatment_device(plan: RolloutPlan, tmp_path: Path, server: LiveServer, deployment: Any) -> RealDevice:
    device_id = next(f"probe-{i}" for i in range(100_000) if arm(plan, f"probe-{i}") == "treatment")
    return RealDevice(server, deployment, tmp_path / device_id, device_id)
