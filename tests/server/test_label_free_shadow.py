"""A shadow stage end to end: real devices (Runtime + TUF Updater + Uploader) follow a plan whose 1% stage
runs the release in shadow; treatment devices keep serving the baseline and run the label-swapped release
next to it, control devices run the baseline next to itself; their ``shadow`` events reach the real server
on loopback, whose shadow-agreement gate rolls the release back before it served anyone. No feedback."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.server.conftest import ADMIN_TOKEN, LiveServer
from tests.server.test_label_free_gates import (
    FLEET_MIX,
    Releases,
    _arm_ids,
    _evaluate,
    _record,
    _server,
    _start,
    _why,
    releases,  # noqa: F401 (the module fixture)
)
from tests.server.test_rollout_e2e import assert_replay_reproduces

DEVICES_PER_ARM = 8  # fewer devices that differ in their class mix leave the bound too wide to decide
PREDICTIONS = 180  # the CPU budget (max_cpu 1.0) skips most shadow runs: about 1 in 5 is compared


def _wait_for_shadow(runtime: Any, offered: int) -> dict[str, Any]:
    """Until every offered input was run, dropped or skipped by the shadow (a liveness bound, no timing)."""
    deadline = time.monotonic() + 120
    while True:
        status = runtime.status()["shadow"]["running"]
        assert status is not None, runtime.status()["shadow"]
        done = status["compared"] + status["dropped"] + status["skipped_cpu"] + status["failures"]
        if status["pending"] == 0 and done >= offered:
            return dict(status)
        assert time.monotonic() < deadline, status
        time.sleep(0.01)


def _shadow_device(
    server: LiveServer,
    published: Releases,
    data_dir: Path,
    folder: Path,
    device_id: str,
    images: dict[int, np.ndarray],
    seed: int,
) -> tuple[str, list[str], dict[str, Any]]:
    """Flashed with 1.0.0, updated through TUF (the plan's shadow decision), classifies its own mix of
    digits, uploads; returns its shadow outcome, the bundle ids it served from, its shadow totals."""
    from device_runtime import Runtime, RuntimeConfig
    from device_runtime.updater import Updater, UpdaterConfig
    from device_runtime.uploader import Uploader, UploaderConfig
    from edgekit.server import ingest

    token = ingest.register_device(server.app.state.database, device_id, "rpi4", time.time())
    runtime = Runtime(
        RuntimeConfig(
            store_dir=folder / device_id / "store",
            trusted_keys=[published.public],
            device_id=device_id,
            hardware_id="rpi4",
            trial_inferences=0,
            trial_seconds=0,
            engine_threads=1,
        )
    )
    try:
        runtime.install(published.bundles["1.0.0"])  # the factory image
        updater = Updater(
            UpdaterConfig(
                metadata_url=f"{server.http.base}/repo/metadata/",
                targets_url=f"{server.http.base}/repo/targets/",
                metadata_dir=folder / device_id / "tuf",
                download_dir=folder / device_id / "downloads",
                model="digits",
                channel="stable",
                device_id=device_id,
                bootstrap_root=(data_dir / "repo" / "metadata" / "1.root.json").read_bytes(),
            )
        )
        outcome = updater.update(runtime)
        assert outcome.status in ("installed", "up-to-date"), outcome
        name = runtime._loaded.engine.inputs[0].name
        rng = np.random.default_rng(seed)
        mix = rng.dirichlet(FLEET_MIX * 200)
        served = []
        for offered, label in enumerate(rng.choice(10, size=PREDICTIONS, p=mix), start=1):
            pool = images[int(label)]
            served.append(runtime.predict({name: pool[rng.integers(len(pool))][None]}).bundle_id)
            # A device that predicts no faster than its shadow keeps up: no input is dropped from the
            # shadow's queue. The CPU budget still skips runs by measured time, so PREDICTIONS is large
            # enough that every device compares dozens (with 60 and drops, about 10 per device sometimes
            # left the bound open: lower bound 0.037 against the 0.05 limit).
            _wait_for_shadow(runtime, offered)
        totals = _wait_for_shadow(runtime, PREDICTIONS)
        runtime.flush_health()
        runtime.flush_shadow()
        runtime.telemetry.flush()
        uploader = Uploader(
            runtime.telemetry,
            UploaderConfig(endpoint=f"{server.http.base}/v1/telemetry", device_id=device_id, token=token),
        )
        while runtime.telemetry.pending(1):
            result = uploader.upload_once()
            assert not result.failed, result
        return outcome.shadow, served, totals
    finally:
        runtime.close()


@pytest.mark.slow
def test_a_shadow_stage_rolls_back_a_label_swapped_release_before_it_serves_anyone(
    releases: Releases,  # noqa: F811
    digits: Any,
    start_server: Any,
    tmp_path: Path,
) -> None:
    server, clock = _server(start_server, releases, tmp_path)
    plan = _start(server, "1.1.0", "1.0.0", shadow={"stages": [1], "sample": 1.0, "max_cpu": 1.0})
    assert plan.is_shadow_stage
    images = {c: digits.x[1400:][digits.y[1400:] == c] for c in range(10)}
    baseline = plan.baseline.bundle_id
    found: dict[str, list[tuple[str, list[str], dict[str, Any]]]] = {"treatment": [], "control": []}
    for side in ("treatment", "control"):
        for i, device_id in enumerate(_arm_ids(plan, side, DEVICES_PER_ARM)):
            found[side].append(
                _shadow_device(
                    server, releases, tmp_path / "data", tmp_path / "devices", device_id, images, i
                )
            )
    for side, shadow_bundle in (("treatment", plan.target.bundle_id), ("control", baseline)):
        for shadow, served, totals in found[side]:
            assert shadow in ("staged", "running"), shadow
            assert set(served) == {baseline}, "the shadow never serves: every answer came from the baseline"
            assert totals["bundle_id"] == shadow_bundle and totals["served_bundle_id"] == baseline
            assert totals["compared"] > 0 and totals["failures"] == 0
            if side == "control":
                assert totals["agreed"] == totals["compared"], "the baseline agrees with itself"
    swapped = sum(t["compared"] - t["agreed"] for _, _, t in found["treatment"])
    assert swapped > 0, "the label-swapped release disagrees on 3, 4, 8 and 9"

    clock.offset = 3 * 3600.0  # hours later, past the settle delay
    result = _evaluate(server)
    assert result["decision"]["outcome"] == "rollback" and result["state"] == "rolled_back", _why(result)
    assert result["stage_percent"] == 1
    assert _record(result, "shadow_agreement")["outcome"] == "rollback", _why(result)
    assert _record(result, "shadow_failures")["outcome"] != "rollback"  # none failed; too few runs to pass
    # each treatment device's staging of the release (its download, then verify and self-test, never
    # activated) is the stage's install attempt
    installs = _record(result, "install_failures")
    assert "no installs" not in installs["detail"] and installs["outcome"] != "rollback", installs
    for metric in ("class_shift", "confidence_shift", "input_drift"):  # both arms serve the baseline
        assert "not judged" in _record(result, metric)["detail"], _why(result)
    database = server.app.state.database
    assert database.execute("SELECT COUNT(*) FROM events WHERE kind = 'feedback'")[0][0] == 0
    assert_replay_reproduces(server, plan.rollout_id, expected=1)

    status, body = server.http.request("GET", f"/v1/admin/rollouts/{plan.rollout_id}", token=ADMIN_TOKEN)
    assert status == 200, body
    view = body["shadow"]
    assert view["treatment"]["devices"] == view["control"]["devices"] == DEVICES_PER_ARM
    assert view["control"]["agreement"] == 1.0 and view["treatment"]["agreement"] < 0.9, view
