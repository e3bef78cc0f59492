"""`edgekit repo init`, `publish`, `serve` and `rollout` as an operator runs them: real processes, real HTTP.

The server is a subprocess so it can be killed with SIGKILL: nothing it acknowledged may be lost.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from edgekit.cli import cli
from tests.server.conftest import Http

TOKEN = "operator-admin-token-for-tests"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ServeProcess:
    def __init__(self, data_dir: Path, gates: Path) -> None:
        self.port = free_port()
        env = {**os.environ, "EDGEKIT_ADMIN_TOKEN": TOKEN}
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "edgekit",
                "serve",
                "--data",
                str(data_dir),
                "--port",
                str(self.port),
                "--evaluate-every",
                "0",
                "--gates",
                str(gates),
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.http = Http(f"http://127.0.0.1:{self.port}")
        deadline = time.time() + 60
        while True:
            try:
                if self.http.request("GET", "/healthz")[0] == 200:
                    break
            except OSError:
                pass
            if self.process.poll() is not None or time.time() > deadline:
                raise RuntimeError(
                    f"edgekit serve did not start: {self.process.stdout and self.process.stdout.read()}"
                )
            time.sleep(0.2)

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)


@pytest.fixture()
def operator(deployment: Any, tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """An operator's data dir made with the CLI (repo init + publish), and a small-fleet gate file."""
    data_dir, offline = tmp_path / "data", tmp_path / "offline"
    runner = CliRunner()
    result = runner.invoke(
        cli,
        [
            "repo",
            "init",
            "--data",
            str(data_dir),
            "--offline-keys",
            str(offline),
            "--release-key",
            str(deployment.releases.public_key),
        ],
    )
    assert result.exit_code == 0, result.output
    for version in ("1.0.0", "1.1.0"):
        result = runner.invoke(
            cli,
            [
                "publish",
                str(deployment.releases.bundles[version]),
                "--data",
                str(data_dir),
                "--offline-keys",
                str(offline),
            ],
        )
        assert result.exit_code == 0, result.output
    gates = tmp_path / "gates.json"
    gates.write_text(json.dumps({"min_devices_per_arm": 3, "stage_min_hours": [[10, 0], [50, 0], [100, 0]]}))
    yield data_dir, gates


def test_a_killed_server_loses_no_acknowledged_telemetry(operator: tuple[Path, Path]) -> None:
    data_dir, gates = operator
    server = ServeProcess(data_dir, gates)
    status, body = server.http.request(
        "POST", "/v1/admin/devices", {"device_id": "d1", "hardware_id": "rpi4"}, token=TOKEN
    )
    assert status == 200
    device_token = body["token"]
    acknowledged = []
    for index in range(30):
        batch = {
            "schema": "edgekit.telemetry/v1",
            "batch_id": f"b{index}",
            "device_id": "d1",
            "sent_at": time.time(),
            "events": [
                {
                    "id": uuid.uuid4().hex,
                    "kind": "install",
                    "time": time.time(),
                    "payload": {"outcome": "refused", "reason": "signature"},
                }
                for _ in range(10)
            ],
        }
        if server.http.request("POST", "/v1/telemetry", batch, token=device_token)[0] == 200:
            acknowledged.append(batch)
    server.kill()  # SIGKILL: no shutdown hooks, no flush
    with sqlite3.connect(data_dir / "edgekit.db") as connection:
        stored = connection.execute("SELECT COUNT(*) FROM events WHERE device_id = 'd1'").fetchone()[0]
    assert stored == 10 * len(acknowledged) == 300
    again = ServeProcess(data_dir, gates)
    try:
        assert all(
            again.http.request("POST", "/v1/telemetry", b, token=device_token)[0] == 409 for b in acknowledged
        )
    finally:
        again.kill()


def test_operators_drive_a_rollout_from_the_command_line(operator: tuple[Path, Path]) -> None:
    data_dir, gates = operator
    server = ServeProcess(data_dir, gates)
    try:
        env = {"EDGEKIT_ADMIN_TOKEN": TOKEN, "EDGEKIT_SERVER": server.http.base}
        runner = CliRunner(env=env)
        started = runner.invoke(
            cli,
            [
                "rollout",
                "start",
                "--model",
                "tiny",
                "--target",
                "1.1.0",
                "--baseline",
                "1.0.0",
                "--stages",
                "10,50,100",
                "--json",
            ],
        )
        assert started.exit_code == 0, started.output
        rollout_id = json.loads(started.output)["plan"]["rollout_id"]
        shown = runner.invoke(cli, ["rollout", "status"])
        assert rollout_id in shown.output and "RUNNING" in shown.output and "[10%]" in shown.output
        assert "paused" in runner.invoke(cli, ["rollout", "pause", rollout_id]).output
        assert "running" in runner.invoke(cli, ["rollout", "resume", rollout_id]).output
        assert "stage 50%" in runner.invoke(cli, ["rollout", "promote", rollout_id]).output
        aborted = runner.invoke(cli, ["rollout", "abort", rollout_id])
        assert aborted.exit_code == 0 and "rolled_back" in aborted.output
        again = runner.invoke(cli, ["rollout", "resume", rollout_id])
        assert again.exit_code == 1 and "server answered 409" in again.output
        unknown = runner.invoke(
            cli, ["rollout", "start", "--model", "tiny", "--target", "9.9.9", "--baseline", "1.0.0"]
        )
        assert unknown.exit_code == 1 and "not published" in unknown.output
        wrong = CliRunner(env={**env, "EDGEKIT_ADMIN_TOKEN": "nope"}).invoke(cli, ["rollout", "status"])
        assert wrong.exit_code == 1 and "401" in wrong.output
    finally:
        server.kill()


def test_serve_refuses_a_data_dir_without_a_repository(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["serve", "--data", str(tmp_path / "empty")])
    assert result.exit_code == 1 and "edgekit repo init" in result.output and "Traceback" not in result.output
