"""How a shadow output is judged against the served one, per output role, with the device's own decoders."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from device_runtime._spec import parse_spec
from device_runtime.shadow import compare_outputs


def spec(*outputs: dict[str, Any]) -> Any:
    return parse_spec(
        {
            "schema": "edgekit.preprocess/v1",
            "inputs": [{"name": "x", "kind": "tensor", "dtype": "float32", "shape": [1, 8]}],
            "outputs": list(outputs),
        }
    )


def yolo_head(boxes: list[tuple[float, float, float, float, int, float]], anchors: int = 8) -> np.ndarray:
    """A [1, 4 + 3, anchors] YOLO head: one anchor per (cx, cy, w, h, class, score), the rest empty."""
    head = np.zeros((1, 7, anchors), np.float32)
    for index, (cx, cy, w, h, cls, score) in enumerate(boxes):
        head[0, :4, index] = (cx, cy, w, h)
        head[0, 4 + cls, index] = score
    return head


DETECTOR = spec({"name": "boxes", "kind": "detection"})
SERVED = yolo_head([(50, 50, 20, 20, 0, 0.9), (150, 80, 30, 40, 2, 0.8)])


@pytest.mark.parametrize(
    ("shadow", "agreed"),
    [
        pytest.param(SERVED, True, id="same"),
        pytest.param(
            yolo_head([(152, 81, 30, 40, 2, 0.7), (51, 49, 20, 21, 0, 0.95)]), True, id="moved-a-little"
        ),
        pytest.param(yolo_head([(50, 50, 20, 20, 0, 0.9)]), False, id="one-missing"),
        pytest.param(
            yolo_head([(50, 50, 20, 20, 0, 0.9), (150, 80, 30, 40, 2, 0.8), (300, 300, 10, 10, 1, 0.6)]),
            False,
            id="one-more",
        ),
        pytest.param(
            yolo_head([(50, 50, 20, 20, 0, 0.9), (165, 95, 30, 40, 2, 0.8)]), False, id="iou-below-half"
        ),
        pytest.param(
            yolo_head([(50, 50, 20, 20, 1, 0.9), (150, 80, 30, 40, 2, 0.8)]), False, id="class-swapped"
        ),
        pytest.param(
            yolo_head([(50, 50, 20, 20, 0, 0.9), (150, 80, 30, 40, 2, 0.1)]), False, id="below-threshold"
        ),
    ],
)
def test_detections_agree_when_counts_match_and_boxes_pair_up_at_iou_half(
    shadow: np.ndarray, agreed: bool
) -> None:
    assert compare_outputs(DETECTOR, DETECTOR, {"boxes": SERVED}, {"boxes": shadow}, min_sqnr_db=30.0) == [
        ("boxes", "detection", agreed)
    ]


def test_classification_compares_top1_and_other_roles_compare_within_the_golden_tolerance() -> None:
    roles = spec(
        {"name": "probs", "kind": "classification"},
        {"name": "vector", "kind": "embedding"},
        {"name": "mask", "kind": "segmentation"},
    )
    rng = np.random.default_rng(0)
    probs = np.array([[0.1, 0.7, 0.2]], np.float32)
    vector = rng.standard_normal((1, 16)).astype(np.float32)
    mask = rng.standard_normal((1, 4, 4, 2)).astype(np.float32)
    served = {"probs": probs, "vector": vector, "mask": mask}
    close = {"probs": probs * 0.5, "vector": vector * 1.001, "mask": mask + 1e-4}  # top-1 kept, > 30 dB
    far = {"probs": np.roll(probs, 1, axis=1), "vector": -vector, "mask": mask * 2 + 1}
    assert compare_outputs(roles, roles, served, close, min_sqnr_db=30.0) == [
        ("probs", "classification", True),
        ("vector", "embedding", True),
        ("mask", "segmentation", True),
    ]
    assert [a for _, _, a in compare_outputs(roles, roles, served, far, min_sqnr_db=30.0)] == [False] * 3
    # the tolerance is the shadow bundle's: a stricter one turns the small difference into a disagreement
    strict = compare_outputs(roles, roles, served, {**close, "vector": vector * 1.05}, min_sqnr_db=40.0)
    assert strict[1] == ("vector", "embedding", False)


def test_a_missing_or_reshaped_shadow_output_disagrees() -> None:
    roles = spec({"name": "probs", "kind": "classification"}, {"name": "extra", "kind": "regression"})
    served = {"probs": np.array([[0.2, 0.8]], np.float32), "extra": np.ones((1, 3), np.float32)}
    shadow = {"probs": np.array([[0.2, 0.8, 0.0]], np.float32)}
    assert compare_outputs(roles, roles, served, shadow, min_sqnr_db=30.0) == [
        ("probs", "classification", False),
        ("extra", "regression", False),
    ]


def test_without_declared_roles_a_first_two_d_output_is_a_classifier_and_the_rest_tensors() -> None:
    bare = spec()
    served = {"logits": np.array([[1.0, 3.0, 2.0]], np.float32), "state": np.ones((2, 5), np.float32)}
    shadow = {"logits": np.array([[0.0, 9.0, 8.0]], np.float32), "state": np.ones((2, 5), np.float32)}
    assert compare_outputs(bare, bare, served, shadow, min_sqnr_db=30.0) == [
        ("logits", "classification", True),
        ("state", "tensor", True),
    ]
