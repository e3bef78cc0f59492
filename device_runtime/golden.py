"""Golden vectors: inputs and expected outputs made at build time, checked on the device's own engine.

Layout inside a bundle::

    golden/golden.json        {"schema": "edgekit.golden/v1" (v2, below), "samples": N,
                               "inputs": {name: ENTRY}, "outputs": {name: ENTRY},
                               "images": [file, ...], "tolerance": {...}, "storage": {...}}
    golden/input_K.npy        model-input tensors (after preprocessing), one file per input
    golden/output_K.npy       expected outputs, one file per output
    golden/image_K.<ext>      optional raw images: the device preprocesses them itself, so the
                              self-test covers preprocessing as well as the engine

ENTRY is a file name (the full tensors, `[N, ...]`) or (schema v2 only) `{"file": name, "select": COUNT}`:
then the file holds `[N, COUNT]`, the values at the flat positions `selection_indices(size, COUNT)` of
each sample (a spread, deterministic choice; the device computes the same positions). Stored values may be
float16 where the build host checked that float16 keeps them within `STORAGE_MIN_SQNR_DB` of the float32
result. When an input is stored only as a selection, the bundle carries images and the device's own
preprocessing of them produces the feeds; the selection then checks that preprocessing. Schema v1 (no
selections) stays readable by older device runtimes; v2 is written only when selections are stored or the
arrays use the `"layout": "runs"` form: `[N, *feed]`, sample K fed as `array[K]` exactly as one run takes
it, for models whose inputs are not all batched on axis 0 (0-d scalars, state tensors batched on axis 1).
The default layout ("batch") feeds sample K as `array[K:K+1]`.

Strictness (the same module writes and checks, so both sides agree on "the same numbers"): every stored
output must come within `min_sqnr_db` (default 30 dB: the engine may differ in kernels and rounding, not in
what it computes) over all samples, and full 2-D outputs must keep their top-1 class on every sample
(`min_agreement` 1.0); preprocessed images must match the stored inputs within 60 dB. Storage error is at
least 60 dB below the signal, so it uses up a negligible share of the 30 dB tolerance. Samples run one at a
time (batch 1), so the self-test needs the memory of one inference, whatever the number of samples.

Hostile but signed contents (a publisher's key is not a licence to crash devices): `golden.json` is read as
strict JSON with checked types; a bundle may tighten its tolerance but never loosen it below
`MIN_SQNR_FLOOR_DB` / `MIN_AGREEMENT_FLOOR` (nor name no outputs), so it cannot switch the self-test off;
`.npy` files are read with a bounded header, plain numeric dtypes only, and the size the header claims must
be the size of the file before anything is allocated. Every violation is a `SpecError`.
"""

from __future__ import annotations

import io
import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from device_runtime.errors import SpecError

__all__ = [
    "GOLDEN_SCHEMA",
    "PREPROCESS_MIN_SQNR_DB",
    "STORAGE_MIN_SQNR_DB",
    "GoldenCheck",
    "GoldenTolerance",
    "check_golden",
    "compact",
    "golden_feeds",
    "golden_files",
    "golden_tolerance",
    "read_npy",
    "selection_indices",
    "sqnr_db",
]

GOLDEN_SCHEMA = "edgekit.golden/v1"
GOLDEN_SCHEMA_SELECTIONS = "edgekit.golden/v2"  # v1 plus {"file", "select"} entries: older devices refuse it
GOLDEN_DIR = "golden"
STORAGE_MIN_SQNR_DB = 60.0  # float16 storage must stay this close to the float32 value it replaces
PREPROCESS_MIN_SQNR_DB = 60.0  # the device's preprocessing of a golden image vs the build host's
_FLOAT16_MAX = 65504.0
_MAX_SAMPLES = 1024
MIN_SQNR_FLOOR_DB = 10.0  # dB; a bundle's min_sqnr_db below this would let any model through
MAX_SQNR_DB = 200.0  # dB; above the 100 dB that identical outputs score: never passes (bounded, not inf)
MIN_AGREEMENT_FLOOR = 0.5  # share of samples keeping their top-1 class; below it the check means nothing
_MAX_GOLDEN_JSON_BYTES = 1 << 20  # bytes
_MAX_NPY_HEADER_BYTES = 10_000  # bytes, numpy's own default bound
_NPY_KINDS = "biuf"  # bool, signed and unsigned integers, floats: no objects, strings or structures
_MAX_RANK = 8


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
    return _sqnr_from_sums(float(np.dot(x, x)), float(np.dot(x - y, x - y)))


def _sqnr_from_sums(signal: float, noise: float) -> float:
    if not math.isfinite(noise) or not math.isfinite(signal):
        return -math.inf
    if noise == 0.0:
        return 100.0
    return -math.inf if signal == 0.0 else min(100.0, 10.0 * math.log10(signal / noise))


def selection_indices(size: int, count: int) -> np.ndarray:
    """`count` distinct flat positions spread over `[0, size)`: `i * step mod size`, `gcd(step, size) = 1`.

    The step is the integer nearest below `size` times the golden ratio's fraction that is coprime with
    `size` (a Weyl sequence: no aliasing with rows or channels). Integer arithmetic only, so the build host
    and every device compute the same positions.
    """
    if count >= size:
        return np.arange(size, dtype=np.int64)
    step = max(1, size * 61803 // 100000)
    while math.gcd(step, size) != 1:
        step += 1
    return (np.arange(count, dtype=np.int64) * step) % size


def compact(reference: np.ndarray) -> np.ndarray:
    """`reference` as float16 when that keeps it within STORAGE_MIN_SQNR_DB (and, for [N, C] scores, every
    row's top-1 class); otherwise as float32."""
    values = np.asarray(reference, dtype=np.float32)
    if values.size == 0 or not np.all(np.isfinite(values)) or float(np.max(np.abs(values))) >= _FLOAT16_MAX:
        return values
    half = values.astype(np.float16)
    if sqnr_db(values, half) < STORAGE_MIN_SQNR_DB:
        return values
    if values.ndim == 2 and values.shape[1] > 1 and np.any(values.argmax(1) != half.argmax(1)):
        return values
    return half


def _npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
    return buffer.getvalue()


def golden_files(
    inputs: Mapping[str, np.ndarray],
    outputs: Mapping[str, np.ndarray],
    *,
    images: Sequence[tuple[str, bytes]] = (),
    tolerance: GoldenTolerance | None = None,
    selected_inputs: Mapping[str, int] | None = None,
    selected_outputs: Mapping[str, int] | None = None,
    storage: Mapping[str, Any] | None = None,
    runs: bool = False,
) -> dict[str, bytes]:
    """The golden/ files for a bundle, as {bundle-relative name: bytes} (deterministic).

    Args:
        inputs, outputs: `[N, ...]` arrays, stored with their own dtype (use `compact` first to shrink).
        images: raw image files (suffix, bytes), one per sample, for image inputs.
        selected_inputs, selected_outputs: name -> COUNT: store only `selection_indices(size, COUNT)` of
            each sample. A selected input requires `images` (they make the feeds on the device).
        storage: figures recorded for people (budget, bytes); the device does not use them.
        runs: the arrays are `[N, *feed]`: sample K is fed as `array[K]`, exactly as one run takes it
            (for models whose inputs are not all batched on axis 0: 0-d scalars, state tensors batched
            on axis 1); written as schema v2 with `"layout": "runs"`.
    """
    tolerance = tolerance or GoldenTolerance()
    selected_inputs = dict(selected_inputs or {})
    selected_outputs = dict(selected_outputs or {})
    samples = int(next(iter(outputs.values())).shape[0]) if outputs else 0
    if selected_inputs and len(images) != samples:
        raise SpecError("inputs stored as a selection need one golden image per sample")
    files: dict[str, bytes] = {}

    def entry(kind: str, index: int, array: np.ndarray, count: int | None) -> str | dict[str, Any]:
        name = f"{GOLDEN_DIR}/{kind}_{index}.npy"
        if count is None:
            files[name] = _npy_bytes(array)
            return name
        flat = array.reshape(array.shape[0], -1)
        files[name] = _npy_bytes(flat[:, selection_indices(flat.shape[1], count)])
        return {"file": name, "select": int(min(count, flat.shape[1]))}

    input_map = {
        name: entry("input", i, np.asarray(a), selected_inputs.get(name))
        for i, (name, a) in enumerate(inputs.items())
    }
    output_map = {
        name: entry("output", i, np.asarray(a), selected_outputs.get(name))
        for i, (name, a) in enumerate(outputs.items())
    }
    image_names = []
    for index, (suffix, data) in enumerate(images):
        image_names.append(f"{GOLDEN_DIR}/image_{index}{suffix}")
        files[image_names[-1]] = data
    document: dict[str, Any] = {
        # Plain v1 whenever it suffices, so devices with an older runtime can still self-test the bundle;
        # v2 only when selections are stored (an older runtime then refuses the bundle by its schema,
        # cleanly, and keeps its current model).
        "schema": GOLDEN_SCHEMA_SELECTIONS if selected_inputs or selected_outputs or runs else GOLDEN_SCHEMA,
        "samples": samples,
        "inputs": input_map,
        "outputs": output_map,
        "images": image_names,
        "tolerance": {"min_sqnr_db": tolerance.min_sqnr_db, "min_agreement": tolerance.min_agreement},
    }
    if runs:
        document["layout"] = "runs"
    if storage:
        document["storage"] = dict(storage)
    files[f"{GOLDEN_DIR}/golden.json"] = json.dumps(document, sort_keys=True, indent=1).encode() + b"\n"
    return files


@dataclass(frozen=True)
class _Stored:
    name: str
    values: np.ndarray  # [N, ...] full, or [N, COUNT] selection
    select: int | None


def read_npy(path: Path) -> np.ndarray:
    """A `.npy` file, read defensively: bounded header, plain numeric dtype, rank <= 8, and the data size
    the header claims equal to what the file holds, checked before anything is allocated.

    Raises:
        SpecError: not a well-formed `.npy` of a plain numeric array.
    """
    from numpy.lib import format as npy

    try:
        with open(path, "rb") as handle:
            available = os.fstat(handle.fileno()).st_size
            version = npy.read_magic(handle)
            if version == (1, 0):
                shape, fortran, dtype = npy.read_array_header_1_0(
                    handle, max_header_size=_MAX_NPY_HEADER_BYTES
                )
            elif version == (2, 0):
                shape, fortran, dtype = npy.read_array_header_2_0(
                    handle, max_header_size=_MAX_NPY_HEADER_BYTES
                )
            else:
                raise SpecError(f"{path.name}: .npy format version {version}, expected 1.0 or 2.0")
            if (
                dtype.hasobject
                or dtype.fields is not None
                or dtype.kind not in _NPY_KINDS
                or len(shape) > _MAX_RANK
            ):
                raise SpecError(
                    f"{path.name}: dtype {dtype.str} shape {shape}; "
                    "expected a plain numeric array of rank <= 8"
                )
            claimed = math.prod(shape) * dtype.itemsize  # Python integers: a 2 TiB claim is just a number
            held = available - handle.tell()
            if claimed != held:
                raise SpecError(
                    f"{path.name}: the header claims {claimed} bytes of data ({dtype.str} {shape}), the file "
                    f"holds {held}"
                )
            flat = np.empty(math.prod(shape), dtype=dtype)  # the claim matched the file: this is its size
            read = handle.readinto(flat.view(np.uint8).data)
    except OSError as e:
        raise SpecError(f"{path.name}: unreadable ({e})") from e
    except ValueError as e:  # numpy: bad magic, header too long or malformed
        raise SpecError(f"{path.name}: not a valid .npy file ({e})") from e
    if read != claimed:
        raise SpecError(f"{path.name}: changed while being read")
    return flat.reshape(shape, order="F" if fortran else "C")


def _load(root: Path, name: Any, samples: int) -> np.ndarray:
    if not isinstance(name, str):
        raise SpecError(f"golden file name {name!r}: expected a string")
    path = root / name
    if not path.resolve().is_relative_to(root.resolve()):
        raise SpecError(f"golden file {name!r} escapes the bundle")
    array = read_npy(path)
    if array.ndim < 1 or array.shape[0] != samples:
        raise SpecError(f"golden file {name}: {array.shape[:1]} samples, golden.json says {samples}")
    return array


def _stored(root: Path, mapping: Any, samples: int, what: str) -> dict[str, _Stored]:
    if not isinstance(mapping, dict):
        raise SpecError(f"golden/golden.json: {what} must be an object")
    result = {}
    for name, value in mapping.items():
        if isinstance(value, dict):
            if set(value) != {"file", "select"}:
                raise SpecError(f"golden/golden.json: {what}[{name!r}] must hold exactly 'file' and 'select'")
            count = value.get("select")
            if isinstance(count, bool) or not isinstance(count, int) or count < 1:
                raise SpecError(f"golden/golden.json: {what}[{name!r}].select must be a positive integer")
            array = _load(root, value.get("file"), samples)
            if array.ndim != 2 or array.shape[1] != count:
                raise SpecError(f"golden {what} {name!r}: stored shape {array.shape}, expected [N, {count}]")
            result[name] = _Stored(name, array, count)
        else:
            result[name] = _Stored(name, _load(root, value, samples), None)
    return result


def _pick(stored: _Stored, produced: np.ndarray, runs: bool) -> tuple[np.ndarray, np.ndarray] | None:
    """(reference, candidate) for one sample, or None when the shapes disagree."""
    got = np.asarray(produced)
    if stored.select is None:
        shape = got.shape if runs else got.shape[1:]
        return None if shape != stored.values.shape[1:] else (stored.values, got)
    flat = got.reshape(1, -1) if runs else got.reshape(got.shape[0], -1)
    if flat.shape[1] < stored.select:
        return None
    return stored.values, flat[:, selection_indices(flat.shape[1], stored.select)]


@dataclass(frozen=True)
class _Golden:
    samples: int
    tolerance: GoldenTolerance
    inputs: dict[str, _Stored]
    expected: dict[str, _Stored]
    images: list[str]
    runs: bool  # layout "runs": sample K is fed as values[K]; otherwise as values[K:K+1]

    def feed(self, stored: _Stored, index: int) -> np.ndarray:
        """Sample `index` of a stored input, shaped as one run takes it."""
        return np.asarray(stored.values[index]) if self.runs else stored.values[index : index + 1]


def _tolerance(value: Any) -> GoldenTolerance:
    """The bundle's tolerance, bounded: it may tighten the defaults, never switch the self-test off."""
    if not isinstance(value, dict) or not set(value) <= {"min_sqnr_db", "min_agreement"}:
        raise SpecError("golden/golden.json: tolerance must be an object with min_sqnr_db and min_agreement")
    bounds = {"min_sqnr_db": (MIN_SQNR_FLOOR_DB, MAX_SQNR_DB), "min_agreement": (MIN_AGREEMENT_FLOOR, 1.0)}
    checked: dict[str, float] = {}
    for key, number in value.items():
        low, high = bounds[key]
        if (
            isinstance(number, bool)
            or not isinstance(number, int | float)
            or not math.isfinite(number)
            or not low <= number <= high
        ):
            raise SpecError(
                f"golden/golden.json: tolerance.{key} is {number!r}, "
                f"expected a number in [{low:g}, {high:g}] "
                "(a bundle may make its self-test stricter, never switch it off)"
            )
        checked[key] = float(number)
    return GoldenTolerance(**checked)


def _golden_document(root: Path) -> Any:
    """The parsed ``golden/golden.json`` of an extracted bundle (strict JSON, bounded).

    Raises:
        SpecError: unreadable or not strict JSON within the bound.
    """
    from signing.errors import FormatError
    from signing.strict_json import parse_strict

    try:
        with open(root / GOLDEN_DIR / "golden.json", "rb") as handle:
            data = handle.read(_MAX_GOLDEN_JSON_BYTES + 1)
        return parse_strict(data, what="golden/golden.json", max_bytes=_MAX_GOLDEN_JSON_BYTES)
    except OSError as e:
        raise SpecError(f"golden/golden.json: unreadable ({e})") from e
    except FormatError as e:
        raise SpecError(str(e)) from e


def _open(root: Path, preprocess: Any) -> _Golden:
    document = _golden_document(root)
    if not isinstance(document, dict) or document.get("schema") not in (
        GOLDEN_SCHEMA,
        GOLDEN_SCHEMA_SELECTIONS,
    ):
        raise SpecError(f"golden/golden.json: schema must be {GOLDEN_SCHEMA} or {GOLDEN_SCHEMA_SELECTIONS}")
    for key in ("inputs", "outputs"):
        if not isinstance(document.get(key), dict) or not document[key]:
            raise SpecError(f"golden/golden.json: {key} must be a non-empty object of name -> file")
    if document["schema"] == GOLDEN_SCHEMA and any(
        isinstance(v, dict) for key in ("inputs", "outputs") for v in document[key].values()
    ):
        raise SpecError(f"golden/golden.json: selections need schema {GOLDEN_SCHEMA_SELECTIONS}")
    layout = document.get("layout", "batch")
    if layout not in ("batch", "runs") or (layout == "runs" and document["schema"] == GOLDEN_SCHEMA):
        raise SpecError(
            f"golden/golden.json: layout must be 'batch' or (schema {GOLDEN_SCHEMA_SELECTIONS} only) 'runs'"
        )
    samples = document.get("samples")
    if isinstance(samples, bool) or not isinstance(samples, int) or not 1 <= samples <= _MAX_SAMPLES:
        raise SpecError(f"golden/golden.json: samples must be an integer in 1..{_MAX_SAMPLES}")
    tolerance = _tolerance(document.get("tolerance", {}))
    inputs = _stored(root, document.get("inputs", {}), samples, "inputs")
    expected = _stored(root, document.get("outputs", {}), samples, "outputs")
    images = document.get("images", [])
    if not isinstance(images, list) or not all(isinstance(i, str) for i in images):
        raise SpecError("golden/golden.json: images must be a list of file names")
    for image in images:
        if not (root / image).resolve().is_relative_to(root.resolve()):
            raise SpecError(f"golden image {image!r} escapes the bundle")
    from_images = any(s.select is not None for s in inputs.values())
    if from_images and (preprocess is None or len(images) != samples):
        raise SpecError(
            "golden inputs are stored as images; the self-test needs the bundle's image preprocessing "
            f"and one image per sample ({len(images)} images for {samples} samples)"
        )
    return _Golden(samples, tolerance, inputs, expected, images, layout == "runs")


def golden_tolerance(bundle_dir: str | Path) -> GoldenTolerance:
    """The bundle's golden tolerance, bounded exactly as the self-test reads it (the shadow runner compares
    outputs of roles without a decoder within it).

    Raises:
        SpecError: golden.json is missing or malformed.
    """
    document = _golden_document(Path(bundle_dir))
    if not isinstance(document, dict):
        raise SpecError("golden/golden.json must be a JSON object")
    return _tolerance(document.get("tolerance", {}))


def golden_feeds(bundle_dir: str | Path, *, preprocess: Any = None) -> list[dict[str, np.ndarray]]:
    """The golden inputs of a bundle, one batch-1 feed dict per sample (for benchmarks on the device).

    Raises:
        SpecError: golden.json is missing or malformed, or needs a preprocessor that was not given.
    """
    root = Path(bundle_dir)
    golden = _open(root, preprocess)
    feeds = []
    for index in range(golden.samples):
        produced = (
            preprocess(root / golden.images[index])
            if any(s.select is not None for s in golden.inputs.values())
            else {}
        )
        feeds.append(
            {
                name: produced[name] if stored.select is not None else golden.feed(stored, index)
                for name, stored in golden.inputs.items()
            }
        )
    return feeds


def check_golden(bundle_dir: str | Path, run: Any, *, preprocess: Any = None) -> GoldenCheck:
    """Run the golden inputs through `run(feeds) -> outputs`, one sample at a time, and compare.

    Args:
        bundle_dir: the (verified) bundle directory.
        run: the engine's run function.
        preprocess: optional `fn(image_path) -> feeds`; when the bundle carries raw images, their
            preprocessed tensors must match the stored inputs as well (and make the feeds of inputs stored
            only as a selection).

    Raises:
        SpecError: golden.json is missing or malformed, or needs a preprocessor that was not given.
    """
    root = Path(bundle_dir)
    golden = _open(root, preprocess)
    samples, tolerance, inputs, expected, images = (
        golden.samples,
        golden.tolerance,
        golden.inputs,
        golden.expected,
        golden.images,
    )
    details: list[str] = []
    passed = True
    sums = {name: [0.0, 0.0] for name in expected}  # signal, noise over all samples
    disagree = dict.fromkeys(expected, 0)  # samples whose top-1 class changed ([N, C] outputs)
    missing: set[str] = set()
    for index in range(samples):
        produced: dict[str, np.ndarray] = {}
        if preprocess is not None and index < len(images):
            produced = preprocess(root / images[index])
            for name, stored in inputs.items():
                pair = _pick(stored, produced[name], golden.runs) if name in produced else None
                quality = -math.inf if pair is None else sqnr_db(pair[0][index : index + 1], pair[1])
                if quality < PREPROCESS_MIN_SQNR_DB:
                    passed = False
                    details.append(
                        f"preprocessing of {images[index]} differs from the build host ({quality:.1f} dB)"
                    )
        feeds = {
            name: produced[name] if stored.select is not None else golden.feed(stored, index)
            for name, stored in inputs.items()
        }
        outputs = run(feeds)
        for name, stored in expected.items():
            if name not in outputs:
                missing.add(name)
                continue
            got = np.asarray(outputs[name], dtype=np.float32)
            pair = _pick(stored, got, golden.runs)
            if pair is None:
                passed = False
                details.append(f"{name}: shape {got.shape[1:]} differs from the golden output's")
                sums[name] = [1.0, math.inf]
                continue
            reference = np.asarray(pair[0][index : index + 1], dtype=np.float64)
            candidate = np.asarray(pair[1], dtype=np.float64).reshape(reference.shape)
            if golden.runs:  # compare in the run's own shape: [1, C] scores keep their top-1 check
                reference, candidate = reference[0], candidate[0]
            sums[name][0] += float(np.sum(reference * reference))
            sums[name][1] += float(np.sum((reference - candidate) ** 2))
            if stored.select is None and reference.ndim == 2 and reference.shape[1] > 1:
                disagree[name] += int(reference.argmax(1)[0] != candidate.argmax(1)[0])
    for name in sorted(missing):
        passed = False
        details.append(f"output {name!r} missing on this engine")
    qualities: dict[str, float] = {}
    for name in expected:
        if name in missing:
            continue
        qualities[name] = _sqnr_from_sums(*sums[name])
        if qualities[name] < tolerance.min_sqnr_db:
            passed = False
            details.append(f"{name}: SQNR {qualities[name]:.1f} dB < {tolerance.min_sqnr_db} dB")
        agreement = 1.0 - disagree[name] / samples
        if agreement < tolerance.min_agreement:
            passed = False
            details.append(f"{name}: top-1 agreement {agreement:.2%} < {tolerance.min_agreement:.2%}")
    return GoldenCheck(passed, tuple(details), qualities)
