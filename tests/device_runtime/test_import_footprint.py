"""Pins which modules the device library and the CLI pull in at import (STYLE: import footprint).

Each check runs in a fresh interpreter (``sys.executable``), since this test process has long since imported
everything. A module counts as loaded when ``sys.modules`` holds the package itself or any submodule of it.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.host_tools import needs_host

ROOT = Path(__file__).resolve().parents[2]

# Host-side or optional packages: a device that only imports device_runtime must load none of them.
DEVICE_FORBIDDEN = (
    "tensorflow",
    "keras",
    "onnx",
    "onnxruntime",
    "ai_edge_litert",
    "PIL",
    "click",
    "converters",
    "edgekit",
    "torch",
    "sklearn",
)
# The CLI needs click (and edgekit itself) but must not pay for a framework until a command needs one.
CLI_FORBIDDEN = ("tensorflow", "onnx", "onnxruntime", "torch")

# The edgekit CLI is host code: the device-only environment (scripts/device_suite.sh) has no click.
needs_cli = needs_host("click", why="the edgekit command line")

# Prints the forbidden packages found in sys.modules as JSON; formatted with the names to look for.
_LOADED = (
    "def loaded(names):\n"
    "    return sorted(n for n in names if any(m == n or m.startswith(n + '.') for m in sys.modules))\n"
)


def _run(code: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )


def _last_json(result: subprocess.CompletedProcess[str]) -> Any:
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_device_runtime_imports_no_host_or_engine_packages() -> None:
    code = (
        "import sys, json\n"
        + _LOADED
        + "import device_runtime, device_runtime.engines, device_runtime.preprocess\n"
        + f"print(json.dumps(loaded({DEVICE_FORBIDDEN!r})))\n"
    )
    assert _last_json(_run(code)) == []


def test_loaded_helper_matches_packages_not_name_prefixes() -> None:
    # "onnx" must not count as loaded just because "onnxruntime" is; guards the check above.
    code = (
        "import sys, json, types\n"
        + _LOADED
        + "sys.modules['onnxruntime_fake'] = types.ModuleType('onnxruntime_fake')\n"
        + "sys.modules['PIL.Image'] = types.ModuleType('PIL.Image')\n"
        + "print(json.dumps(loaded(('onnx', 'onnxruntime', 'PIL'))))\n"
    )
    assert _last_json(_run(code)) == ["PIL"]


def _relu_model(path: Path) -> None:
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 4])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "relu", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # readable by any onnxruntime this project supports
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


@pytest.mark.skipif(importlib.util.find_spec("onnxruntime") is None, reason="needs onnxruntime")
def test_load_engine_imports_onnxruntime_only_when_called(tmp_path: Path) -> None:
    model = tmp_path / "relu.onnx"
    _relu_model(model)
    code = (
        "import sys, json\n"
        + _LOADED
        + "import numpy as np\n"
        + "import device_runtime.engines as engines\n"
        + "before = loaded(('onnxruntime',))\n"
        + "engine = engines.load_engine(sys.argv[1])\n"
        + "after = loaded(('onnxruntime',))\n"
        + "out = engine.run({'x': np.array([[-1.0, 2.0, -3.0, 4.0]], dtype=np.float32)})\n"
        + f"others = [n for n in loaded({DEVICE_FORBIDDEN!r}) if n != 'onnxruntime']\n"
        + "print(json.dumps([before, after, out['y'].tolist(), others]))\n"
    )
    before, after, values, others = _last_json(_run(code, str(model)))
    assert before == [], "onnxruntime was imported before load_engine was called"
    assert after == ["onnxruntime"], "load_engine on an .onnx model did not import onnxruntime"
    assert values == [[0.0, 2.0, 0.0, 4.0]]
    assert others == [], f"loading an ONNX model also imported {others}"


@needs_cli
def test_edgekit_cli_import_loads_no_framework() -> None:
    code = (
        "import sys, json\n"
        + _LOADED
        + "import edgekit.cli\n"
        + f"print(json.dumps(loaded({CLI_FORBIDDEN!r})))\n"
    )
    assert _last_json(_run(code)) == []


@needs_cli
def test_edgekit_help_loads_no_framework() -> None:
    # The console script's own code path (edgekit._entry.main), run in-process so sys.modules can be read.
    code = (
        "import sys, json, io, contextlib\n"
        + _LOADED
        + "from edgekit._entry import main\n"
        + "sys.argv = ['edgekit', '--help']\n"
        + "buf = io.StringIO()\n"
        + "try:\n"
        + "    with contextlib.redirect_stdout(buf):\n"
        + "        main()\n"
        + "    code = 0\n"
        + "except SystemExit as e:\n"
        + "    code = e.code or 0\n"
        + f"print(json.dumps([code, 'Usage' in buf.getvalue(), loaded({CLI_FORBIDDEN!r})]))\n"
    )
    exit_code, printed_usage, bad = _last_json(_run(code))
    assert exit_code == 0
    assert printed_usage
    assert bad == []


def _imported_modules(stderr: str) -> set[str]:
    """Module names from ``python -X importtime`` output (``import time: self | cumulative | name``)."""
    names = set()
    for line in stderr.splitlines():
        if line.startswith("import time:") and line.count("|") == 2:
            name = line.rsplit("|", 1)[1].strip()
            if name != "imported package":
                names.add(name)
    return names


@needs_cli
@pytest.mark.parametrize("how", ["console_script", "module"])
def test_edgekit_help_process_loads_no_framework(how: str) -> None:
    script = Path(sys.executable).with_name("edgekit")
    if how == "console_script":
        if not script.is_file():
            pytest.skip(f"no console script at {script}")
        argv = [sys.executable, "-X", "importtime", str(script), "--help"]
    else:
        argv = [sys.executable, "-X", "importtime", "-m", "edgekit", "--help"]
    result = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, check=False, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr[-4000:]
    assert "Usage" in result.stdout
    modules = _imported_modules(result.stderr)
    assert "edgekit.cli" in modules or "click" in modules, "importtime output was not parsed"
    bad = sorted(n for n in CLI_FORBIDDEN if any(m == n or m.startswith(n + ".") for m in modules))
    assert bad == [], f"`edgekit --help` imported {bad}"


def test_every_device_module_imports_no_host_package() -> None:
    # Host-only code (the Hugging Face import, the TUF conformance harness) lives in converters/ and
    # edgekit/; whatever module of device_runtime an app imports stays inside the device footprint.
    code = (
        "import sys, json, pkgutil, importlib\n"
        + _LOADED
        + "import device_runtime\n"
        + "names = sorted(m.name for m in pkgutil.iter_modules(device_runtime.__path__, 'device_runtime.'))\n"
        + "for name in names:\n"
        + "    importlib.import_module(name)\n"
        + f"print(json.dumps([names, loaded({DEVICE_FORBIDDEN!r})]))\n"
    )
    names, loaded = _last_json(_run(code))
    assert "device_runtime.rollout_plan" in names and "device_runtime.updater" in names
    assert not {"device_runtime.hf_import", "device_runtime.tuf_client_cli"} & set(names)
    assert loaded == []
