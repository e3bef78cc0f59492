"""The telemetry uploader against a real loopback HTTP server (no fake network), clock and sleep injected."""

from __future__ import annotations

import json
import random
import socket
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from device_runtime.telemetry import TelemetryQueue
from device_runtime.uploader import SCHEMA, Uploader, UploaderConfig

# (status, body) for a received batch; the default accepts everything.
Responder = Callable[[dict[str, Any]], tuple[int, bytes]]


class RecordingServer:
    """A ThreadingHTTPServer on 127.0.0.1:0 that records every POST and answers through `responder`."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []  # {"headers", "body" (bytes), "batch" (parsed or None)}
        self.responder: Responder = lambda batch: (200, b'{"ok": true}')
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(length)
                try:
                    batch = json.loads(body)
                except ValueError:
                    batch = None
                server.requests.append(
                    {"path": self.path, "headers": dict(self.headers), "body": body, "batch": batch}
                )
                status, answer = server.responder(batch)
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}/v1/telemetry"
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()

    @property
    def batches(self) -> list[dict[str, Any]]:
        return [r["batch"] for r in self.requests]

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)


@pytest.fixture
def server() -> Iterator[RecordingServer]:
    s = RecordingServer()
    yield s
    s.close()


@pytest.fixture
def queue(tmp_path: Path) -> Iterator[TelemetryQueue]:
    q = TelemetryQueue(tmp_path / "telemetry.db", max_events=10_000, clock=lambda: 1_000.0)
    yield q
    q.close()


def fill(queue: TelemetryQueue, count: int, detail: str | None = None) -> None:
    """`count` contract-valid events numbered by their reason code (r0, r1, ...)."""
    for i in range(count):
        if detail is None:
            queue.record("install", outcome="refused", reason=f"r{i}")
        else:
            queue.record("install", outcome="refused", reason=f"r{i}", detail=detail)


def index(event: dict[str, Any]) -> int:
    return int(event["payload"]["reason"][1:])


def make(queue: TelemetryQueue, url: str, **overrides: Any) -> Uploader:
    config = UploaderConfig(endpoint=url, device_id="dev-1", **overrides)
    return Uploader(queue, config, clock=lambda: 2_000.5, rng=random.Random(0), sleep=lambda s: None)


def test_success_sends_one_batch_and_empties_the_queue(
    server: RecordingServer, queue: TelemetryQueue
) -> None:
    fill(queue, 5)
    uploader = make(queue, server.url)
    result = uploader.upload_once()
    assert (result.sent, result.acknowledged, result.status, result.error) == (5, 5, 200, None)
    assert queue.pending(100) == []
    (batch,) = server.batches
    assert batch["schema"] == SCHEMA and batch["device_id"] == "dev-1" and batch["sent_at"] == 2_000.5
    assert [index(e) for e in batch["events"]] == [0, 1, 2, 3, 4]
    assert set(batch["events"][0]) == {"id", "kind", "time", "payload"}
    assert server.requests[0]["headers"]["Content-Type"] == "application/json"
    assert "Authorization" not in server.requests[0]["headers"]
    assert server.requests[0]["headers"]["X-Edgekit-Device"] == "dev-1"
    assert uploader.upload_once() == (result.__class__(0, 0, None, None))  # nothing left: no request
    assert len(server.requests) == 1


def test_the_token_is_sent_as_a_bearer_header(server: RecordingServer, queue: TelemetryQueue) -> None:
    fill(queue, 1)
    assert make(queue, server.url, token="s3cret-token").upload_once().acknowledged == 1
    assert server.requests[0]["headers"]["Authorization"] == "Bearer s3cret-token"


def test_batches_hold_at_most_batch_size_events(server: RecordingServer, queue: TelemetryQueue) -> None:
    fill(queue, 7)
    uploader = make(queue, server.url, batch_size=3)
    assert [uploader.upload_once().sent for _ in range(4)] == [3, 3, 1, 0]
    assert [len(b["events"]) for b in server.batches] == [3, 3, 1]


def test_409_already_stored_counts_as_delivered(server: RecordingServer, queue: TelemetryQueue) -> None:
    fill(queue, 2)
    server.responder = lambda batch: (409, b'{"error": "duplicate batch"}')
    result = make(queue, server.url).upload_once()
    assert result.acknowledged == 2 and not result.failed
    assert queue.pending(10) == []


@pytest.mark.parametrize("status", [500, 503, 429, 401, 302])
def test_a_server_failure_keeps_the_events_and_retries_the_same_batch(
    server: RecordingServer, queue: TelemetryQueue, status: int
) -> None:
    fill(queue, 4)
    uploader = make(queue, server.url)
    server.responder = lambda batch: (status, b"busy")
    first = uploader.upload_once()
    assert (
        first.failed
        and first.status == status
        and first.acknowledged == 0
        and str(status) in str(first.error)
    )
    assert len(queue.pending(10)) == 4
    fill(queue, 3)  # new events arrive meanwhile: the retry must still be the same batch
    server.responder = lambda batch: (200, b"{}")
    second = uploader.upload_once()
    assert second.acknowledged == 4 and uploader.consecutive_failures == 0
    a, b = server.batches
    assert a["batch_id"] == b["batch_id"] and a["events"] == b["events"]
    third = uploader.upload_once()
    assert third.acknowledged == 3 and server.batches[2]["batch_id"] != a["batch_id"]


def test_batch_id_is_deterministic_per_device_and_events(server: RecordingServer, tmp_path: Path) -> None:
    queue = TelemetryQueue(tmp_path / "t.db", max_events=100, clock=lambda: 1.0)
    fill(queue, 3)
    events = queue.pending(10)
    one = make(queue, server.url)
    other = Uploader(queue, UploaderConfig(endpoint=server.url, device_id="dev-2"))
    assert one.batch_id(events) == make(queue, server.url).batch_id(events)
    assert one.batch_id(events) != other.batch_id(events)
    assert one.batch_id(events) != one.batch_id(events[:2])
    queue.close()


def test_backoff_grows_exponentially_with_full_jitter_and_resets(
    server: RecordingServer, queue: TelemetryQueue
) -> None:
    class Top(random.Random):
        def random(self) -> float:
            return 0.999

    fill(queue, 1)
    server.responder = lambda batch: (500, b"")
    config = UploaderConfig(endpoint=server.url, device_id="d", base_backoff_s=1.0, max_backoff_s=30.0)
    uploader = Uploader(queue, config, rng=Top(), clock=lambda: 0.0)
    assert uploader.next_delay() == 0.0
    ceilings = []
    for _ in range(7):
        assert uploader.upload_once().failed
        ceilings.append(round(uploader.next_delay() / 0.999, 6))
    assert ceilings == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]
    # A real generator spreads the delays over [0, ceiling]: not all the same, never above it.
    jittered = Uploader(queue, config, rng=random.Random(1), clock=lambda: 0.0)
    for _ in range(6):
        jittered.upload_once()
    draws = [jittered.next_delay() for _ in range(50)]
    assert all(0.0 <= d <= 30.0 for d in draws) and len(set(draws)) == 50 and min(draws) < 15.0
    server.responder = lambda batch: (200, b"")
    assert uploader.upload_once().acknowledged == 1
    assert uploader.next_delay() == 0.0 and uploader.consecutive_failures == 0


@pytest.mark.parametrize("status", [400, 401, 403, 500])
def test_a_refused_batch_is_never_bisected_or_dropped(
    server: RecordingServer, queue: TelemetryQueue, status: int
) -> None:
    """A 400 is an envelope, clock or version problem of the whole batch (finding 4: a device whose clock
    is 40 days off got 400s, bisected its batch and dropped its events one by one, the crash first)."""
    queue.record("crash", bundle_id="c" * 64, during="inference")
    fill(queue, 9)
    server.responder = lambda batch: (status, b'{"error": "sent_at is more than 30 days away"}')
    uploader = make(queue, server.url, batch_size=8)
    for _ in range(12):
        result = uploader.upload_once()
        assert result.failed and result.dropped == 0 and result.acknowledged == 0
    assert {len(b["events"]) for b in server.batches} == {8}  # the same batch, never halved
    assert len({b["batch_id"] for b in server.batches}) == 1
    assert len(queue.pending(100)) == 10 and queue.pending(1)[0].kind == "crash"
    assert uploader.counters["oversize"] == uploader.counters["invalid"] == 0
    server.responder = lambda batch: (200, b"{}")
    while uploader.upload_once().sent:
        pass
    assert queue.pending(100) == [] and server.batches[-2]["events"][0]["kind"] == "crash"


def test_events_the_server_quarantined_are_acknowledged_and_counted(
    server: RecordingServer, queue: TelemetryQueue
) -> None:
    fill(queue, 4)
    server.responder = lambda batch: (
        200,
        json.dumps(
            {"stored": 3, "quarantined": 1, "refused": [{"id": "x", "reason": "rate-limit"}]}
        ).encode(),
    )
    result = make(queue, server.url).upload_once()
    assert (result.acknowledged, result.refused) == (4, 1) and queue.pending(10) == []


def test_429_keeps_the_events_and_waits_at_least_retry_after(
    server: RecordingServer, queue: TelemetryQueue
) -> None:
    fill(queue, 3)
    server.responder = lambda batch: (429, b'{"error": "over the limit", "retry_after_s": 120}')
    uploader = make(queue, server.url, base_backoff_s=1.0, max_backoff_s=600.0)
    result = uploader.upload_once()
    assert result.failed and result.status == 429 and len(queue.pending(10)) == 3
    assert 120.0 <= uploader.next_delay() <= 600.0 and uploader.counters["rate_limited"] == 1
    server.responder = lambda batch: (200, b"{}")
    assert uploader.upload_once().acknowledged == 3 and uploader.next_delay() == 0.0


def test_the_queue_records_only_contract_valid_payloads(queue: TelemetryQueue) -> None:
    queue.record("inferences", bundle_id="a" * 64, inferences=10**12, errors=0)  # finding 1's payload
    queue.record("feedback", bundle_id="<script>", correct=True)
    queue.record("no-such-kind", detail="x")
    queue.record("install", outcome="refused", reason="signature", detail="y" * 5000)  # clipped, kept
    assert queue.stats()["invalid"] == 3 and len(queue.pending(10)) == 1
    assert len(queue.pending(1)[0].payload["detail"]) == 300


def test_inference_aggregates_carry_the_window_they_cover(tmp_path: Path) -> None:
    from device_runtime.telemetry_contract import MAX_WINDOW_S, parse_payload

    now = [100.0]
    queue = TelemetryQueue(
        tmp_path / "t.db", max_events=100, clock=lambda: 1.0, flush_every=10**6, monotonic=lambda: now[0]
    )
    for _ in range(5):
        now[0] += 2.0
        queue.record_inference("b" * 64, "1.0.0", 1.5, ok=True)
    now[0] += MAX_WINDOW_S  # the next inference would stretch the window past the contract's bound
    queue.record_inference("b" * 64, "1.0.0", 1.5, ok=False)
    queue.flush()
    first, second = (parse_payload(e.kind, e.payload) for e in queue.pending(10))
    assert first.inferences == 5 and abs(first.window_s - (8.0 + 0.0015)) < 1e-9  # type: ignore[union-attr]
    assert second.inferences == 1 and second.errors == 1  # type: ignore[union-attr]
    queue.close()


def test_an_event_this_device_made_invalid_is_dropped_unsent(
    server: RecordingServer, queue: TelemetryQueue
) -> None:
    fill(queue, 2)
    # An older firmware's event (written straight into the queue): it violates the contract.
    queue._db.execute(
        "INSERT INTO events (event_id, kind, time, payload) VALUES ('old1', 'inferences', 5.0, ?)",
        (json.dumps({"bundle_id": "a" * 64, "inferences": "x"}),),
    )
    fill(queue, 2)
    uploader = make(queue, server.url)
    results = [uploader.upload_once() for _ in range(4)]
    assert [r.sent for r in results] == [2, 0, 2, 0] and results[1].dropped == 1
    assert uploader.counters["invalid"] == 1 and queue.pending(10) == []
    assert all(e["id"] != "old1" for b in server.batches for e in b["events"])


def test_413_on_a_single_event_drops_it(server: RecordingServer, queue: TelemetryQueue) -> None:
    fill(queue, 1)
    server.responder = lambda batch: (413, b"too large")
    result = make(queue, server.url).upload_once()
    assert (result.sent, result.dropped, result.status) == (1, 1, 413) and not result.failed
    assert queue.pending(10) == []


def test_the_body_size_cap_splits_batches(server: RecordingServer, queue: TelemetryQueue) -> None:
    fill(queue, 20, detail="x" * 300)
    cap = 2048
    uploader = make(queue, server.url, max_body_bytes=cap)
    while uploader.upload_once().sent:
        pass
    sizes = [len(r["body"]) for r in server.requests]
    assert len(sizes) > 1 and max(sizes) <= cap
    assert sorted(index(e) for b in server.batches for e in b["events"]) == list(range(20))


def test_an_event_larger_than_the_cap_is_dropped_and_counted(
    server: RecordingServer, queue: TelemetryQueue
) -> None:
    queue.record("trial", outcome="reverted", bundle_id="d" * 64, reasons=["y" * 300] * 20)  # ~6 KB
    fill(queue, 2)
    uploader = make(queue, server.url, max_body_bytes=2048)
    first = uploader.upload_once()
    assert (first.sent, first.dropped) == (0, 1) and uploader.counters["oversize"] == 1
    assert server.requests == []
    assert uploader.upload_once().acknowledged == 2


def test_server_down_is_an_error_result_and_keeps_the_events(queue: TelemetryQueue) -> None:
    with socket.socket() as probe:  # a port that was free a moment ago: nothing listens there
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    fill(queue, 3)
    uploader = make(queue, f"http://127.0.0.1:{port}/v1/telemetry", timeout_s=2.0)
    result = uploader.upload_once()
    assert result.failed and result.status is None and result.acknowledged == 0
    assert "no answer" in str(result.error)
    assert len(queue.pending(10)) == 3 and uploader.consecutive_failures == 1


def test_a_hanging_server_times_out(queue: TelemetryQueue) -> None:
    with socket.socket() as listener:  # accepts connections (backlog) but never answers
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        fill(queue, 1)
        uploader = make(queue, f"http://127.0.0.1:{listener.getsockname()[1]}/", timeout_s=0.3)
        result = uploader.upload_once()
    assert result.failed and result.status is None and len(queue.pending(10)) == 1


def test_run_drains_backs_off_and_stops_without_raising(
    server: RecordingServer, queue: TelemetryQueue
) -> None:
    fill(queue, 5)
    answers = iter([500, 500, 200])
    server.responder = lambda batch: (next(answers, 200), b"")
    stop = threading.Event()
    waits: list[float] = []

    def sleep(seconds: float) -> None:
        waits.append(seconds)
        if queue.pending(1) == [] or len(waits) > 20:
            stop.set()  # idle: end the loop

    config = UploaderConfig(endpoint=server.url, device_id="d", batch_size=2, idle_poll_s=7.0)
    Uploader(queue, config, sleep=sleep, rng=random.Random(3), clock=lambda: 0.0).run(stop)
    assert queue.pending(10) == []
    assert len(waits) == 3 and waits[-1] == 7.0  # two backoffs, then one idle poll
    assert 0.0 <= waits[0] <= 1.0 and 0.0 <= waits[1] <= 2.0


def test_run_survives_a_broken_queue(server: RecordingServer, tmp_path: Path) -> None:
    queue = TelemetryQueue(tmp_path / "t.db", max_events=10, clock=lambda: 0.0)
    queue.close()  # every pending() now raises
    stop = threading.Event()
    calls: list[float] = []

    def sleep(seconds: float) -> None:
        calls.append(seconds)
        if len(calls) == 3:
            stop.set()

    config = UploaderConfig(endpoint=server.url, device_id="d")
    Uploader(queue, config, sleep=sleep, rng=random.Random(0)).run(stop)
    assert len(calls) == 3


@pytest.mark.parametrize(
    "overrides",
    [
        pytest.param({"endpoint": "ftp://example.com/x"}, id="not-http"),
        pytest.param({"endpoint": "http://fleet.example.com/t"}, id="cleartext-to-remote-host"),
        pytest.param({"device_id": ""}, id="no-device-id"),
        pytest.param({"token": "a\r\nX-Evil: 1"}, id="header-injection"),
        pytest.param({"batch_size": 0}, id="empty-batches"),
        pytest.param({"max_backoff_s": 0.5}, id="cap-below-base"),
    ],
)
def test_bad_configs_are_refused(overrides: dict[str, Any]) -> None:
    fields = {"endpoint": "https://fleet.example.com/t", "device_id": "d", **overrides}
    with pytest.raises(ValueError):
        UploaderConfig(**fields)


def test_plain_http_to_a_remote_host_needs_the_unsafe_flag() -> None:
    config = UploaderConfig(endpoint="http://fleet.example.com/t", device_id="d", unsafe_allow_http=True)
    assert config.unsafe_allow_http
