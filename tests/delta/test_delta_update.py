"""Delta updates end to end: `add_bundle` publishes deltas, a real device rebuilds the bundle from its slot.

Everything on the wire is real: `TufRepository` signs the targets (bundles and deltas), `RepoServer`
serves them on 127.0.0.1, the device's `Updater` (ngclient + `BoundedFetcher`) downloads them and a real
`Runtime` verifies and installs what the delta rebuilt. Attacks change what the server serves or publish a
delta signed by the targets key that builds something else: a delta never adds trust.
"""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from device_runtime.delta import delta_target_path
from device_runtime.runtime import Runtime
from device_runtime.telemetry_contract import DownloadPayload, parse_payload
from device_runtime.updater import Updater, UpdaterConfig
from edgekit.delta import canonical_archive, encode_delta
from edgekit.server.tuf_repo import TufRepository
from tests.device_runtime.runtime_fixtures import Releases, build_releases, config
from tests.host_tools import needs_host
from tests.server.tuf_fixtures import RepoServer, make_plan, served_path

MODEL = "tiny"


@pytest.fixture(scope="module")
def releases(tmp_path_factory: pytest.TempPathFactory) -> Releases:
    return build_releases(tmp_path_factory.mktemp("releases"))


class RecordingRuntime(Runtime):
    """The real runtime, keeping a copy of the bytes each install was given (what the device verified)."""

    installed: list[bytes]

    def install(self, source: Any) -> Any:
        self.installed = [*getattr(self, "installed", []), Path(source).read_bytes()]
        return super().install(source)


@dataclass
class World:
    repo: TufRepository
    server: RepoServer
    offline: Path
    folder: Path
    releases: Releases

    def updater(self, **overrides: Any) -> Updater:
        options: dict[str, Any] = {
            "metadata_url": self.server.metadata_url,
            "targets_url": self.server.targets_url,
            "metadata_dir": self.folder / "device" / "tuf",
            "download_dir": self.folder / "device" / "downloads",
            "model": MODEL,
            "channel": "stable",
            "device_id": "device-1",
            "bootstrap_root": (self.repo.metadata_dir / "1.root.json").read_bytes(),
            "timeout_s": 10.0,
            "min_speed_bytes_per_s": 1,
        }
        options.update(overrides)
        return Updater(UpdaterConfig(**options))

    def publish(self, version: str, deltas: int = 2) -> Any:
        return self.repo.add_bundle(
            self.releases.bundles[version], offline_keys_dir=self.offline, deltas=deltas
        )

    def want(self, version: str) -> None:
        plan = make_plan("complete", 3, target=version, baseline=None, bundle_ids=self.releases.bundle_ids)
        self.repo.set_plan(MODEL, "stable", plan)


@pytest.fixture
def world(tmp_path: Path, releases: Releases) -> Iterator[World]:
    offline = tmp_path / "offline"
    repo = TufRepository.init(tmp_path / "data", offline_keys_dir=offline, release_keys=[releases.public_key])
    server = RepoServer(repo.data_dir / "repo")
    try:
        yield World(repo, server, offline, tmp_path, releases)
    finally:
        server.close()


@pytest.fixture
def device(tmp_path: Path, releases: Releases) -> Iterator[RecordingRuntime]:
    """A device running 1.0.0 (installed from the signed bundle)."""
    runtime = RecordingRuntime(config(tmp_path / "store", releases))
    runtime.install(releases.bundles["1.0.0"])
    runtime.installed = []
    yield runtime
    runtime.close()


def _downloads(runtime: Runtime) -> list[DownloadPayload]:
    events = runtime.telemetry.pending(1000)
    return [parse_payload("download", e.payload) for e in events if e.kind == "download"]  # type: ignore[misc]


def _publish_delta(world: World, path: str, data: bytes, about: dict[str, Any]) -> None:
    """Play the holder of the offline targets key publishing a delta of its choice (signed, pinned)."""
    repo = world.repo
    with repo._lock():
        targets = repo._load("targets")
        temp = repo.targets_dir / ".incoming-test.ekd"
        temp.parent.mkdir(parents=True, exist_ok=True)
        temp.write_bytes(data)
        info = repo._store_target(path, temp)
        info.unrecognized_fields["custom"] = {"delta": about}
        targets.signed.targets[path] = info
        repo._bump(targets, "targets", repo._clock())
        repo._write(targets, "targets", [repo._offline_targets_signer(world.offline)])
        repo._commit(repo._clock())


# ---- publishing --------------------------------------------------------------------------------------------
def test_publish_adds_deltas_from_the_last_k_releases_as_pinned_targets(
    world: World, releases: Releases
) -> None:
    assert world.publish("1.0.0").deltas == ()  # nothing earlier
    first = world.publish("1.1.0")
    assert [d.custom["delta"]["base_version"] for d in first.deltas] == ["1.0.0"]
    newest = world.publish("1.2.0")
    assert [d.custom["delta"]["base_version"] for d in newest.deltas] == ["1.1.0", "1.0.0"]  # default K = 2
    targets = {t["path"]: t for t in world.repo.status()["targets"]}
    for delta in newest.deltas:
        entry = targets[delta.path]
        stored = world.repo.targets_dir / Path(delta.path).parent / f"{delta.sha256}.{Path(delta.path).name}"
        assert entry["length"] == len(stored.read_bytes()) == delta.length
        assert entry["sha256"] == hashlib.sha256(stored.read_bytes()).hexdigest()
        assert delta.length < newest.length
        about = entry["custom"]["delta"]
        assert (about["target"], about["target_sha256"], about["target_length"]) == (
            newest.path,
            newest.sha256,
            newest.length,
        )
        base = releases.bundle_ids[about["base_version"]]
        assert delta.path == delta_target_path(MODEL, "1.2.0", base) and about["base"] == base


def test_publish_with_k_one_or_zero_limits_the_deltas(world: World) -> None:
    world.publish("1.0.0")
    world.publish("1.1.0", deltas=0)
    assert world.publish("1.2.0", deltas=1).deltas[0].custom["delta"]["base_version"] == "1.1.0"
    assert not [t for t in world.repo.status()["targets"] if "/1.1.0/" in t["path"]]


def test_a_delta_the_device_decoder_would_not_rebuild_exactly_is_never_signed(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Fault injection: the encoder returns a valid-looking delta of another bundle (as an encoder bug would).
    # Publish checks each delta with the device's own decoder and skips it; the release is still published.
    import edgekit.server._tuf_deltas as publishing

    world.publish("1.0.0")
    wrong, stats = encode_delta(
        canonical_archive(world.releases.bundles["1.0.0"]), world.releases.bundles["1.2.0"].read_bytes()
    )
    monkeypatch.setattr(publishing, "encode_delta", lambda base, target: (wrong, stats))
    published = world.publish("1.1.0")
    assert published.deltas == ()
    assert any(t["path"] == published.path for t in world.repo.status()["targets"])
    assert not [t for t in world.repo.status()["targets"] if t["path"].startswith("deltas/")]


# ---- the device --------------------------------------------------------------------------------------------
def test_device_updates_by_delta_and_installs_exactly_the_full_bundle_bytes(
    world: World, device: RecordingRuntime
) -> None:
    world.publish("1.0.0")
    published = world.publish("1.1.0")
    world.want("1.1.0")
    outcome = world.updater().update(device)
    assert (outcome.status, outcome.reason) == ("installed", "installed"), outcome
    assert device.status()["active"]["version"] == "1.1.0"
    full = world.releases.bundles["1.1.0"].read_bytes()
    assert device.installed == [full]  # byte for byte what a full download gives
    assert world.server.count(served_path(world.repo, published.path)) == 0  # the full bundle never moved
    transfer = outcome.transfer
    assert transfer is not None and transfer.method == "delta" and transfer.fallback is None
    assert transfer.bytes == published.deltas[0].length < transfer.full_bytes == len(full)
    (event,) = _downloads(device)
    assert (event.method, event.bytes, event.full_bytes, event.fallback) == (
        "delta",
        transfer.bytes,
        len(full),
        None,
    )
    assert event.base_bundle_id == world.releases.bundle_ids["1.0.0"]
    assert not list((world.folder / "device" / "downloads").iterdir())  # delta and rebuild cleaned up


def _corrupt_served_delta(world: World) -> None:
    (delta,) = [t for t in world.repo.status()["targets"] if t["path"].startswith("deltas/")]
    stored = (
        world.repo.targets_dir / Path(delta["path"]).parent / f"{delta['sha256']}.{Path(delta['path']).name}"
    )
    data = bytearray(stored.read_bytes())
    data[len(data) // 2] ^= 0xFF
    stored.write_bytes(bytes(data))


def _swap_delta_for_one_building_another_bundle(world: World) -> None:
    """A delta signed into the targets metadata (length and hash pinned) that rebuilds 1.2.0, a validly
    signed bundle, while it claims to rebuild 1.1.0: TUF accepts the file, the device must not."""
    from edgekit.delta import canonical_archive

    base = canonical_archive(world.releases.bundles["1.0.0"])
    other, _ = encode_delta(base, world.releases.bundles["1.2.0"].read_bytes())
    (delta,) = [t for t in world.repo.status()["targets"] if t["path"].startswith("deltas/")]
    _publish_delta(world, delta["path"], other, delta["custom"]["delta"])


def _grow_a_slot_file(world: World, device: Runtime) -> None:
    slot = device.status()["active"]["slot"]
    with open(device._root / "slots" / slot / "labels.txt", "ab") as handle:
        handle.write(b"x")


def _flip_a_slot_byte(world: World, device: Runtime) -> None:
    path = device._root / "slots" / device.status()["active"]["slot"] / "labels.txt"
    data = bytearray(path.read_bytes())
    data[0] ^= 0x20
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    ("break_it", "fallback"),
    [
        pytest.param(lambda w, d: _corrupt_served_delta(w), "delta-download", id="corrupted-on-the-server"),
        pytest.param(
            lambda w, d: _swap_delta_for_one_building_another_bundle(w),
            "delta-hash",
            id="builds-another-bundle",
        ),
        pytest.param(_grow_a_slot_file, "slot-changed", id="slot-file-changed-size"),
        pytest.param(_flip_a_slot_byte, "delta-hash", id="slot-file-changed-content"),
        pytest.param(lambda w, d: None, "no-delta", id="no-delta-published"),
    ],
)
def test_any_delta_failure_falls_back_to_the_full_bundle_and_is_reported(
    world: World, device: RecordingRuntime, break_it: Any, fallback: str
) -> None:
    world.publish("1.0.0")
    published = world.publish("1.1.0", deltas=0 if fallback == "no-delta" else 2)
    world.want("1.1.0")
    break_it(world, device)
    outcome = world.updater().update(device)
    assert (outcome.status, outcome.reason) == ("installed", "installed"), outcome
    full = world.releases.bundles["1.1.0"].read_bytes()
    assert device.installed == [full]  # never what the delta built: 1.2.0 is not installed
    assert device.status()["active"]["version"] == "1.1.0"
    assert world.server.count(served_path(world.repo, published.path)) == 1
    transfer = outcome.transfer
    assert transfer is not None and (transfer.method, transfer.fallback) == ("full", fallback), transfer
    (event,) = _downloads(device)
    assert (event.method, event.fallback, event.full_bytes) == ("full", fallback, len(full))
    assert event.bytes == transfer.bytes >= len(full)
    assert event.base_bundle_id == world.releases.bundle_ids["1.0.0"]


def test_a_device_with_deltas_off_or_no_model_downloads_the_full_bundle_without_a_fallback(
    world: World, device: RecordingRuntime, tmp_path: Path, releases: Releases
) -> None:
    world.publish("1.0.0")
    world.publish("1.1.0")
    world.want("1.1.0")
    fresh = Runtime(config(tmp_path / "fresh", releases))
    try:
        outcome = world.updater(metadata_dir=tmp_path / "fresh-tuf").update(fresh)
        assert outcome.transfer is not None and (outcome.transfer.method, outcome.transfer.fallback) == (
            "full",
            None,
        )
        (event,) = _downloads(fresh)
        assert event.base_bundle_id is None and event.fallback is None
    finally:
        fresh.close()
    outcome = world.updater(use_deltas=False).update(device)
    assert outcome.transfer is not None and outcome.transfer.method == "full"
    assert device.installed == [releases.bundles["1.1.0"].read_bytes()]


def test_a_stale_download_folder_does_not_confuse_the_rebuild(world: World, device: RecordingRuntime) -> None:
    world.publish("1.0.0")
    published = world.publish("1.1.0")
    world.want("1.1.0")
    downloads = world.folder / "device" / "downloads"
    downloads.mkdir(parents=True, exist_ok=True)
    (downloads / f".{published.sha256}.ekb.delta.part").write_bytes(b"left over by a power cut")
    outcome = world.updater().update(device)
    assert outcome.transfer is not None and outcome.transfer.method == "delta"
    assert device.installed == [world.releases.bundles["1.1.0"].read_bytes()]
    shutil.rmtree(downloads, ignore_errors=True)


@needs_host("click", why="the edgekit command line")
def test_edgekit_publish_reports_its_deltas_and_takes_k(releases: Releases, tmp_path: Path) -> None:
    import json

    from click.testing import CliRunner

    from edgekit.commands.repo import publish

    data, offline = tmp_path / "data", tmp_path / "offline"
    TufRepository.init(data, offline_keys_dir=offline, release_keys=[releases.public_key])
    runner = CliRunner()

    def run(version: str, *extra: str) -> Any:
        args = [str(releases.bundles[version]), "--data", str(data), "--offline-keys", str(offline), *extra]
        result = runner.invoke(publish, args)
        assert result.exit_code == 0, result.output
        return result.output

    run("1.0.0")
    assert "delta from 1.0.0: deltas/tiny/1.1.0/" in run("1.1.0")
    document = json.loads(run("1.2.0", "--deltas", "1", "--json"))
    assert [d["custom"]["delta"]["base_version"] for d in document["deltas"]] == ["1.1.0"]
    assert all(d["length"] < document["length"] for d in document["deltas"])
