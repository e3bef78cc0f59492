"""The releases `bench/delta.py` diffs: the digits CNN re-released, head-retrained, fine-tuned, retrained.

Every model is the example's Keras CNN (`examples/digits/train.py`: same data, same preprocessing spec),
exported with `converters.export.convert`, int8 models quantized with `quantize_static_onnx` (the `auto`
preset) on 64 calibration images, and every bundle built with `edgekit.bundle_build.build_bundle` (spec,
labels, golden vectors from the held-out images, a fixed `created` stamp), signed with one release key:

    v1          trained `epochs` epochs from seed 0                       (the release devices run)
    rerelease   v1's model bytes again, as a new version                   (same model re-released)
    head        v1 with the convolutions frozen and the Dense head re-initialised and retrained
    finetune    v1 trained two more epochs (all layers, lower learning rate)
    scratch     trained `epochs` epochs from seed 1                         (retrained from scratch)

The folder is a cache keyed by the epoch count: a second run reuses the bundles (training is the slow part).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

ROOT = Path(__file__).resolve().parents[1]
CREATED = "2026-01-01T00:00:00Z"
CALIBRATION_SAMPLES = 64
# (old bundle, new bundle, what changed) for every scenario of the issue.
PAIRS = (
    ("re-release", "v1", "rerelease"),
    ("head-only retrained", "v1", "head"),
    ("fine-tune +2 epochs, fp32", "v1", "finetune"),
    ("fine-tune +2 epochs, int8 re-quantized", "v1.int8", "finetune.int8"),
    ("retrained from scratch", "v1", "scratch"),
)
_COUNTERS = {
    "v1": 1,
    "v1.int8": 1,
    "rerelease": 2,
    "head": 3,
    "finetune": 4,
    "finetune.int8": 4,
    "scratch": 5,
}


def _log(message: str) -> None:
    print(f"[delta] {message}", file=sys.stderr, flush=True)


def _fit(model: Any, x: Any, y: Any, epochs: int, learning_rate: float) -> None:
    import keras

    model.compile(
        keras.optimizers.Adam(learning_rate),  # type: ignore[attr-defined]
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    model.fit(x, y, epochs=epochs, batch_size=32, verbose=0)


def _train_all(folder: Path, epochs: int) -> None:
    """The four Keras models (v1, head, finetune, scratch) and the data files, in `folder`."""
    import keras
    import numpy as np

    from bench.quantize import _import_digits_train
    from device_runtime.preprocess import load_spec, preprocess_images

    train = _import_digits_train()
    (folder / "preprocess.json").write_text(json.dumps(train.SPEC, indent=2) + "\n", encoding="utf-8")
    spec = load_spec(folder / "preprocess.json").inputs[0]
    train_paths, _, labels, _ = train.write_images(folder)
    x = preprocess_images(spec, train_paths)
    np.save(folder / "calib.npy", x[:CALIBRATION_SAMPLES])
    (folder / "labels.txt").write_text("".join(f"digit {i}\n" for i in range(10)))

    keras.utils.set_random_seed(0)
    v1 = train.build_model()
    _fit(v1, x, labels, epochs, 2e-3)
    v1.save(folder / "v1.keras")
    _log("v1 trained")

    head = keras.models.load_model(folder / "v1.keras")
    keras.utils.set_random_seed(1)
    for layer in head.layers:
        if layer.name == "logits":
            kernel, bias = layer.get_weights()
            initializer = keras.initializers.GlorotUniform(seed=1)
            layer.set_weights([np.asarray(initializer(kernel.shape)), np.zeros_like(bias)])
        else:
            layer.trainable = False
    _fit(head, x, labels, 3, 2e-3)
    head.save(folder / "head.keras")
    _log("head retrained")

    finetune = keras.models.load_model(folder / "v1.keras")
    _fit(finetune, x, labels, 2, 5e-4)
    finetune.save(folder / "finetune.keras")
    _log("fine-tuned")

    keras.utils.set_random_seed(1)
    scratch = train.build_model()
    _fit(scratch, x, labels, epochs, 2e-3)
    scratch.save(folder / "scratch.keras")
    _log("retrained from scratch")


def _export_all(folder: Path) -> None:
    """ONNX exports, and int8 models of v1 and finetune."""
    from converters.data import load_dataset
    from converters.export import convert
    from converters.progress import NullProgress
    from converters.quantize_onnx import preprocess_for_quantization, quantize_static_onnx, resolve_preset
    from device_runtime.engines import load_engine

    for name in ("v1", "head", "finetune", "scratch"):
        convert(folder / f"{name}.keras", folder / f"{name}.onnx")
    _log("exported to ONNX")
    inputs = load_engine(folder / "v1.onnx").inputs
    calib = load_dataset(folder / "calib.npy", inputs, max_samples=CALIBRATION_SAMPLES, seed=0)
    config = resolve_preset("auto")
    for name in ("v1", "finetune"):
        pre = preprocess_for_quantization(
            folder / f"{name}.onnx", folder / f"{name}.pre.onnx", NullProgress()
        )
        quantize_static_onnx(pre, folder / f"{name}.int8.onnx", calib, config, progress=NullProgress())
    _log("quantized v1 and finetune to int8")


def _bundle_all(folder: Path) -> dict[str, Path]:
    from edgekit.bundle_build import BundleRequest, build_bundle
    from signing.keys import generate_keypair

    private, _ = generate_keypair(folder / "keys", name="release")
    bundles = {}
    for name, counter in _COUNTERS.items():
        model = folder / ("v1.onnx" if name == "rerelease" else f"{name}.onnx")
        version = f"1.{counter}.0" + ("-int8" if name.endswith("int8") else "")
        result = build_bundle(
            BundleRequest(
                model=model,
                output=folder / f"{name}.ekb",
                name="digits",
                version=version,
                keys=[private],
                preprocess=folder / "preprocess.json",
                labels=folder / "labels.txt",
                golden=folder / "images" / "eval",
                release_counter=counter,
                created=CREATED,
            )
        )
        bundles[name] = result.path
    return bundles


def prepare(cache: Path, *, epochs: int) -> dict[str, Path]:
    """Bundles by scenario name (see the module docstring), built once per `cache`/`epochs`."""
    folder = cache / f"digits-e{epochs}"
    done = folder / "done.json"
    if done.exists():
        names = json.loads(done.read_text())
        return {name: folder / f"{name}.ekb" for name in names}
    folder.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    _train_all(folder, epochs)
    _export_all(folder)
    bundles = _bundle_all(folder)
    done.write_text(json.dumps(sorted(bundles)))
    _log(f"scenario bundles ready in {time.perf_counter() - started:.0f} s: {folder}")
    return bundles
