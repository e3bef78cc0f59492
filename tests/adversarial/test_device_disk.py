"""Finding 10: a full disk never stops a verified model from serving.

A real full filesystem: the store lives on a 1 MiB tmpfs mounted for the test and filled to the last byte
(`small_tmpfs`, `fill`); skipped, with the reason, where mounting is not permitted. Before: `Runtime()`
raised ENOSPC in recovery, every `predict` during a trial raised (the in-flight marker), `install` raised a
raw `OSError` that escaped `Updater.update()`. Now: recovery keeps its state in memory and persists it when
space returns, trial inferences run without the marker (counted), `install` is an `InstallError` (reason
"storage") recorded in telemetry (or counted in memory when telemetry cannot write either), and the updater
returns a refused outcome.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from device_runtime.errors import InstallError
from device_runtime.runtime import Runtime
from device_runtime.state import load_state
from tests.adversarial._device import device_fixtures, fill, install_refusals, small_tmpfs  # noqa: F401
from tests.device_runtime.runtime_fixtures import Releases, config, expected_logits, sample

releases, committed_template = device_fixtures()


@pytest.fixture
def store(small_tmpfs: Path, committed_template: Path) -> Path:  # noqa: F811
    """The committed 1.0.0 store, copied onto the small tmpfs (not yet full)."""
    target = small_tmpfs / "store"
    shutil.copytree(committed_template, target, symlinks=True)
    return target


def serves(rt: Runtime, version: str, times: int = 3) -> None:
    for seed in range(times):
        x = sample(2, seed=seed)
        result = rt.predict(x)
        assert result.version == version
        np.testing.assert_allclose(
            result.outputs["logits"], expected_logits(version, x), rtol=1e-5, atol=1e-5
        )


def storage(rt: Runtime) -> dict[str, Any]:
    return dict(rt.status()["storage"])


@pytest.mark.parametrize("state_json", ["intact", "lost"])
def test_the_runtime_starts_and_serves_on_a_full_disk(
    store: Path, releases: Releases, state_json: str
) -> None:
    if state_json == "lost":
        (store / "state.json").unlink()
    filler = fill(store.parent)
    rt = Runtime(config(store, releases))  # before: OSError ENOSPC from recovery's state write
    try:
        serves(rt, "1.0.0")
        assert rt.status()["active"]["version"] == "1.0.0"
        assert storage(rt)["unsaved"] is True and storage(rt)["write_failures"] >= 1
        assert not list(store.glob("telemetry.db.corrupt*"))  # a full disk is not a corrupt database
        filler.unlink()  # space returns: the state is persisted at close (or the next retry)
    finally:
        rt.close()
    on_disk = load_state(store / "state.json")
    assert on_disk is not None and on_disk.active is not None and on_disk.active.version == "1.0.0"


def test_the_state_is_persisted_by_a_later_predict_once_space_returns(
    store: Path, releases: Releases, monkeypatch: pytest.MonkeyPatch
) -> None:
    import device_runtime.runtime as runtime_module

    monkeypatch.setattr(runtime_module, "PERSIST_RETRY_SECONDS", 0.0)  # retry at the next predict
    (store / "state.json").unlink()
    filler = fill(store.parent)
    rt = Runtime(config(store, releases))
    try:
        serves(rt, "1.0.0")
        assert not (store / "state.json").exists() and storage(rt)["unsaved"] is True
        filler.unlink()
        serves(rt, "1.0.0", times=1)
        assert storage(rt)["unsaved"] is False
        on_disk = load_state(store / "state.json")
        assert on_disk is not None and on_disk.active is not None and on_disk.active.version == "1.0.0"
    finally:
        rt.close()


def test_trial_inferences_serve_without_the_in_flight_marker_on_a_full_disk(
    store: Path, releases: Releases
) -> None:
    rt = Runtime(config(store, releases, trial_inferences=3))
    try:
        rt.install(releases.bundles["1.1.0"])
        assert rt.status()["trial"] is not None
        filler = fill(store.parent)
        serves(rt, "1.1.0", times=5)  # before: every predict raised ENOSPC writing the marker
        counts = storage(rt)
        assert counts["marker_failures"] == 3  # the three trial inferences, then the trial committed
        assert rt.status()["trial"] is None and counts["unsaved"] is True
        assert not (store / "inflight").exists()
        filler.unlink()
    finally:
        rt.close()
    on_disk = load_state(store / "state.json")
    assert on_disk is not None and on_disk.active is not None
    assert on_disk.active.version == "1.1.0" and on_disk.trial is None  # the commit reached the disk
    assert on_disk.floors["tiny"] == 2


def test_install_on_a_full_disk_is_a_typed_storage_refusal_and_the_model_keeps_serving(
    store: Path, releases: Releases
) -> None:
    rt = Runtime(config(store, releases))
    try:
        filler = fill(store.parent)
        failures_before = rt.telemetry.failures
        with pytest.raises(InstallError) as refused:  # before: a raw OSError
            rt.install(releases.bundles["1.1.0"])
        assert refused.value.reason == "storage"
        recorded = [e["reason"] for e in install_refusals(rt)]
        assert recorded == ["storage"] or rt.telemetry.failures > failures_before  # recorded, or counted
        assert not list((store / "slots").glob(".incoming-*"))
        serves(rt, "1.0.0")
        filler.unlink()
        assert rt.install(releases.bundles["1.1.0"]).version == "1.1.0"  # space back: installs
        serves(rt, "1.1.0")
    finally:
        rt.close()


@pytest.mark.parametrize("full", ["store", "downloads"])
def test_the_updater_reports_a_full_disk_as_a_refused_outcome(
    tmp_path: Path, store: Path, releases: Releases, full: str
) -> None:
    """Real TUF repository on loopback; the store (or the download folder) is on the full disk."""
    from device_runtime.updater import Updater, UpdaterConfig
    from edgekit.server.tuf_repo import TufRepository
    from tests.server.tuf_fixtures import RepoServer, make_plan

    offline = tmp_path / "offline"
    repo = TufRepository.init(tmp_path / "data", offline_keys_dir=offline, release_keys=[releases.public_key])
    for version in ("1.0.0", "1.1.0"):
        repo.add_bundle(releases.bundles[version], offline_keys_dir=offline)
    repo.set_plan("tiny", "stable", make_plan("complete", stage_index=3, bundle_ids=releases.bundle_ids))
    server = RepoServer(repo.data_dir / "repo")
    downloads = store.parent / "downloads" if full == "downloads" else tmp_path / "device" / "downloads"
    downloads.mkdir(parents=True)
    rt = Runtime(config(store, releases))
    updater = Updater(
        UpdaterConfig(
            metadata_url=server.metadata_url,
            targets_url=server.targets_url,
            metadata_dir=tmp_path / "device" / "tuf",
            download_dir=downloads,
            model="tiny",
            channel="stable",
            device_id="device-1",
            bootstrap_root=(repo.metadata_dir / "1.root.json").read_bytes(),
            timeout_s=10.0,
            min_speed_bytes_per_s=1,
        )
    )
    try:
        filler = fill(store.parent)
        outcome = updater.update(rt)  # before (store full): OSError escaped update()
        assert outcome.status == "refused"
        assert outcome.reason == ("install-storage" if full == "store" else "storage"), outcome
        serves(rt, "1.0.0")
        filler.unlink()
        assert updater.update(rt).status == "installed"
        serves(rt, "1.1.0")
    finally:
        updater.close()
        rt.close()
        server.close()
