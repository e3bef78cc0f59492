"""Golden vectors within a byte budget: choose samples, run them, store them compactly.

Golden bytes go over the air to every device, so they are bounded: at most `samples` samples and `budget`
bytes, never fewer than one sample (a bundle without a self-test check is refused by devices).

- Float inputs are rounded to float16 before they are run, when float16 holds them within
  `STORAGE_MIN_SQNR_DB`: the stored float16 values are then exactly what the expected outputs were computed
  from, so the check stays exact about its inputs while the files halve.
- With a folder of images (and a single image input), the images themselves are stored: the device runs its
  own preprocessing on them, so the self-test covers preprocessing, and only a selection of the
  preprocessed tensor's elements is stored to check that preprocessing.
- Outputs are stored as float16 when that keeps them within `STORAGE_MIN_SQNR_DB` (`golden.compact`).
- Samples are kept while they fit the budget; when even one does not, the first sample's outputs are
  stored as a spread selection of elements (`golden.selection_indices`), at least `MIN_SELECTED` each.

Every sample runs alone (batch 1), so models with a fixed batch of 1 work and memory stays that of one
inference.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from device_runtime.engines import Engine
from device_runtime.golden import STORAGE_MIN_SQNR_DB, compact, golden_files, sqnr_db
from edgekit.errors import EdgekitError

__all__ = ["MIN_SELECTED", "Golden", "GoldenDataError", "make_golden"]

MIN_SELECTED = 1024  # elements per output kept when a sample must be cut down to a selection
INPUT_SELECTED = 4096  # elements of a preprocessed image input kept to check the device's preprocessing
_OVERHEAD = 4096  # golden.json and .npy headers, counted against the budget


class GoldenDataError(EdgekitError):
    """Golden inputs cannot be made without data from the user (the message says what to pass)."""


@dataclass(frozen=True)
class Golden:
    """The golden/ files, the figures shown by `bundle --json` and `inspect`, and notes for the user."""

    files: dict[str, bytes]
    figures: dict[str, Any]
    notes: list[str] = field(default_factory=list)


def _round_inputs(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Float32 inputs as float16 where float16 represents them within STORAGE_MIN_SQNR_DB."""
    stored = {}
    for name, array in feeds.items():
        values = np.asarray(array)
        if values.dtype == np.float32 and np.all(np.isfinite(values)) and np.max(np.abs(values)) < 65504:
            half = values.astype(np.float16)
            if sqnr_db(values, half) >= STORAGE_MIN_SQNR_DB:
                stored[name] = half
                continue
        stored[name] = values
    return stored


def _per_run(data: Any, engine: Engine, samples: int) -> tuple[dict[str, np.ndarray], bool]:
    """Up to `samples` one-sample feeds, each exactly as one run takes it, stacked on a new golden axis.

    Returns (feeds, runs): when every input batches on axis 0 the feeds are concatenated there (the
    "batch" layout older devices read); otherwise (0-d scalars, state batched on axis 1, stateful
    sequences unrolled step by step) they are stacked on a new axis 0 (the "runs" layout).
    """
    from converters.runner import unroll

    dataset = unroll(engine, data.take(samples))
    count = min(samples, dataset.size)
    runs = [dataset.feeds(slice(index, index + 1)) for index in range(count)]
    if all(dataset.axis(name) == 0 for name in dataset.arrays):
        return {name: np.concatenate([run[name] for run in runs]) for name in runs[0]}, False
    return {name: np.stack([np.asarray(run[name]) for run in runs]) for name in runs[0]}, True


def _candidates(
    data: Path | None, engine: Engine, spec: Any, samples: int
) -> tuple[dict[str, np.ndarray], list[tuple[str, bytes]], bool]:
    from converters.data import load_dataset
    from converters.export import sample_inputs

    if data is None:
        dynamic = [i.name for i in engine.inputs if any(d is None for d in i.shape[1:])]
        if dynamic:
            raise GoldenDataError(
                f"input(s) {dynamic} have dynamic dimensions, so no random golden inputs can be made; pass "
                "--golden DATA (.npy/.npz of real inputs, or a folder of images with --preprocess)"
            )
        return sample_inputs(engine.inputs, count=samples, seed=0), [], False
    if not data.is_dir():
        dataset = load_dataset(data, engine.inputs, max_samples=samples, seed=0, outputs=engine.outputs)
        feeds, runs = _per_run(dataset, engine, samples)
        return feeds, [], runs
    from device_runtime.preprocess import list_images

    chosen = list_images(data)[:samples]
    images = [(p.suffix.lower(), p.read_bytes()) for p in chosen]
    spec_path = Path(tempfile.mkdtemp(prefix="edgekit-spec-")) / "spec.json"
    spec_path.write_bytes(spec.to_json())
    try:
        dataset = load_dataset(data, engine.inputs, max_samples=None, preprocess=spec_path)
    finally:
        shutil.rmtree(spec_path.parent, ignore_errors=True)
    return {k: v[: len(chosen)] for k, v in dataset.arrays.items()}, images, False


def _run_each(engine: Engine, feeds: dict[str, np.ndarray], runs: bool) -> dict[str, np.ndarray]:
    """Run every sample alone; outputs in the same layout as the feeds (see `_per_run`)."""
    count = int(next(iter(feeds.values())).shape[0])
    results = []
    for index in range(count):
        one = {
            # np.require, not ascontiguousarray: the latter turns a 0-d feed into shape (1,)
            k: np.require(v[index] if runs else v[index : index + 1], requirements="C")
            for k, v in feeds.items()
        }
        results.append(engine.run(one))
    join = np.stack if runs else np.concatenate
    return {name: join([np.asarray(r[name]) for r in results]) for name in results[0]}


def _per_sample(array: np.ndarray) -> int:
    return int(array.nbytes // max(1, array.shape[0]))


def make_golden(data: Path | None, engine: Engine, spec: Any, *, samples: int, budget: int) -> Golden:
    """Golden vectors for `engine` from `data` (None: seeded random tensors) within `samples` and `budget`."""
    feeds, images, runs = _candidates(data, engine, spec, samples)
    offered = int(next(iter(feeds.values())).shape[0]) if feeds else 0
    from_images = bool(images) and len(feeds) == 1 and len(images) == offered
    stored_inputs = feeds if from_images else _round_inputs(feeds)
    run_feeds = {
        k: (v.astype(feeds[k].dtype) if v.dtype != feeds[k].dtype else v) for k, v in stored_inputs.items()
    }
    outputs = {name: compact(value) for name, value in _run_each(engine, run_feeds, runs).items()}

    selected_inputs = {}
    per_sample = []
    for index in range(offered):
        if from_images:
            size = images[index][1].__len__()
            size += sum(4 * min(INPUT_SELECTED, int(v[0].size)) for v in stored_inputs.values())
        else:
            size = sum(_per_sample(v) for v in stored_inputs.values())
        per_sample.append(size + sum(_per_sample(v) for v in outputs.values()))
    if from_images:
        selected_inputs = {k: min(INPUT_SELECTED, int(v[0].size)) for k, v in stored_inputs.items()}
        stored_inputs = {k: v.astype(np.float32) for k, v in stored_inputs.items()}
    kept = 0
    used = _OVERHEAD
    while kept < offered and used + per_sample[kept] <= budget:
        used += per_sample[kept]
        kept += 1
    notes: list[str] = []
    selected_outputs: dict[str, int] = {}
    if kept == 0:
        kept = 1
        fixed = per_sample[0] - sum(_per_sample(v) for v in outputs.values())
        room = max(0, budget - _OVERHEAD - fixed)
        total_elements = sum(int(v[0].size) for v in outputs.values())
        for name, value in outputs.items():
            share = room * int(value[0].size) / max(1, total_elements)
            count = max(MIN_SELECTED, int(share // value.dtype.itemsize))
            if count < value[0].size:
                selected_outputs[name] = count
        if selected_outputs:
            notes.append(
                f"one golden sample ({per_sample[0]:,} bytes) exceeds the golden budget ({budget:,} bytes): "
                f"outputs {sorted(selected_outputs)} are checked on a spread selection of elements; "
                "raise --golden-budget to store them whole"
            )
    if kept < offered:
        notes.append(
            f"kept {kept} of {offered} golden samples to stay within the {budget:,}-byte golden budget "
            "(--golden-budget, --golden-samples)"
        )
    files = golden_files(
        {k: v[:kept] for k, v in stored_inputs.items()},
        {k: v[:kept] for k, v in outputs.items()},
        images=images[:kept] if from_images else (),
        selected_inputs=selected_inputs,
        selected_outputs=selected_outputs,
        runs=runs,
    )
    stored_bytes = sum(len(v) for v in files.values())
    figures: dict[str, Any] = {
        "samples": kept,
        "samples_offered": offered,
        "budget_bytes": budget,
        "bytes": stored_bytes,
        "over_budget": stored_bytes > budget,
        "images": kept if from_images else 0,
        "inputs": {
            k: {"dtype": str(v.dtype), "selected": selected_inputs.get(k)} for k, v in stored_inputs.items()
        },
        "outputs": {
            k: {"dtype": str(v.dtype), "selected": selected_outputs.get(k)} for k, v in outputs.items()
        },
    }
    if stored_bytes > budget:
        notes.append(
            f"golden vectors take {stored_bytes:,} bytes, over the {budget:,}-byte budget: one sample's "
            "inputs alone do not fit (the self-test keeps one sample whole)"
        )
    files = golden_files(
        {k: v[:kept] for k, v in stored_inputs.items()},
        {k: v[:kept] for k, v in outputs.items()},
        images=images[:kept] if from_images else (),
        selected_inputs=selected_inputs,
        selected_outputs=selected_outputs,
        storage={k: figures[k] for k in ("samples_offered", "budget_bytes", "bytes", "inputs", "outputs")},
        runs=runs,
    )
    # Reported: the members as stored, golden.json's storage block included (what `edgekit inspect` sums).
    figures["bytes"] = sum(len(v) for v in files.values())
    return Golden(files, figures, notes)
