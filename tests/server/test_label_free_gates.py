"""Label-free gates end to end: real device runtimes (onnxruntime, signed digits bundles carrying their
reference profiles) send their health sketches through the real uploader to the real server on loopback,
which builds the label-free evidence of the stage window and decides. No feedback label is ever sent.

- a label-order bug (classes 3<->8 and 4<->9 swapped) is rolled back at 1% by the class-shift gate;
- a shift of the inputs (the treatment devices' camera inverts its images) is flagged by the input-drift gate;
- replaying the stored telemetry gives the stored decisions, label-free records included;
- the dashboard page draws the arms' class bars and drift charts from those values.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import shutil
import subprocess
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.server.conftest import ADMIN_TOKEN, SMALL_FLEET, LiveServer
from tests.server.test_rollout_e2e import assert_replay_reproduces

ROOT = Path(__file__).resolve().parents[2]
# A small fleet's gates: a few devices per arm (the defaults are tuned for a thousand), no robustness to
# removed devices (with 5 devices it would leave nothing to judge), guardrails a few device-hours can show.
GATES = replace(
    SMALL_FLEET,
    robust_devices=0,
    min_latency_samples=10,
    negligible_crash_rate_per_device_hour=1.0,
    max_install_failure_share=0.6,
    label_free_tuned_devices=20.0,
)
# The fleet's class mix: frequent 3s and 4s, rare 8s and 9s (real fleets are uneven); each device draws its
# own mix around it. A swap of two equally frequent classes would not show in a class histogram at all.
FLEET_MIX = np.array([0.06, 0.14, 0.09, 0.20, 0.20, 0.08, 0.07, 0.10, 0.03, 0.03])
DEVICES_PER_ARM = 20
PREDICTIONS = 100  # per device


class Clock:
    """The server's clock: real time plus an offset the test moves forward (past the settle delay)."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


@dataclass
class Releases:
    public: Path
    bundles: dict[str, Path]


def _bad_model(source: Path, out: Path) -> Path:
    """The demo's label-order bug (examples/fleet/fleet.py bad-model): a Gather over the class axis."""
    loaded = importlib.util.spec_from_file_location("fleet_demo", ROOT / "examples" / "fleet" / "fleet.py")
    assert loaded is not None and loaded.loader is not None
    fleet = importlib.util.module_from_spec(loaded)
    loaded.loader.exec_module(fleet)
    fleet.cmd_bad_model(argparse.Namespace(input=str(source), output=str(out), swap=["3:8", "4:9"]))
    return out


@pytest.fixture(scope="module")
def releases(
    tmp_path_factory: pytest.TempPathFactory, digits_onnx: Path, data_files: dict[str, Path]
) -> Releases:
    """digits 1.0.0 (good), 1.1.0 (classes swapped), 1.2.0 (good again), each with its reference profile."""
    from edgekit.bundle_build import BundleRequest, build_bundle
    from signing.keys import generate_keypair

    folder = tmp_path_factory.mktemp("label-free-releases")
    private, public = generate_keypair(folder / "keys", name="release")
    swapped = _bad_model(digits_onnx, folder / "digits-swapped.onnx")
    bundles = {}
    for counter, (version, model) in enumerate(
        (("1.0.0", digits_onnx), ("1.1.0", swapped), ("1.2.0", digits_onnx)), 1
    ):
        result = build_bundle(
            BundleRequest(
                model=model,
                output=folder / f"digits-{version}.ekb",
                name="digits",
                version=version,
                keys=[private],
                golden=data_files["calib"],
                release_counter=counter,
                created="2026-01-01T00:00:00Z",
                hardware_ids=("rpi4",),
            )
        )
        assert "health.json" in result.manifest.files
        bundles[version] = result.path
    return Releases(public, bundles)


def _server(start_server: Any, releases: Releases, tmp_path: Path) -> tuple[LiveServer, Clock]:
    from edgekit.server.tuf_repo import TufRepository

    data_dir, offline = tmp_path / "data", tmp_path / "offline"
    repo = TufRepository.init(data_dir, offline_keys_dir=offline, release_keys=[releases.public])
    for bundle in releases.bundles.values():
        repo.add_bundle(bundle, offline_keys_dir=offline)
    clock = Clock()
    return start_server(data_dir=data_dir, clock=clock, gates=GATES), clock


def _start(server: LiveServer, target: str, baseline: str, **extra: Any) -> Any:
    from edgekit.rollout.plan import RolloutPlan

    status, body = server.http.request(
        "POST",
        "/v1/admin/rollouts",
        {
            "model": "digits",
            "target_version": target,
            "baseline_version": baseline,
            "stages": [1, 5, 25, 100],
            **extra,
        },
        token=ADMIN_TOKEN,
    )
    assert status == 200, body
    return RolloutPlan.from_dict(body["plan"])


def _arm_ids(plan: Any, side: str, count: int) -> list[str]:
    from edgekit.rollout.plan import arm

    return [d for d in (f"cam-{i:06d}" for i in range(1_000_000)) if arm(plan, d) == side][:count]


def _run_device(
    server: LiveServer,
    releases: Releases,
    folder: Path,
    device_id: str,
    version: str,
    images: dict[int, np.ndarray],
    seed: int,
    *,
    invert: bool = False,
) -> None:
    """A real device: install the release its arm runs, classify its own mix of digits, upload (no labels)."""
    from device_runtime import Runtime, RuntimeConfig
    from device_runtime.uploader import Uploader, UploaderConfig
    from edgekit.server import ingest

    token = ingest.register_device(server.app.state.database, device_id, "rpi4", time.time())
    runtime = Runtime(
        RuntimeConfig(
            store_dir=folder / device_id,
            trusted_keys=[releases.public],
            device_id=device_id,
            hardware_id="rpi4",
            trial_inferences=0,
            trial_seconds=0,
            engine_threads=1,
        )
    )
    try:
        runtime.install(releases.bundles[version])
        name = runtime._loaded.engine.inputs[0].name
        rng = np.random.default_rng(seed)
        mix = rng.dirichlet(FLEET_MIX * 200)
        for label in rng.choice(10, size=PREDICTIONS, p=mix):
            pool = images[int(label)]
            x = pool[rng.integers(len(pool))]
            runtime.predict({name: (1.0 - x if invert else x)[None]})
        runtime.flush_health()
        runtime.telemetry.flush()
        uploader = Uploader(
            runtime.telemetry,
            UploaderConfig(endpoint=f"{server.http.base}/v1/telemetry", device_id=device_id, token=token),
        )
        while runtime.telemetry.pending(1):
            result = uploader.upload_once()
            assert not result.failed, result
    finally:
        runtime.close()


def _fleet(
    server: LiveServer, releases: Releases, plan: Any, tmp_path: Path, digits: Any, *, invert: bool = False
) -> None:
    images = {c: digits.x[1400:][digits.y[1400:] == c] for c in range(10)}
    for side, version in (("treatment", plan.target.version), ("control", plan.baseline.version)):
        for i, device_id in enumerate(_arm_ids(plan, side, DEVICES_PER_ARM)):
            _run_device(
                server,
                releases,
                tmp_path / "stores",
                device_id,
                version,
                images,
                seed=i + (100 if side == "control" else 0),
                invert=invert and side == "treatment",
            )


def _evaluate(server: LiveServer) -> dict[str, Any]:
    status, body = server.http.request("POST", "/v1/admin/evaluate", token=ADMIN_TOKEN)
    assert status == 200 and len(body) == 1, body
    return dict(body[0])


def _why(result: dict[str, Any]) -> str:
    return "\n".join(f"{r['metric']}: {r['outcome']}: {r['detail']}" for r in result["decision"]["records"])


def _record(result: dict[str, Any], metric: str) -> dict[str, Any]:
    return next(r for r in result["decision"]["records"] if r["metric"] == metric)


@pytest.mark.slow
def test_a_label_swapped_release_is_rolled_back_at_one_percent_with_no_feedback(
    releases: Releases, digits: Any, start_server: Any, tmp_path: Path
) -> None:
    server, clock = _server(start_server, releases, tmp_path)
    plan = _start(server, "1.1.0", "1.0.0")
    _fleet(server, releases, plan, tmp_path, digits)
    clock.offset = 3 * 3600.0  # hours later, past the settle delay: everything sent counts
    result = _evaluate(server)
    assert result["decision"]["outcome"] == "rollback" and result["state"] == "rolled_back", _why(result)
    assert result["stage_percent"] == 1
    shift = _record(result, "class_shift")
    assert shift["outcome"] == "rollback", shift
    assert _record(result, "accuracy")["outcome"] == "pass"  # not judged: no feedback at all
    assert "not judged" in _record(result, "accuracy")["detail"]
    database = server.app.state.database
    assert database.execute("SELECT COUNT(*) FROM events WHERE kind = 'feedback'")[0][0] == 0
    assert database.execute("SELECT COUNT(*) FROM events WHERE kind = 'health'")[0][0] == 2 * DEVICES_PER_ARM
    assert_replay_reproduces(server, plan.rollout_id, expected=1)


@pytest.mark.slow
def test_inverted_images_on_the_treatment_devices_are_flagged_by_the_input_drift_gate(
    releases: Releases, digits: Any, start_server: Any, tmp_path: Path
) -> None:
    server, clock = _server(start_server, releases, tmp_path)
    plan = _start(server, "1.2.0", "1.0.0")  # the same model: only the inputs differ
    _fleet(server, releases, plan, tmp_path, digits, invert=True)
    clock.offset = 3 * 3600.0
    result = _evaluate(server)
    drift = _record(result, "input_drift")
    assert drift["outcome"] == "rollback", drift
    assert result["decision"]["outcome"] == "rollback", result
    assert_replay_reproduces(server, plan.rollout_id, expected=1)
    status, body = server.http.request("GET", f"/v1/admin/rollouts/{plan.rollout_id}", token=ADMIN_TOKEN)
    assert status == 200
    psi = body["health"]["treatment"]["inputs"]
    assert max(max(v["psi"]) for v in psi.values()) > 1.0, psi
    _dashboard_draws_the_label_free_charts(server, tmp_path)


def _dashboard_draws_the_label_free_charts(server: LiveServer, tmp_path: Path) -> None:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed; .ci/run installs Debian's chromium")
        return
    from tests.server.test_dashboard import FLAGS

    url = f"{server.http.base}/dashboard#token={ADMIN_TOKEN}"
    dom = subprocess.run(
        [chromium, *FLAGS, f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom", url],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert dom.returncode == 0, dom.stderr[-2000:]
    page = dom.stdout
    assert 'aria-label="top-1: predicted class shares"' in page, page[-3000:]
    assert "drift (PSI) per channel" in page and "roll back above" in page
    assert "bytes saved by delta updates" in page
    assert re.search(
        r'<td class="rollback">rollback</td><td>(class_shift|confidence_shift|input_drift)</td>', page
    ), "the deciding record"
    shot = Path(os.environ.get("EDGEKIT_LABEL_FREE_PNG", tmp_path / "label-free.png"))
    picture = subprocess.run(
        [
            chromium,
            *FLAGS,
            f"--user-data-dir={tmp_path / 'profile-shot'}",
            f"--screenshot={shot}",
            "--window-size=1280,2200",
            url,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert picture.returncode == 0 and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", picture.stderr[-2000:]
