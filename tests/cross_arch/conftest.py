"""Fixtures of the cross-architecture tests: tiny real ONNX models, a loopback device, the arm64 target.

The loopback device runs ``python -m device_runtime run-model`` in a fresh host interpreter with the
device paths mapped to host folders: the whole :class:`converters.targets.DeviceTarget` path (files,
staged device code, a separate process) without emulation. The arm64 target is the emulated device of
:mod:`edgekit.emulation`; tests that need it skip with the reason when the root is missing, and fail
instead under ``EDGEKIT_REQUIRE_ARM64=1`` (CI).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from converters.targets import DeviceTarget


def stateful_model(path: Path, *, width: int = 4) -> Path:
    """y = 2·x + state, stateN = 0.5·state + x: a recurrence whose outputs depend on every earlier step."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes = [
        helper.make_node("Mul", ["x", "two"], ["x2"]),
        helper.make_node("Add", ["x2", "state"], ["y"]),
        helper.make_node("Mul", ["state", "half"], ["decayed"]),
        helper.make_node("Add", ["decayed", "x"], ["stateN"]),
    ]
    constants = [
        numpy_helper.from_array(np.array(2.0, np.float32), "two"),
        numpy_helper.from_array(np.array(0.5, np.float32), "half"),
    ]
    graph = helper.make_graph(
        nodes,
        "stateful",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", width]),
            helper.make_tensor_value_info("state", TensorProto.FLOAT, ["N", width]),
        ],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", width]),
            helper.make_tensor_value_info("stateN", TensorProto.FLOAT, ["N", width]),
        ],
        constants,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def loopback_device(tmp: Path, *, python: str = sys.executable) -> DeviceTarget:
    """A DeviceTarget whose device is a fresh interpreter on this host (device paths -> host folders)."""

    def run(
        argv: list[str], binds: Mapping[str, str], env: Mapping[str, str]
    ) -> subprocess.CompletedProcess[str]:
        def host_path(text: str) -> str:
            for host, inside in binds.items():
                text = text.replace(inside, host)
            return text

        clean = {"PATH": os.environ.get("PATH", ""), "HOME": str(tmp), "LANG": "C.UTF-8"}
        clean.update({k: host_path(v) for k, v in env.items()})
        return subprocess.run(
            [host_path(a) for a in argv], env=clean, cwd=tmp, capture_output=True, text=True, check=False
        )

    return DeviceTarget(name="loopback", python=python, run=run, machine="x86_64", emulated=False)


def arm64_unavailable() -> str | None:
    """Why the emulated arm64 device cannot be used here, or None."""
    if os.geteuid() != 0:
        return "the arm64 root needs root rights (mount namespace, chroot)"
    try:
        from edgekit.emulation.root import default_root_path, is_complete
    except ImportError:
        return "edgekit.emulation is not part of this installation"
    if os.environ.get("EDGEKIT_ARM64_ROOT") is None and not is_complete(default_root_path()):
        return f"no arm64 root at {default_root_path()} (build it: bash scripts/arm64.sh)"
    return None


@pytest.fixture(scope="session")
def arm64() -> Any:
    """The emulated arm64 device target (root and device venv reused or built)."""
    reason = arm64_unavailable()
    if reason is not None:
        if os.environ.get("EDGEKIT_REQUIRE_ARM64") == "1":
            pytest.fail(f"EDGEKIT_REQUIRE_ARM64=1 but {reason}")
        pytest.skip(reason)
    from edgekit.targets import arm64_target

    root = os.environ.get("EDGEKIT_ARM64_ROOT")
    return arm64_target(root, os.environ.get("EDGEKIT_ARM64_PYTHON"))
