"""Bring your own model: published TFLite models bundled as they are, installed and run; small golden vectors.

The models are MediaPipe's own (from the mediapipe 0.10.14 wheel in the local zoo cache, never downloaded
here): none records `min_runtime_version`, one uses MediaPipe's `Convolution2DTransposeBias` custom operator.
Photos come from scikit-image. Crafted flatbuffers check the refusals.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from device_runtime.config import RuntimeConfig
from device_runtime.engines import load_engine
from device_runtime.golden import check_golden, selection_indices
from device_runtime.runtime import Runtime
from edgekit.bundle_build import BundleError, BundleRequest, build_bundle
from edgekit.cli import cli
from edgekit.runtime_requirements import RequirementsError, runtime_requirements
from signing.keys import generate_keypair

ZOO = Path("/root/.cache/edgekit/zoo/wheels")
MEDIAPIPE = sorted(ZOO.glob("mediapipe-0.10.14-*.whl"))
MODELS = {  # name: (member, image side, mean, std)
    "face-detect": ("mediapipe/modules/face_detection/face_detection_short_range.tflite", 128, 0.5, 0.5),
    "face-landmark": ("mediapipe/modules/face_landmark/face_landmark.tflite", 192, 0.0, 1.0),
    "selfie": ("mediapipe/modules/selfie_segmentation/selfie_segmentation.tflite", 256, 0.0, 1.0),
}
CREATED = "2026-01-01T00:00:00Z"
needs_mediapipe = pytest.mark.skipif(not MEDIAPIPE, reason="mediapipe wheel not in the local zoo cache")


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return generate_keypair(tmp_path_factory.mktemp("keys"), name="release")


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    skimage_data = pytest.importorskip("skimage.data")
    from PIL import Image

    folder = tmp_path_factory.mktemp("photos")
    for name in ("astronaut", "chelsea", "coffee"):
        Image.fromarray(getattr(skimage_data, name)()).save(folder / f"{name}.jpg", quality=85)
    return folder


@pytest.fixture(scope="module")
def mediapipe(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("mediapipe")
    paths = {}
    with zipfile.ZipFile(MEDIAPIPE[0]) as wheel:
        for name, (member, *_rest) in MODELS.items():
            paths[name] = folder / Path(member).name
            paths[name].write_bytes(wheel.read(member))
    return paths


def _spec(tmp_path: Path, model: Path, side: int, mean: float, std: float) -> Path:
    engine = load_engine(model)
    path = tmp_path / f"{model.stem}.json"
    document = {
        "schema": "edgekit.preprocess/v1",
        "inputs": [
            {
                "name": engine.inputs[0].name,
                "kind": "image",
                "size": [side, side],
                "mean": [mean] * 3,
                "std": [std] * 3,
            }
        ],
    }
    path.write_text(json.dumps(document))
    return path


@needs_mediapipe
@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(MODELS))
def test_published_tflite_models_bundle_install_and_predict_as_they_are(
    name: str, mediapipe: dict[str, Path], photos: Path, keys: tuple[Path, Path], tmp_path: Path
) -> None:
    _member, side, mean, std = MODELS[name]
    model = mediapipe[name]
    spec = _spec(tmp_path, model, side, mean, std)
    out = tmp_path / f"{name}.ekb"
    result = build_bundle(
        BundleRequest(model, out, name, "1.0.0", [keys[0]], preprocess=spec, golden=photos, created=CREATED)
    )
    assert result.manifest.runtime.engine == "litert"
    assert result.requirements_source == "operators"
    assert result.manifest.runtime.min_version in ("1.14.0", "1.15.0")
    assert 1 <= result.golden["samples"] <= 3 and result.golden["bytes"] <= result.golden["budget_bytes"]
    assert result.golden["images"] == result.golden["samples"]
    runtime = Runtime(
        RuntimeConfig(store_dir=tmp_path / "store", trusted_keys=[keys[1]], device_id="d1", hardware_id="hw")
    )
    try:
        installed = runtime.install(out)
        assert installed.self_test and all(v >= 30.0 for v in installed.self_test.values())
        prediction = runtime.predict(photos / "astronaut.jpg")
        assert prediction.model == name
        assert all(np.all(np.isfinite(v)) for v in prediction.outputs.values())
    finally:
        runtime.close()


@needs_mediapipe
@pytest.mark.slow
def test_blazeface_with_its_ssd_spec_predicts_the_astronauts_face_on_the_device(
    mediapipe: dict[str, Path], photos: Path, keys: tuple[Path, Path], tmp_path: Path
) -> None:
    from tests.converters.test_ssd_gate import SPEC

    spec = tmp_path / "face.json"
    spec.write_text(json.dumps(SPEC))
    out = tmp_path / "face.ekb"
    build_bundle(
        BundleRequest(
            mediapipe["face-detect"],
            out,
            "face",
            "1.0.0",
            [keys[0]],
            preprocess=spec,
            golden=photos,
            created=CREATED,
        )
    )
    runtime = Runtime(
        RuntimeConfig(store_dir=tmp_path / "store", trusted_keys=[keys[1]], device_id="d1", hardware_id="hw")
    )
    try:
        runtime.install(out)
        (face,) = runtime.predict(photos / "astronaut.jpg").decoded["regressors"]["detections"]
        assert face["score"] > 0.75 and 36 <= face["box"][0] <= 52 and 12 <= face["box"][1] <= 28, face
        assert runtime.predict(photos / "coffee.jpg").decoded["regressors"]["detections"] == []
    finally:
        runtime.close()


@needs_mediapipe
def test_tflite_requirements_come_from_the_operator_codes(mediapipe: dict[str, Path]) -> None:
    detect = runtime_requirements(mediapipe["face-detect"])
    assert detect.runtime.min_version == "1.14.0"  # DEQUANTIZE v2 is the newest operator version it uses
    assert "DEQUANTIZE v2" in detect.operators and "CONV_2D v1" in detect.operators
    selfie = runtime_requirements(mediapipe["selfie"])
    assert selfie.runtime.min_version == "1.15.0"  # HARD_SWISH v1
    assert any("Convolution2DTransposeBias" in note for note in selfie.notes)
    explicit = runtime_requirements(mediapipe["face-detect"], min_runtime_version="2.13.0")
    assert explicit.runtime.min_version == "2.13.0" and explicit.source == "--min-runtime-version"
    with pytest.raises(RequirementsError, match="below what the model's operators need"):
        runtime_requirements(mediapipe["face-detect"], min_runtime_version="1.5.0")
    with pytest.raises(RequirementsError, match="two or three dot-separated numbers"):
        runtime_requirements(mediapipe["face-detect"], min_runtime_version="latest")


def _flatbuffer(
    tmp_path: Path,
    name: str,
    *,
    builtin: int,
    deprecated: int,
    custom: str | None,
    version: int = 1,
    min_runtime: str | None = None,
) -> Path:
    """A one-operator TFLite model (x -> op -> y) with the given operator code, built with the schema."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as s

    b = flatbuffers.Builder(1024)
    custom_offset = b.CreateString(custom) if custom is not None else None
    s.OperatorCodeStart(b)
    s.OperatorCodeAddDeprecatedBuiltinCode(b, deprecated)
    s.OperatorCodeAddBuiltinCode(b, builtin)
    s.OperatorCodeAddVersion(b, version)
    if custom_offset is not None:
        s.OperatorCodeAddCustomCode(b, custom_offset)
    code = s.OperatorCodeEnd(b)
    tensors = []
    for tensor_name in ("x", "y"):
        label = b.CreateString(tensor_name)
        s.TensorStartShapeVector(b, 2)
        b.PrependInt32(4)
        b.PrependInt32(1)
        shape = b.EndVector()
        s.TensorStart(b)
        s.TensorAddShape(b, shape)
        s.TensorAddType(b, s.TensorType.FLOAT32)
        s.TensorAddName(b, label)
        s.TensorAddBuffer(b, 0)
        tensors.append(s.TensorEnd(b))

    def ints(values: list[int]) -> int:
        b.StartVector(4, len(values), 4)
        for value in reversed(values):
            b.PrependInt32(value)
        return b.EndVector()

    op_inputs, op_outputs = ints([0]), ints([1])
    s.OperatorStart(b)
    s.OperatorAddOpcodeIndex(b, 0)
    s.OperatorAddInputs(b, op_inputs)
    s.OperatorAddOutputs(b, op_outputs)
    operator = s.OperatorEnd(b)
    s.SubGraphStartTensorsVector(b, 2)
    for tensor in reversed(tensors):
        b.PrependUOffsetTRelative(tensor)
    tensor_vector = b.EndVector()
    s.SubGraphStartOperatorsVector(b, 1)
    b.PrependUOffsetTRelative(operator)
    operators = b.EndVector()
    graph_inputs, graph_outputs = ints([0]), ints([1])
    s.SubGraphStart(b)
    s.SubGraphAddTensors(b, tensor_vector)
    s.SubGraphAddInputs(b, graph_inputs)
    s.SubGraphAddOutputs(b, graph_outputs)
    s.SubGraphAddOperators(b, operators)
    graph = s.SubGraphEnd(b)
    s.BufferStart(b)
    empty = s.BufferEnd(b)
    buffers_list = [empty]
    metadata = None
    if min_runtime is not None:
        raw = min_runtime.encode().ljust(16, b"\0")  # the converter's fixed 16-byte field
        data = b.CreateByteVector(raw)
        s.BufferStart(b)
        s.BufferAddData(b, data)
        buffers_list.append(s.BufferEnd(b))
        label = b.CreateString("min_runtime_version")
        s.MetadataStart(b)
        s.MetadataAddName(b, label)
        s.MetadataAddBuffer(b, 1)
        entry = s.MetadataEnd(b)
        s.ModelStartMetadataVector(b, 1)
        b.PrependUOffsetTRelative(entry)
        metadata = b.EndVector()
    s.ModelStartOperatorCodesVector(b, 1)
    b.PrependUOffsetTRelative(code)
    codes = b.EndVector()
    s.ModelStartSubgraphsVector(b, 1)
    b.PrependUOffsetTRelative(graph)
    graphs = b.EndVector()
    s.ModelStartBuffersVector(b, len(buffers_list))
    for item in reversed(buffers_list):
        b.PrependUOffsetTRelative(item)
    buffers = b.EndVector()
    s.ModelStart(b)
    s.ModelAddVersion(b, 3)
    s.ModelAddOperatorCodes(b, codes)
    s.ModelAddSubgraphs(b, graphs)
    s.ModelAddBuffers(b, buffers)
    if metadata is not None:
        s.ModelAddMetadata(b, metadata)
    b.Finish(s.ModelEnd(b), file_identifier=b"TFL3")
    path = tmp_path / name
    path.write_bytes(bytes(b.Output()))
    return path


def test_crafted_tflite_with_a_known_builtin_states_its_requirement(tmp_path: Path) -> None:
    # RELU v1 (code 19), recorded in both fields; GELU v1 (code 150) only in builtin_code, as schema v3a does.
    relu = _flatbuffer(tmp_path, "relu.tflite", builtin=19, deprecated=19, custom=None)
    assert runtime_requirements(relu).runtime.min_version == "1.5.0"
    gelu = _flatbuffer(tmp_path, "gelu.tflite", builtin=150, deprecated=127, custom=None)
    assert runtime_requirements(gelu).runtime.min_version == "2.9.0"
    old_style = _flatbuffer(tmp_path, "old.tflite", builtin=0, deprecated=19, custom=None)  # pre-v3a file
    assert runtime_requirements(old_style).operators == ("RELU v1",)


@pytest.mark.parametrize(
    ("builtin", "deprecated", "custom", "fragment", "names_option"),
    [
        pytest.param(4000, 127, None, "operator code 4000", False, id="unknown-op-code"),
        pytest.param(32, 32, "MyFancyOp", "custom operator 'MyFancyOp'", False, id="custom-op"),
    ],
)
def test_crafted_tflite_a_device_cannot_check_is_refused_with_a_clear_message(
    builtin: int,
    deprecated: int,
    custom: str | None,
    fragment: str,
    names_option: bool,
    keys: tuple[Path, Path],
    tmp_path: Path,
) -> None:
    model = _flatbuffer(tmp_path, "crafted.tflite", builtin=builtin, deprecated=deprecated, custom=custom)
    out = tmp_path / "crafted.ekb"
    result = CliRunner().invoke(
        cli,
        [
            "bundle",
            str(model),
            "-o",
            str(out),
            "--name",
            "crafted",
            "--version",
            "1.0.0",
            "--key",
            str(keys[0]),
        ],
    )
    assert result.exit_code == 1, result.output
    assert fragment in result.output and "Traceback" not in result.output
    assert ("--min-runtime-version" in result.output) == names_option
    assert "edgekit convert" not in result.output  # the old dead-end hint
    assert not out.exists()


def test_the_models_own_min_runtime_version_can_raise_the_requirement_but_not_lower_it(
    tmp_path: Path,
) -> None:
    higher = _flatbuffer(tmp_path, "h.tflite", builtin=150, deprecated=127, custom=None, min_runtime="2.14.0")
    stated = runtime_requirements(higher)
    assert (stated.runtime.min_version, stated.source) == ("2.14.0", "metadata")
    lower = _flatbuffer(tmp_path, "l.tflite", builtin=150, deprecated=127, custom=None, min_runtime="1.5.0")
    derived = runtime_requirements(lower)
    assert (derived.runtime.min_version, derived.source) == ("2.9.0", "operators")  # GELU v1
    assert any("below what its operators need" in note for note in derived.notes)
    newer_op = _flatbuffer(
        tmp_path, "n.tflite", builtin=19, deprecated=19, custom=None, version=9, min_runtime="2.20.0"
    )
    assert runtime_requirements(newer_op).runtime.min_version == "2.20.0"  # the metadata covers RELU v9


def test_an_op_version_newer_than_the_table_needs_an_explicit_runtime(tmp_path: Path) -> None:
    # RELU v9: no TensorFlow release in the table defines it.
    newer = _flatbuffer(tmp_path, "newer.tflite", builtin=19, deprecated=19, custom=None, version=9)
    with pytest.raises(RequirementsError, match="--min-runtime-version"):
        runtime_requirements(newer)
    assert runtime_requirements(newer, min_runtime_version="2.20.0").runtime.min_version == "2.20.0"


def test_golden_vectors_stay_within_the_budget_and_are_checked_strictly(
    digits_onnx: Path, keys: tuple[Path, Path], data_files: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "digits.ekb"
    result = build_bundle(
        BundleRequest(
            digits_onnx,
            out,
            "digits",
            "1.0.0",
            [keys[0]],
            golden=data_files["eval"],
            created=CREATED,
            golden_samples=5,
            golden_budget=2048 + 4096,
        )
    )
    figures = result.golden
    assert 1 <= figures["samples"] <= 5 and figures["samples_offered"] == 5
    assert figures["outputs"]["logits"]["dtype"] in ("float16", "float32")
    from signing.keys import load_public_key
    from signing.verify import verify_ekb

    slot = tmp_path / "slot"
    verify_ekb(out, [load_public_key(keys[1])], destination=slot)
    engine = load_engine(slot / "model.onnx")
    assert check_golden(slot, engine.run).passed
    slightly_off = check_golden(slot, lambda feeds: {k: v * 0.9 for k, v in engine.run(feeds).items()})
    assert not slightly_off.passed  # 20 dB: a real change of the model is caught
    shown = CliRunner().invoke(cli, ["inspect", str(out), "--json"])
    golden = json.loads(shown.output)["golden"]
    assert golden["samples"] == figures["samples"] and golden["budget_bytes"] == 2048 + 4096
    assert golden["outputs"]["logits"]["dtype"] == figures["outputs"]["logits"]["dtype"]
    text = CliRunner().invoke(cli, ["inspect", str(out)])
    assert text.exit_code == 0 and f"golden: {figures['samples']} of 5 samples" in text.output


def test_one_sample_is_always_kept_and_large_outputs_become_a_selection(
    digits_onnx: Path, keys: tuple[Path, Path], tmp_path: Path
) -> None:
    out = tmp_path / "tiny-budget.ekb"
    result = build_bundle(
        BundleRequest(digits_onnx, out, "digits", "1.0.0", [keys[0]], created=CREATED, golden_budget=1)
    )
    assert result.golden["samples"] == 1 and result.golden["over_budget"]
    assert any("budget" in note for note in result.notes)


def test_selection_positions_are_distinct_and_spread() -> None:
    positions = selection_indices(960 * 960, 4096)
    assert len(set(positions.tolist())) == 4096
    rows, columns = positions // 960, positions % 960
    assert len(set(rows.tolist())) > 480 and len(set(columns.tolist())) > 480  # not aliased onto a few
    assert selection_indices(10, 50).tolist() == list(range(10))


def test_bundle_json_reports_the_golden_figures(
    digits_onnx: Path, keys: tuple[Path, Path], tmp_path: Path
) -> None:
    out = tmp_path / "d.ekb"
    result = CliRunner().invoke(
        cli,
        [
            "bundle",
            str(digits_onnx),
            "-o",
            str(out),
            "--name",
            "digits",
            "--version",
            "1.0.0",
            "--key",
            str(keys[0]),
            "--golden-samples",
            "3",
            "--golden-budget",
            "64KiB",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    document = json.loads(result.output)
    assert document["golden"]["budget_bytes"] == 65536 and document["golden"]["samples"] == 3
    assert document["runtime_source"] == "operators"
    bad = CliRunner().invoke(
        cli,
        [
            "bundle",
            str(digits_onnx),
            "-o",
            str(out),
            "--name",
            "digits",
            "--version",
            "1.0.0",
            "--key",
            str(keys[0]),
            "--golden-budget",
            "lots",
        ],
    )
    assert bad.exit_code == 2 and "--golden-budget" in bad.output


def test_bundle_error_is_raised_for_bad_golden_bounds(
    digits_onnx: Path, keys: tuple[Path, Path], tmp_path: Path
) -> None:
    with pytest.raises(BundleError, match="--golden-samples"):
        build_bundle(BundleRequest(digits_onnx, tmp_path / "x.ekb", "d", "1", [keys[0]], golden_samples=0))


@pytest.mark.skipif(
    not sorted(ZOO.glob("rapidocr_onnxruntime-1.4.4-*.whl")), reason="rapidocr wheel not cached"
)
def test_a_model_with_dynamic_inputs_asks_for_golden_data_by_the_bundle_option(
    keys: tuple[Path, Path], tmp_path: Path
) -> None:
    (wheel,) = sorted(ZOO.glob("rapidocr_onnxruntime-1.4.4-*.whl"))
    model = tmp_path / "det.onnx"
    with zipfile.ZipFile(wheel) as archive:
        model.write_bytes(archive.read("rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx"))
    result = CliRunner().invoke(
        cli,
        [
            "bundle",
            str(model),
            "-o",
            str(tmp_path / "d.ekb"),
            "--name",
            "d",
            "--version",
            "1",
            "--key",
            str(keys[0]),
        ],
    )
    assert result.exit_code == 1 and "--golden DATA" in result.output and "--input-shape" not in result.output


def test_onnx_model_local_functions_are_not_custom_operators(tmp_path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper

    twice = helper.make_function(
        "local.fn",
        "Twice",
        ["a"],
        ["b"],
        [helper.make_node("Add", ["a", "a"], ["b"])],
        [helper.make_opsetid("", 17)],
    )
    graph = helper.make_graph(
        [helper.make_node("Twice", ["x"], ["y"], domain="local.fn")],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("local.fn", 1)],
        functions=[twice],
    )
    model.ir_version = 9
    path = tmp_path / "functions.onnx"
    onnx.save(model, str(path))
    stated = runtime_requirements(path)
    assert (stated.runtime.min_version, stated.runtime.opset) == ("1.14", 17)
    with pytest.raises(RequirementsError, match="newer than edgekit's onnxruntime table"):
        model.opset_import[0].version = 99
        onnx.save(model, str(path))
        runtime_requirements(path)
    assert runtime_requirements(path, min_runtime_version="1.40").runtime.min_version == "1.40"
