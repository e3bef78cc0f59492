"""Run a list of feeds through an engine, state outputs fed back within each sequence; and their files.

This is the one loop that executes a planned list of engine calls, on the host (parity, quantization)
and on a device (``python -m device_runtime run-model``), so a model measured through the emulated arm64
device is executed exactly as on x86. The host plans the calls (which samples go together, which steps
follow which); this module only executes them.

Runs come in consecutive groups of ``steps`` calls, one group per chunk of sequences; within a group the
outputs named in ``states`` (output name -> input name) replace that input of the next call, so the
recurrence runs on the engine's own state. The first call of a group takes its state from its feeds.

Files (``.npz``): run ``i``'s tensor ``name`` is stored under ``"i/name"``; a file whose keys hold no
``/`` is one run keyed by tensor name (what a person writes by hand on a device).
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np

from device_runtime.engines import Engine
from device_runtime.errors import InputError
from signing.atomic import atomic_write

__all__ = ["load_runs", "run_feeds", "run_model_argv", "save_runs"]

RUN_SEPARATOR = "/"
MAX_FEEDS_BYTES = 2 << 30  # uncompressed arrays one run-model call reads (a whole evaluation set fits)


def run_feeds(
    engine: Engine,
    runs: Sequence[Mapping[str, np.ndarray]],
    *,
    steps: int = 1,
    states: Mapping[str, str] | None = None,
    on_run: Callable[[int, dict[str, np.ndarray], dict[str, np.ndarray]], None] | None = None,
) -> list[dict[str, np.ndarray]]:
    """Every run's outputs, in order; ``on_run(index, feeds_given, outputs)`` after each call.

    Raises:
        InputError: ``steps`` < 1, the run count is not a multiple of ``steps``, or a state pair names an
            output or input the model lacks.
        EngineError: the engine refuses a feed.
    """
    states = dict(states or {})
    if steps < 1 or len(runs) % steps:
        raise InputError(f"{len(runs)} runs cannot be grouped into sequences of {steps} steps")
    outputs_known = {o.name for o in engine.outputs}
    inputs_known = {i.name for i in engine.inputs}
    for output, target in states.items():
        if output not in outputs_known or target not in inputs_known:
            raise InputError(
                f"state pair {output}={target}: the model's outputs are {sorted(outputs_known)} and its "
                f"inputs {sorted(inputs_known)}; name an output, then the input it feeds"
            )
    results: list[dict[str, np.ndarray]] = []
    carried: dict[str, np.ndarray] = {}
    for index, given in enumerate(runs):
        feeds = dict(given)
        if index % steps:
            feeds.update(carried)
        outputs = {name: np.asarray(value) for name, value in engine.run(feeds).items()}
        carried = {target: outputs[output] for output, target in states.items()}
        results.append(outputs)
        if on_run is not None:
            on_run(index, feeds, outputs)
    return results


def save_runs(path: str | Path, runs: Sequence[Mapping[str, np.ndarray]], *, keyed: bool = True) -> None:
    """Write runs to ``path`` (``.npz``, keys ``"i/name"``; one run by tensor name if not ``keyed``)
    atomically.
    """
    if not keyed and len(runs) == 1:
        arrays = {name: np.asarray(a) for name, a in runs[0].items()}
    else:
        arrays = {
            f"{i}{RUN_SEPARATOR}{name}": np.asarray(a)
            for i, run in enumerate(runs)
            for name, a in run.items()
        }
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)  # type: ignore[arg-type]
    atomic_write(path, buffer.getvalue())


def load_runs(path: str | Path) -> tuple[list[dict[str, np.ndarray]], bool]:
    """The runs stored in ``path`` and whether the file used run keys (False: one run by tensor name).

    Raises:
        InputError: not an ``.npz`` file, or run keys that are not ``"i/name"`` with i = 0, 1, ...
    """
    try:
        stored = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
        raise InputError(f"{path}: not a readable .npz file ({e})") from e
    if not isinstance(stored, np.lib.npyio.NpzFile):  # a .npy file loads as one bare array
        raise InputError(f"{path}: a single array, not an .npz file of named inputs (save with np.savez)")
    members = stored.zip.infolist() if stored.zip is not None else []
    total = sum(int(info.file_size) for info in members)
    if total > MAX_FEEDS_BYTES:
        stored.close()
        raise InputError(f"{path}: {total} bytes of arrays, more than the {MAX_FEEDS_BYTES} one call reads")
    try:
        with stored:
            arrays = {key: stored[key] for key in stored.files}
    except (ValueError, TypeError, OSError, EOFError, MemoryError, zipfile.BadZipFile) as e:
        raise InputError(f"{path}: an array could not be read ({type(e).__name__}: {e})") from e
    if not any(RUN_SEPARATOR in key for key in arrays):
        return [arrays], False
    runs: dict[int, dict[str, np.ndarray]] = {}
    for key, value in arrays.items():
        index, _, name = key.partition(RUN_SEPARATOR)
        if not (index.isascii() and index.isdigit()) or not name:
            raise InputError(f"{path}: key {key!r} is not 'RUN/NAME' with RUN a run number")
        runs.setdefault(int(index), {})[name] = value
    if sorted(runs) != list(range(len(runs))):
        raise InputError(f"{path}: run numbers must be 0..{len(runs) - 1} without gaps, got {sorted(runs)}")
    return [runs[i] for i in range(len(runs))], True


def run_model_argv(
    model: str, inputs: str, output: str, *, steps: int = 1, states: Mapping[str, str] | None = None
) -> list[str]:
    """The arguments of ``python -m device_runtime run-model`` that run `inputs` through `model` (paths as
    the device sees them): how a host asks a device to execute planned calls."""
    argv = ["run-model", model, "--inputs", inputs, "--output", output, "--steps", str(steps)]
    for out, target in (states or {}).items():
        argv += ["--state", f"{out}={target}"]
    return argv
