"""`python -m device_runtime bench`: two real bundles (fp32 and int8 of a small CNN) timed on this machine.

Only the report's shape is checked: benchmarks assert no timings.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from device_runtime.bench import median_ci

ROOT = Path(__file__).resolve().parents[2]


def small_cnn(path: Path) -> Path:
    """image float32 [N, 1, 8, 8] -> Conv 3x3 (8) -> Relu -> Flatten -> MatMul -> logits [N, 10].

    Built with onnx's helpers rather than trained: the bench checks the report's shape, and the device-only
    test environment (scripts/device_suite.sh) has no TensorFlow to train one.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["image", "K"], ["conv"], pads=[1, 1, 1, 1]),
            helper.make_node("Relu", ["conv"], ["relu"]),
            helper.make_node("Flatten", ["relu"], ["flat"]),
            helper.make_node("MatMul", ["flat", "W"], ["logits"]),
        ],
        "bench-cnn",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 1, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])],
        initializer=[
            numpy_helper.from_array(rng.standard_normal((8, 1, 3, 3)).astype(np.float32), "K"),
            numpy_helper.from_array((rng.standard_normal((512, 10)) / 16).astype(np.float32), "W"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="tests")
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.write_bytes(model.SerializeToString())
    return path


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    from edgekit.bundle_build import BundleRequest, build_bundle
    from signing.keys import generate_keypair

    folder = tmp_path_factory.mktemp("bench")
    images = np.random.default_rng(1).random((96, 1, 8, 8), dtype=np.float32)
    calibration = images[:64]
    np.save(folder / "eval.npy", images[64:])
    model_fp32 = small_cnn(folder / "digits.onnx")

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._rows = iter(calibration[i : i + 1] for i in range(len(calibration)))

        def get_next(self) -> dict[str, np.ndarray] | None:
            row = next(self._rows, None)
            return None if row is None else {"image": row}

    int8 = folder / "digits-int8.onnx"
    quantize_static(
        str(model_fp32),
        str(int8),
        Reader(),
        quant_format=QuantFormat.QDQ,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
    )
    private, public = generate_keypair(folder / "keys", name="release")
    out = {"pub": public, "eval": folder / "eval.npy"}
    for label, model in (("fp32", model_fp32), ("int8", int8)):
        out[label] = folder / f"digits-{label}.ekb"
        build_bundle(
            BundleRequest(
                model,
                out[label],
                "digits",
                f"1.0.0-{label}",
                [private],
                golden=out["eval"],
                created="2026-01-01T00:00:00Z",
            )
        )
    return out


def device(*args: str, store: Path, pub: Path) -> subprocess.CompletedProcess[str]:
    command = [
        sys.executable,
        "-m",
        "device_runtime",
        "--store",
        str(store),
        "--key",
        str(pub),
        "--device-id",
        "dev-1",
        "--hardware-id",
        "hw-1",
        *args,
    ]
    return subprocess.run(
        command, cwd=ROOT, capture_output=True, text=True, timeout=300, env=dict(os.environ)
    )


def test_bench_reports_both_bundles_and_their_ratio(bundles: dict[str, Path], tmp_path: Path) -> None:
    result = device(
        "bench",
        str(bundles["fp32"]),
        str(bundles["int8"]),
        "--seconds",
        "1",
        "--threads",
        "1",
        "--json",
        store=tmp_path / "store",
        pub=bundles["pub"],
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["schema"] == "edgekit.device-bench/v1"
    assert report["machine"]["cpu"] and report["machine"]["engines"]["onnxruntime"]
    assert [b["version"] for b in report["bundles"]] == ["1.0.0-fp32", "1.0.0-int8"]
    for timing in report["bundles"]:
        assert timing["inputs"] == "golden" and timing["samples"] >= 1
        assert timing["rounds"] >= 3 and timing["median_ms"] > 0
    (ratio,) = report["ratios"]
    assert ratio["latency_ratio"] > 0 and ratio["rounds"] == min(b["rounds"] for b in report["bundles"])
    low, high = ratio["ci95"]
    assert low is None or low <= ratio["latency_ratio"] <= high
    text = device(
        "bench",
        str(bundles["fp32"]),
        str(bundles["int8"]),
        "--seconds",
        "0.5",
        store=tmp_path / "store",
        pub=bundles["pub"],
    )
    assert text.returncode == 0, text.stderr
    assert "machine:" in text.stdout and "ratio digits-int8.ekb / digits-fp32.ekb" in text.stdout


def test_bench_refuses_a_bundle_signed_by_another_key(bundles: dict[str, Path], tmp_path: Path) -> None:
    from signing.keys import generate_keypair

    _private, other = generate_keypair(tmp_path / "other", name="other")
    result = device("bench", str(bundles["fp32"]), "--seconds", "0.2", store=tmp_path / "s", pub=other)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_bench_takes_a_given_input_for_every_bundle(bundles: dict[str, Path], tmp_path: Path) -> None:
    sample = tmp_path / "one.npy"
    np.save(sample, np.load(bundles["eval"])[:1])
    result = device(
        "bench",
        str(bundles["fp32"]),
        "--seconds",
        "0.2",
        "--input",
        str(sample),
        "--json",
        store=tmp_path / "store",
        pub=bundles["pub"],
    )
    assert result.returncode == 0, result.stderr
    (timing,) = json.loads(result.stdout)["bundles"]
    assert timing["inputs"] == "one.npy" and timing["samples"] == 1


def test_median_confidence_interval_from_order_statistics() -> None:
    median, low, high = median_ci([float(i) for i in range(1, 21)])
    assert median == 10.5 and low is not None and high is not None and low < 10.5 < high
    assert (low, high) == (6.0, 15.0)  # the sign-test interval for n = 20
    assert median_ci([1.0, 2.0, 3.0])[1:] == (None, None)  # too few values for a 95% interval
