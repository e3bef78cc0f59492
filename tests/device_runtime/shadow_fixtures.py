"""Bundles and engines for the shadow-trial tests: real ONNX models, real signed bundles, real onnxruntime.

Releases (same key and hardware as `runtime_fixtures`):

    4.0.0  counter 4  "swapped": release 1.0.0's weights with the class columns rotated by one, so its top-1
                      class differs from 1.0.0's on every input (a label swap that disagrees everywhere)
    6.0.0  counter 6  "wide": x float32 [N, 16]; it installs (its golden vectors are its own) but raises on
                      every input a [N, 8] model is fed: a real shadow failure

Engine wrappers (the engine inside is the real onnxruntime session): `BlockingEngine` waits on an event
before running (a hang the test ends), `SlowEngine` sleeps a fixed time before running (a costly shadow),
`CrashingEngine` dereferences a null pointer (a native crash of the process).
"""

from __future__ import annotations

import ctypes
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from tests.device_runtime.runtime_fixtures import HARDWARE, MODEL_NAME, Releases, weights

SWAPPED = "4.0.0"
WIDE = "6.0.0"


def _write_model(path: Path, name: str, matrix: np.ndarray) -> Path:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["logits"])],
        name,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", int(matrix.shape[0])])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", int(matrix.shape[1])])],
        initializer=[numpy_helper.from_array(matrix.astype(np.float32), "W")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="tests")
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.write_bytes(model.SerializeToString())
    return path


def build_shadow_bundles(releases: Releases) -> dict[str, tuple[Path, str]]:
    """Build the bundles of the module docstring with the releases' key: version -> (path, bundle id)."""
    from edgekit.bundle_build import BundleRequest, build_bundle

    folder = releases.folder / "shadow"
    folder.mkdir(exist_ok=True)
    models = {
        SWAPPED: np.roll(weights("1.0.0"), 1, axis=1),
        WIDE: np.random.default_rng(6).standard_normal((16, 4)),
    }
    built = {}
    for version, matrix in models.items():
        result = build_bundle(
            BundleRequest(
                model=_write_model(folder / f"tiny-{version}.onnx", f"tiny-{version}", matrix),
                output=folder / f"tiny-{version}.ekb",
                name=MODEL_NAME,
                version=version,
                keys=[releases.folder / "keys" / "release.key"],
                labels=releases.folder / "labels.txt",
                hardware_ids=(HARDWARE,),
                release_counter={SWAPPED: 4, WIDE: 6}[version],
                created="2025-01-01T00:00:00Z",
            )
        )
        built[version] = (result.path, result.payload_sha256)
    return built


class BlockingEngine:
    """The real engine, run only once `release` is set: a shadow run that hangs until the test ends it."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine
        self.release = threading.Event()
        self.entered = threading.Event()

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.entered.set()
        self.release.wait()
        return dict(self.engine.run(feeds))


class SlowEngine:
    """The real engine after sleeping `seconds`: every run costs at least that long."""

    def __init__(self, engine: Any, seconds: float) -> None:
        self.engine = engine
        self.seconds = seconds

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        time.sleep(self.seconds)
        return dict(self.engine.run(feeds))


class CrashingEngine:
    """Reads address 0: SIGSEGV, the process dies as with a native crash inside an engine."""

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        ctypes.string_at(0)
        raise AssertionError("unreachable: the process is dead")
