"""The parity gate measured on a device target: the DeviceTarget path through a loopback device.

The loopback device is a fresh interpreter on this host running the device CLI on files, so these tests
check everything of `--target` but the emulation: planning here, executing there, results back, the
report naming the target, and the gate judging the target's outputs (not the host's).
"""

from __future__ import annotations

import subprocess
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from converters.data import load_dataset
from converters.errors import TargetError
from converters.parity import Gate, parity_report
from converters.runner import run_model
from converters.signature import Signature
from converters.targets import HOST
from device_runtime.engines import load_engine
from tests.converters.models import fragile_inputs, fragile_mlp
from tests.cross_arch.conftest import loopback_device, stateful_model


@pytest.fixture
def mlp(tmp_path: Path) -> tuple[Path, Path]:
    model = fragile_mlp(tmp_path / "mlp.onnx", fragile_layer=100)  # no outlier layer: an ordinary model
    np.save(tmp_path / "data.npy", fragile_inputs(40))
    return model, tmp_path / "data.npy"


def test_loopback_candidate_gives_the_hosts_figures_and_names_its_target(
    tmp_path: Path, mlp: tuple[Path, Path]
) -> None:
    model, data_file = mlp
    data = load_dataset(data_file, load_engine(model).inputs)
    on_host = parity_report(model, model, data)
    on_device = parity_report(model, model, data, target=loopback_device(tmp_path))
    assert on_device["passed"] and on_host["passed"]
    assert on_device["outputs"][0]["sqnr_db"] == on_host["outputs"][0]["sqnr_db"] == 100.0
    assert on_device["target"]["candidate"] == {"name": "loopback", "machine": "x86_64", "emulated": False}
    assert on_device["target"]["reference"]["name"] == "host"
    assert on_host["target"]["candidate"] == HOST.describe()


def test_sequences_run_on_the_device_with_state_fed_back_there(tmp_path: Path) -> None:
    model = stateful_model(tmp_path / "s.onnx")
    x = np.random.default_rng(3).standard_normal((2, 3, 4)).astype(np.float32)  # 2 sequences x 3 steps
    np.savez(tmp_path / "seq.npz", x=x)
    engine = load_engine(model)
    signature = Signature(states={"stateN": "state"})
    data = load_dataset(tmp_path / "seq.npz", engine.inputs, signature=signature, outputs=engine.outputs)
    assert data.steps == 3 and data.sequences == 2
    here = run_model(engine, data)
    there = run_model(engine, data, executor=loopback_device(tmp_path).executor(model))
    assert set(here) == set(there) == {"y", "stateN"}
    for name in here:
        np.testing.assert_array_equal(here[name], there[name])


def _noisy(target, scale: float):  # type: ignore[no-untyped-def]
    """The loopback device, with every output it returns perturbed: a device whose kernels differ."""
    inner = target.run

    def run(
        argv: list[str], binds: Mapping[str, str], env: Mapping[str, str]
    ) -> subprocess.CompletedProcess[str]:
        done = inner(argv, binds, env)
        work = next(host for host, inside in binds.items() if inside.endswith("/work"))
        path = Path(work) / "outputs.npz"
        with np.load(path) as stored:
            arrays = dict(stored)
        rng = np.random.default_rng(0)
        for key, value in arrays.items():
            arrays[key] = value + scale * np.abs(value).max() * rng.standard_normal(value.shape).astype(
                value.dtype
            )
        np.savez(path, **arrays)
        return done

    return replace(target, name="noisy", run=run)


def test_the_gate_judges_the_targets_outputs_not_the_hosts(tmp_path: Path, mlp: tuple[Path, Path]) -> None:
    model, data_file = mlp
    data = load_dataset(data_file, load_engine(model).inputs)
    assert parity_report(model, model, data)["passed"]
    report = parity_report(model, model, data, target=_noisy(loopback_device(tmp_path), 0.5))
    assert not report["passed"]
    assert any("SQNR" in failure for failure in report["failures"])
    assert report["target"]["candidate"]["name"] == "noisy"


def test_a_failing_device_process_is_a_typed_error_with_its_reason(
    tmp_path: Path, mlp: tuple[Path, Path]
) -> None:
    model, data_file = mlp
    data = load_dataset(data_file, load_engine(model).inputs)
    broken = replace(loopback_device(tmp_path), python="/bin/false")
    with pytest.raises(TargetError, match=r"mlp.onnx on loopback: the device process exited with 1"):
        parity_report(model, model, data, target=broken)


def test_preset_auto_builds_for_the_targets_machine(tmp_path: Path) -> None:
    from converters.quantize import QuantizeOptions, _preset_for

    loopback = loopback_device(tmp_path)
    arm = replace(loopback, name="arm64", machine="aarch64")
    assert _preset_for(QuantizeOptions(target=arm)) == "arm"
    assert _preset_for(QuantizeOptions(target=loopback)) == "auto"  # x86: the host's rule decides
    assert _preset_for(QuantizeOptions(target=arm, preset="x86")) == "x86"  # an explicit preset stays


def test_a_candidate_the_device_would_refuse_at_install_fails_the_target_gate(
    tmp_path: Path, mlp: tuple[Path, Path]
) -> None:
    """Within the parity gate (>= 20 dB of the float model) but below the golden self-test's 30 dB against
    this host's outputs: the bundle's goldens, recorded here, would fail on the device."""
    model, data_file = mlp
    data = load_dataset(data_file, load_engine(model).inputs)
    gate = Gate(min_agreement=0.8)  # this MLP's logits are close: noise flips a few near-ties
    report = parity_report(model, model, data, gate=gate, target=_noisy(loopback_device(tmp_path), 0.02))
    sqnr = report["target_consistency"]["logits"]["sqnr_db"]
    assert report["outputs"][0]["sqnr_db"] >= 20.0 and sqnr < 30.0
    assert not report["passed"]
    assert len(report["failures"]) == 1 and "golden self-test" in report["failures"][0]
