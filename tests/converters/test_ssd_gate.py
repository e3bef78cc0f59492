"""MediaPipe's BlazeFace (an SSD head: anchor-relative box offsets and score logits) read with the spec's
"ssd" detection format: the device finds the astronaut's face and nothing on the cat or the coffee, and the
parity gate judges the model on the faces it finds (detection F1), not on raw logits alone.

The model is MediaPipe's own (the mediapipe 0.10.14 wheel in the local zoo cache, never downloaded here);
the photos are scikit-image's.
"""

from __future__ import annotations

import json
import zipfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from converters.data import Dataset
from converters.parity import INT8_GATE, compare_outputs, evaluate_gate, parity_report
from device_runtime.engines import load_engine
from device_runtime.preprocess import PreprocessSpec, parse_spec, postprocess, preprocess_image

ZOO = Path("/root/.cache/edgekit/zoo/wheels")
MEDIAPIPE = sorted(ZOO.glob("mediapipe-0.10.14-*.whl"))
MEMBER = "mediapipe/modules/face_detection/face_detection_short_range.tflite"
needs_mediapipe = pytest.mark.skipif(not MEDIAPIPE, reason="mediapipe wheel not in the local zoo cache")

# MediaPipe's face_detection_short_range graph: SsdAnchorsCalculator (4 layers, strides 8, 16, 16, 16,
# fixed anchor size, 2 anchors per layer) and TensorsToDetectionsCalculator (x/y/w/h scale 128, sigmoid
# scores, min score 0.5); its NMS suppresses at overlap 0.3.
SPEC: dict[str, Any] = {
    "schema": "edgekit.preprocess/v1",
    "inputs": [{"name": "input", "kind": "image", "size": [128, 128], "mean": [0.5] * 3, "std": [0.5] * 3}],
    "outputs": [
        {
            "name": "regressors",
            "kind": "detection",
            "format": "ssd",
            "scores": "classificators",
            "anchors": {"size": [128, 128], "strides": [8, 16, 16, 16], "per_layer": 2, "offset": 0.5},
            "score_threshold": 0.5,
            "iou_threshold": 0.3,
        }
    ],
}


@pytest.fixture(scope="module")
def blazeface(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("mediapipe") / Path(MEMBER).name
    with zipfile.ZipFile(MEDIAPIPE[0]) as wheel:
        path.write_bytes(wheel.read(MEMBER))
    return path


@pytest.fixture(scope="module")
def spec() -> PreprocessSpec:
    return parse_spec(SPEC)


@pytest.fixture(scope="module")
def photos() -> dict[str, np.ndarray]:
    skimage_data = pytest.importorskip("skimage.data")
    return {name: np.asarray(getattr(skimage_data, name)()) for name in ("astronaut", "chelsea", "coffee")}


def _batch(spec: PreprocessSpec, images: list[np.ndarray]) -> np.ndarray:
    from PIL import Image

    return np.concatenate([preprocess_image(spec.inputs[0], Image.fromarray(i)) for i in images]).astype(
        np.float32
    )


def _faces(model: Path, spec: PreprocessSpec, image: np.ndarray) -> list[dict[str, Any]]:
    engine = load_engine(model)
    out = engine.run({"input": _batch(spec, [image])})
    (prediction,) = postprocess(
        spec.outputs[0], out["regressors"], labels=["face"], scores=out["classificators"]
    )
    assert prediction.decoded is not None
    return list(prediction.decoded["detections"])


@needs_mediapipe
def test_blazeface_finds_exactly_the_astronauts_face(
    blazeface: Path, spec: PreprocessSpec, photos: dict[str, np.ndarray]
) -> None:
    (face,) = _faces(blazeface, spec, photos["astronaut"])
    assert face["label"] == "face" and face["score"] > 0.75
    # Eileen Collins' face spans about x 170-280, y 70-180 of the 512 x 512 photo: x 42-70, y 17-45 here
    x1, y1, x2, y2 = face["box"]
    assert 36 <= x1 <= 52 and 12 <= y1 <= 28 and 60 <= x2 <= 76 and 36 <= y2 <= 52, face["box"]


@needs_mediapipe
@pytest.mark.parametrize("name", ["chelsea", "coffee"])
def test_blazeface_finds_no_face_on_a_cat_or_a_coffee_cup(
    name: str, blazeface: Path, spec: PreprocessSpec, photos: dict[str, np.ndarray]
) -> None:
    assert _faces(blazeface, spec, photos[name]) == []


def _dataset(spec: PreprocessSpec, photos: dict[str, np.ndarray]) -> Dataset:
    # The astronaut as is, mirrored and cropped; the cat and the cup as they are and cropped (the mirrored
    # cat is left out: MediaPipe's model itself sees a face in it at score 0.51).
    images = [photos["astronaut"][:, ::-1]]
    for image in photos.values():
        h, w = image.shape[:2]
        images += [image, image[h // 16 :, w // 16 :]]
    batch = _batch(spec, images)
    return Dataset(
        arrays={"input": batch}, source="photos", indices=np.arange(len(batch)), source_size=len(batch)
    )


@needs_mediapipe
def test_the_gate_judges_blazeface_on_its_decoded_faces(
    blazeface: Path, spec: PreprocessSpec, photos: dict[str, np.ndarray], tmp_path: Path
) -> None:
    report = parity_report(
        blazeface, blazeface, _dataset(spec, photos), roles={"regressors": spec.outputs[0]}
    )
    assert report["passed"], report["failures"]
    regressors = next(o for o in report["outputs"] if o["name"] == "regressors")
    metrics = regressors["role_metrics"]
    assert regressors["role"] == "detection" and metrics["f1"] == 1.0
    assert metrics["reference_detections"] == 3  # the astronaut, flipped and cropped; no cat or cup
    assert metrics["decoding"]["format"] == "ssd"
    classificators = next(o for o in report["outputs"] if o["name"] == "classificators")
    assert classificators["role"] == "tensor"  # judged with its boxes, not as a detection of its own
    json.dumps(report)  # the report stays JSON


@needs_mediapipe
def test_a_blazeface_whose_boxes_moved_is_refused_on_detection_f1(
    blazeface: Path, spec: PreprocessSpec, photos: dict[str, np.ndarray]
) -> None:
    engine = load_engine(blazeface)
    batch = _dataset(spec, photos).arrays["input"]
    runs = [engine.run({"input": batch[i : i + 1]}) for i in range(len(batch))]  # its batch is one image
    reference = {name: np.concatenate([r[name] for r in runs]) for name in runs[0]}
    moved = {**reference, "regressors": reference["regressors"].copy()}
    moved["regressors"][..., 0] += 14.0  # every box 14 pixels to the right: IoU with a 24-pixel face < 0.5
    metrics = compare_outputs(reference, moved, roles={"regressors": spec.outputs[0]})
    detection = next(m for m in metrics if m.name == "regressors")
    assert detection.role_metrics["f1"] == 0.0
    assert detection.role_metrics["score_sqnr_db"] == 100.0  # the logits are untouched: SQNR alone passes
    failures = evaluate_gate(metrics, INT8_GATE)
    assert any(f.startswith("regressors: detection recall 0.0000 < 0.9000") for f in failures), failures
    assert any(f.startswith("regressors: detection precision") for f in failures), failures


def test_an_ssd_role_on_the_command_line_points_to_the_spec_file() -> None:
    from converters.errors import DataError
    from converters.roles import parse_role_option

    with pytest.raises(DataError, match=r"only the preprocessing spec can declare \(outputs\[\]\.anchors"):
        parse_role_option("regressors=detection,format=ssd,scores=classificators")


# ---------------------------------------------------------------------------------------------- paired scores
# BlazeFace's logits output (classificators) is judged with its boxes by the detection role alone: its raw
# SQNR is shown, not held to the 20 dB whole-tensor floor. These prove the gate is no weaker for it.


@pytest.fixture(scope="module")
def reference(blazeface: Path, spec: PreprocessSpec, photos: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    engine = load_engine(blazeface)
    batch = _dataset(spec, photos).arrays["input"]
    runs = [engine.run({"input": batch[i : i + 1]}) for i in range(len(batch))]  # its batch is one image
    return {name: np.concatenate([r[name] for r in runs]) for name in runs[0]}


def _with_logits(reference: dict[str, np.ndarray], logits: np.ndarray) -> dict[str, np.ndarray]:
    return {**reference, "classificators": logits.astype(np.float32)}


@needs_mediapipe
def test_noisy_background_logits_that_find_the_same_faces_pass_below_the_whole_tensor_floor(
    spec: PreprocessSpec, reference: dict[str, np.ndarray]
) -> None:
    # Up to 30% error on every anchor whose logit is below -5 (a score under 0.007 stays under 0.03): what
    # int8 does to the far background; the faces' anchors are untouched, so every face is found as before.
    logits = reference["classificators"].astype(np.float64)
    background = logits < -5.0
    error = np.random.default_rng(0).uniform(-0.3, 0.3, logits.shape)
    noisy = _with_logits(reference, np.where(background, logits * (1.0 + error), logits))
    metrics = compare_outputs(reference, noisy, roles={"regressors": spec.outputs[0]})
    detection, scores = (
        next(m for m in metrics if m.name == name) for name in ("regressors", "classificators")
    )
    assert scores.sqnr_db < INT8_GATE.min_sqnr_db  # the raw logits miss the floor ...
    assert scores.judged_with == "regressors" and detection.judged_with is None
    assert detection.role_metrics["f1"] == 1.0 and detection.role_metrics["reference_detections"] == 3
    assert detection.role_metrics["score_sqnr_db"] == pytest.approx(scores.sqnr_db)  # ... shown and guarded
    assert detection.role_metrics["matched_score_max_difference"] == 0.0  # the faces' scores are untouched
    assert evaluate_gate(metrics, INT8_GATE) == []  # ... and the same faces pass


def _raise_background(x: np.ndarray) -> np.ndarray:
    raised = x.copy()
    for image in range(3, len(x)):  # the cat and the cup: their 3 likeliest anchors become confident faces
        raised[image, np.argsort(x[image, :, 0])[-3:], 0] = 3.0
    return raised


_BROKEN = {
    # every logit's sign flipped: background anchors become faces, faces background
    "negated": lambda x: -x,
    # every score near the threshold (logit > -2) shifted down by 4: every face is lost, though the raw
    # logits keep an SQNR above 20 dB (the far background dominates their energy)
    "shifted": lambda x: np.where(x > -2.0, x - 4.0, x),
    # a few background anchors of the cat and the cup raised to a confident face: false faces appear
    "raised": _raise_background,
}


@needs_mediapipe
@pytest.mark.parametrize("broken", sorted(_BROKEN))
def test_a_release_whose_scores_are_broken_is_refused_by_the_detection_role_naming_the_scores_output(
    broken: str, spec: PreprocessSpec, reference: dict[str, np.ndarray]
) -> None:
    candidate = _with_logits(reference, _BROKEN[broken](reference["classificators"]))
    metrics = compare_outputs(reference, candidate, roles={"regressors": spec.outputs[0]})
    failures = evaluate_gate(metrics, INT8_GATE)
    assert failures, broken
    # refused by the detection role (never by the logits' own floor, which no longer applies) ...
    assert all(f.startswith("regressors: detection ") for f in failures), failures
    assert all("scores from 'classificators'" in f for f in failures), failures  # ... naming the output
    detection = next(m for m in metrics if m.name == "regressors").role_metrics
    assert detection["f1"] < 0.9, detection
    if broken != "negated":  # the score SQNR alone would pass these: recall or precision refuses them
        assert detection["score_sqnr_db"] >= 10.0, detection


@needs_mediapipe
def test_the_report_shows_the_paired_logits_figures_and_says_they_are_judged_with_their_boxes(
    spec: PreprocessSpec, reference: dict[str, np.ndarray], tmp_path: Path
) -> None:
    import click
    from click.testing import CliRunner

    from converters.parity import summary_metrics
    from converters.report_html import render_html
    from edgekit.commands.parity import print_summary

    logits = reference["classificators"]
    noisy = _with_logits(reference, np.where(logits < -5.0, logits * 1.25, logits))
    metrics = compare_outputs(reference, noisy, roles={"regressors": spec.outputs[0]})
    failures = evaluate_gate(metrics, INT8_GATE)
    report: dict[str, Any] = {
        "schema": "edgekit.parity/v1",
        "reference": {"path": "float.tflite", "engine": "tflite"},
        "candidate": {"path": "int8.tflite", "engine": "tflite"},
        "samples": 7,
        "gate": asdict(INT8_GATE),
        "passed": not failures,
        "failures": failures,
        "outputs": [asdict(m) for m in metrics],
    }
    assert report["passed"], failures
    entry = next(o for o in report["outputs"] if o["name"] == "classificators")
    assert entry["judged_with"] == "regressors" and entry["sqnr_db"] < 20.0
    summary = summary_metrics(report)  # the ladder and the repair chase the detection, not the logits
    assert summary["objective_metric"] == "regressors: detection F1" and summary["objective"] == 1.0
    assert summary["sqnr_db"] == next(o["sqnr_db"] for o in report["outputs"] if o["name"] == "regressors")
    page = render_html(report)
    assert "scores of regressors: judged with its detection output" in page
    assert f"{entry['sqnr_db']:.2f}" in page and '<td class="bad">' not in page  # shown, not flagged

    @click.command()
    def show() -> None:
        print_summary(report)

    text = CliRunner().invoke(show).output
    assert f"classificators (tensor): SQNR {entry['sqnr_db']:.2f} dB" in text
    assert "judged with its detection output 'regressors'" in text and "not gated" in text
    assert "matched scores: SQNR 100.00 dB, max difference 0.0000" in text
