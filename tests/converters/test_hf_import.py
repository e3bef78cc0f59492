"""Tests for importing Hugging Face ``preprocessor_config.json`` files (converters.hf_import) and the
``edgekit preprocess import`` command."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from converters.hf_import import labels_from_id2label, parse_hf_json, spec_from_hf_preprocessor
from device_runtime.errors import SpecError
from device_runtime.preprocess import ImageInputSpec, load_spec, parse_spec, preprocess_image
from edgekit.commands.preprocess import preprocess

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]
RESCALE = 0.00392156862745098

# Realistic configs, as save_pretrained writes them (google/vit-base-patch16-224,
# openai/clip-vit-base-patch32, facebook/convnext-tiny-224, a legacy ViT feature extractor).
VIT = {
    "do_normalize": True,
    "do_rescale": True,
    "do_resize": True,
    "image_mean": [0.5, 0.5, 0.5],
    "image_processor_type": "ViTImageProcessor",
    "image_std": [0.5, 0.5, 0.5],
    "resample": 2,
    "rescale_factor": RESCALE,
    "size": {"height": 224, "width": 224},
}
CLIP = {
    "crop_size": {"height": 224, "width": 224},
    "do_center_crop": True,
    "do_convert_rgb": True,
    "do_normalize": True,
    "do_rescale": True,
    "do_resize": True,
    "image_mean": CLIP_MEAN,
    "image_processor_type": "CLIPImageProcessor",
    "image_std": CLIP_STD,
    "processor_class": "CLIPProcessor",
    "resample": 3,
    "rescale_factor": RESCALE,
    "size": {"shortest_edge": 224},
}
CONVNEXT = {
    "crop_pct": 0.875,
    "do_normalize": True,
    "do_rescale": True,
    "do_resize": True,
    "image_mean": IMAGENET_MEAN,
    "image_processor_type": "ConvNextImageProcessor",
    "image_std": IMAGENET_STD,
    "resample": 3,
    "rescale_factor": RESCALE,
    "size": {"shortest_edge": 224},
}
LEGACY_VIT = {
    "do_normalize": True,
    "do_resize": True,
    "feature_extractor_type": "ViTFeatureExtractor",
    "image_mean": [0.5, 0.5, 0.5],
    "image_std": [0.5, 0.5, 0.5],
    "resample": 2,
    "size": 224,
}


def image_of(spec: Any) -> ImageInputSpec:
    (image,) = spec.inputs
    assert isinstance(image, ImageInputSpec)
    return image


def constant_image(rgb: tuple[int, int, int], width: int = 320, height: int = 240) -> Image.Image:
    return Image.new("RGB", (width, height), rgb)


def expected(rgb: tuple[int, int, int], mean: list[float], std: list[float]) -> np.ndarray:
    return np.array([(v / 255 - m) / s for v, m, s in zip(rgb, mean, std, strict=True)])


def assert_constant(out: np.ndarray, values: np.ndarray, layout: str = "NCHW") -> None:
    per_channel = out[0].reshape(out.shape[1], -1) if layout == "NCHW" else out[0].reshape(-1, out.shape[3]).T
    for channel, value in zip(per_channel, values, strict=True):
        np.testing.assert_allclose(channel, value, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------------- conversion


def test_vit_stretch_bilinear() -> None:
    spec, notes = spec_from_hf_preprocessor(VIT)
    image = image_of(spec)
    assert (image.name, image.size, image.resize, image.interpolation) == (
        "pixel_values",
        (224, 224),
        "stretch",
        "bilinear",
    )
    assert (image.center_crop, image.layout, image.dtype, image.color) == (None, "NCHW", "float32", "RGB")
    assert image.rescale == pytest.approx(1 / 255)
    assert image.mean == (0.5, 0.5, 0.5) and image.std == (0.5, 0.5, 0.5)
    assert spec.outputs == () and notes == []
    out = preprocess_image(image, constant_image((128, 128, 128)))
    assert out.shape == (1, 3, 224, 224) and out.dtype == np.float32
    assert_constant(out, expected((128, 128, 128), [0.5] * 3, [0.5] * 3))


def test_clip_shortest_edge_bicubic_center_crop() -> None:
    spec, notes = spec_from_hf_preprocessor(CLIP)
    image = image_of(spec)
    assert (image.size, image.resize, image.interpolation, image.center_crop) == (
        (224, 224),
        "shortest_edge",
        "bicubic",
        (224, 224),
    )
    assert image.mean == pytest.approx(CLIP_MEAN) and image.std == pytest.approx(CLIP_STD)
    assert any("truncates the long edge" in n for n in notes)
    assert any("alpha" in n for n in notes)  # do_convert_rgb
    rgb = (200, 100, 50)
    out = preprocess_image(image, constant_image(rgb, 640, 480))
    assert out.shape == (1, 3, 224, 224)
    assert_constant(out, expected(rgb, CLIP_MEAN, CLIP_STD))


def test_convnext_crop_pct_resizes_then_crops() -> None:
    spec, _ = spec_from_hf_preprocessor(CONVNEXT)
    image = image_of(spec)
    # transformers: shortest edge to int(224 / 0.875) = 256, then the center 224 x 224.
    assert (image.size, image.resize, image.center_crop, image.interpolation) == (
        (256, 256),
        "shortest_edge",
        (224, 224),
        "bicubic",
    )
    assert image.mean == pytest.approx(IMAGENET_MEAN) and image.std == pytest.approx(IMAGENET_STD)
    out = preprocess_image(image, constant_image((128, 128, 128), 500, 300))
    assert out.shape == (1, 3, 224, 224)
    assert_constant(out, expected((128, 128, 128), IMAGENET_MEAN, IMAGENET_STD))


def test_convnext_384_and_up_warps_without_crop() -> None:
    spec, _ = spec_from_hf_preprocessor({**CONVNEXT, "size": {"shortest_edge": 384}})
    image = image_of(spec)
    assert (image.size, image.resize, image.center_crop) == ((384, 384), "stretch", None)


def test_convnext_default_crop_pct() -> None:
    config = {k: v for k, v in CONVNEXT.items() if k != "crop_pct"}
    assert image_of(spec_from_hf_preprocessor(config)[0]).size == (256, 256)  # 224 / (224 / 256)


def test_legacy_int_size_and_feature_extractor_name() -> None:
    spec, _ = spec_from_hf_preprocessor(LEGACY_VIT, layout="NHWC", input_name="images")
    image = image_of(spec)
    assert (image.name, image.size, image.resize, image.layout) == ("images", (224, 224), "stretch", "NHWC")
    assert image.rescale == pytest.approx(1 / 255)  # rescale_factor missing: the default 1/255
    out = preprocess_image(image, constant_image((128, 128, 128)))
    assert out.shape == (1, 224, 224, 3)
    assert_constant(out, expected((128, 128, 128), [0.5] * 3, [0.5] * 3), layout="NHWC")


def test_legacy_int_size_is_shortest_edge_for_clip() -> None:
    config = {**CLIP, "size": 224, "crop_size": 224}
    image = image_of(spec_from_hf_preprocessor(config)[0])
    assert (image.size, image.resize, image.center_crop) == ((224, 224), "shortest_edge", (224, 224))


def test_do_normalize_false() -> None:
    spec, _ = spec_from_hf_preprocessor({**VIT, "do_normalize": False})
    image = image_of(spec)
    assert image.mean == (0.0, 0.0, 0.0) and image.std == (1.0, 1.0, 1.0)
    out = preprocess_image(image, constant_image((128, 128, 128)))
    assert_constant(out, np.full(3, 128 / 255))


def test_do_rescale_false_keeps_0_255() -> None:
    spec, _ = spec_from_hf_preprocessor({**VIT, "do_rescale": False, "do_normalize": False})
    image = image_of(spec)
    assert image.rescale == 1.0
    assert_constant(preprocess_image(image, constant_image((128, 128, 128))), np.full(3, 128.0))


def test_class_defaults_fill_missing_keys() -> None:
    spec, notes = spec_from_hf_preprocessor({"image_processor_type": "DeiTImageProcessor"})
    image = image_of(spec)
    assert (image.size, image.resize, image.interpolation, image.center_crop) == (
        (256, 256),
        "stretch",
        "bicubic",
        (224, 224),
    )
    assert image.mean == pytest.approx(IMAGENET_MEAN) and image.std == pytest.approx(IMAGENET_STD)
    assert any("defaults" in n for n in notes)


def test_efficientnet_offset_and_include_top_are_folded() -> None:
    config = {
        "crop_size": {"height": 289, "width": 289},
        "do_center_crop": False,
        "do_normalize": True,
        "do_rescale": True,
        "do_resize": True,
        "image_mean": [0.485, 0.456, 0.406],
        "image_processor_type": "EfficientNetImageProcessor",
        "image_std": [0.47853944, 0.4732864, 0.47434163],
        "include_top": True,
        "resample": 0,
        "rescale_factor": 1 / 127.5,
        "rescale_offset": True,
        "size": {"height": 600, "width": 600},
    }
    spec, notes = spec_from_hf_preprocessor(config)
    image = image_of(spec)
    assert (image.size, image.interpolation, image.center_crop) == ((600, 600), "nearest", None)
    rgb = (10, 128, 250)
    # transformers: x / 127.5 - 1, then (x - mean) / std, then / std again.
    want = np.array(
        [
            ((v / 127.5 - 1) - m) / s / s
            for v, m, s in zip(rgb, config["image_mean"], config["image_std"], strict=True)  # type: ignore[call-overload]
        ]
    )
    assert_constant(preprocess_image(image, constant_image(rgb)), want)
    assert len([n for n in notes if "folded" in n]) == 2


def test_mobilevit_flips_channels_and_does_not_normalize() -> None:
    config = {
        "crop_size": {"height": 256, "width": 256},
        "do_center_crop": True,
        "do_flip_channel_order": True,
        "do_rescale": True,
        "do_resize": True,
        "image_processor_type": "MobileViTImageProcessor",
        "resample": 2,
        "rescale_factor": RESCALE,
        "size": {"shortest_edge": 288},
        "image_mean": [0.5, 0.5, 0.5],  # MobileViT never reads these
    }
    spec, notes = spec_from_hf_preprocessor(config)
    image = image_of(spec)
    assert (image.color, image.size, image.center_crop) == ("BGR", (288, 288), (256, 256))
    rgb = (10, 128, 250)
    assert_constant(preprocess_image(image, constant_image(rgb)), np.array([250, 128, 10]) / 255)
    assert any("image_mean" in n and "ignored" in n for n in notes)


def test_lanczos_and_hamming_map_with_a_note() -> None:
    spec, notes = spec_from_hf_preprocessor({**VIT, "resample": 1})
    assert image_of(spec).interpolation == "bicubic" and any("lanczos" in n for n in notes)
    spec, notes = spec_from_hf_preprocessor({**VIT, "resample": 5})
    assert image_of(spec).interpolation == "bilinear" and any("hamming" in n for n in notes)
    assert image_of(spec_from_hf_preprocessor({**VIT, "resample": 4})[0]).interpolation == "area"
    assert image_of(spec_from_hf_preprocessor({**VIT, "resample": 0})[0]).interpolation == "nearest"


def test_keys_the_class_does_not_read_are_ignored_with_a_note() -> None:
    spec, notes = spec_from_hf_preprocessor({**VIT, "do_center_crop": True, "crop_size": 200})
    assert image_of(spec).center_crop is None
    assert any("ViTImageProcessor does not read crop_size, do_center_crop" in n for n in notes)


def test_fast_class_and_override() -> None:
    spec, notes = spec_from_hf_preprocessor({**VIT, "image_processor_type": "ViTImageProcessorFast"})
    assert image_of(spec).size == (224, 224) and any("torchvision" in n for n in notes)
    config = {k: v for k, v in VIT.items() if k != "image_processor_type"}
    spec, _ = spec_from_hf_preprocessor(config, processor_class="ViTImageProcessor")
    assert image_of(spec).size == (224, 224)


def test_shortest_edge_without_crop_notes_the_square() -> None:
    spec, notes = spec_from_hf_preprocessor({**CLIP, "do_center_crop": False})
    assert image_of(spec).center_crop is None
    assert any("non-square" in n for n in notes)


def test_classification_output_and_labels() -> None:
    id2label = {"0": "cat", "1": "dog", "2": "bird"}
    spec, _ = spec_from_hf_preprocessor(VIT, output_name="logits", id2label=id2label, num_labels=3)
    (output,) = spec.outputs
    assert (output.name, output.kind, output.activation, output.top_k, output.labels) == (
        "logits",
        "classification",
        "softmax",
        3,
        "labels.txt",
    )
    assert labels_from_id2label(id2label) == ["cat", "dog", "bird"]
    assert labels_from_id2label({1: "b", 0: "a"}) == ["a", "b"]


def test_spec_round_trips() -> None:
    for config in (VIT, CLIP, CONVNEXT, LEGACY_VIT):
        spec, _ = spec_from_hf_preprocessor(config)
        assert parse_spec(json.loads(spec.to_json())) == spec


@pytest.mark.parametrize(
    ("change", "match"),
    [
        pytest.param({"resample": 7}, "'resample': 7", id="unknown-resample-code"),
        pytest.param({"resample": True}, "'resample'", id="bool-resample"),
        pytest.param({"image_mean": [0.5, 0.5]}, "'image_mean'.*3 numbers", id="mean-2-values"),
        pytest.param({"image_std": [0.5, 0, 0.5]}, r"'image_std\[1\]'.*> 0", id="std-0"),
        pytest.param({"image_std": [0.5, "x", 0.5]}, r"'image_std\[1\]'", id="std-string"),
        pytest.param({"do_pad": True}, "'do_pad'", id="do-pad-true"),
        pytest.param({"do_resize": False}, "'do_resize'", id="no-resize"),
        pytest.param({"do_resize": "yes"}, "'do_resize'.*true or false", id="flag-not-bool"),
        pytest.param({"size": {"shortest_edge": 224}}, "'size'.*height", id="vit-shortest-edge"),
        pytest.param({"size": {"height": 0, "width": 224}}, "'size.height'", id="size-0"),
        pytest.param({"size": {"height": 224}}, "'size'", id="size-half"),
        pytest.param({"rescale_factor": 0}, "'rescale_factor'", id="rescale-0"),
        pytest.param({"do_thumbnail": True}, "'do_thumbnail': unknown key", id="unknown-key"),
        pytest.param({"image_processor_type": "LevitImageProcessor"}, "not supported", id="unknown-class"),
        pytest.param({"image_processor_type": None}, "no 'image_processor_type'", id="no-class"),
    ],
)
def test_refused_vit(change: dict[str, Any], match: str) -> None:
    with pytest.raises(SpecError, match=match):
        spec_from_hf_preprocessor({**VIT, **change})


@pytest.mark.parametrize(
    ("change", "match"),
    [
        pytest.param({"crop_size": {"height": 256, "width": 224}}, "'crop_size'.*larger", id="crop-too-big"),
        pytest.param(
            {"size": {"shortest_edge": 224, "longest_edge": 1333}}, "'size'.*longest", id="longest-edge"
        ),
        pytest.param({"crop_size": {"shortest_edge": 224}}, "'crop_size'", id="crop-shortest-edge"),
    ],
)
def test_refused_clip(change: dict[str, Any], match: str) -> None:
    with pytest.raises(SpecError, match=match):
        spec_from_hf_preprocessor({**CLIP, **change})


def test_refused_other() -> None:
    with pytest.raises(SpecError, match="'crop_pct'"):
        spec_from_hf_preprocessor({**CONVNEXT, "crop_pct": 1.5})
    with pytest.raises(SpecError, match=r"'size'.*shortest_edge"):
        spec_from_hf_preprocessor({**CONVNEXT, "size": {"height": 224, "width": 224}})
    with pytest.raises(SpecError, match="expected a JSON object"):
        spec_from_hf_preprocessor([1, 2])  # type: ignore[arg-type]
    with pytest.raises(SpecError, match="output_name"):
        spec_from_hf_preprocessor(VIT, num_labels=3)
    with pytest.raises(SpecError, match="'num_labels'"):
        spec_from_hf_preprocessor(
            VIT, output_name="logits", num_labels=2, id2label={"0": "a", "1": "b", "2": "c"}
        )
    with pytest.raises(SpecError, match="class index 1 is missing"):
        labels_from_id2label({"0": "a", "2": "c"})
    with pytest.raises(SpecError, match="one line"):
        labels_from_id2label({"0": "a\nb"})
    with pytest.raises(SpecError, match=r"inputs\[0\]\.name"):
        spec_from_hf_preprocessor(VIT, input_name="")


@pytest.mark.parametrize(
    ("data", "match"),
    [
        pytest.param(b'{"size": 224, "size": 384}', "duplicate JSON key 'size'", id="duplicate"),
        pytest.param(b'{"image_mean": [NaN, 0, 0]}', "NaN", id="nan"),
        pytest.param(b'{"size": ', "not valid JSON", id="truncated"),
        pytest.param(b"\xff\xfe", "not UTF-8", id="not-utf8"),
        pytest.param(b"[1]", "expected a JSON object", id="not-object"),
        pytest.param(b"[" * 100000, "JSON", id="deep"),
    ],
)
def test_parse_hf_json_is_strict(data: bytes, match: str) -> None:
    with pytest.raises(SpecError, match=match):
        parse_hf_json(data)


# ---------------------------------------------------------------------------------------------- CLI


def test_cli_import_writes_a_spec(tmp_path: Path) -> None:
    source = tmp_path / "preprocessor_config.json"
    source.write_text(json.dumps(CLIP), encoding="utf-8")
    out = tmp_path / "spec" / "preprocess.json"
    result = CliRunner().invoke(
        preprocess, ["import", str(source), "-o", str(out), "--input-name", "image", "--layout", "NHWC"]
    )
    assert result.exit_code == 0, result.output
    assert f"wrote {out}" in result.stdout
    assert "note: " in result.stderr
    spec = load_spec(out)
    image = image_of(spec)
    assert (image.name, image.layout, image.center_crop) == ("image", "NHWC", (224, 224))


def test_cli_import_from_folder_as_json(tmp_path: Path) -> None:
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(VIT), encoding="utf-8")
    out = tmp_path / "preprocess.json"
    result = CliRunner().invoke(
        preprocess, ["import", str(tmp_path), "-o", str(out), "--json", "--output-name", "logits"]
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["notes"] == [] and report["spec"] == json.loads(out.read_text(encoding="utf-8"))
    assert report["spec"]["outputs"][0]["name"] == "logits"


@pytest.mark.parametrize(
    ("content", "match"),
    [
        pytest.param('{"size": 224,', "not valid JSON", id="malformed"),
        pytest.param('{"resample": 2, "resample": 3}', "duplicate JSON key", id="duplicate"),
        pytest.param(json.dumps({**VIT, "do_pad": True}), "'do_pad'", id="do-pad"),
    ],
)
def test_cli_import_refuses_bad_files(tmp_path: Path, content: str, match: str) -> None:
    source = tmp_path / "preprocessor_config.json"
    source.write_text(content, encoding="utf-8")
    out = tmp_path / "preprocess.json"
    result = CliRunner().invoke(preprocess, ["import", str(source), "-o", str(out)])
    assert result.exit_code == 1
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"Error: {source}: ")
    assert re.search(match, lines[0])
    assert not out.exists() and list(tmp_path.iterdir()) == [source]


def test_cli_import_missing_source(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        preprocess, ["import", str(tmp_path / "nope.json"), "-o", str(tmp_path / "o.json")]
    )
    assert result.exit_code == 1 and "cannot read the config" in result.stderr
    assert "Traceback" not in result.output
