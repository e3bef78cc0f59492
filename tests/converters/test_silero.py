"""The real silero VAD (stateful RNN: `input [B, 576]`, `state [2, B, 128]`, 0-d int64 `sr`) end to end.

Data is synthetic speech-like audio (tests/converters/signatures.py) in sequences of 512-sample chunks;
the state output `stateN` is fed back as `state` at every step (`--state stateN=state`).
"""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner, Result

from converters.data import load_dataset
from converters.parity import sqnr_db
from converters.runner import run_model, unroll
from converters.signature import Signature
from device_runtime.engines import load_engine
from edgekit.cli import cli
from tests.converters.signatures import SILERO_WHEEL, extract_silero, vad_sequences

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not SILERO_WHEEL.is_file(), reason="silero_vad wheel not in the zoo cache"),
]

STATE = ["--state", "stateN=state"]
SEQUENCES, STEPS = 8, 32


@dataclass(frozen=True)
class Vad:
    model: Path
    model_op15: Path  # the same VAD as one flat graph (16 kHz only): int8 reaches its convolutions
    sequences: Path  # input (S, T, 576), sr 0-d
    flat: Path  # input (N, 576), state (2, N, 128), sr 0-d: independent steps
    work: Path


@pytest.fixture(scope="module")
def vad(tmp_path_factory: pytest.TempPathFactory) -> Vad:
    work = tmp_path_factory.mktemp("silero")
    model = extract_silero(work)
    op15 = work / "silero_vad_16k_op15.onnx"
    with zipfile.ZipFile(SILERO_WHEEL) as wheel:
        op15.write_bytes(wheel.read("silero_vad/data/silero_vad_16k_op15.onnx"))
    audio = vad_sequences(SEQUENCES, STEPS, seed=0)
    sr = np.array(16000, np.int64)
    np.savez(work / "sequences.npz", input=audio, sr=sr)
    flat = audio[:, 0]  # first chunk of each recording, state zeros
    np.savez(work / "flat.npz", input=flat, state=np.zeros((2, SEQUENCES, 128), np.float32), sr=sr)
    return Vad(model, op15, work / "sequences.npz", work / "flat.npz", work)


def run_cli(args: list[object]) -> Result:
    return CliRunner().invoke(cli, [str(a) for a in args])


def rounded_to_fp16(source: Path, target: Path) -> Path:
    """Every float32 weight (initializers and Constant tensors, in every subgraph) rounded to float16."""
    import onnx
    from onnx import numpy_helper

    def graphs(graph: object) -> list:
        found = [graph]
        for node in graph.node:  # type: ignore[attr-defined]
            for attribute in node.attribute:
                if attribute.type == onnx.AttributeProto.GRAPH:
                    found += graphs(attribute.g)
                for sub in attribute.graphs:
                    found += graphs(sub)
        return found

    def rounded(tensor: object) -> object:
        array = numpy_helper.to_array(tensor)
        return numpy_helper.from_array(array.astype(np.float16).astype(np.float32), tensor.name)  # type: ignore[attr-defined]

    model = onnx.load(str(source))
    for graph in graphs(model.graph):
        for init in graph.initializer:
            if init.data_type == onnx.TensorProto.FLOAT:
                init.CopyFrom(rounded(init))
        for node in graph.node:
            for attribute in node.attribute:
                if node.op_type == "Constant" and attribute.name == "value" and attribute.t.data_type == 1:
                    attribute.t.CopyFrom(rounded(attribute.t))
    onnx.save(model, str(target))
    return target


def test_synthetic_speech_makes_the_float_vad_fire_and_rest(vad: Vad) -> None:
    engine = load_engine(vad.model)
    data = load_dataset(
        vad.sequences, engine.inputs, outputs=engine.outputs, signature=Signature(states={"stateN": "state"})
    )
    probability = run_model(engine, data)["output"].ravel()
    assert probability.shape == (SEQUENCES * STEPS,)
    assert (probability > 0.5).mean() > 0.1 and (probability < 0.1).mean() > 0.2


def test_convert_checks_silero_with_a_0d_sr_sample_flat_and_as_sequences(vad: Vad) -> None:
    result = run_cli(["convert", vad.model, "-o", vad.work / "flat.onnx", "--sample", vad.flat])
    assert result.exit_code == 0, result.output
    assert f"on {SEQUENCES} samples" in result.output
    result = run_cli(["convert", vad.model, "-o", vad.work / "seq.onnx", "--sample", vad.sequences, *STATE])
    assert result.exit_code == 0, result.output
    assert "on 64 samples" in result.output  # two whole sequences of 32 steps


def test_parity_fp32_vs_fp16_weights_over_sequences_passes(vad: Vad) -> None:
    candidate = rounded_to_fp16(vad.model, vad.work / "fp16.onnx")
    report = vad.work / "fp16.json"
    result = run_cli(
        [
            "parity",
            vad.model,
            candidate,
            "--data",
            vad.sequences,
            *STATE,
            "--min-sqnr",
            "30",
            "--report",
            report,
        ]
    )
    assert result.exit_code == 0, result.output
    document = json.loads(report.read_text())
    assert document["samples"] == SEQUENCES * STEPS
    assert {o["name"] for o in document["outputs"]} == {"output", "stateN"}
    assert all(o["sqnr_db"] > 30 for o in document["outputs"])


def test_int8_parity_over_sequences_measures_error_accumulated_through_the_state(vad: Vad) -> None:
    from converters.quantize_onnx import quantize_dynamic_onnx

    candidate = vad.work / "int8.onnx"
    quantize_dynamic_onnx(vad.model_op15, candidate)
    reference_engine, candidate_engine = load_engine(vad.model_op15), load_engine(candidate)
    data = load_dataset(
        vad.sequences,
        reference_engine.inputs,
        outputs=reference_engine.outputs,
        signature=Signature(states={"stateN": "state"}),
    )
    free_running = sqnr_db(
        run_model(reference_engine, data)["output"], run_model(candidate_engine, data)["output"]
    )
    steps = unroll(reference_engine, data)  # every step from the float model's state
    teacher_forced = sqnr_db(
        run_model(reference_engine, steps)["output"], run_model(candidate_engine, steps)["output"]
    )
    assert free_running < teacher_forced  # the recurrence compounds the int8 error
    result = run_cli(["parity", vad.model_op15, candidate, "--data", vad.sequences, *STATE])
    assert result.exit_code == 1 and "parity on 256 samples: FAIL" in result.output
    assert "Traceback" not in result.output


def test_quantize_calibrates_on_every_step_of_the_sequences(vad: Vad) -> None:
    report = vad.work / "q.json"
    result = run_cli(
        [
            "quantize", vad.model, "-o", vad.work / "q.onnx", "--calibration", vad.sequences, *STATE,
            "--skip-latency", "--report", report,
        ]
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    document = json.loads(report.read_text())
    assert document["quantization"]["calibration"]["samples"] == SEQUENCES * STEPS
    assert document["samples"] == SEQUENCES * STEPS and document["passed"]


def test_int8_that_breaks_the_vad_is_refused_with_one_line(vad: Vad) -> None:
    output = vad.work / "op15.int8.onnx"
    result = run_cli(
        [
            "quantize", vad.model_op15, "-o", output, "--calibration", vad.sequences, *STATE,
            "--skip-latency", "--no-repair",
        ]
    )  # fmt: skip
    assert result.exit_code == 1
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "fails the parity gate" in errors[0], (result.output, repr(result.exception))
    assert not output.exists() and "Traceback" not in result.output


def test_npz_with_0d_sr_goes_through_every_command_without_a_traceback(vad: Vad) -> None:
    commands = [
        ["convert", vad.model, "-o", vad.work / "c.onnx", "--sample", vad.flat],
        ["parity", vad.model, vad.model, "--data", vad.flat],
        ["quantize", vad.model, "-o", vad.work / "d.onnx", "--calibration", vad.flat, "--mode", "dynamic",
         "--skip-latency"],
    ]  # fmt: skip
    for args in commands:
        result = run_cli(args)
        assert result.exit_code == 0, (args, result.output)
        assert "Traceback" not in result.output
    assert run_cli(["keygen", "-o", vad.work / "keys"]).exit_code == 0
    bundle = vad.work / "vad.ekb"
    args = ["bundle", vad.model, "-o", bundle, "--name", "vad", "--version", "1", "--golden", vad.flat]
    result = run_cli([*args, "--key", vad.work / "keys" / "release.key"])
    assert result.exit_code == 0, result.output
    result = run_cli(["bundle", vad.model, "-o", vad.work / "x.ekb", "--name", "vad", "--version", "1",
                      "--key", vad.work / "keys" / "release.key"])  # fmt: skip
    assert result.exit_code == 1 and "--golden DATA" in result.output and "--sample" not in result.output


def test_golden_vectors_keep_the_0d_sr_and_pass_the_device_check(vad: Vad, tmp_path: Path) -> None:
    import json

    from device_runtime.golden import check_golden
    from edgekit._golden_pack import make_golden

    engine = load_engine(vad.model)
    golden = make_golden(Path(vad.flat), engine, None, samples=4, budget=1 << 20)
    for name, content in golden.files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(content)
    document = json.loads((tmp_path / "golden" / "golden.json").read_text())
    assert document["layout"] == "runs" and document["samples"] == 4
    assert np.load(tmp_path / "golden" / "input_2.npy").shape == (4,)  # sr: one 0-d value per run
    assert np.load(tmp_path / "golden" / "input_1.npy").shape == (4, 2, 1, 128)  # state batched on axis 1
    result = check_golden(tmp_path, engine.run)
    assert result.passed, result.details
    expected = np.load(tmp_path / "golden" / "output_0.npy")
    np.save(tmp_path / "golden" / "output_0.npy", (1.0 - expected.astype(np.float32)).astype(expected.dtype))
    assert not check_golden(tmp_path, engine.run).passed  # the check still bites in the runs layout
