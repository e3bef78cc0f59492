"""`TufRepository` and `edgekit repo`: real keys, real bundles, a real ngclient over loopback HTTP.

The loopback server and the repository helpers (`RepoServer`, `make_plan`, `plant_plan`) live in
`tests/server/tuf_fixtures.py`, shared with the device-side tests and the conformance client's.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from tuf.api import exceptions as tuf_exceptions
from tuf.api.metadata import Metadata, Root, Targets
from tuf.ngclient import Updater as NgUpdater

from edgekit.server.tuf_repo import (
    BundleRefusedError,
    ExpiryPolicy,
    RepositoryError,
    TufRepository,
    generate_key,
    load_signer,
)
from tests.device_runtime.runtime_fixtures import Releases, build_releases
from tests.server.tuf_fixtures import RepoServer, _latest, make_plan


# ---- fixtures ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def releases(tmp_path_factory: pytest.TempPathFactory) -> Releases:
    return build_releases(tmp_path_factory.mktemp("releases"))


@pytest.fixture
def repo(tmp_path: Path, releases: Releases) -> TufRepository:
    return TufRepository.init(
        tmp_path / "data", offline_keys_dir=tmp_path / "offline", release_keys=[releases.public_key]
    )


@pytest.fixture
def server(repo: TufRepository) -> Iterator[RepoServer]:
    running = RepoServer(repo.data_dir / "repo")
    yield running
    running.close()


def _client(tmp_path: Path, server: RepoServer, bootstrap: bytes, name: str = "client") -> NgUpdater:
    folder = tmp_path / name
    folder.mkdir(exist_ok=True)
    return NgUpdater(
        str(folder / "metadata"),
        server.metadata_url,
        str(folder / "targets"),
        server.targets_url,
        bootstrap=bootstrap,
    )


def _bootstrap(repo: TufRepository) -> bytes:
    return (repo.metadata_dir / "1.root.json").read_bytes()


# ---- init --------------------------------------------------------------------------------------------------
def test_init_creates_every_role_with_expiries_and_consistent_snapshot_names(
    repo: TufRepository, tmp_path: Path
) -> None:
    names = sorted(p.name for p in repo.metadata_dir.iterdir())
    assert names == [
        "1.rollouts.json",
        "1.root.json",
        "1.snapshot.json",
        "1.targets.json",
        "root.json",
        "timestamp.json",
    ]
    root = Metadata.from_file(str(repo.metadata_dir / "root.json")).signed
    assert isinstance(root, Root) and root.consistent_snapshot is True
    now = time.time()
    expected_days = {"root": 365, "targets": 90, "rollouts": 7, "snapshot": 7, "timestamp": 1}
    status = repo.status()
    for role, days in expected_days.items():
        expires = status["roles"][role]["expires"]
        left = time.mktime(time.strptime(expires, "%Y-%m-%dT%H:%M:%SZ")) - time.timezone - now
        assert abs(left - days * 86_400) < 120, (role, expires)
    targets = Metadata.from_file(str(repo.metadata_dir / "1.targets.json")).signed
    assert isinstance(targets, Targets) and targets.delegations is not None
    rollouts = targets.delegations.roles["rollouts"]  # type: ignore[index]
    assert rollouts.paths == ["rollouts/*/*"] and rollouts.is_delegated_path("rollouts/tiny/stable.json")
    assert not rollouts.is_delegated_path("bundles/tiny/tiny-1.0.0.ekb")
    # online keys only in data/keys (0600, folder 0700); root and targets keys offline
    assert sorted(p.name for p in repo.keys_dir.iterdir()) == [
        "rollouts.key",
        "snapshot.key",
        "timestamp.key",
    ]
    assert stat.S_IMODE(repo.keys_dir.stat().st_mode) == 0o700
    for key in [*repo.keys_dir.iterdir(), *(tmp_path / "offline").iterdir()]:
        assert stat.S_IMODE(key.stat().st_mode) == 0o600, key
    assert sorted(p.name for p in (tmp_path / "offline").iterdir()) == ["root-1.key", "targets.key"]
    assert not list(repo.data_dir.rglob("root-*.key")) and not list(repo.data_dir.rglob("targets.key"))


def test_init_refuses_offline_keys_inside_the_data_dir_and_a_second_init(
    tmp_path: Path, repo: TufRepository
) -> None:
    with pytest.raises(RepositoryError, match="inside the data dir"):
        TufRepository.init(tmp_path / "d2", offline_keys_dir=tmp_path / "d2" / "offline")
    with pytest.raises(RepositoryError, match="already holds"):
        TufRepository.init(repo.data_dir, offline_keys_dir=tmp_path / "other")


def test_root_threshold_and_expiry_are_configurable(tmp_path: Path) -> None:
    repo = TufRepository.init(
        tmp_path / "data",
        offline_keys_dir=tmp_path / "offline",
        root_threshold=2,
        root_keys=3,
        expiry=ExpiryPolicy(timestamp_days=0.5),
    )
    role = repo.status()["roles"]["root"]
    assert role["threshold"] == 2 and len(role["keyids"]) == 3
    assert len(Metadata.from_file(str(repo.metadata_dir / "root.json")).signatures) == 3
    assert TufRepository(repo.data_dir).expiry.timestamp_days == 0.5


# ---- publish -----------------------------------------------------------------------------------------------
def test_publishing_a_signed_bundle_adds_a_target_with_hashes(
    repo: TufRepository, releases: Releases, tmp_path: Path, server: RepoServer
) -> None:
    published = repo.add_bundle(releases.bundles["1.0.0"], offline_keys_dir=tmp_path / "offline")
    assert published.path == "bundles/tiny/tiny-1.0.0.ekb"
    data = releases.bundles["1.0.0"].read_bytes()
    assert published.length == len(data)
    stored = repo.targets_dir / "bundles" / "tiny" / f"{published.sha256}.tiny-1.0.0.ekb"
    assert stored.read_bytes() == data
    assert published.custom == {
        "name": "tiny",
        "version": "1.0.0",
        "release_counter": 1,
        "bundle_id": releases.bundle_ids["1.0.0"],
    }
    versions = {r: v["version"] for r, v in repo.status()["roles"].items()}
    assert versions == {"root": 1, "targets": 2, "rollouts": 1, "snapshot": 2, "timestamp": 2}
    # a real client sees it, with the pinned length and hash
    client = _client(tmp_path, server, _bootstrap(repo))
    info = client.get_targetinfo(published.path)
    assert info is not None and info.length == len(data) and info.hashes == {"sha256": published.sha256}
    assert info.custom["bundle_id"] == releases.bundle_ids["1.0.0"]
    assert Path(client.download_target(info)).read_bytes() == data
    # publishing the same bytes again is a no-op
    again = repo.add_bundle(releases.bundles["1.0.0"], offline_keys_dir=tmp_path / "offline")
    assert again.already_published and repo.status()["roles"]["targets"]["version"] == 2


def _tampered(source: Path, folder: Path) -> Path:
    data = bytearray(source.read_bytes())
    at = data.index(b"cat\ndog")  # labels.txt inside the archive: its signed digest no longer matches
    data[at + 1] = ord("o")
    path = folder / "tampered.ekb"
    path.write_bytes(bytes(data))
    return path


def _signed_by_another_key(releases: Releases, folder: Path) -> Path:
    from edgekit.bundle_build import BundleRequest, build_bundle
    from signing.keys import generate_keypair

    private, _ = generate_keypair(folder / "rogue-keys", name="rogue")
    return build_bundle(
        BundleRequest(
            model=releases.folder / "tiny-1.2.0.onnx",
            output=folder / "rogue.ekb",
            name="tiny",
            version="1.2.0",
            keys=[private],
            release_counter=3,
            created="2025-01-01T00:00:00Z",
        )
    ).path


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda r, f: _tampered(r.bundles["1.1.0"], f), id="tampered"),
        pytest.param(_signed_by_another_key, id="signed-by-an-unknown-key"),
        pytest.param(
            lambda r, f: (f / "junk.ekb").write_bytes(b"not a bundle") and f / "junk.ekb", id="junk"
        ),
    ],
)
def test_publishing_an_unverified_bundle_is_refused(
    repo: TufRepository, releases: Releases, tmp_path: Path, make: Callable[[Releases, Path], Path]
) -> None:
    before = repo.status()
    bundle = make(releases, tmp_path)
    with pytest.raises(BundleRefusedError, match="does not verify"):
        repo.add_bundle(bundle, offline_keys_dir=tmp_path / "offline")
    assert repo.status() == before
    assert not [p for p in repo.targets_dir.rglob("*") if p.is_file()]


def test_publish_needs_the_offline_targets_key(
    repo: TufRepository, releases: Releases, tmp_path: Path
) -> None:
    generate_key(tmp_path / "wrong" / "targets.key")
    with pytest.raises(RepositoryError, match="not the targets key"):
        repo.add_bundle(releases.bundles["1.0.0"], offline_keys_dir=tmp_path / "wrong")
    with pytest.raises(RepositoryError, match="cannot read the key"):
        repo.add_bundle(releases.bundles["1.0.0"], offline_keys_dir=tmp_path / "missing")


# ---- plans -------------------------------------------------------------------------------------------------
def test_set_plan_writes_a_delegated_target_and_bumps_versions(
    repo: TufRepository, releases: Releases, tmp_path: Path, server: RepoServer
) -> None:
    for version in ("1.0.0", "1.1.0"):
        repo.add_bundle(releases.bundles[version], offline_keys_dir=tmp_path / "offline")
    before = {r: v["version"] for r, v in repo.status()["roles"].items()}
    published = repo.set_plan("tiny", "stable", make_plan(bundle_ids=releases.bundle_ids))
    after = {r: v["version"] for r, v in repo.status()["roles"].items()}
    assert published.path == "rollouts/tiny/stable.json" and published.role == "rollouts"
    assert after == {
        **before,
        "rollouts": 2,
        "snapshot": before["snapshot"] + 1,
        "timestamp": before["timestamp"] + 1,
    }
    repo.set_plan("tiny", "stable", make_plan(stage_index=1, bundle_ids=releases.bundle_ids))
    assert repo.status()["roles"]["rollouts"]["version"] == 3
    client = _client(tmp_path, server, _bootstrap(repo))
    info = client.get_targetinfo("rollouts/tiny/stable.json")
    assert info is not None
    assert json.loads(Path(client.download_target(info)).read_bytes())["stage_index"] == 1


@pytest.mark.parametrize(
    ("plan", "match"),
    [
        pytest.param({**make_plan(), "state": "launched"}, "plan.state", id="unknown-state"),
        pytest.param({**make_plan(), "stages": [5, 1]}, "stages", id="stages-not-increasing"),
        pytest.param({**make_plan(), "model": "other"}, "model", id="other-model"),
        pytest.param(
            {**make_plan(), "target": {**make_plan()["target"], "target_path": "bundles/tiny/../../x.ekb"}},
            "target_path",
            id="traversal",
        ),
        pytest.param(make_plan(target="1.2.0"), "not published", id="unpublished-target"),
    ],
)
def test_set_plan_refuses_bad_plans(
    repo: TufRepository, releases: Releases, tmp_path: Path, plan: dict[str, Any], match: str
) -> None:
    for version in ("1.0.0", "1.1.0"):
        repo.add_bundle(releases.bundles[version], offline_keys_dir=tmp_path / "offline")
    with pytest.raises(RepositoryError, match=match):
        repo.set_plan("tiny", "stable", plan)
    with pytest.raises(RepositoryError, match="channel"):
        repo.set_plan("tiny", "../stable", make_plan())


def test_concurrent_writers_never_interleave(repo: TufRepository, releases: Releases, tmp_path: Path) -> None:
    for version in ("1.0.0", "1.1.0"):
        repo.add_bundle(releases.bundles[version], offline_keys_dir=tmp_path / "offline")
    errors: list[BaseException] = []

    def writer(channel: str) -> None:
        mine = TufRepository(repo.data_dir)  # its own instance, as another server process would have
        try:
            for index in range(4):
                mine.set_plan(
                    "tiny",
                    channel,
                    make_plan(stage_index=index, channel=channel, bundle_ids=releases.bundle_ids),
                )
                mine.refresh_timestamp()
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=writer, args=(f"ch{i}",)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    status = repo.status()
    assert status["roles"]["rollouts"]["version"] == 1 + 16
    assert len(status["plans"]) == 4
    snapshot = Metadata.from_file(str(_latest(repo, "snapshot"))).signed
    assert snapshot.meta["rollouts.json"].version == 17  # type: ignore[attr-defined]
    assert not list(repo.metadata_dir.glob(".*.tmp"))


def test_refresh_timestamp_resigns_online_roles_near_expiry(tmp_path: Path) -> None:
    clock = [1_800_000_000.0]
    repo = TufRepository.init(
        tmp_path / "data", offline_keys_dir=tmp_path / "offline", clock=lambda: clock[0]
    )
    assert repo.refresh_timestamp() == {"rollouts": 1, "snapshot": 1, "timestamp": 2}
    clock[0] += 4 * 86_400  # snapshot and rollouts (7 days) now have less than half their lifetime left
    assert repo.refresh_timestamp() == {"rollouts": 2, "snapshot": 2, "timestamp": 3}
    assert repo.status()["warnings"] == []
    clock[0] += 200 * 86_400
    warnings = " ".join(repo.status()["warnings"])
    assert "targets expired" in warnings and "root" in warnings


# ---- root rotation -----------------------------------------------------------------------------------------
def test_a_client_with_root_v1_follows_a_rotation_to_v2(
    repo: TufRepository, releases: Releases, tmp_path: Path, server: RepoServer
) -> None:
    bootstrap = _bootstrap(repo)
    _client(tmp_path, server, bootstrap, "early").refresh()
    version = repo.rotate_root(tmp_path / "new-offline", old_offline_keys_dir=tmp_path / "offline")
    assert version == 2
    root2 = Metadata.from_file(str(repo.metadata_dir / "2.root.json"))
    assert len(root2.signatures) == 2  # old and new root key
    assert (repo.metadata_dir / "root.json").read_bytes() == (repo.metadata_dir / "2.root.json").read_bytes()
    new_key = load_signer(tmp_path / "new-offline" / "root-1.key")
    assert root2.signed.roles["root"].keyids == [new_key.public_key.keyid]
    # publishing continues from the new offline folder (targets key copied there)
    repo.add_bundle(releases.bundles["1.0.0"], offline_keys_dir=tmp_path / "new-offline")
    for name in ("early", "late"):
        client = _client(tmp_path, server, bootstrap, name)
        client.refresh()
        assert client.get_targetinfo("bundles/tiny/tiny-1.0.0.ekb") is not None
        trusted = Metadata.from_file(str(tmp_path / name / "metadata" / "root.json"))
        assert trusted.signed.version == 2
    # and a second rotation still needs the current (new) keys
    with pytest.raises(RepositoryError, match="current root keys"):
        repo.rotate_root(tmp_path / "newer", old_offline_keys_dir=tmp_path / "offline")


def test_root_v2_signed_only_by_new_keys_is_refused(
    repo: TufRepository, tmp_path: Path, server: RepoServer
) -> None:
    """Attack 24: an attacker with fresh keys cannot break the chain of trust."""
    bootstrap = _bootstrap(repo)
    md = Metadata.from_file(str(repo.metadata_dir / "1.root.json"))
    root = md.signed
    for keyid in list(root.roles["root"].keyids):
        root.revoke_key(keyid, "root")
    rogue = generate_key(tmp_path / "rogue" / "root.key")
    root.add_key(rogue.public_key, "root")
    root.version = 2
    md.signatures.clear()
    md.sign(rogue)
    (repo.metadata_dir / "2.root.json").write_bytes(md.to_bytes())
    client = _client(tmp_path, server, bootstrap)
    with pytest.raises(tuf_exceptions.UnsignedMetadataError):
        client.refresh()
    assert Metadata.from_file(str(tmp_path / "client" / "metadata" / "root.json")).signed.version == 1


# ---- the command line --------------------------------------------------------------------------------------
def test_repo_commands_init_publish_status_rotate(releases: Releases, tmp_path: Path) -> None:
    from edgekit.commands.repo import publish, repo

    runner = CliRunner()
    data, offline = tmp_path / "data", tmp_path / "offline"
    result = runner.invoke(
        repo,
        [
            "init",
            "--data",
            str(data),
            "--offline-keys",
            str(offline),
            "--release-key",
            str(releases.public_key),
        ],
    )
    assert result.exit_code == 0, result.output
    result = runner.invoke(
        publish, [str(releases.bundles["1.0.0"]), "--data", str(data), "--offline-keys", str(offline)]
    )
    assert result.exit_code == 0 and "published bundles/tiny/tiny-1.0.0.ekb" in result.output
    tampered = _tampered(releases.bundles["1.1.0"], tmp_path)
    result = runner.invoke(
        repo, ["publish", str(tampered), "--data", str(data), "--offline-keys", str(offline)]
    )
    assert result.exit_code == 1 and "does not verify" in result.output
    result = runner.invoke(repo, ["status", "--data", str(data), "--json"])
    assert result.exit_code == 0
    status = json.loads(result.output)
    assert [t["path"] for t in status["targets"]] == ["bundles/tiny/tiny-1.0.0.ekb"]
    result = runner.invoke(
        repo,
        [
            "rotate-root",
            "--data",
            str(data),
            "--offline-keys",
            str(offline),
            "--new-keys",
            str(tmp_path / "n"),
        ],
    )
    assert result.exit_code == 0 and "root version 2" in result.output
    result = runner.invoke(repo, ["status", "--data", str(data)])
    assert result.exit_code == 0 and "root" in result.output and "v2" in result.output
    result = runner.invoke(repo, ["status", "--data", str(tmp_path / "nowhere")])
    assert result.exit_code == 1 and "no TUF repository" in result.output
    shutil.rmtree(data)
    assert not os.path.exists(data)
