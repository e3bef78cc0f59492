"""Output decoders for every output role: the one implementation, shared by the device and the build host.

Pure numpy, no state. The host's parity gate imports these (``converters.role_metrics``) so the gate judges
exactly what the device will show; there is no second NMS anywhere.

- detection: :func:`box_iou`, :func:`nms` (greedy, class-aware), :func:`decode_yolo` for a YOLO head
  (``[4 + C, A]`` channels first, or ``[A, 4 + C]``: cx, cy, w, h then C class scores per anchor), and
  :func:`decode_boxes_scores` for separate ``[A, 4]`` corner boxes and ``[A, C]`` (or ``[A]``) scores,
  :func:`ssd_anchors` and :func:`decode_anchor_boxes` for SSD heads (MediaPipe's BlazeFace): box offsets
  ``[A, 4 + 2K]`` relative to fixed-size anchors and ``[A, C]`` (or ``[A]``) score logits;
- segmentation: :func:`segmentation_mask` (argmax over a class axis, or one probability channel
  thresholded);
- sequence: :func:`ctc_greedy` (argmax per step, repeats collapsed, blanks dropped) and :func:`ctc_text`;
- embedding: :func:`l2_normalize`;
- activations: :func:`sigmoid` (also the spec's "sigmoid" activation);
- every role: :func:`decode_output`, one sample as a small JSON-able summary (what ``predict`` shows).

Boxes are ``x1, y1, x2, y2`` in the model's coordinates (for a YOLO or SSD head: the input's pixels).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from device_runtime._spec import AnchorSpec, OutputSpec

__all__ = [
    "Detections",
    "anchors_of",
    "box_iou",
    "ctc_greedy",
    "ctc_text",
    "decode_anchor_boxes",
    "decode_boxes_scores",
    "decode_detections",
    "decode_output",
    "decode_yolo",
    "l2_normalize",
    "nms",
    "segmentation_mask",
    "sigmoid",
    "ssd_anchors",
]

DEFAULT_SCORE_THRESHOLD = 0.25
DEFAULT_IOU_THRESHOLD = 0.45
DEFAULT_MAX_DETECTIONS = 100
DEFAULT_MASK_THRESHOLD = 0.5
MAX_SHOWN_VALUES = 64  # regression values named in a summary


@dataclass(frozen=True, eq=False)
class Detections:
    """Detections of one image after NMS, by descending score: ``boxes`` [K, 4] x1 y1 x2 y2 (float32),
    ``scores`` [K] (float32), ``classes`` [K] (int64)."""

    boxes: np.ndarray
    scores: np.ndarray
    classes: np.ndarray

    def __len__(self) -> int:
        return int(self.scores.shape[0])


def _empty() -> Detections:
    return Detections(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64))


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of corner boxes ``a`` [N, 4] and ``b`` [M, 4] -> [N, M]; degenerate boxes give 0."""
    a = np.asarray(a, np.float64).reshape(-1, 4)
    b = np.asarray(b, np.float64).reshape(-1, 4)
    x1 = np.maximum(a[:, None, 0], b[None, :, 0])
    y1 = np.maximum(a[:, None, 1], b[None, :, 1])
    x2 = np.minimum(a[:, None, 2], b[None, :, 2])
    y2 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area_a = np.clip(a[:, 2] - a[:, 0], 0, None) * np.clip(a[:, 3] - a[:, 1], 0, None)
    area_b = np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)
    union = area_a[:, None] + area_b[None, :] - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, inter / union, 0.0)


def nms(
    boxes: np.ndarray,
    scores: np.ndarray,
    classes: np.ndarray | None = None,
    *,
    iou_threshold: float = DEFAULT_IOU_THRESHOLD,
    max_detections: int = DEFAULT_MAX_DETECTIONS,
) -> np.ndarray:
    """Greedy non-maximum suppression; returns the kept indices by descending score (ties: lower index).

    A box is dropped when its IoU with a kept box of the same class (any box when ``classes`` is None)
    is above ``iou_threshold``. At most ``max_detections`` are kept.
    """
    scores = np.asarray(scores, np.float64).reshape(-1)
    order = np.argsort(-scores, kind="stable")
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)[order]
    same = None if classes is None else np.asarray(classes).reshape(-1)[order]
    alive = np.ones(order.size, bool)
    kept: list[int] = []
    for i in range(order.size):
        if not alive[i]:
            continue
        kept.append(int(order[i]))
        if len(kept) >= max_detections:
            break
        rest = np.flatnonzero(alive[i + 1 :]) + i + 1
        if rest.size == 0:
            break
        overlap = box_iou(boxes[i : i + 1], boxes[rest])[0] > iou_threshold
        if same is not None:
            overlap &= same[rest] == same[i]
        alive[rest[overlap]] = False
    return np.asarray(kept, np.int64)


def decode_boxes_scores(
    boxes: np.ndarray,
    scores: np.ndarray,
    *,
    score_threshold: float = DEFAULT_SCORE_THRESHOLD,
    iou_threshold: float = DEFAULT_IOU_THRESHOLD,
    max_detections: int = DEFAULT_MAX_DETECTIONS,
) -> Detections:
    """Detections of one image from corner boxes [A, 4] and scores [A, C] (or [A] for one class).

    Each anchor takes its best class; anchors scoring below ``score_threshold`` are dropped before NMS.
    """
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    scores = np.asarray(scores, np.float32)
    scores = scores.reshape(boxes.shape[0], -1)
    if scores.shape[1] == 0 or boxes.shape[0] == 0:
        return _empty()
    classes = scores.argmax(axis=1)
    best = scores[np.arange(scores.shape[0]), classes]
    keep = np.flatnonzero(best >= score_threshold)
    if keep.size == 0:
        return _empty()
    chosen = keep[
        nms(
            boxes[keep],
            best[keep],
            classes[keep],
            iou_threshold=iou_threshold,
            max_detections=max_detections,
        )
    ]
    return Detections(boxes[chosen], best[chosen], classes[chosen].astype(np.int64))


def decode_yolo(
    head: np.ndarray,
    *,
    channels_first: bool = True,
    score_threshold: float = DEFAULT_SCORE_THRESHOLD,
    iou_threshold: float = DEFAULT_IOU_THRESHOLD,
    max_detections: int = DEFAULT_MAX_DETECTIONS,
) -> Detections:
    """Detections of one image from a YOLO head: [4 + C, A] (``channels_first``) or [A, 4 + C].

    Rows 0..3 are cx, cy, w, h; the rest are the class scores (already activated, as exported YOLOv8
    heads are).
    """
    x = np.asarray(head, np.float32)
    if x.ndim != 2 or (x.shape[0] if channels_first else x.shape[1]) < 5:
        raise ValueError(f"a YOLO head is [4 + C, A] or [A, 4 + C] with C >= 1, got shape {x.shape}")
    rows = x if channels_first else x.T
    cx, cy, w, h = rows[0], rows[1], rows[2], rows[3]
    corners = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)
    return decode_boxes_scores(
        corners,
        rows[4:].T,
        score_threshold=score_threshold,
        iou_threshold=iou_threshold,
        max_detections=max_detections,
    )


def ssd_anchors(
    size: tuple[int, int], strides: Sequence[int], *, per_layer: int = 2, offset: float = 0.5
) -> np.ndarray:
    """Fixed-size SSD anchors [A, 4] as cx, cy, w, h normalised to the input (w = h = 1), float32.

    The layout of MediaPipe's SsdAnchorsCalculator with ``fixed_anchor_size``: a run of equal consecutive
    ``strides`` is one grid of ceil(H / stride) x ceil(W / stride) cells, row by row, and each cell holds
    ``per_layer`` anchors per layer of the run (BlazeFace: strides 8, 16, 16, 16 and 2 per layer give
    16 x 16 x 2 + 8 x 8 x 6 = 896), centred at ``offset`` within the cell.
    """
    h, w = size
    grids: list[np.ndarray] = []
    i = 0
    while i < len(strides):
        run = 1
        while i + run < len(strides) and strides[i + run] == strides[i]:
            run += 1
        rows, cols = -(-h // strides[i]), -(-w // strides[i])  # ceil: a partial cell still gets anchors
        ys, xs = (np.arange(rows) + offset) / rows, (np.arange(cols) + offset) / cols
        cy, cx = np.meshgrid(ys, xs, indexing="ij")
        centres = np.repeat(np.stack([cx.ravel(), cy.ravel()], axis=1), run * per_layer, axis=0)
        grids.append(np.concatenate([centres, np.ones_like(centres)], axis=1))
        i += run
    return np.concatenate(grids).astype(np.float32) if grids else np.zeros((0, 4), np.float32)


@functools.lru_cache(maxsize=8)
def anchors_of(grid: AnchorSpec) -> np.ndarray:
    """:func:`ssd_anchors` of a spec's anchors object, computed once per spec (about 0.1 ms for BlazeFace's
    896, which every `predict` would otherwise pay); read-only, since every caller shares it."""
    anchors = ssd_anchors(grid.size, grid.strides, per_layer=grid.per_layer, offset=grid.offset)
    anchors.flags.writeable = False
    return anchors


def sigmoid(x: np.ndarray) -> np.ndarray:
    """The logistic function, elementwise, in ``x``'s float dtype: 1 / (1 + exp(-x)) without overflow."""
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def decode_anchor_boxes(
    regressors: np.ndarray,
    logits: np.ndarray,
    anchors: np.ndarray,
    *,
    size: tuple[int, int],
    box_scale: tuple[float, float, float, float],
    order: str = "xywh",
    box_size: str = "linear",
    score_threshold: float = DEFAULT_SCORE_THRESHOLD,
    iou_threshold: float = DEFAULT_IOU_THRESHOLD,
    max_detections: int = DEFAULT_MAX_DETECTIONS,
) -> Detections:
    """Detections of one image from an SSD head: ``regressors`` [A, 4 + 2K], score ``logits`` [A, C] or
    [A], ``anchors`` [A, 4] (cx, cy, w, h normalised, e.g. :func:`ssd_anchors`).

    The first four regressors (``order`` "xywh", or "yxhw") code the box against its anchor:
    cx = x / x_scale * anchor w + anchor cx, and w = w_raw / w_scale * anchor w (``box_size`` "linear") or
    exp(w_raw / w_scale) * anchor w ("exp"), likewise y and h, with ``box_scale`` = (x, y, w, h) scales.
    Keypoints after them are not decoded. Scores are the sigmoid of the logits; boxes come out in input
    pixels (``size`` = H, W), then :func:`decode_boxes_scores` thresholds and suppresses.
    """
    raw = np.asarray(regressors, np.float64)
    anchors = np.asarray(anchors, np.float64).reshape(-1, 4)
    if raw.ndim != 2 or raw.shape[1] < 4 or raw.shape[0] != anchors.shape[0]:
        raise ValueError(
            f"SSD regressors are [A, 4 + 2K] with A = {anchors.shape[0]} anchors, got shape {raw.shape}; "
            "check the anchors' size, strides and per_layer"
        )
    columns = (0, 1, 2, 3) if order == "xywh" else (1, 0, 3, 2)
    x, y, w, h = (raw[:, c] for c in columns)
    sx, sy, sw, sh = box_scale
    cx = x / sx * anchors[:, 2] + anchors[:, 0]
    cy = y / sy * anchors[:, 3] + anchors[:, 1]
    bw, bh = w / sw, h / sh
    if box_size == "exp":
        bw, bh = np.exp(np.clip(bw, None, 30.0)), np.exp(np.clip(bh, None, 30.0))  # 30: no overflow
    bw, bh = bw * anchors[:, 2], bh * anchors[:, 3]
    height, width = size
    corners = np.stack(
        [(cx - bw / 2) * width, (cy - bh / 2) * height, (cx + bw / 2) * width, (cy + bh / 2) * height], axis=1
    )
    return decode_boxes_scores(
        corners,
        sigmoid(np.asarray(logits, np.float64).reshape(anchors.shape[0], -1)),
        score_threshold=score_threshold,
        iou_threshold=iou_threshold,
        max_detections=max_detections,
    )


def segmentation_mask(
    scores: np.ndarray, *, class_axis: int = -1, threshold: float = DEFAULT_MASK_THRESHOLD
) -> np.ndarray:
    """Per-pixel class ids (int64) of one sample: argmax over ``class_axis``, or, when that axis has one
    channel (or the array has none), ``score >= threshold`` as 0/1."""
    x = np.asarray(scores)
    if x.ndim == 0:
        raise ValueError("a segmentation output needs at least one spatial axis")
    if x.ndim >= 3 and x.shape[class_axis] > 1:
        return np.asarray(x.argmax(axis=class_axis), np.int64)
    if x.ndim >= 3:
        x = np.squeeze(x, axis=class_axis)
    return (x >= threshold).astype(np.int64)


def ctc_greedy(logits: np.ndarray, *, blank: int = 0) -> list[int]:
    """Greedy CTC decoding of one sample [T, C]: argmax per step, repeats collapsed, ``blank`` dropped."""
    steps = np.asarray(logits).reshape(-1, np.asarray(logits).shape[-1]).argmax(axis=1)
    out: list[int] = []
    previous = -1
    for s in steps.tolist():
        if s != previous and s != blank:
            out.append(int(s))
        previous = s
    return out


def ctc_text(tokens: Sequence[int], charset: Sequence[str]) -> str:
    """Join the tokens' characters (``charset[i]`` is class i, the blank's entry included)."""
    return "".join(charset[t] if 0 <= t < len(charset) else "\ufffd" for t in tokens)


def l2_normalize(vectors: np.ndarray, *, axis: int = -1) -> np.ndarray:
    """Unit-length vectors along ``axis`` (float32); a zero vector stays zero."""
    x = np.asarray(vectors, np.float64)
    norm = np.linalg.norm(x, axis=axis, keepdims=True)
    return np.where(norm > 0, x / np.where(norm > 0, norm, 1.0), 0.0).astype(np.float32)


def decode_detections(spec: OutputSpec, sample: np.ndarray, scores: np.ndarray | None = None) -> Detections:
    """One image of a detection output decoded with the spec's format and thresholds (``scores``: that
    image's scores output, for formats "boxes" and "ssd")."""
    score, iou, most = (
        spec.effective_score_threshold,
        spec.effective_iou_threshold,
        spec.effective_max_detections,
    )
    fmt = spec.effective_format
    if fmt in ("boxes", "ssd") and scores is None:
        raise ValueError(f"output {spec.name!r}: format {fmt} needs its scores output {spec.scores!r}")
    if fmt == "boxes" and scores is not None:
        return decode_boxes_scores(
            sample, scores, score_threshold=score, iou_threshold=iou, max_detections=most
        )
    if fmt == "ssd" and scores is not None:
        grid: AnchorSpec | None = spec.anchors
        if grid is None:
            raise ValueError(f"output {spec.name!r}: format ssd needs the spec's anchors object")
        return decode_anchor_boxes(
            sample,
            scores,
            anchors_of(grid),
            size=grid.size,
            box_scale=grid.effective_box_scale,
            order=grid.order,
            box_size=grid.box_size,
            score_threshold=score,
            iou_threshold=iou,
            max_detections=most,
        )
    return decode_yolo(
        sample,
        channels_first=fmt == "yolo",
        score_threshold=score,
        iou_threshold=iou,
        max_detections=most,
    )


def _name(labels: Sequence[str] | None, index: int) -> str | int:
    return labels[index] if labels is not None and 0 <= index < len(labels) else index


def decode_output(
    spec: OutputSpec,
    sample: np.ndarray,
    *,
    labels: Sequence[str] | None = None,
    scores: np.ndarray | None = None,
) -> dict[str, Any]:
    """One sample of an output decoded as its role into a small JSON-able summary.

    detection: ``detections`` [{label, class, score, box [x1, y1, x2, y2]}] after NMS (``scores``: the
    sample of the scores output, formats "boxes" and "ssd"); segmentation: mask ``shape`` and each class's
    pixel ``shares``; sequence: greedy CTC ``tokens`` and ``text`` (with labels as the charset); embedding:
    ``dim`` and L2 ``norm``; regression: ``values`` by label (the first 64); classification and tensor:
    ``shape`` only (classification's top-k is :func:`device_runtime.preprocess.postprocess`'s job).
    """
    x = np.asarray(sample)
    out: dict[str, Any] = {"role": spec.kind}
    if spec.kind == "detection":
        found = decode_detections(spec, x, scores)
        out["detections"] = [
            {
                "label": _name(labels, int(c)),
                "class": int(c),
                "score": float(s),
                "box": [round(float(v), 2) for v in b],
            }
            for b, s, c in zip(found.boxes, found.scores, found.classes, strict=True)
        ]
    elif spec.kind == "segmentation":
        mask = segmentation_mask(
            x, class_axis=spec.class_axis_for(x.shape), threshold=spec.effective_score_threshold
        )
        classes, counts = np.unique(mask, return_counts=True)
        out["shape"] = list(mask.shape)
        out["shares"] = {
            str(_name(labels, int(c))): float(n) / mask.size for c, n in zip(classes, counts, strict=True)
        }
    elif spec.kind == "sequence":
        tokens = ctc_greedy(x, blank=spec.effective_blank)
        out["tokens"] = tokens
        out["text"] = None if labels is None else ctc_text(tokens, labels)
    elif spec.kind == "embedding":
        out["dim"] = int(x.size)
        out["norm"] = float(np.linalg.norm(x.astype(np.float64)))
    elif spec.kind == "regression":
        flat = x.reshape(-1)[:MAX_SHOWN_VALUES]
        out["values"] = {str(_name(labels, i)): float(v) for i, v in enumerate(flat)}
        out["count"] = int(x.size)
    else:
        out["shape"] = list(x.shape)
    return out
