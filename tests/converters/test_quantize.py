"""Quantization behind the parity gate: passing, refusing, repairing, reproducing, measuring."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from converters.errors import GateError, QuantizationError
from converters.latency import LatencyConfig, speed_verdict
from converters.quantize import QuantizeOptions, quantize
from converters.repair import search_exclusions
from edgekit.cli import cli
from tests.converters.models import depthwise_model, fragile_inputs, fragile_mlp

NO_LATENCY = QuantizeOptions(latency=None)
# The fragile-model tests pin the x86 preset so that `auto` (which depends on the host's CPU flags)
# cannot change what they exercise.
FRAGILE = QuantizeOptions(latency=None, preset="x86")


@pytest.fixture(scope="module")
def fragile(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("fragile")
    data = folder / "x.npy"
    np.save(data, fragile_inputs(400))
    return fragile_mlp(folder / "fragile.onnx"), data


def test_good_int8_model_passes_the_gate_with_labels(
    digits_onnx: Path, data_files: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "digits.int8.onnx"
    result = quantize(
        digits_onnx,
        out,
        data_files["calib"],
        eval_data=data_files["eval"],
        labels=data_files["labels"],
        options=NO_LATENCY,
    )
    report = result.report
    assert report["passed"] and out.is_file()
    (logits,) = report["outputs"]
    assert logits["agreement"] >= 0.99 and logits["sqnr_db"] >= 20.0
    assert logits["accuracy_drop_pp"] <= 1.0 and logits["accuracy_reference"] > 0.9
    assert report["candidate"]["size_bytes"] < 0.6 * report["reference"]["size_bytes"]
    assert report["quantization"]["calibration"]["samples"] == 256
    assert report["per_tensor_sqnr"], "localization figures are part of every static report"


def test_one_sample_calibration_is_refused_and_warned(
    digits_onnx: Path, data_files: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "bad.onnx"
    from converters.progress import NullProgress

    progress = NullProgress()
    options = QuantizeOptions(latency=None, samples=1, repair=False, preset="x86-reduce-range", mode="static")
    with pytest.raises(GateError) as caught:
        quantize(
            digits_onnx,
            out,
            data_files["calib"],
            eval_data=data_files["eval"],
            options=options,
            progress=progress,
        )
    assert not out.exists()
    assert any("only 1 calibration samples" in note for note in progress.notes)
    assert caught.value.report is not None and not caught.value.report["passed"]


def test_per_tensor_depthwise_model_is_refused(tmp_path: Path) -> None:
    model = depthwise_model(tmp_path / "dw.onnx")
    data = tmp_path / "x.npy"
    np.save(data, np.random.default_rng(0).standard_normal((200, 8, 12, 12)).astype(np.float32))
    options = QuantizeOptions(latency=None, per_channel=False, repair=False)
    with pytest.raises(GateError, match="agreement"):
        quantize(model, tmp_path / "dw.int8.onnx", data, options=options)
    assert not (tmp_path / "dw.int8.onnx").exists()


def test_repair_keeps_the_outlier_layer_in_float_and_passes(
    fragile: tuple[Path, Path], tmp_path: Path
) -> None:
    model, data = fragile
    with pytest.raises(GateError):
        quantize(model, tmp_path / "norepair.onnx", data, options=replace(FRAGILE, repair=False))
    result = quantize(model, tmp_path / "repaired.onnx", data, options=FRAGILE)
    repair = result.report["repair"]
    assert result.report["passed"]
    assert "gemm_11" in repair["excluded_nodes"]
    assert repair["kept_int8"] / repair["quantizable_nodes"] >= 0.9
    assert repair["evaluations"] <= 12
    assert not repair["before"]["passed"] and repair["after"]["passed"]
    assert repair["after"]["sqnr_db"] > repair["before"]["sqnr_db"] + 10
    worst = max(result.report["per_tensor_sqnr"], key=lambda row: row["damage_db"])
    assert worst["node"] == "gemm_11", "localization names the layer that emits the outlier channel"


def test_same_inputs_and_seed_give_identical_bytes(fragile: tuple[Path, Path], tmp_path: Path) -> None:
    model, data = fragile
    first = quantize(model, tmp_path / "a.onnx", data, options=FRAGILE).path.read_bytes()
    second = quantize(model, tmp_path / "b.onnx", data, options=FRAGILE).path.read_bytes()
    assert first == second


def test_calibration_seed_changes_the_sample(
    digits_onnx: Path, data_files: dict[str, Path], tmp_path: Path
) -> None:
    options = QuantizeOptions(latency=None, samples=64, seed=1, repair=False, preset="x86-reduce-range")
    a = quantize(digits_onnx, tmp_path / "a.onnx", data_files["calib"], options=options).path.read_bytes()
    options = QuantizeOptions(latency=None, samples=64, seed=2, repair=False, preset="x86-reduce-range")
    b = quantize(digits_onnx, tmp_path / "b.onnx", data_files["calib"], options=options).path.read_bytes()
    assert a != b


@pytest.mark.parametrize("mode", ["dynamic", "fp16"])
def test_dynamic_and_fp16_modes_write_gated_models(
    mode: str, digits_onnx: Path, data_files: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / f"{mode}.onnx"
    result = quantize(
        digits_onnx,
        out,
        data_files["calib"],
        eval_data=data_files["eval"],
        options=QuantizeOptions(mode=mode, latency=None),
    )
    assert result.report["passed"] and out.is_file()
    assert result.report["quantization"]["mode"] == mode


def test_tflite_full_int8_from_keras(keras_digits: Path, data_files: dict[str, Path], tmp_path: Path) -> None:
    from device_runtime.engines import load_engine

    out = tmp_path / "digits.int8.tflite"
    result = quantize(
        keras_digits,
        out,
        data_files["calib"],
        eval_data=data_files["eval"],
        labels=data_files["labels"],
        options=QuantizeOptions(samples=128, latency=None),
    )
    assert result.report["passed"]
    engine = load_engine(out)
    assert engine.inputs[0].dtype == "int8" and engine.inputs[0].scale is not None
    logits = engine.run({"image": np.load(data_files["eval"])[:8]})["logits"]
    assert logits.dtype == np.float32, "int8 outputs are dequantized from the model's own scale"


def test_distribution_calibration_is_refused(
    digits_onnx: Path, data_files: dict[str, Path], tmp_path: Path
) -> None:
    with pytest.raises(QuantizationError, match="garbage"):
        quantize(
            digits_onnx,
            tmp_path / "x.onnx",
            data_files["calib"],
            options=QuantizeOptions(calibration_method="distribution", latency=None),
        )


def test_latency_is_measured_and_reported(
    digits_onnx: Path, data_files: dict[str, Path], tmp_path: Path
) -> None:
    from converters.latency import LatencyConfig

    options = QuantizeOptions(
        samples=64,
        preset="x86-reduce-range",
        latency=LatencyConfig(rounds=3, seconds_per_round=0.01),
    )
    report = quantize(digits_onnx, tmp_path / "q.onnx", data_files["calib"], options=options).report
    latency = report["latency"]
    assert set(latency["ratio"]) == {"1", "32"}
    assert all(v > 0 for v in latency["reference_ms"].values())
    assert all(len(rounds) == 3 for rounds in latency["round_ratios"].values())
    assert latency["verdict"] in ("faster", "slower", "inconclusive") and latency["host"]["name"]


@pytest.mark.parametrize(
    ("rounds", "verdict"),
    [
        pytest.param({"1": [1.31, 1.28, 1.35, 1.30], "32": [1.52, 1.49, 1.50, 1.55]}, "faster", id="faster"),
        pytest.param({"1": [0.66, 0.69, 0.67, 0.68, 0.66]}, "slower", id="clearly-slower"),
        pytest.param({"1": [0.97, 1.02, 0.99, 1.01, 0.98]}, "inconclusive", id="within-noise"),
        pytest.param({"1": [0.5, 1.6, 0.7, 1.4, 0.9]}, "inconclusive", id="noisy-rounds"),
        pytest.param({"1": [0.6, 0.6, 0.6], "32": [1.8, 1.8, 1.8]}, "faster", id="geometric-mean-of-batches"),
        pytest.param({"1": [0.7]}, "inconclusive", id="one-round-is-no-interval"),
    ],
)
def test_speed_verdict_needs_the_whole_interval_on_one_side_of_one(
    rounds: dict[str, list[float]], verdict: str
) -> None:
    result = speed_verdict(rounds)
    assert result["verdict"] == verdict
    assert result["slower"] is (verdict == "slower")
    if result["speedup_interval"] is not None:
        low, high = result["speedup_interval"]
        assert low <= result["speedup"] <= high
    assert set(result["per_batch"]) == set(rounds)


def test_each_batch_size_gets_its_own_interval() -> None:
    result = speed_verdict({"1": [1.9, 1.95, 1.9, 1.92], "32": [0.68, 0.7, 0.66, 0.69]})
    assert result["per_batch"]["1"]["verdict"] == "faster"
    assert result["per_batch"]["32"]["verdict"] == "slower"
    assert result["verdict"] == "faster" and not result["slower"]


def _slow_latency(
    reference: Path, candidate: Path, sample: object, config: object, **_: object
) -> dict[str, object]:
    rounds = {"1": [0.66, 0.69, 0.67, 0.68, 0.66]}
    return {
        "host": {"name": "Test CPU", "machine": "x86_64", "vnni": False},
        "batch_sizes": [1],
        "reference_ms": {"1": 1.0},
        "candidate_ms": {"1": 1.5},
        "ratio": {"1": 0.67},
        "round_ratios": rounds,
        **speed_verdict(rounds),
    }


def test_slower_int8_is_written_with_a_warning_naming_the_cpu(
    fragile: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """This host is not the device: a slower verdict warns; the measurement is replaced by given rounds."""
    import converters.quantize as module
    from converters.progress import NullProgress

    monkeypatch.setattr(module, "compare_latency", _slow_latency)
    model, data = fragile
    progress = NullProgress()
    result = quantize(
        model,
        tmp_path / "slow.onnx",
        data,
        options=replace(FRAGILE, latency=LatencyConfig()),
        progress=progress,
    )
    assert result.path.is_file() and result.report["latency"]["verdict"] == "slower"
    assert any("slower than float on this host" in n and "Test CPU, no VNNI" in n for n in progress.notes)


def test_slower_int8_is_refused_with_require_speedup(
    fragile: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import converters.quantize as module

    monkeypatch.setattr(module, "compare_latency", _slow_latency)
    model, data = fragile
    out = tmp_path / "slow.onnx"
    options = replace(FRAGILE, latency=LatencyConfig(), require_speedup=True)
    with pytest.raises(GateError, match=r"slower than float on this host \(speed-up 0.67x, 95% interval"):
        quantize(model, out, data, options=options)
    assert not out.exists()


def test_bisection_finds_the_smallest_passing_prefix_within_budget() -> None:
    units = [[f"n{i}"] for i in range(40)]
    calls: list[int] = []

    def evaluate(excluded: list[str]) -> dict[str, object]:
        calls.append(len(excluded))
        return {"passed": len(excluded) >= 11}

    outcome = search_exclusions(units, evaluate, max_excluded=40, max_evaluations=12)
    assert outcome.excluded == [f"n{i}" for i in range(11)]
    assert len(calls) <= 2 * 6 + 1


def test_bisection_gives_up_at_the_exclusion_limit() -> None:
    outcome = search_exclusions(
        [["a"], ["b"], ["c"]], lambda e: {"passed": False}, max_excluded=2, max_evaluations=10
    )
    assert outcome.excluded is None and "limit" in outcome.stopped_because


def test_cli_quantize_writes_json_and_html_reports(fragile: tuple[Path, Path], tmp_path: Path) -> None:
    model, data = fragile
    out, report, html = tmp_path / "q.onnx", tmp_path / "r.json", tmp_path / "r.html"
    result = CliRunner().invoke(
        cli,
        [
            "quantize",
            str(model),
            "-o",
            str(out),
            "--calibration",
            str(data),
            "--skip-latency",
            "--preset",
            "x86",
            "--report",
            str(report),
            "--html",
            str(html),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "repair:" in result.output and "float: gemm_11" in result.output
    document = json.loads(report.read_text())
    assert document["passed"] and document["repair"]["excluded_nodes"]
    page = html.read_text()
    assert "PASS" in page and "gemm_11" in page and "data:image/png;base64," in page


def test_cli_parity_fails_with_exit_1_on_a_bad_candidate(
    digits_onnx: Path, data_files: dict[str, Path], tmp_path: Path
) -> None:
    bad = tmp_path / "bad.onnx"
    quantize(
        digits_onnx,
        bad,
        data_files["calib"],
        options=QuantizeOptions(latency=None, samples=64, preset="x86-reduce-range"),
    )
    ok = CliRunner().invoke(
        cli,
        [
            "parity",
            str(digits_onnx),
            str(bad),
            "--data",
            str(data_files["eval"]),
            "--labels",
            str(data_files["labels"]),
            "--json",
        ],
    )
    assert ok.exit_code == 0, ok.output
    assert json.loads(ok.output)["passed"] is True
    strict = CliRunner().invoke(
        cli, ["parity", str(digits_onnx), str(bad), "--data", str(data_files["eval"]), "--min-sqnr", "99"]
    )
    assert strict.exit_code == 1 and "failed: logits: SQNR" in strict.output


def test_a_crashing_quantizer_call_falls_back_to_the_next_configuration(
    digits_onnx: Path, data_files: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """onnxruntime's quantize_static can raise on real models with per_channel=True."""
    import onnxruntime.quantization as ort_quantization

    from converters.progress import NullProgress

    real = ort_quantization.quantize_static

    def flaky(*args: object, **kwargs: object) -> object:
        if kwargs.get("per_channel"):
            raise ValueError("The truth value of an array with more than one element is ambiguous")
        return real(*args, **kwargs)

    monkeypatch.setattr(ort_quantization, "quantize_static", flaky)
    progress = NullProgress()
    result = quantize(
        digits_onnx,
        tmp_path / "q.onnx",
        data_files["calib"],
        options=QuantizeOptions(latency=None, samples=64),
        progress=progress,
    )
    assert result.report["quantization"]["config"]["per_channel"] is False
    assert any("per-tensor" in note for note in progress.notes)


@pytest.mark.parametrize(
    ("flags", "exit_code"),
    [
        pytest.param([], 0, id="warns-by-default"),
        pytest.param(["--require-speedup"], 1, id="refuses-when-asked"),
    ],
)
def test_cli_slower_verdict_warns_or_refuses(
    flags: list[str],
    exit_code: int,
    fragile: tuple[Path, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import converters.quantize as module

    monkeypatch.setattr(module, "compare_latency", _slow_latency)
    model, data = fragile
    out = tmp_path / "q.onnx"
    args = ["quantize", str(model), "-o", str(out), "--calibration", str(data), "--preset", "x86", *flags]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == exit_code, result.output
    assert "slower than float on this host" in result.output and "Test CPU, no VNNI" in result.output
    assert out.exists() is (exit_code == 0)
    if exit_code == 0:
        assert "speed on this host: slower (speed-up 0.67x, 95% interval" in result.output


def test_bisection_evaluates_a_repeated_node_set_once() -> None:
    """A unit whose nodes are already excluded leaves the set unchanged: it is not evaluated twice."""
    units = [["a", "b"], ["b"], ["c"], ["d"]]
    seen: list[list[str]] = []

    def evaluate(excluded: list[str]) -> dict[str, object]:
        seen.append(excluded)
        return {"passed": "d" in excluded}

    outcome = search_exclusions(units, evaluate, max_excluded=4, max_evaluations=10)
    assert outcome.excluded == ["a", "b", "c", "d"]
    assert len(seen) == len({tuple(s) for s in seen})
