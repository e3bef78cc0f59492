"""How a shadow output is judged against the served one, per output role (`device_runtime.shadow`).

classification: the same top-1 class; detection: as many detections, each served box matched one to one by
a shadow box of the same class with IoU >= `MATCH_IOU` (both decoded by the device's own decoder, each
bundle with its own spec for the output); any other role: the shadow output within the shadow bundle's
golden SQNR tolerance of the served one. Pure numpy, no state.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from device_runtime.telemetry_contract import MAX_HEALTH_OUTPUTS

__all__ = ["MATCH_IOU", "compare_outputs"]

MATCH_IOU = 0.5  # detection boxes match at this IoU or above


def _top1_agree(served: np.ndarray, shadow: np.ndarray) -> bool:
    if served.shape != shadow.shape or served.size == 0:
        return False
    rows = served.shape[0] if served.ndim > 1 else 1
    return bool(np.array_equal(served.reshape(rows, -1).argmax(1), shadow.reshape(rows, -1).argmax(1)))


def _detections_agree(served: list[dict[str, Any]], shadow: list[dict[str, Any]]) -> bool:
    from device_runtime.decode import box_iou

    if len(served) != len(shadow):
        return False
    if not served:
        return True
    iou = box_iou(np.array([d["box"] for d in served]), np.array([d["box"] for d in shadow]))
    free = np.ones(len(shadow), dtype=bool)
    for i, found in enumerate(served):  # by descending score: greedy one-to-one matching
        candidates = [j for j in range(len(shadow)) if free[j] and shadow[j]["class"] == found["class"]]
        best = max(candidates, key=lambda j: iou[i, j], default=None)
        if best is None or iou[i, best] < MATCH_IOU:
            return False
        free[best] = False
    return True


def _within_tolerance(served: np.ndarray, shadow: np.ndarray, min_sqnr_db: float) -> bool:
    from device_runtime.golden import sqnr_db

    if served.shape != shadow.shape:
        return False
    if served.dtype.kind not in "iufb" or shadow.dtype.kind not in "iufb":
        return bool(np.array_equal(served, shadow))
    return sqnr_db(served.astype(np.float64), shadow.astype(np.float64)) >= min_sqnr_db


def _detections(spec: Any, outputs: Mapping[str, Any], name: str, labels: Any) -> list[list[dict[str, Any]]]:
    from device_runtime.preprocess import postprocess

    paired = outputs.get(spec.scores) if spec.scores is not None else None
    return [
        (p.decoded or {}).get("detections", [])
        for p in postprocess(spec, outputs[name], labels=labels, scores=paired)
    ]


def compare_outputs(
    served_spec: Any,
    shadow_spec: Any,
    served: Mapping[str, Any],
    shadow: Mapping[str, Any],
    *,
    min_sqnr_db: float,
) -> list[tuple[str, str, bool]]:
    """(output name, role, agreed) per compared output, the primary (first) output first.

    The outputs are the served spec's declared outputs the served model produced (or, with none declared,
    every served output as a "tensor", except a first ``[N, C]`` output: a classifier, as `predict` reads
    it), at most `MAX_HEALTH_OUTPUTS`. An output the shadow lacks, or of
    another shape, disagrees. Detection outputs are decoded with each bundle's own spec for that output.
    """
    declared = {o.name: o for o in served_spec.outputs if o.name in served}
    names = list(declared) or list(served)
    theirs = {o.name: o for o in shadow_spec.outputs}
    # As `predict` reads it: with no role declared, a first output of shape [N, C] is a classifier.
    first_shape: tuple[int, ...] = np.shape(served[names[0]]) if names else ()
    implied = not declared and len(first_shape) == 2 and first_shape[0] >= 1 and first_shape[1] > 1
    compared = []
    for index, name in enumerate(names[:MAX_HEALTH_OUTPUTS]):
        spec = declared.get(name)
        role = spec.kind if spec is not None else ("classification" if implied and not index else "tensor")
        if name not in shadow:
            compared.append((name, role, False))
            continue
        mine, other = np.asarray(served[name]), np.asarray(shadow[name])
        if role == "classification":
            agreed = _top1_agree(mine, other)
        elif role == "detection":
            assert spec is not None
            other_spec = theirs.get(name) if theirs.get(name, spec).kind == "detection" else spec
            found = _detections(spec, served, name, None)
            shadow_found = _detections(other_spec or spec, shadow, name, None)
            agreed = len(found) == len(shadow_found) and all(
                _detections_agree(a, b) for a, b in zip(found, shadow_found, strict=True)
            )
        else:
            agreed = _within_tolerance(mine, other, min_sqnr_db)
        compared.append((name, role, agreed))
    return compared
