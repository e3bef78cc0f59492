"""`edgekit convert`: export a trained model to ONNX or TFLite and prove fp32 parity with its source.

Routes: Keras `.keras` / SavedModel → ONNX (tf2onnx from a signature function) or TFLite (float32 or
float16); TFLite → ONNX (tf2onnx's TFLite front end, parity against LiteRT: `converters.tflite_source`);
ONNX → ONNX (checked, shape-inferred, re-saved); scikit-learn pickle/joblib → ONNX (skl2onnx);
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
from converters._quiet import load_engine, quiet_import
from converters.data import Dataset, load_dataset
from converters.errors import (
    ConversionError,
    ConverterError,
    ModelInputError,
    UnsupportedModelError,
    explain,
)
from converters.onnx_model import check_onnx_file, load_onnx
from converters.parity import EXPORT_GATE, FP16_GATE, Gate, compare_outputs, evaluate_gate
from converters.runner import run_model
from converters.signature import Signature, resolve_batch_axes, sample_shape, with_hints
from device_runtime.engines import TensorInfo

__all__ = ["DEFAULT_OPSET", "ExportResult", "convert", "prove_parity", "sample_dataset", "sample_inputs"]

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
    inputs: tuple[TensorInfo, ...],
    *,
    count: int = SAMPLE_COUNT,
    seed: int = 0,
    batch_axes: dict[str, int | None] | None = None,
) -> dict[str, np.ndarray]:
    """Deterministic random feeds for one run: `count` samples on each input's dynamic batch axis.

    `batch_axes` defaults to the axes inferred from the shapes (`converters.signature`); an input without
    a batch axis gets one random value of its exact shape; a fixed batch dimension keeps its size, so the
    feeds always fit one run.

    Raises:
        ModelInputError: an input has dynamic dimensions besides its batch axis.
        UnsupportedModelError: an input is not numeric.
    """
    axes = batch_axes if batch_axes is not None else resolve_batch_axes(inputs)
    return _random_feeds(inputs, axes, count, seed, keep_fixed=True)


def _random_feeds(
    inputs: tuple[TensorInfo, ...], axes: Mapping[str, int | None], count: int, seed: int, *, keep_fixed: bool
) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    feeds = {}
    for info in inputs:
        axis = axes.get(info.name)
        if any(d is None for d in sample_shape(info, axis)):
            raise with_hints(
                ModelInputError(
                    f"input {info.name!r} has dynamic dimensions {info.shape} besides its batch axis "
                    f"({'none' if axis is None else axis}); random sample inputs need them fixed"
                ),
                {
                    "--input-shape": f"fix them with --input-shape {info.name}:D0,D1,...",
                    "--sample": "or give real inputs with --sample DATA",
                    "--golden": "give real inputs with --golden DATA",
                },
            )
        shape = [count if d is None else int(d) for d in info.shape]
        if axis is not None and not keep_fixed:
            shape[axis] = count
        feeds[info.name] = _random(info, tuple(shape), rng)
    return feeds


def _random(info: TensorInfo, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    if info.dtype.startswith("float"):
        return rng.standard_normal(shape).astype(info.dtype)
    if info.dtype in ("int32", "int64", "int8", "uint8", "int16", "uint16"):
        return rng.integers(0, 10, size=shape).astype(info.dtype)
    if info.dtype == "bool":
        return rng.integers(0, 2, size=shape).astype(bool)
    raise UnsupportedModelError(
        f"input {info.name!r} has dtype {info.dtype}; only numeric inputs are supported"
    )


def sample_dataset(
    inputs: tuple[TensorInfo, ...],
    outputs: tuple[TensorInfo, ...] = (),
    signature: Signature | None = None,
    *,
    count: int = SAMPLE_COUNT,
    seed: int = 0,
) -> Dataset:
    """Deterministic random data of `count` samples (runs in chunks a fixed batch allows).

    A stateful signature gets 4 sequences of `count // 4` steps (one of `count` for a fixed batch of one),
    states starting at zeros.

    Raises:
        ModelInputError, UnsupportedModelError: as `sample_inputs`.
    """
    signature = signature or Signature()
    axes = resolve_batch_axes(inputs, outputs, signature)
    states = set(signature.states.values())
    fixed = [int(d) for i in inputs if (a := axes[i.name]) is not None and (d := i.shape[a]) is not None]
    max_batch = min(fixed) if fixed else None
    if max_batch:
        count = max(max_batch, count - count % max_batch)
    stateful = bool(states)
    sequences = (1 if max_batch == 1 else max_batch or 4) if stateful else count
    steps = max(1, count // sequences) if stateful else 1
    feeds = _random_feeds(
        tuple(i for i in inputs if i.name not in states), axes, sequences * steps, seed, keep_fixed=False
    )
    return Dataset(
        arrays=feeds,
        source="random sample inputs",
        indices=np.arange(sequences * steps),
        source_size=sequences * steps,
        batch_axes=dict(axes),
        max_batch=max_batch,
        steps=steps,
        states=dict(signature.states),
    )


def prove_parity(
    reference: Mapping[str, np.ndarray],
    exported_path: Path,
    feeds: dict[str, np.ndarray] | Dataset,
    gate: Gate,
) -> dict[str, Any]:
    """Run the exported model on `feeds` (one batch, or a dataset) and compare with the source's outputs.

    Raises:
        ConversionError: the exported model misses the gate (names the output and the figures).
    """
    engine = load_engine(exported_path)
    if isinstance(feeds, Dataset):
        data = feeds
    else:
        axes = resolve_batch_axes(engine.inputs, engine.outputs)
        data = Dataset(
            arrays=feeds,
            source="sample inputs",
            indices=np.arange(1),
            source_size=1,
            batch_axes={name: axes.get(name, 0) for name in feeds},
            max_batch=None,
        )
        data = replace(data, indices=np.arange(data.size), source_size=data.size)
    produced = run_model(engine, data)
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
        "samples": data.size,
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
    signature: Signature | None = None,
) -> ExportResult:
    """Export `source` to `output` (suffix `.onnx` or `.tflite`) and prove parity.

    Args:
        source: `.keras`, a SavedModel folder, `.tflite` (to ONNX only), `.onnx`, or a scikit-learn
            `.pkl`/`.joblib`.
        output: destination; written only if the export passes its parity check.
        opset: ONNX opset for ONNX exports.
        input_shapes: fixed shapes for inputs with dynamic dimensions; an ONNX model is written with them
            (shapes re-inferred, checked in onnxruntime) and parity is proven on the fixed model.
        precision: `float32` or `float16` (TFLite output only).
        sample_data: real inputs (`.npy`/`.npz`) for the parity check instead of random ones.
        signature: declared batch axes and state pairs (ONNX sources; `converters.signature`).

    Raises:
        ModelInputError: the source is missing, or an argument is invalid.
        UnsupportedModelError: the source's format or an operator in it cannot be exported.
        ConversionError: the export failed or did not reproduce the source.
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
    if suffix == ".tflite" and kind == "tflite":
        raise UnsupportedModelError(
            f"{source}: already a TFLite model, there is nothing to convert to .tflite; bundle it as it is "
            "with `edgekit bundle`, or convert it to .onnx for int8 quantization"
        )
    if suffix == ".tflite" and kind not in ("keras", "savedmodel"):
        advice = "use the .onnx model as it is" if kind == "onnx" else "convert it to .onnx instead"
        raise UnsupportedModelError(
            f"{source}: TFLite output is made from Keras or SavedModel sources, not from a {kind} model; "
            f"{advice}"
        )
    if signature is not None and signature.states and kind != "onnx":
        raise ModelInputError(f"{source}: state pairs (--state) apply to ONNX sources, not to a {kind} model")
    with tempfile.TemporaryDirectory(prefix="edgekit-convert-") as tmp:
        workdir = Path(tmp)
        if kind in ("keras", "savedmodel"):
            return _export_tf(source, output, workdir, opset, input_shapes, precision, sample_data, signature)
        if kind == "onnx":
            return _export_onnx(source, output, sample_data, input_shapes, signature)
        if kind == "tflite":
            return _export_tflite(source, output, opset, input_shapes, sample_data, signature)
        return _export_sklearn(source, output, opset, sample_data, signature)


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
        ".tflite": "tflite",
        ".pkl": "sklearn",
        ".pickle": "sklearn",
        ".joblib": "sklearn",
    }
    if suffix not in kinds:
        raise ModelInputError(
            f"{source}: unknown model type {suffix!r}; "
            "expected .keras, a SavedModel folder, .tflite, .onnx, .pkl or .joblib"
        )
    return kinds[suffix]


def _data(
    inputs: tuple[TensorInfo, ...],
    outputs: tuple[TensorInfo, ...],
    sample_data: str | Path | None,
    signature: Signature | None,
) -> Dataset:
    if sample_data is None:
        return sample_dataset(inputs, outputs, signature)
    return load_dataset(sample_data, inputs, max_samples=64, signature=signature, outputs=outputs)


def _feeds(
    inputs: tuple[TensorInfo, ...], sample_data: str | Path | None, signature: Signature | None
) -> dict[str, np.ndarray]:
    """One batch of sample feeds for sources run by their own framework (Keras, scikit-learn)."""
    data = _data(inputs, (), sample_data, signature)
    return data.feeds(slice(0, data.size))


def _export_tf(
    source: Path,
    output: Path,
    workdir: Path,
    opset: int,
    input_shapes: dict[str, list[int]] | None,
    precision: str,
    sample_data: str | Path | None,
    signature: Signature | None,
) -> ExportResult:
    from converters.tf_source import load_tf_source

    tf_source = load_tf_source(source, workdir, input_shapes)
    feeds = _feeds(tf_source.inputs, sample_data, signature)
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
    tf2onnx = quiet_import("tf2onnx")

    try:
        tf2onnx.convert.from_function(
            tf_source.function, input_signature=tf_source.input_signature, opset=opset, output_path=str(path)
        )
    except Exception as e:
        raise ConversionError(f"tf2onnx cannot convert the model: {explain(e)}") from e
    check_onnx_file(path)


def _export_onnx(
    source: Path,
    output: Path,
    sample_data: str | Path | None,
    input_shapes: dict[str, list[int]] | None,
    signature: Signature | None,
) -> ExportResult:
    import onnx

    model = load_onnx(source)
    check_onnx_file(source)
    engine = load_engine(source)
    # Batch axes come from the source: a fixed dim of 1 no longer says where the batch was.
    signature = signature or Signature()
    axes = resolve_batch_axes(engine.inputs, engine.outputs, signature)
    signature = Signature(batch_axes=axes, states=signature.states)
    route = "onnx->onnx (checked, shapes inferred)"
    if input_shapes:
        model = fix_input_shapes(model, input_shapes)
        fixed = ", ".join(f"{n}:{','.join(map(str, d))}" for n, d in input_shapes.items())
        route = f"onnx->onnx (input shapes fixed to {fixed}, shapes inferred)"
    with atomic_output(output) as tmp:
        onnx.save(model, str(tmp))
        if input_shapes:
            try:
                check_onnx_file(tmp)
            except ConverterError as e:
                detail = str(e).replace(f"{tmp}: ", "").replace(str(tmp), output.name)
                raise ModelInputError(
                    f"{source.name} with --input-shape {fixed}: {detail}. The graph cannot take these "
                    "static shapes; leave those dimensions dynamic or give other values"
                ) from e
        exported = load_engine(tmp)
        data = _data(exported.inputs, exported.outputs, sample_data, signature)
        reference = run_model(engine, data)
        parity = prove_parity(reference, tmp, data, EXPORT_GATE)
    return ExportResult(output, route, parity)


def _export_tflite(
    source: Path,
    output: Path,
    opset: int,
    input_shapes: dict[str, list[int]] | None,
    sample_data: str | Path | None,
    signature: Signature | None,
) -> ExportResult:
    from converters.tflite_source import check_tflite_file, tflite_to_onnx

    if input_shapes:
        raise ModelInputError(
            f"{source}: --input-shape applies to ONNX, Keras and SavedModel sources; a TFLite model's "
            "input shapes are fixed in the file, so leave the option out"
        )
    reference = check_tflite_file(source)
    with atomic_output(output) as tmp:
        notes = tflite_to_onnx(source, tmp, reference, opset=opset)
        check_onnx_file(tmp)
        exported = load_engine(tmp)
        data = _data(exported.inputs, exported.outputs, sample_data, signature)
        parity = prove_parity(run_model(reference, data), tmp, data, EXPORT_GATE)
    return ExportResult(output, f"tflite->onnx (tf2onnx TFLite front end, opset {opset})", parity, notes)


def fix_input_shapes(model: Any, input_shapes: Mapping[str, list[int]]) -> Any:
    """Set the named inputs' dims to fixed values, propagate them and re-run shape inference.

    A symbolic dim (ONNX `dim_param`) that gets a value is replaced by that value wherever the graph uses
    it (outputs, value_info), so the written model states one consistent shape.

    Raises:
        ModelInputError: an unknown input, a rank mismatch, or a value that contradicts a static dim.
    """
    import onnx

    graph_inputs = {i.name: i for i in model.graph.input}
    initializers = {t.name for t in model.graph.initializer}
    names = [n for n in graph_inputs if n not in initializers]
    unknown = sorted(set(input_shapes) - set(names))
    if unknown:
        raise ModelInputError(f"--input-shape names {unknown}, but the model inputs are {names}")
    symbols: dict[str, int] = {}
    for name, dims in input_shapes.items():
        shape = graph_inputs[name].type.tensor_type.shape
        if len(shape.dim) != len(dims):
            raise ModelInputError(
                f"--input-shape {name}:{','.join(map(str, dims))} has {len(dims)} dimensions, but input "
                f"{name!r} has {len(shape.dim)} ({_shape_text(shape)}); give one value per dimension"
            )
        for axis, (dim, value) in enumerate(zip(shape.dim, dims, strict=True)):
            if dim.HasField("dim_value") and dim.dim_value != value:
                raise ModelInputError(
                    f"--input-shape {name}:{','.join(map(str, dims))}: dimension {axis} of {name!r} is "
                    f"fixed to {dim.dim_value} in the model ({_shape_text(shape)}); "
                    f"keep {dim.dim_value} there"
                )
            if dim.HasField("dim_param") and dim.dim_param:
                previous = symbols.setdefault(dim.dim_param, value)
                if previous != value:
                    raise ModelInputError(
                        f"--input-shape: dimension {dim.dim_param!r} gets both {previous} and {value}; "
                        "inputs sharing a named dimension need the same value"
                    )
    for name, dims in input_shapes.items():
        for dim, value in zip(graph_inputs[name].type.tensor_type.shape.dim, dims, strict=True):
            dim.Clear()
            dim.dim_value = value
    for value_info in (*model.graph.input, *model.graph.output, *model.graph.value_info):
        if not value_info.type.HasField("tensor_type"):
            continue
        for dim in value_info.type.tensor_type.shape.dim:
            if dim.HasField("dim_param") and dim.dim_param in symbols:
                fixed = symbols[dim.dim_param]
                dim.Clear()
                dim.dim_value = fixed
    try:
        return onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
    except Exception as e:
        raise ModelInputError(
            f"--input-shape: the model does not accept these shapes ({explain(e)}); "
            "give shapes the model can take"
        ) from e


def _shape_text(shape: Any) -> str:
    dims = [str(d.dim_value) if d.HasField("dim_value") else (d.dim_param or "?") for d in shape.dim]
    return "(" + ", ".join(dims) + ")"


def _export_sklearn(
    source: Path, output: Path, opset: int, sample_data: str | Path | None, signature: Signature | None
) -> ExportResult:
    from converters.sklearn_export import export_sklearn, load_sklearn

    estimator = load_sklearn(source)
    with atomic_output(output) as tmp:
        inputs, predict = export_sklearn(estimator, tmp, opset=opset)
        feeds = _feeds(inputs, sample_data, signature)
        parity = prove_parity(predict(feeds), tmp, feeds, EXPORT_GATE)
    return ExportResult(output, f"sklearn->onnx (skl2onnx, {type(estimator).__name__})", parity)
