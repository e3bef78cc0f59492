"""Realistic, deterministic inputs for every zoo model, as the model's own feeds.

``inputs_for(key)`` returns a :class:`ModelInputs`: calibration and evaluation data as
``{input name: array}`` (samples on axis 0, except where the model itself batches elsewhere: silero's
``state`` is ``[2, N, 128]`` and its ``sr`` a 0-d scalar), what the evaluation data contains (``truth``:
rendered strings, face/no-face, speech fraction, file types) and an ``edgekit.preprocess/v1`` spec where
an image spec describes the model's input. The preprocessing follows each package's own Python code:

- nudenet (``nudenet.py: _read_image``): pad bottom/right to a square, resize to 320, RGB, /255, NCHW.
  The v1 spec's ``letterbox`` centres the image instead; a translation-equivariant detector does not mind.
- rapidocr (``config.yaml`` and ``ch_ppocr_*``): RGB, ``(x/255 - 0.5) / 0.5``, NCHW; the recognizer and
  the classifier resize a line to height 48 keeping its aspect ratio and pad the right with zeros
  (after normalisation) to width 320 / 192. The v1 spec cannot say "pad right", so they get none.
- silero_vad (``utils_vad.py: OnnxWrapper``): 512 new samples after the last 64 of the previous window
  (576 in all), state ``[2, B, 128]`` carried from call to call, ``sr`` = 16000.
- magika (``magika.py: _extract_features_from_seekable``, read, not imported): at most ``block_size``
  bytes from each end, ``lstrip``/``rstrip``-ed, the first ``beg_size`` and last ``end_size`` bytes,
  padded with ``padding_token``.
- MediaPipe: face detection ``x/127.5 - 1`` at 128x128; face landmark and selfie segmentation ``x/255``.
- fer (``fer.py``): gray face 64x64, ``(x/255 - 0.5) * 2``.
- Resemblyzer (``audio.py``, ``hparams.py``): 40-band mel power spectrogram, 25 ms window, 10 ms hop,
  160 frames (1.6 s) per partial.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from zoo import _media
from zoo.fetch import fetch, fetch_side_file

__all__ = ["BLAZEFACE_OUTPUT", "ModelInputs", "inputs_for", "magika_features", "magika_labels", "ocr_charset",
           "ocr_lines"]

SCHEMA = "edgekit.preprocess/v1"


@dataclass(frozen=True)
class ModelInputs:
    """Calibration and evaluation feeds for one model, plus what the evaluation data holds."""

    key: str
    calibration: dict[str, np.ndarray]
    evaluation: dict[str, np.ndarray]
    spec: dict[str, Any] | None = None
    truth: dict[str, Any] = field(default_factory=dict)


def _image_spec(name: str, size: tuple[int, int], output: tuple[str, str], *, layout: str = "NHWC",
                color: str = "RGB", resize: str = "stretch", rescale: float = 1 / 255,
                mean: float = 0.0, std: float = 1.0) -> dict[str, Any]:
    channels = 1 if color == "GRAY" else 3
    return {
        "schema": SCHEMA,
        "inputs": [{"name": name, "kind": "image", "size": list(size), "dtype": "float32", "layout": layout,
                    "color": color, "resize": resize, "rescale": rescale, "mean": [mean] * channels,
                    "std": [std] * channels}],
        "outputs": [{"name": output[0], "kind": output[1]}],
    }


def _stack(images: list[np.ndarray], scale: float, offset: float, layout: str = "NHWC") -> np.ndarray:
    batch = np.stack(images).astype(np.float32) * scale + offset
    return np.ascontiguousarray(batch.transpose(0, 3, 1, 2) if layout == "NCHW" else batch)


# ---- photos ----------------------------------------------------------------------------------------

def _nudenet_image(image: np.ndarray, size: int = 320) -> np.ndarray:
    side = max(image.shape[:2])
    square = np.zeros((side, side, 3), dtype=np.uint8)
    square[: image.shape[0], : image.shape[1]] = image
    return _media.resize(square, size, size)


def _nudenet(quick: bool) -> ModelInputs:
    calibration = [_nudenet_image(p) for p in _media.photo_variants(16 if quick else 64, seed=1)]
    no_people = tuple(n for n in _media.PHOTO_NAMES if n not in ("astronaut", "camera"))
    eval_photos = [_media.photo("astronaut"), *_media.face_crops(3, seed=3),
                   *_media.photo_variants(4 if quick else 12, seed=2, names=no_people)]
    return ModelInputs(
        "yolov8n-nudenet",
        {"images": _stack(calibration, 1 / 255, 0, "NCHW")},
        {"images": _stack([_nudenet_image(p) for p in eval_photos], 1 / 255, 0, "NCHW")},
        _image_spec("images", (320, 320), ("output0", "detection"), layout="NCHW", resize="letterbox"),
        {"has_person": [True, True, True, True] + [False] * (len(eval_photos) - 4)},
    )


# BlazeFace's output as MediaPipe's face_detection_short_range graph reads it (see docs/preprocessing-spec.md,
# "SSD anchors"): SsdAnchorsCalculator's 896 fixed-size anchors (strides 8, 16, 16, 16, 2 per layer), box
# coding scaled by the 128-pixel input, sigmoid scores from the classificators logits, min score 0.5 and
# NMS at overlap 0.3.
BLAZEFACE_OUTPUT: dict[str, Any] = {
    "name": "regressors", "kind": "detection", "format": "ssd", "scores": "classificators",
    "anchors": {"size": [128, 128], "strides": [8, 16, 16, 16], "per_layer": 2, "offset": 0.5},
    "score_threshold": 0.5, "iou_threshold": 0.3,
}


def _face_detection(quick: bool) -> ModelInputs:
    n = 16 if quick else 64
    calibration = [_media.resize(p, 128, 128) for p in _media.photo_variants(n // 2, seed=4)]
    calibration += [_media.resize(c, 128, 128) for c in _media.face_crops(n - n // 2, seed=5)]
    faces = [_media.resize(c, 128, 128) for c in _media.face_crops(8, seed=6)]
    others = [_media.resize(_media.photo(name), 128, 128)
              for name in ("coffee", "rocket", "coins", "moon", "brick", "grass", "hubble_deep_field",
                           "text")]
    return ModelInputs(
        "mediapipe-face-detection-short",
        {"input": _stack(calibration, 1 / 127.5, -1)},
        {"input": _stack(faces + others, 1 / 127.5, -1)},
        {**_image_spec("input", (128, 128), ("regressors", "detection"), rescale=1 / 127.5, mean=1.0),
         "outputs": [BLAZEFACE_OUTPUT, {"name": "classificators", "kind": "tensor"}]},
        {"has_face": [True] * len(faces) + [False] * len(others)},
    )


def _face_landmark(quick: bool) -> ModelInputs:
    crops = _media.face_crops(16 if quick else 64, seed=7)
    evaluation = _media.face_crops(8, seed=8)
    return ModelInputs(
        "mediapipe-face-landmark",
        {"input_1": _stack([_media.resize(c, 192, 192) for c in crops], 1 / 255, 0)},
        {"input_1": _stack([_media.resize(c, 192, 192) for c in evaluation], 1 / 255, 0)},
        _image_spec("input_1", (192, 192), ("conv2d_21", "regression")),
        {"face": [True] * len(evaluation)},
    )


def _selfie(quick: bool) -> ModelInputs:
    calibration = [_media.resize(p, 256, 256) for p in _media.photo_variants(16 if quick else 64, seed=9)]
    names = ("astronaut", "camera", "coffee", "rocket", "moon", "coins", "brick", "hubble_deep_field")
    return ModelInputs(
        "mediapipe-selfie-segmentation",
        {"input_1": _stack(calibration, 1 / 255, 0)},
        {"input_1": _stack([_media.resize(_media.photo(n), 256, 256) for n in names], 1 / 255, 0)},
        _image_spec("input_1", (256, 256), ("activation_10", "regression")),
        {"has_person": [n in ("astronaut", "camera") for n in names], "names": list(names)},
    )


def _gray(image: np.ndarray) -> np.ndarray:
    return (image @ np.array([0.299, 0.587, 0.114])).round().clip(0, 255).astype(np.uint8)[:, :, None]


def _fer(quick: bool) -> ModelInputs:
    # fer crops the Haar cascade's face box with small offsets: tight crops, not the landmark model's margin
    crops = _media.face_crops(16 if quick else 64, seed=10, scale=(0.8, 1.05))
    evaluation = _media.face_crops(8, seed=11, scale=(0.8, 1.05))
    return ModelInputs(
        "fer-emotion",
        {"input_1": _stack([_gray(_media.resize(c, 64, 64)) for c in crops], 2 / 255, -1)},
        {"input_1": _stack([_gray(_media.resize(c, 64, 64)) for c in evaluation], 2 / 255, -1)},
        _image_spec("input_1", (64, 64), ("predictions", "classification"), color="GRAY", rescale=2 / 255,
                    mean=1.0),
        {"labels": ["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"],
         "expected": "happy"},  # Eileen Collins smiles in the photo
    )


# ---- text ------------------------------------------------------------------------------------------

_WORDS = (
    "invoice", "total", "amount", "date", "page", "order", "number", "street", "station", "model", "device",
    "update", "release", "version", "north", "river", "garden", "coffee", "rocket", "market", "open",
    "closed", "monday", "friday", "account", "balance", "report", "signal", "window", "camera", "phone",
    "Berlin", "Paris", "Tokyo", "London", "Main", "Exit", "Platform", "Room", "Level", "Battery",
)


def ocr_lines(count: int, *, seed: int = 0) -> list[str]:
    """Short text lines: words, numbers, dates, prices and codes (Latin script and digits).

    DejaVu, the only fonts bundled with matplotlib, has no CJK glyphs, so no Chinese is rendered."""
    rng = np.random.default_rng(seed)
    lines = []
    for _ in range(count):
        kind = int(rng.integers(5))
        if kind == 0:
            text = " ".join(str(rng.choice(_WORDS)) for _ in range(int(rng.integers(1, 4))))
        elif kind == 1:
            text = str(int(rng.integers(10, 10**int(rng.integers(3, 9)))))
        elif kind == 2:
            year, month, day = (int(v) for v in rng.integers([2000, 1, 1], [2030, 13, 29]))
            text = f"{year}-{month:02d}-{day:02d}"
        elif kind == 3:
            text = f"{rng.choice(_WORDS)} {rng.integers(1, 999)}.{rng.integers(0, 100):02d}"
        else:
            letters = "".join(chr(65 + int(v)) for v in rng.integers(0, 26, int(rng.integers(2, 4))))
            text = f"{letters}{int(rng.integers(100, 9999))}"
        lines.append(text)
    return lines


def _ocr_line_tensor(image: np.ndarray, width: int) -> np.ndarray:
    """rapidocr's resize_norm_img: height 48 keeping the aspect ratio, normalised, right-padded with 0."""
    h, w = image.shape[:2]
    new_w = min(width, math.ceil(48 * w / h))
    resized = _media.resize(image, 48, new_w).astype(np.float32) / 255
    out = np.zeros((3, 48, width), dtype=np.float32)
    out[:, :, :new_w] = ((resized - 0.5) / 0.5).transpose(2, 0, 1)
    return out


def _rendered_lines(texts: list[str], seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [_media.render_line(t, height=int(rng.integers(36, 64)),
                               font_name=_media.FONT_FILES[int(rng.integers(len(_media.FONT_FILES)))],
                               ink=int(rng.integers(0, 70)), paper=int(rng.integers(200, 256)))
            for t in texts]


def _ocr_rec(quick: bool) -> ModelInputs:
    cal_text = ocr_lines(64 if quick else 256, seed=12)
    eval_text = ocr_lines(16 if quick else 64, seed=13)
    return ModelInputs(
        "ppocrv4-rec",
        {"x": np.stack([_ocr_line_tensor(i, 320) for i in _rendered_lines(cal_text, 12)])},
        {"x": np.stack([_ocr_line_tensor(i, 320) for i in _rendered_lines(eval_text, 13)])},
        None,  # the v1 spec cannot express rapidocr's keep-ratio resize and right padding
        {"text": eval_text},
    )


def _ocr_cls(quick: bool) -> ModelInputs:
    def batch(texts: list[str], seed: int) -> tuple[np.ndarray, list[int]]:
        images = _rendered_lines(texts, seed)
        flipped = [k % 2 for k in range(len(images))]  # every other line upside down
        tensors = [_ocr_line_tensor(image[::-1, ::-1] if upside_down else image, 192)
                   for image, upside_down in zip(images, flipped, strict=True)]
        return np.stack(tensors), flipped

    calibration, _ = batch(ocr_lines(64 if quick else 256, seed=14), 14)
    evaluation, labels = batch(ocr_lines(16 if quick else 64, seed=15), 15)
    return ModelInputs("ppocr-cls", {"x": calibration}, {"x": evaluation}, None,
                       {"labels": labels, "label_names": ["0", "180"]})


def _ocr_det(quick: bool) -> ModelInputs:
    def pages(count: int, seed: int) -> tuple[np.ndarray, list[list[tuple[int, int, int, int]]]]:
        images, boxes = [], []
        for k in range(count):
            image, page_boxes = _media.render_page(ocr_lines(12, seed=seed * 100 + k), seed=seed * 100 + k)
            images.append(image)
            boxes.append(page_boxes)
        return _stack(images, 2 / 255, -1, "NCHW"), boxes

    calibration, _ = pages(8 if quick else 32, 16)
    evaluation, boxes = pages(4 if quick else 8, 17)
    spec = _image_spec("x", (640, 640), ("sigmoid_0.tmp_0", "regression"), layout="NCHW",
                       rescale=2 / 255, mean=1.0)
    return ModelInputs("ppocrv4-det", {"x": calibration}, {"x": evaluation}, spec, {"boxes": boxes})


def ocr_charset(model: Path | None = None) -> list[str]:
    """The recognizer's CTC alphabet: index 0 is the blank, then metadata_props['character'], then ' '."""
    import onnxruntime

    path = str(model or fetch("ppocrv4-rec"))
    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    characters = session.get_modelmeta().custom_metadata_map["character"].splitlines()
    return ["blank", *characters, " "]


# ---- audio -----------------------------------------------------------------------------------------

def _silero_windows(wave: np.ndarray) -> np.ndarray:
    """[N, 576]: each 512-sample window after the previous window's last 64 samples (zeros at start)."""
    chunks = wave[: len(wave) // 512 * 512].reshape(-1, 512)
    context = np.concatenate([np.zeros((1, 64), np.float32), chunks[:-1, -64:]])
    return np.ascontiguousarray(np.concatenate([context, chunks], axis=1), dtype=np.float32)


def _silero_states(windows: np.ndarray, model: Path) -> np.ndarray:
    """The state each window sees when the audio is streamed through the float model: [2, N, 128]."""
    from device_runtime.engines import load_engine

    engine = load_engine(model)
    state = np.zeros((2, 1, 128), np.float32)
    states = []
    for window in windows:
        states.append(state[:, 0])
        state = engine.run({"input": window[None], "state": state, "sr": np.array(16000, np.int64)})["stateN"]
    return np.stack(states, axis=1).astype(np.float32)


def _silero(quick: bool) -> ModelInputs:
    model = fetch("silero-vad")

    def feeds(seconds: float, seed: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
        audio = _media.speech(seconds, seed=seed)
        windows = _silero_windows(audio.wave)
        voiced = audio.voiced[: len(windows) * 512].reshape(-1, 512).mean(axis=1)
        return {"input": windows, "state": _silero_states(windows, model),
                "sr": np.array(16000, np.int64)}, voiced

    calibration, _ = feeds(6.0 if quick else 16.0, 18)
    evaluation, voiced = feeds(6.0 if quick else 12.0, 19)
    return ModelInputs("silero-vad", calibration, evaluation, None, {"voiced_fraction": voiced})


def _mel_filters(n_fft: int, n_mels: int) -> np.ndarray:
    """Slaney-style triangular mel filters (librosa's default), [n_mels, n_fft // 2 + 1]."""
    def hz_to_mel(f: np.ndarray) -> np.ndarray:
        return np.where(f < 1000, f * 3 / 200, 15 + 27 * np.log(np.maximum(f, 1e-9) / 1000) / np.log(6.4))

    def mel_to_hz(m: np.ndarray) -> np.ndarray:
        return np.where(m < 15, m * 200 / 3, 1000 * np.exp((m - 15) * np.log(6.4) / 27))

    bins = np.linspace(0, _media.SAMPLE_RATE / 2, n_fft // 2 + 1)
    edges = mel_to_hz(np.linspace(hz_to_mel(np.array(0.0)), hz_to_mel(np.array(_media.SAMPLE_RATE / 2)),
                                  n_mels + 2))
    lower = (bins[None] - edges[:-2, None]) / (edges[1:-1, None] - edges[:-2, None])
    upper = (edges[2:, None] - bins[None]) / (edges[2:, None] - edges[1:-1, None])
    weights = np.maximum(0, np.minimum(lower, upper))
    return weights * (2 / (edges[2:] - edges[:-2]))[:, None]


def mel_frames(wave: np.ndarray, n_mels: int = 40) -> np.ndarray:
    """[frames, n_mels] mel power spectrogram: 400-sample Hann window, 160 hop, centred (librosa-like)."""
    n_fft, hop = 400, 160
    padded = np.pad(wave, n_fft // 2)
    count = 1 + (len(padded) - n_fft) // hop
    window = np.hanning(n_fft + 1)[:-1]  # periodic Hann, as librosa uses
    frames = np.lib.stride_tricks.sliding_window_view(padded, n_fft)[::hop][:count] * window
    power = np.abs(np.fft.rfft(frames, axis=1)) ** 2
    return (power @ _mel_filters(n_fft, n_mels).T).astype(np.float32)


def _resemblyzer(quick: bool) -> ModelInputs:
    def partials(count: int, seed: int) -> tuple[np.ndarray, list[int]]:
        out: list[np.ndarray] = []
        speakers: list[int] = []
        k = 0
        while len(out) < count:
            audio = _media.speech(8.0, seed=seed * 1000 + k)  # one synthetic speaker per clip
            # Resemblyzer's preprocess_wav: long silences trimmed, loudness raised to -30 dBFS
            wave = audio.wave[audio.voiced]
            wave = wave * max(1.0, 10 ** (-30 / 20) / float(np.sqrt(np.mean(wave**2))))
            mels = mel_frames(wave)
            for start in list(range(0, len(mels) - 160, 80))[:3]:  # 3 half-overlapping partials
                if len(out) < count:
                    out.append(mels[start : start + 160])
                    speakers.append(k)
            k += 1
        return np.stack(out), speakers

    calibration, _ = partials(16 if quick else 64, 20)
    evaluation, speakers = partials(8 if quick else 16, 21)
    return ModelInputs("resemblyzer-voice-encoder", {"mels": calibration}, {"mels": evaluation}, None,
                       {"speaker": speakers})


# ---- bytes -----------------------------------------------------------------------------------------

def magika_labels() -> list[str]:
    """magika's output labels, in output order (config.min.json target_labels_space)."""
    config = json.loads(fetch_side_file("magika-standard-v3-3", "config.min.json").read_text())
    return list(config["target_labels_space"])


def magika_features(content: bytes, config: dict[str, Any]) -> np.ndarray:
    """magika's model input for one file's bytes (see the module docstring for the rules)."""
    block, beg_size, end_size, pad = (config["block_size"], config["beg_size"], config["end_size"],
                                      config["padding_token"])
    if config["mid_size"] != 0 or config["use_inputs_at_offsets"]:
        raise ValueError("this magika config uses mid or offset features, which zoo does not build")
    size = min(block, len(content))
    # magika's comments say "strip() when the file fits in one block", its code does lstrip/rstrip: the
    # code is what the model was trained with.
    beg = content[:size].lstrip()
    end = content[len(content) - size :].rstrip()
    beg_ints = list(beg[:beg_size]) + [pad] * max(0, beg_size - len(beg))
    end_ints = [pad] * max(0, end_size - len(end)) + list(end[max(0, len(end) - end_size) :])
    return np.array(beg_ints + end_ints, dtype=np.int32)


def _magika(quick: bool) -> ModelInputs:
    config = json.loads(fetch_side_file("magika-standard-v3-3", "config.min.json").read_text())
    files = _media.stdlib_files(3 if quick else 12)
    features = np.stack([magika_features(content, config) for _, content in files])
    labels = [label for label, _ in files]
    even, odd = slice(0, None, 2), slice(1, None, 2)
    return ModelInputs("magika-standard-v3-3", {"bytes": features[even]}, {"bytes": features[odd]}, None,
                       {"labels": labels[odd], "label_space": list(config["target_labels_space"])})


_BUILDERS: dict[str, Callable[[bool], ModelInputs]] = {
    "yolov8n-nudenet": _nudenet,
    "ppocrv4-det": _ocr_det,
    "ppocrv4-rec": _ocr_rec,
    "ppocr-cls": _ocr_cls,
    "silero-vad": _silero,
    "magika-standard-v3-3": _magika,
    "mediapipe-face-detection-short": _face_detection,
    "mediapipe-face-landmark": _face_landmark,
    "mediapipe-selfie-segmentation": _selfie,
    "fer-emotion": _fer,
    "resemblyzer-voice-encoder": _resemblyzer,
}


def inputs_for(key: str, *, quick: bool = False) -> ModelInputs:
    """Calibration and evaluation data for ``key`` (smaller sets with ``quick``), deterministic."""
    try:
        builder = _BUILDERS[key]
    except KeyError:
        raise KeyError(f"no inputs for {key!r}; known: {', '.join(sorted(_BUILDERS))}") from None
    return builder(quick)
