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

    OUTPUT (the output's role; keys after "kind" are optional, defaults shown):
     {"name": str, "kind": "classification"|"detection"|"segmentation"|"regression"|"embedding"
                           |"sequence"|"tensor",
      "activation": "none"|"softmax"|"sigmoid" = "none",
      "top_k": int 1..1000 = 5 (classification: classes shown; embedding: neighbours the parity gate
               compares),
      "labels": plain file name or null = null (not for embedding and tensor; for sequence: the charset,
                one token per line, the blank's line included),
      "score_threshold": float 0..1 or null = null (classification: drop lower scores; detection: the
                         per-box score floor before NMS, null = 0.25; segmentation: the threshold of a
                         single-channel probability, null = 0.5),
      detection only (null elsewhere):
      "format": "yolo"|"yolo_transposed"|"boxes"|"ssd" or null = null ("yolo": [B, 4 + C, A] cx cy w h + C
                class scores; "yolo_transposed": [B, A, 4 + C]; "boxes": this output is [B, A, 4] x1 y1 x2 y2
                and "scores" names the [B, A, C] or [B, A] scores output; "ssd": this output is [B, A, 4 + 2K]
                box offsets from the anchors (then K keypoints, not decoded) and "scores" names the
                [B, A, C] or [B, A] logits output, sigmoid applied; null = "yolo"),
      "scores": output name or null = null (required with "format": "boxes" or "ssd", refused otherwise),
      "anchors": ANCHORS or null = null (required with "format": "ssd", refused otherwise),
      "iou_threshold": float 0..1 or null = null (NMS; null = 0.45),
      "max_detections": int 1..10000 or null = null (after NMS, per image; null = 100),
      segmentation only: "class_axis": int -8..7 or null = null (axis of the class scores; null = -1),
      sequence only: "blank": int 0..1000000 or null = null (CTC blank class; null = 0)}

    ANCHORS (SSD anchors on a grid per stride, as MediaPipe's SsdAnchorsCalculator with fixed anchor size;
     keys after "strides" are optional, defaults shown):
     {"size": [H, W] (1..8192, the model input's pixels), "strides": [int 1..8192, ...] (1..16 layers; runs
      of equal strides share one grid of ceil(H / stride) x ceil(W / stride) cells),
      "per_layer": int 1..64 = 2 (anchors per cell each layer adds), "offset": float 0..1 = 0.5 (anchor
      centre within its cell), "box_scale": [x, y, w, h] floats > 0 or null = null (the box coding: an
      offset of box_scale input units moves the centre by one anchor size; null = [W, H, W, H]),
      "order": "xywh"|"yxhw" = "xywh" (the first four regressors), "box_size": "linear"|"exp" = "linear"
      (w = w_raw / w_scale * anchor w, or exp(w_raw / w_scale) * anchor w)}

Names are 1..256 characters without control characters. Channels: 3 for RGB/BGR, 1 for GRAY; ``mean``
and ``std`` hold one value per channel. ``quantization`` needs dtype uint8 or int8.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields, is_dataclass
from typing import Any, ClassVar, NoReturn, TypeAlias

from device_runtime._roles import OUTPUT_KINDS
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
MAX_SIDE = 8192  # pixels, for size and center_crop
MAX_RANK = 8
MAX_DIM = 2**31 - 1
MAX_NAME = 256  # characters
MAX_SPEC_BYTES = 1024 * 1024  # bytes read by load_spec
MAX_TOP_K = 1000
MAX_DETECTIONS = 10000
MAX_BLANK = 1_000_000
DEFAULT_RESCALE = 1 / 255

TENSOR_DTYPES = ("float32", "float16", "int8", "uint8", "int32", "int64")
IMAGE_DTYPES = ("float32", "uint8", "int8")
_INT_RANGE = {"uint8": (0, 255), "int8": (-128, 127)}
_LABELS_FILE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


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
class AnchorSpec:
    """SSD anchors of a detection in format "ssd" and their box coding (see the module docstring).

    Anchors have a fixed size (1 x 1, normalised); ``box_scale`` None means [W, H, W, H].
    """

    size: tuple[int, int]
    strides: tuple[int, ...]
    per_layer: int = 2
    offset: float = 0.5
    box_scale: tuple[float, float, float, float] | None = None
    order: str = "xywh"
    box_size: str = "linear"

    @property
    def effective_box_scale(self) -> tuple[float, float, float, float]:
        """The box coding's x, y, w, h scales: as given, else the input size [W, H, W, H]."""
        h, w = self.size
        return self.box_scale or (float(w), float(h), float(w), float(h))


@dataclass(frozen=True)
class OutputSpec:
    """How to read one model output: its role (``kind``) and that role's decoding parameters.

    Fields that do not apply to the kind are None; the ``effective_*`` properties give the defaults.
    """

    name: str
    kind: str
    activation: str = "none"
    labels: str | None = None
    top_k: int = 5
    score_threshold: float | None = None
    format: str | None = None  # detection: yolo | yolo_transposed | boxes | ssd (None: yolo)
    scores: str | None = None  # detection with format "boxes" or "ssd": the scores output
    anchors: AnchorSpec | None = None  # detection with format "ssd"
    iou_threshold: float | None = None  # detection NMS (None: 0.45)
    max_detections: int | None = None  # detection, per image (None: 100)
    class_axis: int | None = None  # segmentation (None: -1)
    blank: int | None = None  # sequence CTC blank class (None: 0)

    @property
    def effective_format(self) -> str:
        """The detection format, "yolo" when not given."""
        return self.format or "yolo"

    @property
    def effective_score_threshold(self) -> float:
        """The score floor: as given, else 0.25 for detection, 0.5 for segmentation, 0 otherwise."""
        if self.score_threshold is not None:
            return self.score_threshold
        return {"detection": 0.25, "segmentation": 0.5}.get(self.kind, 0.0)

    @property
    def effective_iou_threshold(self) -> float:
        """The NMS IoU threshold, 0.45 when not given."""
        return 0.45 if self.iou_threshold is None else self.iou_threshold

    @property
    def effective_max_detections(self) -> int:
        """Detections kept per image after NMS, 100 when not given."""
        return 100 if self.max_detections is None else self.max_detections

    def class_axis_for(self, sample_shape: Sequence[object]) -> int:
        """The segmentation class axis of one sample's array: the declared one, else the smaller end axis.

        Undeclared, `[C, H, W]` (channels first, e.g. `[1, 640, 640]` probability maps) takes axis 0 and
        `[H, W, C]` takes -1; judging `[1, H, W]` by an argmax over W would measure nothing useful.
        """
        if self.class_axis is not None:
            return self.class_axis
        dims = [d if isinstance(d, int) else None for d in sample_shape]
        if len(dims) >= 3 and dims[0] is not None and (dims[-1] is None or dims[0] < dims[-1]):
            return 0
        return -1

    @property
    def effective_blank(self) -> int:
        """The CTC blank class, 0 when not given."""
        return 0 if self.blank is None else self.blank


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


def _show(value: object) -> str:
    try:
        text = json.dumps(value)
    except (TypeError, ValueError):  # not JSON, or an int too long to print
        text = f"a {type(value).__name__}"
    return text if len(text) <= 60 else text[:57] + "..."


def _fail(path: str, value: object, rule: str) -> NoReturn:
    raise SpecError(f"{path}: {_show(value)} is not allowed ({rule}); fix the spec")


def _obj(
    value: object, path: str, required: tuple[str, ...], optional: tuple[str, ...] = ()
) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        _fail(path, value, "expected an object")
    allowed = required + optional
    for key in value:
        if key not in allowed:
            raise SpecError(
                f"{path}.{key}: unknown key is not allowed (allowed: {', '.join(allowed)}); fix the spec"
            )
    for key in required:
        if key not in value:
            raise SpecError(f"{path}.{key}: missing (it is required); fix the spec")
    return value


def _enum(value: object, path: str, allowed: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in allowed:
        _fail(path, value, "allowed: " + ", ".join(json.dumps(a) for a in allowed))
    return value


def _int(value: object, path: str, name: str, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        _fail(path, value, f"{name} must be an integer from {lo} to {hi}")
    return value


def _float(
    value: object,
    path: str,
    name: str,
    *,
    gt: float | None = None,
    ge: float | None = None,
    le: float | None = None,
) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        _fail(path, value, f"{name} must be a number")
    try:
        x = float(value)
    except OverflowError:  # an int beyond float range
        x = math.inf
    if not math.isfinite(x):
        _fail(path, value, f"{name} must be finite")
    if gt is not None and not x > gt:
        _fail(path, value, f"{name} must be > {gt:g}")
    if ge is not None and not x >= ge:
        _fail(path, value, f"{name} must be >= {ge:g}")
    if le is not None and not x <= le:
        _fail(path, value, f"{name} must be <= {le:g}")
    return x


def _list(value: object, path: str, name: str, lo: int, hi: int) -> Sequence[Any]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or not lo <= len(value) <= hi:
        count = f"exactly {lo}" if lo == hi else f"{lo} to {hi}"
        _fail(path, value, f"{name} must be a list of {count} items")
    return value


def _name(value: object, path: str) -> str:
    if not isinstance(value, str) or not 1 <= len(value) <= MAX_NAME or not value.isprintable():
        _fail(path, value, f"a name must be 1 to {MAX_NAME} printable characters")
    return value


def _pair(value: object, path: str, name: str) -> tuple[int, int]:
    items = _list(value, path, name, 2, 2)
    return (_int(items[0], f"{path}[0]", name, 1, MAX_SIDE), _int(items[1], f"{path}[1]", name, 1, MAX_SIDE))


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
_OUTPUT_KINDS = OUTPUT_KINDS
DETECTION_FORMATS = ("yolo", "yolo_transposed", "boxes", "ssd")
PAIRED_FORMATS = ("boxes", "ssd")  # formats whose scores come from a second output, named by "scores"
MAX_LAYERS = 16
MAX_PER_LAYER = 64
_ANCHOR_KEYS = ("size", "strides", "per_layer", "offset", "box_scale", "order", "box_size")
_LABELLED_KINDS = ("classification", "detection", "segmentation", "regression", "sequence")
# key: the one kind it belongs to (a non-null value on another kind is refused)
_KIND_KEYS = {
    "format": "detection",
    "scores": "detection",
    "anchors": "detection",
    "iou_threshold": "detection",
    "max_detections": "detection",
    "class_axis": "segmentation",
    "blank": "sequence",
}


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


def _parse_anchors(value: object, path: str) -> AnchorSpec:
    d = _obj(value, path, _ANCHOR_KEYS[:2], _ANCHOR_KEYS[2:])
    size = _pair(d["size"], f"{path}.size", "size")
    strides = _list(d["strides"], f"{path}.strides", "strides", 1, MAX_LAYERS)
    scale = None
    if d.get("box_scale") is not None:
        items = _list(d["box_scale"], f"{path}.box_scale", "box_scale ([x, y, w, h])", 4, 4)
        x, y, w, h = (
            _float(v, f"{path}.box_scale[{i}]", "a box scale", gt=0.0, le=1e6) for i, v in enumerate(items)
        )
        scale = (x, y, w, h)
    return AnchorSpec(
        size=size,
        strides=tuple(
            _int(v, f"{path}.strides[{i}]", "a stride (input pixels per cell)", 1, MAX_SIDE)
            for i, v in enumerate(strides)
        ),
        per_layer=_int(d.get("per_layer", 2), f"{path}.per_layer", "per_layer", 1, MAX_PER_LAYER),
        offset=_float(d.get("offset", 0.5), f"{path}.offset", "offset", ge=0.0, le=1.0),
        box_scale=scale,
        order=_enum(d.get("order", "xywh"), f"{path}.order", ("xywh", "yxhw")),
        box_size=_enum(d.get("box_size", "linear"), f"{path}.box_size", ("linear", "exp")),
    )


def _parse_output(value: object, path: str) -> OutputSpec:
    d = _obj(value, path, ("name", "kind"), ("activation", "labels", "top_k", "score_threshold", *_KIND_KEYS))
    kind = _enum(d["kind"], f"{path}.kind", OUTPUT_KINDS)
    labels, threshold = d.get("labels"), d.get("score_threshold")
    if labels is not None and kind not in _LABELLED_KINDS:
        _fail(f"{path}.labels", labels, f"labels are for {', '.join(_LABELLED_KINDS)} outputs, not {kind}")
    if labels is not None and (not isinstance(labels, str) or not _LABELS_FILE.fullmatch(labels)):
        _fail(f"{path}.labels", labels, 'labels must be a plain file name in the bundle, e.g. "labels.txt"')
    for key, owner in _KIND_KEYS.items():
        if d.get(key) is not None and kind != owner:
            _fail(f"{path}.{key}", d[key], f"{key} is for {owner} outputs only, not {kind}")
    fmt = None if d.get("format") is None else _enum(d["format"], f"{path}.format", DETECTION_FORMATS)
    scores = None if d.get("scores") is None else _name(d["scores"], f"{path}.scores")
    if (fmt in PAIRED_FORMATS) != (scores is not None):
        _fail(
            f"{path}.scores",
            scores,
            'format "boxes" or "ssd" needs "scores" (the name of the scores output), and only they take one',
        )
    anchors = None if d.get("anchors") is None else _parse_anchors(d["anchors"], f"{path}.anchors")
    if (fmt == "ssd") != (anchors is not None):
        _fail(
            f"{path}.anchors",
            d.get("anchors"),
            'format "ssd" needs "anchors" (the anchor grid and box coding), and only it takes them',
        )
    iou, most = d.get("iou_threshold"), d.get("max_detections")
    axis, blank = d.get("class_axis"), d.get("blank")
    return OutputSpec(
        name=_name(d["name"], f"{path}.name"),
        kind=kind,
        activation=_enum(d.get("activation", "none"), f"{path}.activation", ("none", "softmax", "sigmoid")),
        labels=labels,
        top_k=_int(d.get("top_k", 5), f"{path}.top_k", "top_k", 1, MAX_TOP_K),
        score_threshold=None
        if threshold is None
        else _float(threshold, f"{path}.score_threshold", "score_threshold", ge=0.0, le=1.0),
        format=fmt,
        scores=scores,
        anchors=anchors,
        iou_threshold=None
        if iou is None
        else _float(iou, f"{path}.iou_threshold", "iou_threshold", ge=0.0, le=1.0),
        max_detections=None
        if most is None
        else _int(most, f"{path}.max_detections", "max_detections", 1, MAX_DETECTIONS),
        class_axis=None
        if axis is None
        else _int(axis, f"{path}.class_axis", "class_axis", -MAX_RANK, MAX_RANK - 1),
        blank=None if blank is None else _int(blank, f"{path}.blank", "blank", 0, MAX_BLANK),
    )


def parse_output(value: object, path: str = "output") -> OutputSpec:
    """Validate one OUTPUT object (see the module docstring), e.g. a role given on a command line.

    Raises SpecError naming ``path`` and the bad field.
    """
    return _parse_output(value, path)


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
