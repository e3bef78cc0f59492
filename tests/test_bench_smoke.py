"""Smoke test of `python -m bench.quantize --quick`: it runs and writes every figure. No timing thresholds.

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


@pytest.mark.slow
def test_quick_bench_writes_both_models_with_positive_figures(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "3"}
    completed = subprocess.run(
        [sys.executable, "-m", "bench.quantize", "--quick", "--json", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr[-4000:]
    assert "baseline: fp32 ONNX model" in completed.stdout
    results = json.loads(out.read_text(encoding="utf-8"))
    assert results["mode"] == "quick"
    assert set(results["host"]["flags"]) == {"avx2", "avx512_vnni", "avx_vnni"}
    assert set(results["models"]) == {"digits", "mobilenetv2"}
    rows = [row for model in results["models"].values() for row in model["configs"]]
    if results["product"]["shipped"]:
        rows.append(results["product"])
    for model in results["models"].values():
        assert [row["config"] for row in model["configs"]] == ["auto", "x86-reduce-range", "auto, per-tensor"]
    for row in rows:
        assert row["fp32_bytes"] > 0
        assert row["int8_bytes"] > 0
        assert row["size_ratio"] > 0
        for batch in ("1", "32"):
            assert row["latency"]["reference_ms"][batch] > 0
            assert row["latency"]["candidate_ms"][batch] > 0
            assert row["latency"]["ratio"][batch] > 0
        assert row["graph"]["float_compute"] + row["graph"]["int8_compute"] > 0
        assert isinstance(row["gate_would_pass"], bool)
