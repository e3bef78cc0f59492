"""`edgekit serve` for real on loopback: health, metrics, admin auth, telemetry ingest, durability."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import pytest

from tests.server.conftest import ADMIN_TOKEN, LiveServer, empty_database


def batch(
    device_id: str, events: list[dict[str, Any]], *, batch_id: str | None = None, sent_at: float | None = None
) -> dict[str, Any]:
    return {
        "schema": "edgekit.telemetry/v1",
        "batch_id": batch_id or uuid.uuid4().hex,
        "device_id": device_id,
        "sent_at": time.time() if sent_at is None else sent_at,
        "events": events,
    }


def event(kind: str, at: float, **payload: Any) -> dict[str, Any]:
    return {"id": uuid.uuid4().hex, "kind": kind, "time": at, "payload": payload}


def register(server: LiveServer, device_id: str) -> str:
    status, body = server.http.request(
        "POST", "/v1/admin/devices", {"device_id": device_id, "hardware_id": "rpi4"}, token=ADMIN_TOKEN
    )
    assert status == 200, body
    return str(body["token"])


def known_bundle(server: LiveServer) -> str:
    """The bundle id of a release the server's repository has published."""
    return sorted(server.app.state.ingest.known_bundles())[0]


def oversized_status(server: LiveServer, token: str) -> int:
    """Declare a 2 MB body: the server must answer 413 before reading it (so send only the headers)."""
    import http.client

    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    connection.putrequest("POST", "/v1/telemetry")
    connection.putheader("Authorization", f"Bearer {token}")
    connection.putheader("Content-Type", "application/json")
    connection.putheader("Content-Length", str(2_000_000))
    connection.endheaders()
    status = connection.getresponse().status
    connection.close()
    return status


def test_health_metrics_and_openapi_are_served(start_server: Any) -> None:
    server = start_server()
    assert server.http.request("GET", "/healthz") == (200, {"status": "ok"})
    status, text = server.http.request("GET", "/metrics")
    assert status == 200 and "# TYPE edgekit_rollouts gauge" in text
    status, spec = server.http.request("GET", "/openapi.json")
    assert status == 200 and "/v1/telemetry" in spec["paths"] and "/v1/admin/rollouts" in spec["paths"]
    status, root = server.http.request("GET", "/repo/metadata/1.root.json")
    assert status == 200 and root["signed"]["_type"] == "root"


@pytest.mark.parametrize("token", [None, "wrong-token", ADMIN_TOKEN[:-1]], ids=["none", "wrong", "prefix"])
def test_admin_endpoints_refuse_a_missing_or_wrong_token(start_server: Any, token: str | None) -> None:
    server = start_server()
    for method, path in (("GET", "/v1/admin/rollouts"), ("POST", "/v1/admin/evaluate")):
        status, body = server.http.request(method, path, token=token)
        assert status == 401 and "admin" in body["detail"]
    assert server.http.request("GET", "/v1/admin/rollouts", token=ADMIN_TOKEN)[0] == 200


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Any) -> str | None:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'ingest.db'}"
    return empty_database(request.getfixturevalue("postgres_url"), tmp_path)


def test_telemetry_is_authenticated_idempotent_and_bounded(start_server: Any, db_url: str) -> None:
    server = start_server(db_url=db_url)
    token = register(server, "dev-1")
    good = batch("dev-1", [event("feedback", time.time(), bundle_id=known_bundle(server), correct=True)])
    assert server.http.request("POST", "/v1/telemetry", good, token=token)[0] == 200
    status, body = server.http.request("POST", "/v1/telemetry", good, token=token)
    assert status == 409 and body["status"] == "duplicate"  # a retried batch counts once
    forged = batch("dev-1", [event("crash", time.time(), bundle_id="b" * 64)])
    assert server.http.request("POST", "/v1/telemetry", forged, token="not-the-token")[0] == 401
    other = batch("dev-2", [event("crash", time.time())])
    assert (
        server.http.request("POST", "/v1/telemetry", other, token=token)[0] == 401
    )  # dev-1's token for dev-2
    assert oversized_status(server, token) == 413
    for bad in (
        b"not json",
        b'{"schema": "edgekit.telemetry/v1", "schema": 1}',
        json.dumps({"events": []}).encode(),
        json.dumps(batch("dev-1", [event("crash", time.time())], sent_at=1e400)).encode(),
    ):
        status, body = server.http.request("POST", "/v1/telemetry", raw=bad, token=token)
        assert status == 400 and "Traceback" not in json.dumps(body)
    # A bad event is quarantined on its own: the batch is answered 200 and names it.
    odd = batch("dev-1", [{"id": "1", "kind": "BAD KIND", "time": 0, "payload": {}}])
    status, body = server.http.request("POST", "/v1/telemetry", odd, token=token)
    assert status == 200 and (body["stored"], body["quarantined"]) == (0, 1)
    assert body["refused"] == [{"id": "1", "reason": "unknown-kind"}]
    metrics = server.http.request("GET", "/metrics")[1]
    for reason in ("forged", "replayed", "oversized", "malformed"):
        assert f'edgekit_telemetry_rejected{{reason="{reason}"}}' in metrics
    assert 'edgekit_telemetry_quarantined_total{reason="unknown-kind"} 1' in metrics
    assert 'edgekit_telemetry_batches_total{result="stored"} 2' in metrics


def test_a_restarted_server_keeps_every_acknowledged_batch(start_server: Any, tmp_path: Any) -> None:
    url = f"sqlite:///{tmp_path / 'durable.db'}"
    first = start_server(db_url=url)
    token = register(first, "dev-9")
    bundle = known_bundle(first)
    sent = [
        batch("dev-9", [event("feedback", time.time(), bundle_id=bundle, correct=i % 2 == 0)])
        for i in range(20)
    ]
    for item in sent:
        assert first.http.request("POST", "/v1/telemetry", item, token=token)[0] == 200
    first.stop()
    second = start_server(db_url=url)
    for item in sent:  # the device retries everything it is unsure about: all are already stored
        assert second.http.request("POST", "/v1/telemetry", item, token=token)[0] == 409
    from edgekit.server.storage import open_database

    rows = open_database(url, tmp_path).execute("SELECT COUNT(*) FROM events WHERE device_id = 'dev-9'")
    assert rows[0][0] == 20


def test_only_one_replica_evaluates_gates_at_a_time(postgres_url: str, tmp_path: Any) -> None:
    from edgekit.server.storage import open_database

    first, second = open_database(postgres_url, tmp_path), open_database(postgres_url, tmp_path)
    assert first.try_evaluator_lock()
    assert not second.try_evaluator_lock()
    first.release_evaluator_lock()
    assert second.try_evaluator_lock()
    second.release_evaluator_lock()
