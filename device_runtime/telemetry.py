"""On-device telemetry: a bounded store-and-forward queue in SQLite.

Events (inference aggregates, errors, crashes, install and verify outcomes with reason codes, trial
outcomes, feedback accuracy, the running model's hash) are queued on disk with a unique id and uploaded
in batches by `device_runtime.uploader`. The queue never grows past its bound: the oldest events are
dropped and the drop is counted. Recording never raises: a full disk or a locked database costs a counted
telemetry failure, never an inference.

Only payloads that satisfy `device_runtime.telemetry_contract` are queued (anything else is counted as
``invalid`` and dropped), so the uploader never has to send an event the server would refuse. An inference
aggregate carries the ``window_s`` seconds it covers (monotonic clock, from the start of its first inference
to the end of its last), and a new aggregate starts before one would cover more than
`telemetry_contract.MAX_WINDOW_S`.
"""

from __future__ import annotations

import bisect
import json
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from device_runtime.errors import ContractError
from device_runtime.telemetry_contract import (
    LATENCY_BUCKETS_MS,
    MAX_DETAIL_CHARS,
    MAX_LATENCY_MS,
    MAX_WINDOW_S,
    parse_payload,
)

__all__ = ["LATENCY_BUCKETS_MS", "Event", "TelemetryQueue"]


@dataclass(frozen=True)
class Event:
    """One queued event."""

    seq: int
    event_id: str
    kind: str
    time: float
    payload: dict[str, Any]


class TelemetryQueue:
    """Bounded SQLite queue plus in-memory inference aggregates (flushed as one event per window)."""

    def __init__(
        self,
        path: Path,
        *,
        max_events: int,
        clock: Callable[[], float],
        flush_every: int = 100,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        """Args:
        path: the SQLite file of the queue.
        max_events: bound of the queue (events); the oldest are dropped beyond it, and counted.
        clock: seconds since the epoch, for event times.
        flush_every: inferences after which the inference aggregates are written as events.
        monotonic: seconds of a monotonic clock, for the windows inference aggregates cover.
        """
        self._path = path
        self._max = max_events
        self._clock = clock
        self._monotonic = monotonic
        self._flush_every = flush_every
        self._lock = threading.Lock()
        self._aggregate: dict[str, dict[str, Any]] = {}
        self._window: tuple[float, float] | None = None  # monotonic (start, end) of the open aggregates
        self._since_flush = 0
        self.failures = 0  # telemetry writes that failed (kept in memory; telemetry about telemetry)
        self.invalid = 0  # events refused by the telemetry contract (a bug on this device), not queued
        self._db = sqlite3.connect(str(path), timeout=1.0, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS events (seq INTEGER PRIMARY KEY AUTOINCREMENT, event_id TEXT UNIQUE, "
            "kind TEXT NOT NULL, time REAL NOT NULL, payload TEXT NOT NULL)"
        )
        self._db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL)")

    def record(self, kind: str, **payload: Any) -> None:
        """Queue one event if it satisfies the telemetry contract (else count it as invalid); never raises."""
        try:
            payload = _clip(payload)
            parse_payload(kind, payload)
        except ContractError:
            self.invalid += 1
            return
        except Exception:
            self.failures += 1
            return
        try:
            with self._lock:
                self._insert(kind, payload)
        except Exception:
            self.failures += 1

    def _insert(self, kind: str, payload: dict[str, Any]) -> None:
        self._db.execute(
            "INSERT INTO events (event_id, kind, time, payload) VALUES (?, ?, ?, ?)",
            (uuid.uuid4().hex, kind, self._clock(), json.dumps(payload, sort_keys=True, allow_nan=False)),
        )
        (count,) = self._db.execute("SELECT COUNT(*) FROM events").fetchone()
        if count > self._max:
            excess = count - self._max
            self._db.execute(
                "DELETE FROM events WHERE seq IN (SELECT seq FROM events ORDER BY seq LIMIT ?)", (excess,)
            )
            self._db.execute(
                "INSERT INTO meta (key, value) VALUES ('dropped', ?) "
                "ON CONFLICT(key) DO UPDATE SET value = value + excluded.value",
                (excess,),
            )

    def record_inference(self, bundle_id: str, version: str, latency_ms: float, ok: bool) -> None:
        """Count an inference into the current aggregate; flushed every `flush_every` inferences, and
        before the aggregate would cover more than MAX_WINDOW_S seconds. Never raises."""
        # Every predict calls this: plain comparisons, and the aggregate's dict is built once per window.
        try:
            with self._lock:
                latency_ms = float(latency_ms)
                if not latency_ms >= 0.0:  # negative, or NaN (a broken timer): count it, time it as 0
                    latency_ms = 0.0
                elif latency_ms > MAX_LATENCY_MS:
                    latency_ms = MAX_LATENCY_MS
                end = self._monotonic()
                window = self._window
                if window is not None and end - window[0] > MAX_WINDOW_S:
                    self._flush_locked()
                    window = None
                start = end - latency_ms / 1000.0  # when this inference began
                if window is not None and window[0] < start:
                    start = window[0]
                self._window = (start, end)
                entry = self._aggregate.get(bundle_id)
                if entry is None:
                    entry = self._aggregate[bundle_id] = {
                        "bundle_id": bundle_id,
                        "version": version,
                        "inferences": 0,
                        "errors": 0,
                        "latency_ms_buckets": [0] * (len(LATENCY_BUCKETS_MS) + 1),
                        "latency_ms_sum": 0.0,
                    }
                entry["inferences"] += 1
                if not ok:
                    entry["errors"] += 1
                entry["latency_ms_sum"] += latency_ms
                entry["latency_ms_buckets"][bisect.bisect_left(LATENCY_BUCKETS_MS, latency_ms)] += 1
                self._since_flush += 1
                if self._since_flush >= self._flush_every:
                    self._flush_locked()
        except Exception:
            self.failures += 1

    def flush(self) -> None:
        """Write the pending inference aggregates as events; never raises."""
        try:
            with self._lock:
                self._flush_locked()
        except Exception:
            self.failures += 1

    def _flush_locked(self) -> None:
        window = 0.0 if self._window is None else min(MAX_WINDOW_S, self._window[1] - self._window[0])
        aggregates = list(self._aggregate.values())
        self._aggregate.clear()
        self._window = None
        self._since_flush = 0
        for entry in aggregates:
            payload = {**entry, "window_s": max(0.0, window)}
            try:
                parse_payload("inferences", payload)
            except ContractError:
                self.invalid += 1
                continue
            self._insert("inferences", payload)

    def pending(self, limit: int) -> list[Event]:
        """The oldest `limit` queued events."""
        with self._lock:
            rows = self._db.execute(
                "SELECT seq, event_id, kind, time, payload FROM events ORDER BY seq LIMIT ?", (limit,)
            ).fetchall()
        return [
            Event(seq, event_id, kind, time, json.loads(payload))
            for seq, event_id, kind, time, payload in rows
        ]

    def acknowledge(self, last_seq: int) -> None:
        """Delete every event up to and including `last_seq` (the server has stored them)."""
        with self._lock:
            self._db.execute("DELETE FROM events WHERE seq <= ?", (last_seq,))

    def stats(self) -> dict[str, int]:
        """Queued and dropped event counts, telemetry write failures and contract-invalid events."""
        with self._lock:
            (queued,) = self._db.execute("SELECT COUNT(*) FROM events").fetchone()
            row = self._db.execute("SELECT value FROM meta WHERE key = 'dropped'").fetchone()
        return {
            "queued": int(queued),
            "dropped": int(row[0]) if row else 0,
            "failures": self.failures,
            "invalid": self.invalid,
        }

    def close(self) -> None:
        """Flush aggregates and close the database."""
        self.flush()
        with self._lock:
            self._db.close()


def _clip(payload: dict[str, Any]) -> dict[str, Any]:
    """Free text cut to the contract's length (details carry exception text of any length)."""
    clipped = dict(payload)
    detail = clipped.get("detail")
    if isinstance(detail, str) and len(detail) > MAX_DETAIL_CHARS:
        clipped["detail"] = detail[:MAX_DETAIL_CHARS]
    reasons = clipped.get("reasons")
    if isinstance(reasons, list | tuple):
        clipped["reasons"] = [r[:MAX_DETAIL_CHARS] if isinstance(r, str) else r for r in reasons]
    return clipped
