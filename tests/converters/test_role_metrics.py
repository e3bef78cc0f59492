"""Role metrics on real models, each checked against an independent computation written here.

sequence: PP-OCRv4's CTC recognizer on rendered text, float vs dynamic int8; segmentation: MediaPipe's
selfie segmenter on photos, clean vs noisy photos; embedding: synthetic vectors (no embedding model is
at hand); regression: synthetic landmarks.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from converters.parity import INT8_GATE, compare_outputs, evaluate_gate, summary_metrics
from converters.roles import infer_role, parse_role_option
from device_runtime.decode import ctc_text
from device_runtime.preprocess import OutputSpec
from tests.converters.zoo import photos, zoo_file

WORDS = ["HELLO 2026", "edgekit", "parity gate", "Quantize me", "OCR works", "42 boxes", "nudenet", "Zebra"]


def my_ctc(logits: np.ndarray, blank: int = 0) -> list[int]:
    out, last = [], None
    for t in range(logits.shape[0]):
        best = max(range(logits.shape[1]), key=lambda c: logits[t, c])
        if best != last and best != blank:
            out.append(best)
        last = best
    return out


def render(text: str) -> np.ndarray:
    """Black text on white, 48 x 320, PP-OCR's normalisation ((x / 255 - 0.5) / 0.5), CHW."""
    import matplotlib
    from PIL import Image, ImageDraw, ImageFont

    font = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
    image = Image.new("RGB", (320, 48), "white")
    ImageDraw.Draw(image).text((8, 8), text, fill="black", font=ImageFont.truetype(str(font), 28))
    x = np.asarray(image, np.float32).transpose(2, 0, 1) / 255.0
    return (x - 0.5) / 0.5


@pytest.fixture(scope="module")
def ocr(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, list[str]]:
    import onnx
    from onnxruntime.quantization import quantize_dynamic

    root = tmp_path_factory.mktemp("ocr")
    model = zoo_file("ppocrv4-rec")
    meta = {p.key: p.value for p in onnx.load(str(model)).metadata_props}
    charset = ["<blank>", *meta["character"].splitlines(), " "]
    int8 = root / "rec_int8.onnx"
    quantize_dynamic(str(model), str(int8), op_types_to_quantize=["MatMul"])  # its Convs take no int8
    return model, int8, charset


def run(path: Path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return np.concatenate([session.run(None, {name: x[i : i + 1]})[0] for i in range(len(x))])


@pytest.mark.slow
def test_sequence_metrics_match_an_independent_ctc_decode(ocr: tuple[Path, Path, list[str]]) -> None:
    model, int8, charset = ocr
    x = np.stack([render(w) for w in WORDS])
    ref, cand = run(model, x), run(int8, x)
    assert ref.shape[0] == len(WORDS) and ref.shape[2] == len(charset)
    read = [ctc_text(my_ctc(r), charset) for r in ref]
    assert sum(r == w for r, w in zip(read, WORDS, strict=True)) >= 6  # the float model reads the text
    role = parse_role_option("out=sequence,blank=0")
    (m,) = compare_outputs({"out": ref}, {"out": cand}, roles={"out": role})
    assert m.role == "sequence"
    assert m.role_metrics["step_agreement"] == pytest.approx(np.mean(ref.argmax(-1) == cand.argmax(-1)))
    exact = np.mean([my_ctc(r) == my_ctc(c) for r, c in zip(ref, cand, strict=True)])
    assert m.role_metrics["exact_rate"] == pytest.approx(exact)
    (same,) = compare_outputs({"out": ref}, {"out": ref}, roles={"out": role})
    assert same.role_metrics["exact_rate"] == 1.0 and not evaluate_gate([same], INT8_GATE)


@pytest.mark.slow
def test_segmentation_miou_matches_an_independent_computation(tmp_path: Path) -> None:
    from PIL import Image

    from device_runtime.engines import load_engine

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    model = zoo_file("mediapipe-selfie-segmentation")
    engine = load_engine(model)
    x = np.stack(
        [np.asarray(Image.fromarray(p).resize((256, 256)), np.float32) / 255.0 for p in photos()[:9]]
    )
    noisy = np.clip(x + np.random.default_rng(0).normal(0, 0.15, x.shape).astype(np.float32), 0, 1)
    (name,) = [o.name for o in engine.outputs]
    ref = np.concatenate([engine.run({"input_1": x[i : i + 1]})[name] for i in range(len(x))])
    cand = np.concatenate([engine.run({"input_1": noisy[i : i + 1]})[name] for i in range(len(x))])
    role = OutputSpec(name=name, kind="segmentation")
    (m,) = compare_outputs({name: ref}, {name: cand}, roles={name: role})
    r, c = ref[..., 0] >= 0.5, cand[..., 0] >= 0.5
    ious = [np.sum(r & c) / np.sum(r | c), np.sum(~r & ~c) / np.sum(~r | ~c)]
    assert m.role_metrics["miou"] == pytest.approx(np.mean(ious))
    assert m.role_metrics["pixel_agreement"] == pytest.approx(np.mean(r == c))
    assert 0.0 < m.role_metrics["miou"] < 1.0


def test_multiclass_segmentation_takes_the_argmax_over_the_class_axis() -> None:
    rng = np.random.default_rng(1)
    ref = rng.normal(size=(4, 3, 16, 16)).astype(np.float32)
    cand = ref + rng.normal(0, 0.5, ref.shape).astype(np.float32)
    role = parse_role_option("seg=segmentation,axis=0")
    (m,) = compare_outputs({"seg": ref}, {"seg": cand}, roles={"seg": role})
    a, b = ref.argmax(1), cand.argmax(1)
    mine = np.mean([np.sum((a == k) & (b == k)) / np.sum((a == k) | (b == k)) for k in range(3)])
    assert m.role_metrics["miou"] == pytest.approx(mine)


def test_embedding_cosine_and_neighbours_match_an_independent_computation() -> None:
    rng = np.random.default_rng(2)
    ref = rng.normal(size=(40, 64)).astype(np.float32)
    cand = ref + rng.normal(0, 0.3, ref.shape).astype(np.float32)
    (m,) = compare_outputs(
        {"e": ref}, {"e": cand}, roles={"e": OutputSpec(name="e", kind="embedding", top_k=3)}
    )
    cos = [float(p @ q / np.linalg.norm(p) / np.linalg.norm(q)) for p, q in zip(ref, cand, strict=True)]
    assert m.role_metrics["mean_cosine"] == pytest.approx(np.mean(cos), rel=1e-5)
    assert m.role_metrics["min_cosine"] == pytest.approx(min(cos), rel=1e-5)

    def nearest(v: np.ndarray, i: int) -> set[int]:
        sims = sorted(
            (
                (float(v[i] @ v[j] / np.linalg.norm(v[i]) / np.linalg.norm(v[j])), j)
                for j in range(len(v))
                if j != i
            ),
            key=lambda t: -t[0],
        )
        return {j for _, j in sims[:3]}

    mine = np.mean([len(nearest(ref, i) & nearest(cand, i)) / 3 for i in range(len(ref))])
    assert m.role_metrics["neighbour_agreement"] == pytest.approx(mine)
    failures = evaluate_gate([m], INT8_GATE)
    assert any("embedding mean cosine" in f for f in failures)


def test_regression_relative_error_is_judged_and_is_the_objective() -> None:
    ref = np.random.default_rng(3).uniform(0, 256, size=(8, 468 * 3)).astype(np.float32)
    cand = ref * 1.08  # 21.9 dB: the whole-tensor SQNR floor passes, the role check does not
    role = parse_role_option("landmarks=regression")
    (m,) = compare_outputs({"landmarks": ref}, {"landmarks": cand}, roles={"landmarks": role})
    assert m.role_metrics["relative_error"] == pytest.approx(0.08, rel=1e-4)
    assert evaluate_gate([m], INT8_GATE) == ["landmarks: regression relative error 0.0800 > 0.0500"]
    report = {"passed": False, "outputs": [{**m.__dict__}]}
    assert summary_metrics(report)["objective"] == pytest.approx(0.92, rel=1e-4)


@pytest.mark.parametrize(
    ("shape", "kind"),
    [
        pytest.param((1, 22, 2100), "detection", id="yolo-head"),
        pytest.param((1, 2100, 22), "detection", id="yolo-head-transposed"),
        pytest.param((8, 10), "classification", id="logits"),
        pytest.param((1, 40, 6625), "tensor", id="sequence-needs-a-declaration"),
        pytest.param((1, 84, 8400), "detection", id="coco-yolov8-640"),
        pytest.param((1, 25, 6625), "tensor", id="short-sequence"),
        pytest.param((1, 256, 256, 1), "tensor", id="mask-needs-a-declaration"),
        pytest.param((8, 1), "tensor", id="one-value"),
    ],
)
def test_role_is_inferred_from_shape_only_when_unambiguous(shape: tuple[int, ...], kind: str) -> None:
    assert infer_role("y", shape).kind == kind


def test_boxes_and_scores_outputs_are_judged_together() -> None:
    rng = np.random.default_rng(4)
    corners = rng.uniform(0, 200, size=(3, 50, 2)).astype(np.float32)
    boxes = np.concatenate(
        [corners, corners + rng.uniform(10, 60, size=(3, 50, 2)).astype(np.float32)], axis=2
    )
    scores = rng.uniform(0, 1, size=(3, 50, 4)).astype(np.float32)
    role = parse_role_option("boxes=detection,format=boxes,scores=scores")
    ref = {"boxes": boxes, "scores": scores}
    cand = {"boxes": boxes + 1.0, "scores": scores}
    metrics = {m.name: m for m in compare_outputs(ref, cand, roles={"boxes": role})}
    assert metrics["scores"].role == "tensor"  # judged with its boxes, not guessed to be a YOLO head
    assert metrics["boxes"].role_metrics["recall"] == 1.0
    assert metrics["boxes"].role_metrics["score_sqnr_db"] == 100.0
