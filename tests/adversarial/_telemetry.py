"""Helpers for the telemetry ingest attacks: a fresh server per test on SQLite or PostgreSQL, devices with
tokens, raw batches, and what the database holds afterwards."""

from __future__ import annotations

import json
import shutil
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.server.conftest import LiveServer, empty_database

HOUR = 3600.0
BUCKETS = 13  # len(LATENCY_BUCKETS_MS) + 1


def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """SQLite in tmp_path, or the test PostgreSQL emptied of earlier tests' rows."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'adversarial.db'}"
    return empty_database(request.getfixturevalue("postgres_url"), tmp_path)


def fresh_server(
    start_server: Callable[..., LiveServer], deployment: Any, tmp_path: Path, url: str, **kw: Any
) -> LiveServer:
    """A live server over a private copy of the published repository (rollouts write into it)."""
    data_dir = tmp_path / "data"
    shutil.copytree(deployment.data_dir, data_dir, symlinks=True)
    return start_server(db_url=url, data_dir=data_dir, **kw)


def register(server: LiveServer, device_id: str) -> str:
    from edgekit.server import ingest

    return ingest.register_device(server.app.state.database, device_id, "rpi4", time.time())


def bundle(deployment: Any, version: str) -> str:
    """The bundle id (payload SHA-256) of a published release, as the repository lists it."""
    from edgekit.server.tuf_repo import TufRepository

    for target in TufRepository(deployment.data_dir).status()["targets"]:
        custom = target.get("custom") or {}
        if custom.get("version") == version:
            return str(custom["bundle_id"])
    raise LookupError(version)


def honest(bundle_id: str, inferences: int = 60, window_s: float = 600.0) -> dict[str, Any]:
    """An inference aggregate a real device could send: 60 inferences of 2-5 ms in ten minutes."""
    buckets = [0] * BUCKETS
    buckets[2] = inferences
    return {
        "bundle_id": bundle_id,
        "version": "1.1.0",
        "inferences": inferences,
        "errors": 0,
        "latency_ms_buckets": buckets,
        "latency_ms_sum": 3.0 * inferences,
        "window_s": window_s,
    }


def event(
    kind: str, payload: dict[str, Any], at: float | None = None, event_id: str | None = None
) -> dict[str, Any]:
    return {
        "id": event_id or uuid.uuid4().hex,
        "kind": kind,
        "time": time.time() if at is None else at,
        "payload": payload,
    }


def batch(device_id: str, events: list[dict[str, Any]], sent_at: Any = None) -> dict[str, Any]:
    return {
        "schema": "edgekit.telemetry/v1",
        "batch_id": uuid.uuid4().hex,
        "device_id": device_id,
        "sent_at": time.time() if sent_at is None else sent_at,
        "events": events,
    }


def post(server: LiveServer, token: str, document: dict[str, Any] | bytes) -> tuple[int, Any]:
    raw = document if isinstance(document, bytes) else json.dumps(document).encode()
    return server.http.request("POST", "/v1/telemetry", raw=raw, token=token)


def stored(server: LiveServer, device_id: str, where: str = "1 = 1") -> list[tuple[Any, ...]]:
    """(kind, time, payload) of the events stored for a device."""
    return server.app.state.database.execute(
        f"SELECT kind, time, payload FROM events WHERE device_id = ? AND {where}", (device_id,)
    )


def quarantined(server: LiveServer, device_id: str) -> list[tuple[Any, ...]]:
    return server.app.state.database.execute(
        "SELECT reason, snippet FROM quarantine WHERE device_id = ?", (device_id,)
    )
