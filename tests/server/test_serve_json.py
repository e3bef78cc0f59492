"""`repo init`, `repo rotate-root` and `serve` under --json: one document each; serve's once it listens."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner

from edgekit.cli import cli
from tests.server.conftest import Http

ROOT = Path(__file__).resolve().parents[2]


def test_serve_prints_one_json_line_with_the_address_it_listens_on(tmp_path: Path) -> None:
    data, offline = tmp_path / "data", tmp_path / "offline"
    made = CliRunner().invoke(
        cli, ["repo", "init", "--data", str(data), "--offline-keys", str(offline), "--json"]
    )
    assert made.exit_code == 0, made.output
    document = json.loads(made.stdout)
    assert document["ok"] is True and document["command"] == "repo init"
    assert Path(document["bootstrap_root"]).is_file()
    rotated = CliRunner().invoke(
        cli,
        ["repo", "rotate-root", "--data", str(data), "--offline-keys", str(offline), "--new-keys",
         str(tmp_path / "new"), "--json"],
    )  # fmt: skip
    assert rotated.exit_code == 0, rotated.output
    assert json.loads(rotated.stdout)["root_version"] == 2

    env = {**os.environ, "EDGEKIT_ADMIN_TOKEN": "token-for-the-json-test", "TF_CPP_MIN_LOG_LEVEL": "3"}
    server = subprocess.Popen(
        [sys.executable, "-m", "edgekit", "serve", "--data", str(data), "--port", "0", "--json",
         "--evaluate-every", "0"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert server.stdout is not None
        line = server.stdout.readline()  # printed only once the socket listens
        ready = json.loads(line)
        assert ready["ok"] is True and ready["command"] == "serve" and ready["event"] == "ready"
        assert ready["data_dir"] == str(data) and ready["port"] > 0
        assert ready["address"] == f"http://127.0.0.1:{ready['port']}"
        assert Http(ready["address"]).request("GET", "/healthz")[0] == 200
    finally:
        server.send_signal(signal.SIGINT)
        server.wait(timeout=30)
    rest, errors = server.communicate(timeout=10)
    assert rest == "", "nothing but the ready line on stdout"
    assert "Traceback" not in errors


def test_serve_without_a_repository_is_one_json_error_naming_repo_init(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["serve", "--data", str(tmp_path / "empty"), "--json"])
    error = json.loads(result.stdout)["error"]
    assert result.exit_code == 1 and error["code"] == "NoRepository"
    assert "edgekit repo init" in error["hint"]
