"""Telemetry ingest under attack from one valid device token (findings 1, 2, 4 and 5 of the trusted-telemetry
review), against the real server on loopback, SQLite and PostgreSQL.

Each attack's payload used to be stored as if valid (or answered 500, or lost an honest device's events);
now a bad event is quarantined and counted, the rest of its batch is stored, and one device's volume is
bounded by per-device limits.
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.adversarial._telemetry import (
    HOUR,
    batch,
    bundle,
    database_url,
    event,
    fresh_server,
    honest,
    post,
    quarantined,
    register,
    stored,
)
from tests.server.conftest import ADMIN_TOKEN, LiveServer

DAY = 86_400.0


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return database_url(request, tmp_path)


@pytest.fixture()
def server(start_server: Any, deployment: Any, tmp_path: Path, url: str) -> LiveServer:
    return fresh_server(start_server, deployment, tmp_path, url)


def test_absurd_inference_counts_are_quarantined_not_stored(server: LiveServer, deployment: Any) -> None:
    """Finding 1: {"inferences": 10**12, "errors": 0} from one device turned a rollback into a promote."""
    target = bundle(deployment, "1.1.0")
    token = register(server, "attacker")
    flood = honest(target)
    flood.update(inferences=10**12, window_s=10.0)
    flood["latency_ms_buckets"][2] = 10**12
    tail = honest(target)  # finding 1's control-arm attack: 10**6 inferences above 5 s in ten minutes
    tail.update(inferences=10**6, latency_ms_buckets=[0] * 12 + [10**6], latency_ms_sum=5e9 + 1)
    good = honest(target)
    status, body = post(
        server,
        token,
        batch("attacker", [event("inferences", flood), event("inferences", tail), event("inferences", good)]),
    )
    assert status == 200, body
    assert (body["stored"], body["quarantined"]) == (1, 2)
    assert [r["reason"] for r in body["refused"]] == ["out-of-range", "latency-inconsistent"]
    rows = stored(server, "attacker")
    assert [json.loads(payload)["inferences"] for _, _, payload in rows] == [60]


@pytest.mark.parametrize(
    "field, value, reason",
    [
        pytest.param("inferences", "x", "wrong-type", id="string-count"),
        pytest.param("inferences", "9" * 400, "wrong-type", id="400-digit-string"),
        pytest.param("latency_ms_buckets", "zz", "wrong-type", id="string-histogram"),
        pytest.param("latency_ms_buckets", [0] * 12, "histogram-length", id="short-histogram"),
        pytest.param("errors", True, "wrong-type", id="bool-count"),
        pytest.param("errors", 61, "errors-exceed-inferences", id="more-errors-than-inferences"),
    ],
)
def test_malformed_payloads_are_quarantined_and_evaluation_keeps_answering(
    server: LiveServer, deployment: Any, field: str, value: Any, reason: str
) -> None:
    """Finding 2: such a payload made every gate evaluation raise (POST /v1/admin/evaluate answered 500)."""
    from edgekit.rollout.plan import RolloutPlan, arm
    from tests.server.fleet import start_rollout

    plan: RolloutPlan = start_rollout(server, "1.1.0", "1.0.0", [50, 100])
    device = next(f"dev-{i}" for i in range(1000) if arm(plan, f"dev-{i}") == "treatment")
    token = register(server, device)
    payload = honest(plan.target.bundle_id)
    payload[field] = value
    status, body = post(server, token, batch(device, [event("inferences", payload)]))
    assert status == 200 and body["quarantined"] == 1 and body["refused"][0]["reason"] == reason
    assert stored(server, device) == []
    assert [r[0] for r in quarantined(server, device)] == [reason]
    status, decisions = server.http.request("POST", "/v1/admin/evaluate", token=ADMIN_TOKEN)
    assert status == 200, decisions
    metrics = server.http.request("GET", "/metrics")[1]
    assert f'edgekit_telemetry_quarantined_total{{reason="{reason}"}} 1' in metrics


@pytest.mark.parametrize(
    "at",
    [
        pytest.param(1e308, id="1e308"),
        pytest.param(-1e12, id="minus-1e12"),
        pytest.param(3_980_000_000.0, id="year-2096"),
        pytest.param(time.time() - 400 * DAY, id="400-days-old"),
    ],
)
def test_event_times_outside_the_window_are_never_stored(
    server: LiveServer, deployment: Any, at: float
) -> None:
    """Finding 5: 1e308, -1e12 and 2096 were stored, and kept rows in the "last 24 h" view forever."""
    token = register(server, "clock-liar")
    target = bundle(deployment, "1.1.0")
    status, body = post(
        server,
        token,
        batch("clock-liar", [event("crash", {"bundle_id": target}, at), event("inferences", honest(target))]),
    )
    assert status == 200 and (body["stored"], body["quarantined"]) == (1, 1), body
    assert body["refused"][0]["reason"] in ("time-window", "out-of-range")
    now = time.time()
    assert all(now - 31 * DAY <= t <= now + DAY + 60 for _, t, _ in stored(server, "clock-liar"))


@pytest.mark.parametrize(
    "sent_at, at",
    [
        pytest.param("1e400", "NOW", id="sent_at-1e400"),
        pytest.param("9" * 400, "NOW", id="sent_at-400-digits"),
        pytest.param("NOW", "1e400", id="time-1e400"),
        pytest.param("NOW", "-" + "9" * 400, id="time-400-digits"),
    ],
)
def test_numbers_json_cannot_hold_answer_400_never_500(
    server: LiveServer, deployment: Any, sent_at: str, at: str
) -> None:
    """Finding 5: a 400-digit sent_at answered 500; a time of 1e400 was stored as Infinity."""
    token = register(server, "bignum")
    now = repr(time.time())
    raw = (
        '{"schema":"edgekit.telemetry/v1","batch_id":"b1","device_id":"bignum","sent_at":SENT,'
        '"events":[{"id":"e1","kind":"crash","time":TIME,"payload":{"bundle_id":"BUNDLE"}}]}'
    )
    raw = raw.replace("SENT", sent_at.replace("NOW", now)).replace("TIME", at.replace("NOW", now))
    raw = raw.replace("BUNDLE", bundle(deployment, "1.1.0"))
    status, answer = post(server, token, raw.encode())
    assert status == 400 and "Traceback" not in str(answer), answer
    assert stored(server, "bignum") == []


def test_a_crash_flood_in_one_request_is_bounded(server: LiveServer, deployment: Any) -> None:
    """Finding 1: 5,000 crash events in one request rolled a healthy release back."""
    token = register(server, "crasher")
    target = bundle(deployment, "1.1.0")
    now = time.time()
    flood = [event("crash", {"bundle_id": target}, now - i) for i in range(5000)]
    status, body = post(server, token, batch("crasher", flood))
    assert status == 200, body
    limits = server.app.state.ingest.limits
    crashes = stored(server, "crasher", "kind = 'crash'")
    assert len(crashes) == limits.crash_burst and body["quarantined"] == 5000 - limits.crash_burst
    assert (
        len(quarantined(server, "crasher")) == limits.quarantine_rows_per_device
    )  # bounded, the rest counted
    metrics = server.http.request("GET", "/metrics")[1]
    assert (
        f'edgekit_telemetry_quarantined_total{{reason="rate-limit"}} {5000 - limits.crash_burst}' in metrics
    )


def test_a_row_flood_from_one_device_is_bounded_by_its_rate_limit(
    server: LiveServer, deployment: Any
) -> None:
    """Finding 5: one device created 100k dashboard rows (13 MB); no per-device rate limit."""
    token = register(server, "flooder")
    target = bundle(deployment, "1.1.0")
    statuses = []
    for _ in range(20):  # 20 x 5,000 = 100k events
        status, body = post(
            server,
            token,
            batch(
                "flooder", [event("feedback", {"bundle_id": target, "correct": True}) for _ in range(5000)]
            ),
        )
        statuses.append(status)
        if status == 429:
            assert body["retry_after_s"] >= 1
    limits = server.app.state.ingest.limits
    (count,) = server.app.state.database.execute("SELECT COUNT(*) FROM events WHERE device_id = 'flooder'")[0]
    assert count <= limits.burst_events + 5000 and statuses.count(200) <= limits.burst_events // 5000 + 1
    assert 429 in statuses and 500 not in statuses
    honest_device = register(server, "bystander")  # the limit is per device: others are unaffected
    assert post(server, honest_device, batch("bystander", [event("inferences", honest(target))]))[0] == 200


def test_unpublished_and_script_bundle_ids_are_quarantined(server: LiveServer, deployment: Any) -> None:
    """Finding 3's ingest side: a bundle id is 64 hex digits of a published release, nothing else."""
    token = register(server, "xss")
    script = "<img src=x onerror=alert(1)>"
    events = [
        event("crash", {"bundle_id": script}),
        event("crash", {"bundle_id": "f" * 64}),  # well formed, never published
        event("crash", {"bundle_id": bundle(deployment, "1.0.0")}),
    ]
    status, body = post(server, token, batch("xss", events))
    assert status == 200 and [r["reason"] for r in body["refused"]] == ["bad-bundle-id", "unknown-bundle"]
    assert [json.loads(p)["bundle_id"] for _, _, p in stored(server, "xss")] == [bundle(deployment, "1.0.0")]


def test_too_many_distinct_bundles_from_one_device_are_quarantined(
    server: LiveServer, deployment: Any
) -> None:
    from edgekit.server.ingest import IngestLimits

    server.app.state.ingest.limits = IngestLimits(bundles_per_day=2)
    token = register(server, "hopper")
    ids = [bundle(deployment, v) for v in ("1.0.0", "1.1.0", "1.2.0")]
    status, body = post(server, token, batch("hopper", [event("crash", {"bundle_id": b}) for b in ids]))
    assert status == 200 and [r["reason"] for r in body["refused"]] == ["bundle-limit"]
    assert len(stored(server, "hopper")) == 2


def test_a_device_clock_40_days_off_keeps_its_crash_event(
    server: LiveServer, deployment: Any, tmp_path: Path
) -> None:
    """Finding 4: the server's 400 for sent_at made the uploader bisect the batch and drop it event by event,
    the crash event first. Now the server records the skew and rules the times; nothing is lost."""
    from device_runtime.telemetry import TelemetryQueue
    from device_runtime.uploader import Uploader, UploaderConfig

    token = register(server, "drifter")
    target = bundle(deployment, "1.1.0")
    skewed = lambda: time.time() + 40 * DAY  # noqa: E731 - the device's clock
    queue = TelemetryQueue(tmp_path / "q.db", max_events=100, clock=skewed)
    queue.record("crash", bundle_id=target, version="1.1.0", during="inference")
    for _ in range(30):
        queue.record_inference(target, "1.1.0", 4.0, ok=True)
    queue.flush()
    config = UploaderConfig(
        endpoint=f"http://127.0.0.1:{server.port}/v1/telemetry",
        device_id="drifter",
        token=token,
        batch_size=1,
    )
    uploader = Uploader(queue, config, clock=skewed, sleep=lambda s: None, rng=random.Random(0))
    for _ in range(10):
        if uploader.upload_once().sent == 0:
            break
    assert queue.pending(10) == [] and uploader.counters["acknowledged"] == 2
    rows = stored(server, "drifter")
    assert sorted(kind for kind, _, _ in rows) == ["crash", "inferences"]
    assert all(abs(t - time.time()) < HOUR for _, t, _ in rows)  # rebased to the server's clock
    (skew,) = server.app.state.database.execute(
        "SELECT clock_skew_s FROM ingest_quota WHERE device_id = 'drifter'"
    )[0]
    assert abs(skew - 40 * DAY) < HOUR


# ---- property: what the device would send is accepted; mutations are accepted or quarantined, never 500 --
_JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**53) + 1, 2**53 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=6,
)


@st.composite
def _device_events(draw: st.DrawFn, bundles: list[str]) -> list[tuple[str, dict[str, Any]]]:
    """Events as the runtime records them (the queue's own contract check filters what it would not)."""
    out = []
    for _ in range(draw(st.integers(1, 6))):
        b = draw(st.sampled_from(bundles))
        kind = draw(
            st.sampled_from(["inferences", "crash", "feedback", "install", "trial", "slot-verify-failed"])
        )
        if kind == "inferences":
            out.append(
                (
                    "inferences",
                    {
                        "latencies": draw(st.lists(st.floats(0, 2_000), min_size=1, max_size=20)),
                        "bundle_id": b,
                        "errors": draw(st.integers(0, 3)),
                    },
                )
            )
        elif kind == "crash":
            out.append(("crash", {"bundle_id": b, "version": "1.1.0", "during": "inference"}))
        elif kind == "feedback":
            out.append(("feedback", {"bundle_id": b, "correct": draw(st.booleans())}))
        elif kind == "install":
            out.append(
                (
                    "install",
                    {
                        "outcome": "activated",
                        "bundle_id": b,
                        "version": "1.1.0",
                        "model_sha256": b,
                        "self_test_sqnr_db": {"logits": draw(st.floats(30, 100))},
                    },
                )
            )
        elif kind == "trial":
            out.append(
                (
                    "trial",
                    {
                        "outcome": draw(st.sampled_from(["committed", "reverted"])),
                        "bundle_id": b,
                        "version": "1.1.0",
                        "reasons": [draw(st.text(max_size=400))],
                    },
                )
            )
        else:
            out.append(
                (
                    "slot-verify-failed",
                    {"slot": "a", "reason": "signature", "detail": draw(st.text(max_size=400))},
                )
            )
    return out


@pytest.mark.slow
def test_what_the_uploader_sends_is_accepted_and_mutations_never_answer_500(
    start_server: Any, deployment: Any, tmp_path: Path
) -> None:
    from device_runtime.telemetry import TelemetryQueue
    from device_runtime.telemetry_contract import parse_event
    from device_runtime.uploader import Uploader, UploaderConfig

    server = fresh_server(start_server, deployment, tmp_path, f"sqlite:///{tmp_path / 'property.db'}")
    bundles = [bundle(deployment, v) for v in ("1.0.0", "1.1.0", "1.2.0")]
    counter = iter(range(10**6))

    @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
    @given(
        recorded=_device_events(bundles),
        mutation=st.tuples(
            st.integers(0, 10**6), st.sampled_from(["id", "kind", "time", "payload", "field"]), _JSON
        ),
    )
    def check(recorded: list[tuple[str, dict[str, Any]]], mutation: tuple[int, str, Any]) -> None:
        device = f"prop-{next(counter)}"
        token = register(server, device)
        queue = TelemetryQueue(tmp_path / f"{device}.db", max_events=1000, clock=time.time)
        for kind, payload in recorded:
            if kind == "inferences":
                for i, latency in enumerate(payload["latencies"]):
                    queue.record_inference(payload["bundle_id"], "1.1.0", latency, ok=i >= payload["errors"])
                queue.flush()
            else:
                queue.record(kind, **payload)
        sent = [
            {"id": e.event_id, "kind": e.kind, "time": e.time, "payload": e.payload}
            for e in queue.pending(1000)
        ]
        config = UploaderConfig(
            endpoint=f"http://127.0.0.1:{server.port}/v1/telemetry", device_id=device, token=token
        )
        uploader = Uploader(queue, config, sleep=lambda s: None, rng=random.Random(0))
        while uploader.upload_once().sent:
            pass
        assert queue.pending(1000) == [] and uploader.counters["refused"] == uploader.counters["invalid"] == 0
        assert queue.stats()["invalid"] == 0  # the generator makes only what a runtime would record
        assert len(stored(server, device)) == len(sent)
        # One field of one event replaced by arbitrary JSON: accepted if the contract allows it, else
        # quarantined; the batch is never refused as a whole and the server never answers 500.
        index, where, value = mutation
        events = json.loads(json.dumps(sent))
        for item in events:
            item["id"] += "m"
        target = events[index % len(events)]
        if where == "field":
            keys = sorted(target["payload"])
            target["payload"][keys[index % len(keys)]] = value
        else:
            target[where] = value
        status, body = post(server, token, batch(device, events))
        assert status == 200, body
        try:
            parse_event(target)
            valid = True
        except Exception:
            valid = False
        assert body["stored"] + body["quarantined"] == len(events)
        assert body["quarantined"] <= 1 and (body["quarantined"] == 0 or not valid or where in ("time", "id"))

    check()
