"""Tests for the TFLite → ONNX route (converters.tflite_source) on MediaPipe's published models.

All three convert with parity against LiteRT (face detection and face landmark at the 100 dB cap;
selfie segmentation, whose MediaPipe custom op `Convolution2DTransposeBias` is lowered to ONNX
`ConvTranspose`, at 86 dB on random inputs), keep the TFLite tensor names and the NHWC layout, and the
converted ONNX models take `edgekit quantize`. A custom op nothing can lower is refused in one line that
points at `edgekit bundle`.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from converters.errors import ModelInputError, UnsupportedModelError
from converters.export import convert
from converters.tflite_source import tflite_to_onnx
from device_runtime.engines import load_engine
from edgekit.cli import cli
from tests.converters.zoo import zoo_file

FACE_DETECTION = "mediapipe-face-detection-short"
FACE_LANDMARK = "mediapipe-face-landmark"
SELFIE = "mediapipe-selfie-segmentation"


def _error_line(output: str) -> str:
    lines = [line for line in output.splitlines() if line.startswith("Error:")]
    assert len(lines) == 1, output
    assert "Traceback" not in output
    return lines[0]


def _with_unknown_custom_op(selfie: Path) -> bytes:
    """The selfie model's bytes with its custom op renamed (same length, so the flatbuffer stays valid)."""
    return selfie.read_bytes().replace(b"Convolution2DTransposeBias", b"Convolution2DTransposeBiaz")


def _save_inputs(key: str, folder: Path) -> tuple[Path, Path]:
    from zoo.inputs import inputs_for

    inputs = inputs_for(key)
    calibration, evaluation = folder / f"{key}-calibration.npz", folder / f"{key}-evaluation.npz"
    np.savez(calibration, **inputs.calibration)
    np.savez(evaluation, **inputs.evaluation)
    return calibration, evaluation


@pytest.fixture(scope="module")
def converted(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, dict]]:
    """Face detection and selfie segmentation (random samples), face landmark (zoo photos as --sample)."""
    folder = tmp_path_factory.mktemp("tflite-source")
    results = {}
    landmark_sample = _save_inputs(FACE_LANDMARK, folder)[1]
    for key, sample in ((FACE_DETECTION, None), (FACE_LANDMARK, landmark_sample), (SELFIE, None)):
        output = folder / f"{key}.onnx"
        result = convert(zoo_file(key), output, sample_data=sample)
        results[key] = (output, {"route": result.route, "parity": result.parity, "notes": result.notes})
    return results


@pytest.mark.slow
@pytest.mark.parametrize(
    "key, samples, min_sqnr",
    [
        # Measured: 100.0 dB (the cap: identical to float rounding) on every output.
        (FACE_DETECTION, 16, 99.0),
        (FACE_LANDMARK, 8, 99.0),
        # Measured: 86.0 dB on random inputs (100 dB on the zoo photos): the lowered ConvTranspose sums in
        # another order than MediaPipe's kernel. Still above the 80 dB export gate, no lower floor needed.
        (SELFIE, 16, 84.0),
    ],
)
def test_mediapipe_models_convert_with_parity_at_the_cap(
    converted: dict[str, tuple[Path, dict]], key: str, samples: int, min_sqnr: float
) -> None:
    result = converted[key][1]
    assert result["route"] == "tflite->onnx (tf2onnx TFLite front end, opset 17)"
    parity = result["parity"]
    assert parity["passed"] is True and parity["failures"] == []
    assert parity["samples"] == samples
    assert parity["sqnr_db"] >= min_sqnr
    assert all(o["sqnr_db"] >= min_sqnr for o in parity["outputs"])


@pytest.mark.slow
@pytest.mark.parametrize("key", [FACE_DETECTION, FACE_LANDMARK, SELFIE])
def test_converted_model_keeps_the_tflite_names_and_nhwc_layout(
    converted: dict[str, tuple[Path, dict]], key: str
) -> None:
    source, exported = load_engine(zoo_file(key)), load_engine(converted[key][0])
    assert [i.name for i in exported.inputs] == [i.name for i in source.inputs]
    assert [o.name for o in exported.outputs] == [o.name for o in source.outputs]
    for ours, theirs in zip(exported.inputs, source.inputs, strict=True):
        assert ours.shape[1:] == theirs.shape[1:] and ours.shape[-1] == 3  # NHWC kept


@pytest.mark.slow
def test_custom_op_tf2onnx_cannot_convert_is_refused_by_name(tmp_path: Path) -> None:
    # The selfie model with its custom op renamed: tf2onnx keeps the op, which no lowering knows.
    original = zoo_file(SELFIE)
    source = tmp_path / "renamed.tflite"
    source.write_bytes(_with_unknown_custom_op(original))
    output = tmp_path / "renamed.onnx"
    with pytest.raises(UnsupportedModelError) as caught:
        tflite_to_onnx(source, output, load_engine(original), opset=17)
    message = str(caught.value)
    assert "custom op Convolution2DTransposeBiaz" in message and "`edgekit bundle`" in message
    assert "\n" not in message
    assert not output.exists()


@pytest.mark.slow
def test_cli_refuses_a_custom_op_litert_lacks_in_one_line(tmp_path: Path) -> None:
    source = tmp_path / "renamed.tflite"
    source.write_bytes(_with_unknown_custom_op(zoo_file(SELFIE)))
    result = CliRunner().invoke(cli, ["convert", str(source), "-o", str(tmp_path / "s.onnx")])
    assert result.exit_code == 1
    assert "custom op Convolution2DTransposeBiaz" in _error_line(result.output)
    assert not (tmp_path / "s.onnx").exists()


def _quantize(model: Path, key: str, folder: Path) -> tuple[Path, dict, str]:
    calibration, evaluation = _save_inputs(key, folder)
    output = folder / f"{key}.int8.onnx"
    # Latency is not judged here: a shared test host cannot time kernels reliably.
    args = ["quantize", str(model), "-o", str(output), "--calibration", str(calibration)]
    result = CliRunner().invoke(cli, [*args, "--eval", str(evaluation), "--skip-latency", "--json"])
    text = result.stdout
    report = json.loads(text[text.index("{") :]) if result.exit_code == 0 else {}
    return output, report, result.output


@pytest.mark.slow
@pytest.mark.parametrize(
    "key, min_sqnr, max_ratio",
    [
        # Measured: conv2d_21 (landmarks) 43.8 dB, conv2d_31 (presence logit) 31.5 dB; size 0.27x.
        (FACE_LANDMARK, 25.0, 0.35),
        # Measured: 20.15 dB after the ladder keeps 4 nodes (classificator_16 among them) in float; 0.68x.
        (FACE_DETECTION, 20.0, 0.8),
    ],
)
def test_converted_model_quantizes_and_passes_the_gate(
    converted: dict[str, tuple[Path, dict]], tmp_path: Path, key: str, min_sqnr: float, max_ratio: float
) -> None:
    model = converted[key][0]
    output, report, text = _quantize(model, key, tmp_path)
    assert report.get("passed") is True, text
    assert min(o["sqnr_db"] for o in report["outputs"]) >= min_sqnr
    assert output.stat().st_size < max_ratio * model.stat().st_size


@pytest.mark.zoo_slow  # about 3 minutes for a known limitation; the zoo's other segmentation cases run
@pytest.mark.xfail(
    reason="int8 of the selfie mask misses the 20 dB gate on every strategy of the ladder (measured: best "
    "16.1 dB, exclusion; preset 10.8 dB); nothing is written",
    strict=False,
)
def test_converted_selfie_segmentation_quantizes_and_passes_the_gate(
    converted: dict[str, tuple[Path, dict]], tmp_path: Path
) -> None:
    model = converted[SELFIE][0]
    _, report, text = _quantize(model, SELFIE, tmp_path)
    assert report.get("passed") is True, text


def test_tflite_to_tflite_says_there_is_nothing_to_convert(tmp_path: Path) -> None:
    source = tmp_path / "model.tflite"
    source.write_bytes(b"\x1c\x00\x00\x00TFL3" + bytes(64))
    result = CliRunner().invoke(cli, ["convert", str(source), "-o", str(tmp_path / "out.tflite")])
    assert result.exit_code == 1
    line = _error_line(result.output)
    assert "already a TFLite model, there is nothing to convert" in line and "`edgekit bundle`" in line
    assert not (tmp_path / "out.tflite").exists()


@pytest.mark.parametrize(
    "content, expected",
    [
        pytest.param(None, "LiteRT cannot load this TFLite model", id="truncated"),
        pytest.param(b"PK\x03\x04 not a flatbuffer at all" * 4, "not a TFLite model", id="zip-named-tflite"),
        pytest.param(b"", "not a TFLite model", id="empty"),
    ],
)
def test_cli_refuses_a_broken_tflite_in_one_line(
    tmp_path: Path, content: bytes | None, expected: str
) -> None:
    source = tmp_path / "model.tflite"
    if content is None:  # the first half of a real model: header intact, buffers cut off
        whole = zoo_file(FACE_LANDMARK).read_bytes()
        content = whole[: len(whole) // 2]
    source.write_bytes(content)
    output = tmp_path / "model.onnx"
    result = CliRunner().invoke(cli, ["convert", str(source), "-o", str(output)])
    assert result.exit_code == 1, result.output
    assert expected in _error_line(result.output)
    assert not output.exists()


def test_input_shape_is_refused_for_a_tflite_source(tmp_path: Path) -> None:
    with pytest.raises(ModelInputError, match="input shapes are fixed in the file"):
        convert(zoo_file(FACE_LANDMARK), tmp_path / "m.onnx", input_shapes={"input_1": [1, 96, 96, 3]})
