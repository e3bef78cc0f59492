"""`python -m bench` turns bench.zoo's JSON into report rows, numbers and 'n/a' reasons alike."""

from __future__ import annotations

from bench.__main__ import zoo_rows


def test_zoo_rows_report_figures_and_failures() -> None:
    document = {
        "baseline": "fp32, same run",
        "models": [
            {"model": "yolov8n-nudenet", "strategy": {"name": "x86"}, "size_ratio": 3.54,
             "speed_ratio": {"1": 1.9}, "role_metric": {"output0": {"role": "detection", "metric": "sqnr_db",
                                                                    "value": 27.9}},
             "quantize_seconds": 44.0, "bundle_vs_model": 4.3, "install_peak_rss_mib": 134.0},
            {"model": "silero-vad", "quantize": "n/a: IndexError: tuple index out of range",
             "size_ratio": "n/a: no quantized model", "speed_ratio": "n/a: no quantized model"},
            {"model": "mediapipe-face-landmark", "unavailable": "the package index is unreachable"},
        ],
    }
    rows = zoo_rows(document)
    assert [r["status"] for r in rows] == ["PASS", "MISS", "-"]
    assert "3.54x smaller" in rows[0]["value"] and "b1 1.90x" in rows[0]["value"]
    assert "sqnr_db 27.9" in rows[0]["value"]
    assert "IndexError" in rows[1]["value"]
    assert "unreachable" in rows[2]["value"]
