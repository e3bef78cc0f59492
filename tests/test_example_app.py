"""examples/app/app.py end to end: a real signed image bundle, a folder of PNGs, the app as a subprocess.

Nothing is trained: the model is written with onnx.helper (GRAY 8x8 image -> Flatten -> MatMul -> 10
logits) so that an image whose only lit pixel is pixel k is classified as class k.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
APP = ROOT / "examples" / "app" / "app.py"
SPEC = {
    "schema": "edgekit.preprocess/v1",
    "inputs": [{"name": "image", "kind": "image", "size": [8, 8], "color": "GRAY", "rescale": 1 / 255}],
    "outputs": [{"name": "logits", "kind": "classification", "activation": "softmax", "top_k": 3}],
}
# file name -> lit pixel; the last one is named for class 5 but shows class 2 (one wrong answer)
IMAGES = {"0001_digit0.png": 0, "0002_digit3.png": 3, "0003_digit7.png": 7, "0004_digit5.png": 2}


def write_model(path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weights = np.zeros((64, 10), np.float32)
    weights[np.arange(10), np.arange(10)] = 4.0  # logit k = 4 * pixel k
    graph = helper.make_graph(
        [
            helper.make_node("Flatten", ["image"], ["flat"], axis=1),
            helper.make_node("MatMul", ["flat", "w"], ["logits"]),
        ],
        "pixels",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 8, 8, 1])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])],
        initializer=[numpy_helper.from_array(weights, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model)
    onnx.save(model, path)


def write_images(folder: Path) -> None:
    from PIL import Image

    folder.mkdir(parents=True)
    for name, pixel in IMAGES.items():
        image = np.zeros(64, np.uint8)
        image[pixel] = 255
        Image.fromarray(image.reshape(8, 8), mode="L").save(folder / name)


@pytest.fixture(scope="module")
def example(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from edgekit.bundle_build import BundleRequest, build_bundle
    from signing.keys import generate_keypair

    root = tmp_path_factory.mktemp("example")
    key, pub = generate_keypair(root / "keys", name="release")
    write_model(root / "pixels.onnx")
    write_images(root / "images")
    (root / "preprocess.json").write_text(json.dumps(SPEC), encoding="utf-8")
    (root / "labels.txt").write_text("".join(f"digit {i}\n" for i in range(10)), encoding="utf-8")
    build_bundle(
        BundleRequest(
            model=root / "pixels.onnx",
            output=root / "pixels-1.0.0.ekb",
            name="pixels",
            version="1.0.0",
            keys=[key],
            preprocess=root / "preprocess.json",
            labels=root / "labels.txt",
            golden=root / "images",
            release_counter=1,
            created="2026-11-23T00:00:00Z",
        )
    )
    return {"bundle": root / "pixels-1.0.0.ekb", "pub": pub, "images": root / "images"}


def run_app(example: dict[str, Path], store: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, str(APP), "--store", str(store), "--key", str(example["pub"])]
    command += ["--bundle", str(example["bundle"]), "--images", str(example["images"]), *extra]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False, timeout=300)


@pytest.mark.slow
def test_the_app_installs_classifies_scores_and_reports(example: dict[str, Path], tmp_path: Path) -> None:
    store = tmp_path / "store"
    first = run_app(example, store, "--labels-from-names")
    assert first.returncode == 0, first.stdout + first.stderr
    out = first.stdout
    assert "model: pixels 1.0.0 installed into slot a" in out
    lines = {
        m.group(1): (m.group(2), float(m.group(3)))
        for m in re.finditer(r"^(\S+) -> (.+?) \(([\d.]+)\)", out, re.M)
    }
    assert {name: label for name, (label, _) in lines.items()} == {
        "0001_digit0.png": "digit 0",
        "0002_digit3.png": "digit 3",
        "0003_digit7.png": "digit 7",
        "0004_digit5.png": "digit 2",
    }
    assert all(0.5 < score <= 1.0 for _, score in lines.values())  # softmax of a 4.0 logit among zeros
    assert "WRONG (true class 5)" in out and out.count("WRONG") == 1
    assert "accuracy: 3/4 = 75.0%" in out
    assert re.search(
        r"^trial: 4 successful inferences \(commit needs 20\), \d+ of 60 s, 0 strikes", out, re.M
    )
    queued = int(re.search(r"^telemetry: (\d+) events queued, 0 dropped", out, re.M).group(1))  # type: ignore[union-attr]
    assert queued >= 1 + 4 + 1  # install, four feedback events, the inference aggregate

    second = run_app(example, store)  # same bundle again: no reinstall; no accuracy without names
    assert second.returncode == 0, second.stdout + second.stderr
    assert "(already installed, slot a)" in second.stdout and "accuracy" not in second.stdout
    assert "trial: 8 successful inferences" in second.stdout


@pytest.mark.slow
def test_the_app_refuses_a_bundle_it_cannot_trust(example: dict[str, Path], tmp_path: Path) -> None:
    from signing.keys import generate_keypair

    _, stranger = generate_keypair(tmp_path / "keys", name="stranger")
    result = run_app({**example, "pub": stranger}, tmp_path / "store")
    assert result.returncode == 1 and result.stderr.startswith("error: ")
    assert "Traceback" not in result.stderr
