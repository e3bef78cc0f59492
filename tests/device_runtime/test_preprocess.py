"""Tests for the preprocessing spec ``edgekit.preprocess/v1`` (device_runtime.preprocess)."""

from __future__ import annotations

import copy
import io
import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from device_runtime.errors import InputError, SpecError
from device_runtime.preprocess import (
    SCHEMA,
    ImageInputSpec,
    OutputSpec,
    PreprocessSpec,
    TensorInputSpec,
    check_against_model,
    list_images,
    load_spec,
    parse_spec,
    postprocess,
    prepare_inputs,
    preprocess_image,
    preprocess_images,
)

ROOT = Path(__file__).resolve().parents[2]


def full_doc() -> dict[str, Any]:
    return {
        "schema": SCHEMA,
        "inputs": [
            {
                "name": "pixels",
                "kind": "image",
                "size": [8, 8],
                "dtype": "int8",
                "layout": "NCHW",
                "color": "BGR",
                "resize": "shortest_edge",
                "interpolation": "bicubic",
                "center_crop": [6, 4],
                "rescale": 0.00392156862745098,
                "mean": [0.5, 0.5, 0.5],
                "std": [0.25, 0.5, 1],
                "quantization": {"scale": 0.0078125, "zero_point": -3},
            },
            {"name": "meta", "kind": "tensor", "dtype": "int64", "shape": [None, 4]},
        ],
        "outputs": [
            {
                "name": "probs",
                "kind": "classification",
                "activation": "softmax",
                "labels": "labels.txt",
                "top_k": 3,
                "score_threshold": 0.1,
            },
            {"name": "boxes", "kind": "detection"},
        ],
    }


def image_spec(**fields: Any) -> ImageInputSpec:
    doc = {"schema": SCHEMA, "inputs": [{"name": "img", "kind": "image", **fields}]}
    spec = parse_spec(doc).inputs[0]
    assert isinstance(spec, ImageInputSpec)
    return spec


def rgb(height: int, width: int, color: tuple[int, int, int]) -> Image.Image:
    return Image.new("RGB", (width, height), color)


def png_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


# ------------------------------------------------------------------------------------------ spec round trip


def test_full_spec_round_trips_through_to_dict_and_json() -> None:
    spec = parse_spec(full_doc())
    assert parse_spec(spec.to_dict()) == spec
    assert parse_spec(json.loads(spec.to_json())) == spec
    assert spec.to_json() == parse_spec(json.loads(spec.to_json())).to_json()


def test_minimal_image_input_gets_documented_defaults() -> None:
    spec = parse_spec({"schema": SCHEMA, "inputs": [{"name": "x", "kind": "image", "size": [4, 4]}]})
    inp = spec.inputs[0]
    assert isinstance(inp, ImageInputSpec)
    assert (inp.dtype, inp.layout, inp.color, inp.resize, inp.interpolation) == (
        "float32",
        "NHWC",
        "RGB",
        "stretch",
        "bilinear",
    )
    assert inp.rescale == 1 / 255 and inp.mean == (0.0, 0.0, 0.0) and inp.std == (1.0, 1.0, 1.0)
    assert inp.center_crop is None and inp.quantization is None and spec.outputs == ()
    assert spec.to_dict()["inputs"][0]["kind"] == "image"


def test_gray_defaults_have_one_channel_and_shape_reflects_crop_and_layout() -> None:
    inp = image_spec(size=[10, 12], color="GRAY", layout="NCHW", center_crop=[8, 6])
    assert inp.mean == (0.0,) and inp.std == (1.0,)
    assert inp.shape == (None, 1, 8, 6)


def test_output_defaults() -> None:
    spec = parse_spec(
        {
            "schema": SCHEMA,
            "inputs": full_doc()["inputs"][1:],
            "outputs": [{"name": "y", "kind": "regression"}],
        }
    )
    assert spec.outputs == (OutputSpec(name="y", kind="regression"),)
    assert spec.outputs[0].top_k == 5 and spec.outputs[0].activation == "none"


# ------------------------------------------------------------------------------------------ validation


def mutate(path: str, value: Any) -> dict[str, Any]:
    """full_doc() with the dotted path set to value (the key removed when value is DELETE)."""
    doc = full_doc()
    parts = path.split(".")
    node: Any = doc
    for part in parts[:-1]:
        node = node[int(part)] if isinstance(node, list) else node[part]
    last = parts[-1]
    if isinstance(node, list):
        node[int(last)] = value
    elif value is DELETE:
        del node[last]
    else:
        node[last] = value
    return doc


DELETE = object()

BAD_SPECS = [
    pytest.param(
        mutate("inputs.0.std", [1, 0, 1]), "inputs[0].std[1]: 0 is not allowed (std must be > 0)", id="std-0"
    ),
    pytest.param(mutate("inputs.0.std", [1, -1, 1]), "inputs[0].std[1]", id="std-negative"),
    pytest.param(mutate("inputs.0.std", [1, 1e-9, 1]), "inputs[0].std[1]", id="std-tiny"),
    pytest.param(mutate("inputs.0.size", [100000, 100000]), "inputs[0].size[0]: 100000", id="resize-100000"),
    pytest.param(mutate("inputs.0.size", [0, 8]), "inputs[0].size[0]", id="size-0"),
    pytest.param(mutate("inputs.0.size", [8, True]), "inputs[0].size[1]: true", id="size-bool"),
    pytest.param(mutate("inputs.0.size", [8.0, 8]), "inputs[0].size[0]", id="size-float"),
    pytest.param(mutate("inputs.0.size", [8]), "inputs[0].size", id="size-one-item"),
    pytest.param(mutate("inputs.0.size", "8x8"), "inputs[0].size", id="size-string"),
    pytest.param(mutate("inputs.0.size", [10**5000, 8]), "inputs[0].size[0]", id="size-huge-int"),
    pytest.param(mutate("inputs.0.size", DELETE), "inputs[0].size: missing", id="size-missing"),
    pytest.param(
        mutate("inputs.0.center_crop", [9, 4]), "inputs[0].center_crop[0]", id="crop-bigger-than-size"
    ),
    pytest.param(mutate("inputs.0.mean", [0.5, 0.5]), "inputs[0].mean", id="mean-wrong-count"),
    pytest.param(mutate("inputs.0.mean", [math.nan, 0, 0]), "inputs[0].mean[0]: NaN", id="mean-nan"),
    pytest.param(mutate("inputs.0.rescale", math.inf), "inputs[0].rescale: Infinity", id="rescale-inf"),
    pytest.param(mutate("inputs.0.mean", [10**400, 0, 0]), "inputs[0].mean[0]", id="mean-int-overflow"),
    pytest.param(mutate("inputs.0.kind", DELETE), "inputs[0].kind: missing", id="kind-missing"),
    pytest.param(mutate("inputs.0.rescale", 0), "inputs[0].rescale", id="rescale-0"),
    pytest.param(mutate("inputs.0.rescale", "1/255"), "inputs[0].rescale", id="rescale-string"),
    pytest.param(mutate("inputs.0.layout", "NWHC"), 'inputs[0].layout: "NWHC"', id="layout-unknown"),
    pytest.param(mutate("inputs.0.interpolation", "lanczos"), "inputs[0].interpolation", id="interp-unknown"),
    pytest.param(mutate("inputs.0.resize", "crop"), "inputs[0].resize", id="resize-unknown"),
    pytest.param(mutate("inputs.0.color", "rgb"), "inputs[0].color", id="color-lowercase"),
    pytest.param(mutate("inputs.0.dtype", "float16"), "inputs[0].dtype", id="image-dtype-float16"),
    pytest.param(mutate("inputs.0.colour", "RGB"), "inputs[0].colour: unknown key", id="unknown-input-key"),
    pytest.param(mutate("extra", 1), "spec.extra: unknown key", id="unknown-top-key"),
    pytest.param(mutate("schema", "edgekit.preprocess/v2"), "schema", id="wrong-schema"),
    pytest.param(
        mutate("inputs.0.quantization", {"scale": 0, "zero_point": 0}), "quantization.scale", id="q-scale-0"
    ),
    pytest.param(
        mutate("inputs.0.quantization", {"scale": 0.1, "zero_point": 200}),
        "inputs[0].quantization.zero_point: 200",
        id="q-zero-point-out-of-int8",
    ),
    pytest.param(
        mutate("inputs.0.quantization", {"scale": 0.1}), "quantization.zero_point: missing", id="q-no-zp"
    ),
    pytest.param(mutate("inputs.0.dtype", "float32"), "inputs[0].quantization", id="q-on-float32"),
    pytest.param(mutate("inputs.0.kind", "audio"), "inputs[0].kind", id="kind-unknown"),
    pytest.param(mutate("inputs.0.name", ""), "inputs[0].name", id="name-empty"),
    pytest.param(mutate("inputs.0.name", "a\nb"), "inputs[0].name", id="name-control-char"),
    pytest.param(mutate("inputs.1.name", "pixels"), "inputs[1].name", id="duplicate-input-name"),
    pytest.param(mutate("inputs.1.shape", [None, 0]), "inputs[1].shape[1]", id="tensor-dim-0"),
    pytest.param(mutate("inputs.1.shape", [None, False]), "inputs[1].shape[1]", id="tensor-dim-bool"),
    pytest.param(mutate("inputs.1.shape", [1] * 9), "inputs[1].shape", id="tensor-rank-9"),
    pytest.param(mutate("inputs.1.dtype", "float64"), "inputs[1].dtype", id="tensor-dtype-float64"),
    pytest.param(mutate("inputs.1.layout", "NHWC"), "inputs[1].layout: unknown key", id="tensor-unknown-key"),
    pytest.param(mutate("inputs", []), "inputs", id="no-inputs"),
    pytest.param(mutate("inputs", full_doc()["inputs"][1:] * 17), "inputs", id="17-inputs"),
    pytest.param(mutate("inputs", [1]), "inputs[0]", id="input-not-object"),
    pytest.param(mutate("outputs.0.top_k", 0), "outputs[0].top_k: 0", id="top-k-0"),
    pytest.param(mutate("outputs.0.top_k", 1001), "outputs[0].top_k", id="top-k-1001"),
    pytest.param(mutate("outputs.0.score_threshold", 1.5), "outputs[0].score_threshold", id="threshold-1.5"),
    pytest.param(mutate("outputs.0.labels", "../labels.txt"), "outputs[0].labels", id="labels-traversal"),
    pytest.param(mutate("outputs.0.labels", "dir/labels.txt"), "outputs[0].labels", id="labels-subdir"),
    pytest.param(mutate("outputs.0.activation", "relu"), "outputs[0].activation", id="activation-unknown"),
    pytest.param(mutate("outputs.0.kind", "keypoints"), "outputs[0].kind", id="output-kind-unknown"),
    pytest.param(mutate("outputs.1.name", "probs"), "outputs[1].name", id="duplicate-output-name"),
    pytest.param(mutate("outputs.0.kind", "embedding"), "outputs[0].labels", id="labels-on-embedding"),
]


@pytest.mark.parametrize(("doc", "expected"), BAD_SPECS)
def test_bad_spec_is_refused_naming_the_field(doc: dict[str, Any], expected: str) -> None:
    with pytest.raises(SpecError) as info:
        parse_spec(doc)
    message = str(info.value)
    assert expected in message
    assert "not allowed" in message or "missing" in message
    assert message.endswith("fix the spec")


def test_non_mapping_document_is_refused() -> None:
    with pytest.raises(SpecError, match=r"^spec: "):
        parse_spec([])  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------ load_spec


def test_load_spec_reads_a_valid_file(tmp_path: Path) -> None:
    path = tmp_path / "preprocess.json"
    path.write_bytes(parse_spec(full_doc()).to_json())
    assert load_spec(path) == parse_spec(full_doc())


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param(
            '{"schema": "a", "schema": "b", "inputs": []}', "duplicate JSON key 'schema'", id="duplicate-key"
        ),
        pytest.param(
            '{"schema": "edgekit.preprocess/v1", "inputs": [{"name": "x", "kind": "image", "size": [4, 4],'
            ' "mean": [NaN, 0, 0]}]}',
            "NaN is not allowed",
            id="nan",
        ),
        pytest.param('{"x": -Infinity}', "-Infinity is not allowed", id="infinity"),
        pytest.param('{"schema": ', "not valid JSON", id="truncated-json"),
        pytest.param(
            '{"schema": "edgekit.preprocess/v1", "inputs": [{"name": "x", "kind": "image",'
            ' "size": [4, 1e999]}]}',
            "number 1e999 overflows to inf",
            id="overflowing-float",
        ),
    ],
)
def test_load_spec_refuses_non_strict_json(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "preprocess.json"
    path.write_text(text)
    with pytest.raises(SpecError) as info:
        load_spec(path)
    assert str(info.value).startswith(str(path))
    assert expected in str(info.value)


def test_load_spec_refuses_invalid_utf8_and_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "preprocess.json"
    path.write_bytes(b'{"schema": "\xff"}')
    with pytest.raises(SpecError, match="UTF-8"):
        load_spec(path)
    with pytest.raises(SpecError, match="cannot read"):
        load_spec(tmp_path / "absent.json")


def test_load_spec_refuses_an_oversized_file(tmp_path: Path) -> None:
    path = tmp_path / "preprocess.json"
    path.write_bytes(b" " * (1024 * 1024 + 1))
    with pytest.raises(SpecError, match="exceeds the limit of 1048576"):
        load_spec(path)


# ------------------------------------------------------------------------------------------ image pipeline


def columns_image() -> Image.Image:
    """4 rows x 8 columns; columns come in pairs of equal value 0, 50, 100, 150 (all channels)."""
    row = np.repeat(np.array([0, 50, 100, 150], dtype=np.uint8), 2)
    return Image.fromarray(np.stack([np.tile(row, (4, 1))] * 3, axis=-1))


def test_stretch_resizes_to_size_exactly_with_nearest() -> None:
    quadrants = np.array([[[10] * 3, [20] * 3], [[30] * 3, [40] * 3]], dtype=np.uint8)
    out = preprocess_image(image_spec(size=[4, 6], interpolation="nearest", rescale=1), quadrants)
    assert out.shape == (1, 4, 6, 3) and out.dtype == np.float32
    expected = np.array([[10] * 3 + [20] * 3] * 2 + [[30] * 3 + [40] * 3] * 2, dtype=np.float32)
    np.testing.assert_array_equal(out[0, :, :, 0], expected)


@pytest.mark.parametrize("interpolation", ["nearest", "area"])
def test_shortest_edge_scales_the_short_side_then_center_crops(interpolation: str) -> None:
    spec = image_spec(size=[2, 2], resize="shortest_edge", interpolation=interpolation, rescale=1)
    out = preprocess_image(spec, columns_image())  # 4x8 -> 2x4 -> crop 2x2
    assert out.shape == (1, 2, 2, 3)
    np.testing.assert_array_equal(out[0, :, :, 0], [[50, 100], [50, 100]])


def test_shortest_edge_crops_to_center_crop_when_given() -> None:
    spec = image_spec(
        size=[4, 4], resize="shortest_edge", center_crop=[2, 4], interpolation="nearest", rescale=1
    )
    out = preprocess_image(spec, columns_image())  # 4x8 stays 4x8 -> crop rows 1..2, cols 2..5
    assert out.shape == (1, 2, 4, 3)
    np.testing.assert_array_equal(out[0, :, :, 0], [[50, 50, 100, 100]] * 2)


def test_letterbox_pads_top_and_bottom_with_zero() -> None:
    spec = image_spec(size=[4, 6], resize="letterbox", rescale=1)
    out = preprocess_image(spec, rgb(2, 6, (200, 100, 50)))
    assert out.shape == (1, 4, 6, 3)
    np.testing.assert_array_equal(out[0, :, 0, 0], [0, 200, 200, 0])
    np.testing.assert_array_equal(out[0, 1, :, :], [[200, 100, 50]] * 6)


def test_letterbox_pads_left_and_right_of_a_tall_image() -> None:
    spec = image_spec(size=[4, 6], resize="letterbox", rescale=1)
    out = preprocess_image(spec, rgb(8, 4, (90, 90, 90)))  # scale 0.5 -> 4x2, placed at columns 2..3
    np.testing.assert_array_equal(out[0, :, :, 1], [[0, 0, 90, 90, 0, 0]] * 4)


def test_letterbox_padding_is_normalized_like_pixels() -> None:
    spec = image_spec(size=[4, 6], resize="letterbox", rescale=1, mean=[10, 10, 10], std=[2, 2, 2])
    out = preprocess_image(spec, rgb(2, 6, (30, 30, 30)))
    np.testing.assert_array_equal(out[0, :, 0, 0], [-5, 10, 10, -5])


def test_center_crop_after_stretch() -> None:
    spec = image_spec(size=[4, 8], center_crop=[2, 2], interpolation="nearest", rescale=1)
    out = preprocess_image(spec, columns_image())
    np.testing.assert_array_equal(out[0, :, :, 0], [[50, 100], [50, 100]])


def test_rescale_mean_and_std_apply_per_channel() -> None:
    spec = image_spec(size=[2, 2], mean=[0.5, 0.0, 0.25], std=[0.5, 1.0, 0.25])
    out = preprocess_image(spec, rgb(2, 2, (255, 51, 0)))
    np.testing.assert_allclose(out[0, 0, 0], [1.0, 0.2, -1.0], rtol=1e-6)


def test_gray_has_one_channel_with_luma_values() -> None:
    out = preprocess_image(image_spec(size=[2, 3], color="GRAY", rescale=1), rgb(2, 3, (255, 0, 0)))
    assert out.shape == (1, 2, 3, 1)
    assert np.all(out == 76)  # ITU-R 601-2: 255 * 0.299


def test_bgr_reverses_the_channel_order() -> None:
    out = preprocess_image(image_spec(size=[2, 2], color="BGR", rescale=1), rgb(2, 2, (10, 20, 30)))
    np.testing.assert_array_equal(out[0, 0, 0], [30, 20, 10])


def test_nchw_puts_channels_before_height_and_width() -> None:
    out = preprocess_image(image_spec(size=[2, 3], layout="NCHW", rescale=1), rgb(2, 3, (10, 20, 30)))
    assert out.shape == (1, 3, 2, 3) and out.flags["C_CONTIGUOUS"]
    np.testing.assert_array_equal(out[0, :, 1, 2], [10, 20, 30])


def test_quantized_int8_input_rounds_and_clips() -> None:
    spec = image_spec(
        size=[1, 3],
        dtype="int8",
        mean=[0.5] * 3,
        std=[0.5] * 3,
        quantization={"scale": 1 / 128, "zero_point": 0},
    )
    pixels = np.array([[[255] * 3, [0] * 3, [128] * 3]], dtype=np.uint8)
    out = preprocess_image(spec, pixels)
    assert out.dtype == np.int8
    np.testing.assert_array_equal(out[0, 0, :, 0], [127, -128, 1])  # 1.0 -> 128 clipped to 127


def test_quantized_uint8_applies_zero_point() -> None:
    spec = image_spec(size=[1, 2], dtype="uint8", quantization={"scale": 0.5, "zero_point": 10})
    out = preprocess_image(spec, np.array([[[255] * 3, [0] * 3]], dtype=np.uint8))  # x = 1.0 and 0.0
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out[0, 0, :, 0], [12, 10])


def test_uint8_without_quantization_passes_raw_pixels() -> None:
    spec = image_spec(size=[2, 2], dtype="uint8", rescale=1)
    out = preprocess_image(spec, rgb(2, 2, (0, 128, 255)))
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out[0, 1, 1], [0, 128, 255])


def test_path_bytes_pil_and_array_inputs_agree(tmp_path: Path) -> None:
    image = Image.fromarray(np.arange(4 * 5 * 3, dtype=np.uint8).reshape(4, 5, 3))
    path = tmp_path / "x.png"
    image.save(path)
    spec = image_spec(size=[3, 3], interpolation="bicubic")
    expected = preprocess_image(spec, image)
    for source in (path, str(path), png_bytes(image), np.asarray(image)):
        np.testing.assert_array_equal(preprocess_image(spec, source), expected)


def test_gray_numpy_array_and_rgba_image_are_accepted() -> None:
    spec = image_spec(size=[2, 2], rescale=1)
    out = preprocess_image(spec, np.full((2, 2), 7, dtype=np.uint8))
    assert np.all(out == 7)
    out = preprocess_image(spec, Image.new("RGBA", (2, 2), (1, 2, 3, 0)))
    np.testing.assert_array_equal(out[0, 0, 0], [1, 2, 3])


@pytest.mark.parametrize(
    "image",
    [
        pytest.param(b"not an image at all", id="garbage-bytes"),
        pytest.param(png_bytes(rgb(4, 4, (1, 2, 3)))[:40], id="truncated-png"),
        pytest.param(np.zeros((2, 2, 3), dtype=np.float32), id="float-array"),
        pytest.param(np.zeros((2, 2, 2), dtype=np.uint8), id="two-channel-array"),
        pytest.param(12, id="int"),
    ],
)
def test_undecodable_image_raises_input_error(image: object) -> None:
    with pytest.raises(InputError):
        preprocess_image(image_spec(size=[2, 2]), image)


def test_undecodable_file_error_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.jpg"
    path.write_bytes(b"\xff\xd8\xff garbage")
    with pytest.raises(InputError, match=r"broken\.jpg"):
        preprocess_image(image_spec(size=[2, 2]), path)
    with pytest.raises(InputError, match=r"absent\.png"):
        preprocess_image(image_spec(size=[2, 2]), tmp_path / "absent.png")


def test_preprocess_images_stacks_a_batch() -> None:
    spec = image_spec(size=[2, 2], rescale=1)
    out = preprocess_images(spec, [rgb(3, 3, (1, 1, 1)), rgb(5, 2, (2, 2, 2))])
    assert out.shape == (2, 2, 2, 3)
    assert np.all(out[0] == 1) and np.all(out[1] == 2)
    with pytest.raises(InputError):
        preprocess_images(spec, [])


# ------------------------------------------------------------------------------------------ prepare_inputs


def two_input_spec() -> PreprocessSpec:
    doc = full_doc()
    doc["inputs"][0].update(dtype="float32", quantization=None)
    return parse_spec(doc)


def test_prepare_inputs_takes_a_bare_value_for_a_single_input() -> None:
    spec = parse_spec({"schema": SCHEMA, "inputs": [{"name": "x", "kind": "image", "size": [2, 2]}]})
    arrays = prepare_inputs(spec, rgb(4, 4, (0, 0, 0)))
    assert list(arrays) == ["x"] and arrays["x"].shape == (1, 2, 2, 3)


def test_prepare_inputs_maps_names_to_arrays() -> None:
    spec = two_input_spec()
    meta = np.zeros((2, 4), dtype=np.int64)
    arrays = prepare_inputs(spec, {"pixels": [rgb(8, 8, (0, 0, 0))] * 2, "meta": meta})
    assert arrays["pixels"].shape == (2, 3, 6, 4)
    assert arrays["meta"] is meta or np.shares_memory(arrays["meta"], meta)


@pytest.mark.parametrize(
    ("request_", "expected"),
    [
        pytest.param({"pixels": rgb(8, 8, (0, 0, 0))}, "missing", id="missing-name"),
        pytest.param(rgb(8, 8, (0, 0, 0)), "pass a dict", id="bare-value-for-two-inputs"),
        pytest.param(
            {"pixels": rgb(8, 8, (0, 0, 0)), "meta": np.zeros((1, 4)), "extra": 1},
            "unknown",
            id="unknown-name",
        ),
        pytest.param(
            {"pixels": rgb(8, 8, (0, 0, 0)), "meta": np.zeros((1, 4))}, "dtype float64", id="tensor-dtype"
        ),
        pytest.param(
            {"pixels": rgb(8, 8, (0, 0, 0)), "meta": np.zeros((1, 5), dtype=np.int64)},
            "shape",
            id="tensor-dim",
        ),
        pytest.param(
            {"pixels": rgb(8, 8, (0, 0, 0)), "meta": np.zeros((4,), dtype=np.int64)},
            "shape",
            id="tensor-rank",
        ),
    ],
)
def test_prepare_inputs_refuses_bad_requests(request_: object, expected: str) -> None:
    with pytest.raises(InputError, match=expected):
        prepare_inputs(two_input_spec(), request_)


# ------------------------------------------------------------------------------------------ postprocess


def classification(**fields: Any) -> OutputSpec:
    return OutputSpec(name="probs", kind="classification", **fields)


def test_softmax_matches_the_definition_and_top_k_orders_scores() -> None:
    (pred,) = postprocess(classification(activation="softmax", top_k=2), np.array([[1.0, 3.0, 2.0]]))
    e = np.exp([1.0, 3.0, 2.0])
    np.testing.assert_allclose(pred.values, e / e.sum(), rtol=1e-6)
    assert pred.indices == (1, 2)
    np.testing.assert_allclose(pred.scores, [e[1] / e.sum(), e[2] / e.sum()], rtol=1e-6)


def test_softmax_is_stable_for_huge_logits() -> None:
    (pred,) = postprocess(classification(activation="softmax"), np.array([1000.0, 1001.0, -1000.0]))
    assert np.all(np.isfinite(pred.values))
    np.testing.assert_allclose(pred.values.sum(), 1.0, rtol=1e-6)


def test_sigmoid_threshold_and_labels() -> None:
    spec = classification(activation="sigmoid", top_k=5, score_threshold=0.5)
    preds = postprocess(spec, np.array([[0.0, 10.0, -10.0, 2.0], [-1e4, 1e4, 0.5, 0.5]]), labels="abcd")
    assert [p.indices for p in preds] == [(1, 3, 0), (1, 2, 3)]  # ties: lower index first
    assert preds[0].labels == ("b", "d", "a")
    np.testing.assert_allclose(
        preds[0].scores, [1 / (1 + math.exp(-10)), 1 / (1 + math.exp(-2)), 0.5], rtol=1e-6
    )
    assert preds[1].scores[0] == 1.0 and preds[1].values[0] == 0.0


def test_label_count_must_match_the_class_count() -> None:
    with pytest.raises(SpecError, match="2 labels for 3 classes"):
        postprocess(classification(), np.zeros((1, 3)), labels=["a", "b"])


def test_regression_output_is_passed_through_without_top_k() -> None:
    (pred,) = postprocess(OutputSpec(name="y", kind="regression"), np.array([[1.5, -2.0]]))
    np.testing.assert_array_equal(pred.values, [1.5, -2.0])
    assert pred.indices == () and pred.labels is None


# ------------------------------------------------------------------------------------------ list_images


def test_list_images_is_recursive_sorted_and_skips_non_images(tmp_path: Path) -> None:
    for name in ["b.PNG", "a.jpg", "sub/c.webp", "sub/deeper/d.JpEg", "notes.txt", ".hidden.png", "e.gif"]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "link.png").symlink_to(tmp_path / "a.jpg")
    (tmp_path / "linkdir").symlink_to(tmp_path / "sub")
    found = [p.relative_to(tmp_path).as_posix() for p in list_images(tmp_path)]
    assert found == ["a.jpg", "b.PNG", "e.gif", "sub/c.webp", "sub/deeper/d.JpEg"]


def test_list_images_refuses_an_empty_or_missing_folder(tmp_path: Path) -> None:
    (tmp_path / "readme.txt").write_text("no images")
    with pytest.raises(InputError, match="no image file"):
        list_images(tmp_path)
    with pytest.raises(InputError, match="no such folder"):
        list_images(tmp_path / "absent")


# ------------------------------------------------------------------------------------ check_against_model


def model_inputs() -> dict[str, tuple[tuple[object, ...], object]]:
    return {"pixels": (("batch", 3, 6, 4), "tensor(int8)"), "meta": ((None, 4), np.int64)}


def test_spec_matching_the_model_passes() -> None:
    check_against_model(
        parse_spec(full_doc()),
        model_inputs(),
        model_outputs={"probs": ((1, 3), "float32"), "boxes": ((1, 10, 4), "float32")},
        model_quantization={"pixels": (0.0078125, -3), "meta": (0.0, 0)},
        labels={"probs": ["a", "b", "c"]},
    )


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        pytest.param({"inputs": {"image": (("batch", 3, 6, 4), "int8")}}, "inputs:", id="input-names"),
        pytest.param({"inputs": {"pixels": ((1, 3, 6, 4), "uint8")}}, "inputs[0].dtype", id="dtype"),
        pytest.param(
            {"inputs": {"pixels": ((1, 3, 224, 224), "int8")}}, "inputs[0]: axis 2", id="static-dim"
        ),
        pytest.param({"inputs": {"pixels": ((1, 6, 4, 3), "int8")}}, "inputs[0]: axis 1", id="layout"),
        pytest.param({"inputs": {"meta": ((4,), "int64")}}, "inputs[1]: rank", id="rank"),
        pytest.param({"quant": {"pixels": (0.5, -3)}}, "inputs[0].quantization", id="quantization"),
        pytest.param({"outputs": {"logits": ((1, 3), "float32")}}, "outputs[0].name", id="output-name"),
        pytest.param({"labels": {"probs": ["a", "b"]}}, "outputs[0].labels", id="label-count"),
    ],
)
def test_spec_not_matching_the_model_is_refused(change: dict[str, Any], expected: str) -> None:
    inputs = {**model_inputs(), **change.get("inputs", {})}
    if "image" in inputs:
        del inputs["pixels"]
    outputs = change.get("outputs", {"probs": ((1, 3), "float32"), "boxes": ((1, 10, 4), "float32")})
    with pytest.raises(SpecError, match=expected.replace("[", r"\[").replace("]", r"\]")):
        check_against_model(
            parse_spec(full_doc()),
            inputs,
            model_outputs=outputs,
            model_quantization=change.get("quant", {"pixels": (0.0078125, -3)}),
            labels=change.get("labels", {"probs": ["a", "b", "c"]}),
        )


def test_quantized_model_input_needs_quantization_in_the_spec() -> None:
    doc = copy.deepcopy(full_doc())
    doc["inputs"][0]["quantization"] = None
    with pytest.raises(SpecError, match="copy them into the spec"):
        check_against_model(parse_spec(doc), model_inputs(), model_quantization={"pixels": (0.0078125, -3)})


def test_tensor_spec_direct_construction_matches_parsed() -> None:
    parsed = parse_spec(full_doc()).inputs[1]
    assert parsed == TensorInputSpec(name="meta", dtype="int64", shape=(None, 4))


# ------------------------------------------------------------------------------------------ device footprint


def test_import_loads_neither_pillow_nor_host_packages() -> None:
    code = (
        "import sys, device_runtime.preprocess; "
        "heavy = ('PIL', 'onnx', 'tensorflow', 'click', 'edgekit', 'converters'); "
        "bad = [m for m in heavy if m in sys.modules]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
