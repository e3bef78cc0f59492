"""Output roles in the spec (strict, bounded, old specs still parse) and the device's decoders."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest

from device_runtime.decode import (
    box_iou,
    ctc_greedy,
    ctc_text,
    decode_boxes_scores,
    decode_output,
    decode_yolo,
    l2_normalize,
    nms,
    segmentation_mask,
)
from device_runtime.errors import SpecError
from device_runtime.preprocess import SCHEMA, parse_output, parse_spec

IMAGE = {"name": "images", "kind": "image", "size": [320, 320], "layout": "NCHW"}


def spec(*outputs: dict[str, Any]) -> dict[str, Any]:
    return {"schema": SCHEMA, "inputs": [IMAGE], "outputs": list(outputs)}


FULL_ROLES = [
    {"name": "output0", "kind": "detection", "labels": "labels.txt", "score_threshold": 0.2,
     "iou_threshold": 0.5, "max_detections": 300, "format": "yolo"},
    {"name": "boxes", "kind": "detection", "format": "boxes", "scores": "scores"},
    {"name": "mask", "kind": "segmentation", "class_axis": 0, "labels": "labels.txt"},
    {"name": "text", "kind": "sequence", "blank": 0, "labels": "labels.txt"},
    {"name": "vector", "kind": "embedding", "top_k": 10},
    {"name": "points", "kind": "regression", "labels": "labels.txt"},
    {"name": "raw", "kind": "tensor"},
    {"name": "probs", "kind": "classification", "activation": "softmax", "top_k": 3},
]  # fmt: skip


def test_every_role_round_trips_through_canonical_json() -> None:
    parsed = parse_spec(spec(*FULL_ROLES))
    assert [o.kind for o in parsed.outputs] == [
        "detection", "detection", "segmentation", "sequence", "embedding", "regression", "tensor",
        "classification",
    ]  # fmt: skip
    assert parse_spec(json.loads(parsed.to_json())) == parsed
    assert parsed.to_json() == parse_spec(json.loads(parsed.to_json())).to_json()


def test_an_old_spec_still_parses_with_role_defaults() -> None:
    old = parse_spec(spec({"name": "y", "kind": "detection", "score_threshold": 0.3}))
    (out,) = old.outputs
    assert (out.format, out.iou_threshold, out.max_detections) == (None, None, None)
    assert (out.effective_format, out.effective_iou_threshold, out.effective_max_detections) == (
        "yolo",
        0.45,
        100,
    )
    assert out.effective_score_threshold == 0.3


def bad(kind: str, key: str, value: Any, name: str, where: str | None = None) -> Any:
    return pytest.param({"name": "y", "kind": kind, key: value}, f"y.{where or key}", id=name)


BAD_OUTPUTS = [
    pytest.param({"name": "y", "kind": "keypoints"}, "y.kind", id="unknown-kind"),
    bad("detection", "nms", 0.5, "unknown-key"),
    bad("detection", "iou_threshold", 1.5, "iou-above-1"),
    bad("detection", "iou_threshold", True, "iou-bool"),
    bad("detection", "max_detections", 0, "max-0"),
    bad("detection", "max_detections", 10001, "max-above-bound"),
    bad("detection", "format", "retinanet", "format-unknown"),
    bad("detection", "format", "boxes", "boxes-without-scores", "scores"),
    bad("detection", "scores", "s", "scores-without-boxes"),
    bad("classification", "iou_threshold", 0.5, "iou-on-classification"),
    bad("sequence", "class_axis", 1, "axis-on-sequence"),
    bad("segmentation", "class_axis", 8, "axis-out-of-range"),
    bad("segmentation", "blank", 0, "blank-on-segmentation"),
    bad("sequence", "blank", -1, "blank-negative"),
    bad("tensor", "labels", "labels.txt", "labels-on-tensor"),
]  # fmt: skip


@pytest.mark.parametrize(("doc", "where"), BAD_OUTPUTS)
def test_bad_output_role_is_refused_naming_the_field(doc: dict[str, Any], where: str) -> None:
    with pytest.raises(SpecError) as info:
        parse_output(doc, "y")
    assert where in str(info.value)
    with pytest.raises(SpecError):
        parse_spec(spec(doc))


# ---- decoders --------------------------------------------------------------------------------------------


def test_nms_keeps_the_best_box_of_an_overlapping_pair_per_class() -> None:
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60], [0, 0, 10, 10]], np.float32)
    scores = np.array([0.9, 0.8, 0.7, 0.6], np.float32)
    assert nms(boxes, scores, iou_threshold=0.5).tolist() == [0, 2]
    assert nms(boxes, scores, np.array([0, 0, 0, 1]), iou_threshold=0.5).tolist() == [0, 2, 3]
    assert nms(boxes, scores, iou_threshold=0.5, max_detections=1).tolist() == [0]
    assert box_iou(boxes[:1], boxes[1:2])[0, 0] == pytest.approx(81 / 119)


def test_yolo_head_decodes_centre_boxes_with_their_best_class() -> None:
    head = np.zeros((4 + 3, 5), np.float32)
    head[:4, 0] = [50, 50, 20, 10]
    head[4 + 2, 0] = 0.9
    head[:4, 1] = [51, 50, 20, 10]  # a duplicate, suppressed
    head[4 + 2, 1] = 0.8
    head[:4, 2] = [200, 100, 40, 40]
    head[4 + 0, 2] = 0.3
    head[4 + 1, 3] = 0.1  # below the score floor
    found = decode_yolo(head, score_threshold=0.25)
    assert found.classes.tolist() == [2, 0]
    assert found.boxes[0].tolist() == [40, 45, 60, 55]
    assert found.scores.tolist() == pytest.approx([0.9, 0.3])
    same = decode_yolo(head.T, channels_first=False, score_threshold=0.25)
    assert same.boxes.tolist() == found.boxes.tolist()
    with pytest.raises(ValueError):
        decode_yolo(np.zeros((4, 10), np.float32))


def test_boxes_and_scores_decode_single_class_scores() -> None:
    boxes = np.array([[0, 0, 10, 10], [20, 20, 30, 30]], np.float32)
    found = decode_boxes_scores(boxes, np.array([0.2, 0.7], np.float32), score_threshold=0.5)
    assert found.boxes.tolist() == [[20, 20, 30, 30]] and found.classes.tolist() == [0]
    assert len(decode_boxes_scores(boxes, np.zeros(2, np.float32))) == 0


def test_ctc_greedy_collapses_repeats_and_drops_blanks() -> None:
    steps = [1, 1, 0, 1, 2, 2, 0, 0, 3]
    logits = np.eye(4, dtype=np.float32)[steps]
    assert ctc_greedy(logits, blank=0) == [1, 1, 2, 3]
    assert ctc_text([1, 1, 2, 3], ["<blank>", "a", "b", "c"]) == "aabc"
    assert ctc_greedy(logits, blank=1) == [0, 2, 0, 3]


def test_segmentation_mask_is_argmax_or_threshold() -> None:
    scores = np.zeros((4, 4, 3), np.float32)
    scores[..., 2] = 1
    scores[0, 0, 1] = 2
    mask = segmentation_mask(scores)
    assert mask[0, 0] == 1 and mask[1, 1] == 2
    prob = np.full((4, 4, 1), 0.2, np.float32)
    prob[2:, :, 0] = 0.8
    assert segmentation_mask(prob).sum() == 8
    assert segmentation_mask(prob[..., 0], threshold=0.9).sum() == 0


def test_l2_normalize_keeps_zero_vectors() -> None:
    v = l2_normalize(np.array([[3, 4], [0, 0]], np.float32))
    assert v.tolist() == [[0.6000000238418579, 0.800000011920929], [0, 0]]


@pytest.mark.parametrize(
    ("sample_shape", "declared", "axis"),
    [
        pytest.param((1, 640, 640), None, 0, id="channels-first-probability-map"),
        pytest.param((21, 64, 64), None, 0, id="channels-first-classes"),
        pytest.param((256, 256, 1), None, -1, id="channels-last-probability-map"),
        pytest.param((64, 64, 21), None, -1, id="channels-last-classes"),
        pytest.param((1, 640, 640), 2, 2, id="declared-wins"),
    ],
)
def test_an_undeclared_segmentation_class_axis_is_the_smaller_end_axis(
    sample_shape: tuple[int, ...], declared: int | None, axis: int
) -> None:
    role = parse_output({"name": "mask", "kind": "segmentation", "class_axis": declared}, "outputs[0]")
    assert role.class_axis_for(sample_shape) == axis


def test_a_channels_first_probability_map_is_thresholded_not_argmaxed_over_its_width() -> None:
    role = parse_output({"name": "mask", "kind": "segmentation"}, "outputs[0]")
    probability = np.zeros((1, 4, 6), np.float32)
    probability[0, 1:3, 2:5] = 0.9  # 6 pixels of 24 above the 0.5 threshold
    decoded = decode_output(role, probability)
    assert decoded["shape"] == [4, 6] and decoded["shares"]["1"] == pytest.approx(6 / 24)
