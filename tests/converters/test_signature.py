"""Any input signature: batch axes per input, 0-d and no-batch inputs, dtypes, fixed batch, sequences.

Small ONNX models built in code (tests/converters/signatures.py), run through the real engines and the
real CLI.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner, Result

from converters.data import load_dataset
from converters.errors import DataError, ModelInputError
from converters.export import convert, sample_dataset
from converters.runner import run_model, unroll
from converters.signature import Signature, resolve_batch_axes
from device_runtime.engines import load_engine
from edgekit.cli import cli
from tests.converters import signatures as models


def run_cli(args: list[str]) -> Result:
    return CliRunner().invoke(cli, [str(a) for a in args])


def error_line(result: Result) -> str:
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, result.output
    assert "Traceback" not in result.output
    return errors[0]


# --- batch axes -------------------------------------------------------------------------------------


def test_named_batch_dim_on_axis_one_is_found_and_outputs_concatenate_there(tmp_path: Path) -> None:
    model = models.batch_on_axis_one(tmp_path / "axis1.onnx")
    engine = load_engine(model)
    assert resolve_batch_axes(engine.inputs, engine.outputs) == {"x": 1}
    x = np.random.default_rng(0).standard_normal((3, 10, 4)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    data = load_dataset(tmp_path / "x.npy", engine.inputs, outputs=engine.outputs)
    assert data.size == 10
    outputs = run_model(engine, data, batch_size=4)
    assert outputs["y"].shape == (3, 10, 4)
    np.testing.assert_allclose(outputs["y"], engine.run({"x": x})["y"], rtol=1e-6)


def test_sampling_takes_rows_on_the_batch_axis(tmp_path: Path) -> None:
    engine = load_engine(models.batch_on_axis_one(tmp_path / "axis1.onnx"))
    x = np.arange(3 * 50 * 4, dtype=np.float32).reshape(3, 50, 4)
    np.save(tmp_path / "x.npy", x)
    data = load_dataset(tmp_path / "x.npy", engine.inputs, max_samples=8, seed=1)
    assert data.arrays["x"].shape == (3, 8, 4)
    np.testing.assert_array_equal(data.arrays["x"], x[:, data.indices])


def test_declared_batch_axis_wins_and_wrong_declarations_fail_clearly(tmp_path: Path) -> None:
    engine = load_engine(models.batch_on_axis_one(tmp_path / "axis1.onnx"))
    assert resolve_batch_axes(engine.inputs, signature=Signature(batch_axes={"x": None})) == {"x": None}
    with pytest.raises(DataError, match=r"--batch-axis names \['nope'\]"):
        resolve_batch_axes(engine.inputs, signature=Signature(batch_axes={"nope": 0}))
    with pytest.raises(DataError, match=r"axis in 0\.\.2"):
        resolve_batch_axes(engine.inputs, signature=Signature(batch_axes={"x": 5}))


def test_unnamed_state_dim_is_the_batch_axis_and_0d_inputs_have_none(tmp_path: Path) -> None:
    from device_runtime.engines import TensorInfo

    inputs = (
        TensorInfo("input", (None, None), "float32"),
        TensorInfo("state", (2, None, 128), "float32"),
        TensorInfo("sr", (), "int64"),
        TensorInfo("fixed_state", (4, 32), "float32"),
    )
    assert resolve_batch_axes(inputs) == {"input": 0, "state": 1, "sr": None, "fixed_state": None}


# --- 0-d, no-batch and mixed dtypes -----------------------------------------------------------------


def _mixed_feeds(n: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "x16": rng.standard_normal((n, 4)).astype(np.float16),
        "ids": rng.integers(0, 100, (n, 4)).astype(np.int64),
        "mask": rng.integers(0, 2, (n, 4)).astype(bool),
    }


def test_0d_input_is_one_constant_for_every_sample_with_bool_int64_float16(tmp_path: Path) -> None:
    model = models.mixed_dtypes(tmp_path / "mixed.onnx")
    engine = load_engine(model)
    feeds = _mixed_feeds(12)
    np.savez(tmp_path / "data.npz", **feeds, scale=np.float32(2.5))
    data = load_dataset(tmp_path / "data.npz", engine.inputs, outputs=engine.outputs)
    assert data.size == 12 and data.axis("scale") is None
    outputs = run_model(engine, data, batch_size=5)
    expected = np.where(feeds["mask"], feeds["x16"].astype(np.float32) * 2.5, feeds["ids"].astype(np.float32))
    np.testing.assert_allclose(outputs["y"], expected, rtol=1e-6)


def test_int_data_is_cast_to_bool_and_narrower_ints_when_values_fit(tmp_path: Path) -> None:
    engine = load_engine(models.mixed_dtypes(tmp_path / "mixed.onnx"))
    feeds = _mixed_feeds(4)
    np.savez(
        tmp_path / "data.npz",
        x16=feeds["x16"].astype(np.float64),
        ids=feeds["ids"].astype(np.int32),
        mask=feeds["mask"].astype(np.int64),
        scale=np.float64(1.0),
    )
    data = load_dataset(tmp_path / "data.npz", engine.inputs)
    assert data.arrays["mask"].dtype == bool and data.arrays["x16"].dtype == np.float16
    np.savez(tmp_path / "bad.npz", **{**feeds, "mask": np.full((4, 4), 2)}, scale=np.float32(1))
    with pytest.raises(DataError, match="'mask' has dtype int64, the model takes bool"):
        load_dataset(tmp_path / "bad.npz", engine.inputs)


def test_0d_data_for_a_batched_input_is_broadcast_to_every_sample(tmp_path: Path) -> None:
    engine = load_engine(models.mixed_dtypes(tmp_path / "mixed.onnx"))
    feeds = _mixed_feeds(6)
    np.savez(tmp_path / "data.npz", **{**feeds, "mask": np.array(True)}, scale=np.float32(1))
    data = load_dataset(tmp_path / "data.npz", engine.inputs)
    assert data.arrays["mask"].shape == (6, 4) and data.arrays["mask"].all()


def test_no_batch_input_with_one_value_per_sample_runs_sample_by_sample(tmp_path: Path) -> None:
    engine = load_engine(models.mixed_dtypes(tmp_path / "mixed.onnx"))
    feeds = _mixed_feeds(5)
    scales = np.arange(5, dtype=np.float32)
    np.savez(tmp_path / "data.npz", **feeds, scale=scales)
    data = load_dataset(tmp_path / "data.npz", engine.inputs)
    assert data.stacked == {"scale"} and data.run_batch(64) == 1
    outputs = run_model(engine, data)
    x = feeds["x16"].astype(np.float32) * scales[:, None]
    np.testing.assert_allclose(outputs["y"], np.where(feeds["mask"], x, feeds["ids"].astype(np.float32)))


def test_no_batch_input_of_the_wrong_shape_is_refused_with_both_layouts(tmp_path: Path) -> None:
    engine = load_engine(models.mixed_dtypes(tmp_path / "mixed.onnx"))
    np.savez(tmp_path / "data.npz", **_mixed_feeds(5), scale=np.zeros((5, 2), np.float32))
    with pytest.raises(DataError, match=r"no batch axis.*exact shape \(\).*one per sample"):
        load_dataset(tmp_path / "data.npz", engine.inputs)


# --- fixed batch of one -----------------------------------------------------------------------------


def test_fixed_batch_one_model_runs_sample_by_sample(tmp_path: Path) -> None:
    engine = load_engine(models.fixed_batch_one(tmp_path / "fixed.onnx"))
    x = np.random.default_rng(0).standard_normal((7, 3)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    data = load_dataset(tmp_path / "x.npy", engine.inputs)
    assert data.max_batch == 1
    outputs = run_model(engine, data)
    np.testing.assert_allclose(outputs["y"], np.maximum(x + 1, 0))


def test_fixed_batch_one_model_converts_and_passes_parity_from_the_cli(tmp_path: Path) -> None:
    model = models.fixed_batch_one(tmp_path / "fixed.onnx")
    result = run_cli(["convert", model, "-o", tmp_path / "out.onnx", "--json"])
    assert result.exit_code == 0, result.output
    result = run_cli(["parity", model, tmp_path / "out.onnx", "--data", _save_npy(tmp_path, (9, 3))])
    assert result.exit_code == 0, result.output
    assert "parity on 9 samples: PASS" in result.output


def _save_npy(tmp_path: Path, shape: tuple[int, ...]) -> Path:
    path = tmp_path / "x.npy"
    np.save(path, np.random.default_rng(0).standard_normal(shape).astype(np.float32))
    return path


# --- --input-shape writes fixed dims ----------------------------------------------------------------


def test_input_shape_fixes_the_written_model_and_parity_runs_on_it(tmp_path: Path) -> None:
    model = models.dynamic_image(tmp_path / "dyn.onnx")
    result = convert(model, tmp_path / "fixed.onnx", input_shapes={"x": [1, 3, 48, 192]})
    engine = load_engine(result.path)
    assert engine.inputs[0].shape == (1, 3, 48, 192)
    assert engine.outputs[0].shape == (1, 3)  # the shared name 'n' was fixed in the output too
    assert result.parity["passed"] and result.parity["samples"] == 16
    assert "fixed to x:1,3,48,192" in result.route


@pytest.mark.parametrize(
    ("shape", "message"),
    [
        pytest.param("x:1,4,48,192", "dimension 1 of 'x' is fixed to 3", id="contradicts-static-dim"),
        pytest.param("x:1,3,48", "has 3 dimensions, but input 'x' has 4", id="wrong-rank"),
        pytest.param("y:1,3", "names ['y']", id="unknown-input"),
    ],
)
def test_input_shape_contradicting_the_model_fails_with_one_line(
    tmp_path: Path, shape: str, message: str
) -> None:
    model = models.dynamic_image(tmp_path / "dyn.onnx")
    result = run_cli(["convert", model, "-o", tmp_path / "out.onnx", "--input-shape", shape])
    assert result.exit_code == 1
    assert message in error_line(result)
    assert not (tmp_path / "out.onnx").exists()


def test_dynamic_dims_without_input_shape_name_the_convert_options(tmp_path: Path) -> None:
    model = models.dynamic_image(tmp_path / "dyn.onnx")
    line = error_line(run_cli(["convert", model, "-o", tmp_path / "out.onnx"]))
    assert "--input-shape x:D0,D1,..." in line and "--sample DATA" in line and "--golden" not in line


def test_bundle_hint_names_golden_and_not_convert_options(tmp_path: Path) -> None:
    model = models.dynamic_image(tmp_path / "dyn.onnx")
    assert run_cli(["keygen", "-o", tmp_path / "keys"]).exit_code == 0
    args = ["bundle", model, "-o", tmp_path / "m.ekb", "--name", "m", "--version", "1"]
    line = error_line(run_cli([*args, "--key", tmp_path / "keys" / "release.key"]))
    assert "--golden DATA" in line and "--input-shape" not in line and "--sample" not in line


# --- sequences with state fed back ------------------------------------------------------------------


def _rnn_reference(engine: object, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Loop by hand: each sequence alone, state from zeros, every step's outputs."""
    outs, states = [], []
    for sequence in x:
        h = np.zeros((1, 1, 16), np.float32)
        for step in sequence:
            result = engine.run({"x": step[None], "h": h})  # type: ignore[attr-defined]
            h = result["hn"]
            outs.append(result["out"])
            states.append(h)
    return np.concatenate(outs, axis=0), np.concatenate(states, axis=1)


def test_sequences_feed_state_back_and_batch_across_sequences(tmp_path: Path) -> None:
    engine = load_engine(models.tiny_rnn(tmp_path / "rnn.onnx"))
    x = np.random.default_rng(0).standard_normal((5, 7, 8)).astype(np.float32)
    np.savez(tmp_path / "seq.npz", x=x)
    data = load_dataset(
        tmp_path / "seq.npz", engine.inputs, outputs=engine.outputs, signature=Signature(states={"hn": "h"})
    )
    assert (data.sequences, data.steps, data.size) == (5, 7, 35)
    outputs = run_model(engine, data, batch_size=2)
    out, states = _rnn_reference(engine, x)
    np.testing.assert_allclose(outputs["out"], out, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(outputs["hn"], states, rtol=1e-5, atol=1e-6)
    flat = unroll(engine, data, batch_size=3)
    assert not flat.stateful and flat.arrays["h"].shape == (1, 35, 16)
    np.testing.assert_allclose(run_model(engine, flat)["out"], out, rtol=1e-5, atol=1e-6)


def test_sequence_sampling_keeps_whole_sequences_and_initial_states(tmp_path: Path) -> None:
    engine = load_engine(models.tiny_rnn(tmp_path / "rnn.onnx"))
    x = np.random.default_rng(0).standard_normal((6, 4, 8)).astype(np.float32)
    h0 = np.random.default_rng(1).standard_normal((6, 1, 16)).astype(np.float32)  # (S, *sample)
    np.savez(tmp_path / "seq.npz", x=x, h=h0)
    data = load_dataset(
        tmp_path / "seq.npz",
        engine.inputs,
        outputs=engine.outputs,
        signature=Signature(states={"hn": "h"}),
        max_samples=8,
        seed=3,
    )
    assert data.sequences == 2 and data.steps == 4
    chosen = data.indices[::4] // 4
    first = engine.run({"x": x[chosen[0], 0][None], "h": h0[chosen[0]][:, None]})
    np.testing.assert_allclose(run_model(engine, data)["out"][0], first["out"][0], rtol=1e-5)


def test_flat_data_for_a_stateful_signature_explains_the_sequence_layout(tmp_path: Path) -> None:
    engine = load_engine(models.tiny_rnn(tmp_path / "rnn.onnx"))
    np.savez(tmp_path / "flat.npz", x=np.zeros((10, 8), np.float32))
    line = error_line(
        run_cli(
            [
                "parity",
                tmp_path / "rnn.onnx",
                tmp_path / "rnn.onnx",
                "--data",
                tmp_path / "flat.npz",
                "--state",
                "hn=h",
            ]
        )
    )
    assert "(S, T, 8)" in line
    with pytest.raises(DataError, match="not a model output"):
        load_dataset(
            tmp_path / "flat.npz",
            engine.inputs,
            outputs=engine.outputs,
            signature=Signature(states={"zz": "h"}),
        )


def test_random_sample_data_for_a_stateful_model_runs_sequences(tmp_path: Path) -> None:
    engine = load_engine(models.tiny_rnn(tmp_path / "rnn.onnx"))
    data = sample_dataset(engine.inputs, engine.outputs, Signature(states={"hn": "h"}))
    assert data.stateful and data.sequences == 4 and data.steps == 4
    assert run_model(engine, data)["out"].shape == (16, 2)


def test_stateful_convert_quantize_and_parity_from_the_cli(tmp_path: Path) -> None:
    model = models.tiny_rnn(tmp_path / "rnn.onnx")
    x = np.random.default_rng(0).standard_normal((16, 8, 8)).astype(np.float32)
    np.savez(tmp_path / "seq.npz", x=x)
    state = ["--state", "hn=h"]
    result = run_cli(["convert", model, "-o", tmp_path / "c.onnx", "--sample", tmp_path / "seq.npz", *state])
    assert result.exit_code == 0, result.output
    assert "on 64 samples" in result.output  # convert draws 64 steps: 8 whole sequences of 8
    quantized = tmp_path / "q.onnx"
    result = run_cli(
        [
            "quantize", model, "-o", quantized, "--calibration", tmp_path / "seq.npz", *state,
            "--skip-latency", "--min-sqnr", "15", "--json",
        ]
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    result = run_cli(["parity", model, quantized, "--data", tmp_path / "seq.npz", *state, "--min-sqnr", "15"])
    assert result.exit_code == 0, result.output
    assert "parity on 128 samples: PASS" in result.output


@pytest.mark.parametrize(
    ("option", "fragment"),
    [
        pytest.param(["--batch-axis", "x"], "NAME=AXIS", id="batch-axis-without-axis"),
        pytest.param(["--batch-axis", "x=-1"], "NAME=AXIS", id="batch-axis-negative"),
        pytest.param(["--state", "hn"], "OUTPUT=INPUT", id="state-without-input"),
    ],
)
def test_malformed_signature_options_are_usage_errors(
    tmp_path: Path, option: list[str], fragment: str
) -> None:
    model = models.tiny_rnn(tmp_path / "rnn.onnx")
    result = run_cli(["parity", model, model, "--data", tmp_path / "none.npz", *option])
    assert result.exit_code == 2 and fragment in result.output


def test_model_input_error_for_state_on_a_non_onnx_source(tmp_path: Path) -> None:
    (tmp_path / "m.pkl").write_bytes(b"not a pickle")
    with pytest.raises(ModelInputError, match="apply to ONNX sources"):
        convert(tmp_path / "m.pkl", tmp_path / "o.onnx", signature=Signature(states={"a": "b"}))


def test_latency_feeds_tile_each_input_on_its_own_batch_axis() -> None:
    from converters.latency import _feeds_for

    sample = {"state": np.arange(2 * 3 * 4).reshape(2, 3, 4), "sr": np.array(16000), "x": np.ones((3, 5))}
    feeds = _feeds_for(sample, 7, {"state": 1, "sr": None})
    assert feeds["state"].shape == (2, 7, 4) and feeds["sr"].shape == () and feeds["x"].shape == (7, 5)
    np.testing.assert_array_equal(feeds["state"][:, 3], sample["state"][:, 0])


def test_localization_treats_a_0d_activation_as_one_channel() -> None:
    from converters.localize import _channel_sums

    np.testing.assert_array_equal(_channel_sums(np.array(3.0)), [9.0])
