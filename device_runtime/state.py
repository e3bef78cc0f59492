"""The device's persistent state: which slot is active, previous, on trial; floors; history.

`state.json` is replaced atomically (write a temp file, fsync, rename, fsync the folder), so after a power
loss it is either the old or the new state, never a mix. The in-flight marker is a separate small file,
written before a trial inference and removed after it: finding it at start means the process died during
inference (a crash, an OOM kill, or a watchdog killing a hang).

`reverted.json` is a second, separately written record of the releases reverted on this device (the journal):
written (atomically) before the `state.json` that records a revert, and read at every start, so a lost,
truncated or garbage `state.json` never makes a reverted release active again. Each file repairs the other:
the runtime keeps the union of both.

`StoreLock` makes a store one process's: an exclusive `flock` on the store's `lock` file, held for the life
of the `Runtime` (or, on its metadata directory, the `Updater`), with the holder's PID written in the file.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import gc
import json
import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from signing import atomic as _atomic

__all__ = [
    "BAD_RELEASES_LIMIT",
    "SlotRecord",
    "State",
    "StoreLock",
    "TrialState",
    "atomic_write",
    "is_storage_error",
    "load_reverted",
    "load_state",
    "merge_bad",
    "save_reverted",
    "save_state",
]

STATE_SCHEMA = "edgekit.device-state/v1"
REVERTED_SCHEMA = "edgekit.device-reverted/v1"
HISTORY_LIMIT = 50
BAD_RELEASES_LIMIT = 64  # bundle ids remembered as reverted (state.json and the journal alike)
_MAX_REVERTED_BYTES = 64 << 10  # bytes; the journal holds at most BAD_RELEASES_LIMIT 64-hex ids
_STORAGE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO, errno.EFBIG})


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


def is_storage_error(error: BaseException) -> bool:
    """True for an OSError that means "this storage cannot take writes now" (full, quota, read-only, I/O)."""
    return isinstance(error, OSError) and error.errno in _STORAGE_ERRNOS


def merge_bad(*sources: tuple[str, ...]) -> tuple[str, ...]:
    """The union of reverted-release lists, first seen first, the newest BAD_RELEASES_LIMIT kept."""
    merged = list(dict.fromkeys(bundle_id for ids in sources for bundle_id in ids))
    return tuple(merged[-BAD_RELEASES_LIMIT:])


def save_reverted(path: Path, bundle_ids: tuple[str, ...]) -> None:
    """Persist the reverted-release journal atomically (the whole list: it is small and bounded)."""
    document = {"schema": REVERTED_SCHEMA, "reverted": list(bundle_ids[-BAD_RELEASES_LIMIT:])}
    atomic_write(path, json.dumps(document, sort_keys=True).encode() + b"\n")


def load_reverted(path: Path) -> tuple[str, ...]:
    """The reverted bundle ids the journal holds; () when it is absent or unreadable (state.json still
    holds them, unless both were lost)."""
    try:
        with open(path, "rb") as handle:
            data = handle.read(_MAX_REVERTED_BYTES + 1)
        if len(data) > _MAX_REVERTED_BYTES:
            return ()
        document = json.loads(data)
        ids = document.get("reverted") if document.get("schema") == REVERTED_SCHEMA else None
    except (OSError, ValueError, AttributeError):
        return ()
    if not isinstance(ids, list):
        return ()
    return tuple(i for i in ids if isinstance(i, str) and len(i) == 64)[-BAD_RELEASES_LIMIT:]


class StoreLock:
    """An exclusive `flock` on `<directory>/lock`, held until `release` (or the process ends).

    The holder's PID is written into the file so that a second process can name it. flock locks belong
    to the open file, so a second `StoreLock` on the same folder conflicts even within one process, and
    the kernel drops the lock when the holder dies: a killed process never leaves the store locked.
    """

    FILE = "lock"

    def __init__(self, directory: Path, what: str) -> None:
        from device_runtime.errors import StoreLockedError

        self.path = directory / self.FILE
        self._fd: int | None = None
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            if not _try_lock(fd):
                raise BlockingIOError
        except BlockingIOError:
            holder = _read_pid(fd)
            os.close(fd)
            raise StoreLockedError(
                f"the {what} {directory} is in use by process {holder if holder else '(unknown)'}: one "
                f"process per store; stop that process or give this one its own {what}",
                path=directory,
                pid=holder,
            ) from None
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        self._owner = os.getpid()
        with contextlib.suppress(OSError):  # a full disk: locked all the same, the PID is a courtesy
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)

    def release(self) -> None:
        """Unlock (idempotent). The file stays: removing it would let two processes lock two files."""
        fd, self._fd = self._fd, None
        if fd is not None:
            if os.getpid() == self._owner:  # a forked child shares the lock: closing its copy keeps it held
                with contextlib.suppress(OSError):
                    fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def __del__(self) -> None:
        self.release()


def _try_lock(fd: int) -> bool:
    """Lock `fd` exclusively without waiting. When this process holds the lock, an instance dropped without
    `close()` may still await the cycle collector (an exception's traceback keeps it alive): collect once
    and retry, so that only live instances count as holders."""
    for attempt in range(2):
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if attempt or _read_pid(fd) != os.getpid():
                return False
            gc.collect()
    return False


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode("ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return int(text) if text.isdigit() else None
