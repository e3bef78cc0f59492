"""`python -m edgekit.emulation`: the command's exit code passes through; setup errors are one line, 125."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.emulation.conftest import requires_host

REPO = Path(__file__).resolve().parents[2]


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edgekit.emulation", *args], capture_output=True, text=True, check=False,
        env={**os.environ, "PYTHONPATH": str(REPO)}, cwd=REPO,
    )  # fmt: skip


@pytest.mark.slow
def test_run_passes_the_commands_output_and_exit_code_through(arm64_root: Path) -> None:
    proc = _cli("run", "--root", str(arm64_root), "--env", "WHO=device", "--", "/bin/sh", "-c",
                'echo "$WHO on $(uname -m)"; exit 4')  # fmt: skip
    assert (proc.returncode, proc.stdout.strip()) == (4, "device on aarch64")


@requires_host()
def test_a_root_that_cannot_be_entered_is_one_line_and_exit_125(tmp_path: Path) -> None:
    proc = _cli("run", "--root", str(tmp_path), "--", "/bin/true")
    assert proc.returncode == 125
    assert proc.stderr.startswith("error: ") and "not a usable arm64 root" in proc.stderr
    assert "Traceback" not in proc.stderr
