"""`edgekit convert`: export a trained model to ONNX or TFLite and prove fp32 parity with its source.

Routes: Keras `.keras` / SavedModel → ONNX (tf2onnx from a signature function) or TFLite (float32 or
float16); ONNX → ONNX (checked, shape-inferred, re-saved); scikit-learn pickle/joblib → ONNX (skl2onnx);
PyTorch through `converters.export_torch`. Every export runs the source framework and the exported model
(through the device's own engine code) on the same sample inputs and refuses a mismatch.
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from converters._files import atomic_output
from converters.data import load_dataset
from converters.errors import ConversionError, ModelInputError, UnsupportedModelError, first_line
from converters.onnx_model import check_onnx_file, load_onnx
from converters.parity import EXPORT_GATE, FP16_GATE, Gate, compare_outputs, evaluate_gate
from device_runtime.engines import TensorInfo, load_engine

__all__ = ["DEFAULT_OPSET", "ExportResult", "convert", "prove_parity", "sample_inputs"]

DEFAULT_OPSET = 17
SAMPLE_COUNT = 16


@dataclass(frozen=True)
class ExportResult:
    """What an export produced and how closely it reproduces the source."""

    path: Path
    route: str
    parity: dict[str, Any]
    notes: list[str] = field(default_factory=list)


def sample_inputs(
    inputs: tuple[TensorInfo, ...], *, count: int = SAMPLE_COUNT, seed: int = 0
) -> dict[str, np.ndarray]:
    """Deterministic random inputs for the given tensors (dynamic batch becomes `count`)."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for info in inputs:
        if any(d is None for d in info.shape[1:]):
            raise ModelInputError(
                f"input {info.name!r} has dynamic dimensions {info.shape}; fix them with "
                f"--input-shape {info.name}:1,... or pass --sample DATA"
            )
        shape = (count, *(int(d) for d in info.shape[1:] if d is not None))
        if info.dtype.startswith("float"):
            feeds[info.name] = rng.standard_normal(shape).astype(info.dtype)
        elif info.dtype in ("int32", "int64", "int8", "uint8"):
            feeds[info.name] = rng.integers(0, 10, size=shape).astype(info.dtype)
        else:
            raise UnsupportedModelError(
                f"input {info.name!r} has dtype {info.dtype}; only numeric inputs are supported"
            )
    return feeds


def prove_parity(
    reference: Mapping[str, np.ndarray], exported_path: Path, feeds: dict[str, np.ndarray], gate: Gate
) -> dict[str, Any]:
    """Run the exported model on `feeds` and compare with the source framework's outputs.

    Raises:
        ConversionError: the exported model misses the gate (names the output and the figures).
    """
    engine = load_engine(exported_path)
    produced = engine.run(feeds)
    if set(reference) != set(produced) and len(reference) == len(produced):
        produced = dict(zip(reference, produced.values(), strict=True))  # same order, other names
    metrics = compare_outputs(
        {k: np.asarray(v, dtype=np.float32) for k, v in reference.items()},
        {k: np.asarray(v, dtype=np.float32) for k, v in produced.items()},
    )
    failures = evaluate_gate(metrics, gate)
    outputs = [
        {
            "name": m.name,
            "agreement": m.agreement,
            "sqnr_db": m.sqnr_db,
            "max_abs_error_norm": m.max_abs_error_norm,
        }
        for m in metrics
    ]
    agreements = [m.agreement for m in metrics if m.agreement is not None]
    report = {
        "samples": int(next(iter(feeds.values())).shape[0]),
        "gate": {"min_agreement": gate.min_agreement, "min_sqnr_db": gate.min_sqnr_db},
        "passed": not failures,
        "failures": failures,
        "agreement": min(agreements) if agreements else None,
        "sqnr_db": min(m.sqnr_db for m in metrics),
        "outputs": outputs,
    }
    if failures:
        raise ConversionError(
            f"{exported_path.name} does not reproduce the source model: {'; '.join(failures)}. "
            "The exported file was not written; report this model to the edgekit maintainers"
        )
    return report


def convert(
    source: str | Path,
    output: str | Path,
    *,
    opset: int = DEFAULT_OPSET,
    input_shapes: dict[str, list[int]] | None = None,
    precision: str = "float32",
    sample_data: str | Path | None = None,
) -> ExportResult:
    """Export `source` to `output` (suffix `.onnx` or `.tflite`) and prove parity.

    Args:
        source: `.keras`, a SavedModel folder, `.onnx`, or a scikit-learn `.pkl`/`.joblib`.
        output: destination; written only if the export passes its parity check.
        opset: ONNX opset for ONNX exports.
        input_shapes: fixed shapes for inputs with dynamic non-batch dimensions.
        precision: `float32` or `float16` (TFLite output only).
        sample_data: real inputs (`.npy`/`.npz`) for the parity check instead of random ones.

    Raises:
        ModelInputError, UnsupportedModelError, ConversionError.
    """
    source, output = Path(source), Path(output)
    if not source.exists():
        raise ModelInputError(f"{source}: no such file or folder")
    kind = _source_kind(source)
    suffix = output.suffix.lower()
    if suffix not in (".onnx", ".tflite"):
        raise ModelInputError(f"{output}: output must end in .onnx or .tflite")
    if precision not in ("float32", "float16"):
        raise ModelInputError(f"precision {precision!r}: use float32 or float16")
    if precision == "float16" and suffix != ".tflite":
        raise ModelInputError(
            "--precision float16 applies to TFLite output; for ONNX use `edgekit quantize --mode fp16`"
        )
    if suffix == ".tflite" and kind not in ("keras", "savedmodel"):
        advice = "use the .onnx model as it is" if kind == "onnx" else "convert it to .onnx instead"
        raise UnsupportedModelError(
            f"{source}: TFLite output is made from Keras or SavedModel sources, not from a {kind} model; "
            f"{advice}"
        )
    with tempfile.TemporaryDirectory(prefix="edgekit-convert-") as tmp:
        workdir = Path(tmp)
        if kind in ("keras", "savedmodel"):
            return _export_tf(source, output, workdir, opset, input_shapes, precision, sample_data)
        if kind == "onnx":
            return _export_onnx(source, output, sample_data, input_shapes)
        return _export_sklearn(source, output, opset, sample_data)


def _source_kind(source: Path) -> str:
    from converters.tf_source import is_savedmodel_dir

    if source.is_dir():
        if is_savedmodel_dir(source):
            return "savedmodel"
        raise ModelInputError(f"{source}: a folder but not a SavedModel (no saved_model.pb)")
    suffix = source.suffix.lower()
    kinds = {
        ".keras": "keras",
        ".h5": "keras",
        ".onnx": "onnx",
        ".pkl": "sklearn",
        ".pickle": "sklearn",
        ".joblib": "sklearn",
    }
    if suffix == ".tflite":
        raise UnsupportedModelError(f"{source}: a .tflite model is already converted; use it as is")
    if suffix not in kinds:
        raise ModelInputError(
            f"{source}: unknown model type {suffix!r}; "
            "expected .keras, a SavedModel folder, .onnx, .pkl or .joblib"
        )
    return kinds[suffix]


def _feeds(
    inputs: tuple[TensorInfo, ...],
    sample_data: str | Path | None,
    input_shapes: dict[str, list[int]] | None = None,
) -> dict[str, np.ndarray]:
    if input_shapes:
        unknown = sorted(set(input_shapes) - {i.name for i in inputs})
        if unknown:
            names = [i.name for i in inputs]
            raise ModelInputError(f"--input-shape names {unknown}, but the model inputs are {names}")
        inputs = tuple(
            replace(i, shape=(None, *input_shapes[i.name][1:])) if i.name in input_shapes else i
            for i in inputs
        )
    if sample_data is None:
        return sample_inputs(inputs)
    data = load_dataset(sample_data, inputs, max_samples=64)
    return dict(data.arrays)


def _export_tf(
    source: Path,
    output: Path,
    workdir: Path,
    opset: int,
    input_shapes: dict[str, list[int]] | None,
    precision: str,
    sample_data: str | Path | None,
) -> ExportResult:
    from converters.tf_source import load_tf_source

    tf_source = load_tf_source(source, workdir, input_shapes)
    feeds = _feeds(tf_source.inputs, sample_data)
    reference = tf_source.predict(feeds)
    kind = "keras" if source.is_file() else "savedmodel"
    with atomic_output(output) as tmp:
        if output.suffix.lower() == ".onnx":
            _tf_to_onnx(tf_source, tmp, opset)
            gate, route = EXPORT_GATE, f"{kind}->onnx (tf2onnx, opset {opset})"
        else:
            from converters.tflite import convert_savedmodel

            tmp.write_bytes(convert_savedmodel(tf_source.saved_model_dir, precision=precision))
            gate = FP16_GATE if precision == "float16" else EXPORT_GATE
            route = f"{kind}->tflite ({precision})"
        parity = prove_parity(reference, tmp, feeds, gate)
    return ExportResult(output, route, parity)


def _tf_to_onnx(tf_source: Any, path: Path, opset: int) -> None:
    import tf2onnx

    try:
        tf2onnx.convert.from_function(
            tf_source.function, input_signature=tf_source.input_signature, opset=opset, output_path=str(path)
        )
    except Exception as e:
        raise ConversionError(f"tf2onnx cannot convert the model: {first_line(e)}") from e
    check_onnx_file(path)


def _export_onnx(
    source: Path, output: Path, sample_data: str | Path | None, input_shapes: dict[str, list[int]] | None
) -> ExportResult:
    import onnx

    model = load_onnx(source)
    check_onnx_file(source)
    engine = load_engine(source)
    feeds = _feeds(engine.inputs, sample_data, input_shapes)
    reference = engine.run(feeds)
    with atomic_output(output) as tmp:
        onnx.save(model, str(tmp))
        parity = prove_parity(reference, tmp, feeds, EXPORT_GATE)
    return ExportResult(output, "onnx->onnx (checked, shapes inferred)", parity)


def _export_sklearn(source: Path, output: Path, opset: int, sample_data: str | Path | None) -> ExportResult:
    from converters.sklearn_export import export_sklearn, load_sklearn

    estimator = load_sklearn(source)
    with atomic_output(output) as tmp:
        inputs, predict = export_sklearn(estimator, tmp, opset=opset)
        feeds = _feeds(inputs, sample_data)
        parity = prove_parity(predict(feeds), tmp, feeds, EXPORT_GATE)
    return ExportResult(output, f"sklearn->onnx (skl2onnx, {type(estimator).__name__})", parity)
