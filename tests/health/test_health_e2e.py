"""End to end: a real device (real Runtime, real signed bundle with a reference profile, real onnxruntime)
predicting on inverted digits shows an input drift that the server's merged view reports against the
reference, through the real uploader and the real server on loopback; no input value leaves the device."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from tests.server.conftest import ADMIN_TOKEN, LiveServer


class _Clock:
    """The server's clock: real time plus an offset the test moves forward (past the settle delay)."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


@pytest.fixture(scope="module")
def digits_release(
    tmp_path_factory: pytest.TempPathFactory, digits_onnx: Path, data_files: dict[str, Path]
) -> Any:
    """Two signed digits releases whose bundles carry a reference profile of the calibration data."""
    from edgekit.bundle_build import BundleRequest, build_bundle
    from signing.keys import generate_keypair

    folder = tmp_path_factory.mktemp("health-release")
    private, public = generate_keypair(folder / "keys", name="release")
    bundles = {}
    for counter, version in enumerate(("1.0.0", "1.1.0"), 1):
        result = build_bundle(
            BundleRequest(
                model=digits_onnx,
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
        assert "health.json" in result.manifest.files and result.health["samples"] == 64
        assert result.manifest.files["health.json"].role == "metadata"  # older devices verify and ignore it
        bundles[version] = result.path
    return folder, public, bundles


def _device(store: Path, public: Path, device_id: str) -> Any:
    from device_runtime import Runtime, RuntimeConfig

    return Runtime(
        RuntimeConfig(
            store_dir=store,
            trusted_keys=[public],
            device_id=device_id,
            hardware_id="rpi4",
            trial_inferences=0,
            trial_seconds=0,
            engine_threads=1,
            health_every=10_000,
        )
    )


def _upload(runtime: Any, server: LiveServer, device_id: str, token: str) -> list[dict[str, Any]]:
    """Send every queued event through the real uploader; return what was sent."""
    from device_runtime.uploader import Uploader, UploaderConfig

    runtime.flush_health()
    runtime.telemetry.flush()
    sent = [e.payload | {"kind": e.kind} for e in runtime.telemetry.pending(10_000)]
    uploader = Uploader(
        runtime.telemetry,
        UploaderConfig(endpoint=f"{server.http.base}/v1/telemetry", device_id=device_id, token=token),
    )
    while runtime.telemetry.pending(1):
        result = uploader.upload_once()
        assert not result.failed, result
    return sent


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    from tests.adversarial._telemetry import database_url

    return database_url(request, tmp_path)


@pytest.mark.slow
def test_inverted_images_show_as_input_drift_in_the_servers_merged_view(
    digits_release: Any, digits: Any, start_server: Any, tmp_path: Path, url: str
) -> None:
    from edgekit.rollout.plan import RolloutPlan, arm
    from edgekit.server import ingest
    from edgekit.server.model_health import arm_health, reference_profile
    from edgekit.server.tuf_repo import TufRepository

    _, public, bundles = digits_release
    data_dir, offline = tmp_path / "data", tmp_path / "offline"
    repo = TufRepository.init(data_dir, offline_keys_dir=offline, release_keys=[public])
    for version in ("1.0.0", "1.1.0"):
        repo.add_bundle(bundles[version], offline_keys_dir=offline)
    clock = _Clock()
    server = start_server(db_url=url, data_dir=data_dir, clock=clock)
    status, body = server.http.request(
        "POST",
        "/v1/admin/rollouts",
        {"model": "digits", "target_version": "1.1.0", "baseline_version": "1.0.0", "stages": [50, 100]},
        token=ADMIN_TOKEN,
    )
    assert status == 200, body
    plan = RolloutPlan.from_dict(body["plan"])
    ids = {
        side: next(f"cam-{i}" for i in range(1000) if arm(plan, f"cam-{i}") == side)
        for side in ("treatment", "control")
    }
    images = digits.x[1400:1600]
    sent: list[dict[str, Any]] = []
    for side, version, inputs in (("treatment", "1.1.0", 1.0 - images), ("control", "1.0.0", images)):
        device_id = ids[side]
        token = ingest.register_device(server.app.state.database, device_id, "rpi4", time.time())
        runtime = _device(tmp_path / f"store-{side}", public, device_id)
        try:
            runtime.install(bundles[version])
            name = runtime._loaded.engine.inputs[0].name
            for x in inputs:
                runtime.predict({name: x[None]})
            sent += _upload(runtime, server, device_id, token)
        finally:
            runtime.close()
    clock.offset = 600.0  # past the settle delay: the evaluation counts what was received
    arms = arm_health(server.app.state.database, plan, clock())
    reference = reference_profile(repo, plan.target.bundle_id)
    assert reference is not None and set(reference.inputs) == {name}
    treatment, control = (arms[side].psi(reference)[name][0] for side in ("treatment", "control"))
    assert treatment > 1.0 > 0.1 > control, (treatment, control)  # 0.25 is the usual "significant shift"
    assert arms["treatment"].devices == arms["control"].devices == 1
    assert arms["treatment"].inferences == arms["control"].inferences == len(images)
    treated = arms["treatment"].class_shares("top-1")
    assert treated is not None and abs(treated.sum() - 1.0) < 1e-9

    # the same view in the rollout status JSON
    status, body = server.http.request("GET", f"/v1/admin/rollouts/{plan.rollout_id}", token=ADMIN_TOKEN)
    assert status == 200, body
    view = body["health"]
    assert view["treatment"]["inputs"][name]["psi"][0] == pytest.approx(treatment)
    assert view["control"]["inputs"][name]["psi"][0] == pytest.approx(control)
    assert view["treatment"]["outputs"]["top-1"]["class_shares"] is not None
    status, page = server.http.request("GET", "/v1/dashboard", token=ADMIN_TOKEN)  # the dashboard's table
    assert status == 200 and page["rollouts"][0]["health"]["treatment"]["inputs"][name]["psi"][0] > 1.0

    # no input value ever left the device: every event holds at most a handful of non-integer numbers
    # (moments of one channel, a window, a score sum), never the 64 pixels of an input
    health = [e for e in sent if e["kind"] == "health"]
    assert len(health) == 2
    for payload in sent:
        floats = [v for v in _numbers(payload) if isinstance(v, float)]
        assert len(floats) <= 8, (payload["kind"], len(floats))
    stored = server.app.state.database.execute("SELECT payload FROM events WHERE kind = 'health'")
    assert len(stored) == 2 and all(json.loads(p)["inputs"][0]["name"] == name for (p,) in stored)


def _numbers(value: Any) -> list[float | int]:
    if isinstance(value, bool):
        return []
    if isinstance(value, int | float):
        return [value]
    if isinstance(value, dict):
        return [n for v in value.values() for n in _numbers(v)]
    if isinstance(value, list | tuple):
        return [n for v in value for n in _numbers(v)]
    return []
