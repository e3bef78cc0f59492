"""examples/fleet/rollout_demo.sh end to end on a digits build made without training.

The build directory is what examples/digits/run.sh leaves, with the CNN replaced by a linear classifier
fitted by least squares (seconds instead of a minute of Keras): the same images, spec, labels, the real
`edgekit quantize` parity gate, key and signed 1.0.0 bundle. Then the demo script runs unchanged, with a
smaller fleet: a real server, real device processes updating through TUF, the gates promoting 1.1.0
through every stage and rolling 1.2.0 (classes swapped) back at 1%, and nothing left running afterwards.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "examples" / "fleet" / "rollout_demo.sh"
TRAIN = ROOT / "examples" / "digits" / "train.py"
SIM = r"sim (?:\d+ d )?\d\d:\d\d h"  # the demo's simulated clock: `sim 04:21 h`, `sim 1 d 02:30 h` past a day


def _edgekit(*args: str | Path) -> None:
    command = [str(Path(sys.executable).parent / "edgekit"), *map(str, args)]
    subprocess.run(command, check=True, capture_output=True, text=True, timeout=300)


def write_linear_model(path: Path, x: np.ndarray, labels: np.ndarray) -> None:
    """image [N, 32, 32, 1] -> Reshape -> MatMul -> Add -> logits [N, 10], fitted to one-hot targets."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    flat = np.concatenate([x.reshape(len(x), -1), np.ones((len(x), 1), np.float32)], axis=1)
    target = np.eye(10, dtype=np.float32)[labels] * 10.0
    solution = np.linalg.lstsq(flat, target, rcond=1e-3)[0].astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Reshape", ["image", "shape"], ["flat"]),
            helper.make_node("MatMul", ["flat", "w"], ["scores"]),
            helper.make_node("Add", ["scores", "b"], ["logits"]),
        ],
        "linear_digits",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 32, 32, 1])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])],
        initializer=[
            numpy_helper.from_array(np.asarray([-1, 1024], np.int64), "shape"),
            numpy_helper.from_array(solution[:-1], "w"),
            numpy_helper.from_array(solution[-1], "b"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model)
    onnx.save(model, path)


@pytest.fixture(scope="module")
def build(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A digits build directory as examples/digits/run.sh leaves it (steps 2-8, no training)."""
    from device_runtime.preprocess import ImageInputSpec, load_spec, preprocess_images

    out = tmp_path_factory.mktemp("digits-build")
    loaded = importlib.util.spec_from_file_location("digits_train", TRAIN)
    assert loaded is not None and loaded.loader is not None
    train = importlib.util.module_from_spec(loaded)
    loaded.loader.exec_module(train)
    (out / "preprocess.json").write_text(json.dumps(train.SPEC, indent=2) + "\n")
    spec = load_spec(out / "preprocess.json").inputs[0]
    assert isinstance(spec, ImageInputSpec)
    calib_paths, eval_paths, calib_labels, eval_labels = train.write_images(out)
    x_calib, x_eval = preprocess_images(spec, calib_paths), preprocess_images(spec, eval_paths)
    np.save(out / "eval.npy", x_eval)
    np.save(out / "eval_labels.npy", eval_labels)
    write_linear_model(out / "digits.onnx", x_calib, calib_labels)
    eval_set: list[str | Path] = ["--eval", out / "eval.npy", "--labels", out / "eval_labels.npy"]
    spec_file: list[str | Path] = ["--preprocess", out / "preprocess.json"]
    _edgekit(
        "quantize",
        out / "digits.onnx",
        "-o",
        out / "digits.int8.onnx",
        "--calibration",
        out / "images" / "calib",
        *spec_file,
        *eval_set,
        "--report",
        out / "digits.int8.parity.json",
        "--allow-slower",
    )
    _edgekit("keygen", "-o", out / "keys", "--name", "release")
    (out / "labels.txt").write_text("".join(f"digit {i}\n" for i in range(10)))
    _edgekit(
        "bundle",
        out / "digits.int8.onnx",
        "-o",
        out / "digits-1.0.0.ekb",
        "--name",
        "digits",
        "--version",
        "1.0.0",
        "--key",
        out / "keys" / "release.key",
        *spec_file,
        "--labels",
        out / "labels.txt",
        "--golden",
        out / "images" / "eval",
        "--parity",
        out / "digits.int8.parity.json",
        "--release-counter",
        "1",
    )
    return out


def _processes_mentioning(text: str) -> list[str]:
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in args and "pytest" not in args:
            found.append(args)
    return found


@pytest.mark.slow
def test_the_rollout_demo_promotes_a_good_release_and_rolls_back_a_bad_one(build: Path) -> None:
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "FLEET_DEVICES": "300",
        "FLEET_PROCESSES": "2",
        "FLEET_TIMEOUT": "200",
        "FLEET_NO_WAIT": "1",  # a script must not wait for Ctrl-C at the end (nor would it without a tty)
        # this checkout's code, also when the venv's editable install points at another checkout
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    env.pop("EDGEKIT_ADMIN_TOKEN", None)
    shm_before = set(Path("/dev/shm").glob("edgekit-fleet.*")) if Path("/dev/shm").is_dir() else set()
    result = subprocess.run(
        ["bash", str(DEMO), "--no-wait", str(build)],
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=420,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-6000:]
    # every stage was promoted by the gates, one line per evaluation in words, on the simulated clock only
    for stage, then in (
        (1, "promoted to 5%"),
        (5, "promoted to 25%"),
        (25, "promoted to 100%"),
        (100, "complete"),
    ):
        assert re.search(rf"\[{SIM}\] stage {stage}%: {then} - ", output), output[-6000:]
    # with no feedback label sent at all, by a label-free gate, the statistic and its limit in words
    bad_rollout = output[output.index("== 6.") :]
    assert re.search(
        rf"\[{SIM}\] stage 1%: rolling back - \S.* limit even at its lower bound", output
    ), bad_rollout[-8000:]
    summary = output[output.index("== summary") :]
    assert re.search(r"of simulated time: completed at stage 100%", summary), summary
    assert re.search(r"of simulated time: rolled back at stage 1%", summary), summary
    assert re.search(r"rolled back by the (shadow|class-shift) gate", summary), summary
    assert summary.count("not judged (no data of that kind): ") == 2, summary  # once per rollout
    assert " 0 feedback labels sent" in summary, summary
    assert "digits 1.2.0" in summary and "parity gate" in summary
    assert "fleet: 300 devices, 300 on 1.1.0" in summary, summary
    assert "done: the server is stopped (--no-wait)" in output, output[-3000:]
    # no jargon or Python values: no reprs, no raw records, no real dates next to simulated ones, and a
    # redrawn cohort is not reported as a rollback
    for raw in (
        "None",
        "treatment -",
        " n=",
        "statistic",
        "_guardrail",
        "shadow_agreement",
        "sim +",
        "rolled_back",
    ):
        assert raw not in output, (raw, output[-6000:])
    assert not re.search(r"20\d\d-\d\d-\d\d \d\d:", output), output[-6000:]
    assert not re.search(r"\d\.\d{5,}", output), output[-6000:]
    # nothing left behind: no demo process, no device stores in /dev/shm
    assert not _processes_mentioning(str(build)), _processes_mentioning(str(build))
    if Path("/dev/shm").is_dir():
        assert set(Path("/dev/shm").glob("edgekit-fleet.*")) <= shm_before
    shutil.rmtree(build / "fleet", ignore_errors=True)
