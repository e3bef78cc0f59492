"""`edgekit preprocess init`: a spec from flags or a real model's inputs, valid for the device runtime."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from click.testing import CliRunner

from device_runtime.engines import load_engine
from device_runtime.preprocess import ImageInputSpec, load_spec, preprocess_image
from edgekit.cli import cli
from tests.zoo.conftest import fetched


def run(*args: str) -> object:
    return CliRunner().invoke(cli, ["preprocess", "init", *args])


def test_a_spec_from_flags_reads_back_with_every_field_given(tmp_path: Path) -> None:
    spec_path = tmp_path / "spec.json"
    result = run(
        "-o", str(spec_path), "--input-name", "pixels", "--size", "256x288", "--layout", "NCHW",
        "--color", "BGR", "--resize", "shortest_edge", "--center-crop", "224", "--mean", "0.485,0.456,0.406",
        "--std", "0.229,0.224,0.225", "--interpolation", "bicubic",
        "--role", "logits=classification,activation=softmax",
    )  # fmt: skip
    assert result.exit_code == 0, result.output  # type: ignore[attr-defined]
    (image,) = load_spec(spec_path).inputs
    assert isinstance(image, ImageInputSpec)
    assert (image.name, image.size, image.layout, image.color, image.resize) == (
        "pixels", (256, 288), "NCHW", "BGR", "shortest_edge",
    )  # fmt: skip
    assert image.center_crop == (224, 224) and image.interpolation == "bicubic"
    assert image.mean == (0.485, 0.456, 0.406) and image.std == (0.229, 0.224, 0.225)
    assert load_spec(spec_path).outputs[0].activation == "softmax"


def test_an_existing_spec_is_kept_unless_force_is_given(tmp_path: Path) -> None:
    spec_path = tmp_path / "spec.json"
    spec_path.write_text("mine")
    refused = run("-o", str(spec_path), "--size", "32", "--json")
    assert refused.exit_code == 1  # type: ignore[attr-defined]
    error = json.loads(refused.stdout)["error"]  # type: ignore[attr-defined]
    assert error["code"] == "OutputExists" and "--force" in error["hint"]
    assert spec_path.read_text() == "mine"
    assert run("-o", str(spec_path), "--size", "32", "--force").exit_code == 0  # type: ignore[attr-defined]
    assert load_spec(spec_path).inputs[0].size == (32, 32)  # type: ignore[union-attr]


def test_an_invalid_spec_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    spec_path = tmp_path / "spec.json"
    result = run("-o", str(spec_path), "--size", "32", "--color", "GRAY", "--mean", "0.1,0.2")
    assert result.exit_code == 1 and "mean" in result.output  # type: ignore[attr-defined]
    assert "fix the options" in result.output and "Traceback" not in result.output  # type: ignore[attr-defined]
    assert not spec_path.exists()


def test_a_tflite_models_input_gives_size_layout_and_dtype(tmp_path: Path) -> None:
    from skimage import data

    model = fetched("mediapipe-face-detection-short")
    spec_path = tmp_path / "face.json"
    result = run("-o", str(spec_path), "--from-model", str(model), "--mean", "0.5", "--std", "0.5", "--json")
    assert result.exit_code == 0, result.output  # type: ignore[attr-defined]
    document = json.loads(result.stdout)  # type: ignore[attr-defined]
    assert document["ok"] is True and document["command"] == "preprocess init"
    (image,) = load_spec(spec_path).inputs
    assert isinstance(image, ImageInputSpec)
    assert (image.size, image.layout, image.dtype, image.mean) == ((128, 128), "NHWC", "float32", (0.5,) * 3)
    engine = load_engine(model)
    tensor = preprocess_image(image, data.astronaut())
    outputs = engine.run({image.name: tensor})  # the engine takes what the spec makes
    assert all(np.isfinite(v).all() for v in outputs.values())


def test_a_dynamic_image_size_must_be_given_and_then_fits_the_model(tmp_path: Path) -> None:
    model = fetched("yolov8n-nudenet")
    spec_path = tmp_path / "detector.json"
    missing = run("-o", str(spec_path), "--from-model", str(model))
    assert missing.exit_code == 1 and "--size" in missing.output  # type: ignore[attr-defined]
    made = run("-o", str(spec_path), "--from-model", str(model), "--size", "320")
    assert made.exit_code == 0, made.output  # type: ignore[attr-defined]
    (image,) = load_spec(spec_path).inputs
    assert isinstance(image, ImageInputSpec) and (image.size, image.layout) == ((320, 320), "NCHW")
    assert "--mean/--std" in made.output  # type: ignore[attr-defined]  # the note: a model does not record them


def test_inputs_that_are_not_images_are_passed_through_as_tensors(tmp_path: Path) -> None:
    model = fetched("silero-vad")
    spec_path = tmp_path / "vad.json"
    result = run("-o", str(spec_path), "--from-model", str(model))
    assert result.exit_code == 0, result.output  # type: ignore[attr-defined]
    inputs = {i.name: i for i in load_spec(spec_path).inputs}
    assert {i.kind for i in inputs.values()} == {"tensor"}
    assert inputs["sr"].dtype == "int64" and inputs["input"].dtype == "float32"  # type: ignore[union-attr]


def test_the_role_option_names_every_role_a_device_knows_in_help_and_errors(tmp_path: Path) -> None:
    from converters.roles import ROLE_KEYS
    from device_runtime.preprocess import OUTPUT_KINDS
    from edgekit.commands._role_option import ROLE_KEY_NAMES

    assert tuple(ROLE_KEYS) == ROLE_KEY_NAMES, "the help lists the keys parse_role_option reads"
    help_text = " ".join(CliRunner().invoke(cli, ["preprocess", "init", "--help"]).output.split())
    spec_path = tmp_path / "spec.json"
    malformed = run("-o", str(spec_path), "--size", "32", "--role", "logits")
    unknown = run("-o", str(spec_path), "--size", "32", "--role", "logits=classifier")
    for text in (help_text, malformed.output, unknown.output):  # type: ignore[attr-defined]
        assert all(kind in text for kind in OUTPUT_KINDS), text
    assert malformed.exit_code == unknown.exit_code == 1  # type: ignore[attr-defined]
    assert "Traceback" not in malformed.output + unknown.output  # type: ignore[attr-defined]
    assert not spec_path.exists()


def test_a_models_outputs_are_labelled_by_role_where_their_shape_is_clear(tmp_path: Path) -> None:
    detector = fetched("yolov8n-nudenet")  # output0 [1, 22, anchors]: the anchor count follows --size
    made = run("-o", str(tmp_path / "det.json"), "--from-model", str(detector), "--size", "320", "--json")
    assert made.exit_code == 0, made.output  # type: ignore[attr-defined]
    (output,) = load_spec(tmp_path / "det.json").outputs
    assert (output.name, output.kind, output.effective_format) == ("output0", "detection", "yolo")
    notes = json.loads(made.stdout)["notes"]  # type: ignore[attr-defined]
    assert any("'output0' (Nx22x2100): labelled detection" in note for note in notes), notes


def test_outputs_whose_role_is_unclear_are_left_out_and_a_given_role_wins(tmp_path: Path) -> None:
    face = fetched("mediapipe-face-detection-short")  # regressors [1, 896, 16], classificators [1, 896, 1]
    unclear = run("-o", str(tmp_path / "a.json"), "--from-model", str(face))
    assert unclear.exit_code == 0, unclear.output  # type: ignore[attr-defined]
    assert load_spec(tmp_path / "a.json").outputs == ()
    assert "'regressors' (Nx896x16), 'classificators' (Nx896x1): no role is clear" in unclear.output  # type: ignore[attr-defined]
    declared = run(
        "-o", str(tmp_path / "b.json"), "--from-model", str(face), "--role", "regressors=regression"
    )  # fmt: skip
    assert declared.exit_code == 0, declared.output  # type: ignore[attr-defined]
    assert [(o.name, o.kind) for o in load_spec(tmp_path / "b.json").outputs] == [
        ("regressors", "regression")
    ]
    output = declared.output  # type: ignore[attr-defined]
    assert "output 'classificators' (Nx896x1): no role is clear" in output and "(Nx896x16)" not in output


def test_a_role_for_an_output_the_model_lacks_names_the_option_to_fix_and_writes_nothing(
    tmp_path: Path,
) -> None:
    model = fetched("silero-vad")  # outputs: output, stateN
    spec_path = tmp_path / "vad.json"
    refused = run("-o", str(spec_path), "--from-model", str(model), "--role", "logits=classification")
    assert refused.exit_code == 1  # type: ignore[attr-defined]
    assert '"logits" is not allowed' in refused.output and "fix --role OUTPUT=ROLE" in refused.output  # type: ignore[attr-defined]
    assert not spec_path.exists()
    plain = run("-o", str(spec_path), "--from-model", str(model))
    assert "image flags" not in plain.output  # type: ignore[attr-defined]  # none were given
