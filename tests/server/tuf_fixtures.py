"""The loopback TUF server and repository helpers shared by the repository's tests
(tests/server/test_tuf_repo.py), the device's update loop (tests/device_runtime/test_updater.py) and the
conformance client's; no click, so the device-only test environment imports it.
"""

from __future__ import annotations

import functools
import hashlib
import threading
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler, SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from tuf.api.metadata import Metadata, TargetFile, Targets

from edgekit.server.tuf_repo import TufRepository, load_signer
from tests.device_runtime.runtime_fixtures import MODEL_NAME


class RepoServer:
    """A real `ThreadingHTTPServer` on 127.0.0.1:0 serving `root` (a repo dir), counting every GET.

    `overrides[url_path] = fn(handler)` answers a path with `fn` instead of the file (attacks).
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self.requests: list[str] = []
        self.overrides: dict[str, Callable[[BaseHTTPRequestHandler], None]] = {}
        server = self

        class Handler(SimpleHTTPRequestHandler):
            def do_GET(self) -> None:
                server.requests.append(self.path)
                override = server.overrides.get(self.path)
                if override is not None:
                    override(self)
                    return
                super().do_GET()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(root)))
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05})
        self.thread.daemon = True
        self.thread.start()

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host!s}:{port}"

    @property
    def metadata_url(self) -> str:
        return f"{self.url}/metadata/"

    @property
    def targets_url(self) -> str:
        return f"{self.url}/targets/"

    def count(self, fragment: str) -> int:
        return sum(1 for r in self.requests if fragment in r)

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def served_path(repo: TufRepository, target_path: str) -> str:
    """The URL path ngclient requests for a target (consistent snapshots: `<dir>/<sha256>.<name>`)."""
    targets: Metadata[Targets] = Metadata.from_file(str(_latest(repo, "targets")))
    info = targets.signed.targets[target_path]
    directory, _, name = target_path.rpartition("/")
    return f"/targets/{directory}/{info.hashes['sha256']}.{name}"


def _latest(repo: TufRepository, role: str) -> Path:
    versions = [int(p.name.split(".")[0]) for p in repo.metadata_dir.glob(f"*.{role}.json")]
    return repo.metadata_dir / f"{max(versions)}.{role}.json"


def make_plan(
    state: str = "running",
    stage_index: int = 0,
    *,
    target: str = "1.1.0",
    baseline: str | None = "1.0.0",
    salt: str = "salt-1",
    stages: tuple[int, ...] = (1, 5, 25, 100),
    channel: str = "stable",
    bundle_ids: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """A plan document of the contract (`device_runtime.rollout_plan`) for the test bundles.

    `bundle_ids`: the published bundles' ids (`Releases.bundle_ids`), needed to publish the plan; pure
    tests may leave it out and get stand-in ids.
    """
    counters = {"1.0.0": 1, "1.1.0": 2, "1.2.0": 3}

    def release(version: str) -> dict[str, Any]:
        bundle_id = (bundle_ids or {}).get(version) or hashlib.sha256(
            f"bundle {version}".encode()
        ).hexdigest()
        return {
            "version": version,
            "release_counter": counters[version],
            "target_path": f"bundles/{MODEL_NAME}/{MODEL_NAME}-{version}.ekb",
            "bundle_id": bundle_id,
        }

    return {
        "model": MODEL_NAME,
        "channel": channel,
        "rollout_id": "rollout-1",
        "salt": salt,
        "target": release(target),
        "baseline": release(baseline) if baseline else None,
        "stages": list(stages),
        "stage_index": stage_index,
        "state": state,
        "control": True,
        "stage_started_at": 1_700_000_000.0,
        "stage_deadline_hours": 72.0,
        "reason": "",
    }


def plant_plan(repo: TufRepository, channel: str, data: bytes) -> None:
    """Play a holder of the online `rollouts` key publishing raw bytes that set_plan would refuse."""
    path = f"rollouts/{MODEL_NAME}/{channel}.json"
    md: Metadata[Targets] = Metadata.from_file(str(_latest(repo, "rollouts")))
    info = TargetFile.from_data(path, data, ["sha256"])
    folder = repo.targets_dir / "rollouts" / MODEL_NAME
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{info.hashes['sha256']}.{channel}.json").write_bytes(data)
    md.signed.targets[path] = info
    md.signed.version += 1
    md.signatures.clear()
    md.sign(load_signer(repo.keys_dir / "rollouts.key"))
    (repo.metadata_dir / f"{md.signed.version}.rollouts.json").write_bytes(md.to_bytes())
    repo.refresh_timestamp()
