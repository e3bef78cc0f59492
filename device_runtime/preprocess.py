"""Preprocessing spec ``edgekit.preprocess/v1``: strict parsing, and the one implementation of it.

The build host makes golden vectors and calibration data through this module and the device feeds its
engine through it, so both compute the same bytes. The spec format, its dataclasses and the strict parser
(:func:`parse_spec`, :func:`load_spec`) live in :mod:`device_runtime._spec` and are re-exported here; this
module runs a parsed spec: images and tensors in, predictions out, and the build-time check against a model.

Image pipeline (:func:`preprocess_image`): (1) decode with Pillow (path, bytes, PIL image, or uint8 numpy
(H, W) / (H, W, 1|3|4) read as RGB(A)); the first frame of animations, EXIF orientation is not applied.
(2) convert to RGB, or to L for GRAY (ITU-R 601-2 luma), BGR reverses the channels. (3) resize in uint8 with
Pillow (area = box filter): ``stretch`` to size exactly; ``shortest_edge`` scales the shortest edge to
max(size), keeping aspect; ``letterbox`` fits inside size keeping aspect, centred on a canvas of 0 pixels
(offsets floor((size - scaled) / 2)); scaled lengths round half up. (4) center-crop (offsets floor((h - ch)
/ 2)) to center_crop if given, else to size. (5) float32, ``x * rescale``, ``(x - mean) / std``. (6) for
uint8/int8: ``rint(x / scale) + zero_point`` (round half to even; no quantization means scale 1, zero point
0), clipped to the dtype's range. (7) layout, then a batch axis of 1.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from device_runtime._image import list_images, to_pixels
from device_runtime._spec import (
    _INT_RANGE,
    OUTPUT_KINDS,
    SCHEMA,
    AnchorSpec,
    ImageInputSpec,
    InputSpec,
    OutputSpec,
    PreprocessSpec,
    Quantization,
    TensorInputSpec,
    _fail,
    load_spec,
    parse_output,
    parse_spec,
)
from device_runtime.errors import InputError, SpecError

__all__ = [
    "OUTPUT_KINDS",
    "SCHEMA",
    "AnchorSpec",
    "ImageInputSpec",
    "InputSpec",
    "OutputSpec",
    "Prediction",
    "PreprocessSpec",
    "Quantization",
    "TensorInputSpec",
    "check_against_model",
    "list_images",
    "load_spec",
    "parse_output",
    "parse_spec",
    "postprocess",
    "prepare_inputs",
    "preprocess_image",
    "preprocess_images",
    "top_k_first",
]

_ONNX_DTYPES = {
    "tensor(float)": "float32",
    "tensor(float16)": "float16",
    "tensor(double)": "float64",
    "tensor(int8)": "int8",
    "tensor(uint8)": "uint8",
    "tensor(int32)": "int32",
    "tensor(int64)": "int64",
}


def preprocess_image(spec: ImageInputSpec, image: object) -> np.ndarray:
    """Run the image pipeline on one image; returns a batch of 1 with shape ``spec.shape`` and ``spec.dtype``.

    ``image``: a file path, encoded bytes, a PIL image, or a uint8 numpy array (H, W) or (H, W, 1|3|4),
    channels in RGB(A) order.
    Raises InputError when the image cannot be read or decoded, or is too large.
    """
    pixels = to_pixels(
        image,
        color=spec.color,
        size=spec.size,
        resize=spec.resize,
        interpolation=spec.interpolation,
        out_size=spec.tensor_size,
    )
    x: np.ndarray = pixels.astype(np.float32) * np.float32(spec.rescale)
    x = (x - np.asarray(spec.mean, dtype=np.float32)) / np.asarray(spec.std, dtype=np.float32)
    if spec.dtype in _INT_RANGE:
        q = spec.quantization or Quantization(scale=1.0, zero_point=0)
        x = np.clip(np.rint(x / np.float32(q.scale)) + np.float32(q.zero_point), *_INT_RANGE[spec.dtype])
    out = x.astype(spec.dtype)
    if spec.layout == "NCHW":
        out = out.transpose(2, 0, 1)
    return np.ascontiguousarray(out[np.newaxis])


def preprocess_images(spec: ImageInputSpec, images: Sequence[object]) -> np.ndarray:
    """Run :func:`preprocess_image` on each image and stack the results into one batch (N first).

    Raises InputError for an empty sequence or any image that cannot be decoded.
    """
    if len(images) == 0:
        raise InputError(f"input {spec.name!r}: no images given; pass at least one image")
    return np.concatenate([preprocess_image(spec, image) for image in images], axis=0)


def _fits(spec: TensorInputSpec, array: np.ndarray) -> bool:
    shape = array.shape
    return (
        array.dtype == _dtype(spec.dtype)
        and len(shape) == len(spec.shape)
        and all(d is None or d == n for d, n in zip(spec.shape, shape, strict=True))
    )


@functools.lru_cache(maxsize=32)
def _dtype(name: str) -> np.dtype[Any]:
    return np.dtype(name)


def _check_tensor(spec: TensorInputSpec, value: object) -> np.ndarray:
    if isinstance(value, str | bytes | os.PathLike):
        # A file name is read as an image by image inputs only; say so rather than "dtype object".
        name = os.fsdecode(value) if isinstance(value, bytes | os.PathLike) else value
        raise InputError(
            f"input {spec.name!r} takes a tensor, but got the file name {os.path.basename(name)!r} (read as "
            "an image only by image inputs): pass the array itself (numpy.load(path) for a .npy file)"
        )
    array = np.asarray(value)
    if isinstance(value, (bool, int, float)) and array.ndim == 0:
        # A Python scalar for a 0-d input (e.g. a sample rate): take it in the input's dtype when exact.
        cast = array.astype(spec.dtype)
        if cast.item() == value:
            array = cast
    if array.dtype != np.dtype(spec.dtype):
        raise InputError(
            f"input {spec.name!r}: dtype {array.dtype} is not allowed (expected {spec.dtype}); "
            f"convert with array.astype({spec.dtype!r})"
        )
    ok = array.ndim == len(spec.shape) and all(
        d is None or d == n for d, n in zip(spec.shape, array.shape, strict=False)
    )
    if not ok:
        shown = "(" + ", ".join("?" if d is None else str(d) for d in spec.shape) + ")"
        raise InputError(
            f"input {spec.name!r}: shape {tuple(array.shape)} is not allowed (expected {shown}, "
            "? = any size); reshape the array"
        )
    return array


def prepare_inputs(spec: PreprocessSpec, request: object) -> dict[str, np.ndarray]:
    """Turn a request into the model's input arrays, keyed by input name.

    ``request``: a mapping of input name to value, or, when the spec has one input, the bare value. An image
    input takes one image or a list/tuple of images (a batch); a tensor input takes an array of its exact
    dtype and a matching shape. Raises InputError for missing or unknown names and bad values.
    """
    if isinstance(request, dict) and len(request) == len(spec.inputs):
        # Hot path (every predict on ready tensors): exact names, exact dtypes, matching shapes, no copies.
        fast: dict[str, np.ndarray] = {}
        for inp in spec.inputs:
            value = request.get(inp.name)
            if not (isinstance(inp, TensorInputSpec) and isinstance(value, np.ndarray) and _fits(inp, value)):
                break
            fast[inp.name] = value
        else:
            return fast
    names = [i.name for i in spec.inputs]
    if isinstance(request, Mapping):
        named = dict(request)
    elif len(names) == 1:
        named = {names[0]: request}
    else:
        raise InputError(f"the model has {len(names)} inputs {names}; pass a dict of input name to value")
    missing = [n for n in names if n not in named]
    unknown = sorted(str(n) for n in named if n not in names)
    if missing or unknown:
        raise InputError(
            f"request names missing {missing} and unknown {unknown}; pass exactly the inputs {names}"
        )
    arrays: dict[str, np.ndarray] = {}
    for inp in spec.inputs:
        value = named[inp.name]
        if isinstance(inp, TensorInputSpec):
            arrays[inp.name] = _check_tensor(inp, value)
        elif isinstance(value, (list, tuple)):
            arrays[inp.name] = preprocess_images(inp, value)
        else:
            arrays[inp.name] = preprocess_image(inp, value)
    return arrays


@dataclass(frozen=True, eq=False)
class Prediction:
    """One sample of a postprocessed output.

    ``values``: the output after the activation (float32, the sample's own shape). For classification,
    ``indices``/``scores`` hold the top-k classes by descending score (ties: lower index first) with scores
    below ``score_threshold`` dropped, and ``labels`` their names when labels were given; otherwise empty.
    For the other roles (not tensor), ``decoded`` is the sample decoded as its role
    (:func:`device_runtime.decode.decode_output`: detections, mask shares, text, vector norm, values).
    """

    values: np.ndarray
    indices: tuple[int, ...] = ()
    scores: tuple[float, ...] = ()
    labels: tuple[str, ...] | None = None
    decoded: dict[str, Any] | None = None


def _activate(x: np.ndarray, activation: str) -> np.ndarray:
    if activation == "softmax":
        # Array methods, not np.max/np.sum: the same reductions without their Python dispatch (hot path).
        e = np.exp(x - x.max(axis=-1, keepdims=True))  # shift by the max: no overflow
        return e / e.sum(axis=-1, keepdims=True)
    if activation == "sigmoid":
        from device_runtime.decode import sigmoid  # the one sigmoid; decode loads with the first output

        return sigmoid(x)
    return x


def _top_order(spec: OutputSpec, flat: np.ndarray, labels: Sequence[str] | None) -> np.ndarray:
    """Indices of the top-k classes of one activated sample (descending score, ties: lower index first),
    scores below the threshold dropped. Raises SpecError when the label count does not match."""
    if labels is not None and len(labels) != flat.size:
        raise SpecError(
            f"outputs {spec.name!r}: {len(labels)} labels for {flat.size} classes; "
            "make the labels file hold one line per class"
        )
    order = (-flat).argsort(kind="stable")[: spec.top_k]
    if spec.score_threshold is not None:
        order = order[flat[order] >= spec.score_threshold]
    return order


def top_k_first(
    spec: OutputSpec, array: object, labels: Sequence[str] | None = None
) -> tuple[list[int], list[float]] | None:
    """The top-k class indices and scores of a one-sample classification output, exactly as
    ``postprocess(spec, array, labels=labels)[0]`` gives them, without building the `Prediction`.

    `Runtime.predict`'s path on every call. None when `array` does not hold exactly one sample (a batch,
    an empty batch or a scalar): use :func:`postprocess`, which also raises for what it cannot read.
    """
    x = np.asarray(array, dtype=np.float64)  # the same arithmetic as postprocess, step for step
    if x.ndim == 0 or (x.ndim > 1 and x.shape[0] != 1):
        return None
    sample = _activate(x[np.newaxis] if x.ndim == 1 else x, spec.activation).astype(np.float32)[0]
    flat = sample.reshape(-1)
    order = _top_order(spec, flat, labels)
    return order.tolist(), flat[order].tolist()


def postprocess(
    spec: OutputSpec,
    array: object,
    *,
    labels: Sequence[str] | None = None,
    scores: object | None = None,
) -> list[Prediction]:
    """Apply the output's activation (over the last axis), then top-k for classification or the role's
    decoding for the others; one item per sample.

    ``array``: the model output with the batch axis first; a 1-D array is one sample. ``labels``: the
    class names (from the bundle's labels file), one per class (the charset for a sequence). ``scores``:
    the scores output of a detection in format "boxes" or "ssd". Raises InputError for a scalar output or one
    that does not fit its role, and SpecError when the label count does not match the class count.
    """
    from device_runtime.decode import decode_output

    x = np.asarray(array, dtype=np.float64)  # float64: integer outputs and stable activations alike
    if x.ndim == 0:
        raise InputError(f"output {spec.name!r}: a scalar has no batch axis; pass the model's output array")
    batch = _activate(x[np.newaxis] if x.ndim == 1 else x, spec.activation).astype(np.float32)
    paired = None if scores is None else np.asarray(scores, dtype=np.float32)
    predictions = []
    for i, sample in enumerate(batch):
        if spec.kind == "tensor":
            predictions.append(Prediction(values=sample))
            continue
        if spec.kind != "classification":
            try:
                decoded = decode_output(
                    spec, sample, labels=labels, scores=None if paired is None else paired[i]
                )
            except (ValueError, IndexError) as e:
                raise InputError(
                    f"output {spec.name!r} of shape {list(sample.shape)} cannot be decoded as "
                    f"{spec.kind} ({e}); fix the spec's outputs"
                ) from e
            predictions.append(Prediction(values=sample, decoded=decoded))
            continue
        flat = sample.reshape(-1)
        order = _top_order(spec, flat, labels)
        predictions.append(
            Prediction(
                values=sample,
                indices=tuple(int(i) for i in order),
                scores=tuple(float(flat[i]) for i in order),
                labels=None if labels is None else tuple(labels[int(i)] for i in order),
            )
        )
    return predictions


def _dtype_name(dtype: object) -> str:
    if isinstance(dtype, str) and dtype in _ONNX_DTYPES:
        return _ONNX_DTYPES[dtype]
    try:
        return np.dtype(dtype).name  # type: ignore[call-overload]
    except (TypeError, ValueError):
        return str(dtype)


def _static(dim: object) -> int | None:
    """A positive integer dim is static; None, -1, 0 and symbolic names (ONNX "batch") are dynamic."""
    if isinstance(dim, (int, np.integer)) and not isinstance(dim, bool) and dim > 0:
        return int(dim)
    return None


def _check_anchor_count(out: OutputSpec, j: int, dims: Sequence[object]) -> None:
    from device_runtime.decode import anchors_of

    grid = out.anchors
    if grid is None or len(dims) != 3 or _static(dims[1]) is None:
        return
    count = len(anchors_of(grid))
    if count != _static(dims[1]):
        _fail(
            f"outputs[{j}].anchors",
            {"size": list(grid.size), "strides": list(grid.strides), "per_layer": grid.per_layer},
            f"they make {count} anchors, but the model's output {out.name!r} has {dims[1]} (shape "
            f"{list(dims)}): match size, strides and per_layer to the model",
        )


def _class_count(out: OutputSpec, model_outputs: Mapping[str, tuple[Sequence[object], object]]) -> int | None:
    """The static class count of an output as its role reads it (None when dynamic or unknown)."""
    dims = list(model_outputs[out.name][0])
    if out.kind == "detection":
        if out.scores is not None:  # formats "boxes" and "ssd": [B, A, C] scores, or [B, A] for one class
            paired = list(model_outputs[out.scores][0])
            return _static(paired[-1]) if len(paired) >= 3 else 1
        channels = (
            _static(dims[1] if out.effective_format == "yolo" else dims[-1]) if len(dims) == 3 else None
        )
        return None if channels is None else channels - 4
    if out.kind == "segmentation":
        sample = dims[1:]  # the class axis counts within one sample
        axis = out.class_axis_for([_static(d) for d in sample])
        count = _static(sample[axis]) if -len(sample) <= axis < len(sample) else None
        return 2 if count == 1 else count  # one probability channel, thresholded: two classes
    return _static(dims[-1])


def _check_shape(path: str, ours: Sequence[int | None], theirs: Sequence[object]) -> None:
    if len(ours) != len(theirs):
        raise SpecError(
            f"{path}: rank {len(ours)} {tuple(ours)} does not match the model's rank {len(theirs)} "
            f"{tuple(theirs)}; fix the spec to match the model"
        )
    for axis, (a, b) in enumerate(zip(ours, theirs, strict=True)):
        if a is not None and _static(b) is not None and a != _static(b):
            raise SpecError(
                f"{path}: axis {axis} is {a} but the model's is {b} (shape {tuple(theirs)}); "
                "fix the spec to match the model"
            )


def check_against_model(
    spec: PreprocessSpec,
    model_inputs: Mapping[str, tuple[Sequence[object], object]],
    *,
    model_outputs: Mapping[str, tuple[Sequence[object], object]] | None = None,
    model_quantization: Mapping[str, tuple[float, int]] | None = None,
    labels: Mapping[str, Sequence[str]] | None = None,
) -> None:
    """Refuse a spec that does not fit the model it is bundled with (used at build time).

    ``model_inputs``/``model_outputs``: name to (shape, dtype) as the engine reports them; dims that are
    None, <= 0 or strings are dynamic; dtypes as numpy names or ONNX ``tensor(float)`` strings.
    ``model_quantization``: input name to the model's (scale, zero_point); scale 0 means not quantized.
    ``labels``: output name to its class names, checked against the output's class count (the last
    static dim; for a YOLO head its channels less 4, for a boxes detection its scores' last dim, for a
    segmentation its class axis).
    Raises SpecError when names, dtypes, static dims, quantization or label counts disagree.
    """
    ours = sorted(i.name for i in spec.inputs)
    if ours != sorted(model_inputs):
        raise SpecError(
            f"inputs: the spec names {ours} but the model's inputs are {sorted(model_inputs)}; "
            "name the spec's inputs exactly as the model's"
        )
    for i, inp in enumerate(spec.inputs):
        shape, dtype = model_inputs[inp.name]
        if _dtype_name(dtype) != inp.dtype:
            _fail(f"inputs[{i}].dtype", inp.dtype, f"the model's input {inp.name!r} is {_dtype_name(dtype)}")
        _check_shape(f"inputs[{i}]", inp.shape, list(shape))
        scale, zero_point = (model_quantization or {}).get(inp.name, (0.0, 0))
        q = inp.quantization if isinstance(inp, ImageInputSpec) else None
        if scale and q is None and isinstance(inp, ImageInputSpec):
            _fail(
                f"inputs[{i}].quantization",
                None,
                f"the model's input is quantized (scale {scale}, zero_point "
                f"{zero_point}): copy them into the spec",
            )
        if q is not None and (not math.isclose(q.scale, scale, rel_tol=1e-6) or q.zero_point != zero_point):
            _fail(
                f"inputs[{i}].quantization",
                {"scale": q.scale, "zero_point": q.zero_point},
                f"the model's input has scale {scale}, zero_point {zero_point}",
            )
    for j, out in enumerate(spec.outputs):
        if model_outputs is not None and out.name not in model_outputs:
            _fail(f"outputs[{j}].name", out.name, f"the model's outputs are {sorted(model_outputs)}")
        if model_outputs is not None and out.scores is not None and out.scores not in model_outputs:
            _fail(f"outputs[{j}].scores", out.scores, f"the model's outputs are {sorted(model_outputs)}")
        if model_outputs is not None and out.anchors is not None and out.name in model_outputs:
            _check_anchor_count(out, j, model_outputs[out.name][0])
        names = (labels or {}).get(out.name)
        if names is not None and model_outputs is not None and len(model_outputs[out.name][0]) > 0:
            classes = _class_count(out, model_outputs)
            if classes is not None and len(names) != classes:
                _fail(
                    f"outputs[{j}].labels",
                    out.labels,
                    f"it holds {len(names)} labels but the model's output {out.name!r} has {classes} classes",
                )
