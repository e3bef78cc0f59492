"""SSD heads (MediaPipe's BlazeFace layout): anchors from a few parameters, anchor-relative box decoding,
and the spec's "ssd" detection format with its strict anchors object."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from device_runtime.decode import decode_anchor_boxes, decode_output, sigmoid, ssd_anchors
from device_runtime.errors import SpecError
from device_runtime.preprocess import SCHEMA, check_against_model, parse_output, parse_spec

BLAZEFACE_ANCHORS = {"size": [128, 128], "strides": [8, 16, 16, 16]}
BLAZEFACE = {
    "name": "regressors",
    "kind": "detection",
    "format": "ssd",
    "scores": "classificators",
    "anchors": BLAZEFACE_ANCHORS,
    "score_threshold": 0.5,
    "iou_threshold": 0.3,
}


def test_blazeface_anchors_are_896_with_the_grid_centres_of_both_strides() -> None:
    anchors = ssd_anchors((128, 128), [8, 16, 16, 16], per_layer=2, offset=0.5)
    assert anchors.shape == (896, 4)
    assert (anchors[:, 2:] == 1.0).all()  # fixed anchor size
    # stride 8: a 16 x 16 grid, 2 anchors per cell (one layer), row by row
    np.testing.assert_allclose(anchors[0, :2], [0.5 / 16, 0.5 / 16])
    np.testing.assert_allclose(anchors[1, :2], anchors[0, :2])
    np.testing.assert_allclose(anchors[2, :2], [1.5 / 16, 0.5 / 16])
    np.testing.assert_allclose(anchors[32, :2], [0.5 / 16, 1.5 / 16])
    np.testing.assert_allclose(anchors[511, :2], [15.5 / 16, 15.5 / 16])
    # strides 16, 16, 16: one 8 x 8 grid, 3 layers x 2 = 6 anchors per cell
    np.testing.assert_allclose(anchors[512:518, :2], [[0.5 / 8, 0.5 / 8]] * 6)
    np.testing.assert_allclose(anchors[518, :2], [1.5 / 8, 0.5 / 8])
    np.testing.assert_allclose(anchors[-1, :2], [7.5 / 8, 7.5 / 8])


def test_a_grid_that_does_not_divide_the_input_rounds_its_cells_up() -> None:
    anchors = ssd_anchors((100, 60), [32], per_layer=1, offset=0.0)
    assert anchors.shape == (4 * 2, 4)  # ceil(100 / 32) rows, ceil(60 / 32) columns
    np.testing.assert_allclose(anchors[:2, :2], [[0.0, 0.0], [0.5, 0.0]])
    np.testing.assert_allclose(anchors[-1, :2], [0.5, 0.75])


def _anchors() -> np.ndarray:
    return np.array([[0.25, 0.25, 1, 1], [0.75, 0.75, 1, 1], [0.25, 0.25, 1, 1]], np.float32)


def test_anchor_boxes_decode_to_input_pixels_and_overlaps_are_suppressed() -> None:
    # 128 x 128 input, box_scale 128: an offset of 16 moves the centre 16 pixels; w, h are pixels too.
    regressors = np.array(
        [[16, -8, 32, 20, 1, 2], [0, 0, 10, 10, 0, 0], [17, -8, 32, 20, 0, 0]], np.float32
    )  # 1 keypoint after the box, not decoded
    logits = np.array([3.0, -3.0, 2.0], np.float32)
    found = decode_anchor_boxes(
        regressors, logits, _anchors(), size=(128, 128), box_scale=(128, 128, 128, 128), score_threshold=0.5
    )
    assert len(found) == 1  # anchor 1 scores below 0.5, anchor 2 overlaps anchor 0 and scores lower
    np.testing.assert_allclose(found.boxes[0], [32 + 16 - 16, 32 - 8 - 10, 32 + 16 + 16, 32 - 8 + 10])
    assert found.scores[0] == pytest.approx(1 / (1 + math.exp(-3.0)))
    assert found.classes.tolist() == [0]


def test_yxhw_order_and_exponential_sizes_follow_the_box_coding() -> None:
    anchors = np.array([[0.5, 0.5, 0.25, 0.5]], np.float32)  # 32 x 64 pixels on a 128 x 128 input
    regressors = np.array([[1.0, 2.0, 0.0, math.log(2.0) * 5]], np.float32)  # y, x, h, w
    found = decode_anchor_boxes(
        regressors,
        np.array([[5.0, 6.0]]),  # two classes: class 1 wins
        anchors,
        size=(128, 128),
        box_scale=(10, 10, 5, 5),
        order="yxhw",
        box_size="exp",
    )
    cx, cy = (2.0 / 10 * 0.25 + 0.5) * 128, (1.0 / 10 * 0.5 + 0.5) * 128
    w, h = 2 * 0.25 * 128, 1 * 0.5 * 128
    np.testing.assert_allclose(found.boxes[0], [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], rtol=1e-6)
    assert found.classes.tolist() == [1]


def test_regressors_that_do_not_match_the_anchor_count_are_refused() -> None:
    with pytest.raises(ValueError, match="A = 3 anchors"):
        decode_anchor_boxes(
            np.zeros((4, 16)), np.zeros(4), _anchors(), size=(128, 128), box_scale=(1, 1, 1, 1)
        )


def test_sigmoid_is_stable_for_large_logits() -> None:
    np.testing.assert_allclose(sigmoid(np.array([-1000.0, 0.0, 1000.0])), [0.0, 0.5, 1.0])


def test_the_ssd_role_round_trips_and_decodes_through_the_spec() -> None:
    spec = parse_spec({"schema": SCHEMA, "inputs": [{"name": "input", "kind": "image", "size": [128, 128]}],
                       "outputs": [BLAZEFACE]})  # fmt: skip
    assert parse_spec(spec.to_dict()) == spec
    (role,) = spec.outputs
    assert role.anchors is not None and role.anchors.effective_box_scale == (128.0, 128.0, 128.0, 128.0)
    regressors = np.zeros((896, 16), np.float32)
    regressors[100, :4] = [0, 0, 24, 24]
    logits = np.full((896, 1), -10.0, np.float32)
    logits[100] = 4.0
    decoded = decode_output(role, regressors, labels=["face"], scores=logits)
    anchor = ssd_anchors((128, 128), [8, 16, 16, 16])[100] * 128
    (face,) = decoded["detections"]
    assert face["label"] == "face"
    assert face["box"] == pytest.approx(
        [anchor[0] - 12, anchor[1] - 12, anchor[0] + 12, anchor[1] + 12], abs=0.01
    )


def test_the_spec_check_refuses_anchors_that_do_not_fit_the_model() -> None:
    halved = {**BLAZEFACE, "anchors": {**BLAZEFACE_ANCHORS, "per_layer": 1}}
    spec = parse_spec({"schema": SCHEMA, "inputs": [{"name": "input", "kind": "image", "size": [128, 128]}],
                       "outputs": [halved]})  # fmt: skip
    inputs = {"input": ([1, 128, 128, 3], "float32")}
    outputs = {"regressors": ([1, 896, 16], "float32"), "classificators": ([1, 896, 1], "float32")}
    with pytest.raises(SpecError, match=r"outputs\[0\]\.anchors.*make 448 anchors.*has 896"):
        check_against_model(spec, inputs, model_outputs=outputs)
    check_against_model(parse_spec({**spec.to_dict(), "outputs": [BLAZEFACE]}), inputs, model_outputs=outputs)


def _with(**changes: Any) -> dict[str, Any]:
    return {**BLAZEFACE, **changes}


def _anchored(**changes: Any) -> dict[str, Any]:
    return {**BLAZEFACE, "anchors": {**BLAZEFACE_ANCHORS, **changes}}


def _bad(doc: dict[str, Any], where: str, rule: str, name: str) -> Any:
    return pytest.param(doc, where, rule, id=name)


BAD_SSD = [
    _bad(_with(anchors=None), "regressors.anchors", 'format "ssd" needs "anchors"', "ssd-without-anchors"),
    _bad(_with(scores=None), "regressors.scores", 'needs "scores"', "ssd-without-scores"),
    _bad(_with(format="yolo", scores=None), "regressors.anchors", "only it takes them", "anchors-on-yolo"),
    _bad({"name": "y", "kind": "regression", "anchors": BLAZEFACE_ANCHORS}, "y.anchors",
         "detection outputs only", "anchors-on-regression"),
    _bad(_anchored(stride=8), "regressors.anchors.stride", "unknown key", "unknown-key"),
    _bad({**BLAZEFACE, "anchors": {"strides": [8]}}, "regressors.anchors.size", "missing", "no-size"),
    _bad(_anchored(strides=[]), "regressors.anchors", "1 to 16 items", "no-strides"),
    _bad(_anchored(strides=[8, 0]), "regressors.anchors.strides[1]", "from 1 to 8192", "stride-0"),
    _bad(_anchored(strides=[8.0]), "regressors.anchors.strides[0]", "integer", "stride-float"),
    _bad(_anchored(per_layer=0), "regressors.anchors.per_layer", "from 1 to 64", "per-layer-0"),
    _bad(_anchored(offset=1.5), "regressors.anchors.offset", "<= 1", "offset-above-1"),
    _bad(_anchored(box_scale=[128, 128, 128]), "regressors.anchors.box_scale", "exactly 4", "box-scale-3"),
    _bad(_anchored(box_scale=[128, 0, 128, 128]), "regressors.anchors.box_scale[1]", "> 0", "box-scale-0"),
    _bad(_anchored(order="xyxy"), "regressors.anchors.order", '"xywh", "yxhw"', "order-unknown"),
    _bad(_anchored(box_size="log"), "regressors.anchors.box_size", '"linear", "exp"', "size-unknown"),
    _bad(_anchored(size=[128]), "regressors.anchors", "exactly 2", "size-one-side"),
]  # fmt: skip


@pytest.mark.parametrize(("doc", "where", "rule"), BAD_SSD)
def test_a_bad_ssd_role_is_refused_naming_the_field(doc: dict[str, Any], where: str, rule: str) -> None:
    with pytest.raises(SpecError) as caught:
        parse_output(doc, doc["name"])
    message = str(caught.value)
    assert message.startswith(where) and rule in message and "fix the spec" in message, message


def test_a_spec_without_anchors_is_written_as_before_so_older_devices_still_read_it() -> None:
    outputs = [{"name": "output0", "kind": "detection"}, {"name": "logits", "kind": "classification"}]
    written = parse_spec({"schema": SCHEMA, "inputs": [{"name": "input", "kind": "image", "size": [8, 8]}],
                          "outputs": outputs}).to_dict()  # fmt: skip
    assert all("anchors" not in o for o in written["outputs"])
    assert set(written["outputs"][0]) == {"name", "kind", "activation", "labels", "top_k", "score_threshold",
                                          "format", "scores", "iou_threshold", "max_detections", "class_axis",
                                          "blank"}  # fmt: skip
