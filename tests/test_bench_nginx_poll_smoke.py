"""Smoke test of `python -m bench.nginx_poll`: it runs the documented deployment (Debian's nginx in front
of `edgekit serve`) and writes every figure. No timing thresholds: benchmarks are not assertions.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.server.nginx import find_nginx

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_nginx_poll_bench_measures_both_servers_without_errors(tmp_path: Path) -> None:
    find_nginx()  # skips without nginx, fails under CI (.ci/run installs it)
    before = set(Path(tempfile.gettempdir()).glob("edgekit-bench-nginx-*"))
    out = tmp_path / "nginx.json"
    quick = ["--duration", "1", "--connections", "4"]  # a smoke run: seconds, not figures to quote
    completed = subprocess.run(
        [sys.executable, "-m", "bench.nginx_poll", *quick, "--json", str(out)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert completed.returncode == 0, completed.stdout[-2000:] + completed.stderr[-4000:]
    assert "nginx / edgekit serve:" in completed.stdout, completed.stdout
    results = json.loads(out.read_text(encoding="utf-8"))
    for name in ("edgekit", "through_nginx"):
        figures = results[name]
        assert figures["requests"] > 0, (name, figures)
        assert figures["errors"] == 0, (name, figures)
        assert figures["p99_ms"] >= figures["p50_ms"] > 0, (name, figures)
    assert results["ratio"] > 0
    # nothing left behind: its temporary folder (repository, nginx prefix, logs) is gone
    assert set(Path(tempfile.gettempdir()).glob("edgekit-bench-nginx-*")) <= before
