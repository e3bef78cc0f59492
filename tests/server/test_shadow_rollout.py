"""A shadow stage end to end on loopback: `edgekit rollout start --shadow-stage`, the real server publishing
the signed plan through TUF, and real devices (Runtime + Updater) acting on `Decision.shadow`.

The treatment device keeps serving the baseline and stages the target in its inactive slot (fetched by
delta from its active release, verified and self-tested, never activated); the control device shadows its
own release. Promoted past the shadow stage, the treatment installs the target the normal way.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from click.testing import CliRunner

from device_runtime.rollout_plan import parse_plan
from edgekit.cli import cli
from edgekit.rollout.plan import RolloutPlan, arm
from tests.device_runtime.runtime_fixtures import HARDWARE, config, expected_logits, sample
from tests.server.conftest import ADMIN_TOKEN, LiveServer, deployment, start_server

SERVER_FIXTURES = (deployment, start_server)  # the live server and its published repository


class Device:
    """A device: Runtime + TUF Updater against the live server (the app's bootstrap root pinned)."""

    def __init__(self, server: LiveServer, deployment: Any, folder: Path, device_id: str) -> None:
        from device_runtime import Runtime
        from device_runtime.updater import Updater, UpdaterConfig

        self.folder = folder
        self.runtime = Runtime(replace(config(folder / "store", deployment.releases), device_id=device_id))
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

    def close(self) -> None:
        self.runtime.close()
        self.updater.close()

    def downloads(self) -> list[dict[str, Any]]:
        return [e.payload for e in self.runtime.telemetry.pending(10_000) if e.kind == "download"]


def test_a_shadow_stage_stages_the_target_unserved_then_the_next_stage_installs_it(
    start_server: Callable[..., LiveServer], deployment: Any, tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"
    shutil.copytree(deployment.data_dir, data_dir, symlinks=True)
    server = start_server(data_dir=data_dir)
    runner = CliRunner(env={"EDGEKIT_ADMIN_TOKEN": ADMIN_TOKEN, "EDGEKIT_SERVER": server.http.base})
    started = runner.invoke(
        cli,
        [
            *("rollout", "start", "--model", "tiny", "--target", "1.1.0", "--baseline", "1.0.0"),
            *(
                "--stages",
                "10,50,100",
                "--shadow-stage",
                "10",
                "--shadow-sample",
                "1",
                "--shadow-max-cpu",
                "1",
            ),
            "--json",
        ],
    )
    assert started.exit_code == 0, started.output
    plan = RolloutPlan.from_dict(json.loads(started.output)["plan"])
    assert plan.shadow is not None and plan.shadow.stages == (10,) and plan.is_shadow_stage
    shown = runner.invoke(cli, ["rollout", "status"])
    assert "shadow at 10% (sample 1, max_cpu 1)" in shown.output, shown.output
    ids = deployment.releases.bundle_ids
    treated = next(f"probe-{i}" for i in range(100_000) if arm(plan, f"probe-{i}") == "treatment")
    control = next(f"probe-{i}" for i in range(100_000) if arm(plan, f"probe-{i}") == "control")
    devices = {name: Device(server, deployment, tmp_path / name, name) for name in (treated, control)}
    try:
        exposed, controlled = devices[treated], devices[control]
        outcome = exposed.updater.update(exposed.runtime)
        assert outcome.decision is not None and outcome.decision.shadow is not None
        assert parse_plan(plan.to_bytes()).to_bytes() == plan.to_bytes()
        assert (outcome.status, outcome.release and outcome.release.version, outcome.shadow) == (
            "installed",
            "1.0.0",
            "staged",
        ), outcome
        status = exposed.runtime.status()
        assert status["active"]["version"] == "1.0.0" and status["active"]["slot"] == "a"
        assert status["shadow"]["staged"] == {"slot": "b", "bundle_id": ids["1.1.0"], "version": "1.1.0"}
        assert status["shadow"]["running"]["bundle_id"] == ids["1.1.0"]
        _assert_slot_holds(exposed.folder / "store" / "slots" / "b", ids["1.1.0"], deployment)
        x = sample(seed=3)
        np.testing.assert_allclose(
            exposed.runtime.predict(x).outputs["logits"], expected_logits("1.0.0", x), 1e-5
        )
        shadow_downloads = [d for d in exposed.downloads() if d["bundle_id"] == ids["1.1.0"]]
        # fetched by delta from the active 1.0.0
        assert [d["method"] for d in shadow_downloads] == ["delta"], exposed.downloads()
        assert shadow_downloads[0]["base_bundle_id"] == ids["1.0.0"]
        again = exposed.updater.update(exposed.runtime)
        assert (again.status, again.shadow) == ("up-to-date", "running"), again
        fetched = [d for d in exposed.downloads() if d["bundle_id"] == ids["1.1.0"]]
        assert len(fetched) == 1  # not fetched again
        _assert_shadow_telemetry_ingested(server, exposed, treated)

        mirrored = controlled.updater.update(controlled.runtime)
        assert (mirrored.status, mirrored.shadow) == ("installed", "running"), mirrored
        assert mirrored.decision is not None and mirrored.decision.shadow == plan.baseline  # self-shadow
        status = controlled.runtime.status()
        assert status["shadow"]["staged"] is None and status["shadow"]["running"]["bundle_id"] == ids["1.0.0"]
        assert not (controlled.folder / "store" / "slots" / "b").exists()  # nothing installed for it

        promoted = runner.invoke(cli, ["rollout", "promote", plan.rollout_id])
        assert promoted.exit_code == 0 and "stage 50%" in promoted.output, promoted.output
        served = exposed.updater.update(exposed.runtime)
        assert (served.status, served.release and served.release.version) == ("installed", "1.1.0"), served
        status = exposed.runtime.status()
        assert status["active"]["version"] == "1.1.0" and status["active"]["slot"] == "b"
        assert status["shadow"]["staged"] is None and status["shadow"]["running"] is None
        np.testing.assert_allclose(
            exposed.runtime.predict(x).outputs["logits"], expected_logits("1.1.0", x), 1e-5
        )
        after = controlled.updater.update(controlled.runtime)  # at 50% its u (in [0.1, 0.2)) is treated
        assert (after.status, after.shadow) == ("installed", ""), after  # the install ended its self-shadow
        assert controlled.runtime.status()["shadow"]["running"] is None
    finally:
        for device in devices.values():
            device.close()


def test_an_aborted_shadow_stage_stops_the_shadow_and_keeps_the_baseline_serving(
    start_server: Callable[..., LiveServer], deployment: Any, tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"
    shutil.copytree(deployment.data_dir, data_dir, symlinks=True)
    server = start_server(data_dir=data_dir)
    runner = CliRunner(env={"EDGEKIT_ADMIN_TOKEN": ADMIN_TOKEN, "EDGEKIT_SERVER": server.http.base})
    started = runner.invoke(
        cli,
        [
            *("rollout", "start", "--model", "tiny", "--target", "1.1.0", "--baseline", "1.0.0"),
            *("--stages", "10,50,100", "--shadow-stage", "10", "--json"),
        ],
    )
    assert started.exit_code == 0, started.output
    plan = RolloutPlan.from_dict(json.loads(started.output)["plan"])
    assert plan.shadow is not None and (plan.shadow.sample, plan.shadow.max_cpu) == (0.1, 0.2)  # defaults
    treated = next(f"probe-{i}" for i in range(100_000) if arm(plan, f"probe-{i}") == "treatment")
    device = Device(server, deployment, tmp_path / treated, treated)
    try:
        assert device.updater.update(device.runtime).shadow == "staged"
        aborted = runner.invoke(cli, ["rollout", "abort", plan.rollout_id])
        assert aborted.exit_code == 0, aborted.output
        outcome = device.updater.update(device.runtime)
        assert (outcome.status, outcome.shadow) == ("up-to-date", "stopped"), outcome
        status = device.runtime.status()
        assert status["active"]["version"] == "1.0.0" and status["shadow"]["running"] is None
        assert device.updater.update(device.runtime).shadow == ""  # nothing to stop any more
    finally:
        device.close()


def _assert_shadow_telemetry_ingested(server: LiveServer, device: Device, device_id: str) -> None:
    """The device's shadow window goes through its uploader to the server, which takes every event."""
    from device_runtime.uploader import Uploader, UploaderConfig

    for x in (sample(seed=seed) for seed in range(50)):
        device.runtime.predict(x)
    deadline = time.monotonic() + 60
    while device.runtime.status()["shadow"]["running"]["pending"]:
        assert time.monotonic() < deadline, "the shadow worker never drained its queue"
        time.sleep(0.01)
    device.runtime.flush_shadow()
    queued = device.runtime.telemetry.pending(10_000)
    shadows = [e for e in queued if e.kind == "shadow"]
    assert shadows and sum(e.payload["compared"] for e in shadows) > 0
    status, body = server.http.request(
        "POST", "/v1/admin/devices", {"device_id": device_id, "hardware_id": HARDWARE}, token=ADMIN_TOKEN
    )
    assert status == 200, body
    uploader = Uploader(
        device.runtime.telemetry,
        UploaderConfig(endpoint=f"{server.http.base}/v1/telemetry", device_id=device_id, token=body["token"]),
    )
    result = uploader.upload_once()
    assert (result.status, result.sent, result.acknowledged) == (200, len(queued), len(queued)), result
    assert result.refused == 0 and result.dropped == 0, result


def _assert_slot_holds(slot: Path, bundle_id: str, deployment: Any) -> None:
    from signing.keys import load_public_key
    from signing.verify import VerifyPolicy, verify_directory

    keys = [load_public_key(deployment.releases.public_key)]
    assert verify_directory(slot, keys, policy=VerifyPolicy(hardware_id=HARDWARE)).payload_sha256 == bundle_id
