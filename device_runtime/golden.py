"""Golden vectors: inputs and expected outputs made at build time, checked on the device's own engine.

Layout inside a bundle::

    golden/golden.json        {"schema": "edgekit.golden/v1", "samples": N, "inputs": {name: file},
                               "outputs": {name: file}, "images": [file, ...], "tolerance": {...}}
    golden/input_K.npy        model-input tensors (after preprocessing), one file per input
    golden/output_K.npy       expected outputs, one file per output
    golden/image_K.<ext>      optional raw images: the device preprocesses them itself, so the
                              self-test covers preprocessing as well as the engine

The same module writes them on the build host and checks them on the device, so both sides agree on what
"the same numbers" means: top-1 agreement for classification outputs and SQNR for every output.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from device_runtime.errors import SpecError

__all__ = ["GOLDEN_SCHEMA", "GoldenCheck", "GoldenTolerance", "check_golden", "golden_files", "sqnr_db"]

GOLDEN_SCHEMA = "edgekit.golden/v1"
GOLDEN_DIR = "golden"


@dataclass(frozen=True)
class GoldenTolerance:
    """How close the device must come to the build host: SQNR in dB and top-1 agreement (share)."""

    min_sqnr_db: float = 30.0
    min_agreement: float = 1.0


@dataclass(frozen=True)
class GoldenCheck:
    """The outcome of a golden self-test, per output."""

    passed: bool
    details: tuple[str, ...]
    sqnr_db: Mapping[str, float]


def sqnr_db(reference: np.ndarray, candidate: np.ndarray) -> float:
    """20·log10(‖x‖/‖x−y‖); 100 when identical, -inf for NaN."""
    x = np.asarray(reference, dtype=np.float64).ravel()
    y = np.asarray(candidate, dtype=np.float64).ravel()
    noise = float(np.linalg.norm(x - y))
    if not math.isfinite(noise):
        return -math.inf
    if noise == 0.0:
        return 100.0
    signal = float(np.linalg.norm(x))
    return -math.inf if signal == 0.0 else min(100.0, 20.0 * math.log10(signal / noise))


def _npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.require(array, requirements="C"), allow_pickle=False)  # keeps 0-d arrays 0-d
    return buffer.getvalue()


def golden_files(
    inputs: Mapping[str, np.ndarray],
    outputs: Mapping[str, np.ndarray],
    *,
    images: Sequence[tuple[str, bytes]] = (),
    tolerance: GoldenTolerance | None = None,
) -> dict[str, bytes]:
    """The golden/ files for a bundle, as {bundle-relative name: bytes} (deterministic)."""
    tolerance = tolerance or GoldenTolerance()
    files: dict[str, bytes] = {}
    input_map, output_map = {}, {}
    for index, (name, array) in enumerate(inputs.items()):
        input_map[name] = f"{GOLDEN_DIR}/input_{index}.npy"
        files[input_map[name]] = _npy_bytes(array)
    for index, (name, array) in enumerate(outputs.items()):
        output_map[name] = f"{GOLDEN_DIR}/output_{index}.npy"
        files[output_map[name]] = _npy_bytes(np.asarray(array, dtype=np.float32))
    image_names = []
    for index, (suffix, data) in enumerate(images):
        image_names.append(f"{GOLDEN_DIR}/image_{index}{suffix}")
        files[image_names[-1]] = data
    # The first input with a batch-like leading axis counts the samples (a 0-d input has none).
    samples = next((int(np.shape(a)[0]) for a in inputs.values() if np.ndim(a) > 0), 1 if inputs else 0)
    document = {
        "schema": GOLDEN_SCHEMA,
        "samples": samples,
        "inputs": input_map,
        "outputs": output_map,
        "images": image_names,
        "tolerance": {"min_sqnr_db": tolerance.min_sqnr_db, "min_agreement": tolerance.min_agreement},
    }
    files[f"{GOLDEN_DIR}/golden.json"] = json.dumps(document, sort_keys=True, indent=1).encode() + b"\n"
    return files


def _load(root: Path, name: str) -> np.ndarray:
    path = root / name
    if not path.resolve().is_relative_to(root.resolve()):
        raise SpecError(f"golden file {name!r} escapes the bundle")
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise SpecError(f"golden file {name}: unreadable ({e})") from e


def check_golden(bundle_dir: str | Path, run: Any, *, preprocess: Any = None) -> GoldenCheck:
    """Run the golden inputs through `run(feeds) -> outputs` and compare with the expected outputs.

    Args:
        bundle_dir: the (verified) bundle directory.
        run: the engine's run function.
        preprocess: optional `fn(image_path) -> feeds`; when the bundle carries raw images, their
            preprocessed tensors must match the stored inputs as well.

    Raises:
        SpecError: golden.json is missing or malformed.
    """
    root = Path(bundle_dir)
    try:
        document = json.loads((root / GOLDEN_DIR / "golden.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise SpecError(f"golden/golden.json: unreadable ({e})") from e
    if not isinstance(document, dict) or document.get("schema") != GOLDEN_SCHEMA:
        raise SpecError(f"golden/golden.json: schema must be {GOLDEN_SCHEMA}")
    tolerance = GoldenTolerance(**document.get("tolerance", {}))
    feeds = {name: _load(root, file) for name, file in document["inputs"].items()}
    expected = {name: _load(root, file) for name, file in document["outputs"].items()}
    details: list[str] = []
    passed = True
    if preprocess is not None:
        for index, image in enumerate(document.get("images", [])):
            produced = preprocess(root / image)
            for name, tensor in produced.items():
                stored = feeds[name][index : index + 1]
                quality = sqnr_db(stored, tensor)
                if quality < 60.0:
                    passed = False
                    details.append(f"preprocessing of {image} differs from the build host ({quality:.1f} dB)")
    outputs = run(feeds)
    qualities: dict[str, float] = {}
    for name, reference in expected.items():
        if name not in outputs:
            passed = False
            details.append(f"output {name!r} missing on this engine")
            continue
        got = np.asarray(outputs[name], dtype=np.float32)
        qualities[name] = sqnr_db(reference, got)
        if qualities[name] < tolerance.min_sqnr_db:
            passed = False
            details.append(f"{name}: SQNR {qualities[name]:.1f} dB < {tolerance.min_sqnr_db} dB")
        if reference.ndim == 2 and reference.shape[1] > 1 and got.shape == reference.shape:
            agreement = float(np.mean(reference.argmax(1) == got.argmax(1)))
            if agreement < tolerance.min_agreement:
                passed = False
                details.append(f"{name}: top-1 agreement {agreement:.2%} < {tolerance.min_agreement:.2%}")
    return GoldenCheck(passed, tuple(details), qualities)
