"""Preprocessing spec ``edgekit.preprocess/v1``: the dataclasses and their strict parser (private).

Use it through :mod:`device_runtime.preprocess`, which re-exports the public names and runs a parsed spec.

The spec is one JSON object; every key not listed here is refused, booleans are not numbers, NaN/Infinity
and duplicate keys are refused, every number is bounded::

    {"schema": "edgekit.preprocess/v1",
     "inputs":  [INPUT, ...],                   1..16 inputs, unique names
     "outputs": [OUTPUT, ...]}                  0..64 outputs, unique names (optional, default [])

    INPUT (tensor, passed through after dtype and shape checks):
     {"name": str, "kind": "tensor", "dtype": "float32"|"float16"|"int8"|"uint8"|"int32"|"int64",
      "shape": [int 1..2**31-1 or null (dynamic), ...]}                                    rank 0..8

    INPUT (image; keys after "size" are optional, defaults shown):
     {"name": str, "kind": "image", "size": [H, W] (1..8192),
      "dtype": "float32"|"uint8"|"int8" = "float32", "layout": "NHWC"|"NCHW" = "NHWC",
      "color": "RGB"|"BGR"|"GRAY" = "RGB", "resize": "stretch"|"shortest_edge"|"letterbox" = "stretch",
      "interpolation": "nearest"|"bilinear"|"bicubic"|"area" = "bilinear",
      "center_crop": [H, W] (each <= size) or null = null, "rescale": float in (0, 65536] = 1/255,
      "mean": [float per channel] = 0, "std": [float per channel, 1e-6..1e6] = 1,
      "quantization": {"scale": float > 0, "zero_point": int in the dtype's range} or null = null}

    OUTPUT: how one output is read (its role and decoding, SSD anchors included): see
     :mod:`device_runtime._output_spec`, which parses it.

Names are 1..256 characters without control characters. Channels: 3 for RGB/BGR, 1 for GRAY; ``mean``
and ``std`` hold one value per channel. ``quantization`` needs dtype uint8 or int8.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, fields, is_dataclass
from typing import Any, ClassVar, TypeAlias

from device_runtime._output_spec import OUTPUT_KINDS, AnchorSpec, OutputSpec, _parse_output, parse_output
from device_runtime._spec_values import (
    MAX_RANK,
    _enum,
    _fail,
    _float,
    _int,
    _list,
    _name,
    _obj,
    _pair,
)
from device_runtime.errors import SpecError
from signing.errors import FormatError
from signing.strict_json import canonical_bytes, parse_strict

__all__ = [
    "OUTPUT_KINDS",
    "SCHEMA",
    "AnchorSpec",
    "ImageInputSpec",
    "InputSpec",
    "OutputSpec",
    "PreprocessSpec",
    "Quantization",
    "TensorInputSpec",
    "load_spec",
    "parse_output",
    "parse_spec",
]

SCHEMA = "edgekit.preprocess/v1"
MAX_INPUTS = 16
MAX_OUTPUTS = 64
MAX_DIM = 2**31 - 1
MAX_SPEC_BYTES = 1024 * 1024  # bytes read by load_spec
DEFAULT_RESCALE = 1 / 255

TENSOR_DTYPES = ("float32", "float16", "int8", "uint8", "int32", "int64")
IMAGE_DTYPES = ("float32", "uint8", "int8")
_INT_RANGE = {"uint8": (0, 255), "int8": (-128, 127)}


@dataclass(frozen=True)
class Quantization:
    """Affine input quantization: ``q = rint(x / scale) + zero_point``."""

    scale: float
    zero_point: int


@dataclass(frozen=True)
class TensorInputSpec:
    """A tensor input, passed to the model as given once its dtype and shape are checked."""

    kind: ClassVar[str] = "tensor"
    name: str
    dtype: str
    shape: tuple[int | None, ...]


@dataclass(frozen=True)
class ImageInputSpec:
    """An image input and the pipeline that turns an image into its tensor (see the module docstring).

    Build it with :func:`parse_spec`; direct construction is not validated.
    """

    kind: ClassVar[str] = "image"
    name: str
    size: tuple[int, int]
    dtype: str = "float32"
    layout: str = "NHWC"
    color: str = "RGB"
    resize: str = "stretch"
    interpolation: str = "bilinear"
    center_crop: tuple[int, int] | None = None
    rescale: float = DEFAULT_RESCALE
    mean: tuple[float, ...] = (0.0, 0.0, 0.0)
    std: tuple[float, ...] = (1.0, 1.0, 1.0)
    quantization: Quantization | None = None

    @property
    def channels(self) -> int:
        """1 for GRAY, 3 for RGB and BGR."""
        return 1 if self.color == "GRAY" else 3

    @property
    def tensor_size(self) -> tuple[int, int]:
        """(H, W) of the tensor: ``center_crop`` if given, else ``size``."""
        return self.center_crop or self.size

    @property
    def shape(self) -> tuple[int | None, ...]:
        """Model tensor shape, batch axis dynamic (None)."""
        h, w = self.tensor_size
        return (None, h, w, self.channels) if self.layout == "NHWC" else (None, self.channels, h, w)


InputSpec: TypeAlias = ImageInputSpec | TensorInputSpec


@dataclass(frozen=True)
class PreprocessSpec:
    """A validated ``edgekit.preprocess/v1`` document; build it with :func:`parse_spec` or :func:`load_spec`.

    Validation happens in the parsers: a directly constructed spec is not checked.
    """

    schema: str
    inputs: tuple[InputSpec, ...]
    outputs: tuple[OutputSpec, ...]

    def to_dict(self) -> dict[str, Any]:
        """Canonical JSON-able form, every key present (but an unset ``anchors``, see :data:`_SINCE`);
        ``parse_spec(s.to_dict()) == s``."""
        return {"schema": self.schema, "inputs": _plain(self.inputs), "outputs": _plain(self.outputs)}

    def to_json(self) -> bytes:
        """Canonical JSON bytes (sorted keys, no whitespace, UTF-8), e.g. for ``preprocess.json``."""
        return canonical_bytes(self.to_dict())


# Output keys newer than the devices in the field are written only when set: a spec that does not use them
# stays byte for byte what it was, and a bundle built now still installs on a device that predates them.
_SINCE = frozenset({"anchors"})


def _plain(value: object) -> Any:
    """Dataclasses to dicts (an input's ``kind`` included), tuples to lists."""
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if is_dataclass(value) and not isinstance(value, type):
        out = {
            f.name: _plain(getattr(value, f.name))
            for f in fields(value)
            if f.name not in _SINCE or getattr(value, f.name) is not None
        }
        return {"kind": value.kind, **out} if isinstance(value, (ImageInputSpec, TensorInputSpec)) else out
    return value


# ---------------------------------------------------------------------------------------------- parsing


def _per_channel(
    value: object, path: str, name: str, color: str, channels: int, **bounds: float
) -> tuple[float, ...]:
    items = _list(value, path, name, 1, 4)
    if len(items) != channels:
        _fail(
            path,
            value,
            f"color {json.dumps(color)} has {channels} channel(s): give {channels} {name} value(s)",
        )
    return tuple(_float(v, f"{path}[{i}]", name, **bounds) for i, v in enumerate(items))


_IMAGE_CHOICES = {  # key: allowed values, the first being the default
    "dtype": IMAGE_DTYPES,
    "layout": ("NHWC", "NCHW"),
    "color": ("RGB", "BGR", "GRAY"),
    "resize": ("stretch", "shortest_edge", "letterbox"),
    "interpolation": ("bilinear", "nearest", "bicubic", "area"),
}
_IMAGE_KEYS = (
    "name",
    "kind",
    "size",
    *_IMAGE_CHOICES,
    "center_crop",
    "rescale",
    "mean",
    "std",
    "quantization",
)


def _parse_image(d: Mapping[str, Any], path: str) -> ImageInputSpec:
    _obj(d, path, _IMAGE_KEYS[:3], _IMAGE_KEYS[3:])
    c = {k: _enum(d.get(k, allowed[0]), f"{path}.{k}", allowed) for k, allowed in _IMAGE_CHOICES.items()}
    channels = 1 if c["color"] == "GRAY" else 3
    size = _pair(d["size"], f"{path}.size", "size")
    crop = (
        None
        if d.get("center_crop") is None
        else _pair(d["center_crop"], f"{path}.center_crop", "center_crop")
    )
    for i in range(2):
        if crop is not None and crop[i] > size[i]:
            _fail(f"{path}.center_crop[{i}]", crop[i], f"center_crop must be <= size[{i}] = {size[i]}")
    quant = None
    if d.get("quantization") is not None:
        qpath, dtype = f"{path}.quantization", c["dtype"]
        if dtype not in _INT_RANGE:
            _fail(qpath, d["quantization"], f"quantization needs dtype uint8 or int8, not {dtype}")
        q = _obj(d["quantization"], qpath, ("scale", "zero_point"))
        quant = Quantization(
            scale=_float(q["scale"], f"{qpath}.scale", "scale", gt=0.0, ge=1e-12, le=1e6),
            zero_point=_int(
                q["zero_point"], f"{qpath}.zero_point", f"zero_point for {dtype}", *_INT_RANGE[dtype]
            ),
        )
    mean, std = d.get("mean", [0.0] * channels), d.get("std", [1.0] * channels)
    return ImageInputSpec(
        name=_name(d["name"], f"{path}.name"),
        size=size,
        dtype=c["dtype"],
        layout=c["layout"],
        color=c["color"],
        resize=c["resize"],
        interpolation=c["interpolation"],
        center_crop=crop,
        rescale=_float(d.get("rescale", DEFAULT_RESCALE), f"{path}.rescale", "rescale", gt=0.0, le=65536.0),
        mean=_per_channel(mean, f"{path}.mean", "mean", c["color"], channels, ge=-1e6, le=1e6),
        std=_per_channel(std, f"{path}.std", "std", c["color"], channels, gt=0.0, ge=1e-6, le=1e6),
        quantization=quant,
    )


def _parse_tensor(d: Mapping[str, Any], path: str) -> TensorInputSpec:
    _obj(d, path, ("name", "kind", "dtype", "shape"))
    dims = _list(d["shape"], f"{path}.shape", "shape", 0, MAX_RANK)
    return TensorInputSpec(
        name=_name(d["name"], f"{path}.name"),
        dtype=_enum(d["dtype"], f"{path}.dtype", TENSOR_DTYPES),
        shape=tuple(
            None if v is None else _int(v, f"{path}.shape[{i}]", "a dim", 1, MAX_DIM)
            for i, v in enumerate(dims)
        ),
    )


def _unique(names: list[str], section: str) -> None:
    for i, name in enumerate(names):
        if name in names[:i]:
            _fail(
                f"{section}[{i}].name",
                name,
                f"names must be unique; {section}[{names.index(name)}] has it too",
            )


def parse_spec(doc: Mapping[str, Any]) -> PreprocessSpec:
    """Validate a decoded ``edgekit.preprocess/v1`` document and return it as a :class:`PreprocessSpec`.

    Raises SpecError naming the JSON path of the first bad field, what was found and what is allowed.
    """
    doc = _obj(doc, "spec", ("schema", "inputs"), ("outputs",))
    if doc["schema"] != SCHEMA:
        _fail("schema", doc["schema"], f"expected {json.dumps(SCHEMA)}")
    inputs: list[InputSpec] = []
    for i, item in enumerate(_list(doc["inputs"], "inputs", "inputs", 1, MAX_INPUTS)):
        path = f"inputs[{i}]"
        if not isinstance(item, Mapping) or "kind" not in item:
            _obj(item, path, ("kind",), tuple(item) if isinstance(item, Mapping) else ())  # raises
        kind = _enum(item.get("kind"), f"{path}.kind", ("image", "tensor"))
        inputs.append(_parse_image(item, path) if kind == "image" else _parse_tensor(item, path))
    outputs = [
        _parse_output(o, f"outputs[{i}]")
        for i, o in enumerate(_list(doc.get("outputs", []), "outputs", "outputs", 0, MAX_OUTPUTS))
    ]
    _unique([i.name for i in inputs], "inputs")
    _unique([o.name for o in outputs], "outputs")
    return PreprocessSpec(schema=SCHEMA, inputs=tuple(inputs), outputs=tuple(outputs))


def load_spec(path: str | os.PathLike[str]) -> PreprocessSpec:
    """Read, strictly parse (no duplicate keys, no NaN/Infinity, at most 1 MiB) and validate a spec file.

    Raises SpecError (prefixed with the file name) when the file is unreadable, not UTF-8 JSON or invalid.
    """
    where = os.fspath(path)
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_SPEC_BYTES + 1)
    except OSError as e:
        raise SpecError(f"{where}: cannot read the spec ({e.strerror or e}); check the path") from e
    try:
        doc = parse_strict(data, what=where, max_bytes=MAX_SPEC_BYTES)  # the one strict parser
    except FormatError as e:
        raise SpecError(f"{e}; a preprocessing spec is a small strict JSON file: fix the spec") from e
    try:
        return parse_spec(doc)
    except SpecError as e:
        raise SpecError(f"{where}: {e}") from e
