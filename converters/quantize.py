"""`edgekit quantize`: quantize, gate, repair, check latency, and write the model only if it is good.

ONNX input → ONNX output: static int8 (QDQ, backend preset), dynamic int8, or fp16.
Keras / SavedModel input → TFLite output: full int8, dynamic range, or float16.
The candidate is compared with the float model on the evaluation data under one parity contract; a
static int8 ONNX model that misses the gate is repaired (sensitive nodes kept in float) within a bounded
number of evaluations; an int8 model slower than float on this host is refused unless allowed.
Nothing is written unless every check passes (the report is written either way).
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from converters._files import atomic_output
from converters.data import MIN_CALIBRATION_SAMPLES, Dataset, load_dataset, load_labels
from converters.errors import GateError, ModelInputError
from converters.latency import LatencyConfig, compare_latency
from converters.parity import INT8_GATE, Gate, parity_report, summary_metrics
from converters.progress import NullProgress, Progress
from converters.runner import run_model, unroll
from converters.signature import Signature
from device_runtime.engines import Engine, TensorInfo, load_engine
from device_runtime.preprocess import OutputSpec

__all__ = ["QuantizeOptions", "QuantizeResult", "quantize"]

ONNX_MODES = ("static", "dynamic", "fp16")


@dataclass(frozen=True)
class QuantizeOptions:
    """Everything `quantize` can be told; defaults are the documented ones."""

    mode: str = "static"  # static | dynamic | fp16
    preset: str = "auto"  # auto | x86 | x86-reduce-range | arm (static ONNX)
    per_channel: bool | None = None  # None: the preset's choice (per-channel weights)
    calibration_method: str = "minmax"
    samples: int = 256  # calibration samples, drawn deterministically
    eval_samples: int | None = 1000
    seed: int = 0
    gate: Gate = INT8_GATE
    repair: bool = True
    max_evaluations: int = 12
    max_excluded_fraction: float = 0.5
    latency: LatencyConfig | None = field(default_factory=LatencyConfig)  # None skips the latency check
    allow_slower: bool = False
    preprocess: str | Path | None = None  # spec for folders of images
    signature: Signature | None = None  # declared batch axes and state pairs (converters.signature)
    roles: Mapping[str, OutputSpec] | None = None  # declared output roles (converters.roles.load_roles)


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
        raise ModelInputError(f"--mode {options.mode!r}: use static, dynamic or fp16")
    if options.mode == "static":
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
    from converters.localize import (
        as_report_rows,
        ensure_node_names,
        exclusion_units,
        localize,
        quantized_nodes,
    )
    from converters.onnx_model import check_onnx_file
    from converters.quantize_onnx import (
        preprocess_for_quantization,
        quantize_dynamic_onnx,
        quantize_fp16_onnx,
        quantize_static_onnx,
        resolve_preset,
        saturation_note,
    )
    from converters.repair import search_exclusions

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
        )

    float_model = model
    candidate = workdir / "candidate.onnx"
    section: dict[str, Any] = {
        "mode": options.mode,
        "calibration": {
            "source": str(calibration),
            "samples": calib.size,
            "seed": options.seed,
            "method": options.calibration_method,
        },
    }
    repair_section: dict[str, Any] | None = None
    per_tensor: list[dict[str, Any]] | None = None
    if options.mode == "static":
        float_model = preprocess_for_quantization(model, workdir / "preprocessed.onnx", progress)
        if float_model == model:
            shutil.copyfile(model, workdir / "preprocessed.onnx")
            float_model = workdir / "preprocessed.onnx"
        ensure_node_names(float_model)
        config = replace(resolve_preset(options.preset), calibration=options.calibration_method)
        if options.per_channel is not None:
            config = replace(config, per_channel=options.per_channel)
        note = saturation_note(config)
        if note:
            progress.note(note)
            section["cpu_note"] = note
        used = quantize_static_onnx(float_model, candidate, calib, config, progress=progress)
        section["config"] = asdict(used)
        report = evaluate(candidate)
        ranking = localize(float_model, candidate, steps, workdir)
        per_tensor = as_report_rows(ranking)
        if not report["passed"] and options.repair:
            quantizable = quantized_nodes(candidate)
            before = summary_metrics(report)
            task = progress.task("repairing (bisection over ranked nodes)", options.max_evaluations)

            def try_exclusions(exclude: list[str]) -> dict[str, Any]:
                trial = workdir / "trial.onnx"
                quantize_static_onnx(float_model, trial, calib, used, exclude=tuple(exclude))
                task.advance()
                return summary_metrics(evaluate(trial))

            max_excluded = max(1, int(options.max_excluded_fraction * len(quantizable)))
            outcome = search_exclusions(
                exclusion_units(ranking),
                try_exclusions,
                max_excluded=max_excluded,
                max_evaluations=options.max_evaluations,
            )
            task.close()
            repair_section = {
                "quantizable_nodes": len(quantizable),
                "excluded_nodes": outcome.excluded or [],
                "kept_int8": len(quantizable) - len(outcome.excluded or []),
                "evaluations": len(outcome.candidates),
                "before": before,
                "candidates": [{"excluded": 0, **before}, *outcome.candidates],
                "stopped_because": outcome.stopped_because,
            }
            if outcome.excluded is not None:
                quantize_static_onnx(float_model, candidate, calib, used, exclude=tuple(outcome.excluded))
                report = evaluate(candidate)
                progress.note(
                    f"repair: kept {len(outcome.excluded)} of {len(quantizable)} quantized nodes in float "
                    f"({', '.join(outcome.excluded)}) after {len(outcome.candidates)} evaluations"
                )
            repair_section["after"] = summary_metrics(report)
    elif options.mode == "dynamic":
        quantize_dynamic_onnx(model, candidate)
        report = evaluate(candidate)
    else:
        quantize_fp16_onnx(model, candidate)
        report = evaluate(candidate)
    return _finish(
        report, section, repair_section, per_tensor, model, candidate, output, steps, options, progress
    )


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
    precision = {"static": "int8", "dynamic": "dynamic", "fp16": "float16"}[options.mode]

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
    }
    if not report["passed"]:
        section["repair"] = (
            "not available for TFLite output; quantize to .onnx to use the accuracy-aware repair"
        )
    return _finish(report, section, None, None, reference, candidate, output, evaluation, options, progress)


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
    report["quantization"] = section
    if per_tensor is not None:
        report["per_tensor_sqnr"] = per_tensor
    if repair_section is not None:
        report["repair"] = repair_section
    report["reference"]["size_bytes"] = reference.stat().st_size
    report["candidate"]["size_bytes"] = candidate.stat().st_size
    report["candidate"]["path"] = str(output)
    if not report["passed"]:
        raise GateError(
            "the quantized model fails the parity gate: "
            + "; ".join(report["failures"])
            + ". Nothing was written. Try more calibration data, --mode dynamic, or relax the gate "
            "(--min-agreement, --max-drop, --min-sqnr) if the figures are acceptable",
            report,
        )
    if options.latency is not None:
        progress.note("measuring latency (float vs quantized, interleaved)")
        config = options.latency
        if evaluation.run_batch(max(config.batch_sizes)) < max(config.batch_sizes):
            config = replace(config, batch_sizes=(evaluation.run_batch(max(config.batch_sizes)),))
        sample = evaluation.take(max(config.batch_sizes))
        latency = compare_latency(
            reference, candidate, sample.feeds(slice(0, sample.size)), config, batch_axes=sample.batch_axes
        )
        latency["allowed_slower"] = options.allow_slower
        report["latency"] = latency
        if latency["slower"] and not options.allow_slower:
            ratios = ", ".join(f"batch {b}: {r:.2f}x" for b, r in latency["ratio"].items())
            raise GateError(
                f"the quantized model is slower than float on this host (speed-up {ratios}); nothing was "
                "written. Try --preset x86/arm, --mode dynamic, or pass --allow-slower to ship it anyway",
                report,
            )
    with atomic_output(output) as tmp:
        shutil.copyfile(candidate, tmp)
    return QuantizeResult(output, report)
