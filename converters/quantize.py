"""`edgekit quantize`: quantize, gate, repair, check latency, and write the model only if it is good.

ONNX input → ONNX output: int8 by a ladder of strategies (`converters.strategies`: the preset, then
pre-processing without fusions, int8 compute ops only, other calibrations, the other weight granularity,
dynamic int8, then sensitive nodes kept in float), or one forced mode (static, dynamic, fp16).
Keras / SavedModel input → TFLite output: full int8, dynamic range, or float16.
Each candidate is compared with the float model on the evaluation data under one parity contract, within
a bounded number of evaluations. The speed on this host is measured and reported with the CPU named; a
candidate measured slower is a warning, refused only with `require_speedup` (this host is not the device).
Nothing is written unless the gate passes (the report is written either way).
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from converters._files import atomic_output
from converters._quiet import load_engine
from converters.data import MIN_CALIBRATION_SAMPLES, Dataset, load_dataset, load_labels
from converters.errors import GateError, ModelInputError, QuantizationError
from converters.latency import LatencyConfig, compare_latency
from converters.parity import INT8_GATE, Gate, parity_report, summary_metrics
from converters.progress import NullProgress, Progress
from converters.runner import run_model, unroll
from converters.signature import Signature
from converters.targets import HOST, Target
from device_runtime.engines import Engine, TensorInfo
from device_runtime.preprocess import OutputSpec

__all__ = ["QuantizeOptions", "QuantizeResult", "quantize"]

ONNX_MODES = ("auto", "static", "dynamic", "fp16")


@dataclass(frozen=True)
class QuantizeOptions:
    """Everything `quantize` can be told; defaults are the documented ones."""

    mode: str = "auto"  # auto (static strategies, then dynamic) | static | dynamic | fp16
    preset: str = "auto"  # auto | x86 | x86-reduce-range | arm (static ONNX)
    per_channel: bool | None = None  # None: the preset's choice first, the ladder may try the other
    calibration_method: str | None = None  # None: minmax first, the ladder may try others
    samples: int = 256  # calibration samples, drawn deterministically
    eval_samples: int | None = 1000
    seed: int = 0
    gate: Gate = INT8_GATE
    repair: bool = True
    max_evaluations: int = 20  # candidate evaluations: strategies and repair together
    max_excluded_fraction: float = 0.5
    latency: LatencyConfig | None = field(default_factory=LatencyConfig)  # None skips the latency check
    require_speedup: bool = False  # refuse a candidate measured slower than float on this host
    allow_slower: bool = False  # deprecated no-op: a slower model is now a warning unless require_speedup
    preprocess: str | Path | None = None  # spec for folders of images
    signature: Signature | None = None  # declared batch axes and state pairs (converters.signature)
    roles: Mapping[str, OutputSpec] | None = None  # declared output roles (converters.roles.load_roles)
    target: Target = HOST  # where candidates are measured (converters.targets); the reference runs here


@dataclass(frozen=True)
class QuantizeResult:
    """The written model and its full report."""

    path: Path
    report: dict[str, Any]


def quantize(
    model: str | Path,
    output: str | Path,
    calibration: str | Path,
    *,
    eval_data: str | Path | None = None,
    labels: str | Path | None = None,
    options: QuantizeOptions | None = None,
    progress: Progress | None = None,
) -> QuantizeResult:
    """Quantize `model` into `output` and prove parity; see the module docstring.

    Raises:
        ModelInputError, DataError, QuantizationError: bad input or every configuration failed.
        GateError: the candidate misses the gate or is slower (its `report` explains; no model written).
    """
    options = options or QuantizeOptions()
    progress = progress or NullProgress()
    model, output = Path(model), Path(output)
    if options.mode not in ONNX_MODES:
        raise ModelInputError(f"--mode {options.mode!r}: use auto, static, dynamic or fp16")
    if options.calibration_method is not None:
        from converters.quantize_onnx import check_calibration_method

        check_calibration_method(options.calibration_method)
    if options.samples < 1:
        raise ModelInputError(f"--samples must be at least 1, got {options.samples}")
    with tempfile.TemporaryDirectory(prefix="edgekit-quantize-") as tmp:
        workdir = Path(tmp)
        if output.suffix.lower() == ".onnx":
            if model.suffix.lower() != ".onnx":
                raise ModelInputError(
                    f"{model}: ONNX quantization takes an .onnx model; "
                    f"run `edgekit convert {model} -o model.onnx` first"
                )
            return _quantize_onnx(model, output, calibration, eval_data, labels, options, progress, workdir)
        if output.suffix.lower() == ".tflite":
            return _quantize_tflite(model, output, calibration, eval_data, labels, options, progress, workdir)
    raise ModelInputError(f"{output}: output must end in .onnx or .tflite")


def _load_data(
    inputs: tuple[TensorInfo, ...],
    calibration: str | Path,
    eval_data: str | Path | None,
    labels: str | Path | None,
    options: QuantizeOptions,
    progress: Progress,
    engine: Engine | None = None,
) -> tuple[Dataset, Dataset, np.ndarray | None]:
    outputs = engine.outputs if engine is not None else ()
    calib = load_dataset(
        calibration,
        inputs,
        max_samples=options.samples,
        seed=options.seed,
        preprocess=options.preprocess,
        signature=options.signature,
        outputs=outputs,
    )
    if calib.stateful:
        if engine is None:
            raise ModelInputError("stateful sequences (--state) are quantized from an ONNX model to .onnx")
        calib = unroll(engine, calib, progress=progress)  # every step's inputs, states from the float model
    if calib.size < MIN_CALIBRATION_SAMPLES:
        progress.note(
            f"warning: only {calib.size} calibration samples (< {MIN_CALIBRATION_SAMPLES}); SQNR usually "
            "collapses while agreement still looks fine — give 256 or more"
        )
    evaluation = load_dataset(
        eval_data or calibration,
        inputs,
        max_samples=options.eval_samples,
        seed=options.seed,
        preprocess=options.preprocess,
        signature=options.signature,
        outputs=outputs,
    )
    label_array = load_labels(labels, evaluation) if labels is not None else None
    return calib, evaluation, label_array


def _quantize_onnx(
    model: Path,
    output: Path,
    calibration: str | Path,
    eval_data: str | Path | None,
    labels: str | Path | None,
    options: QuantizeOptions,
    progress: Progress,
    workdir: Path,
) -> QuantizeResult:
    from converters.localize import as_report_rows, localize
    from converters.onnx_model import check_onnx_file
    from converters.quantize_onnx import resolve_preset, saturation_note
    from converters.strategies import LadderSettings, attempt_rows, config_of, run_ladder

    check_onnx_file(model)
    engine = load_engine(model)
    calib, evaluation, label_array = _load_data(
        engine.inputs, calibration, eval_data, labels, options, progress, engine
    )
    reference_outputs = run_model(engine, evaluation, progress=progress, label="float reference")
    steps = unroll(engine, evaluation)  # localization and latency run single steps

    def evaluate(candidate: Path) -> dict[str, Any]:
        return parity_report(
            model,
            candidate,
            evaluation,
            gate=options.gate,
            labels=label_array,
            reference_outputs=reference_outputs,
            roles=options.roles,
            target=options.target,
        )

    config = resolve_preset(_preset_for(options))
    if options.calibration_method is not None:
        config = replace(config, calibration=options.calibration_method)
    if options.per_channel is not None:
        config = replace(config, per_channel=options.per_channel)
    section: dict[str, Any] = {
        "requested_mode": options.mode,
        "calibration": {
            "source": str(calibration),
            "samples": calib.size,
            "seed": options.seed,
            "method": config.calibration,
        },
    }
    note = saturation_note(config) if options.mode in ("auto", "static") else None
    if note:
        progress.note(note)
        section["cpu_note"] = note
    settings = LadderSettings(
        mode=options.mode,
        base=config,
        calibration_forced=options.calibration_method is not None,
        per_channel_forced=options.per_channel is not None,
        repair=options.repair,
        max_evaluations=options.max_evaluations,
        max_excluded_fraction=options.max_excluded_fraction,
    )
    outcome = run_ladder(model, workdir, calib, evaluate, settings, progress, localize_data=steps)
    section["strategies"] = attempt_rows(outcome)
    section["choice"] = outcome.reason
    best = outcome.best()
    # a larger --max-evaluations helps only when the budget, not the repair's limit, ended the search
    repair_words = (outcome.repair or {}).get("stopped_because", "")
    budget_spent = "budget" in outcome.reason or "budget" in repair_words
    if best is None or best.report is None or best.path is None:
        failures = [f"{a.strategy.name}: {a.error}" for a in outcome.attempts]
        raise QuantizationError(
            f"no {_mode_words(options.mode)} candidate could be built or loaded; every strategy failed: "
            + "; ".join(failures)
            + ". Nothing was written. "
            + _alternatives(options.mode, budget_spent=budget_spent),
            # what --report receives: no candidate ran, so no per-output parity, only what was tried
            {"schema": "edgekit.parity/v1", "passed": False, "failures": failures, "quantization": section},
        )
    report = best.report
    section["mode"] = best.strategy.kind
    section["strategy"] = best.strategy.name
    section["calibration"]["method"] = best.config_used.calibration if best.config_used else None
    if best.config_used is not None:
        section["config"] = config_of(best)
        section["op_types"] = list(best.strategy.op_types) if best.strategy.op_types else "all"
    per_tensor = None
    ranking = outcome.ranking
    if ranking is None and best.float_model is not None:
        ranking = localize(best.float_model, best.path, steps, workdir)
    if ranking is not None:
        per_tensor = as_report_rows(ranking)
    if outcome.repair is not None:
        note_repair(outcome.repair, progress)
    if not report["passed"]:
        report["quantization"] = section
        raise GateError(
            f"no {_mode_words(options.mode)} strategy passes; the best, {best.strategy.name}, fails the "
            f"parity gate: {'; '.join(report['failures'])}. Tried ({outcome.reason}): "
            + "; ".join(_attempt_words(row) for row in section["strategies"])
            + ". Nothing was written. "
            + _alternatives(options.mode, budget_spent=budget_spent),
            _decorate(report, section, outcome.repair, per_tensor, model, best.path, output),
        )
    return _finish(
        report, section, outcome.repair, per_tensor, model, best.path, output, steps, options, progress
    )


def _preset_for(options: QuantizeOptions) -> str:
    """`auto` follows the machine the model is measured on: a model gated on arm64 is built for arm64."""
    machine = str(options.target.describe().get("machine", "")).lower()
    if options.preset == "auto" and options.target is not HOST and machine.startswith(("arm", "aarch64")):
        return "arm"
    return options.preset


def note_repair(repair: dict[str, Any], progress: Progress) -> None:
    """One progress line for the exclusion rung."""
    excluded = repair["excluded_nodes"]
    if excluded:
        progress.note(
            f"repair: kept {len(excluded)} of {repair['quantizable_nodes']} quantized nodes in float "
            f"({', '.join(excluded)}) after {repair['evaluations']} evaluations"
        )


def _mode_words(mode: str) -> str:
    return {"auto": "int8", "static": "static int8", "dynamic": "dynamic int8", "fp16": "float16"}[mode]


def _attempt_words(row: dict[str, Any]) -> str:
    if row["error"]:
        return f"{row['name']}: error ({row['error'][:300]})"
    metrics = row["metrics"]
    parts = []
    if metrics["agreement"] is not None:
        parts.append(f"agreement {100 * metrics['agreement']:.1f}%")
    parts.append(f"SQNR {metrics['sqnr_db']:.1f} dB")
    return f"{row['name']}: {', '.join(parts)}"


def _alternatives(mode: str, *, tflite: bool = False, budget_spent: bool = True) -> str:
    """Options that exist on `edgekit quantize` and modes this run did not just try.

    ONNX output: auto = the static int8 ladder (+ dynamic int8 of the MatMuls, + repair), static = the
    ladder without dynamic, dynamic = dynamic int8 only, fp16 = float16. TFLite output: auto and static
    are both full int8, dynamic is dynamic-range int8, fp16 is float16; there is no ladder and no repair.
    """
    options = []
    if tflite:
        if mode != "dynamic":
            options.append("--mode dynamic (int8 weights, float activations)")
        if mode != "fp16":
            options.append("--mode fp16")
        if mode in ("auto", "static"):
            options.append("more or more representative --calibration data")
        options.append(
            "an ONNX output (`edgekit convert` to .onnx, then quantize it) for the strategy ladder and the "
            "repair"
        )
    else:
        if mode == "static":
            options.append("--mode auto (adds dynamic int8 for MatMul-heavy models)")
        if mode in ("auto", "static"):
            options.append("--mode dynamic (dynamic int8 of every op, not only of the MatMuls)")
        if mode == "dynamic":
            options.append("--mode auto (static int8 strategies and the repair)")
        if mode != "fp16":
            options.append("--mode fp16")
        if mode in ("auto", "static"):
            if budget_spent:
                options.append("a larger --max-evaluations")
            options.append("more or more representative --calibration data")
    options.append("a relaxed gate (--min-agreement, --max-drop, --min-sqnr) if the figures are acceptable")
    if mode == "fp16":
        options.append("shipping the float32 model")
    return "Try " + ", ".join(options)


def _quantize_tflite(
    model: Path,
    output: Path,
    calibration: str | Path,
    eval_data: str | Path | None,
    labels: str | Path | None,
    options: QuantizeOptions,
    progress: Progress,
    workdir: Path,
) -> QuantizeResult:
    from converters.tf_source import load_tf_source
    from converters.tflite import convert_savedmodel

    if model.suffix.lower() in (".onnx", ".tflite"):
        route = (
            f"; without that source run `edgekit convert {model} -o model.onnx` and quantize the ONNX model"
            if model.suffix.lower() == ".tflite"
            else ""
        )
        raise ModelInputError(
            f"{model}: TFLite quantization starts from the Keras (.keras) or SavedModel source, not a "
            f"{model.suffix} file{route}"
        )
    source = load_tf_source(model, workdir)
    calib, evaluation, label_array = _load_data(
        source.inputs, calibration, eval_data, labels, options, progress
    )
    reference = workdir / "float.tflite"
    reference.write_bytes(convert_savedmodel(source.saved_model_dir, precision="float32"))
    precision = {"auto": "int8", "static": "int8", "dynamic": "dynamic", "fp16": "float16"}[options.mode]

    def representative() -> Any:
        task = progress.task("calibrating", calib.size)
        for sample in calib.samples():
            task.advance()
            yield [sample[spec.name] for spec in source.input_signature]
        task.close()

    candidate = workdir / "candidate.tflite"
    candidate.write_bytes(
        convert_savedmodel(
            source.saved_model_dir,
            precision=precision,
            representative=representative if precision == "int8" else None,
        )
    )
    report = parity_report(
        reference,
        candidate,
        evaluation,
        gate=options.gate,
        labels=label_array,
        progress=progress,
        roles=options.roles,
        target=options.target,
    )
    report["reference"]["path"] = f"{model} (float32 TFLite)"
    section = {
        "mode": options.mode,
        "tflite_precision": precision,
        "calibration": {
            "source": str(calibration),
            "samples": calib.size,
            "seed": options.seed,
            "method": "tflite representative",
        },
        "strategies": [
            {
                "name": f"tflite-{precision}",
                "kind": precision,
                "passed": report["passed"],
                "metrics": summary_metrics(report),
                "size_bytes": candidate.stat().st_size,
                "error": None,
                "chosen": True,
            }
        ],
    }
    if not report["passed"]:
        section["repair"] = (
            "not available for TFLite output; quantize to .onnx to use the accuracy-aware repair"
        )
    return _finish(report, section, None, None, reference, candidate, output, evaluation, options, progress)


def _decorate(
    report: dict[str, Any],
    section: dict[str, Any],
    repair_section: dict[str, Any] | None,
    per_tensor: list[dict[str, Any]] | None,
    reference: Path,
    candidate: Path,
    output: Path,
) -> dict[str, Any]:
    report["quantization"] = section
    if per_tensor is not None:
        report["per_tensor_sqnr"] = per_tensor
    if repair_section is not None:
        report["repair"] = repair_section
    report["reference"]["size_bytes"] = reference.stat().st_size
    report["candidate"]["size_bytes"] = candidate.stat().st_size
    report["candidate"]["path"] = str(output)
    return report


def _finish(
    report: dict[str, Any],
    section: dict[str, Any],
    repair_section: dict[str, Any] | None,
    per_tensor: list[dict[str, Any]] | None,
    reference: Path,
    candidate: Path,
    output: Path,
    evaluation: Dataset,
    options: QuantizeOptions,
    progress: Progress,
) -> QuantizeResult:
    _decorate(report, section, repair_section, per_tensor, reference, candidate, output)
    if not report["passed"]:
        raise GateError(
            "the quantized model fails the parity gate: "
            + "; ".join(report["failures"])
            + ". Nothing was written. "
            + _alternatives(options.mode, tflite="tflite_precision" in section),
            report,
        )
    if options.latency is not None:
        progress.note("measuring latency (float vs quantized, interleaved rounds)")
        config = options.latency
        if evaluation.run_batch(max(config.batch_sizes)) < max(config.batch_sizes):
            config = replace(config, batch_sizes=(evaluation.run_batch(max(config.batch_sizes)),))
        sample = evaluation.take(max(config.batch_sizes))
        latency = compare_latency(
            reference, candidate, sample.feeds(slice(0, sample.size)), config, batch_axes=sample.batch_axes
        )
        latency["required_speedup"] = options.require_speedup
        if options.target is not HOST:
            # parity came from the target, speed did not: an emulated device's timings are not its speed
            latency["measured_on"] = HOST.describe()
            progress.note(
                f"latency is measured on this host, not on {options.target.name}: measure speed on the device"
            )
        report["latency"] = latency
        if latency["verdict"] == "slower":
            words = speed_words(latency)
            if options.require_speedup:
                raise GateError(
                    f"the quantized model is slower than float on this host ({words}) and --require-speedup "
                    "was given; nothing was written. This host may not be the device: measure there, or "
                    "try another --preset or --mode",
                    report,
                )
            why = (
                "float16 runs fast only where the CPU or accelerator has float16 arithmetic"
                if options.mode == "fp16"
                else "int8 speed depends on the CPU's dot-product instructions"
            )
            progress.note(
                f"warning: the quantized model is slower than float on this host ({words}); the device "
                f"may differ ({why}) — measure there, or pass --require-speedup to refuse such a model"
            )
    with atomic_output(output) as tmp:
        shutil.copyfile(candidate, tmp)
    return QuantizeResult(output, report)


def speed_words(latency: dict[str, Any]) -> str:
    """`speed-up 0.67x (95% interval 0.61-0.72x) on <CPU>`: the verdict's figures in one phrase."""
    host = latency.get("host", {})
    cpu = host.get("name", "this CPU")
    if host.get("vnni") is False:
        cpu += ", no VNNI"
    interval = latency.get("speedup_interval")
    if latency.get("speedup") is None or interval is None:
        return f"speed-up not measurable on {cpu}"
    return (
        f"speed-up {latency['speedup']:.2f}x, 95% interval {interval[0]:.2f}-{interval[1]:.2f}x, "
        f"on {cpu}"
    )
