"""Train the digits example: a small Keras CNN on scikit-learn's bundled digits (no downloads).

The 8x8 digits are written as PNG files and read back through the preprocessing spec with the device's
own code (`device_runtime.preprocess`), so the model is trained on exactly the tensors a device will
feed it. Writes into OUT (default examples/digits/build):

    digits.keras          the trained model (32x32 grayscale input named "image", logits "logits")
    preprocess.json       the preprocessing spec (GRAY, stretch to 32x32 bilinear, rescale 1/255)
    images/calib/*.png    calibration images (training split)
    images/eval/*.png     held-out evaluation images; eval.npy / eval_labels.npy hold them preprocessed
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

SPEC = {
    "schema": "edgekit.preprocess/v1",
    "inputs": [
        {
            "name": "image",
            "kind": "image",
            "dtype": "float32",
            "layout": "NHWC",
            "size": [32, 32],
            "color": "GRAY",
            "resize": "stretch",
            "interpolation": "bilinear",
            "rescale": 1 / 255,
            "mean": [0.0],
            "std": [1.0],
        }
    ],
    "outputs": [{"name": "logits", "kind": "classification", "activation": "softmax", "top_k": 3}],
}
EVAL_COUNT = 397


def write_images(out: Path) -> tuple[list[Path], list[Path], np.ndarray, np.ndarray]:
    """Write the digits as 8x8 PNGs (pixel = value * 255 / 16); return train/eval paths and labels."""
    from PIL import Image
    from sklearn.datasets import load_digits

    data = load_digits()
    order = np.random.default_rng(0).permutation(len(data.target))
    images = np.clip(np.round(data.images[order] * 255.0 / 16.0), 0, 255).astype(np.uint8)
    labels = data.target[order].astype(np.int64)
    paths = []
    for index, (image, label) in enumerate(zip(images, labels, strict=True)):
        split = "eval" if index >= len(labels) - EVAL_COUNT else "calib"
        path = out / "images" / split / f"{index:04d}_digit{label}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image, mode="L").save(path)
        paths.append(path)
    cut = len(labels) - EVAL_COUNT
    return paths[:cut], paths[cut:], labels[:cut], labels[cut:]


def build_model() -> object:
    """Conv blocks sized so that int8 pays off on a CPU (most time in 3x3 convolutions)."""
    import keras

    layers = keras.layers
    return keras.Sequential(
        [
            keras.Input((32, 32, 1), name="image"),
            layers.Conv2D(32, 3, padding="same", activation="relu"),
            layers.MaxPooling2D(),
            layers.Conv2D(64, 3, padding="same", activation="relu"),
            layers.Conv2D(64, 3, padding="same", activation="relu"),
            layers.MaxPooling2D(),
            layers.Conv2D(128, 3, padding="same", activation="relu"),
            layers.MaxPooling2D(),
            layers.Flatten(),
            layers.Dense(10, name="logits"),
        ]
    )


def train(out: Path, *, epochs: int = 10, seed: int = 0) -> dict[str, float]:
    """Write images and spec, train, save; return accuracy figures."""
    import keras

    from device_runtime.preprocess import load_spec, preprocess_images

    out.mkdir(parents=True, exist_ok=True)
    (out / "preprocess.json").write_text(json.dumps(SPEC, indent=2) + "\n", encoding="utf-8")
    spec = load_spec(out / "preprocess.json").inputs[0]
    train_paths, eval_paths, train_labels, eval_labels = write_images(out)
    x_train = preprocess_images(spec, train_paths)
    x_eval = preprocess_images(spec, eval_paths)
    np.save(out / "eval.npy", x_eval)
    np.save(out / "eval_labels.npy", eval_labels)
    np.save(out / "calib_labels.npy", train_labels)
    keras.utils.set_random_seed(seed)
    model = build_model()
    model.compile(
        keras.optimizers.Adam(2e-3),  # type: ignore[attr-defined]
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    started = time.time()
    model.fit(x_train, train_labels, epochs=epochs, batch_size=32, verbose=0)  # type: ignore[attr-defined]
    _, accuracy = model.evaluate(x_eval, eval_labels, verbose=0)  # type: ignore[attr-defined]
    model.save(out / "digits.keras")  # type: ignore[attr-defined]
    return {
        "eval_accuracy": float(accuracy),
        "train_seconds": time.time() - started,
        "train_samples": len(train_labels),
        "eval_samples": len(eval_labels),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "build")
    parser.add_argument("--epochs", type=int, default=10)
    args = parser.parse_args()
    from converters._quiet import captured

    # TensorFlow's start-up lines (absl's "All log messages before absl::InitializeLog()", oneDNN's notice)
    # are printed from C++ even with TF_CPP_MIN_LOG_LEVEL=3: the project's capture drops known noise and
    # writes anything else back to stderr when training ends.
    with captured():
        figures = train(args.out, epochs=args.epochs)
    print(
        f"trained digits CNN in {figures['train_seconds']:.0f} s on {figures['train_samples']} images: "
        f"held-out accuracy {100 * figures['eval_accuracy']:.1f}% ({figures['eval_samples']} images)"
    )


if __name__ == "__main__":
    main()
