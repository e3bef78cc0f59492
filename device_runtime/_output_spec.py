"""The OUTPUT objects of a preprocessing spec: an output's role, its decoding and, for SSD heads, the anchors
(private; use them through :mod:`device_runtime.preprocess`). :mod:`device_runtime._spec` holds the whole
document, its inputs and the file format; its docstring shows the full document. Every key not listed here
is refused::

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
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from device_runtime._roles import OUTPUT_KINDS
from device_runtime._spec_values import (
    MAX_RANK,
    MAX_SIDE,
    _enum,
    _fail,
    _float,
    _int,
    _list,
    _name,
    _obj,
    _pair,
)

__all__ = ["OUTPUT_KINDS", "AnchorSpec", "OutputSpec", "parse_output"]

MAX_TOP_K = 1000
MAX_DETECTIONS = 10000
MAX_BLANK = 1_000_000
_LABELS_FILE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


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
