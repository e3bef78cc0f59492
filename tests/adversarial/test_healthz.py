"""Finding 7: `/healthz` said ok with a corrupt database, and while ingest answered 500 on a full disk.

The database check is a real query of every table the server needs; the write check remembers the last
failed ingest write and proves recovery with a real committed write. The full disk is real too: the
server's file-size limit (RLIMIT_FSIZE, set from outside with prlimit) makes every write past 4 KiB fail
with EFBIG, as a full file system fails writes with ENOSPC.
"""

from __future__ import annotations

import os
import resource
import sqlite3
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.adversarial._front import ADMIN, ServeProcess, copy_data
from tests.server.conftest import LiveServer


def batch(device_id: str, events: int) -> dict[str, Any]:
    now = time.time()
    return {
        "schema": "edgekit.telemetry/v1",
        "batch_id": uuid.uuid4().hex,
        "device_id": device_id,
        "sent_at": now,
        "events": [
            {"id": uuid.uuid4().hex, "kind": "inferences", "time": now, "payload": {"inferences": 1}}
            for _ in range(events)
        ],
    }


def test_healthz_is_503_for_a_corrupt_sqlite_file(start_server: Any, deployment: Any, tmp_path: Path) -> None:
    path = tmp_path / "corrupt.db"
    server: LiveServer = start_server(
        db_url=f"sqlite:///{path}", data_dir=copy_data(deployment, tmp_path / "d")
    )
    assert server.http.request("GET", "/healthz") == (200, {"status": "ok"})
    with sqlite3.connect(path) as connection:  # everything into the main file, then damage all of it
        connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    size = path.stat().st_size
    with open(path, "r+b") as handle:
        handle.write(os.urandom(size))
    status, body = server.http.request("GET", "/healthz")
    assert status == 503, body
    assert body["status"] == "unavailable" and "database" in body["problems"][0]


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_healthz_is_503_when_a_table_the_server_needs_is_gone(
    request: pytest.FixtureRequest, start_server: Any, deployment: Any, tmp_path: Path, backend: str
) -> None:
    from edgekit.server.storage import open_database

    url = (
        f"sqlite:///{tmp_path / 'tables.db'}"
        if backend == "sqlite"
        else request.getfixturevalue("postgres_url")
    )
    server: LiveServer = start_server(db_url=url, data_dir=copy_data(deployment, tmp_path / "d"))
    assert server.http.request("GET", "/healthz")[0] == 200
    other = open_database(url, tmp_path)
    other.execute("ALTER TABLE decisions RENAME TO decisions_moved")
    try:
        status, body = server.http.request("GET", "/healthz")
        assert status == 503 and "decisions" in body["problems"][0], body
    finally:
        other.execute("ALTER TABLE decisions_moved RENAME TO decisions")
        other.close()
    assert server.http.request("GET", "/healthz")[0] == 200


@pytest.mark.slow
def test_healthz_is_503_while_ingest_cannot_write_and_ok_once_it_can(deployment: Any, tmp_path: Path) -> None:
    server = ServeProcess(copy_data(deployment, tmp_path / "data"), tmp_path / "serve.log")
    try:
        status, device = server.http.request(
            "POST", "/v1/admin/devices", {"device_id": "d1", "hardware_id": "rpi4"}, token=ADMIN
        )
        assert status == 200
        assert server.http.request("POST", "/v1/telemetry", batch("d1", 10), token=device["token"])[0] == 200
        assert server.http.request("GET", "/healthz")[0] == 200
        soft, hard = resource.prlimit(server.process.pid, resource.RLIMIT_FSIZE)
        resource.prlimit(server.process.pid, resource.RLIMIT_FSIZE, (4096, hard))  # the disk is full
        try:
            statuses = []
            for _ in range(10):  # the WAL may have room left for a batch or two
                statuses.append(
                    server.http.request("POST", "/v1/telemetry", batch("d1", 200), token=device["token"])[0]
                )
                if statuses[-1] >= 500:
                    break
            assert statuses[-1] >= 500, statuses  # ingest cannot write
            status, body = server.http.request("GET", "/healthz")
            assert status == 503, body
            assert any(problem.startswith("ingest: cannot write") for problem in body["problems"]), body
        finally:
            resource.prlimit(server.process.pid, resource.RLIMIT_FSIZE, (soft, hard))  # space again
        assert server.http.request("GET", "/healthz") == (200, {"status": "ok"})
        assert server.http.request("POST", "/v1/telemetry", batch("d1", 10), token=device["token"])[0] == 200
    finally:
        server.stop()
