"""`edgekit serve --workers N`: N processes share the port, every one ingests, none loses a batch."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.server.conftest import Http
from tests.server.test_serve_cli import TOKEN, free_port, operator  # noqa: F401 - the fixture


def children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", encoding="latin-1") as handle:
                    if int(handle.read().rsplit(")", 1)[1].split()[1]) == pid:
                        found.append(int(entry))
            except OSError:
                continue
    return found


@pytest.fixture(params=["sqlite", "postgresql"])
def db_args(request: pytest.FixtureRequest) -> list[str]:
    if request.param == "sqlite":
        return []
    url: str = request.getfixturevalue("postgres_url")
    return ["--db", url]


@pytest.mark.slow
def test_two_workers_share_the_port_and_store_every_acknowledged_batch(
    operator: tuple[Path, Path],  # noqa: F811 - the imported fixture
    db_args: list[str],
) -> None:
    data_dir, gates = operator
    port = free_port()
    command = [sys.executable, "-m", "edgekit", "serve", "--data", str(data_dir), "--port", str(port)]
    command += ["--evaluate-every", "0", "--gates", str(gates), "--workers", "2", *db_args]
    process = subprocess.Popen(
        command,
        env={**os.environ, "EDGEKIT_ADMIN_TOKEN": TOKEN},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    http = Http(f"http://127.0.0.1:{port}")
    try:
        deadline = time.time() + 60
        while True:
            try:
                if http.request("GET", "/healthz")[0] == 200:
                    break
            except OSError:
                pass
            assert process.poll() is None and time.time() < deadline, process.stdout and process.stdout.read()
            time.sleep(0.2)
        device = f"w-{uuid.uuid4().hex[:8]}"
        status, body = http.request(
            "POST", "/v1/admin/devices", {"device_id": device, "hardware_id": "rpi4"}, token=TOKEN
        )
        assert status == 200, body
        token = body["token"]
        for index in range(20):
            batch: dict[str, Any] = {
                "schema": "edgekit.telemetry/v1",
                "batch_id": f"b{index}",
                "device_id": device,
                "sent_at": time.time(),
                "events": [
                    {
                        "id": uuid.uuid4().hex,
                        "kind": "install",
                        "time": time.time(),
                        "payload": {"outcome": "refused", "reason": "signature"},
                    }
                ],
            }
            status, body = http.request("POST", "/v1/telemetry", batch, token=token)
            assert status == 200 and body["stored"] == 1, body
        assert len(children(process.pid)) >= 2  # uvicorn's supervisor and its worker processes
    finally:
        os.killpg(process.pid, signal.SIGINT)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=5)
