"""Start-up recovery of a runtime's store: whatever instant the last process died at, serve a verified model.

`Runtime` runs these steps when it opens a store, in this order:

1. open the telemetry queue, setting an unreadable database aside (`open_telemetry`);
2. remove the half-finished installs of a process killed before its pointer swap
   (`remove_unfinished_installs`);
3. read `state.json`, or rebuild it from whichever slots verify and were never reverted here
   (`rebuild_state`); then apply the reverted-release journal (`apply_reverted`): a release it names is never
   active, even when the `state.json` that recorded its revert was lost or never written;
4. a shadow in-flight marker means the process died while a shadow run (`device_runtime.shadow`) was in
   flight: the death is charged to the shadow bundle it names (a crash event and a shadow strike), never
   to the served model, and a trial marker of the same death is discarded (`died_in_shadow_run` reads and
   removes the markers). Otherwise an in-flight marker naming the release in trial means the process died
   during an inference: the runtime records a crash and a strike (`died_in_trial_inference` reads and
   removes it);
5. re-verify the active and previous slots, dropping those that no longer verify and falling back to the
   previous model when the active one is lost (`verify_slots`).

Verifying a slot is the runtime's own (it also records telemetry and remembers the manifest for loading), so
the steps that need it take it as `verify`: a slot name to its record, or None when it does not verify.

None of these steps needs to write: on a full disk the runtime keeps the recovered state in memory and
persists it later (`open_telemetry` falls back to an in-memory queue rather than setting a healthy database
aside because the disk is full).
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
from device_runtime.state import SlotRecord, State, merge_bad
from device_runtime.telemetry import TelemetryQueue

__all__ = [
    "SHADOW_MARKER_PREFIX",
    "SlotVerifier",
    "apply_reverted",
    "died_in_shadow_run",
    "died_in_trial_inference",
    "open_telemetry",
    "rebuild_state",
    "remove_unfinished_installs",
    "verify_slots",
]

SlotVerifier = Callable[[str], SlotRecord | None]
SHADOW_MARKER_PREFIX = "shadow-inflight"  # + "-<worker generation>" in the store: a shadow run in flight
_MAX_MARKER_BYTES = 4096  # bytes; a marker holds two bundle ids

# SQLite result codes (sqlite3.Error.sqlite_errorcode) that mean the file is not a usable database; any
# other failure (full disk, read-only, I/O, locked) says nothing against the file and never sets it aside.
_SQLITE_DAMAGED = frozenset({11, 26})  # SQLITE_CORRUPT, SQLITE_NOTADB


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
        damaged = getattr(e, "sqlite_errorcode", None) in _SQLITE_DAMAGED
    if not damaged:  # full disk, read-only, locked: the database may be fine; queue in memory this run
        queue = TelemetryQueue(Path(":memory:"), **options)
        queue.failures += 1
        queue.record("telemetry-reset", detail=problem)  # kind known to the telemetry contract
        return queue
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


def rebuild_state(verify: SlotVerifier, now: float, reverted: tuple[str, ...] = ()) -> State:
    """No readable state.json: trust whichever slots verify and were not reverted here, newest first."""
    found, skipped = [], []
    for slot in ("a", "b"):
        record = verify(slot)
        if record is not None and record.bundle_id in reverted:
            skipped.append(slot)  # reverted on this device: never active (nor previous) again
        elif record is not None:
            found.append(record)
    found.sort(key=lambda r: r.release_counter, reverse=True)
    state = State(
        active=found[0] if found else None,
        previous=found[1] if len(found) > 1 else None,
        bad_releases=reverted,
    )
    return state.with_event(now, "state-rebuilt", slots=[r.slot for r in found], reverted_slots=skipped)


def apply_reverted(state: State, reverted: tuple[str, ...], now: float) -> State:
    """Merge the journal into the state; finish a revert the journal recorded but state.json did not.

    The journal is written before the state.json of a revert, so a process killed between the two leaves
    the reverted release active in trial: it goes back to the previous model here (or to none).
    """
    merged = merge_bad(state.bad_releases, reverted)
    if merged != state.bad_releases:
        state = replace(state, bad_releases=merged)
    if state.previous is not None and state.previous.bundle_id in merged:
        state = replace(state, previous=None).with_event(now, "reverted-dropped", slot=state.previous.slot)
    if state.active is not None and state.active.bundle_id in merged:
        reverted_record = state.active
        state = replace(state, active=state.previous, previous=None, trial=None).with_event(
            now, "reverted", version=reverted_record.version, reasons=["journal: reverted before"]
        )
    return state


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


def died_in_shadow_run(store: Path) -> tuple[str, ...]:
    """Consume the shadow in-flight markers in `store`; the shadow bundle ids they name, once each.

    A marker is written (without fsync: it only has to outlive the process) around each shadow run, so one
    found at start means the process died while that run was in flight.
    """
    found: list[str] = []
    for marker in sorted(store.glob(f"{SHADOW_MARKER_PREFIX}-*")):
        try:
            with open(marker, "rb") as handle:
                content = json.loads(handle.read(_MAX_MARKER_BYTES))
            bundle_id = content.get("bundle_id")
        except (OSError, ValueError, AttributeError):
            bundle_id = None  # torn by the death itself: the bundle is unknown, nothing to charge
        with contextlib.suppress(OSError):
            marker.unlink()
        if isinstance(bundle_id, str) and len(bundle_id) == 64 and bundle_id not in found:
            found.append(bundle_id)
    return tuple(found)


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
