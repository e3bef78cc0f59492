"""Red-team findings against the issue-10 defences, each replayed against the real server or gate code.

Every test here failed on the code as merged and passes with the fix named in its docstring.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import pytest

from edgekit.rollout.gates import DeviceTelemetry, decide
from edgekit.rollout.plan import arm
from tests.adversarial._hostile import (
    HOUR,
    PLAIN,
    ROBUST,
    START,
    fleet_rows,
    honest_devices,
    insert_events,
    latency_sum,
    send_batch,
    truthful_decision,
)
from tests.server.fleet import evaluate, register_many, start_rollout
from tests.server.test_rollout_e2e import assert_replay_reproduces

# -- the SPRT's negligible-rate pass ignored the devices that could be removed ---------------------------
#
# `_sprt` checked "rollback at the lowest LLR", then "pass at the highest", then "the treatment's rate is
# negligible". A liar that adds clean treatment exposure (or control errors) drags the lowest LLR under A,
# and the negligible bound (on the treatment's rate without the removable devices) then passed the metric
# although the honest devices' own data shows a regression. Fixed: the negligible pass needs that no
# removal leaves a rollback (the highest LLR below A, or too few expected events).


def _clean_liar(now: float) -> DeviceTelemetry:
    return DeviceTelemetry(
        "liar",
        "treatment",
        reported=True,
        first=START,
        last=now,
        inferences=10**9,
        latency_histogram=(0, 0, 10**9) + (0,) * 10,
    )


def test_clean_inferences_from_one_device_do_not_turn_an_error_regression_into_a_promotion() -> None:
    hours = 3.0
    now = START + hours * HOUR
    honest = honest_devices(
        1,
        devices=(24, 24),
        hours=hours,
        crash_hazard=(0.02, 0.02),
        error_rate=(0.03, 0.0),  # a 3% error rate, under the 5% guardrail, against an error-free control
        slow_buckets=0,
        feedback=False,
        accuracy=(0.9, 0.9),
    )
    truth = decide(10, honest, PLAIN, now, START)
    assert truth.outcome == "rollback", truth
    attacked = decide(10, [*honest, _clean_liar(now)], ROBUST, now, START)
    assert attacked.outcome in ("rollback", "hold"), attacked


def test_the_robust_gates_never_pass_a_regression_the_plain_gates_roll_back() -> None:
    """Without any liar: taking the K most influential devices away must not turn a rollback into a pass."""
    hours = 3.0
    now = START + hours * HOUR
    honest = honest_devices(
        1,
        devices=(24, 24),
        hours=hours,
        crash_hazard=(0.02, 0.02),
        error_rate=(0.017, 0.0),
        slow_buckets=0,
        feedback=False,
        accuracy=(0.9, 0.9),
    )
    assert decide(10, honest, PLAIN, now, START).outcome == "rollback"
    assert decide(10, honest, ROBUST, now, START).outcome in ("rollback", "hold")


def test_a_liar_claiming_clean_inferences_over_http_does_not_promote_an_error_regression(fleet: Any) -> None:
    server, clock, tokens = fleet
    plan = start_rollout(server, "1.1.0", "1.0.0", [10, 50, 100])
    start = clock.now
    liar = next(d for d in sorted(tokens) if arm(plan, d) == "treatment")
    devices = [d for d in sorted(tokens) if d != liar]
    # 2 of every 60 treatment inferences fail (3.3%: under the 5% guardrail); the control has no errors.
    insert_events(server.app.state.database, fleet_rows(plan, devices, start, treatment_errors=2))
    most = [0, 0, 1_000_000] + [0] * 10  # fast, and more than the per-device cap lets count
    clean = {
        "bundle_id": plan.target.bundle_id,
        "inferences": sum(most),
        "errors": 0,
        "latency_ms_buckets": most,
        "latency_ms_sum": latency_sum(most),
        "window_s": 3600.0,
    }
    at = [start + 0.01 * HOUR, start + HOUR, start + 2.9 * HOUR]  # its reports span the window
    assert send_batch(server, liar, tokens[liar], [("inferences", t, clean) for t in at]) == 200
    refused = server.app.state.database.execute(
        "SELECT reason FROM quarantine WHERE device_id = ? AND received_at >= ?", (liar, start)
    )
    assert refused == [], refused  # within the contract: stored
    clock.now += 3 * HOUR
    result = evaluate(server)
    truth = truthful_decision(server, plan, clock.now, {liar})
    assert truth.outcome == "rollback", truth
    assert result["decision"]["outcome"] in ("rollback", "hold"), [
        (r["metric"], r["outcome"], r["detail"]) for r in result["decision"]["records"]
    ]
    assert_replay_reproduces(server, plan.rollout_id, expected=1)


# -- /healthz said ok while every batch failed on a table it did not read --------------------------------
#
# The read check queried five tables; ingest also writes `ingest_quota`, `device_bundles` and `quarantine`
# in the batch's transaction. With one of those unreadable every batch answered 500, and the write probe
# (a row in `server_health`) succeeded and cleared the remembered ingest failure: /healthz said ok. Fixed:
# the read check covers every table of the schema.


@pytest.mark.parametrize("storage", ["sqlite", "postgresql"])
def test_healthz_is_503_while_ingest_fails_on_a_missing_ingest_table(
    start_server: Any, storage: str, tmp_path: Any, request: pytest.FixtureRequest
) -> None:
    url = request.getfixturevalue("postgres_url") if storage == "postgresql" else None
    server = start_server(db_url=url)
    tokens = register_many(server, 1)
    device, token = next(iter(tokens.items()))
    database = server.app.state.database
    database.execute("DROP TABLE ingest_quota")
    try:
        now = time.time()
        body = {
            "schema": "edgekit.telemetry/v1",
            "batch_id": uuid.uuid4().hex,
            "device_id": device,
            "sent_at": now,
            "events": [{"id": "a", "kind": "telemetry-reset", "time": now, "payload": {"detail": "x"}}],
        }
        status, _ = server.http.request("POST", "/v1/telemetry", body, token=token)
        assert status == 500  # every batch fails while the table is gone
        for _ in range(2):  # the second check follows the write probe
            status, answer = server.http.request("GET", "/healthz")
            assert status == 503, answer
            assert "ingest_quota" in " ".join(answer["problems"]), answer
    finally:
        database.create_schema()  # a shared PostgreSQL database: put the table back
    status, answer = server.http.request("GET", "/healthz")
    assert status == 200, answer


# -- a device past its rate limit still cost a full parse and check per batch ----------------------------
#
# The token bucket was consulted after the body was parsed and every event checked: a refused 1 MB batch
# of 3,000 events cost ~45 ms of CPU (measured in-process), the same as storing it, so three devices
# sending over-limit batches back to back could keep both cores busy with 429s. Fixed: until the wait a
# 429 named is over, the device's batches are refused before their body is read as JSON.


def _reset_batch(device: str, events: int) -> dict[str, Any]:
    now = time.time()
    return {
        "schema": "edgekit.telemetry/v1",
        "batch_id": uuid.uuid4().hex,
        "device_id": device,
        "sent_at": now,
        "events": [
            {"id": uuid.uuid4().hex, "kind": "telemetry-reset", "time": now, "payload": {"detail": "x"}}
            for _ in range(events)
        ],
    }


@pytest.mark.parametrize("storage", ["sqlite", "postgresql"])
def test_a_device_past_its_limit_is_refused_before_its_batch_is_parsed(
    start_server: Any, storage: str, request: pytest.FixtureRequest
) -> None:
    from edgekit.server.ingest import IngestLimits, register_device

    url = request.getfixturevalue("postgres_url") if storage == "postgresql" else None
    server = start_server(db_url=url)
    server.app.state.ingest.limits = IngestLimits(burst_events=5000, events_per_hour=3600.0)
    database = server.app.state.database
    device, other = f"flooder-{uuid.uuid4().hex}", f"bystander-{uuid.uuid4().hex}"  # fresh token buckets
    token = register_device(database, device, "rpi4", time.time())
    assert server.http.request("POST", "/v1/telemetry", _reset_batch(device, 5000), token=token)[0] == 200
    status, answer = server.http.request("POST", "/v1/telemetry", _reset_batch(device, 5000), token=token)
    assert status == 429 and answer["retry_after_s"] >= 1, answer
    # Within the wait it was given, even a body that is not JSON is answered 429, not 400: it is not parsed.
    status, answer = server.http.request("POST", "/v1/telemetry", raw=b"{not json", token=token)
    assert status == 429 and answer["retry_after_s"] >= 1, answer
    status, answer = server.http.request("POST", "/v1/telemetry", _reset_batch(device, 1), token=token)
    assert status == 429, answer
    # Another device is not affected, and a wrong token is still 401 first.
    other_token = register_device(database, other, "rpi4", time.time())
    assert server.http.request("POST", "/v1/telemetry", _reset_batch(other, 1), token=other_token)[0] == 200
    assert server.http.request("POST", "/v1/telemetry", raw=b"{not json", token="wrong")[0] == 401


@pytest.mark.parametrize("storage", ["sqlite", "postgresql"])
def test_replaying_one_batch_id_is_bounded_before_parsing(
    start_server: Any, storage: str, request: pytest.FixtureRequest
) -> None:
    """A replayed batch id (409) or a malformed batch (400) cost a full parse and took nothing from the
    event bucket: one device could replay a 1 MB batch forever (~50 ms of CPU each, measured in-process).
    Their bytes now come from a per-device bucket of refused bytes, checked before parsing."""
    from edgekit.server.ingest import MAX_BATCH_BYTES, IngestLimits, register_device

    url = request.getfixturevalue("postgres_url") if storage == "postgresql" else None
    server = start_server(db_url=url)
    server.app.state.ingest.limits = IngestLimits(
        refused_burst_bytes=MAX_BATCH_BYTES, refused_bytes_per_hour=float(MAX_BATCH_BYTES)
    )
    device = f"replayer-{uuid.uuid4().hex}"
    token = register_device(server.app.state.database, device, "rpi4", time.time())
    body = _reset_batch(device, 3000)
    size = len(json.dumps(body))
    statuses = [server.http.request("POST", "/v1/telemetry", body, token=token)[0] for _ in range(12)]
    assert statuses[0] == 200
    replays = statuses[1:]
    assert set(replays) == {409, 429} and replays.index(429) <= MAX_BATCH_BYTES // size + 1, statuses
    assert replays[replays.index(429) :] == [429] * (len(replays) - replays.index(429)), statuses
    junk = b"{" + b" " * size  # as large as the batch, and not JSON: refused unread, not a 400
    status, answer = server.http.request("POST", "/v1/telemetry", raw=junk, token=token)
    assert status == 429 and answer["retry_after_s"] >= 1, answer
