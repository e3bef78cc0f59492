"""Start-up recovery of a runtime's store: whatever instant the last process died at, serve a verified model.

`Runtime` runs these steps when it opens a store, in this order:

1. open the telemetry queue, setting an unreadable database aside (`open_telemetry`);
2. remove the half-finished installs of a process killed before its pointer swap
   (`remove_unfinished_installs`);
3. read `state.json`, or rebuild it from whichever slots verify (`rebuild_state`);
4. an in-flight marker naming the release in trial means the process died during an inference: the runtime
   records a crash and a strike (`died_in_trial_inference` reads and removes the marker);
5. re-verify the active and previous slots, dropping those that no longer verify and falling back to the
   previous model when the active one is lost (`verify_slots`).

Verifying a slot is the runtime's own (it also records telemetry and remembers the manifest for loading), so
the steps that need it take it as `verify`: a slot name to its record, or None when it does not verify.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from device_runtime.config import RuntimeConfig
from device_runtime.state import SlotRecord, State
from device_runtime.telemetry import TelemetryQueue

__all__ = [
    "SlotVerifier",
    "died_in_trial_inference",
    "open_telemetry",
    "rebuild_state",
    "remove_unfinished_installs",
    "verify_slots",
]

SlotVerifier = Callable[[str], SlotRecord | None]


def open_telemetry(path: Path, config: RuntimeConfig) -> TelemetryQueue:
    """The telemetry queue at `path`; an unreadable database is set aside, never a reason not to serve."""
    options: dict[str, Any] = {
        "max_events": config.telemetry_max_events,
        "clock": config.clock,
    }
    try:
        return TelemetryQueue(path, **options)
    except Exception as e:  # not a database, torn, unwritable: start a fresh queue
        problem = f"{type(e).__name__}: {e}"[:300]
    for suffix in ("", "-wal", "-shm"):
        with contextlib.suppress(OSError):
            os.replace(path.with_name(path.name + suffix), path.with_name(f"{path.name}.corrupt{suffix}"))
    try:
        queue = TelemetryQueue(path, **options)
    except Exception:
        queue = TelemetryQueue(Path(":memory:"), **options)  # nothing persists, inference still runs
    queue.failures += 1
    queue.record("telemetry-reset", detail=problem)
    return queue


def remove_unfinished_installs(slots_dir: Path) -> None:
    """Remove the `.incoming-*` directories of installs killed before their swap."""
    for leftover in slots_dir.glob(".incoming-*"):
        shutil.rmtree(leftover, ignore_errors=True)


def rebuild_state(verify: SlotVerifier, now: float) -> State:
    """No readable state.json: trust whichever slots verify, newest release first."""
    found = []
    for slot in ("a", "b"):
        record = verify(slot)
        if record is not None:
            found.append(record)
    found.sort(key=lambda r: r.release_counter, reverse=True)
    state = State(active=found[0] if found else None, previous=found[1] if len(found) > 1 else None)
    return state.with_event(now, "state-rebuilt", slots=[r.slot for r in found])


def died_in_trial_inference(marker: Path, state: State) -> bool:
    """Consume the in-flight marker; True when it names the active release and that release is in trial."""
    try:
        content = json.loads(marker.read_bytes())
    except (OSError, ValueError):
        return False
    with contextlib.suppress(FileNotFoundError):
        marker.unlink()
    return not (
        state.active is None or state.trial is None or content.get("bundle_id") != state.active.bundle_id
    )


def verify_slots(state: State, verify: SlotVerifier, now: float) -> State:
    """Drop the active or previous slot when it no longer verifies as the same bundle; fall back if needed."""
    for label in ("active", "previous"):
        record: SlotRecord | None = getattr(state, label)
        if record is None:
            continue
        current = verify(record.slot)
        if current is None or current.bundle_id != record.bundle_id:
            state = replace(state, active=None) if label == "active" else replace(state, previous=None)
            state = state.with_event(now, "slot-lost", slot=record.slot, role=label)
    if state.active is None and state.previous is not None:
        state = replace(state, active=state.previous, previous=None, trial=None).with_event(
            now, "fell-back", to=state.previous.version
        )
    return state
