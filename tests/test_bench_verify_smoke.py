"""Smoke test of `python -m bench.verify --quick`: it runs and writes every figure. No timing thresholds.

Benchmarks are not assertions: this checks only that the bench produces its figures.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MEASUREMENTS = ("hash", "verify", "hash+copy", "verify+extract")


@pytest.mark.slow
def test_quick_verify_bench_writes_positive_times(tmp_path: Path) -> None:
    out = tmp_path / "tmp.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    completed = subprocess.run(
        [sys.executable, "-m", "bench.verify", "--quick", "--json", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr[-4000:]
    assert "baselines: hashlib.sha256" in completed.stdout
    results = json.loads(out.read_text(encoding="utf-8"))
    assert results["mode"] == "quick"
    assert results["size_mib"] == 20
    assert results["rounds"] == 3
    assert results["extracted_identical"] is True
    for name in MEASUREMENTS:
        assert len(results["times_s"][name]) == 3
        assert all(seconds > 0 for seconds in results["times_s"][name])
        assert results["median_s"][name] > 0
        assert results["mib_per_s"][name] > 0
    assert set(results["targets"]) == {"verify/hash", "verify+extract/(hash+copy)"}
    for row in results["targets"].values():
        assert row["ratio"] > 0
        assert isinstance(row["met"], bool)
