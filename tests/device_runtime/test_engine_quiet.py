"""The device's LiteRT loader prints no delegate banner, while real engine errors and other output surface.

LiteRT writes `INFO: Created TensorFlow Lite XNNPACK delegate for CPU.` from C++ to fd 2 once per process,
at the first tensor allocation: the banner checks load a model in a fresh process whose stderr is this
test's fd 2 (what `capfd` reads). The models are real .tflite files built here with TensorFlow: a small
dense layer, and one with an op LiteRT has no kernel for (TensorFlow's Igamma, kept as a custom op).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from device_runtime._quiet_fd import ENGINE_NOISE, descriptors
from device_runtime.engines import load_engine
from device_runtime.errors import EngineError
from tests.host_tools import needs_host

ROOT = Path(__file__).resolve().parents[2]
BANNER = "INFO: Created TensorFlow Lite XNNPACK delegate for CPU."

needs_tensorflow = needs_host("tensorflow", "ai_edge_litert", why="building and loading a .tflite model")


@pytest.fixture(scope="module")
def tflite_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from converters._quiet import quiet_import

    tf = quiet_import("tensorflow")
    weight = tf.constant(np.random.default_rng(0).normal(size=(4, 3)).astype(np.float32))
    spec = [tf.TensorSpec([1, 4], tf.float32)]

    def dense(x: object) -> object:
        return tf.nn.relu(tf.matmul(x, weight))

    def igamma(x: object) -> object:
        return tf.math.igamma(x + 2.0, x + 1.0)

    folder = tmp_path_factory.mktemp("tflite")
    models = {}
    for name, body in (("dense", dense), ("custom-op", igamma)):
        function = tf.function(tf.autograph.experimental.do_not_convert(body), input_signature=spec)
        converter = tf.lite.TFLiteConverter.from_concrete_functions([function.get_concrete_function()])
        converter.allow_custom_ops = True  # Igamma stays a custom op LiteRT cannot resolve
        models[name] = folder / f"{name}.tflite"
        models[name].write_bytes(converter.convert())
    return models


def _load_in_fresh_process(model: Path) -> subprocess.CompletedProcess[str]:
    """Load `model` through the device library in a new process whose stderr is this test's fd 2."""
    code = (
        "import sys\n"
        "from device_runtime.engines import load_engine\n"
        "from device_runtime.errors import EngineError\n"
        "try:\n"
        "    engine = load_engine(sys.argv[1])\n"
        "except EngineError as e:\n"
        "    print('refused:', e)\n"
        "else:\n"
        "    print('loaded:', [i.name for i in engine.inputs])\n"
    )
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    return subprocess.run(
        [sys.executable, "-c", code, str(model)],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True, timeout=120, check=True,
    )  # fmt: skip


@needs_tensorflow
def test_loading_a_tflite_model_prints_no_delegate_banner(
    tflite_models: dict[str, Path], capfd: pytest.CaptureFixture[str]
) -> None:
    result = _load_in_fresh_process(tflite_models["dense"])
    assert result.stdout.startswith("loaded:")
    assert BANNER not in capfd.readouterr().err


@needs_tensorflow
def test_an_engine_that_refuses_a_model_still_says_why(
    tflite_models: dict[str, Path], capfd: pytest.CaptureFixture[str]
) -> None:
    result = _load_in_fresh_process(tflite_models["custom-op"])
    assert "refused: LiteRT cannot load" in result.stdout
    assert "unresolved custom op: Igamma" in result.stdout, result.stdout
    assert BANNER not in capfd.readouterr().err
    with pytest.raises(EngineError, match="Igamma"):  # and in this process too
        load_engine(tflite_models["custom-op"])


def test_what_native_code_prints_besides_the_banner_is_written_back(
    capfd: pytest.CaptureFixture[str],
) -> None:
    with descriptors() as printed:
        os.write(2, f"{BANNER}\n".encode())
        os.write(2, b"ERROR: Didn't find op for builtin opcode 'CONV_2D' version '9'\n")
    assert printed.lines == [BANNER, "ERROR: Didn't find op for builtin opcode 'CONV_2D' version '9'"]
    assert capfd.readouterr().err == "ERROR: Didn't find op for builtin opcode 'CONV_2D' version '9'\n"


def test_the_descriptor_is_restored_and_the_reason_kept_when_the_call_raises(
    capfd: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(RuntimeError), descriptors(ENGINE_NOISE):
        os.write(2, b"why it failed\n")
        raise RuntimeError("engine refused the model")
    os.write(2, b"after\n")
    assert capfd.readouterr().err == "why it failed\nafter\n"


def test_a_nested_capture_reaches_the_outer_one_and_then_the_terminal(
    capfd: pytest.CaptureFixture[str],
) -> None:
    with descriptors() as outer:
        with descriptors() as inner:
            os.write(2, f"{BANNER}\nkept\n".encode())
        assert inner.kept == ["kept"]
    assert outer.lines == ["kept"]
    assert capfd.readouterr().err == "kept\n"
