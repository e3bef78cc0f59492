"""Smoke test of `python -m bench.server --quick`: it runs and writes every figure. No timing thresholds.

Benchmarks are not assertions: this checks only that the bench produces its figures and
that every telemetry event the server acknowledged is in the database.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_quick_server_bench_writes_positive_figures(tmp_path: Path) -> None:
    out = tmp_path / "tmp.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    completed = subprocess.run(
        [sys.executable, "-m", "bench.server", "--quick", "--json", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert completed.returncode == 0, completed.stdout[-2000:] + completed.stderr[-4000:]
    assert "baseline: " in completed.stdout
    results = json.loads(out.read_text(encoding="utf-8"))
    assert results["mode"] == "quick"
    assert results["baseline"] and results["edgekit_server"]
    measurements = results["measurements"]
    assert set(measurements) == {
        "polls_edgekit",
        "polls_baseline",
        "telemetry_sqlite",
        "insert_baseline_sqlite",
    }
    for figures in measurements.values():
        assert figures["requests"] > 0
        assert figures["requests_per_s"] > 0
        assert figures["p50_ms"] > 0 and figures["p99_ms"] >= figures["p50_ms"]
        assert figures["errors"] == 0
    telemetry = measurements["telemetry_sqlite"]
    assert telemetry["events_per_s"] > 0
    assert telemetry["stored"]["match"] is True
    assert telemetry["stored"]["events"] == telemetry["stored"]["acknowledged_events"] > 0
    assert results["stored_matches_acknowledged"] is True
    for target in results["targets"]:
        assert target["verdict"] in ("PASS", "MISS", "info")
