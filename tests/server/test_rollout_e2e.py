"""Phased rollouts end to end on loopback: real server, TUF, real device runtimes, telemetry, gates.

A few real devices (Runtime + TUF Updater + Uploader) follow the plan while a few hundred synthetic
devices send telemetry through the same HTTP endpoint, so the gates see a fleet. The server's clock is
injected: a rollout's hours pass in milliseconds.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

from edgekit.rollout.plan import RolloutPlan, arm
from tests.server.conftest import ADMIN_TOKEN, LiveServer
from tests.server.fleet import HOUR, evaluate, fleet_telemetry, send, start_rollout


def test_a_healthy_release_promotes_stage_by_stage_to_everyone(
    fleet: Any, deployment: Any, tmp_path: Path
) -> None:
    server, clock, tokens = fleet
    # A 20% first stage: a 10% arm of 240 devices is sometimes small enough (12 devices) that a healthy
    # release is only held on the install-failure bound, which is the right decision but not this test's.
    plan = start_rollout(server, "1.1.0", "1.0.0", [20, 50, 100])
    seen = []
    for _ in range(3):
        counts = fleet_telemetry(server, plan, tokens, clock.now)
        clock.now += 3 * HOUR
        result = evaluate(server)
        seen.append((result["stage_percent"], result["decision"]["outcome"], counts))
        plan = RolloutPlan.from_dict(
            server.http.request("GET", f"/v1/admin/rollouts/{plan.rollout_id}", token=ADMIN_TOKEN)[1]["plan"]
        )
    assert [outcome for _, outcome, _ in seen] == ["promote", "promote", "promote"], (seen, result)
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
    from tests.device_runtime.runtime_fixtures import sample

    exposed = treatment_device(plan, tmp_path, server, deployment)
    exposed.runtime.install(deployment.releases.bundles["1.0.0"])  # the factory image
    exposed.runtime.predict(sample())  # committed
    assert exposed.update() == "1.2.0", "a treatment device runs the new release"
    exposed.runtime.predict(sample())  # its trial commits too: the release floor rises to 1.2.0's
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
    assert exposed.update() == "1.0.0", "exposed devices return to the baseline (a local revert)"
    assert exposed.runtime.status()["floors"]["tiny"] == 3, "the floor did not have to be lowered"
    assert exposed.runtime.status()["bad_releases"] == [], "a plan's revert does not blacklist the release"
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
