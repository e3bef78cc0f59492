"""Calibration and evaluation data: `.npy`, `.npz` or a folder of images, checked against the model.

Data is sampled deterministically (a seeded permutation, kept in file order) so that the same inputs and
seed give the same calibration set and therefore a byte-identical quantized model.
"""

from __future__ import annotations

import zipfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from converters.errors import DataError
from device_runtime.engines import TensorInfo

__all__ = ["MIN_CALIBRATION_SAMPLES", "Dataset", "load_dataset", "load_labels"]

MIN_CALIBRATION_SAMPLES = 32  # below this SQNR collapses while agreement still looks fine (QUANTIZATION.md)


@dataclass(frozen=True)
class Dataset:
    """Arrays per model input name, all with the same number of samples on axis 0."""

    arrays: Mapping[str, np.ndarray]
    source: str
    indices: np.ndarray  # which rows of the source were taken, for labels and reports
    source_size: int  # rows in the source before sampling

    @property
    def size(self) -> int:
        """Number of samples."""
        return int(next(iter(self.arrays.values())).shape[0])

    def batches(self, batch_size: int) -> Iterator[dict[str, np.ndarray]]:
        """Yield feeds of at most `batch_size` samples, in order."""
        for start in range(0, self.size, batch_size):
            yield {name: a[start : start + batch_size] for name, a in self.arrays.items()}

    def samples(self) -> Iterator[dict[str, np.ndarray]]:
        """Yield one-sample feeds (batch dimension kept)."""
        return self.batches(1)


def load_dataset(
    path: str | Path,
    inputs: tuple[TensorInfo, ...],
    *,
    max_samples: int | None = 256,
    seed: int = 0,
    preprocess: str | Path | None = None,
) -> Dataset:
    """Read DATA for a model with the given inputs.

    Args:
        path: `.npy` (single-input models), `.npz` (one array per input name) or a folder of images.
        inputs: the model's input tensors (names, shapes, dtypes).
        max_samples: sample at most this many rows, deterministically from `seed`; None keeps all.
        seed: seed of the sampling permutation.
        preprocess: preprocessing spec (JSON) used to read a folder of images.

    Raises:
        DataError: the file is missing or unreadable, or its arrays do not fit the model.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file or folder; pass a .npy, .npz or a folder of images")
    if path.is_dir():
        arrays = _read_image_folder(path, inputs, preprocess)
    elif path.suffix.lower() == ".npy":
        arrays = _read_npy(path, inputs)
    elif path.suffix.lower() == ".npz":
        arrays = _read_npz(path, inputs)
    else:
        raise DataError(
            f"{path}: unsupported data file {path.suffix!r}; use .npy, .npz or a folder of images"
        )
    arrays = {info.name: _fit_to_input(path, info, arrays[info.name]) for info in inputs}
    counts = {name: a.shape[0] for name, a in arrays.items()}
    if len(set(counts.values())) != 1:
        raise DataError(f"{path}: inputs have different sample counts {counts}; give each the same count")
    total = next(iter(counts.values()))
    if total == 0:
        raise DataError(f"{path}: holds 0 samples; give at least {MIN_CALIBRATION_SAMPLES}")
    indices = np.arange(total)
    if max_samples is not None and total > max_samples:
        indices = np.sort(np.random.default_rng(seed).permutation(total)[:max_samples])
        arrays = {name: a[indices] for name, a in arrays.items()}
    return Dataset(arrays=arrays, source=str(path), indices=indices, source_size=int(total))


def load_labels(path: str | Path, dataset: Dataset) -> np.ndarray:
    """Read integer class ids (`.npy`) for every row of the source and take the dataset's rows.

    Raises:
        DataError: the file is missing, not integer, not 1-D, or its length does not match the data.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: labels file not found; pass a .npy of integer class ids")
    labels = _load_npy(path)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(
            f"{path}: labels must be a 1-D array of integer class ids, got shape {labels.shape} "
            f"dtype {labels.dtype}"
        )
    if labels.shape[0] != dataset.source_size:
        raise DataError(
            f"{path}: {labels.shape[0]} labels for data with {dataset.source_size} samples; "
            "give exactly one label per sample, in the same order"
        )
    return labels[dataset.indices]


def _load_npy(path: Path) -> np.ndarray:
    with open(path, "rb") as handle:
        if handle.read(6) != b"\x93NUMPY":
            raise DataError(f"{path}: not a .npy file (no NumPy header); save arrays with numpy.save")
    try:
        array = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise DataError(f"{path}: not a readable .npy array ({e}); save it with numpy.save") from e
    if not isinstance(array, np.ndarray):
        raise DataError(f"{path}: expected one array, found an archive; use .npz naming each input")
    return array


def _read_npy(path: Path, inputs: tuple[TensorInfo, ...]) -> dict[str, np.ndarray]:
    if len(inputs) != 1:
        names = [i.name for i in inputs]
        raise DataError(
            f"{path}: a .npy file feeds one input, but the model has {len(inputs)} {names}; "
            "use a .npz with one array per input name"
        )
    return {inputs[0].name: _load_npy(path)}


def _read_npz(path: Path, inputs: tuple[TensorInfo, ...]) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
        raise DataError(f"{path}: not a readable .npz archive ({e}); save it with numpy.savez") from e
    expected = [i.name for i in inputs]
    if len(inputs) == 1 and len(arrays) == 1 and expected[0] not in arrays:
        return {expected[0]: next(iter(arrays.values()))}
    missing = [n for n in expected if n not in arrays]
    if missing:
        raise DataError(
            f"{path}: no array for model input(s) {missing}; the archive holds {sorted(arrays)}. "
            f"Name the arrays after the model inputs {expected}"
        )
    return arrays


def _read_image_folder(
    path: Path, inputs: tuple[TensorInfo, ...], preprocess: str | Path | None
) -> dict[str, np.ndarray]:
    from device_runtime.errors import DeviceRuntimeError
    from device_runtime.preprocess import ImageInputSpec, list_images, load_spec, preprocess_images

    if preprocess is None:
        raise DataError(
            f"{path}: a folder of images needs a preprocessing spec to become tensors; "
            "pass --preprocess SPEC.json"
        )
    try:
        spec = load_spec(preprocess)
        images = list_images(path)
        image_inputs = [s for s in spec.inputs if isinstance(s, ImageInputSpec)]
        if len(image_inputs) != 1 or len(inputs) != 1:
            raise DataError(
                f"{path}: a folder of images feeds a model with exactly one image input; "
                f"the model has {len(inputs)} inputs and the spec {len(image_inputs)} image inputs"
            )
        return {inputs[0].name: preprocess_images(image_inputs[0], images)}
    except DeviceRuntimeError as e:
        raise DataError(str(e)) from e


def _fit_to_input(path: Path, info: TensorInfo, array: np.ndarray) -> np.ndarray:
    if array.dtype.kind not in "biuf":
        raise DataError(
            f"{path}: input {info.name!r} has dtype {array.dtype}; give numeric data ({info.dtype})"
        )
    if array.ndim == len(info.shape) - 1 and _matches(array.shape, info.shape[1:]):
        raise DataError(
            f"{path}: input {info.name!r} has shape {array.shape}, which looks like one sample; "
            f"add the batch axis first (expected (N, {', '.join(str(d) for d in info.shape[1:])}))"
        )
    if array.ndim != len(info.shape) or not _matches(array.shape[1:], info.shape[1:]):
        expected = ", ".join(
            "N" if i == 0 else ("?" if d is None else str(d)) for i, d in enumerate(info.shape)
        )
        raise DataError(
            f"{path}: input {info.name!r} has shape {array.shape}, the model expects ({expected})"
        )
    if array.dtype.kind == "f" and not np.all(np.isfinite(array)):
        raise DataError(f"{path}: input {info.name!r} contains NaN or infinite values; clean the data")
    target = (
        np.dtype(info.dtype)
        if info.dtype in ("float32", "float16", "int8", "uint8", "int32", "int64")
        else None
    )
    if target is not None and array.dtype != target:
        if target.kind == "f" and array.dtype.kind in "iuf":
            return array.astype(target)
        if not np.can_cast(array.dtype, target, casting="safe"):
            raise DataError(
                f"{path}: input {info.name!r} has dtype {array.dtype}, the model takes {target}; convert it"
            )
        return array.astype(target)
    return array


def _matches(shape: tuple[int, ...], expected: tuple[int | None, ...]) -> bool:
    return len(shape) == len(expected) and all(
        e is None or s == e for s, e in zip(shape, expected, strict=True)
    )
