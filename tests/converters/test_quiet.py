"""converters._quiet: third-party noise is captured where it is produced; other lines still reach stderr."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from converters._quiet import captured, fp16_clipping_summary
from converters.fp16 import convert_to_float16
from converters.quantize_onnx import quantize_dynamic_onnx

ROOT = Path(__file__).resolve().parents[2]
XNNPACK = "INFO: Created TensorFlow Lite XNNPACK delegate for CPU."


def test_c_level_noise_is_dropped_and_other_lines_reach_stderr(capfd: pytest.CaptureFixture[str]) -> None:
    with captured() as printed:
        os.write(2, f"{XNNPACK}\n".encode())  # what the engine writes from C++, below Python
        os.write(2, b"ERROR: the op FOO is not supported\n")
        os.write(1, b"fully_quantize: 0, inference_type: 6, input_inference_type: FLOAT32\n")
    assert XNNPACK in printed.lines and len(printed.lines) == 3
    out, err = capfd.readouterr()
    assert err == "ERROR: the op FOO is not supported\n" and out == ""


def test_descriptors_are_restored_when_the_call_raises(capfd: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(RuntimeError), captured():
        os.write(2, b"why it failed\n")
        raise RuntimeError("engine refused the model")
    os.write(2, b"after\n")
    assert capfd.readouterr().err == "why it failed\nafter\n"


def test_a_root_logger_warning_is_captured_without_configuring_logging() -> None:
    root = logging.getLogger()
    handlers = list(root.handlers)
    with captured(descriptors=False) as printed:
        logging.warning("Please consider to run pre-processing before quantization. Refer to example: x")
    assert printed.lines == [
        "WARNING:root:Please consider to run pre-processing before quantization. Refer to example: x"
    ]
    assert root.handlers == handlers, (
        "logging.warning() must not have called basicConfig() during the capture"
    )


def _matmul(path: Path, weight: np.ndarray) -> Path:
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, weight.shape[0]])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, weight.shape[1]])],
        [numpy_helper.from_array(weight, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.save(model, str(path))
    return path


def test_dynamic_quantization_prints_no_pre_processing_advice(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    weight = np.random.default_rng(0).normal(size=(64, 32)).astype(np.float32)
    quantize_dynamic_onnx(_matmul(tmp_path / "m.onnx", weight), tmp_path / "q.onnx")
    assert "pre-processing" not in capfd.readouterr().err
    assert (tmp_path / "q.onnx").is_file()


def test_fp16_clipping_is_one_line_with_the_count(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    weight = np.random.default_rng(1).normal(size=(16, 8)).astype(np.float32)
    weight[0, 0] = 1e-9  # below float16's smallest subnormal: raised to it
    result = convert_to_float16(_matmul(tmp_path / "m.onnx", weight), tmp_path / "h.onnx")
    assert result.clipping is not None and result.clipping.startswith("fp16: 1 extreme weight value")
    assert "raised" in result.clipping
    assert "DEBUG" not in capfd.readouterr().err, "the converter's debug records are collected, not shown"


def test_the_summary_counts_large_and_small_values_apart() -> None:
    with captured(descriptors=False) as printed:
        logging.getLogger().debug("nothing")  # below the root's level: not collected
    assert fp16_clipping_summary(printed) is None
    printed.lines = [
        "DEBUG:onnxruntime.transformers.float16:the float32 number 70000.0 will be truncated to 65504.0",
        "DEBUG:onnxruntime.transformers.float16:the float32 number 1e-09 will be truncated to 5.96e-08",
    ]
    summary = fp16_clipping_summary(printed)
    assert summary is not None and "2 extreme" in summary and "1 above" in summary and "7e+04" in summary


def test_loading_a_tflite_model_prints_no_delegate_banner_on_host_or_device(tmp_path: Path) -> None:
    """A fresh process each (LiteRT prints the banner once per process): neither the device's loader nor
    the host's name for it prints the banner (tests/device_runtime/test_engine_quiet.py: the device side)."""
    from tests.zoo.conftest import fetched

    model = fetched("mediapipe-face-detection-short")
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    code = "import sys; from {} import load_engine; load_engine(sys.argv[1])"
    runs = {
        module: subprocess.run(
            [sys.executable, "-c", code.format(module), str(model)],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
        )
        for module in ("device_runtime.engines", "converters._quiet")
    }  # fmt: skip
    assert all(r.returncode == 0 for r in runs.values()), {m: r.stderr for m, r in runs.items()}
    assert all(XNNPACK not in r.stderr for r in runs.values()), {m: r.stderr for m, r in runs.items()}


SCRIPT = """
import sys
import numpy as np
from pathlib import Path
from converters._quiet import quiet_import
from converters.tflite import convert_savedmodel

tf = quiet_import("tensorflow")
K = tf.keras
model = K.Sequential([K.Input((8, 8, 1)), K.layers.Conv2D(4, 3), K.layers.Flatten(), K.layers.Dense(3)])
model.export(sys.argv[1], verbose=False)
rng = np.random.default_rng(0)
def representative():
    for _ in range(4):
        yield [rng.random((1, 8, 8, 1), dtype=np.float32)]
print(len(convert_savedmodel(Path(sys.argv[1]), precision="int8", representative=representative)))
"""


@pytest.mark.slow
def test_tensorflow_and_its_int8_converter_print_no_banners(tmp_path: Path) -> None:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path / "saved")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert int(result.stdout.strip()) > 0
    assert "fully_quantize" not in result.stderr and "oneDNN" not in result.stderr, result.stderr[-2000:]


TORCH_SCRIPT = """
import sys
import torch
from converters.torch_export import export_torch
torch.manual_seed(0)
layers = [torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(144, 2)]
module = torch.nn.Sequential(*layers)
print(export_torch(module, [torch.zeros(1, 3, 8, 8)], sys.argv[1]).parity["passed"])
"""


@pytest.mark.slow
def test_a_torch_export_in_a_fresh_process_prints_nothing_on_stderr(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    # The exporter registers its optional torchvision ops once per process (first export only).
    result = subprocess.run(
        [sys.executable, "-c", TORCH_SCRIPT, str(tmp_path / "model.onnx")],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "True"
    assert result.stderr == "", result.stderr[-2000:]


def test_onnxruntime_warnings_are_off_only_for_the_call(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    import onnxruntime as ort

    from converters._quiet import onnxruntime_warnings_off

    # A model with an initializer no node uses: onnxruntime warns that it removes it.
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
        [numpy_helper.from_array(np.ones(3, np.float32), "unused")],
    )
    path = tmp_path / "unused.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), path)
    with onnxruntime_warnings_off():
        ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert "Removing initializer" not in capfd.readouterr().err
    ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert "Removing initializer 'unused'" in capfd.readouterr().err  # back to onnxruntime's default
