"""Tests for converters.export and converters.torch_export: every conversion route, on real frameworks.

Each export must be written, pass its parity proof (top-1 agreement 100%, SQNR >= 80 dB; >= 40 dB for
float16), load in the device's own engine and predict the same classes as its source on the digits.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

from converters.export import convert
from device_runtime.engines import load_engine
from edgekit.cli import cli

EVAL_ROWS = 200  # digits rows used to compare predictions with the source framework


def assert_parity_passed(
    parity: dict[str, Any], *, min_sqnr: float = 80.0, classification: bool = True
) -> None:
    assert parity["passed"] is True
    assert parity["failures"] == []
    assert parity["sqnr_db"] >= min_sqnr
    if classification:
        assert parity["agreement"] == 1.0


def engine_logits(path: Path, x: np.ndarray) -> np.ndarray:
    """The single classification output of an exported model on `x`, through the device engine."""
    engine = load_engine(path)
    assert len(engine.inputs) == 1
    outputs = engine.run({engine.inputs[0].name: x})
    scores = [v for v in outputs.values() if np.asarray(v).ndim == 2 and np.asarray(v).shape[1] == 10]
    assert len(scores) == 1, {k: np.asarray(v).shape for k, v in outputs.items()}
    return np.asarray(scores[0])


def predicted_classes(path: Path, x: np.ndarray) -> np.ndarray:
    return engine_logits(path, x).argmax(axis=1)


@pytest.fixture(scope="module")
def keras_predictions(keras_digits: Path, digits: Any) -> np.ndarray:
    """Class ids the Keras source predicts on the first EVAL_ROWS digits."""
    import keras

    model = keras.models.load_model(keras_digits, compile=False)
    return np.asarray(model.predict(digits.x[:EVAL_ROWS], verbose=0)).argmax(axis=1)


@pytest.fixture(scope="module")
def savedmodel_dir(tmp_path_factory: pytest.TempPathFactory, keras_digits: Path) -> Path:
    """The digits CNN exported as a TensorFlow SavedModel folder with Keras' own `model.export`."""
    import keras

    model = keras.models.load_model(keras_digits, compile=False)
    folder = tmp_path_factory.mktemp("savedmodel") / "digits_savedmodel"
    model.export(str(folder), verbose=False)
    return folder


@pytest.fixture(scope="module")
def flat_digits(digits: Any) -> tuple[np.ndarray, np.ndarray]:
    """Digits as (N, 64) float32 rows for the scikit-learn models."""
    return digits.x.reshape(len(digits.x), -1), digits.y


def test_keras_exports_to_onnx_with_exact_parity(
    tmp_path: Path, keras_digits: Path, digits: Any, keras_predictions: np.ndarray
) -> None:
    output = tmp_path / "digits.onnx"
    result = convert(keras_digits, output)
    assert result.path == output and output.is_file()
    assert result.route.startswith("keras->onnx")
    assert_parity_passed(result.parity)
    assert result.parity["samples"] == 16
    np.testing.assert_array_equal(predicted_classes(output, digits.x[:EVAL_ROWS]), keras_predictions)


def test_keras_exports_to_float32_tflite_with_exact_parity(
    tmp_path: Path, keras_digits: Path, digits: Any, keras_predictions: np.ndarray
) -> None:
    output = tmp_path / "digits.tflite"
    result = convert(keras_digits, output)
    assert output.is_file()
    assert result.route == "keras->tflite (float32)"
    assert_parity_passed(result.parity)
    np.testing.assert_array_equal(predicted_classes(output, digits.x[:EVAL_ROWS]), keras_predictions)


def test_keras_exports_to_float16_tflite_smaller_than_float32(
    tmp_path: Path, keras_digits: Path, digits: Any, keras_predictions: np.ndarray
) -> None:
    fp32, fp16 = tmp_path / "fp32.tflite", tmp_path / "fp16.tflite"
    convert(keras_digits, fp32)
    result = convert(keras_digits, fp16, precision="float16")
    assert fp16.is_file()
    assert result.route == "keras->tflite (float16)"
    assert result.parity["gate"]["min_sqnr_db"] == 40.0
    assert_parity_passed(result.parity, min_sqnr=40.0)
    assert fp16.stat().st_size < fp32.stat().st_size
    np.testing.assert_array_equal(predicted_classes(fp16, digits.x[:EVAL_ROWS]), keras_predictions)


@pytest.mark.parametrize("suffix", [".onnx", ".tflite"])
def test_savedmodel_folder_exports_with_exact_parity(
    tmp_path: Path, savedmodel_dir: Path, digits: Any, keras_predictions: np.ndarray, suffix: str
) -> None:
    output = tmp_path / f"digits{suffix}"
    result = convert(savedmodel_dir, output)
    assert output.is_file()
    assert result.route.startswith(f"savedmodel->{suffix[1:]}")
    assert_parity_passed(result.parity)
    np.testing.assert_array_equal(predicted_classes(output, digits.x[:EVAL_ROWS]), keras_predictions)


def test_onnx_reexports_to_onnx_with_identical_outputs(
    tmp_path: Path, digits_onnx: Path, digits: Any, keras_predictions: np.ndarray
) -> None:
    output = tmp_path / "checked.onnx"
    result = convert(digits_onnx, output)
    assert output.is_file()
    assert result.route.startswith("onnx->onnx")
    assert_parity_passed(result.parity)
    assert result.parity["sqnr_db"] == 100.0  # the same graph, bit-identical outputs
    x = digits.x[:EVAL_ROWS]
    np.testing.assert_array_equal(engine_logits(output, x), engine_logits(digits_onnx, x))
    np.testing.assert_array_equal(predicted_classes(output, x), keras_predictions)


def test_sklearn_logistic_regression_joblib_exports_to_onnx(
    tmp_path: Path, flat_digits: tuple[np.ndarray, np.ndarray]
) -> None:
    import joblib
    from sklearn.linear_model import LogisticRegression

    x, y = flat_digits
    estimator = LogisticRegression(max_iter=300).fit(x[:600], y[:600])
    source = tmp_path / "logreg.joblib"
    joblib.dump(estimator, source)
    output = tmp_path / "logreg.onnx"
    result = convert(source, output)
    assert output.is_file()
    assert result.route == "sklearn->onnx (skl2onnx, LogisticRegression)"
    assert_parity_passed(result.parity)
    engine = load_engine(output)
    assert [i.name for i in engine.inputs] == ["input"]
    outputs = engine.run({"input": x[:EVAL_ROWS]})
    probabilities = [v for v in outputs.values() if np.asarray(v).ndim == 2]
    assert len(probabilities) == 1
    np.testing.assert_array_equal(probabilities[0].argmax(axis=1), estimator.predict(x[:EVAL_ROWS]))
    np.testing.assert_allclose(probabilities[0], estimator.predict_proba(x[:EVAL_ROWS]), atol=1e-5)


def test_sklearn_random_forest_regressor_pickle_exports_to_onnx(
    tmp_path: Path, flat_digits: tuple[np.ndarray, np.ndarray]
) -> None:
    from sklearn.ensemble import RandomForestRegressor

    x, y = flat_digits
    estimator = RandomForestRegressor(n_estimators=8, max_depth=6, random_state=0).fit(x[:600], y[:600])
    source = tmp_path / "forest.pkl"
    source.write_bytes(pickle.dumps(estimator))
    output = tmp_path / "forest.onnx"
    result = convert(source, output)
    assert output.is_file()
    assert result.route == "sklearn->onnx (skl2onnx, RandomForestRegressor)"
    assert_parity_passed(result.parity, classification=False)
    assert result.parity["agreement"] is None  # a regressor has no top-1 agreement
    engine = load_engine(output)
    (produced,) = engine.run({"input": x[:EVAL_ROWS]}).values()
    expected = estimator.predict(x[:EVAL_ROWS])
    np.testing.assert_allclose(np.asarray(produced).ravel(), expected, rtol=1e-5, atol=1e-5)


def test_torch_module_exports_to_onnx_with_dynamic_batch(tmp_path: Path, digits: Any) -> None:
    torch = pytest.importorskip("torch")
    from converters.torch_export import export_torch

    torch.manual_seed(0)
    module = torch.nn.Sequential(
        torch.nn.Conv2d(1, 8, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.MaxPool2d(2),
        torch.nn.Flatten(),
        torch.nn.Linear(8 * 4 * 4, 10),
    )
    images = torch.from_numpy(np.ascontiguousarray(digits.x[:2].transpose(0, 3, 1, 2)))
    output = tmp_path / "torch.onnx"
    result = export_torch(module, (images,), output, input_names=["image"], output_names=["logits"])
    assert result.path == output and output.is_file()
    assert result.route == "torch->onnx (dynamo, opset 18)"
    assert_parity_passed(result.parity)
    engine = load_engine(output)
    assert engine.inputs[0].name == "image" and engine.inputs[0].shape[0] is None
    batch3 = np.ascontiguousarray(digits.x[10:13].transpose(0, 3, 1, 2))
    produced = engine.run({"image": batch3})["logits"]
    assert produced.shape == (3, 10)
    with torch.no_grad():
        expected = module(torch.from_numpy(batch3)).numpy()
    np.testing.assert_allclose(produced, expected, rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(produced.argmax(axis=1), expected.argmax(axis=1))


def test_real_sample_data_drives_the_parity_check(
    tmp_path: Path, keras_digits: Path, data_files: dict[str, Path]
) -> None:
    output = tmp_path / "digits.onnx"
    result = convert(keras_digits, output, sample_data=data_files["eval"])
    assert output.is_file()
    assert_parity_passed(result.parity)
    assert result.parity["samples"] == 64  # real rows, capped at 64


def test_cli_convert_prints_json_with_the_parity_report(
    tmp_path: Path, digits_onnx: Path, data_files: dict[str, Path]
) -> None:
    output = tmp_path / "out" / "digits.onnx"
    result = CliRunner().invoke(
        cli, ["convert", str(digits_onnx), "-o", str(output), "--sample", str(data_files["eval"]), "--json"]
    )
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert document["output"] == str(output)
    assert document["route"].startswith("onnx->onnx")
    assert_parity_passed(document["parity"])
    assert document["parity"]["samples"] == 64
    assert output.is_file()


def test_cli_convert_keras_to_tflite_prints_a_pass_summary(
    tmp_path: Path, keras_digits: Path, digits: Any, keras_predictions: np.ndarray
) -> None:
    output = tmp_path / "digits.tflite"
    result = CliRunner().invoke(cli, ["convert", str(keras_digits), "-o", str(output)])
    assert result.exit_code == 0, result.output
    assert f"wrote {output}" in result.stdout
    assert "keras->tflite (float32)" in result.stdout
    assert "top-1 agreement 100.0%" in result.stdout and "[PASS]" in result.stdout
    np.testing.assert_array_equal(predicted_classes(output, digits.x[:EVAL_ROWS]), keras_predictions)


def test_cli_convert_sklearn_json_output(tmp_path: Path, flat_digits: tuple[np.ndarray, np.ndarray]) -> None:
    import joblib
    from sklearn.linear_model import LogisticRegression

    x, y = flat_digits
    source = tmp_path / "logreg.joblib"
    joblib.dump(LogisticRegression(max_iter=300).fit(x[:600], y[:600]), source)
    sample = tmp_path / "rows.npy"
    np.save(sample, x[600:700])
    output = tmp_path / "logreg.onnx"
    result = CliRunner().invoke(
        cli, ["convert", str(source), "-o", str(output), "--sample", str(sample), "--json"]
    )
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert document["route"] == "sklearn->onnx (skl2onnx, LogisticRegression)"
    assert_parity_passed(document["parity"])
    assert document["parity"]["samples"] == 64
    assert output.is_file()
