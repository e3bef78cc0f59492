"""Telemetry ingest: authenticate, check every event against the contract, store a batch exactly once.

A batch is ``edgekit.telemetry/v1`` JSON as `device_runtime.uploader` sends it; what an event may hold is
`device_runtime.telemetry_contract`, the one definition the device and the server share. Steps, in order
(cheap and whole-batch first, so a bad request costs little):

  (1) size: a body above MAX_BATCH_BYTES is 413 (the ASGI middleware refuses it before it is read);
  (2) auth: the bearer token names its device (only its SHA-256 is stored, looked up by index) before the
      body is parsed: a wrong token is 401 whatever the body holds;
  (3) strict JSON (`signing.strict_json`: no duplicate keys, no NaN/Infinity, no integer beyond 2^53,
      no number that overflows to infinity) and the envelope (schema, ids, sent_at, 1..5000 events, the
      batch's device_id = the token's device): 400 for the whole batch;
  (4) idempotency: the batch id was seen before: 409 (the device treats it as an acknowledgement);
  (5) rate limit: a token bucket per device in the database (so every replica and worker shares it),
      ``events_per_hour`` refill, ``burst_events`` capacity (at least one full batch). A batch with more
      events than the bucket holds is refused whole: 429 with ``Retry-After`` (and ``retry_after_s`` in
      the body), nothing stored; the uploader keeps the events and waits. Until that wait is over the
      device's batches are refused the same way before their body is parsed (`Ingestor` remembers it per
      process): parsing and checking a refused 1 MB batch costs as much CPU as storing it, so without
      this three devices past their limit could keep both cores busy. A batch refused whole after it was
      parsed (400, 409 for a replayed batch id, 429) costs a parse for nothing and touches no event
      bucket, so its bytes are taken from a second bucket per device and process
      (``refused_bytes_per_hour``, ``refused_burst_bytes``); while that one cannot take a batch, the
      device's batches are refused (429) before parsing. Honest devices rarely have a batch refused;
  (6) every event on its own (`check_batch`): contract violations, times outside the window around the
      receive time (after the device clock skew is corrected, see below), bundle ids no published
      release has, crash events beyond the device's crash budget (``rate-limit``), and bundle ids beyond
      ``bundles_per_day`` distinct ones per device (``bundle-limit``) are quarantined: stored in the
      ``quarantine`` table (device, reason, a size-bounded snippet; at most
      ``quarantine_rows_per_device`` rows per device, the rest only counted) and counted by reason in
      ``edgekit_telemetry_quarantined_total``. The other events are stored; the reply (200) says how
      many were stored and quarantined, and which event ids were refused.

Clock: ``skew = sent_at - receive time`` is recorded per device (``ingest_quota.clock_skew_s``). A device
clock off by more than `CLOCK_TOLERANCE_S` has every event time of the batch rebased by the skew, so a
device whose clock is 40 days off keeps its telemetry with server-ruled times; it is never a 400.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import os
import re
import secrets
import threading
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from device_runtime.telemetry_contract import (
    CLOCK_TOLERANCE_S,
    MAX_BATCH_BYTES,
    MAX_EVENT_AGE_S,
    MAX_EVENTS_PER_BATCH,
    SCHEMA,
    Checked,
    Rejected,
    check_batch,
)
from edgekit.server.storage import Database
from signing.errors import FormatError
from signing.strict_json import parse_strict

__all__ = [
    "MAX_BATCH_BYTES",
    "IngestLimits",
    "IngestOutcome",
    "Ingestor",
    "authenticate",
    "device_for_token",
    "ingest_batch",
    "register_device",
]

MAX_EVENTS = MAX_EVENTS_PER_BATCH
TELEMETRY_SCHEMA = SCHEMA
_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
_DAY = 86_400.0  # seconds

REJECTIONS: Counter[str] = Counter()  # whole batches refused, per process, by reason (for /metrics)


class _Metrics(Protocol):
    def describe(self, name: str, kind: str, text: str) -> None: ...

    def inc(self, name: str, amount: float = 1.0, **labels: str) -> None: ...


@dataclass(frozen=True, kw_only=True)
class IngestLimits:
    """Per-device limits of ingest; every figure carries its unit."""

    events_per_hour: float = 7200.0  # events per device-hour (token bucket refill)
    burst_events: int = 10_000  # events (bucket capacity; at least one full batch)
    crashes_per_hour: float = 6.0  # crash events per device-hour (honest devices crash a few times)
    crash_burst: int = 12  # crash events
    bundles_per_day: int = 8  # distinct bundle ids a device may report per 24 h
    refused_bytes_per_hour: float = float(8 * MAX_BATCH_BYTES)  # bytes of refused batches per device-hour
    refused_burst_bytes: int = 8 * MAX_BATCH_BYTES  # bytes (bucket capacity; at least one full batch)
    quarantine_rows_per_device: int = 1000  # rows; further refused events are only counted
    snippet_chars: int = 512  # characters of a refused event kept in the quarantine row
    clock_tolerance_s: float = CLOCK_TOLERANCE_S  # seconds
    max_event_age_s: float = MAX_EVENT_AGE_S  # seconds

    def __post_init__(self) -> None:
        if self.burst_events < MAX_EVENTS_PER_BATCH or self.events_per_hour <= 0:
            raise ValueError(f"IngestLimits: burst_events >= {MAX_EVENTS_PER_BATCH}, events_per_hour > 0")
        if self.refused_burst_bytes < MAX_BATCH_BYTES or self.refused_bytes_per_hour <= 0:
            raise ValueError(
                f"IngestLimits: refused_burst_bytes >= {MAX_BATCH_BYTES}, refused_bytes_per_hour > 0"
            )
        if self.crashes_per_hour < 0 or self.crash_burst < 0 or self.bundles_per_day < 1:
            raise ValueError("IngestLimits: crash limits >= 0, bundles_per_day >= 1")


@dataclass(frozen=True)
class IngestOutcome:
    """HTTP status, JSON body and extra headers for the device."""

    status: int
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def register_device(db: Database, device_id: str, hardware_id: str, now: float) -> str:
    """Create (or re-key) a device; returns its new token (shown once, stored only as a hash)."""
    if not _ID.fullmatch(device_id) or not _ID.fullmatch(hardware_id):
        raise ValueError("device_id and hardware_id: 1-128 characters of [A-Za-z0-9._:-]")
    token = secrets.token_urlsafe(32)
    db.execute(
        "INSERT INTO devices (device_id, token_sha256, hardware_id, registered_at) VALUES (?, ?, ?, ?) "
        "ON CONFLICT (device_id) DO UPDATE SET token_sha256 = excluded.token_sha256, "
        "hardware_id = excluded.hardware_id",
        (device_id, _token_hash(token), hardware_id, now),
    )
    return token


def authenticate(db: Database, device_id: str, authorization: str | None) -> bool:
    """Constant-time check of `Authorization: Bearer TOKEN` against the device's stored hash."""
    if not authorization or not authorization.startswith("Bearer "):
        return False
    rows = db.execute("SELECT token_sha256 FROM devices WHERE device_id = ?", (device_id,))
    expected = rows[0][0] if rows else _token_hash(secrets.token_hex(16))  # same work for unknown ids
    return hmac.compare_digest(expected, _token_hash(authorization.removeprefix("Bearer ").strip())) and bool(
        rows
    )


def device_for_token(db: Database, authorization: str | None) -> str | None:
    """The device whose token this `Authorization: Bearer TOKEN` header carries, or None.

    The lookup is by the token's SHA-256 (indexed): what an attacker can time is a hash of their guess.
    """
    if not authorization or not authorization.startswith("Bearer "):
        return None
    token = authorization.removeprefix("Bearer ").strip()
    if not token or len(token) > 512:
        return None
    digest = _token_hash(token)
    rows = db.execute("SELECT device_id, token_sha256 FROM devices WHERE token_sha256 = ?", (digest,))
    if len(rows) != 1 or not hmac.compare_digest(rows[0][1], digest):
        return None
    return str(rows[0][0])


class _KnownBundles:
    """Bundle ids of the published releases (the TUF targets), re-read when the metadata folder changes."""

    def __init__(self, repo: Any) -> None:
        self._repo = repo
        self._lock = threading.Lock()
        self._key: tuple[int, int] | None = None
        self._ids: frozenset[str] = frozenset()

    def get(self) -> frozenset[str]:
        if self._repo is None:
            return self._ids
        try:
            info = os.stat(Path(self._repo.metadata_dir))
        except OSError:
            return self._ids
        key = (info.st_mtime_ns, info.st_ino)  # a new metadata file is a rename into the folder
        if key != self._key:
            with self._lock:
                if key != self._key:
                    try:
                        targets = self._repo.status()["targets"]
                    except Exception:  # a half-written repository: keep the last good set
                        return self._ids
                    self._ids = frozenset(
                        str(t["custom"]["bundle_id"])
                        for t in targets
                        if str(t.get("path", "")).startswith("bundles/")
                        and isinstance(t.get("custom"), dict)
                        and "bundle_id" in t["custom"]
                    )
                    self._key = key
        return self._ids


class _OverLimit(Exception):
    def __init__(self, retry_after_s: float) -> None:
        self.retry_after_s = retry_after_s


_EVENT_COLUMNS = "(event_id, device_id, batch_id, kind, time, received_at, bundle_id, payload)"


class Ingestor:
    """Telemetry ingest for one database and repository (thread-safe; one per server process)."""

    def __init__(
        self,
        db: Database,
        repo: Any = None,
        metrics: _Metrics | None = None,
        *,
        limits: IngestLimits | None = None,
    ) -> None:
        """Args:
        db: the server database.
        repo: the `TufRepository` whose published bundles are the known bundle ids (None: none known).
        metrics: where to count quarantined events (``describe``/``inc``, as `edgekit.server.metrics`).
        limits: per-device limits (default `IngestLimits()`).
        """
        self.db = db
        self.limits = limits or IngestLimits()
        self.metrics = metrics
        self._known = _KnownBundles(repo)
        # device id -> server time before which its batches are refused unread (the Retry-After it was given)
        self._not_before: dict[str, float] = {}
        # device id -> (bucket of refused-batch bytes, its time): only devices whose batches were refused
        self._refused: dict[str, tuple[float, float]] = {}
        self._refused_lock = threading.Lock()
        if metrics is not None:
            metrics.describe(
                "edgekit_telemetry_quarantined_total", "counter", "Telemetry events quarantined by reason."
            )
            metrics.describe(
                "edgekit_telemetry_quarantine_unstored_total",
                "counter",
                "Quarantined events only counted: the device's quarantine rows are at their cap.",
            )
            metrics.describe(
                "edgekit_telemetry_clock_rebased_total",
                "counter",
                "Batches whose event times were rebased for a device clock off by more than the tolerance.",
            )

    def known_bundles(self) -> frozenset[str]:
        """Bundle ids of the releases published in the repository (cached)."""
        return self._known.get()

    # ---- one batch --------------------------------------------------------------------------------
    def ingest(self, body: bytes, authorization: str | None, now: float) -> IngestOutcome:
        """Authenticate, check, store one batch (see the module docstring for the steps and statuses)."""
        if len(body) > MAX_BATCH_BYTES:  # (1)
            return _refuse(413, "oversized", f"batch of {len(body)} bytes exceeds {MAX_BATCH_BYTES}")
        device_id = device_for_token(self.db, authorization)  # (2)
        if device_id is None:
            return _refuse(401, "forged", "unknown device or wrong token")
        limits = self.limits
        waited = self._not_before.get(device_id)
        if waited is not None:
            if now < waited:  # (5) early: still inside the wait its last 429 named
                return self._over_limit(device_id, waited - now)
            self._not_before.pop(device_id, None)
        wait = self._refused_wait(device_id, len(body), now)
        if wait > 0:  # (5) early: too many bytes of refused batches lately; not parsed
            return self._over_limit(
                device_id, wait, f"{limits.refused_bytes_per_hour:g} bytes of refused batches"
            )
        outcome = self._parse_and_store(device_id, body, now)
        if outcome.status != 200:  # parsed, then refused whole (400, 401, 409, 429): a parse for nothing
            self._refused_charge(device_id, len(body), now)
        return outcome

    def _parse_and_store(self, device_id: str, body: bytes, now: float) -> IngestOutcome:
        limits = self.limits
        try:  # (3)
            document = parse_strict(body, what="telemetry batch", max_bytes=MAX_BATCH_BYTES)
        except FormatError as e:
            return _refuse(400, "malformed", str(e)[:300])
        checked = check_batch(
            document,
            now=now,
            clock_tolerance_s=limits.clock_tolerance_s,
            max_event_age_s=limits.max_event_age_s,
        )
        if checked.error is not None:
            return _refuse(400, "malformed", checked.error)
        if checked.device_id != device_id:
            return _refuse(401, "forged", "the batch's device_id is not the device this token belongs to")
        accepted, rejected = self._known_only(checked.accepted, list(checked.rejected))
        events = document["events"]
        batch_key = f"{device_id}:{checked.batch_id}"
        try:
            with self.db.transaction():
                stored, rejected = self._store(
                    device_id, batch_key, checked.skew_s, accepted, rejected, events, len(events), now
                )
        except _Duplicate:
            REJECTIONS["replayed"] += 1
            return IngestOutcome(409, {"status": "duplicate", "batch_id": checked.batch_id})
        except _OverLimit as e:
            self._not_before[device_id] = now + e.retry_after_s
            return self._over_limit(device_id, e.retry_after_s)
        if self.metrics is not None and checked.rebased:
            self.metrics.inc("edgekit_telemetry_clock_rebased_total")
        return IngestOutcome(
            200,
            {
                "status": "stored",
                "batch_id": checked.batch_id,
                "events": stored,
                "stored": stored,
                "quarantined": len(rejected),
                "refused": [{"id": r.id, "reason": r.reason} for r in rejected[:100]],
                "clock_skew_s": round(checked.skew_s, 3),
                "rebased": checked.rebased,
            },
        )

    def _refused_bucket(self, device_id: str, now: float) -> tuple[float, float]:
        limits = self.limits
        tokens, at = self._refused.get(device_id, (float(limits.refused_burst_bytes), now))
        refill = max(0.0, now - at) / 3600.0 * limits.refused_bytes_per_hour
        return min(float(limits.refused_burst_bytes), tokens + refill), max(now, at)

    def _refused_wait(self, device_id: str, size: int, now: float) -> float:
        """0, or the seconds until the device's refused-bytes bucket could take a `size`-byte batch."""
        if device_id not in self._refused:
            return 0.0
        with self._refused_lock:
            tokens, _ = self._refused_bucket(device_id, now)
        return 0.0 if size <= tokens else (size - tokens) / self.limits.refused_bytes_per_hour * 3600.0

    def _refused_charge(self, device_id: str, size: int, now: float) -> None:
        """Take a refused batch's bytes from the device's bucket (kept only while not full again)."""
        with self._refused_lock:
            tokens, at = self._refused_bucket(device_id, now)
            self._refused[device_id] = (max(0.0, tokens - size), at)
            if len(self._refused) > 10_000:  # forget the devices whose buckets have refilled
                full = float(self.limits.refused_burst_bytes)
                for name in [d for d in self._refused if self._refused_bucket(d, now)[0] >= full]:
                    del self._refused[name]

    def _over_limit(self, device_id: str, retry_after_s: float, what: str = "") -> IngestOutcome:
        REJECTIONS["rate-limited"] += 1
        wait = max(1, math.ceil(retry_after_s))
        what = what or f"{self.limits.events_per_hour:g} events"
        return IngestOutcome(
            429,
            {
                "error": f"device {device_id} is over its limit of {what} per hour; retry after {wait} s",
                "retry_after_s": wait,
            },
            {"Retry-After": str(wait)},
        )

    def _known_only(
        self, accepted: Sequence[Checked], rejected: list[Rejected]
    ) -> tuple[list[Checked], list[Rejected]]:
        known = self.known_bundles()
        kept = [c for c in accepted if c.bundle_id is None or c.bundle_id in known]
        if len(kept) != len(accepted):
            for c in accepted:
                if c.bundle_id is not None and c.bundle_id not in known:
                    rejected.append(
                        Rejected(c.position, c.id, "unknown-bundle", f"bundle {c.bundle_id} is not published")
                    )
        return kept, rejected

    def _store(
        self,
        device_id: str,
        batch_key: str,
        skew: float,
        accepted: list[Checked],
        rejected: list[Rejected],
        events: list[Any],
        count: int,
        now: float,
    ) -> tuple[int, list[Rejected]]:
        db, limits = self.db, self.limits
        fresh = db.execute(
            "INSERT INTO batches (batch_id, device_id, received_at, events) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (batch_id) DO NOTHING RETURNING batch_id",
            (batch_key, device_id, now, 0),
        )
        if not fresh:  # (4)
            raise _Duplicate()
        # (5) the device's buckets; the upsert returns (and on PostgreSQL locks) its row
        (tokens, crash_tokens, updated_at, overflow) = db.execute(
            "INSERT INTO ingest_quota (device_id, tokens, crash_tokens, updated_at, clock_skew_s, "
            "quarantine_unstored) VALUES (?, ?, ?, ?, ?, 0) ON CONFLICT (device_id) DO UPDATE SET "
            "device_id = excluded.device_id RETURNING tokens, crash_tokens, updated_at, quarantine_unstored",
            (device_id, float(limits.burst_events), float(limits.crash_burst), now, skew),
        )[0]
        elapsed = max(0.0, now - updated_at) / 3600.0  # hours
        tokens = min(float(limits.burst_events), tokens + elapsed * limits.events_per_hour)
        crash_tokens = min(float(limits.crash_burst), crash_tokens + elapsed * limits.crashes_per_hour)
        if count > tokens:
            raise _OverLimit((count - tokens) / limits.events_per_hour * 3600.0)
        tokens -= count
        # (6) crash budget and distinct bundles
        crashes = [c for c in accepted if c.kind == "crash"]
        if len(crashes) > crash_tokens:
            over = {c.position for c in crashes[int(crash_tokens) :]}
            rejected += [
                Rejected(c.position, c.id, "rate-limit", "over the device's crash budget")
                for c in accepted
                if c.position in over
            ]
            accepted = [c for c in accepted if c.position not in over]
            crash_tokens -= len(crashes) - len(over)
        else:
            crash_tokens -= len(crashes)
        accepted, rejected = self._bundle_budget(device_id, accepted, rejected, now)
        # the events
        encode = _ENCODER.encode
        rows = [
            (
                f"{device_id}:{c.id}",
                device_id,
                batch_key,
                c.kind,
                c.time,
                now,
                c.bundle_id,
                _inferences_json(c.payload) if c.kind == "inferences" else encode(c.payload),
            )
            for c in accepted
        ]
        if rows:
            _insert_events(db, rows)
        # quarantine, bounded per device
        unstored = 0
        if rejected:
            (held,) = db.execute("SELECT COUNT(*) FROM quarantine WHERE device_id = ?", (device_id,))[0]
            room = max(0, limits.quarantine_rows_per_device - int(held))
            keep, unstored = rejected[:room], max(0, len(rejected) - room)
            if keep:
                db.executemany(
                    "INSERT INTO quarantine (device_id, batch_id, event_id, received_at, reason, snippet) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    [
                        (device_id, batch_key, r.id, now, r.reason, _snippet(events[r.position], limits))
                        for r in keep
                    ],
                )
        db.execute(
            "UPDATE ingest_quota SET tokens = ?, crash_tokens = ?, updated_at = ?, clock_skew_s = ?, "
            "quarantine_unstored = ? WHERE device_id = ?",
            (tokens, crash_tokens, max(now, updated_at), skew, int(overflow) + unstored, device_id),
        )
        db.execute("UPDATE batches SET events = ? WHERE batch_id = ?", (len(rows), batch_key))
        if self.metrics is not None:
            for reason, n in Counter(r.reason for r in rejected).items():
                self.metrics.inc("edgekit_telemetry_quarantined_total", n, reason=reason)
            if unstored:
                self.metrics.inc("edgekit_telemetry_quarantine_unstored_total", unstored)
        return len(rows), rejected

    def _bundle_budget(
        self, device_id: str, accepted: list[Checked], rejected: list[Rejected], now: float
    ) -> tuple[list[Checked], list[Rejected]]:
        wanted = {c.bundle_id for c in accepted if c.bundle_id is not None}
        if not wanted:
            return accepted, rejected
        seen = {
            row[0]
            for row in self.db.execute(
                "SELECT bundle_id FROM device_bundles WHERE device_id = ? AND first_seen >= ?",
                (device_id, now - _DAY),
            )
        }
        new = sorted(wanted - seen)
        if not new:
            return accepted, rejected
        allowed = new[: max(0, self.limits.bundles_per_day - len(seen))]
        if allowed:
            self.db.executemany(
                "INSERT INTO device_bundles (device_id, bundle_id, first_seen) VALUES (?, ?, ?) "
                "ON CONFLICT (device_id, bundle_id) DO UPDATE SET first_seen = excluded.first_seen",
                [(device_id, b, now) for b in allowed],
            )
        refused = set(new) - set(allowed)
        if refused:
            rejected += [
                Rejected(c.position, c.id, "bundle-limit", "over the device's distinct bundle ids per day")
                for c in accepted
                if c.bundle_id in refused
            ]
            accepted = [c for c in accepted if c.bundle_id not in refused]
        return accepted, rejected


class _Duplicate(Exception):
    pass


_ENCODER = json.JSONEncoder(sort_keys=True, separators=(",", ":"), allow_nan=False)  # = storage.dumps
_STAGE = (
    "CREATE TEMP TABLE IF NOT EXISTS ingest_events (event_id TEXT, device_id TEXT, batch_id TEXT, kind TEXT, "
    "time DOUBLE PRECISION, received_at DOUBLE PRECISION, bundle_id TEXT, payload TEXT) ON COMMIT DELETE ROWS"
)
_FROM_STAGE = (
    f"INSERT INTO events {_EVENT_COLUMNS} SELECT {_EVENT_COLUMNS[1:-1]} FROM ingest_events "
    "ON CONFLICT (event_id) DO NOTHING"
)


def _inferences_json(p: dict[str, Any]) -> str:
    """`storage.dumps` of an inferences payload the contract accepted, without the general encoder (its
    strings are hex and version characters that need no escaping; numbers print as `json` prints them)."""
    version = p.get("version")
    head = (
        f'{{"bundle_id":"{p["bundle_id"]}","errors":{p["errors"]!r},"inferences":{p["inferences"]!r},'
        f'"latency_ms_buckets":[{",".join(map(repr, p["latency_ms_buckets"]))}],'
        f'"latency_ms_sum":{p["latency_ms_sum"]!r},'
    )
    tail = f'"window_s":{p["window_s"]!r}}}'
    return head + tail if version is None else f'{head}"version":"{version}",{tail}'


def _insert_events(db: Database, rows: list[tuple[Any, ...]]) -> None:
    """Insert event rows (a retried event id is skipped). Inside the caller's transaction."""
    if db.kind != "postgresql":
        db.executemany(
            f"INSERT INTO events {_EVENT_COLUMNS} VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (event_id) DO NOTHING",
            rows,
        )
        return
    # PostgreSQL: COPY the batch straight into `events` (psycopg's executemany is one INSERT per row, and a
    # text[] per column is escaped element by element in Python: both measured several times slower per
    # event). COPY has no ON CONFLICT: a retried event id (rare: the device rebuilt a batch) fails it, and
    # then, back at the savepoint, the batch goes through a temp table and one INSERT ... ON CONFLICT.
    # COPY's text format needs only backslashes escaped: ids, kinds and bundle ids are validated
    # characters, and payloads are ASCII JSON with their control characters escaped.
    null, backslash, doubled = "\\N", "\\", "\\\\"
    text = "".join(
        [
            f"{e}\t{d}\t{b}\t{k}\t{t!r}\t{r!r}\t{null if u is None else u}\t{p.replace(backslash, doubled)}\n"
            for e, d, b, k, t, r, u, p in rows
        ]
    )
    import psycopg

    connection = db._connect()  # this thread's psycopg connection, in the caller's transaction
    try:
        with (
            connection.transaction(),  # a savepoint
            connection.cursor() as cursor,
            cursor.copy(f"COPY events {_EVENT_COLUMNS} FROM STDIN") as copy,
        ):
            copy.write(text)
        return
    except psycopg.errors.UniqueViolation:
        pass
    with connection.cursor() as cursor:
        cursor.execute(_STAGE)
        with cursor.copy("COPY ingest_events FROM STDIN") as copy:
            copy.write(text)
        cursor.execute(_FROM_STAGE)


def _snippet(event: Any, limits: IngestLimits) -> str:
    try:
        text = json.dumps(event, sort_keys=True, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError, RecursionError):
        text = repr(event)
    return text[: limits.snippet_chars]


def _refuse(status: int, counter: str, message: str) -> IngestOutcome:
    REJECTIONS[counter] += 1
    return IngestOutcome(status, {"error": message})


def ingest_batch(db: Database, body: bytes, authorization: str | None, now: float) -> IngestOutcome:
    """One batch through a default `Ingestor` (no repository: every bundle id is unknown). Servers build
    one `Ingestor` per process and call its `ingest`."""
    return Ingestor(db).ingest(body, authorization, now)
