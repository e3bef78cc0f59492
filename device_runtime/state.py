"""The device's persistent state: which slot is active, previous, on trial; floors; history.

`state.json` is replaced atomically (write a temp file, fsync, rename, fsync the folder), so after a power
loss it is either the old or the new state, never a mix. The in-flight marker is a separate small file,
written before a trial inference and removed after it: finding it at start means the process died during
inference (a crash, an OOM kill, or a watchdog killing a hang).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from signing import atomic as _atomic

__all__ = ["SlotRecord", "State", "TrialState", "atomic_write", "load_state", "save_state"]

STATE_SCHEMA = "edgekit.device-state/v1"
HISTORY_LIMIT = 50


@dataclass(frozen=True)
class SlotRecord:
    """A verified bundle installed in a slot."""

    slot: str  # "a" | "b"
    bundle_id: str  # SHA-256 of the signed statement
    name: str
    version: str
    release_counter: int


@dataclass(frozen=True)
class TrialState:
    """A newly activated model not yet committed."""

    started: float  # seconds since the epoch
    successes: int = 0
    strikes: int = 0
    reasons: tuple[str, ...] = ()


@dataclass(frozen=True)
class State:
    """What `state.json` holds."""

    active: SlotRecord | None = None
    previous: SlotRecord | None = None
    trial: TrialState | None = None
    floors: dict[str, int] = field(default_factory=dict)  # per model name: lowest acceptable release
    bad_releases: tuple[str, ...] = ()  # bundle ids reverted locally: never installed again
    history: tuple[dict[str, Any], ...] = ()

    def with_event(self, time: float, event: str, **detail: Any) -> State:
        """The state with one more history entry (bounded)."""
        entry = {"time": time, "event": event, **detail}
        return replace(self, history=(*self.history, entry)[-HISTORY_LIMIT:])


def atomic_write(path: Path, data: bytes) -> None:
    """Write-temp, fsync, rename, fsync the folder (`signing.atomic`); device files are private (0600)."""
    _atomic.atomic_write(path, data, mode=0o600)


def save_state(path: Path, state: State) -> None:
    """Persist the state atomically."""
    document = {"schema": STATE_SCHEMA, **asdict(state)}
    atomic_write(path, json.dumps(document, sort_keys=True, indent=1).encode() + b"\n")


def _slot(value: Any) -> SlotRecord | None:
    if value is None:
        return None
    record = SlotRecord(**value)
    if record.slot not in ("a", "b"):
        raise ValueError(f"slot {record.slot!r}")
    return record


def load_state(path: Path) -> State | None:
    """Read the state; None when absent or unreadable (the caller rebuilds it from the slots)."""
    try:
        document = json.loads(path.read_bytes())
        if document.get("schema") != STATE_SCHEMA:
            return None
        trial = document.get("trial")
        return State(
            active=_slot(document.get("active")),
            previous=_slot(document.get("previous")),
            trial=None
            if trial is None
            else TrialState(
                started=float(trial["started"]),
                successes=int(trial["successes"]),
                strikes=int(trial["strikes"]),
                reasons=tuple(trial.get("reasons", ())),
            ),
            floors={str(k): int(v) for k, v in document.get("floors", {}).items()},
            bad_releases=tuple(document.get("bad_releases", ())),
            history=tuple(document.get("history", ())),
        )
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return None
