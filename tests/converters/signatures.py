"""Inputs for the signature tests: synthetic speech-like audio and small ONNX models with unusual signatures.

The audio is made in code (no downloads): voiced segments are a glottal pulse train with gliding pitch
through three formant resonators that jump between vowels, with a syllable-rate envelope; between them are
silences and noise bursts. 16 kHz, cut into the 512-sample chunks (plus 64 samples of context) silero
VAD takes.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

RATE = 16_000  # samples per second
CHUNK = 512  # samples per VAD step (32 ms)
CONTEXT = 64  # samples of the previous chunk silero takes before each chunk at 16 kHz
SILERO_WHEEL = Path("/root/.cache/edgekit/zoo/wheels/silero_vad-6.2.3-py3-none-any.whl")
SILERO_MEMBER = "silero_vad/data/silero_vad.onnx"


def extract_silero(directory: Path) -> Path:
    """Unzip silero_vad.onnx from its wheel into `directory`."""
    target = directory / "silero_vad.onnx"
    with zipfile.ZipFile(SILERO_WHEEL) as wheel:
        target.write_bytes(wheel.read(SILERO_MEMBER))
    return target


_VOWELS = ((730, 1090, 2440), (270, 2290, 3010), (300, 870, 2240), (530, 1840, 2480), (570, 840, 2410))
_BANDWIDTHS = (80, 100, 120)  # Hz, of the three formants


def _voiced(seconds: float, rng: np.random.Generator) -> np.ndarray:
    """A source-filter vowel string: a glottal pulse train with gliding pitch through formant resonators."""
    from scipy.signal import lfilter

    n = int(seconds * RATE)
    t = np.arange(n) / RATE
    f0 = rng.uniform(100, 200) * (1 + 0.1 * np.sin(2 * np.pi * rng.uniform(1, 3) * t))  # pitch glide
    phase = np.cumsum(f0) / RATE
    source = lfilter([1.0], [1.0, -0.95], np.diff(np.floor(phase), prepend=0.0))  # pulses, spectral tilt
    out = np.zeros(n)
    segment = int(0.15 * RATE)  # a new vowel every 150 ms
    for start in range(0, n, segment):
        part = source[start : start + segment]
        for frequency, bandwidth in zip(_VOWELS[rng.integers(len(_VOWELS))], _BANDWIDTHS, strict=True):
            r = np.exp(-np.pi * bandwidth / RATE)
            theta = 2 * np.pi * frequency / RATE
            part = lfilter([1 - r], [1, -2 * r * np.cos(theta), r * r], part)
        out[start : start + segment] = part
    syllables = 0.5 * (1 - np.cos(2 * np.pi * rng.uniform(3, 5) * t))  # about 4 syllables a second
    return out * (0.3 + 0.7 * syllables)


def speech_like(seconds: float, *, seed: int = 0) -> np.ndarray:
    """Voiced segments, silences and noise bursts, float32 in [-1, 1], at 16 kHz."""
    rng = np.random.default_rng(seed)
    parts = []
    total = 0
    while total < seconds * RATE:
        kind = rng.choice(["voiced", "silence", "noise"], p=[0.55, 0.3, 0.15])
        length = rng.uniform(0.3, 1.2)
        if kind == "voiced":
            part = _voiced(length, rng)
            part = rng.uniform(0.2, 0.6) * part / np.max(np.abs(part))
        elif kind == "silence":
            part = 0.001 * rng.standard_normal(int(length * RATE))
        else:
            part = 0.03 * rng.standard_normal(int(length * RATE))
        parts.append(part)
        total += part.size
    return np.concatenate(parts)[: int(seconds * RATE)].astype(np.float32)


def vad_sequences(sequences: int, steps: int, *, seed: int = 0) -> np.ndarray:
    """`(sequences, steps, 576)` float32: 64 samples of context, then the step's 512-sample chunk.

    silero VAD v5 at 16 kHz expects the last 64 samples of the previous chunk before each new chunk (its
    own wrapper prepends them); each sequence is one recording cut into consecutive chunks.
    """
    out = np.empty((sequences, steps, CONTEXT + CHUNK), np.float32)
    for s in range(sequences):
        audio = np.concatenate(
            [np.zeros(CONTEXT, np.float32), speech_like(steps * CHUNK / RATE, seed=seed + s)]
        )
        for t in range(steps):
            out[s, t] = audio[t * CHUNK : t * CHUNK + CONTEXT + CHUNK]
    return out


def _save(nodes: list, inputs: list, outputs: list, path: Path, initializers: dict | None = None) -> Path:
    import onnx
    from onnx import helper, numpy_helper

    graph = helper.make_graph(
        nodes,
        "signature",
        inputs,
        outputs,
        [numpy_helper.from_array(v, k) for k, v in (initializers or {}).items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def batch_on_axis_one(path: Path) -> Path:
    """`y[T, B, 4] = x[T, B, 4] @ W`, batch named `batch` on axis 1 of input and output (T fixed 3)."""
    from onnx import TensorProto, helper

    w = np.random.default_rng(1).standard_normal((4, 4)).astype(np.float32)
    return _save(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, "batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, "batch", 4])],
        path,
        {"w": w},
    )


def mixed_dtypes(path: Path) -> Path:
    """`y[B, 4] = where(mask, cast(x16) * scale, cast(ids))`: bool, int64, float16 and a 0-d float input."""
    from onnx import TensorProto, helper

    nodes = [
        helper.make_node("Cast", ["x16"], ["x32"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["x32", "scale"], ["scaled"]),
        helper.make_node("Cast", ["ids"], ["idsf"], to=TensorProto.FLOAT),
        helper.make_node("Where", ["mask", "scaled", "idsf"], ["y"]),
    ]
    return _save(
        nodes,
        [
            helper.make_tensor_value_info("x16", TensorProto.FLOAT16, ["batch", 4]),
            helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", 4]),
            helper.make_tensor_value_info("mask", TensorProto.BOOL, ["batch", 4]),
            helper.make_tensor_value_info("scale", TensorProto.FLOAT, []),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
        path,
    )


def fixed_batch_one(path: Path) -> Path:
    """`y[1, 3] = relu(x[1, 3] + 1)`: a model exported with a fixed batch of one."""
    from onnx import TensorProto, helper

    return _save(
        [
            helper.make_node("Add", ["x", "one"], ["s"]),
            helper.make_node("Relu", ["s"], ["y"]),
        ],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])],
        path,
        {"one": np.ones(3, np.float32)},
    )


def dynamic_image(path: Path) -> Path:
    """`y[N, C] = mean over H, W of relu(x[N, C, H, W])`, every dim named and dynamic except C = 3."""
    from onnx import TensorProto, helper

    return _save(
        [
            helper.make_node("Relu", ["x"], ["r"]),
            helper.make_node("ReduceMean", ["r"], ["y"], axes=[2, 3], keepdims=0),
        ],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, "h", "w"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3])],
        path,
    )


def tiny_rnn(path: Path) -> Path:
    """A stateful cell: `h' = tanh(x W + h U)`, `out = h' V`; `x [B, 8]`, `h [1, B, 16]` (batch on axis 1)."""
    from onnx import TensorProto, helper

    rng = np.random.default_rng(3)
    inits = {
        "W": (0.4 * rng.standard_normal((8, 16))).astype(np.float32),
        "U": (0.3 * rng.standard_normal((16, 16))).astype(np.float32),
        "V": (0.5 * rng.standard_normal((16, 2))).astype(np.float32),
        "axes0": np.array([0], np.int64),
    }
    nodes = [
        helper.make_node("Squeeze", ["h", "axes0"], ["h2"]),
        helper.make_node("MatMul", ["x", "W"], ["xw"]),
        helper.make_node("MatMul", ["h2", "U"], ["hu"]),
        helper.make_node("Add", ["xw", "hu"], ["pre"]),
        helper.make_node("Tanh", ["pre"], ["hn2"]),
        helper.make_node("Unsqueeze", ["hn2", "axes0"], ["hn"]),
        helper.make_node("MatMul", ["hn2", "V"], ["out"]),
    ]
    return _save(
        nodes,
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", 8]),
            helper.make_tensor_value_info("h", TensorProto.FLOAT, [1, "B", 16]),
        ],
        [
            helper.make_tensor_value_info("out", TensorProto.FLOAT, ["B", 2]),
            helper.make_tensor_value_info("hn", TensorProto.FLOAT, [1, "B", 16]),
        ],
        path,
        inits,
    )
