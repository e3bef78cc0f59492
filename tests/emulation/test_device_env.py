"""The device distribution installed in the arm64 root: the wheel's packages and both engines run there."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from edgekit.emulation import run_in_root
from edgekit.emulation.device_env import VENV, ensure_device_python

REPO = Path(__file__).resolve().parents[2]
LOCK = REPO / "device" / "requirements" / "py311.txt"  # the root's Python is Debian bookworm's 3.11

pytestmark = [
    pytest.mark.slow,  # from nothing the venv takes minutes under emulation; later runs reuse it
    pytest.mark.skipif(not (REPO / "scripts" / "device_suite.sh").exists() or not LOCK.exists(),
                       reason="the device distribution (device/, its lock files) is not in this tree"),
]  # fmt: skip

# Runs in the root: the packages come from the installed wheel, and onnxruntime predicts on aarch64.
PROBE = """
import platform, numpy as np, onnx, onnxruntime as ort, device_runtime, signing
from onnx import TensorProto, helper
from ai_edge_litert.interpreter import Interpreter
x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])
y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])
graph = helper.make_graph([helper.make_node("Add", ["x", "x"], ["y"])], "double", [x], [y])
model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
out = session.run(None, {"x": np.array([1.5, -2.0], np.float32)})[0]
print(platform.machine(), "site-packages" in device_runtime.__file__, "site-packages" in signing.__file__,
      out.tolist())
"""


@pytest.fixture(scope="module")
def staged(tmp_path_factory: pytest.TempPathFactory) -> Path:
    stage = tmp_path_factory.mktemp("device-stage")
    subprocess.run(["bash", str(REPO / "scripts" / "device_suite.sh"), "stage", str(stage)], check=True,
                   capture_output=True)  # fmt: skip
    return stage


def test_device_wheel_and_engines_run_in_the_root(arm64_root: Path, staged: Path) -> None:
    (wheel,) = (staged / "dist").glob("edgekit_device-*.whl")
    python = ensure_device_python(arm64_root, wheel, staged / "requirements" / "py311.txt")
    assert python == f"{VENV}/bin/python"
    proc = run_in_root(arm64_root, [python, "-c", PROBE], timeout=1800)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().split(maxsplit=3) == ["aarch64", "True", "True", "[3.0, -4.0]"]


def test_an_unchanged_device_venv_is_reused(arm64_root: Path, staged: Path) -> None:
    (wheel,) = (staged / "dist").glob("edgekit_device-*.whl")
    lock = staged / "requirements" / "py311.txt"
    ensure_device_python(arm64_root, wheel, lock)
    stamp = arm64_root / VENV.lstrip("/") / ".edgekit-stamp"
    before = stamp.stat().st_mtime_ns
    ensure_device_python(arm64_root, wheel, lock)
    assert stamp.stat().st_mtime_ns == before


def test_a_venv_made_with_another_lock_file_is_not_the_device_python(tmp_path: Path) -> None:
    # After a pin changes (a new onnxruntime), the emulated device must not go on measuring old engines.
    from edgekit.emulation.device_env import DEVICE_DIR, VENV, installed_device_python

    root, lock = tmp_path / "root", tmp_path / "py311.txt"
    lock.write_text("onnxruntime==1.31.1\n")
    assert installed_device_python(root, lock) is None  # nothing installed
    venv = root / VENV.lstrip("/")
    venv.mkdir(parents=True)
    (root / DEVICE_DIR.lstrip("/") / "in").mkdir(parents=True)
    (root / DEVICE_DIR.lstrip("/") / "in" / "requirements.txt").write_text("onnxruntime==1.31.1\n")
    assert installed_device_python(root, lock) is None  # no stamp: the install never finished
    (venv / ".edgekit-stamp").write_text("done")
    assert installed_device_python(root, lock) == f"{VENV}/bin/python"
    lock.write_text("onnxruntime==1.32.0\n")
    assert installed_device_python(root, lock) is None
    assert installed_device_python(root) == f"{VENV}/bin/python"
