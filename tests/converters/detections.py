"""An independent YOLOv8 decoder and matcher, written for the tests on purpose (not the device's).

Shared by the parity gate's tests (tests/converters/test_detection_parity.py) and the device's typed
predict (tests/device_runtime/test_typed_predict.py); numpy only, so the device-only test environment
imports it.
"""

from __future__ import annotations

import numpy as np

SCORE, NMS_IOU, MATCH = 0.25, 0.45, 0.5


def my_iou(a: list[float], b: list[float]) -> float:
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    inter = max(w, 0.0) * max(h, 0.0)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def my_detections(head: np.ndarray) -> list[tuple[list[float], float, int]]:
    """[22, A] -> (box, score, class) after per-class greedy NMS, by descending score."""
    found = []
    for a in range(head.shape[1]):
        scores = head[4:, a].astype(np.float64)
        c = int(np.argmax(scores))
        if scores[c] >= SCORE:
            cx, cy, w, h = (float(v) for v in head[:4, a])
            found.append(([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], float(scores[c]), c, a))
    found.sort(key=lambda d: (-d[1], d[3]))
    kept: list[tuple[list[float], float, int]] = []
    for box, score, c, _ in found:
        if all(k[2] != c or my_iou(box, k[0]) <= NMS_IOU for k in kept):
            kept.append((box, score, c))
    return kept[:100]


def my_matches(ref: list[tuple[list[float], float, int]], cand: list[tuple[list[float], float, int]]) -> int:
    used: set[int] = set()
    for box, _, c in sorted(cand, key=lambda d: -d[1]):
        best, best_j = MATCH, None
        for j, (rbox, _, rc) in enumerate(ref):
            if j not in used and rc == c and my_iou(box, rbox) >= best:
                best, best_j = my_iou(box, rbox), j
        if best_j is not None:
            used.add(best_j)
    return len(used)


def my_sqnr(x: np.ndarray, y: np.ndarray) -> float:
    x, y = x.astype(np.float64), y.astype(np.float64)
    return float(10 * np.log10(np.sum(x**2) / np.sum((x - y) ** 2)))
