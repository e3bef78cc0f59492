"""Tests for converters.report_html."""

from __future__ import annotations

import base64
import copy
import re
from pathlib import Path
from typing import Any

import pytest

import signing.atomic
from converters import report_html
from converters.report_html import render_html, write_html

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def full_report() -> dict[str, Any]:
    """A report with every optional section present."""
    return {
        "schema": "edgekit.parity/v1",
        "reference": {"path": "model.onnx", "sha256": "ab12" * 16, "engine": "onnxruntime"},
        "candidate": {"path": "model.int8.onnx", "sha256": "cd34" * 16, "engine": "onnxruntime"},
        "samples": 297,
        "gate": {"min_agreement": 0.99, "max_drop_pp": 1.0, "min_sqnr_db": 20.0, "min_cosine": None},
        "passed": False,
        "failures": ["logits: SQNR 18.07 dB < 20.00 dB"],
        "outputs": [
            {
                "name": "logits",
                "classification": True,
                "agreement": 0.9899,
                "sqnr_db": 18.07,
                "cosine": 0.992,
                "max_abs_error_norm": 0.12,
                "accuracy_reference": 0.992,
                "accuracy_candidate": 0.985,
                "accuracy_drop_pp": 0.7,
                "error_histogram": {"bin_edges": [0.0, 0.01, 0.02, 0.03, 0.04], "counts": [120, 40, 0, 3]},
            },
            {
                "name": "embedding",
                "classification": False,
                "agreement": None,
                "sqnr_db": 25.0,
                "cosine": 0.999,
                "max_abs_error_norm": 0.03,
                "error_histogram": {"bin_edges": [0.0, 0.5, 1.0], "counts": [10, 2]},
            },
        ],
        "per_tensor_sqnr": [
            {"tensor": "conv1_out", "node": "conv1", "op_type": "Conv", "sqnr_db": 31.2},
            {"tensor": "dense_out", "node": "dense_1/MatMul", "op_type": "MatMul", "sqnr_db": 15.0},
            {"tensor": "x", "node": "id", "op_type": "Identity", "sqnr_db": float("inf")},
        ],
        "repair": {
            "quantizable_nodes": 12,
            "excluded_nodes": ["dense_1/MatMul"],
            "kept_int8": 11,
            "evaluations": 4,
            "before": {"passed": False, "agreement": 0.98, "sqnr_db": 18.0, "accuracy_drop_pp": 0.7},
            "after": {"passed": True, "agreement": 0.997, "sqnr_db": 27.5, "accuracy_drop_pp": 0.0},
            "candidates": [
                {"excluded": 0, "passed": False, "sqnr_db": 18.0, "agreement": 0.98},
                {"excluded": 1, "passed": True, "sqnr_db": 27.5, "agreement": 0.997},
            ],
        },
        "latency": {
            "batch_sizes": [1, 32],
            "reference_ms": {"1": 0.16, "32": 4.3},
            "candidate_ms": {"1": 0.14, "32": 4.2},
            "ratio": {"1": 1.14, "32": 1.02},
            "slower": False,
            "allowed_slower": False,
        },
    }


def minimal_report() -> dict[str, Any]:
    """A report with only the required keys."""
    return {
        "schema": "edgekit.parity/v1",
        "reference": {"path": "m.onnx", "sha256": "00ff", "engine": "onnxruntime"},
        "candidate": {"path": "m.int8.onnx", "sha256": "ff00", "engine": "onnxruntime"},
        "samples": 10,
        "gate": {"min_agreement": 0.99, "max_drop_pp": None, "min_sqnr_db": None, "min_cosine": None},
        "passed": True,
        "failures": [],
        "outputs": [
            {
                "name": "y",
                "classification": False,
                "agreement": None,
                "sqnr_db": 40.0,
                "cosine": 1.0,
                "max_abs_error_norm": 0.001,
            }
        ],
    }


def _images(page: str) -> list[bytes]:
    pattern = r'<img[^>]*src="data:image/png;base64,([A-Za-z0-9+/=]+)"'
    return [base64.b64decode(m) for m in re.findall(pattern, page)]


def test_full_report_sections_and_images() -> None:
    page = render_html(full_report())
    assert page.startswith("<!DOCTYPE html>")
    assert "FAIL" in page and 'class="badge fail"' in page
    for heading in (
        "What was compared",
        "Gate",
        "Failures",
        "Outputs",
        "Error histogram",
        "Per-layer SQNR",
        "Repair",
        "Candidates evaluated",
        "Before / after",
        "Latency",
    ):
        assert heading in page, heading
    assert "logits: SQNR 18.07 dB &lt; 20.00 dB" in page
    assert "ab12ab12ab12" in page and "ab12" * 16 not in page
    # Failing SQNR (18.07 < 20) highlighted; agreement 98.99% < 99% highlighted.
    assert '<td class="bad">18.07</td>' in page
    assert '<td class="bad">98.99%</td>' in page
    assert "1.14×" in page
    assert "slower than the reference" not in page
    imgs = page.count("<img")
    # 2 histograms + per-layer chart + repair chart.
    assert imgs == 4
    decoded = _images(page)
    assert len(decoded) == 4
    assert all(d.startswith(PNG_MAGIC) for d in decoded)
    # Self-contained: no external references.
    assert "http://" not in page and "https://" not in page and "<script" not in page


def test_pass_badge_and_slower_warning() -> None:
    rep = full_report()
    rep["passed"] = True
    rep["failures"] = []
    rep["latency"]["slower"] = True
    rep["latency"]["ratio"] = {"1": 0.8, "32": 0.9}
    page = render_html(rep)
    assert 'class="badge pass"' in page and "PASS" in page
    assert "slower than the reference" in page
    assert '<td class="bad">0.80×</td>' in page


def test_minimal_report_has_no_optional_sections() -> None:
    page = render_html(minimal_report())
    assert 'class="badge pass"' in page
    assert "What was compared" in page and "Outputs" in page
    for absent in ("Per-layer SQNR", "Repair", "Latency", "Error histogram", "<img"):
        assert absent not in page, absent


def test_defensive_against_nulls_and_missing() -> None:
    rep = minimal_report()
    rep.update({"per_tensor_sqnr": None, "repair": None, "latency": None, "failures": None})
    rep["gate"] = None
    rep["outputs"] = [{"name": None, "error_histogram": {"bin_edges": [0.0], "counts": []}}, "junk"]
    rep["reference"] = {}
    page = render_html(rep)
    assert "Repair" not in page and "<img" not in page
    page2 = render_html({"repair": {}, "latency": {}, "per_tensor_sqnr": [{"node": "a"}]})
    assert "FAIL" in page2 and "Repair" in page2 and "Latency" in page2


def test_escapes_malicious_strings() -> None:
    rep = full_report()
    evil = "<script>alert(1)</script>"
    rep["outputs"][0]["name"] = evil
    rep["per_tensor_sqnr"][0]["node"] = evil
    rep["repair"]["excluded_nodes"] = [evil]
    rep["reference"]["path"] = evil
    rep["failures"] = [evil]
    rep["per_tensor_sqnr"][1]["node"] = r"$\notacommand{$"
    page = render_html(rep)
    assert "<script" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page


def test_write_html_atomic_no_temp_files(tmp_path: Path) -> None:
    out = tmp_path / "report.html"
    write_html(full_report(), out)
    assert out.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")
    write_html(minimal_report(), str(out))
    assert "Repair" not in out.read_text(encoding="utf-8")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.html"]


def test_write_html_failure_keeps_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "report.html"
    out.write_text("old", encoding="utf-8")

    def boom(_report: Any) -> str:
        raise RuntimeError("render failed")

    monkeypatch.setattr(report_html, "render_html", boom)
    with pytest.raises(RuntimeError):
        write_html(full_report(), out)
    assert out.read_text(encoding="utf-8") == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.html"]


def test_write_html_replace_failure_cleans_temp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "report.html"
    out.write_text("old", encoding="utf-8")

    def fail_replace(*_a: Any) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(signing.atomic.os, "replace", fail_replace)  # write_html's atomic write
    with pytest.raises(OSError):
        write_html(full_report(), out)
    assert out.read_text(encoding="utf-8") == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.html"]


def test_figures_closed_and_input_not_mutated() -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rep = full_report()
    before = copy.deepcopy(rep)
    n = len(plt.get_fignums())
    render_html(rep)
    assert len(plt.get_fignums()) == n
    assert rep == before
