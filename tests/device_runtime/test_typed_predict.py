"""`predict` shows each output as its role: a real NudeNet detector bundle, and postprocess per role."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from device_runtime.preprocess import parse_output, postprocess
from tests.converters.detections import my_detections
from tests.converters.zoo import zoo_file
from tests.device_runtime.test_device_cli import as_json, cli, ok
from tests.host_tools import needs_host

LABELS = [
    "FEMALE_GENITALIA_COVERED",
    "FACE_FEMALE",
    "BUTTOCKS_EXPOSED",
    "FEMALE_BREAST_EXPOSED",
    "FEMALE_GENITALIA_EXPOSED",
    "MALE_BREAST_EXPOSED",
    "ANUS_EXPOSED",
    "FEET_EXPOSED",
    "BELLY_COVERED",
    "FEET_COVERED",
    "ARMPITS_COVERED",
    "ARMPITS_EXPOSED",
    "FACE_MALE",
    "BELLY_EXPOSED",
    "MALE_GENITALIA_EXPOSED",
    "ANUS_COVERED",
    "FEMALE_BREAST_COVERED",
    "BUTTOCKS_COVERED",
]  # fmt: skip  (NudeNet's own label order)


@pytest.mark.slow
@needs_host("skimage", why="the zoo's NudeNet detector on a scikit-image photo")
def test_predict_prints_detections_with_labels_after_nms(tmp_path: Path) -> None:
    from PIL import Image

    from device_runtime.preprocess import load_spec, preprocess_image
    from edgekit.bundle_build import BundleRequest, build_bundle
    from signing.keys import generate_keypair

    skimage_data = pytest.importorskip("skimage.data")
    model = zoo_file("yolov8n-nudenet")
    spec_path = tmp_path / "preprocess.json"
    spec_path.write_text(
        json.dumps(
            {
                "schema": "edgekit.preprocess/v1",
                "inputs": [
                    {
                        "name": "images",
                        "kind": "image",
                        "size": [320, 320],
                        "layout": "NCHW",
                        "resize": "letterbox",
                    }
                ],
                "outputs": [
                    {"name": "output0", "kind": "detection", "labels": "labels.txt", "iou_threshold": 0.45}
                ],
            }
        )
    )
    (tmp_path / "labels.txt").write_text("\n".join(LABELS) + "\n")
    photos = tmp_path / "photos"
    photos.mkdir()
    photo = photos / "astronaut.png"
    Image.fromarray(skimage_data.astronaut()).save(photo)
    key, pub = generate_keypair(tmp_path / "keys", name="release")
    bundle = tmp_path / "nudenet.ekb"
    build_bundle(
        BundleRequest(
            model=model,
            output=bundle,
            name="nudenet",
            version="3.4.2",
            keys=[key],
            preprocess=spec_path,
            labels=tmp_path / "labels.txt",
            golden=photos,  # the head's size follows the image's: golden vectors from a real photo
            created="2026-11-23T00:00:00Z",
        )
    )
    store = tmp_path / "store"
    ok(cli(store, pub, "install", str(bundle)))
    shown = as_json(cli(store, pub, "predict", str(photo), "--json"))
    found = shown["decoded"]["output0"]["detections"]
    assert shown["top_k"] == []  # no argmax over a flattened detection head

    import onnxruntime as ort

    x = preprocess_image(load_spec(spec_path).inputs[0], photo)  # type: ignore[arg-type]
    head = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"]).run(None, {"images": x})[0][0]
    mine = my_detections(head)
    assert [d["label"] for d in found] == [LABELS[c] for _, _, c in mine]
    assert [d["score"] for d in found] == pytest.approx([s for _, s, _ in mine], abs=1e-5)
    assert np.allclose([d["box"] for d in found], [b for b, _, _ in mine], atol=0.01)
    assert "FACE_FEMALE" in [d["label"] for d in found]
    text = ok(cli(store, pub, "predict", str(photo))).stdout
    assert f"output0 (detection): {len(found)} detection(s)" in text
    assert "FACE_FEMALE: " in text and " at [" in text


def test_postprocess_decodes_each_role() -> None:
    charset = ["<blank>", "a", "b", " "]
    text = np.eye(4, dtype=np.float32)[[1, 1, 0, 1, 3, 2]][np.newaxis]
    (seq,) = postprocess(parse_output({"name": "t", "kind": "sequence"}), text, labels=charset)
    assert seq.decoded == {"role": "sequence", "tokens": [1, 1, 3, 2], "text": "aa b"}

    mask = np.zeros((1, 4, 4, 1), np.float32)
    mask[0, :1] = 0.9
    (seg,) = postprocess(parse_output({"name": "m", "kind": "segmentation"}), mask, labels=["bg", "person"])
    assert seg.decoded == {"role": "segmentation", "shape": [4, 4], "shares": {"bg": 0.75, "person": 0.25}}

    (emb,) = postprocess(parse_output({"name": "e", "kind": "embedding"}), np.array([[3.0, 4.0]]))
    assert emb.decoded == {"role": "embedding", "dim": 2, "norm": 5.0}

    (reg,) = postprocess(
        parse_output({"name": "r", "kind": "regression"}), np.array([[1.5, -2.0]]), labels=["x", "y"]
    )
    assert reg.decoded == {"role": "regression", "values": {"x": 1.5, "y": -2.0}, "count": 2}

    (raw,) = postprocess(parse_output({"name": "z", "kind": "tensor"}), np.ones((1, 3)))
    assert raw.decoded is None and raw.indices == ()


def test_a_detection_output_of_the_wrong_shape_is_an_input_error() -> None:
    from device_runtime.errors import InputError

    with pytest.raises(InputError, match="cannot be decoded as detection"):
        postprocess(parse_output({"name": "d", "kind": "detection"}), np.ones((1, 3, 10)))
