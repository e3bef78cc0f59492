"""Run a dataset through an engine: batches on each input's own batch axis, sequences with state fed back.

`run_model` is what parity, quantization and the export check use to get a model's outputs on a whole
dataset. Samples are grouped into runs of at most `batch_size` (one sample per run when the model has a
fixed batch of one, or an input without a batch axis holds one value per sample), and each output is
concatenated on its own batch axis, so `stateN [2, B, 128]` comes back as `[2, N, 128]`.

An output's batch axis is measured rather than guessed when it can be: the first run takes one sample
and a later run several, and the axis whose length follows the sample count is the batch axis. An
output that does not follow the sample count at all is recomputed sample by sample and stacked on a new
axis 0. When every run has one sample, the graph's shapes decide (`converters.signature` rules).

Stateful data (`Dataset.states`) runs as sequences: every sequence starts from its initial state (zeros
unless the data gives one) and each step feeds the previous step's state outputs back. Outputs of every
step are returned, sequence-major on the batch axis, so parity sees the error accumulate through the
recurrence. `unroll` records every step's inputs, states included, as a dataset without state: what
calibration needs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np

from converters.data import Dataset
from converters.errors import DataError
from converters.progress import NullProgress, Progress
from converters.signature import batch_symbol, infer_batch_axis
from device_runtime.engines import Engine, TensorInfo
from device_runtime.feeds import run_feeds

__all__ = ["RunExecutor", "run_model", "unroll"]

# Executes planned engine calls somewhere else (e.g. an emulated arm64 device): (calls, steps per
# sequence, state output -> input) -> every call's outputs, in order (device_runtime.feeds.run_feeds).
RunExecutor = Callable[[list[dict[str, np.ndarray]], int, dict[str, str]], list[dict[str, np.ndarray]]]


@dataclass(frozen=True)
class _Run:
    """One engine call: how many samples it took, which step, its outputs."""

    count: int
    step: int
    outputs: dict[str, np.ndarray]


def run_model(
    engine: Engine,
    data: Dataset,
    *,
    batch_size: int = 64,
    progress: Progress | None = None,
    label: str = "run",
    executor: RunExecutor | None = None,
) -> dict[str, np.ndarray]:
    """Run every sample of `data` through `engine`; outputs concatenated on their own batch axes by name.

    `executor` runs the planned calls elsewhere (`engine` then only describes the model); default: here.

    Raises:
        DataError: a state cannot start at zeros (dynamic dims) and the data gives no initial state.
        EngineError: the engine refuses the feeds.
    """
    outputs, _ = _run(engine, data, batch_size, progress or NullProgress(), label, False, executor)
    return outputs


def unroll(
    engine: Engine, data: Dataset, *, batch_size: int = 64, progress: Progress | None = None
) -> Dataset:
    """Every step's feeds of stateful `data`, states from `engine`, as a dataset without state.

    Data without state is returned as it is.
    """
    if not data.stateful:
        return data
    _, recorded = _run(engine, data, batch_size, progress or NullProgress(), "unrolling sequences", True)
    assert recorded is not None
    return recorded


def _run(
    engine: Engine,
    data: Dataset,
    batch_size: int,
    progress: Progress,
    label: str,
    record: bool,
    executor: RunExecutor | None = None,
) -> tuple[dict[str, np.ndarray], Dataset | None]:
    size = data.run_batch(batch_size)
    fixed = data.max_batch is not None and data.max_batch > 1
    units = data.sequences if data.stateful else data.size
    if fixed and units % size:
        raise DataError(
            f"{data.source}: the model takes batches of exactly {size}, but the data holds {units} "
            f"{'sequences' if data.stateful else 'samples'}; give a multiple of {size}"
        )
    task = progress.task(label, data.size)
    try:
        guesses = _guessed_axes(engine, data)
        runs, feeds_log = _execute(engine, data, size, fixed, task.advance, record, executor)
        axes = _measured_axes(runs, guesses)
        if not fixed and any(axis is None for axis in axes.values()) and any(r.count > 1 for r in runs):
            # an output that does not follow the sample count: batching would change it
            runs, feeds_log = _execute(engine, data, 1, False, lambda _n: None, record, executor)
            axes = _measured_axes(runs, guesses)
    finally:
        task.close()
    outputs = {
        name: _assemble([r.outputs[name] for r in runs], runs, axes[name], data.steps) for name in axes
    }
    if not record:
        return outputs, None
    return outputs, _recorded_dataset(data, runs, feeds_log)


def _execute(
    engine: Engine,
    data: Dataset,
    size: int,
    fixed: bool,
    advance: Callable[[int], None],
    record: bool,
    executor: RunExecutor | None = None,
) -> tuple[list[_Run], list[dict[str, np.ndarray]]]:
    """All runs in order: sequence chunks × steps (step 0 only for data without state).

    The calls are planned here and executed by `executor` (default: `engine` in this process, through
    the device's own loop :func:`device_runtime.feeds.run_feeds`, which feeds the states back).
    """
    steps = data.steps if data.stateful else 1
    units = data.sequences if data.stateful else data.size
    plan: list[dict[str, np.ndarray]] = []
    counts: list[int] = []
    for start, stop in _chunks(units, size, fixed):
        states = _initial_states(engine, data, start, stop) if data.stateful else {}
        for step in range(steps):
            rows = np.arange(start, stop) * steps + step
            feeds = data.feeds(rows if data.stateful else slice(start, stop))
            if step == 0:
                feeds.update(states)
            plan.append(feeds)
            counts.append(stop - start)
    if executor is None:
        results = run_feeds(
            engine, plan, steps=steps, states=data.states, on_run=lambda i, _f, _o: advance(counts[i])
        )
    else:
        results = executor(plan, steps, dict(data.states))
        advance(sum(counts))
    runs = [
        _Run(count, index % steps, outputs)
        for index, (count, outputs) in enumerate(zip(counts, results, strict=True))
    ]
    feeds_log: list[dict[str, np.ndarray]] = []
    if record:  # what each call was fed, the states carried from the previous step included
        for index, feeds in enumerate(plan):
            given = dict(feeds)
            if index % steps:
                given.update({t: results[index - 1][o] for o, t in data.states.items()})
            feeds_log.append(given)
    return runs, feeds_log


def _chunks(units: int, size: int, fixed: bool) -> list[tuple[int, int]]:
    # First a run of one, so the output batch axes can be measured against a larger run.
    if fixed or size == 1 or units <= 1:
        return [(s, min(s + size, units)) for s in range(0, units, size)]
    return [(0, 1)] + [(s, min(s + size, units)) for s in range(1, units, size)]


def _initial_states(engine: Engine, data: Dataset, start: int, stop: int) -> dict[str, np.ndarray]:
    infos = {i.name: i for i in engine.inputs}
    states = {}
    for target in data.states.values():
        axis = data.axis(target)
        given = data.initial_states.get(target)
        if given is not None:
            states[target] = given if axis is None else np.take(given, np.arange(start, stop), axis=axis)
            continue
        info = infos[target]
        shape = [stop - start if a == axis else d for a, d in enumerate(info.shape)]
        if any(d is None for d in shape):
            raise DataError(
                f"{data.source}: state input {target!r} has dynamic dimensions {info.shape}, so it cannot "
                "start at zeros; give each sequence's initial state in the data under its name"
            )
        states[target] = np.zeros([int(d) for d in shape if d is not None], dtype=np.dtype(info.dtype))
    return states


def _guessed_axes(engine: Engine, data: Dataset) -> dict[str, int | None]:
    symbol = batch_symbol(engine.inputs, engine.outputs)
    fed_back = {output: data.axis(target) for output, target in data.states.items()}
    return {
        o.name: fed_back[o.name] if o.name in fed_back else _output_axis(o, symbol) for o in engine.outputs
    }


def _output_axis(info: TensorInfo, symbol: str | None) -> int | None:
    if not info.shape:
        return None
    return infer_batch_axis(info, symbol)


def _measured_axes(runs: list[_Run], guesses: dict[str, int | None]) -> dict[str, int | None]:
    """Each output's batch axis: the axis that follows the run's sample count, else the guess."""
    single = next((r for r in runs if r.count == 1), None)
    multi = next((r for r in runs if r.count > 1 and r.step == (single.step if single else 0)), None)
    axes: dict[str, int | None] = {}
    for name, guess in guesses.items():
        if single is None or multi is None:
            axes[name] = guess if _consistent(runs, name, guess) else None
            continue
        one, many = single.outputs[name].shape, multi.outputs[name].shape
        candidates = [
            a
            for a in range(min(len(one), len(many)))
            if len(one) == len(many) and one[a] == 1 and many[a] == multi.count
        ]
        if not candidates:
            axes[name] = None
        elif guess in candidates:
            axes[name] = guess
        else:
            axes[name] = candidates[0]
    return axes


def _consistent(runs: list[_Run], name: str, axis: int | None) -> bool:
    if axis is None:
        return False
    return all(r.outputs[name].ndim > axis and r.outputs[name].shape[axis] == r.count for r in runs)


def _assemble(parts: list[np.ndarray], runs: list[_Run], axis: int | None, steps: int) -> np.ndarray:
    """Outputs of all runs in sample order (sequence-major for sequences) on `axis` (None: a new axis 0)."""
    if axis is None:
        if steps > 1 and any(r.count > 1 for r in runs):
            raise DataError("an output without a batch axis cannot be split into sequences run together")
        return np.stack(parts, axis=0)
    if steps == 1:
        return np.concatenate(parts, axis=axis)
    chunks = []
    for first in range(0, len(parts), steps):
        group = parts[first : first + steps]  # one chunk of sequences, steps in order
        stacked = np.stack(group, axis=axis + 1)  # (..., sequences, steps, ...)
        shape = list(stacked.shape)
        shape[axis : axis + 2] = [shape[axis] * shape[axis + 1]]
        chunks.append(stacked.reshape(shape))
    return np.concatenate(chunks, axis=axis)


def _recorded_dataset(data: Dataset, runs: list[_Run], feeds_log: list[dict[str, np.ndarray]]) -> Dataset:
    arrays: dict[str, np.ndarray] = {}
    batch_axes: dict[str, int | None] = {}
    stacked: set[str] = set()
    for name in feeds_log[0]:
        axis = data.axis(name)
        if axis is None and name not in data.states.values():
            arrays[name], batch_axes[name] = data.arrays[name], None
            continue
        parts = [feeds[name] for feeds in feeds_log]
        if axis is None:  # a fixed-size state: one value per step
            arrays[name], batch_axes[name] = np.stack(parts, axis=0), None
            stacked.add(name)
        else:
            arrays[name], batch_axes[name] = _assemble(parts, runs, axis, data.steps), axis
    return replace(
        data,
        arrays=arrays,
        batch_axes=batch_axes,
        stacked=frozenset(stacked),
        steps=1,
        states={},
        initial_states={},
    )
