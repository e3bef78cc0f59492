"""Telemetry ingest: authenticate, validate, store a batch exactly once.

A batch is `{"schema": "edgekit.telemetry/v1", "batch_id", "device_id", "sent_at", "events": [...]}` as
`device_runtime.uploader` sends it. The device authenticates with its own token (only its SHA-256 is
stored; compared in constant time). The batch id makes ingest idempotent: a retried batch is stored once
and answered 409 (which the device treats as an acknowledgement). Bodies are size-capped and every field
is checked; forged, replayed, oversized and malformed batches are refused with distinct status codes and
counted.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
from collections import Counter
from dataclasses import dataclass
from typing import Any

from edgekit.server.storage import Database, dumps
from signing.errors import FormatError

__all__ = ["MAX_BATCH_BYTES", "IngestOutcome", "authenticate", "ingest_batch", "register_device"]

MAX_BATCH_BYTES = 1 << 20  # bytes, the uploader's cap too
MAX_EVENTS = 5000
MAX_CLOCK_SKEW_S = 30 * 86400  # a batch claiming to be older or newer than this is refused as stale
TELEMETRY_SCHEMA = "edgekit.telemetry/v1"
_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
_KIND = re.compile(r"[a-z][a-z0-9-]{0,39}")

REJECTIONS: Counter[str] = Counter()  # per-process counters for /metrics


@dataclass(frozen=True)
class IngestOutcome:
    """HTTP status and JSON body for the device."""

    status: int
    body: dict[str, Any]


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


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        raise FormatError("duplicate JSON keys")
    return result


def _no_constants(name: str) -> Any:
    raise FormatError(f"JSON constant {name} is not allowed")


def _parse(body: bytes) -> Any:
    """Strict enough for telemetry (no duplicate keys, no NaN/Infinity) and about twice as fast as
    `signing.strict_json`, whose per-integer checks guard signed documents; the fields used here are
    range-checked by `_validate`."""
    try:
        return json.loads(body, object_pairs_hook=_no_duplicates, parse_constant=_no_constants)
    except FormatError:
        raise
    except (ValueError, RecursionError) as e:
        raise FormatError(f"not valid JSON ({str(e).splitlines()[0][:120]})") from e


def _refuse(status: int, counter: str, message: str) -> IngestOutcome:
    REJECTIONS[counter] += 1
    return IngestOutcome(status, {"error": message})


def _validate(document: Any, now: float) -> str | None:
    if not isinstance(document, dict):
        return "batch must be a JSON object"
    expected = {"schema", "batch_id", "device_id", "sent_at", "events"}
    if set(document) != expected:
        return f"batch keys must be exactly {sorted(expected)}"
    if document["schema"] != TELEMETRY_SCHEMA:
        return f"schema must be {TELEMETRY_SCHEMA}"
    for key in ("batch_id", "device_id"):
        if not isinstance(document[key], str) or not _ID.fullmatch(document[key]):
            return f"{key}: 1-128 characters of [A-Za-z0-9._:-]"
    sent_at = document["sent_at"]
    if isinstance(sent_at, bool) or not isinstance(sent_at, int | float):
        return "sent_at must be a number (seconds since the epoch)"
    events = document["events"]
    if not isinstance(events, list) or not 1 <= len(events) <= MAX_EVENTS:
        return f"events: a list of 1..{MAX_EVENTS} events"
    for index, event in enumerate(events):
        if not isinstance(event, dict) or set(event) != {"id", "kind", "time", "payload"}:
            return f"events[{index}]: keys must be exactly id, kind, time, payload"
        if not isinstance(event["id"], str) or not _ID.fullmatch(event["id"]):
            return f"events[{index}].id: 1-128 characters of [A-Za-z0-9._:-]"
        if not isinstance(event["kind"], str) or not _KIND.fullmatch(event["kind"]):
            return f"events[{index}].kind: lower-case word, at most 40 characters"
        if isinstance(event["time"], bool) or not isinstance(event["time"], int | float):
            return f"events[{index}].time must be a number"
        if not isinstance(event["payload"], dict):
            return f"events[{index}].payload must be an object"
    return None


def ingest_batch(db: Database, body: bytes, authorization: str | None, now: float) -> IngestOutcome:
    """Authenticate, validate and store one batch (or recognise it as already stored)."""
    if len(body) > MAX_BATCH_BYTES:
        return _refuse(413, "oversized", f"batch of {len(body)} bytes exceeds {MAX_BATCH_BYTES}")
    try:
        document = _parse(body)
    except FormatError as e:
        return _refuse(400, "malformed", str(e))
    problem = _validate(document, now)
    if problem is not None:
        return _refuse(400, "malformed", problem)
    device_id = document["device_id"]
    if not authenticate(db, device_id, authorization):
        return _refuse(401, "forged", "unknown device or wrong token")
    if abs(float(document["sent_at"]) - now) > MAX_CLOCK_SKEW_S:
        return _refuse(400, "stale", "sent_at is more than 30 days away from the server clock")
    batch_id = f"{device_id}:{document['batch_id']}"
    with db.transaction():
        fresh = db.execute(
            "INSERT INTO batches (batch_id, device_id, received_at, events) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (batch_id) DO NOTHING RETURNING batch_id",
            (batch_id, device_id, now, len(document["events"])),
        )
        if not fresh:
            REJECTIONS["replayed"] += 1
            return IngestOutcome(409, {"status": "duplicate", "batch_id": document["batch_id"]})
        rows = []
        for event in document["events"]:
            payload = event["payload"]
            bundle_id = payload.get("bundle_id") if isinstance(payload.get("bundle_id"), str) else None
            rows.append(
                (
                    f"{device_id}:{event['id']}",
                    device_id,
                    batch_id,
                    event["kind"],
                    float(event["time"]),
                    now,
                    bundle_id,
                    dumps(payload),
                )
            )
        db.executemany(
            "INSERT INTO events (event_id, device_id, batch_id, kind, time, received_at, bundle_id, payload) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (event_id) DO NOTHING",
            rows,
        )
    return IngestOutcome(
        200, {"status": "stored", "batch_id": document["batch_id"], "events": len(document["events"])}
    )
