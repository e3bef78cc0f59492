"""The parity gate judges a real YOLOv8 detector (NudeNet 320n) by its detections, not whole-tensor SQNR.

int8 QDQ of the whole model quantizes the head's final Concat (boxes in pixels and class scores in [0, 1])
with one per-tensor scale: the class scores collapse while box coordinates keep the whole-output SQNR
high. The gate must refuse it; the same int8 model with the head kept in float must pass.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from converters.data import Dataset
from converters.parity import INT8_GATE, compare_outputs, parity_report, summary_metrics
from tests.converters.detections import my_detections, my_matches, my_sqnr
from tests.converters.zoo import letterbox_nchw, photos, zoo_file

pytestmark = pytest.mark.slow


class Detector:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.float = zoo_file("yolov8n-nudenet")
        self.x = np.stack([letterbox_nchw(image, 320) for image in photos()])
        self.data = Dataset(arrays={"images": self.x}, source="photos", indices=np.arange(18), source_size=18)
        self.broken = root / "int8_all.onnx"
        self.good = root / "int8_float_head.onnx"
        self._quantize(self.broken, ())
        head = [
            n.name
            for n in onnx.load(str(self.float)).graph.node
            if n.name.startswith("/model.22/") and n.op_type in ("Sigmoid", "Concat", "Mul", "Split", "Slice")
        ]
        self._quantize(self.good, tuple(head))

    def _quantize(self, path: Path, exclude: tuple[str, ...]) -> None:
        from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

        x = self.x

        class Reader(CalibrationDataReader):
            def __init__(self) -> None:
                self.feeds = iter([{"images": x[i : i + 1]} for i in range(len(x))])

            def get_next(self) -> dict[str, np.ndarray] | None:
                return next(self.feeds, None)

        logging.disable(logging.WARNING)  # onnxruntime's advice to pre-process
        try:
            quantize_static(
                str(self.float),
                str(path),
                Reader(),
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                nodes_to_exclude=list(exclude),
            )
        finally:
            logging.disable(logging.NOTSET)


@pytest.fixture(scope="module")
def detector(tmp_path_factory: pytest.TempPathFactory) -> Detector:
    return Detector(tmp_path_factory.mktemp("nudenet"))


def run(path: Path, x: np.ndarray) -> dict[str, np.ndarray]:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return {"output0": np.asarray(session.run(None, {"images": x})[0])}


# ---- tests ---------------------------------------------------------------------------------------------


def test_broken_int8_detector_fails_the_gate_though_whole_output_sqnr_passes(detector: Detector) -> None:
    report = parity_report(detector.float, detector.broken, detector.data, gate=INT8_GATE)
    (output,) = report["outputs"]
    assert output["role"] == "detection"  # inferred from [1, 22, 2100]
    assert output["sqnr_db"] >= INT8_GATE.min_sqnr_db  # the old gate would have passed it
    assert output["role_metrics"]["score_sqnr_db"] < 10.0
    assert not report["passed"]
    assert any("detection recall" in f for f in report["failures"])
    assert output["thresholds"]["min_recall"] == 0.90
    summary = summary_metrics(report)
    assert summary["objective_metric"] == "output0: detection F1"
    assert summary["objective"] == pytest.approx(output["role_metrics"]["f1"])


def test_int8_detector_with_its_head_in_float_passes(detector: Detector) -> None:
    report = parity_report(detector.float, detector.good, detector.data, gate=INT8_GATE)
    assert report["passed"], report["failures"]
    broken = parity_report(detector.float, detector.broken, detector.data, gate=INT8_GATE)
    assert summary_metrics(report)["objective"] > summary_metrics(broken)["objective"]


@pytest.mark.parametrize("which", ["broken", "good"])
def test_detection_metrics_match_an_independent_decoder(detector: Detector, which: str) -> None:
    ref = run(detector.float, detector.x)["output0"]
    cand = run(getattr(detector, which), detector.x)["output0"]
    (m,) = compare_outputs({"output0": ref}, {"output0": cand})
    role = m.role_metrics
    refs = [my_detections(ref[i]) for i in range(len(ref))]
    cands = [my_detections(cand[i]) for i in range(len(cand))]
    matched = sum(my_matches(r, c) for r, c in zip(refs, cands, strict=True))
    assert role["reference_per_image"] == [len(r) for r in refs]
    assert role["candidate_per_image"] == [len(c) for c in cands]
    assert role["matched"] == matched
    assert role["recall"] == pytest.approx(matched / sum(map(len, refs)))
    assert role["precision"] == pytest.approx(matched / sum(map(len, cands)))
    assert role["reference_images_with_detections"] == sum(1 for r in refs if r)
    assert role["score_sqnr_db"] == pytest.approx(my_sqnr(ref[:, 4:], cand[:, 4:]), abs=1e-6)
    assert role["box_sqnr_db"] == pytest.approx(my_sqnr(ref[:, :4], cand[:, :4]), abs=1e-6)


def test_declared_thresholds_change_the_decoding(detector: Detector) -> None:
    from converters.roles import parse_role_option

    ref = run(detector.float, detector.x)
    role = parse_role_option("output0=detection,score=0.5,iou=0.3,max=2")
    (m,) = compare_outputs(ref, ref, roles={"output0": role})
    assert m.role_metrics["decoding"]["score_threshold"] == 0.5
    assert max(m.role_metrics["reference_per_image"]) <= 2
    assert m.role_metrics["recall"] == m.role_metrics["precision"] == 1.0


def test_cli_parity_refuses_the_broken_detector_and_prints_detections(
    detector: Detector, tmp_path: Path
) -> None:
    from edgekit.cli import cli as main

    data = tmp_path / "x.npy"
    np.save(data, detector.x)
    result = CliRunner().invoke(
        main,
        [
            "parity",
            str(detector.float),
            str(detector.broken),
            "--data",
            str(data),
            "--role",
            "output0=detection,score=0.25,iou=0.45",
            "--html",
            str(tmp_path / "r.html"),
        ],
    )
    assert result.exit_code == 1, result.output
    assert "output0 (detection)" in result.output
    assert "detections: recall" in result.output
    assert "failed: output0: detection recall" in result.output
    page = (tmp_path / "r.html").read_text()
    assert "Output roles" in page and "Role thresholds" in page and "min_recall 0.90" in page


def test_cli_refuses_a_role_with_an_unknown_key(detector: Detector, tmp_path: Path) -> None:
    from edgekit.cli import cli as main

    data = tmp_path / "x.npy"
    np.save(data, detector.x[:2])
    result = CliRunner().invoke(
        main,
        [
            "parity",
            str(detector.float),
            str(detector.float),
            "--data",
            str(data),
            "--role",
            "output0=detection,nms=1",
        ],
    )
    assert result.exit_code == 1
    assert "keys: score, iou" in result.output
    assert "Traceback" not in result.output
