"""`edgekit-tuf-client` (the tuf-conformance protocol) against a real loopback TUF repository.

`main(argv)` runs in-process (it never exits); one test runs the module in a child interpreter to pin the
process exit status. Exit codes are exactly 0 and 1; the server counts requests to prove caching and that
`init` makes none.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest

from edgekit.server.tuf_repo import TufRepository
from edgekit.tuf_conformance_client import main
from tests.device_runtime.runtime_fixtures import ROOT, Releases, build_releases
from tests.server.tuf_fixtures import RepoServer, make_plan, served_path

BUNDLE = "bundles/tiny/tiny-1.0.0.ekb"
PLAN = "rollouts/tiny/stable.json"


@pytest.fixture(scope="module")
def releases(tmp_path_factory: pytest.TempPathFactory) -> Releases:
    return build_releases(tmp_path_factory.mktemp("releases"))


@pytest.fixture
def repo(tmp_path: Path, releases: Releases) -> TufRepository:
    offline = tmp_path / "offline"
    repo = TufRepository.init(tmp_path / "data", offline_keys_dir=offline, release_keys=[releases.public_key])
    for version in ("1.0.0", "1.1.0"):
        repo.add_bundle(releases.bundles[version], offline_keys_dir=offline)
    repo.set_plan("tiny", "stable", make_plan(bundle_ids=releases.bundle_ids))
    return repo


@pytest.fixture
def server(repo: TufRepository) -> Iterator[RepoServer]:
    running = RepoServer(repo.data_dir / "repo")
    yield running
    running.close()


@pytest.fixture
def client_dir(tmp_path: Path, repo: TufRepository) -> Path:
    folder = tmp_path / "client"
    assert main(["--metadata-dir", str(folder), "init", str(repo.metadata_dir / "1.root.json")]) == 0
    return folder


def _refresh(folder: Path, server: RepoServer) -> int:
    return main(["--metadata-dir", str(folder), "--metadata-url", server.metadata_url, "refresh"])


def _download(folder: Path, server: RepoServer, out: Path, *names: str) -> int:
    args = ["--metadata-dir", str(folder), "--metadata-url", server.metadata_url]
    for name in names:
        args += ["--target-name", name]
    args += ["--target-base-url", server.targets_url, "--target-dir", str(out), "download"]
    return main(args)


def test_init_copies_the_root_and_touches_no_network(
    tmp_path: Path, repo: TufRepository, server: RepoServer
) -> None:
    folder = tmp_path / "fresh"
    root = repo.metadata_dir / "1.root.json"
    assert main(["--metadata-dir", str(folder), "init", str(root)]) == 0
    assert (folder / "root.json").read_bytes() == root.read_bytes()
    assert server.requests == []
    assert main(["--metadata-dir", str(folder), "init", str(tmp_path / "missing.json")]) == 1
    assert main(["--metadata-dir", str(folder), "init", str(repo.metadata_dir / "timestamp.json")]) == 1


@pytest.mark.parametrize(
    "argv",
    [
        pytest.param([], id="nothing"),
        pytest.param(["--metadata-dir", "x"], id="no-command"),
        pytest.param(["--metadata-dir", "x", "fly"], id="unknown-command"),
        pytest.param(["--metadata-dir", "x", "--bogus", "1", "refresh"], id="unknown-option"),
        pytest.param(["--metadata-dir", "x", "refresh"], id="refresh-without-url"),
        pytest.param(["--metadata-dir", "x", "init"], id="init-without-root"),
    ],
)
def test_usage_errors_exit_1(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 1
    assert capsys.readouterr().err


def test_refresh_keeps_trusted_metadata_under_non_versioned_names(
    client_dir: Path, server: RepoServer, repo: TufRepository
) -> None:
    assert _refresh(client_dir, server) == 0
    for role in ("root", "timestamp", "snapshot", "targets"):
        assert (client_dir / f"{role}.json").is_file(), role
    assert not list(client_dir.glob("[0-9]*.json"))
    trusted = json.loads((client_dir / "targets.json").read_bytes())
    assert trusted["signed"]["version"] == repo.status()["roles"]["targets"]["version"]


def test_refresh_fails_with_exit_1_on_expired_metadata(tmp_path: Path, releases: Releases) -> None:
    past = time.time() - 2 * 86_400
    repo = TufRepository.init(tmp_path / "data", offline_keys_dir=tmp_path / "offline", clock=lambda: past)
    server = RepoServer(repo.data_dir / "repo")
    try:
        folder = tmp_path / "client"
        assert main(["--metadata-dir", str(folder), "init", str(repo.metadata_dir / "1.root.json")]) == 0
        assert _refresh(folder, server) == 1
    finally:
        server.close()


def test_refresh_follows_a_root_rotation(
    client_dir: Path, server: RepoServer, repo: TufRepository, tmp_path: Path
) -> None:
    assert _refresh(client_dir, server) == 0
    repo.rotate_root(tmp_path / "new-offline", old_offline_keys_dir=tmp_path / "offline")
    assert _refresh(client_dir, server) == 0
    assert json.loads((client_dir / "root.json").read_bytes())["signed"]["version"] == 2


def test_download_stores_targets_and_does_not_fetch_a_cached_one_again(
    client_dir: Path, server: RepoServer, repo: TufRepository, releases: Releases, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    assert _download(client_dir, server, out, BUNDLE, PLAN) == 0
    assert (out / quote(BUNDLE, "")).read_bytes() == releases.bundles["1.0.0"].read_bytes()
    assert json.loads((out / quote(PLAN, "")).read_bytes())["model"] == "tiny"
    bundle_url = served_path(repo, BUNDLE)
    assert server.count(bundle_url) == 1
    assert _download(client_dir, server, out, BUNDLE) == 0
    assert server.count(bundle_url) == 1  # matching hashes in O: not fetched again
    # a changed plan is fetched again into the same file name
    repo.set_plan("tiny", "stable", make_plan(stage_index=2, bundle_ids=releases.bundle_ids))
    assert _download(client_dir, server, out, PLAN) == 0
    assert json.loads((out / quote(PLAN, "")).read_bytes())["stage_index"] == 2


def test_download_stops_at_the_first_failure_with_exit_1(
    client_dir: Path, server: RepoServer, repo: TufRepository, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    assert _download(client_dir, server, out, "bundles/tiny/missing.ekb", BUNDLE) == 1
    assert not (out / quote(BUNDLE, "")).exists()
    assert server.count(served_path(repo, BUNDLE)) == 0
    # a tampered target: exit 1, nothing stored under its name, the next target never fetched
    stored = repo.data_dir / "repo" / served_path(repo, BUNDLE).lstrip("/")
    data = bytearray(stored.read_bytes())
    data[data.index(b"cat\ndog") + 1] = ord("o")
    stored.write_bytes(bytes(data))
    assert _download(client_dir, server, out, BUNDLE, PLAN) == 1
    assert not (out / quote(BUNDLE, "")).exists()
    assert server.count(served_path(repo, "bundles/tiny/tiny-1.1.0.ekb")) == 0
    assert not any(PLAN.rpartition("/")[2] in r for r in server.requests if r.startswith("/targets/"))


def test_the_process_exit_status_is_0_or_1(client_dir: Path, server: RepoServer) -> None:
    code = "from edgekit.tuf_conformance_client import console_main; console_main()"
    ok = subprocess.run(
        [
            sys.executable,
            "-c",
            code,
            "--metadata-dir",
            str(client_dir),
            "--metadata-url",
            server.metadata_url,
            "refresh",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert ok.returncode == 0, ok.stderr
    assert "refresh succeeded" in ok.stderr
    bad = subprocess.run(
        [sys.executable, "-c", code, "--metadata-dir", str(client_dir), "--nope", "refresh"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert bad.returncode == 1 and "error" in bad.stderr
