"""Every bad input through the `edgekit` CLI: one clear error line, the right exit code, and nothing written.

Each case runs the real command (CliRunner, exceptions caught as a user would see them) and checks that the
output folder holds no model and no leftover temporary file (`.NAME.*.tmp*`).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner, Result

from edgekit.cli import cli

EVAL_ROWS = 64
FAST = ["--samples", "32", "--skip-latency", "--no-repair"]


@dataclass(frozen=True)
class Inputs:
    """Files shared by the cases (read-only) and the per-test folders."""

    onnx: Path
    keras: Path
    calib: Path
    eval: Path
    labels: Path
    bad: Path  # shared bad files, built once
    work: Path  # per-test scratch folder for inputs
    out: Path  # per-test output folder: must stay empty on failure


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory, digits: Any) -> dict[str, Path]:
    """Small evaluation data and its labels, plus the bad files every case can read."""
    import onnx
    from onnx import TensorProto, helper

    folder = tmp_path_factory.mktemp("bad_inputs")
    paths = {"eval": folder / "eval64.npy", "labels": folder / "labels64.npy"}
    np.save(paths["eval"], digits.x[1400 : 1400 + EVAL_ROWS])
    np.save(paths["labels"], digits.y[1400 : 1400 + EVAL_ROWS])

    foo = helper.make_model(
        helper.make_graph(
            [helper.make_node("FooBar", ["x"], ["y"], name="foo")],
            "foobar",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 4])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 4])],
        ),
        opset_imports=[helper.make_opsetid("", 17)],
    )
    paths["foobar"] = folder / "foobar.onnx"
    onnx.save(foo, str(paths["foobar"]))

    def relu(dims: list[int | None], ir_version: int) -> Any:
        return helper.make_model(
            helper.make_graph(
                [helper.make_node("Relu", ["x"], ["y"], name="relu")],
                "relu",
                [helper.make_tensor_value_info("x", TensorProto.FLOAT, dims)],
                [helper.make_tensor_value_info("y", TensorProto.FLOAT, dims)],
            ),
            opset_imports=[helper.make_opsetid("", 17)],
            ir_version=ir_version,
        )

    onnx.save(relu([None, None], 8), str(folder / "dynamic.onnx"))
    onnx.save(relu([None, 4], onnx.IR_VERSION), str(folder / "newest_ir.onnx"))
    return paths


@pytest.fixture
def inputs(
    tmp_path: Path,
    shared: dict[str, Path],
    digits_onnx: Path,
    keras_digits: Path,
    data_files: dict[str, Path],
) -> Inputs:
    work, out = tmp_path / "in", tmp_path / "out"
    work.mkdir()
    out.mkdir()
    return Inputs(
        onnx=digits_onnx,
        keras=keras_digits,
        calib=data_files["calib"],
        eval=shared["eval"],
        labels=shared["labels"],
        bad=shared["foobar"].parent,
        work=work,
        out=out,
    )


def run_cli(args: list[str]) -> Result:
    return CliRunner().invoke(cli, args)


def error_line(result: Result) -> str:
    """The single `Error:` line; every other line may only be a `note:`."""
    lines = [line for line in result.output.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("Error:")]
    assert len(errors) == 1, result.output
    return errors[0]


def assert_nothing_written(out: Path) -> None:
    leftovers = sorted(p.name for p in out.rglob("*"))
    assert leftovers == [], leftovers


def save(path: Path, array: np.ndarray) -> str:
    np.save(path, array)
    return str(path)


def quantize_args(i: Inputs, calibration: str, *extra: str) -> list[str]:
    return [
        "quantize",
        str(i.onnx),
        "-o",
        str(i.out / "model.int8.onnx"),
        "--calibration",
        calibration,
        *FAST,
        *extra,
    ]


# --- model files ---------------------------------------------------------------------------------


def text_named_onnx(i: Inputs) -> list[str]:
    source = i.work / "model.onnx"
    source.write_text("this is a README, not a model\n" * 20, encoding="utf-8")
    return ["convert", str(source), "-o", str(i.out / "out.onnx")]


def truncated_onnx(i: Inputs) -> list[str]:
    data = i.onnx.read_bytes()
    source = i.work / "truncated.onnx"
    source.write_bytes(data[: len(data) // 2])
    return ["convert", str(source), "-o", str(i.out / "out.onnx")]


def empty_onnx(i: Inputs) -> list[str]:
    source = i.work / "empty.onnx"
    source.write_bytes(b"")
    return ["convert", str(source), "-o", str(i.out / "out.onnx")]


def missing_source(i: Inputs) -> list[str]:
    return ["convert", str(i.work / "nowhere.onnx"), "-o", str(i.out / "out.onnx")]


def unknown_suffix(i: Inputs) -> list[str]:
    source = i.work / "model.xyz"
    source.write_bytes(b"\x00\x01\x02")
    return ["convert", str(source), "-o", str(i.out / "out.onnx")]


def unsupported_op(i: Inputs) -> list[str]:
    return ["convert", str(i.bad / "foobar.onnx"), "-o", str(i.out / "out.onnx")]


def dynamic_dims_onnx(i: Inputs) -> list[str]:
    return ["convert", str(i.bad / "dynamic.onnx"), "-o", str(i.out / "out.onnx")]


def folder_not_savedmodel(i: Inputs) -> list[str]:
    folder = i.work / "model_dir"
    folder.mkdir()
    (folder / "variables.txt").write_text("not a SavedModel", encoding="utf-8")
    return ["convert", str(folder), "-o", str(i.out / "out.onnx")]


def corrupt_keras(i: Inputs) -> list[str]:
    source = i.work / "model.keras"
    source.write_text("not a zip archive", encoding="utf-8")
    return ["convert", str(source), "-o", str(i.out / "out.onnx")]


def pickle_not_estimator(i: Inputs) -> list[str]:
    import pickle

    source = i.work / "model.pkl"
    source.write_bytes(pickle.dumps({"weights": [1, 2, 3]}))
    return ["convert", str(source), "-o", str(i.out / "out.onnx")]


def sklearn_without_converter(i: Inputs) -> list[str]:
    import pickle

    from sklearn.kernel_ridge import KernelRidge

    x = np.linspace(0, 1, 40, dtype=np.float32).reshape(10, 4)
    source = i.work / "ridge.pkl"
    source.write_bytes(pickle.dumps(KernelRidge().fit(x, x.sum(axis=1))))
    return ["convert", str(source), "-o", str(i.out / "ridge.onnx")]


def json_flag_error(i: Inputs) -> list[str]:
    return ["convert", str(i.work / "nowhere.keras"), "-o", str(i.out / "out.onnx"), "--json"]


def convert_tflite_source(i: Inputs) -> list[str]:
    source = i.work / "model.tflite"
    source.write_bytes(b"TFL3" + b"\x00" * 64)
    return ["convert", str(source), "-o", str(i.out / "out.onnx")]


def convert_to_pb(i: Inputs) -> list[str]:
    return ["convert", str(i.onnx), "-o", str(i.out / "model.pb")]


def onnx_to_tflite(i: Inputs) -> list[str]:
    return ["convert", str(i.onnx), "-o", str(i.out / "model.tflite")]


def float16_onnx_output(i: Inputs) -> list[str]:
    return ["convert", str(i.onnx), "-o", str(i.out / "model.onnx"), "--precision", "float16"]


def quantize_tflite_source(i: Inputs) -> list[str]:
    source = i.work / "model.tflite"
    source.write_bytes(b"TFL3" + b"\x00" * 64)
    return [
        "quantize",
        str(source),
        "-o",
        str(i.out / "model.int8.tflite"),
        "--calibration",
        str(i.calib),
        *FAST,
    ]


def quantize_keras_to_onnx(i: Inputs) -> list[str]:
    return [
        "quantize",
        str(i.keras),
        "-o",
        str(i.out / "model.int8.onnx"),
        "--calibration",
        str(i.calib),
        *FAST,
    ]


# --- calibration and evaluation data ------------------------------------------------------------------


def calib_wrong_shape(i: Inputs) -> list[str]:
    return quantize_args(i, save(i.work / "calib.npy", np.zeros((10, 9, 9, 1), np.float32)))


def calib_complex_dtype(i: Inputs) -> list[str]:
    return quantize_args(i, save(i.work / "calib.npy", np.zeros((40, 8, 8, 1), np.complex64)))


def calib_unicode_dtype(i: Inputs) -> list[str]:
    return quantize_args(i, save(i.work / "calib.npy", np.full((40, 8, 8, 1), "x", dtype="<U3")))


def calib_one_sample(i: Inputs) -> list[str]:
    return quantize_args(i, save(i.work / "calib.npy", np.zeros((8, 8, 1), np.float32)))


def calib_nan(i: Inputs) -> list[str]:
    x = np.zeros((40, 8, 8, 1), np.float32)
    x[3, 2, 2, 0] = np.nan
    return quantize_args(i, save(i.work / "calib.npy", x))


def calib_not_npy(i: Inputs) -> list[str]:
    source = i.work / "calib.npy"
    source.write_bytes(b"not numpy at all")
    return quantize_args(i, str(source))


def calib_npz_wrong_keys(i: Inputs) -> list[str]:
    source = i.work / "calib.npz"
    x = np.zeros((40, 8, 8, 1), np.float32)
    np.savez(source, pixels=x, extra=x)
    return quantize_args(i, str(source))


def calib_unknown_suffix(i: Inputs) -> list[str]:
    source = i.work / "calib.csv"
    source.write_text("1,2,3\n", encoding="utf-8")
    return quantize_args(i, str(source))


def calib_missing(i: Inputs) -> list[str]:
    return quantize_args(i, str(i.work / "nowhere.npy"))


def gray_spec(i: Inputs) -> Path:
    spec = i.work / "spec.json"
    spec.write_text(
        json.dumps(
            {
                "schema": "edgekit.preprocess/v1",
                "inputs": [
                    {
                        "name": "image",
                        "kind": "image",
                        "size": [8, 8],
                        "color": "GRAY",
                        "dtype": "float32",
                        "layout": "NHWC",
                    }
                ],
            }
        ),
        encoding="utf-8",
    )
    return spec


def empty_image_folder(i: Inputs) -> list[str]:
    folder = i.work / "images"
    folder.mkdir()
    (folder / "notes.txt").write_text("no images here", encoding="utf-8")
    return quantize_args(i, str(folder), "--preprocess", str(gray_spec(i)))


def image_folder_without_spec(i: Inputs) -> list[str]:
    from PIL import Image

    folder = i.work / "images"
    folder.mkdir()
    Image.fromarray(np.zeros((8, 8), np.uint8), mode="L").save(folder / "zero.png")
    return quantize_args(i, str(folder))


def labels_missing(i: Inputs) -> list[str]:
    return quantize_args(i, str(i.calib), "--eval", str(i.eval), "--labels", str(i.work / "nowhere.npy"))


def labels_wrong_length(i: Inputs) -> list[str]:
    labels = save(i.work / "labels.npy", np.zeros(EVAL_ROWS - 1, np.int64))
    return quantize_args(i, str(i.calib), "--eval", str(i.eval), "--labels", labels)


def labels_float(i: Inputs) -> list[str]:
    labels = save(i.work / "labels.npy", np.zeros(EVAL_ROWS, np.float32))
    return quantize_args(i, str(i.calib), "--eval", str(i.eval), "--labels", labels)


def labels_two_dimensional(i: Inputs) -> list[str]:
    labels = save(i.work / "labels.npy", np.zeros((EVAL_ROWS, 1), np.int64))
    return quantize_args(i, str(i.calib), "--eval", str(i.eval), "--labels", labels)


def eval_wrong_shape(i: Inputs) -> list[str]:
    return quantize_args(i, str(i.calib), "--eval", save(i.work / "eval.npy", np.zeros((64, 64), np.float32)))


def convert_sample_wrong_shape(i: Inputs) -> list[str]:
    sample = save(i.work / "sample.npy", np.zeros((10, 9, 9, 1), np.float32))
    return ["convert", str(i.onnx), "-o", str(i.out / "out.onnx"), "--sample", sample]


# --- options ----------------------------------------------------------------------------------------


def distribution_method(i: Inputs) -> list[str]:
    return quantize_args(i, str(i.calib), "--eval", str(i.eval), "--calibration-method", "distribution")


def missing_calibration(i: Inputs) -> list[str]:
    return ["quantize", str(i.onnx), "-o", str(i.out / "model.int8.onnx"), *FAST]


def zero_samples(i: Inputs) -> list[str]:
    return [
        "quantize",
        str(i.onnx),
        "-o",
        str(i.out / "model.int8.onnx"),
        "--calibration",
        str(i.calib),
        "--samples",
        "0",
    ]


def bad_input_shape_option(i: Inputs) -> list[str]:
    return ["convert", str(i.onnx), "-o", str(i.out / "out.onnx"), "--input-shape", "image:1,x"]


Build = Callable[[Inputs], list[str]]

CASES = [
    pytest.param(text_named_onnx, ("model.onnx", "onnx"), 1, id="text-file-named-onnx"),
    pytest.param(truncated_onnx, ("truncated.onnx", "onnx"), 1, id="truncated-onnx"),
    pytest.param(empty_onnx, ("empty.onnx", "empty"), 1, id="empty-onnx"),
    pytest.param(missing_source, ("nowhere.onnx", "no such"), 1, id="missing-source"),
    pytest.param(unknown_suffix, ("model.xyz", "unknown model type", ".xyz"), 1, id="unknown-suffix"),
    pytest.param(unsupported_op, ("foobar.onnx", "FooBar"), 1, id="unsupported-op"),
    pytest.param(
        dynamic_dims_onnx, ("'x'", "dynamic dimensions", "--sample"), 1, id="onnx-dynamic-dimensions"
    ),
    pytest.param(folder_not_savedmodel, ("model_dir", "not a SavedModel"), 1, id="folder-not-savedmodel"),
    pytest.param(corrupt_keras, ("model.keras", "Keras cannot load"), 1, id="corrupt-keras"),
    pytest.param(
        pickle_not_estimator,
        ("model.pkl", "dict", "not a fitted scikit-learn estimator"),
        1,
        id="pickle-not-estimator",
    ),
    pytest.param(sklearn_without_converter, ("KernelRidge", "skl2onnx"), 1, id="sklearn-without-converter"),
    pytest.param(json_flag_error, ("nowhere.keras", "no such file"), 1, id="error-with-json-flag"),
    pytest.param(convert_tflite_source, ("model.tflite", "not a TFLite"), 1, id="convert-not-tflite"),
    pytest.param(convert_to_pb, ("model.pb", ".onnx or .tflite"), 1, id="convert-to-pb"),
    pytest.param(onnx_to_tflite, ("tflite", "onnx model"), 1, id="onnx-to-tflite"),
    pytest.param(float16_onnx_output, ("float16", "quantize --mode fp16"), 1, id="float16-onnx-output"),
    pytest.param(quantize_tflite_source, ("model.tflite", "edgekit convert"), 1, id="quantize-tflite-source"),
    pytest.param(quantize_keras_to_onnx, ("digits.keras", "edgekit convert"), 1, id="quantize-keras-to-onnx"),
    pytest.param(
        calib_wrong_shape, ("calib.npy", "(10, 9, 9, 1)", "(N, 8, 8, 1)"), 1, id="calibration-wrong-shape"
    ),
    pytest.param(
        calib_complex_dtype, ("calib.npy", "complex64", "numeric"), 1, id="calibration-complex-dtype"
    ),
    pytest.param(calib_unicode_dtype, ("calib.npy", "<U3", "numeric"), 1, id="calibration-unicode-dtype"),
    pytest.param(
        calib_one_sample, ("calib.npy", "one sample", "batch axis"), 1, id="calibration-no-batch-axis"
    ),
    pytest.param(calib_nan, ("calib.npy", "NaN"), 1, id="calibration-nan"),
    pytest.param(calib_not_npy, ("calib.npy", "not a .npy file"), 1, id="calibration-not-npy"),
    pytest.param(
        calib_npz_wrong_keys, ("calib.npz", "'image'", "extra", "pixels"), 1, id="calibration-npz-wrong-keys"
    ),
    pytest.param(
        calib_unknown_suffix, ("calib.csv", "unsupported data file"), 1, id="calibration-unknown-suffix"
    ),
    pytest.param(calib_missing, ("nowhere.npy", "no such file"), 1, id="calibration-missing"),
    pytest.param(empty_image_folder, ("images", "no image file"), 1, id="empty-image-folder"),
    pytest.param(image_folder_without_spec, ("images", "--preprocess"), 1, id="image-folder-without-spec"),
    pytest.param(labels_missing, ("nowhere.npy", "labels file not found"), 1, id="labels-missing"),
    pytest.param(
        labels_wrong_length,
        ("labels.npy", f"{EVAL_ROWS - 1} labels", f"{EVAL_ROWS} samples"),
        1,
        id="labels-wrong-length",
    ),
    pytest.param(labels_float, ("labels.npy", "integer", "float32"), 1, id="labels-float-dtype"),
    pytest.param(labels_two_dimensional, ("labels.npy", "1-D", "(64, 1)"), 1, id="labels-two-dimensional"),
    pytest.param(eval_wrong_shape, ("eval.npy", "(64, 64)"), 1, id="eval-wrong-shape"),
    pytest.param(
        convert_sample_wrong_shape, ("sample.npy", "(10, 9, 9, 1)"), 1, id="convert-sample-wrong-shape"
    ),
    pytest.param(distribution_method, ("distribution", "garbage"), 1, id="calibration-method-distribution"),
    pytest.param(missing_calibration, ("Missing option", "--calibration"), 2, id="usage-missing-calibration"),
    pytest.param(zero_samples, ("--samples", "0"), 2, id="usage-zero-samples"),
    pytest.param(bad_input_shape_option, ("--input-shape", "NAME:D0,D1"), 2, id="usage-bad-input-shape"),
]


@pytest.mark.parametrize(("build", "expected", "exit_code"), CASES)
def test_bad_input_fails_with_one_clear_line_and_writes_nothing(
    inputs: Inputs, build: Build, expected: tuple[str, ...], exit_code: int
) -> None:
    args = build(inputs)
    result = run_cli(args)
    assert result.exit_code == exit_code, result.output
    assert "Traceback" not in result.output
    if "--json" in args:  # under --json the error is one JSON document on stdout
        error = json.loads(result.stdout)["error"]
        line = f"Error: {error['message']}" + (f"; {error['hint']}" if error["hint"] else "")
        for fragment in expected:
            assert fragment.lower() in line.lower(), (fragment, line)
        assert_nothing_written(inputs.out)
        return
    line = error_line(result)
    for fragment in expected:
        assert fragment.lower() in line.lower(), (fragment, line)
    if exit_code == 1:
        others = [x for x in result.output.splitlines() if x.strip() and x != line]
        assert all(x.startswith("note:") for x in others), result.output  # the error line is all there is
    assert_nothing_written(inputs.out)


def test_gate_failure_keeps_the_existing_output_and_writes_a_failing_report(inputs: Inputs) -> None:
    output = inputs.out / "model.int8.onnx"
    shutil.copyfile(inputs.onnx, output)  # a previous good model at the destination
    before = output.read_bytes()
    report_path = inputs.out / "r.json"
    result = run_cli(
        [
            "quantize",
            str(inputs.onnx),
            "-o",
            str(output),
            "--calibration",
            str(inputs.calib),
            "--eval",
            str(inputs.eval),
            "--labels",
            str(inputs.labels),
            "--min-sqnr",
            "99",
            "--samples",
            "32",
            "--skip-latency",
            "--no-repair",
            "--report",
            str(report_path),
        ]
    )
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    line = error_line(result)
    assert "fails the parity gate" in line and "Nothing was written" in line
    assert "99.00 dB" in line
    assert "FAIL" in result.output
    assert output.read_bytes() == before
    assert sorted(p.name for p in inputs.out.iterdir()) == ["model.int8.onnx", "r.json"]
    report = json.loads(report_path.read_text(encoding="utf-8"))
    assert report["passed"] is False
    assert report["gate"]["min_sqnr_db"] == 99.0
    assert report["samples"] == EVAL_ROWS
    assert any("SQNR" in failure for failure in report["failures"])


def test_onnx_with_an_ir_version_onnxruntime_lacks_is_refused_naming_the_version(inputs: Inputs) -> None:
    import onnxruntime as ort

    source = inputs.bad / "newest_ir.onnx"
    try:
        ort.InferenceSession(str(source), providers=["CPUExecutionProvider"])
    except Exception as e:
        if "IR version" not in str(e):
            pytest.skip(f"onnxruntime refuses the model for another reason: {e}")
    else:
        pytest.skip("this onnxruntime supports the newest ONNX IR version")
    result = run_cli(["convert", str(source), "-o", str(inputs.out / "out.onnx")])
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    line = error_line(result)
    assert "newest_ir.onnx" in line
    assert "IR version" in line, line
    assert_nothing_written(inputs.out)
