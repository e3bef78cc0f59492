"""The role metrics recomputed from raw outputs, written here from the definitions, not from the product.

Nothing in this module imports ``device_runtime.decode`` or ``converters.role_metrics``: the end-to-end
tests compare the parity report and the device's typed predictions with these numbers.
"""

from __future__ import annotations

import numpy as np

SCORE, NMS_IOU, MATCH_IOU, MASK_THRESHOLD = 0.25, 0.45, 0.5, 0.5  # the documented defaults


def iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two corner boxes x1 y1 x2 y2."""
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def yolo_detections(head: np.ndarray, *, score: float = SCORE, nms_iou: float = NMS_IOU,
                    most: int = 100) -> list[tuple[np.ndarray, float, int]]:
    """One image of a YOLOv8 head [4 + C, A] -> [(box x1y1x2y2, score, class)] after class-wise NMS."""
    head = np.asarray(head, np.float64)
    cx, cy, w, h = head[:4]
    classes = head[4:].argmax(axis=0)
    scores = head[4:].max(axis=0)
    candidates = [
        (np.array([cx[a] - w[a] / 2, cy[a] - h[a] / 2, cx[a] + w[a] / 2, cy[a] + h[a] / 2]), float(scores[a]),
         int(classes[a]))
        for a in np.flatnonzero(scores >= score)
    ]
    candidates.sort(key=lambda d: -d[1])  # stable: ties keep anchor order
    kept: list[tuple[np.ndarray, float, int]] = []
    for box, s, c in candidates:
        if len(kept) == most:
            break
        if all(k[2] != c or iou(k[0], box) <= nms_iou for k in kept):
            kept.append((box, s, c))
    return kept


def greedy_matches(reference: list, candidate: list, *, match_iou: float = MATCH_IOU) -> int:
    """Candidates by descending score each take the free same-class reference box of highest IoU >= 0.5."""
    free = [True] * len(reference)
    matches = 0
    for box, _, cls in sorted(candidate, key=lambda d: -d[1]):
        best, best_iou = -1, match_iou
        for j, (rbox, _, rcls) in enumerate(reference):
            if free[j] and rcls == cls:
                overlap = iou(rbox, box)
                if overlap >= best_iou and (best < 0 or overlap > best_iou):
                    best, best_iou = j, overlap
        if best >= 0:
            free[best] = False
            matches += 1
    return matches


def detection_recall_precision(ref: np.ndarray, cand: np.ndarray) -> tuple[float, float, int, int]:
    """(recall, precision, reference count, candidate count) over a batch of YOLO heads."""
    matched = n_ref = n_cand = 0
    for r_head, c_head in zip(ref, cand, strict=True):
        r, c = yolo_detections(r_head), yolo_detections(c_head)
        matched += greedy_matches(r, c)
        n_ref, n_cand = n_ref + len(r), n_cand + len(c)
    return (matched / n_ref if n_ref else 1.0), (matched / n_cand if n_cand else 1.0), n_ref, n_cand


def blazeface_anchors() -> list[tuple[float, float]]:
    """The 896 anchor centres of MediaPipe's face_detection_short_range graph, written from its
    SsdAnchorsCalculator options: a 16 x 16 grid with 2 anchors per cell, then an 8 x 8 grid with 6."""
    centres = []
    for cells, per_cell in ((16, 2), (8, 6)):
        for row in range(cells):
            for column in range(cells):
                centres += [((column + 0.5) / cells, (row + 0.5) / cells)] * per_cell
    return centres


def blazeface_detections(regressors: np.ndarray, logits: np.ndarray) -> list[tuple[np.ndarray, float, int]]:
    """One image of BlazeFace ([896, 16] regressors, [896, 1] logits) -> [(box x1y1x2y2 in 128-pixel input
    coordinates, score, 0)]: MediaPipe's decoding (scale 128, sigmoid, score >= 0.5), NMS at IoU 0.3."""
    candidates = []
    for a, (ax, ay) in enumerate(blazeface_anchors()):
        score = 1.0 / (1.0 + np.exp(-float(logits[a][0])))
        if score < 0.5:
            continue
        x, y, w, h = (float(v) for v in regressors[a][:4])
        cx, cy = x / 128 + ax, y / 128 + ay
        box = np.array([cx - w / 256, cy - h / 256, cx + w / 256, cy + h / 256]) * 128
        candidates.append((box, score, 0))
    candidates.sort(key=lambda d: -d[1])
    kept: list[tuple[np.ndarray, float, int]] = []
    for box, score, c in candidates:
        if all(iou(k[0], box) <= 0.3 for k in kept):
            kept.append((box, score, c))
    return kept[:100]


def blazeface_recall_precision(ref: dict[str, np.ndarray], cand: dict[str, np.ndarray]
                               ) -> tuple[float, float]:
    """(recall, precision) of the candidate's faces against the reference's over a batch."""
    matched = n_ref = n_cand = 0
    for i in range(len(ref["regressors"])):
        r = blazeface_detections(ref["regressors"][i], ref["classificators"][i])
        c = blazeface_detections(cand["regressors"][i], cand["classificators"][i])
        matched += greedy_matches(r, c)
        n_ref, n_cand = n_ref + len(r), n_cand + len(c)
    return (matched / n_ref if n_ref else 1.0), (matched / n_cand if n_cand else 1.0)


def masks(probabilities: np.ndarray, threshold: float = MASK_THRESHOLD) -> np.ndarray:
    """Per-pixel 0/1 masks of a one-channel probability output (channel axis squeezed)."""
    return (np.squeeze(probabilities) >= threshold).astype(np.int64).reshape(probabilities.shape[0], -1)


def mean_iou(ref: np.ndarray, cand: np.ndarray) -> float:
    """Mean over the classes present in either mask set of IoU(class in ref, class in cand)."""
    values = []
    for c in sorted(set(np.unique(ref).tolist()) | set(np.unique(cand).tolist())):
        a, b = ref == c, cand == c
        values.append(np.logical_and(a, b).sum() / np.logical_or(a, b).sum())
    return float(np.mean(values))


def ctc_decode(steps: np.ndarray, blank: int = 0) -> list[int]:
    """Greedy CTC: best class per step, runs merged, blanks removed."""
    best = np.asarray(steps).argmax(axis=-1).tolist()
    return [s for i, s in enumerate(best) if s != blank and (i == 0 or best[i - 1] != s)]


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity of matching rows."""
    a, b = a.reshape(len(a), -1).astype(np.float64), b.reshape(len(b), -1).astype(np.float64)
    return np.einsum("ij,ij->i", a, b) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def neighbour_agreement(a: np.ndarray, b: np.ndarray, k: int) -> float:
    """Mean share of each row's k nearest neighbours (by cosine, itself excluded) that a and b agree on."""
    def nearest(x: np.ndarray) -> list[set[int]]:
        unit = x.reshape(len(x), -1).astype(np.float64)
        unit = unit / np.linalg.norm(unit, axis=1, keepdims=True)
        similarity = unit @ unit.T
        np.fill_diagonal(similarity, -np.inf)
        return [set(np.argsort(-row, kind="stable")[:k].tolist()) for row in similarity]

    return float(np.mean([len(p & q) / k for p, q in zip(nearest(a), nearest(b), strict=True)]))


def relative_error(ref: np.ndarray, cand: np.ndarray) -> float:
    """||ref - cand|| / ||ref|| over the whole output."""
    ref, cand = ref.astype(np.float64), cand.astype(np.float64)
    return float(np.linalg.norm(ref - cand) / np.linalg.norm(ref))


def agreement(ref: np.ndarray, cand: np.ndarray) -> float:
    """Share of samples whose top-1 class is the same."""
    return float(np.mean(ref.reshape(len(ref), -1).argmax(1) == cand.reshape(len(cand), -1).argmax(1)))
