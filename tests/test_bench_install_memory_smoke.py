"""Smoke test of `python -m bench.install_memory --quick`: it runs and writes its figures. No thresholds."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ZOO = Path(os.environ.get("EDGEKIT_ZOO", "/root/.cache/edgekit/zoo/wheels"))


@pytest.mark.slow
@pytest.mark.skipif(
    not sorted(ZOO.glob("rapidocr_onnxruntime-1.4.4-*.whl")), reason="rapidocr wheel not cached"
)
def test_quick_install_memory_bench_writes_peak_rss_against_its_baselines(tmp_path: Path) -> None:
    out = tmp_path / "install_memory.json"
    completed = subprocess.run(
        [sys.executable, "-m", "bench.install_memory", "--quick", "--json", str(out)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "3"},
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr[-4000:]
    figures = json.loads(out.read_text())
    assert figures["baseline_session_kib"] > 0 and figures["baseline_inference_kib"] > 0
    install = figures["install"]
    assert install["peak_kib"] > 0 and install["bundle_bytes"] > figures["model_bytes"]
    assert install["golden"]["samples"] >= 1 and "install-unbounded" not in figures
