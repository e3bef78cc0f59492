"""Smoke test of `python -m bench.evaluate --quick`: it runs and writes every figure. No timing thresholds.

Benchmarks are not assertions: this checks only that the bench produces its figures (it once stopped
running unnoticed when the plan contract tightened its target paths).
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
def test_quick_evaluate_bench_writes_both_sizes(tmp_path: Path) -> None:
    out = tmp_path / "evaluate.json"
    completed = subprocess.run(
        [sys.executable, "-m", "bench.evaluate", "--quick", "--json", str(out)],
        cwd=tmp_path,  # nothing may be written into the working directory but what --json names
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr[-4000:]
    assert "stored events" in completed.stdout
    document = json.loads(out.read_text(encoding="utf-8"))
    assert document["backend"] == "sqlite"
    assert [row["stored_events"] for row in document["sizes"]] == [10_000, 100_000]
    for row in document["sizes"]:
        assert len(row["evaluate_ms"]) == 3 and all(ms > 0 for ms in row["evaluate_ms"])
        assert row["recount_median_ms"] > 0 and row["devices_in_arms"] > 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["evaluate.json"]
