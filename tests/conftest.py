"""Shared fixtures: a real Keras CNN trained on scikit-learn's digits (no downloads), its exports, data files.

Session-scoped so the suite trains and converts once; tests copy what they mutate.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")


@dataclass(frozen=True)
class Digits:
    """Digits as (N, 8, 8, 1) float32 in [0, 1], shuffled once with seed 0, and their labels."""

    x: np.ndarray
    y: np.ndarray


@pytest.fixture(scope="session")
def digits() -> Digits:
    from sklearn.datasets import load_digits

    data = load_digits()
    order = np.random.default_rng(0).permutation(len(data.target))
    x = (data.images[order] / 16.0).astype(np.float32)[..., None]
    return Digits(x=x, y=data.target[order].astype(np.int64))


@pytest.fixture(scope="session")
def keras_digits(tmp_path_factory: pytest.TempPathFactory, digits: Digits) -> Path:
    """A small trained CNN saved as .keras (about 97% accurate)."""
    import keras

    keras.utils.set_random_seed(0)
    layers = keras.layers
    model = keras.Sequential(
        [
            keras.Input((8, 8, 1), name="image"),
            layers.Conv2D(16, 3, padding="same", activation="relu"),
            layers.Conv2D(32, 3, padding="same", activation="relu"),
            layers.MaxPooling2D(),
            layers.Flatten(),
            layers.Dense(10, name="logits"),
        ]
    )
    model.compile(keras.optimizers.Adam(3e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(digits.x[:1400], digits.y[:1400], epochs=6, batch_size=32, verbose=0)
    path = tmp_path_factory.mktemp("keras") / "digits.keras"
    model.save(path)
    return path


@pytest.fixture(scope="session")
def digits_onnx(tmp_path_factory: pytest.TempPathFactory, keras_digits: Path) -> Path:
    from converters.export import convert

    path = tmp_path_factory.mktemp("onnx") / "digits.onnx"
    convert(keras_digits, path)
    return path


@pytest.fixture(scope="session")
def data_files(tmp_path_factory: pytest.TempPathFactory, digits: Digits) -> dict[str, Path]:
    """calib.npy (first 1400), eval.npy and eval_labels.npy (the rest)."""
    folder = tmp_path_factory.mktemp("data")
    files = {"calib": folder / "calib.npy", "eval": folder / "eval.npy", "labels": folder / "eval_labels.npy"}
    np.save(files["calib"], digits.x[:1400])
    np.save(files["eval"], digits.x[1400:])
    np.save(files["labels"], digits.y[1400:])
    return files


@pytest.fixture(autouse=True)
def _cli_output_names_only_existing_options(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every edgekit CliRunner run in the suite: the options its output names exist on that command."""
    try:
        from click.testing import CliRunner
    except ImportError:  # the device-only environment (scripts/device_suite.sh): no edgekit CLI to run
        return

    from tests.edgekit.hints import unknown_options

    original = CliRunner.invoke

    def invoke(self: CliRunner, cli: Any, args: Any = None, *rest: Any, **kwargs: Any) -> Any:
        result = original(self, cli, args, *rest, **kwargs)
        if getattr(cli, "name", None) == "cli" and isinstance(args, list | tuple):
            unknown = unknown_options([str(a) for a in args], result.output)
            assert not unknown, (
                f"the output names options {sorted(unknown)} its command lacks:\n{result.output}"
            )
        return result

    monkeypatch.setattr(CliRunner, "invoke", invoke)
