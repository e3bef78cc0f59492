"""Parity metrics per output role: reference outputs are the truth, the candidate is judged as its role.

Decoding (NMS, YOLO heads, CTC, masks) is the device's own (:mod:`device_runtime.decode`), so the gate
judges what the device will show. Default thresholds (a gate may override any of them per role)::

    role            metric                                                threshold (default)
    --------------  ----------------------------------------------------  ------------------------------
    classification  top-1 agreement; accuracy drop with labels             Gate: min_agreement 0.99,
                                                                          max_drop_pp 1.0
    detection       recall of reference detections (IoU >= 0.5, class)     min_recall 0.90
                    precision of candidate detections                     min_precision 0.90
                    SQNR of the class scores (the whole scores output     min_score_sqnr_db 10
                    of formats "boxes" and "ssd")
                    reference detections over the set (else vacuous)      min_reference_detections 1
                    box SQNR, detections per image, images with one,      reported, not gated
                    SQNR and max difference of matched detections' scores
    segmentation    mean IoU of the argmax (or thresholded) masks         min_miou 0.90
    embedding       cosine per sample: mean, min                          min_mean_cosine 0.99,
                                                                          min_cosine 0.95
                    nearest-neighbour top-k agreement (k = top_k, < N)    min_neighbour_agreement 0.90
    sequence        per-step argmax agreement                             min_step_agreement 0.98
                    exact decoded-sequence rate (greedy CTC)              min_exact_rate 0.90
    regression      relative error ||x - y|| / ||x||                      max_relative_error 0.05
    tensor          whole-tensor SQNR, cosine                             Gate: min_sqnr_db 20, min_cosine off

The gate's whole-tensor ``min_sqnr_db`` (and ``min_cosine``) still apply to every output as a floor,
but for the scores output of a "boxes" or "ssd" detection: the detection role judges it (its recall,
precision and score SQNR; a failure names both outputs), its raw figures are reported, and it is left out
of the objective. The role checks come on top of the floor. Detections are decoded as the device decodes
them, in the output's format (a YOLO head, corner boxes with a scores output, or SSD anchor offsets with
a logits output). The objective of an output (:func:`role_objective`) is one number, higher is better, in
[0, 1]: the repair optimises the worst output's objective.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from device_runtime.decode import (
    Detections,
    box_iou,
    ctc_greedy,
    decode_detections,
    l2_normalize,
    segmentation_mask,
)
from device_runtime.golden import sqnr_db
from device_runtime.preprocess import OutputSpec

__all__ = [
    "MATCH_IOU",
    "ROLE_THRESHOLDS",
    "match_detections",
    "role_failures",
    "role_metrics",
    "role_objective",
]

MATCH_IOU = 0.5  # a candidate detection matches a reference one at IoU >= this, same class
ROLE_THRESHOLDS: dict[str, dict[str, float]] = {
    "classification": {},
    "detection": {
        "min_recall": 0.90,
        "min_precision": 0.90,
        "min_score_sqnr_db": 10.0,
        "min_reference_detections": 1,
    },
    "segmentation": {"min_miou": 0.90},
    "embedding": {"min_mean_cosine": 0.99, "min_cosine": 0.95, "min_neighbour_agreement": 0.90},
    "sequence": {"min_step_agreement": 0.98, "min_exact_rate": 0.90},
    "regression": {"max_relative_error": 0.05},
    "tensor": {},
}


# ---------------------------------------------------------------------------------------------- detection


def match_detections(reference: Detections, candidate: Detections, *, iou: float = MATCH_IOU) -> int:
    """Greedy matching, candidates by descending score: each takes the unmatched reference detection of
    its class with the highest IoU >= ``iou``. Returns the number of matches (true positives)."""
    return len(_matches(reference, candidate, iou=iou))


def _matches(reference: Detections, candidate: Detections, *, iou: float) -> list[tuple[int, int]]:
    """The matched (reference, candidate) index pairs of :func:`match_detections`."""
    if len(reference) == 0 or len(candidate) == 0:
        return []
    overlaps = box_iou(candidate.boxes, reference.boxes)
    overlaps[candidate.classes[:, None] != reference.classes[None, :]] = -1.0
    taken = np.zeros(len(reference), bool)
    matches = []
    for i in np.argsort(-candidate.scores, kind="stable"):
        row = np.where(taken, -1.0, overlaps[i])
        j = int(row.argmax())
        if row[j] >= iou:
            taken[j] = True
            matches.append((j, int(i)))
    return matches


def _split_head(role: OutputSpec, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if role.effective_format == "yolo":
        return x[:, :4], x[:, 4:]
    return x[..., :4], x[..., 4:]


def _detection(
    role: OutputSpec, x: np.ndarray, y: np.ndarray, xs: np.ndarray | None, ys: np.ndarray | None
) -> dict[str, Any]:
    ref_counts, cand_counts, matched = [], [], 0
    ref_scores: list[float] = []  # the decoded scores of matched detections, reference and candidate
    cand_scores: list[float] = []
    for i in range(x.shape[0]):
        r = decode_detections(role, x[i], None if xs is None else xs[i])
        c = decode_detections(role, y[i], None if ys is None else ys[i])
        pairs = _matches(r, c, iou=MATCH_IOU)
        matched += len(pairs)
        ref_scores += [float(r.scores[j]) for j, _ in pairs]
        cand_scores += [float(c.scores[k]) for _, k in pairs]
        ref_counts.append(len(r))
        cand_counts.append(len(c))
    n_ref, n_cand = sum(ref_counts), sum(cand_counts)
    recall = matched / n_ref if n_ref else 1.0
    precision = matched / n_cand if n_cand else 1.0
    if xs is None or ys is None:
        (bx, sx), (by, sy) = _split_head(role, x), _split_head(role, y)
    else:
        bx, by, sx, sy = x, y, xs, ys
    return {
        "recall": recall,
        "precision": precision,
        "f1": 0.0 if recall + precision == 0 else 2 * recall * precision / (recall + precision),
        "matched": matched,
        "reference_detections": n_ref,
        "candidate_detections": n_cand,
        "reference_per_image": ref_counts,
        "candidate_per_image": cand_counts,
        "reference_images_with_detections": sum(1 for k in ref_counts if k),
        "candidate_images_with_detections": sum(1 for k in cand_counts if k),
        "score_sqnr_db": sqnr_db(sx, sy),
        # reported, not gated: the decoded scores (after the sigmoid of an ssd head) of matched detections
        "matched_score_sqnr_db": sqnr_db(np.array(ref_scores), np.array(cand_scores)) if matched else None,
        "matched_score_max_difference": float(np.max(np.abs(np.subtract(ref_scores, cand_scores))))
        if matched
        else None,
        "box_sqnr_db": sqnr_db(bx, by),
        "decoding": {
            "format": role.effective_format,
            "score_threshold": role.effective_score_threshold,
            "iou_threshold": role.effective_iou_threshold,
            "max_detections": role.effective_max_detections,
            "match_iou": MATCH_IOU,
            **({"scores": role.scores} if role.scores is not None else {}),
        },
    }


# ---------------------------------------------------------------------------------------------- other roles


def _segmentation(role: OutputSpec, x: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    axis, threshold = role.class_axis_for(x.shape[1:]), role.effective_score_threshold
    ref = np.stack([segmentation_mask(s, class_axis=axis, threshold=threshold) for s in x])
    cand = np.stack([segmentation_mask(s, class_axis=axis, threshold=threshold) for s in y])
    ious: dict[str, float] = {}
    for c in np.union1d(np.unique(ref), np.unique(cand)).tolist():
        r, k = ref == c, cand == c
        ious[str(c)] = float(np.sum(r & k) / np.sum(r | k))
    return {
        "miou": float(np.mean(list(ious.values()))) if ious else 1.0,
        "class_iou": ious,
        "pixel_agreement": float(np.mean(ref == cand)),
    }


def _neighbours(unit: np.ndarray, k: int) -> np.ndarray:
    similarity = unit.astype(np.float64) @ unit.astype(np.float64).T
    np.fill_diagonal(similarity, -np.inf)
    return np.argsort(-similarity, axis=1, kind="stable")[:, :k]


def _embedding(role: OutputSpec, x: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    a = l2_normalize(x.reshape(x.shape[0], -1))
    b = l2_normalize(y.reshape(y.shape[0], -1))
    cosines = np.sum(a.astype(np.float64) * b, axis=1)
    k = min(role.top_k, x.shape[0] - 1)
    agreement = None
    if k >= 1:
        ra, rb = _neighbours(a, k), _neighbours(b, k)
        agreement = float(
            np.mean([len(set(p) & set(q)) / k for p, q in zip(ra.tolist(), rb.tolist(), strict=True)])
        )
    return {
        "mean_cosine": float(np.mean(cosines)),
        "min_cosine": float(np.min(cosines)),
        "neighbour_agreement": agreement,
        "neighbour_k": k if k >= 1 else None,
    }


def _sequence(role: OutputSpec, x: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    steps = float(np.mean(x.argmax(axis=-1) == y.argmax(axis=-1)))
    blank = role.effective_blank
    exact = [ctc_greedy(p, blank=blank) == ctc_greedy(q, blank=blank) for p, q in zip(x, y, strict=True)]
    return {"step_agreement": steps, "exact_rate": float(np.mean(exact)), "blank": blank}


def _regression(x: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    a, b = x.reshape(x.shape[0], -1).astype(np.float64), y.reshape(y.shape[0], -1).astype(np.float64)
    norm = float(np.linalg.norm(a))
    error = float(np.linalg.norm(a - b))
    per_sample = np.linalg.norm(a - b, axis=1) / np.maximum(np.linalg.norm(a, axis=1), 1e-12)
    return {
        "relative_error": error / norm if norm > 0 else (0.0 if error == 0 else math.inf),
        "max_sample_relative_error": float(per_sample.max()) if per_sample.size else 0.0,
    }


def role_metrics(
    role: OutputSpec,
    reference: np.ndarray,
    candidate: np.ndarray,
    *,
    reference_scores: np.ndarray | None = None,
    candidate_scores: np.ndarray | None = None,
) -> dict[str, Any]:
    """The role's own metrics of one output (batch axis first); {} for classification and tensor, whose
    figures the parity contract computes for every output. ``*_scores``: the scores output of a
    boxes- or ssd-format detection."""
    kind = role.kind
    if kind == "detection":
        return _detection(role, reference, candidate, reference_scores, candidate_scores)
    if kind == "segmentation":
        return _segmentation(role, reference, candidate)
    if kind == "embedding":
        return _embedding(role, reference, candidate)
    if kind == "sequence":
        return _sequence(role, reference, candidate)
    if kind == "regression":
        return _regression(reference, candidate)
    return {}


def role_failures(
    name: str, kind: str, metrics: Mapping[str, Any], thresholds: Mapping[str, float]
) -> list[str]:
    """The role checks that fail (NaN never passes); thresholds named ``min_X`` / ``max_X`` bound metric X."""
    failures = []
    for key, bound in thresholds.items():
        metric = key[4:]
        value = metrics.get(metric)
        if value is None:
            continue
        if key == "min_reference_detections" and not value >= bound:
            failures.append(
                f"{name}: the reference finds {value} detection(s) at score >= "
                f"{metrics['decoding']['score_threshold']:g} on the evaluation data (at least {bound:g} "
                "needed), so the detection check proves nothing; give images with objects, or declare a "
                "lower score threshold in the output's detection role (score=...)"
            )
            continue
        if key.startswith("min_") and not value >= bound:
            failures.append(f"{name}: {kind} {metric.replace('_', ' ')} {value:.4f} < {bound:.4f}")
        if key.startswith("max_") and not value <= bound:
            failures.append(f"{name}: {kind} {metric.replace('_', ' ')} {value:.4f} > {bound:.4f}")
    return failures


def role_objective(kind: str, metrics: Mapping[str, Any]) -> tuple[str, float]:
    """(what, value): the output's one objective in [0, 1], higher is better; see the module docstring.

    ``metrics``: the output's report entry (its ``role_metrics``, ``agreement`` and ``cosine``).
    """
    role = metrics.get("role_metrics") or {}
    if kind == "detection":
        return "detection F1", float(role["f1"])
    if kind == "segmentation":
        return "mean IoU", float(role["miou"])
    if kind == "embedding":
        return "mean cosine", max(0.0, float(role["mean_cosine"]))
    if kind == "sequence":
        return "step agreement", float(role["step_agreement"])
    if kind == "regression":
        return "1 - relative error", max(0.0, 1.0 - float(role["relative_error"]))
    if kind == "classification" and metrics.get("agreement") is not None:
        return "top-1 agreement", float(metrics["agreement"])
    return "cosine", max(0.0, float(metrics["cosine"]))
