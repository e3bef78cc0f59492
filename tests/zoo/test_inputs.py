"""Each zoo model, run in float through the device engines on the zoo's inputs, gives sane answers.

These checks are what proves the inputs realistic: a detector that finds the astronaut's face, a
recognizer that reads the rendered strings back, a VAD that hears the synthetic speech, magika that names
the standard library's files. Inputs are the quick-sized sets; fetched models are reused from the cache.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from device_runtime.engines import Engine, load_engine
from device_runtime.errors import EngineError
from device_runtime.preprocess import check_against_model, parse_spec, postprocess, preprocess_image
from tests.zoo.conftest import fetched
from zoo import _media
from zoo.inputs import ModelInputs, inputs_for, ocr_charset

SPEC_KEYS = ("yolov8n-nudenet", "ppocrv4-det", "mediapipe-face-detection-short", "mediapipe-face-landmark",
             "mediapipe-selfie-segmentation", "fer-emotion")


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-np.clip(x, -60, 60)))


@pytest.fixture(scope="session")
def engine() -> Callable[[str], Engine]:
    engines: dict[str, Engine] = {}

    def get(key: str) -> Engine:
        if key not in engines:
            try:
                engines[key] = load_engine(fetched(key))
            except EngineError as e:  # e.g. no LiteRT wheel for this platform: the model cannot run here
                if "not installed" not in str(e):
                    raise
                pytest.skip(str(e))
        return engines[key]

    return get


@pytest.fixture(scope="session")
def data() -> Callable[[str], ModelInputs]:
    cache: dict[str, ModelInputs] = {}

    def get(key: str) -> ModelInputs:
        if key not in cache:
            cache[key] = inputs_for(key, quick=True)
        return cache[key]

    return get


def _one_by_one(engine: Engine, name: str, batch: np.ndarray) -> list[dict[str, np.ndarray]]:
    return [engine.run({name: x[None]}) for x in batch]


def test_yolov8_detector_finds_the_people_in_the_photos(engine, data) -> None:
    inputs = data("yolov8n-nudenet")
    scores = engine("yolov8n-nudenet").run(inputs.evaluation)["output0"][:, 4:, :].max(axis=(1, 2))
    people = np.array(inputs.truth["has_person"])
    assert (scores[people] > 0.3).all(), scores
    assert scores[people].min() > np.median(scores[~people])


def test_text_detector_marks_the_rendered_lines_and_not_the_paper(engine, data) -> None:
    inputs = data("ppocrv4-det")
    maps = engine("ppocrv4-det").run({"x": inputs.evaluation["x"][:2]})["sigmoid_0.tmp_0"][:, 0]
    for probability, boxes in zip(maps, inputs.truth["boxes"], strict=False):
        text = np.zeros(probability.shape, dtype=bool)
        for top, bottom, left, right in boxes:
            text[top:bottom, left:right] = True
            assert probability[top:bottom, left:right].max() > 0.9, "every line is detected"
        assert probability[text].mean() > 0.3
        assert probability[~text].mean() < 0.02


def _ctc_greedy(probabilities: np.ndarray, charset: list[str]) -> str:
    best = probabilities.argmax(-1)
    keep = (best != 0) & np.concatenate([[True], best[1:] != best[:-1]])
    return "".join(charset[i] for i in best[keep])


def test_ctc_recognizer_reads_the_rendered_strings_back(engine, data) -> None:
    inputs = data("ppocrv4-rec")
    charset = ocr_charset(fetched("ppocrv4-rec"))
    assert len(charset) == 6625 and charset[0] == "blank" and charset[-1] == " "
    out = engine("ppocrv4-rec").run(inputs.evaluation)["softmax_11.tmp_0"]
    read = [_ctc_greedy(p, charset) for p in out]
    exact = np.mean([r == t for r, t in zip(read, inputs.truth["text"], strict=True)])
    assert exact >= 0.8, list(zip(read, inputs.truth["text"], strict=True))


def test_orientation_classifier_spots_upside_down_lines(engine, data) -> None:
    inputs = data("ppocr-cls")
    out = engine("ppocr-cls").run(inputs.evaluation)["save_infer_model/scale_0.tmp_1"]
    assert np.allclose(out.sum(axis=1), 1, atol=1e-3)
    assert (out.argmax(axis=1) == np.array(inputs.truth["labels"])).mean() >= 0.9


def test_silero_hears_the_voiced_segments_and_not_the_silences(engine, data) -> None:
    inputs = data("silero-vad")
    speech = engine("silero-vad").run(inputs.evaluation)["output"][:, 0]
    voiced = inputs.truth["voiced_fraction"]
    assert speech[voiced > 0.9].mean() > 0.7
    assert speech[voiced == 0].mean() < 0.3


def test_silero_batched_states_equal_streaming_the_audio(engine, data) -> None:
    inputs = data("silero-vad").evaluation
    vad = engine("silero-vad")
    state = np.zeros((2, 1, 128), np.float32)
    streamed = []
    for window in inputs["input"][:40]:
        out = vad.run({"input": window[None], "state": state, "sr": inputs["sr"]})
        streamed.append(out["output"][0, 0])
        state = out["stateN"]
    batched = vad.run({"input": inputs["input"][:40], "state": inputs["state"][:, :40], "sr": inputs["sr"]})
    np.testing.assert_allclose(batched["output"][:, 0], streamed, atol=1e-5)


def test_magika_names_most_standard_library_files(engine, data) -> None:
    inputs = data("magika-standard-v3-3")
    out = engine("magika-standard-v3-3").run(inputs.evaluation)["target_label"]
    space = inputs.truth["label_space"]
    assert out.shape[1] == len(space) == 214
    named = [space[i] for i in out.argmax(axis=1)]
    assert np.mean([n == t for n, t in zip(named, inputs.truth["labels"], strict=True)]) >= 0.75


def test_face_detector_fires_on_the_astronaut_and_not_on_objects(engine, data) -> None:
    inputs = data("mediapipe-face-detection-short")
    runs = _one_by_one(engine("mediapipe-face-detection-short"), "input", inputs.evaluation["input"])
    scores = np.array([_sigmoid(r["classificators"]).max() for r in runs])
    faces = np.array(inputs.truth["has_face"])
    assert (scores[faces] > 0.75).all(), scores
    assert (scores[~faces] < 0.5).mean() >= 0.75, scores


def test_the_zoo_spec_decodes_one_face_per_face_crop_and_none_on_the_objects(engine, data) -> None:
    inputs = data("mediapipe-face-detection-short")
    (regressors, classificators) = parse_spec(inputs.spec).outputs
    assert (regressors.format, regressors.scores, classificators.kind) == ("ssd", "classificators", "tensor")
    runs = _one_by_one(engine("mediapipe-face-detection-short"), "input", inputs.evaluation["input"])
    found = []
    for r in runs:
        (prediction,) = postprocess(regressors, r["regressors"], labels=["face"], scores=r["classificators"])
        assert prediction.decoded is not None
        found.append(prediction.decoded["detections"])
    faces = np.array(inputs.truth["has_face"])
    for detections in (d for d, face in zip(found, faces, strict=True) if face):
        (face,) = detections  # one face, centred in the crop and at least a quarter of its side
        x1, y1, x2, y2 = face["box"]
        assert face["label"] == "face" and 32 <= (x1 + x2) / 2 <= 96 and 32 <= (y1 + y2) / 2 <= 96, face
        assert min(x2 - x1, y2 - y1) >= 32, face
    assert not any(d for d, face in zip(found, faces, strict=True) if not face), found


def test_face_landmarks_land_on_the_face_crop(engine, data) -> None:
    inputs = data("mediapipe-face-landmark")
    for r in _one_by_one(engine("mediapipe-face-landmark"), "input_1", inputs.evaluation["input_1"]):
        assert _sigmoid(r["conv2d_31"]).item() > 0.9
        points = r["conv2d_21"].reshape(468, 3)[:, :2]
        assert (points > 0).all() and (points < 192).all()
        assert (points.max(axis=0) - points.min(axis=0)).min() > 48, "the landmarks span the face"


def test_selfie_segmentation_masks_people_only(engine, data) -> None:
    inputs = data("mediapipe-selfie-segmentation")
    runs = _one_by_one(engine("mediapipe-selfie-segmentation"), "input_1", inputs.evaluation["input_1"])
    names = inputs.truth["names"]
    share = {n: float((r["activation_10"] > 0.5).mean()) for n, r in zip(names, runs, strict=True)}
    assert share["astronaut"] > 0.2 and share["camera"] > 0.1
    assert max(share["rocket"], share["moon"], share["brick"]) < 0.05, share


@pytest.mark.parametrize("key", SPEC_KEYS)
def test_image_spec_fits_the_model_and_reproduces_the_inputs(key: str, data) -> None:
    inputs = data(key)
    spec = parse_spec(inputs.spec)
    session = load_engine(fetched(key)) if key != "fer-emotion" else None
    if session is not None:
        check_against_model(spec, {i.name: (i.shape, i.dtype) for i in session.inputs})
    image_spec = spec.inputs[0]
    if key in ("mediapipe-selfie-segmentation", "fer-emotion"):  # a plain stretch: the spec is exact
        tight_face = _media.face_crops(1, scale=(0.8, 1.05))[0]
        photo = _media.photo("astronaut") if key != "fer-emotion" else tight_face
        ours = inputs_for(key, quick=True).evaluation[image_spec.name][0]
        device = preprocess_image(image_spec, photo)[0]
        assert np.abs(device - ours).mean() < 0.02


@pytest.mark.slow
def test_fer_emotion_sees_the_smile_and_its_published_tflite_agrees(data, tmp_path: Path) -> None:
    import tensorflow as tf

    from zoo.fetch import fetch_side_file

    inputs = data("fer-emotion").evaluation["input_1"]
    keras_model = tf.keras.models.load_model(fetched("fer-emotion"), compile=False)
    reference = keras_model.predict(inputs, verbose=0)
    assert np.allclose(reference.sum(axis=1), 1, atol=1e-4)
    truth = data("fer-emotion").truth
    happy = truth["labels"].index(truth["expected"])
    assert (reference.argmax(axis=1) == happy).mean() >= 0.75, "the astronaut smiles"
    tflite = load_engine(fetch_side_file("fer-emotion", "emotion_model_quantized.tflite"))
    published = np.concatenate([tflite.run({"x": x[None]})["Identity"] for x in inputs])
    assert (published.argmax(axis=1) == reference.argmax(axis=1)).mean() >= 0.75


@pytest.mark.slow
def test_voice_encoder_separates_synthetic_speakers(data, tmp_path: Path) -> None:
    from zoo.rebuild import voice_encoder_onnx

    fetched("resemblyzer-voice-encoder")
    inputs = data("resemblyzer-voice-encoder")
    encoder = load_engine(voice_encoder_onnx())  # exported once, then reused from the zoo cache
    embeddings = encoder.run(inputs.evaluation)["embedding"]
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1, atol=1e-4)
    speakers = np.array(inputs.truth["speaker"])
    similarity = embeddings @ embeddings.T
    same = speakers[:, None] == speakers[None]
    off_diagonal = ~np.eye(len(speakers), dtype=bool)
    assert similarity[same & off_diagonal].mean() > similarity[~same].mean() + 0.05


def test_inputs_are_deterministic() -> None:
    for key in ("ppocr-cls", "mediapipe-face-detection-short", "magika-standard-v3-3"):
        first, second = inputs_for(key, quick=True), inputs_for(key, quick=True)
        for name, array in first.calibration.items():
            np.testing.assert_array_equal(array, second.calibration[name])
