"""The quantization ladder on real published models, and what it must never do (write into the cwd)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from converters.errors import GateError, QuantizationError, explain
from converters.parity import Gate
from converters.quantize import QuantizeOptions, quantize
from edgekit.cli import cli
from tests.converters import real_models

NO_LATENCY = QuantizeOptions(latency=None, samples=32)


@pytest.fixture(scope="module")
def zoo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("zoo")


def test_explain_keeps_the_node_names_and_drops_stack_frames() -> None:
    error = RuntimeError(
        "[ONNXRuntimeError] : 10 : INVALID_GRAPH : Load model from m.onnx failed:This is an invalid model.\n"
        '  In Node, ("ConvAddFusion_Add_B_Reshape@0_DequantizeLinear", DequantizeLinear, "", -1)\n'
        "#0 0x7f3a2b onnxruntime::Graph::Resolve()\n"
        "#1 0x7f3a2c onnxruntime::InferenceSession::Load()\n"
        + "x" * 2000
        + " , Error Unrecognized attribute: axis for operator DequantizeLinear"
    )
    text = explain(error, limit=300)
    assert "INVALID_GRAPH" in text and "ConvAddFusion_Add_B_Reshape@0_DequantizeLinear" in text
    assert text.endswith("Unrecognized attribute: axis for operator DequantizeLinear") and " … " in text
    assert "0x7f3a2b" not in text and len(text) <= 300


def test_paddle_weights_become_initializers_and_per_channel_int8_loads(zoo: Path, tmp_path: Path) -> None:
    """The root of `INVALID_GRAPH ... ConvAddFusion_Add_B_Reshape@0_DequantizeLinear`: an opset-11 export
    gets per-channel DequantizeLinear(axis=...), an attribute that exists from opset 13 only; and Paddle's
    Constant-node weights are quantized like activations unless they are made initializers."""
    import onnx
    import onnxruntime

    from converters.data import Dataset
    from converters.quantize_onnx import PRESETS, lift_constants, quantize_static_onnx, upgrade_opset

    model = tmp_path / "cls.onnx"
    model.write_bytes(real_models.ocr_model("cls", zoo).read_bytes())
    assert not onnx.load(str(model)).graph.initializer
    assert lift_constants(model) > 50 and upgrade_opset(model) == 11
    lifted = onnx.load(str(model))
    assert len(lifted.graph.initializer) > 50 and not any(n.op_type == "Constant" for n in lifted.graph.node)
    assert lifted.opset_import[0].version == 13
    x = real_models.text_lines(4, 48, 192)
    data = Dataset({"x": x}, "lines", np.arange(4), 4)
    quantize_static_onnx(model, tmp_path / "q.onnx", data, PRESETS["x86"])
    session = onnxruntime.InferenceSession(str(tmp_path / "q.onnx"), providers=["CPUExecutionProvider"])
    assert session.run(None, {"x": x})[0].shape == (4, 2)


@pytest.mark.slow
def test_paddle_classifier_never_answers_with_an_invalid_graph(zoo: Path, tmp_path: Path) -> None:
    """ch_ppocr_mobile_v2.0_cls: with weights lifted and opset 13 the preset itself loads."""
    model = real_models.ocr_model("cls", zoo)
    data = tmp_path / "lines.npy"
    np.save(data, real_models.text_lines(200, 48, 192))
    out = tmp_path / "cls.int8.onnx"
    try:
        report = quantize(model, out, data, options=NO_LATENCY).report
    except GateError as e:  # no int8 strategy passes: the refusal lists every strategy it tried
        assert e.report is not None and "no int8 strategy passes" in str(e) and "preset:" in str(e)
        report = e.report
        assert not out.exists()
    rows = {row["name"]: row for row in report["quantization"]["strategies"]}
    assert rows["preset"]["error"] is None and rows["preset"]["nodes_quantized"] > 50
    assert rows["preset"]["size_bytes"] < 0.6 * report["reference"]["size_bytes"]
    if report["passed"]:
        (chosen,) = [row for row in report["quantization"]["strategies"] if row["chosen"]]
        assert chosen["name"] == report["quantization"]["strategy"] and chosen["error"] is None
        import onnxruntime

        onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])


@pytest.mark.slow
def test_keras_byte_classifier_passes_with_int8_compute_ops_only(zoo: Path, tmp_path: Path) -> None:
    """magika: LayerNorm/Softmax/GELU collapse under int8 (agreement ~3%); MatMul/Conv alone keep ~99.5%."""
    model, config = real_models.magika_model(zoo)
    data = tmp_path / "bytes.npy"
    np.save(data, real_models.magika_features(config, 200))
    out = tmp_path / "magika.int8.onnx"
    result = quantize(model, out, data, options=NO_LATENCY)
    quantization = result.report["quantization"]
    rows = {row["name"]: row for row in quantization["strategies"]}
    assert result.report["passed"] and out.is_file()
    assert quantization["strategy"] in ("compute-only", "percentile", "entropy", "per-channel", "per-tensor")
    assert quantization["op_types"] == ["Conv", "MatMul", "Gemm"]
    assert not rows["preset"]["passed"] and rows["preset"]["metrics"]["agreement"] < 0.5
    assert "chosen" in quantization["choice"] or "passed" in quantization["choice"]
    assert result.report["candidate"]["size_bytes"] < 0.5 * result.report["reference"]["size_bytes"]


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["det", "rec"])
def test_paddle_ocr_det_and_rec_never_answer_with_an_invalid_graph(
    kind: str, zoo: Path, tmp_path: Path
) -> None:
    """PP-OCRv4 det/rec: either a loadable int8 model that passes, or a refusal listing every strategy."""
    model = real_models.ocr_model(kind, zoo)
    data = tmp_path / "x.npy"
    images = real_models.text_pages(12, 96, 192) if kind == "det" else real_models.text_lines(16, 48, 320)
    np.save(data, images)
    out = tmp_path / f"{kind}.int8.onnx"
    options = QuantizeOptions(latency=None, samples=8, max_evaluations=6)
    try:
        report = quantize(model, out, data, options=options).report
    except GateError as e:
        assert e.report is not None and not out.exists()
        message = str(e)
        assert "no int8 strategy passes" in message and "--mode fp16" in message and "preset:" in message
        report = e.report
    rows = {row["name"]: row for row in report["quantization"]["strategies"]}
    assert rows["preset"]["error"] is None, "opset 13 makes the fused, per-channel bias load"
    assert rows["preset"]["size_bytes"] < 0.5 * report["reference"]["size_bytes"]
    if report["passed"]:
        import onnxruntime

        onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
        assert report["quantization"]["strategy"] != "preset"


def test_failing_dynamic_mode_does_not_suggest_dynamic_mode(zoo: Path, tmp_path: Path) -> None:
    model = real_models.ocr_model("cls", zoo)
    data = tmp_path / "lines.npy"
    np.save(data, real_models.text_lines(32, 48, 192))
    # A gate dynamic int8 cannot meet on this model (it keeps about 18 dB): the refusal is what is tested.
    options = QuantizeOptions(latency=None, mode="dynamic", samples=16, gate=Gate(min_sqnr_db=60.0))
    with pytest.raises((GateError, QuantizationError)) as caught:
        quantize(model, tmp_path / "d.onnx", data, options=options)
    message = str(caught.value)
    assert "--mode dynamic" not in message and "--mode fp16" in message and "dynamic" in message


def test_quantize_writes_nothing_into_the_current_directory(
    zoo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Symbolic shape inference fails on magika; onnxruntime then saves `sym_shape_infer_temp.onnx` and a
    `<uuid>.data` file into the current directory unless the step runs elsewhere."""
    model, config = real_models.magika_model(zoo)
    data = tmp_path / "bytes.npy"
    np.save(data, real_models.magika_features(config, 24))
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    out, report = tmp_path / "q.onnx", tmp_path / "r.json"
    result = CliRunner().invoke(
        cli,
        [
            "quantize",
            str(model),
            "-o",
            str(out),
            "--calibration",
            str(data),
            "--samples",
            "8",
            "--max-evaluations",
            "2",
            "--skip-latency",
            "--report",
            str(report),
        ],
    )
    assert result.exit_code in (0, 1), result.output
    assert os.listdir(cwd) == [], "nothing may be written into the current directory"
    assert "symbolic shape inference failed" in result.output
    assert "strategies tried:" in result.output and "preset" in result.output
    assert len(json.loads(report.read_text())["quantization"]["strategies"]) == 2


def test_cli_allow_slower_is_a_deprecated_no_op_and_require_speedup_is_listed() -> None:
    help_text = CliRunner().invoke(cli, ["quantize", "--help"]).output
    assert "--require-speedup" in help_text and "--allow-slower" not in help_text


def test_cli_allow_slower_is_still_accepted_with_a_note(tmp_path: Path) -> None:
    args = ["quantize", str(tmp_path / "missing.onnx"), "-o", str(tmp_path / "o.onnx")]
    result = CliRunner().invoke(cli, [*args, "--calibration", str(tmp_path / "c.npy"), "--allow-slower"])
    assert result.exit_code == 1 and "no such option" not in result.output.lower()
    assert "--allow-slower is deprecated" in result.output
