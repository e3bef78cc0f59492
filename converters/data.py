"""Calibration and evaluation data: `.npy`, `.npz` or a folder of images, checked against the model.

Data is sampled deterministically (a seeded permutation, kept in file order) so that the same inputs and
seed give the same calibration set and therefore a byte-identical quantized model.

Every input has a batch axis or none (`converters.signature`); sample rows are taken on that axis. What an
array may look like, for an input of model shape `(d0, ..., dk)` with batch axis b:

- batched input: the model's shape with N samples on axis b, or a 0-d array (one value for every
  sample, broadcast over the sample's static shape);
- input without a batch axis: its exact shape (a constant fed to every run, e.g. a 0-d `sr`), or the
  shape with the samples first, `(N, d0, ..., dk)` (one value per sample: such data runs sample by sample).

Stateful data (`Signature.states`, output → input fed back) holds sequences: every batched input that
is not a state is `(S, T, *sample)`, S sequences of T steps, `sample` the model shape without the batch
axis (silero: `input` `(S, T, 512)`). A state input may be absent (it starts at zeros) or give the initial
state of every sequence, `(S, *sample)`. The dataset stores steps sequence-major on the batch axis (sample
`s·T + t` is step t of sequence s); `--samples` counts steps and whole sequences are drawn.
"""

from __future__ import annotations

import zipfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from converters.errors import DataError
from converters.signature import Signature, describe, resolve_batch_axes, sample_shape, with_hints
from device_runtime.engines import TensorInfo

__all__ = ["MIN_CALIBRATION_SAMPLES", "Dataset", "load_dataset", "load_labels"]

MIN_CALIBRATION_SAMPLES = 32  # below this SQNR collapses while agreement still looks fine


@dataclass(frozen=True)
class Dataset:
    """Arrays per model input name, in the model's layout, with N samples on each input's batch axis.

    `batch_axes` maps an input to its batch axis (missing: axis 0; None: a constant fed to every run);
    `stacked` names inputs without a batch axis that hold one value per sample on a leading axis;
    `max_batch` bounds how many samples one run may take (1 for a model with a fixed batch of one);
    `steps`, `states` and `initial_states` describe sequences of stateful data (module docstring).
    """

    arrays: Mapping[str, np.ndarray]
    source: str
    indices: np.ndarray  # which rows of the source were taken, for labels and reports
    source_size: int  # rows in the source before sampling
    batch_axes: Mapping[str, int | None] = field(default_factory=dict)
    stacked: frozenset[str] = frozenset()
    max_batch: int | None = None
    steps: int = 1
    states: Mapping[str, str] = field(default_factory=dict)  # output -> input fed back
    initial_states: Mapping[str, np.ndarray] = field(default_factory=dict)

    def axis(self, name: str) -> int | None:
        """The batch axis of input `name` (None: constant or stacked)."""
        return None if name in self.stacked else self.batch_axes.get(name, 0)

    @property
    def size(self) -> int:
        """Number of samples (steps, for sequences)."""
        for name, array in self.arrays.items():
            if name in self.stacked:
                return int(array.shape[0])
            axis = self.axis(name)
            if axis is not None:
                return int(array.shape[axis])
        return 1

    @property
    def sequences(self) -> int:
        """Number of sequences (equal to `size` for data without state)."""
        return self.size // self.steps

    @property
    def stateful(self) -> bool:
        """True when outputs feed back as inputs: the data must run as sequences."""
        return bool(self.states)

    def run_batch(self, batch_size: int) -> int:
        """The largest batch a run may take, at most `batch_size`."""
        limit = 1 if self.stacked else (self.max_batch or batch_size)
        return max(1, min(batch_size, limit))

    def feeds(self, rows: np.ndarray | slice) -> dict[str, np.ndarray]:
        """The feeds of the given sample rows (constants as they are)."""
        feeds = {}
        for name, array in self.arrays.items():
            if name in self.stacked:
                index = rows.start if isinstance(rows, slice) else int(np.asarray(rows).ravel()[0])
                feeds[name] = array[index]
                continue
            axis = self.axis(name)
            if axis is None:
                feeds[name] = array
            elif isinstance(rows, slice):
                feeds[name] = array[(slice(None),) * axis + (rows,)]
            else:
                feeds[name] = np.take(array, rows, axis=axis)
        return feeds

    def batches(self, batch_size: int) -> Iterator[dict[str, np.ndarray]]:
        """Yield feeds of at most `batch_size` samples, in order (fewer when the model cannot batch).

        Raises:
            DataError: the data is stateful (sequences run through `converters.runner`).
        """
        if self.stateful:
            raise DataError(
                f"{self.source}: stateful data runs as sequences; unroll it with converters.runner.unroll"
            )
        size = self.run_batch(batch_size)
        for start in range(0, self.size, size):
            yield self.feeds(slice(start, min(start + size, self.size)))

    def samples(self) -> Iterator[dict[str, np.ndarray]]:
        """Yield one-sample feeds (batch dimension kept)."""
        return self.batches(1)

    def take(self, count: int) -> Dataset:
        """The first `count` samples (whole sequences for stateful data) as a dataset of their own."""
        count = max(1, min(count, self.size))
        if self.stateful:
            count = max(1, count // self.steps) * self.steps
        arrays = {}
        for name, array in self.arrays.items():
            axis = self.axis(name)
            if name in self.stacked:
                arrays[name] = array[:count]
            elif axis is None:
                arrays[name] = array
            else:
                arrays[name] = array[(slice(None),) * axis + (slice(0, count),)]
        initial = {
            name: a[(slice(None),) * ax + (slice(0, count // self.steps),)]
            if (ax := self.axis(name)) is not None
            else a
            for name, a in self.initial_states.items()
        }
        return replace(self, arrays=arrays, indices=self.indices[:count], initial_states=initial)


def load_dataset(
    path: str | Path,
    inputs: tuple[TensorInfo, ...],
    *,
    max_samples: int | None = 256,
    seed: int = 0,
    preprocess: str | Path | None = None,
    signature: Signature | None = None,
    outputs: tuple[TensorInfo, ...] = (),
) -> Dataset:
    """Read DATA for a model with the given inputs.

    Args:
        path: `.npy` (single-input models), `.npz` (one array per input name) or a folder of images.
        inputs: the model's input tensors (names, shapes, dtypes).
        max_samples: sample at most this many rows (steps of whole sequences for stateful data),
            deterministically from `seed`; None keeps all.
        seed: seed of the sampling permutation.
        preprocess: preprocessing spec (JSON) used to read a folder of images.
        signature: declared batch axes and state pairs (the rest is inferred from the model).
        outputs: the model's output tensors (their dim names help find the batch axis; states are checked).

    Raises:
        DataError: the file is missing or unreadable, or its arrays do not fit the model.
    """
    path = Path(path)
    signature = signature or Signature()
    axes = resolve_batch_axes(inputs, outputs, signature)
    state_inputs = set(signature.states.values())
    if not path.exists():
        raise DataError(f"{path}: no such file or folder; pass a .npy, .npz or a folder of images")
    if path.is_dir():
        arrays = _read_image_folder(path, inputs, preprocess)
    elif path.suffix.lower() == ".npy":
        arrays = _read_npy(path, tuple(i for i in inputs if i.name not in state_inputs))
    elif path.suffix.lower() == ".npz":
        arrays = _read_npz(path, inputs, state_inputs)
    else:
        raise DataError(
            f"{path}: unsupported data file {path.suffix!r}; use .npy, .npz or a folder of images"
        )
    if state_inputs:
        return _load_sequences(path, inputs, axes, signature, arrays, max_samples, seed)
    fitted: dict[str, np.ndarray] = {}
    kinds: dict[str, str] = {}
    for info in inputs:
        fitted[info.name], kinds[info.name] = _fit(path, info, axes[info.name], arrays[info.name])
    counts = {
        name: (a.shape[0] if kinds[name] == "stacked" else a.shape[axes[name]])  # type: ignore[index]
        for name, a in fitted.items()
        if kinds[name] in ("stacked", "batched")
    }
    if len(set(counts.values())) > 1:
        raise DataError(f"{path}: inputs have different sample counts {counts}; give each the same count")
    total = next(iter(counts.values()), 1)
    if total == 0:
        raise DataError(f"{path}: holds 0 samples; give at least {MIN_CALIBRATION_SAMPLES}")
    for info in inputs:
        if kinds[info.name] == "broadcast":
            fitted[info.name] = _broadcast(path, info, axes[info.name], fitted[info.name], total)
            kinds[info.name] = "batched"
    stacked = frozenset(n for n, k in kinds.items() if k == "stacked")
    batch_axes = {n: (None if k in ("stacked", "constant") else axes[n]) for n, k in kinds.items()}
    indices = np.arange(total)
    if max_samples is not None and total > max_samples:
        indices = np.sort(np.random.default_rng(seed).permutation(total)[:max_samples])
    data = Dataset(
        arrays=fitted,
        source=str(path),
        indices=np.arange(total),
        source_size=int(total),
        batch_axes=batch_axes,
        stacked=stacked,
        max_batch=_max_batch(inputs, batch_axes),
    )
    if len(indices) == total:
        return data
    return replace(data, arrays=_take_rows(data, indices), indices=indices)


def _take_rows(data: Dataset, rows: np.ndarray) -> dict[str, np.ndarray]:
    arrays = {}
    for name, array in data.arrays.items():
        axis = data.axis(name)
        if name in data.stacked:
            arrays[name] = array[rows]
        elif axis is None:
            arrays[name] = array
        else:
            arrays[name] = np.take(array, rows, axis=axis)
    return arrays


def _max_batch(inputs: tuple[TensorInfo, ...], axes: Mapping[str, int | None]) -> int | None:
    fixed = [
        info.shape[axis]
        for info in inputs
        if (axis := axes.get(info.name)) is not None and info.shape[axis] is not None
    ]
    return min(int(d) for d in fixed) if fixed else None  # type: ignore[arg-type]


def _load_sequences(
    path: Path,
    inputs: tuple[TensorInfo, ...],
    axes: Mapping[str, int | None],
    signature: Signature,
    arrays: Mapping[str, np.ndarray],
    max_samples: int | None,
    seed: int,
) -> Dataset:
    state_inputs = set(signature.states.values())
    fitted: dict[str, np.ndarray] = {}
    batch_axes: dict[str, int | None] = {}
    layout: dict[str, tuple[int, int]] = {}
    for info in inputs:
        if info.name in state_inputs:
            continue
        axis = axes[info.name]
        array = _cast(path, info, arrays[info.name])
        sample = sample_shape(info, axis)
        if axis is None or array.ndim == 0:
            fitted[info.name], kind = _fit(path, info, axis, array)
            if kind == "stacked":
                raise DataError(
                    f"{path}: input {info.name!r} has no batch axis; in sequence data give it its exact "
                    f"shape {describe(info, None)} (the same for every step)"
                )
            batch_axes[info.name] = None if kind == "constant" else axis
            continue
        if array.ndim != len(info.shape) + 1 or not _matches(array.shape[2:], sample):
            seq = describe(info, None)[1:-1]
            dims = ", ".join("?" if d is None else str(d) for d in sample)
            raise DataError(
                f"{path}: input {info.name!r} has shape {array.shape}; stateful data holds sequences, "
                f"(S, T{', ' + dims if dims else ''}) = S sequences of T steps of a {seq} input"
            )
        layout[info.name] = (int(array.shape[0]), int(array.shape[1]))
        flat = array.reshape(array.shape[0] * array.shape[1], *array.shape[2:])
        fitted[info.name] = np.moveaxis(flat, 0, axis)
        batch_axes[info.name] = axis
    if len(set(layout.values())) > 1:
        raise DataError(
            f"{path}: sequence inputs have different (sequences, steps) {layout}; give each the same"
        )
    sequences, steps = next(iter(layout.values()), (1, 1))
    if sequences * steps == 0:
        raise DataError(f"{path}: holds 0 steps; give at least one sequence of one step")
    initial: dict[str, np.ndarray] = {}
    for info in inputs:
        if info.name not in state_inputs or info.name not in arrays:
            continue
        axis = axes[info.name]
        array = _cast(path, info, arrays[info.name])
        if axis is None and _matches(array.shape, info.shape):
            initial[info.name] = array
        elif (
            axis is not None
            and array.ndim == len(info.shape)
            and _matches(array.shape[1:], sample_shape(info, axis))
            and array.shape[0] == sequences
        ):
            initial[info.name] = np.moveaxis(array, 0, axis)
        else:
            raise DataError(
                f"{path}: initial state {info.name!r} has shape {array.shape}; give one state per "
                f"sequence, {describe(info, axis, 'S')} with S on the batch axis moved first: "
                f"({sequences}, {', '.join(str(d) for d in sample_shape(info, axis))}), or leave it out "
                "to start at zeros"
            )
    batch_axes.update({name: axes[name] for name in state_inputs})
    data = Dataset(
        arrays=fitted,
        source=str(path),
        indices=np.arange(sequences * steps),
        source_size=sequences * steps,
        batch_axes=batch_axes,
        max_batch=_max_batch(inputs, batch_axes),
        steps=steps,
        states=dict(signature.states),
        initial_states=initial,
    )
    if any(axes[name] is None for name in state_inputs):
        data = replace(data, max_batch=1)  # a state without a batch axis: one sequence per run
    if max_samples is None or sequences * steps <= max_samples:
        return data
    keep = max(1, max_samples // steps)
    chosen = np.sort(np.random.default_rng(seed).permutation(sequences)[:keep])
    rows = (chosen[:, None] * steps + np.arange(steps)[None, :]).ravel()
    arrays_taken = _take_rows(data, rows)
    initial_taken = {
        name: np.take(a, chosen, axis=ax) if (ax := batch_axes[name]) is not None else a
        for name, a in initial.items()
    }
    return replace(data, arrays=arrays_taken, indices=rows, initial_states=initial_taken)


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


def _read_npz(path: Path, inputs: tuple[TensorInfo, ...], optional: set[str]) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
        raise DataError(f"{path}: not a readable .npz archive ({e}); save it with numpy.savez") from e
    expected = [i.name for i in inputs]
    if len(inputs) == 1 and len(arrays) == 1 and expected[0] not in arrays:
        return {expected[0]: next(iter(arrays.values()))}
    missing = [n for n in expected if n not in arrays and n not in optional]
    if missing:
        raise with_hints(
            DataError(
                f"{path}: no array for model input(s) {missing}; the archive holds {sorted(arrays)}. "
                f"Name the arrays after the model inputs {expected}"
            ),
            {"--state": "a state fed back from an output may be left out: declare --state OUTPUT=INPUT"},
        )
    return arrays


def _read_image_folder(
    path: Path, inputs: tuple[TensorInfo, ...], preprocess: str | Path | None
) -> dict[str, np.ndarray]:
    from device_runtime.errors import DeviceRuntimeError
    from device_runtime.preprocess import ImageInputSpec, list_images, load_spec, preprocess_images

    if preprocess is None:
        raise with_hints(
            DataError(f"{path}: a folder of images needs a preprocessing spec to become tensors"),
            {"--preprocess": "pass --preprocess SPEC.json"},
        )
    try:
        spec = load_spec(preprocess)
        images = list_images(path)
        image_inputs = [s for s in spec.inputs if isinstance(s, ImageInputSpec)]
        if len(image_inputs) != 1 or len(inputs) != 1:
            names = ", ".join(repr(i.name) for i in inputs)
            fix = (
                "this model takes tensors: pass its data as .npy (one input) or .npz (one array per input)"
                if not image_inputs
                else "pass an .npz with one array per input name"
            )
            raise DataError(
                f"{path}: a folder of images feeds a model with exactly one image input; the model has "
                f"{len(inputs)} input(s) ({names}) and the spec {preprocess} has {len(image_inputs)} image "
                f"input(s); {fix}"
            )
        return {inputs[0].name: preprocess_images(image_inputs[0], images)}
    except DeviceRuntimeError as e:
        raise DataError(str(e)) from e


def _cast(path: Path, info: TensorInfo, array: np.ndarray) -> np.ndarray:
    """Check the dtype and values, and cast to the model's dtype where no information is lost."""
    if array.dtype.kind not in "biuf":
        raise DataError(
            f"{path}: input {info.name!r} has dtype {array.dtype}; give numeric data ({info.dtype})"
        )
    if array.dtype.kind == "f" and not np.all(np.isfinite(array)):
        raise DataError(f"{path}: input {info.name!r} contains NaN or infinite values; clean the data")
    try:
        target = np.dtype(info.dtype)
    except TypeError:
        return array
    if array.dtype == target or target.kind not in "biuf":
        return array
    if target.kind == "f" and array.dtype.kind in "biuf":
        return array.astype(target)
    if target.kind == "b":
        if array.dtype.kind in "iu" and np.all((array == 0) | (array == 1)):
            return array.astype(bool)
    elif array.dtype.kind in "biu":
        limits = np.iinfo(target)
        if array.size == 0 or (int(array.min()) >= limits.min and int(array.max()) <= limits.max):
            return array.astype(target)
    raise DataError(
        f"{path}: input {info.name!r} has dtype {array.dtype}, the model takes {target}; convert it"
    )


def _fit(path: Path, info: TensorInfo, axis: int | None, array: np.ndarray) -> tuple[np.ndarray, str]:
    """Check one input's array; return it with its kind: batched, constant, stacked or broadcast."""
    array = _cast(path, info, array)
    rank = len(info.shape)
    if axis is None:
        if _matches(array.shape, info.shape):
            return array, "constant"
        if array.ndim == rank + 1 and _matches(array.shape[1:], info.shape):
            return array, "stacked"
        raise with_hints(
            DataError(
                f"{path}: input {info.name!r} has shape {array.shape}; it has no batch axis, so give its "
                f"exact shape {describe(info, None)} (the same for every sample) or "
                f"(N, {describe(info, None)[1:-1].rstrip(',')}) (one per sample)"
            ),
            {"--batch-axis": f"if it has one, declare it with --batch-axis {info.name}=AXIS"},
        )
    sample = sample_shape(info, axis)
    if array.ndim == 0:
        if any(d is None for d in sample):
            raise DataError(
                f"{path}: input {info.name!r} is a 0-d array, but a sample of it has dynamic dimensions "
                f"{describe(info, axis)}; give the full array"
            )
        return array, "broadcast"
    if array.ndim == rank - 1 and _matches(array.shape, sample):
        raise with_hints(
            DataError(
                f"{path}: input {info.name!r} has shape {array.shape}, which looks like one sample; "
                f"add the batch axis (expected {describe(info, axis)})"
            ),
            {"--batch-axis": f"if it has none, declare --batch-axis {info.name}=none"},
        )
    batch_dims = array.shape[:axis] + array.shape[axis + 1 :] if array.ndim == rank else ()
    if array.ndim != rank or not _matches(batch_dims, sample):
        raise with_hints(
            DataError(
                f"{path}: input {info.name!r} has shape {array.shape}, the model expects "
                f"{describe(info, axis)}"
            ),
            {
                "--batch-axis": f"declare another batch axis with --batch-axis {info.name}=AXIS|none",
                **(
                    {"--state": "sequences of a stateful model need its state pairs: --state OUTPUT=INPUT"}
                    if array.ndim == rank + 1
                    else {}
                ),
            },
        )
    return array, "batched"


def _broadcast(path: Path, info: TensorInfo, axis: int | None, value: np.ndarray, count: int) -> np.ndarray:
    """A 0-d value as `count` samples of the input's static sample shape."""
    assert axis is not None
    shape = [int(d) if d is not None else count for d in info.shape]
    shape[axis] = count
    return np.ascontiguousarray(np.broadcast_to(value, shape))


def _matches(shape: tuple[int, ...], expected: tuple[int | None, ...]) -> bool:
    return len(shape) == len(expected) and all(
        e is None or s == e for s, e in zip(shape, expected, strict=True)
    )
