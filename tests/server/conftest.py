"""A real `edgekit serve` app on loopback (uvicorn in a thread), its data directory, and PostgreSQL."""

from __future__ import annotations

import json
import os
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from edgekit.rollout.gates import GateConfig

ADMIN_TOKEN = "test-admin-token-0123456789"
# Small-fleet gates so a test can reach decisions with a few synthetic devices.
SMALL_FLEET = GateConfig(
    min_devices_per_arm=3,
    min_device_hours_per_arm=1.0,
    min_expected_events=1.0,
    stage_min_hours=((1, 0.0), (5, 0.0), (25, 0.0), (100, 0.0)),
    default_stage_min_hours=0.0,
)


@dataclass
class Http:
    """Tiny HTTP client for tests (urllib, real sockets)."""

    base: str

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        token: str | None = None,
        raw: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, Any]:
        data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        all_headers = {"Content-Type": "application/json", **(headers or {})}
        if token is not None:
            all_headers["Authorization"] = f"Bearer {token}"
        request = urllib.request.Request(self.base + path, data=data, method=method, headers=all_headers)
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                payload = response.read()
                status = response.status
        except urllib.error.HTTPError as e:
            payload, status = e.read(), e.code
        try:
            return status, json.loads(payload)
        except ValueError:
            return status, payload.decode(errors="replace")


@dataclass
class LiveServer:
    """uvicorn serving `create_app(...)` on 127.0.0.1 with an OS-chosen port."""

    app: Any
    server: Any = None
    thread: threading.Thread | None = None
    port: int = 0
    http: Http = field(init=False)

    def start(self) -> LiveServer:
        import uvicorn

        self.server = uvicorn.Server(
            uvicorn.Config(
                self.app, host="127.0.0.1", port=0, log_level="warning", access_log=False, lifespan="on"
            )
        )
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.time() + 20
        while not (self.server.started and self.server.servers):
            if time.time() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.05)
        self.port = self.server.servers[0].sockets[0].getsockname()[1]
        self.http = Http(f"http://127.0.0.1:{self.port}")
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.should_exit = True
        if self.thread is not None:
            self.thread.join(timeout=10)


@dataclass
class Deployment:
    """A data directory with an initialised TUF repository and published releases."""

    data_dir: Path
    offline_keys: Path
    releases: Any  # tests.device_runtime.runtime_fixtures.Releases
    root_json: Path


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Deployment:
    from edgekit.server.tuf_repo import TufRepository
    from tests.device_runtime.runtime_fixtures import build_releases

    folder = tmp_path_factory.mktemp("server")
    releases = build_releases(folder / "releases")
    data_dir, offline = folder / "data", folder / "offline-keys"
    repo = TufRepository.init(data_dir, offline_keys_dir=offline, release_keys=[releases.public_key])
    for version in ("1.0.0", "1.1.0", "1.2.0"):
        repo.add_bundle(releases.bundles[version], offline_keys_dir=offline)
    return Deployment(data_dir, offline, releases, data_dir / "repo" / "metadata" / "1.root.json")


@pytest.fixture()
def start_server(deployment: Deployment, tmp_path: Path) -> Iterator[Callable[..., LiveServer]]:
    from edgekit.server.app import ServerConfig, create_app
    from edgekit.server.storage import open_database

    running: list[LiveServer] = []

    def start(
        *,
        db_url: str | None = None,
        clock: Callable[[], float] = time.time,
        gates: GateConfig = SMALL_FLEET,
        data_dir: Path | None = None,
    ) -> LiveServer:
        directory = data_dir or deployment.data_dir
        database = open_database(db_url or f"sqlite:///{tmp_path / 'edgekit.db'}", directory)
        app = create_app(
            ServerConfig(
                data_dir=directory,
                database=database,
                admin_token=ADMIN_TOKEN,
                evaluate_every_s=0,
                gates=gates,
                clock=clock,
            )
        )
        server = LiveServer(app).start()
        running.append(server)
        return server

    yield start
    for server in running:
        server.stop()


def empty_database(url: str, folder: Path) -> str:
    """Delete every row of every table of the server's schema at `url` (the test PostgreSQL is shared by
    all tests, and device ids repeat between them: a leftover quota or quarantine row would leak into the
    next test). Returns `url`."""
    from edgekit.server.health import TABLES
    from edgekit.server.storage import open_database

    database = open_database(url, folder)
    try:
        for table in TABLES:
            database.execute(f"DELETE FROM {table}")
    finally:
        database.close()
    return url


@pytest.fixture(scope="session")
def postgres_url() -> str:
    """A real PostgreSQL: $EDGEKIT_TEST_POSTGRES_URL (set by .ci/run, which installs and starts one)."""
    url = os.environ.get("EDGEKIT_TEST_POSTGRES_URL")
    if not url:
        if os.environ.get("CI"):
            pytest.fail("EDGEKIT_TEST_POSTGRES_URL is not set; .ci/run starts PostgreSQL and sets it")
        pytest.skip("set EDGEKIT_TEST_POSTGRES_URL to run the PostgreSQL tests (bash scripts/postgres.sh)")
    return url


# The `fleet` fixture (server + injected clock + synthetic devices), shared by the rollout and dashboard
# tests; imported last because fleet.py uses the names above.
from tests.server.fleet import fleet  # noqa: E402, F401
