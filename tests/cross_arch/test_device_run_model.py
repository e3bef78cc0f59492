"""`python -m device_runtime run-model` and its loop (device_runtime.feeds), with a real onnxruntime."""

from __future__ import annotations

import io
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from device_runtime.engines import load_engine
from device_runtime.errors import InputError
from device_runtime.feeds import load_runs, run_feeds, save_runs
from tests.cross_arch.conftest import stateful_model

ROOT = Path(__file__).resolve().parents[2]


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "device_runtime", *args], cwd=ROOT, capture_output=True, text=True, check=False
    )


def _sequence(x: np.ndarray, state: np.ndarray) -> list[np.ndarray]:
    """The recurrence of `stateful_model` computed by hand: y_t = 2 x_t + s_t, s_{t+1} = s_t / 2 + x_t."""
    ys = []
    for step in x:
        ys.append(2 * step + state)
        state = 0.5 * state + step
    return ys


def test_run_feeds_carries_state_within_a_sequence_and_restarts_at_the_next(tmp_path: Path) -> None:
    engine = load_engine(stateful_model(tmp_path / "s.onnx"))
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 1, 4)).astype(np.float32)  # 2 sequences x 3 steps, batch 1
    start = rng.standard_normal((2, 1, 4)).astype(np.float32)
    runs = [
        {"x": x[seq, step], **({"state": start[seq]} if step == 0 else {})}
        for seq in range(2)
        for step in range(3)
    ]
    outputs = run_feeds(engine, runs, steps=3, states={"stateN": "state"})
    for seq in range(2):
        expected = _sequence(x[seq], start[seq])
        for step in range(3):
            np.testing.assert_allclose(outputs[seq * 3 + step]["y"], expected[step], rtol=1e-6)


def test_run_feeds_refuses_a_state_pair_the_model_lacks(tmp_path: Path) -> None:
    engine = load_engine(stateful_model(tmp_path / "s.onnx"))
    with pytest.raises(InputError, match="state pair stateN=hidden"):
        run_feeds(engine, [{"x": np.zeros((1, 4), np.float32)}], states={"stateN": "hidden"})


def test_run_files_round_trip_keyed_and_plain(tmp_path: Path) -> None:
    runs = [{"a": np.arange(3, dtype=np.int64)}, {"a": np.ones((2, 2), np.float32), "b": np.array(5)}]
    save_runs(tmp_path / "keyed.npz", runs)
    loaded, keyed = load_runs(tmp_path / "keyed.npz")
    assert keyed and len(loaded) == 2
    assert loaded[1]["a"].dtype == np.float32 and int(loaded[1]["b"]) == 5
    save_runs(tmp_path / "plain.npz", runs[:1], keyed=False)
    assert np.load(tmp_path / "plain.npz").files == ["a"]
    assert load_runs(tmp_path / "plain.npz")[1] is False


def test_cli_runs_a_model_without_store_or_keys(tmp_path: Path) -> None:
    model = stateful_model(tmp_path / "s.onnx")
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    np.savez(tmp_path / "in.npz", x=x, state=np.ones_like(x))
    done = _cli(
        "run-model", str(model), "--inputs", str(tmp_path / "in.npz"), "--output", str(tmp_path / "o.npz")
    )
    assert done.returncode == 0, done.stderr
    with np.load(tmp_path / "o.npz") as out:
        np.testing.assert_allclose(out["y"], 2 * x + 1)


def test_cli_feeds_state_back_for_steps(tmp_path: Path) -> None:
    model = stateful_model(tmp_path / "s.onnx")
    x = np.random.default_rng(1).standard_normal((4, 1, 4)).astype(np.float32)
    runs = [{"x": x[0], "state": np.zeros((1, 4), np.float32)}, *({"x": step} for step in x[1:])]
    save_runs(tmp_path / "in.npz", runs)
    done = _cli(
        "run-model",
        str(model),
        "--inputs",
        str(tmp_path / "in.npz"),
        "--output",
        str(tmp_path / "o.npz"),
        "--steps",
        "4",
        "--state",
        "stateN=state",
        "--json",
    )
    assert done.returncode == 0, done.stderr
    outputs, keyed = load_runs(tmp_path / "o.npz")
    assert keyed
    expected = _sequence(x, np.zeros((1, 4), np.float32))
    for got, want in zip(outputs, expected, strict=True):
        np.testing.assert_allclose(got["y"], want, rtol=1e-6)


def test_cli_refuses_bad_state_and_still_requires_store_for_store_commands(tmp_path: Path) -> None:
    model = stateful_model(tmp_path / "s.onnx")
    np.savez(tmp_path / "in.npz", x=np.zeros((1, 4), np.float32), state=np.zeros((1, 4), np.float32))
    bad = _cli(
        "run-model", str(model), "--inputs", str(tmp_path / "in.npz"), "--output", "o.npz", "--state", "y"
    )
    assert bad.returncode == 2 and "OUTPUT=INPUT" in bad.stderr and "Traceback" not in bad.stderr
    status = _cli("status")
    assert status.returncode == 2
    assert "--store" in status.stderr and "--device-id" in status.stderr and "Traceback" not in status.stderr


def test_unreadable_feed_files_are_one_line_input_errors(tmp_path: Path) -> None:
    # A .npy, a non-ASCII digit run key, and an array whose header declares terabytes: each is refused as
    # an InputError (one line at the device CLI), never a TypeError, ValueError or MemoryError traceback.
    np.save(tmp_path / "single.npy", np.zeros(3, np.float32))
    with pytest.raises(InputError, match=r"not an \.npz file"):
        load_runs(tmp_path / "single.npy")
    np.savez(tmp_path / "digits.npz", **{"\u00b2/x": np.zeros(2, np.float32)})
    with pytest.raises(InputError, match="is not 'RUN/NAME'"):
        load_runs(tmp_path / "digits.npz")
    header = np.lib.format.header_data_from_array_1_0(np.zeros(1, np.float32))
    header["shape"] = (1 << 40,)
    member = io.BytesIO()
    np.lib.format.write_array_header_1_0(member, header)
    with zipfile.ZipFile(tmp_path / "huge.npz", "w") as archive:
        archive.writestr("x.npy", member.getvalue() + b"\0" * 16)
    with pytest.raises(InputError, match="could not be read"):
        load_runs(tmp_path / "huge.npz")
