"""Telemetry upload: drain the on-device queue to the server in bounded, idempotent JSON batches.

    uploader = Uploader(rt.telemetry, UploaderConfig(endpoint="https://fleet.example/v1/telemetry",
                                                     device_id="dev-42", token=token))
    stop = threading.Event()
    threading.Thread(target=uploader.run, args=(stop,), daemon=True).start()

One batch is one POST of ``edgekit.telemetry/v1`` JSON holding the oldest queued events. Its ``batch_id`` is
``sha256("{device_id}\\n{first_event_id}\\n{last_event_id}")``, and after a failure the very same events are
re-sent, so a batch whose first attempt reached the server but whose answer was lost is ingested once.
Every event is checked with `device_runtime.telemetry_contract.parse_event` first: one the device itself
made invalid is dropped here and counted (``counters["invalid"]``), never sent. Outcomes by HTTP status:

- 2xx, or 409 (the server already has that batch): the events are acknowledged (deleted from the queue).
  The server stores every valid event and quarantines the ones it refuses (unknown bundle, times outside
  its window, rate limits); its answer names those (``refused``), counted as ``counters["refused"]``;
- 413 (the batch is too large for the server): the batch is halved, down to one event, and only a single
  event that alone is too large is dropped (``counters["oversize"]``);
- 429 (the device is over its rate limit): the events stay queued and the next attempt waits at least the
  ``retry_after_s`` the answer names (and the usual backoff);
- anything else (400, 401/403, 5xx, redirects) and network errors or timeouts: the events stay queued and
  the next attempt waits an exponential backoff with full jitter (``next_delay``), reset by a success. A
  400 is an envelope, clock or version problem of the whole batch, never a reason to drop an event: a
  device whose clock is 40 days off keeps every event, its crash reports first of all (the server rebases
  the times).

Bounded: a batch holds at most ``batch_size`` events and ``max_body_bytes`` of JSON (an event that alone is
larger is dropped and counted as ``oversize``), every request has a timeout, the response read is capped.
The network is one seam, a ``Transport`` callable; the default one uses urllib (standard library only).
Nothing here prints or reads the environment; ``run`` never raises.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urlsplit

from device_runtime.errors import ContractError
from device_runtime.telemetry import Event
from device_runtime.telemetry_contract import MAX_BATCH_BYTES, MAX_EVENTS_PER_BATCH, SCHEMA, parse_event

__all__ = ["SCHEMA", "Transport", "UploadResult", "Uploader", "UploaderConfig", "UrllibTransport"]

_LOOPBACK = ("127.0.0.1", "::1", "localhost")
_TOO_LARGE = 413  # the server's size limit: retrying with fewer events helps
_log = logging.getLogger(__name__)

Transport = Callable[[str, bytes, Mapping[str, str], float], tuple[int, bytes]]
"""``(url, body, headers, timeout_s) -> (http_status, response_body)``; raises OSError (or
``http.client.HTTPException``) when no HTTP answer came back: refused, reset, DNS, TLS, timeout."""


class _Queue(Protocol):
    def pending(self, limit: int) -> list[Event]: ...

    def acknowledge(self, last_seq: int) -> None: ...


@dataclass(frozen=True, kw_only=True)
class UploaderConfig:
    """Where and how to upload telemetry; every limit is bounded and carries its unit.

    Attributes:
        endpoint: the server's telemetry URL (https; http only to a loopback host or with
            ``unsafe_allow_http``, since the bearer token would travel in clear text).
        device_id: this device's id, sent in every batch and part of the batch id.
        token: per-device bearer token (``Authorization: Bearer ...``); None sends no header.
        batch_size: most events per batch.
        timeout_s: timeout of one request (connect, and the whole response read).
        max_body_bytes: largest request body; bigger batches are split.
        max_response_bytes: most response bytes read.
        base_backoff_s: first backoff ceiling after a failure; it doubles per consecutive failure.
        max_backoff_s: cap of the backoff ceiling.
        idle_poll_s: how long ``run`` waits before looking again when the queue is empty.
        unsafe_allow_http: allow plain http to a non-loopback host (logged; for lab networks only).
    """

    endpoint: str
    device_id: str
    token: str | None = None
    batch_size: int = 500  # events
    timeout_s: float = 10.0  # seconds
    max_body_bytes: int = MAX_BATCH_BYTES  # bytes
    max_response_bytes: int = 64 << 10  # bytes
    base_backoff_s: float = 1.0  # seconds
    max_backoff_s: float = 600.0  # seconds
    idle_poll_s: float = 30.0  # seconds
    unsafe_allow_http: bool = False

    def __post_init__(self) -> None:
        parts = urlsplit(self.endpoint)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"UploaderConfig.endpoint {self.endpoint!r}: give an http(s) URL with a host")
        if parts.scheme == "http" and parts.hostname not in _LOOPBACK and not self.unsafe_allow_http:
            raise ValueError(
                f"UploaderConfig.endpoint {self.endpoint!r}: plain http would expose the device token; "
                "use https (or unsafe_allow_http=True on a trusted lab network)"
            )
        if not self.device_id:
            raise ValueError("UploaderConfig.device_id is required")
        if self.token is not None and (not self.token or any(c in self.token for c in "\r\n")):
            raise ValueError("UploaderConfig.token must be a non-empty single line")
        if not 1 <= self.batch_size <= MAX_EVENTS_PER_BATCH:
            raise ValueError(f"UploaderConfig.batch_size must be in 1..{MAX_EVENTS_PER_BATCH} events")
        if not 0 < self.timeout_s <= 600:
            raise ValueError("UploaderConfig.timeout_s must be in (0, 600] seconds")
        if not 1024 <= self.max_body_bytes <= MAX_BATCH_BYTES or not 0 < self.max_response_bytes <= 16 << 20:
            raise ValueError(
                f"UploaderConfig: max_body_bytes in 1 KiB..{MAX_BATCH_BYTES} bytes (the server's limit), "
                "max_response_bytes in 1..16 MiB"
            )
        if not 0 < self.base_backoff_s <= self.max_backoff_s <= 86_400 or not 0 < self.idle_poll_s <= 86_400:
            raise ValueError("UploaderConfig: 0 < base_backoff_s <= max_backoff_s <= 1 day, idle_poll_s > 0")


@dataclass(frozen=True)
class UploadResult:
    """What one ``upload_once`` did.

    Attributes:
        sent: events in the batch that was posted (0: the queue was empty, nothing was sent).
        acknowledged: events the server accepted, now deleted from the queue.
        status: the HTTP status, or None when no answer came back (or nothing was sent).
        error: why the batch was not accepted, or None.
        dropped: events deleted without delivery (invalid by the contract, or one event too large).
        refused: events the server acknowledged but quarantined (it named them in its answer).
    """

    sent: int
    acknowledged: int
    status: int | None
    error: str | None
    dropped: int = 0
    refused: int = 0

    @property
    def failed(self) -> bool:
        """True when the events stay queued and the next attempt should back off."""
        return self.error is not None and self.status != _TOO_LARGE and not self.dropped


class UrllibTransport:
    """The default transport: one HTTPS POST with urllib, no redirects followed, the response capped."""

    def __init__(self, *, max_response_bytes: int = 64 << 10) -> None:
        self._max_response = max_response_bytes

    def __call__(
        self, url: str, body: bytes, headers: Mapping[str, str], timeout_s: float
    ) -> tuple[int, bytes]:
        """POST ``body``; returns (status, response bytes). Raises OSError when no HTTP answer came back."""
        import urllib.error
        import urllib.request

        class NoRedirect(urllib.request.HTTPRedirectHandler):
            # Following a redirect would hand the bearer token (or the body) to another URL.
            def redirect_request(self, *args: Any, **kwargs: Any) -> None:
                return None

        opener = urllib.request.build_opener(NoRedirect)
        request = urllib.request.Request(url, data=body, headers=dict(headers), method="POST")
        deadline = time.monotonic() + timeout_s
        try:
            with opener.open(request, timeout=timeout_s) as response:
                return int(response.status), self._read(response, deadline)
        except urllib.error.HTTPError as e:
            with e:
                return int(e.code), self._read(e, deadline)

    def _read(self, response: Any, deadline: float) -> bytes:
        # Socket timeouts bound each read; the deadline bounds a server that trickles bytes.
        chunks: list[bytes] = []
        left = self._max_response
        while left > 0:
            if time.monotonic() > deadline:
                raise TimeoutError("the server's answer took longer than timeout_s")
            chunk = response.read(min(left, 16 << 10))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)


class Uploader:
    """Uploads one telemetry queue to one endpoint. Thread-safe; use one per queue."""

    def __init__(
        self,
        queue: _Queue,
        config: UploaderConfig,
        *,
        transport: Transport | None = None,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] | None = None,
        rng: random.Random | None = None,
    ) -> None:
        """Args:
        queue: the telemetry queue (``Runtime.telemetry``).
        config: endpoint, identity and limits.
        transport: the network seam (default: ``UrllibTransport``).
        clock: seconds since the epoch, for ``sent_at``.
        sleep: how ``run`` waits (default: waiting on its stop event, so that stopping is immediate).
        rng: the jitter source (default: a private ``random.Random``).
        """
        self._queue = queue
        self._config = config
        self._transport: Transport = transport or UrllibTransport(
            max_response_bytes=config.max_response_bytes
        )
        self._clock = clock
        self._sleep = sleep
        self._rng = rng or random.Random()
        self._lock = threading.Lock()
        self._limit = config.batch_size  # current batch size; halved after a 413
        self._pinned: tuple[str, str, int] | None = None  # (first id, last id, count) of a failed batch
        self._failures = 0
        self._retry_after = 0.0  # seconds the server asked for (429), the floor of the next delay
        self.counters = {
            "batches": 0,  # POSTs made
            "acknowledged": 0,  # events the server accepted
            "failures": 0,  # attempts that kept their events (network, timeout, 5xx, ...)
            "refused": 0,  # events the server acknowledged but quarantined (it named them)
            "oversize": 0,  # single events larger than max_body_bytes (or the server's limit), dropped
            "invalid": 0,  # events this device made that violate the telemetry contract, dropped unsent
            "rate_limited": 0,  # 429 answers
        }
        if config.unsafe_allow_http and urlsplit(config.endpoint).scheme == "http":
            _log.warning("telemetry upload over plain http to %s (unsafe_allow_http)", config.endpoint)

    @property
    def consecutive_failures(self) -> int:
        """Failed attempts since the last success (drives the backoff)."""
        return self._failures

    def batch_id(self, events: Sequence[Event]) -> str:
        """The deterministic id of a batch of these events (the same events give the same id)."""
        text = f"{self._config.device_id}\n{events[0].event_id}\n{events[-1].event_id}"
        return hashlib.sha256(text.encode("utf-8")).hexdigest()

    def next_delay(self) -> float:
        """Seconds to wait before the next attempt: 0 after a success, else a uniform draw in
        [0, min(max_backoff_s, base_backoff_s * 2 ** (failures - 1))] ("full jitter")."""
        if self._failures == 0:
            return 0.0
        ceiling = min(
            self._config.max_backoff_s, self._config.base_backoff_s * 2.0 ** min(self._failures - 1, 60)
        )
        return max(ceiling * self._rng.random(), self._retry_after)

    # ---- one attempt -----------------------------------------------------------------------------
    def upload_once(self) -> UploadResult:
        """Post one batch of the oldest queued events and act on the answer (see the module docstring).

        Returns an UploadResult; raises only if the queue itself fails (its database is gone).
        """
        with self._lock:
            events = self._take()
            if not events:
                return UploadResult(0, 0, None, None)
            encoded = _encode(events)
            if not encoded:  # the oldest event violates the contract: it would never be accepted
                self._drop(events[0], "invalid")
                return UploadResult(
                    0, 0, None, f"event {events[0].event_id} violates the telemetry contract; dropped", 1
                )
            body, count = self._body(events, encoded)
            if count == 0:
                self._drop(events[0], "oversize")
                return UploadResult(
                    0, 0, None, f"event {events[0].event_id} alone exceeds max_body_bytes; dropped", 1
                )
            events = events[:count]
            return self._post(events, body)

    def _take(self) -> list[Event]:
        if self._pinned is not None:  # re-send exactly the failed batch, so its batch_id repeats
            first, last, count = self._pinned
            events = self._queue.pending(count)
            if events and events[0].event_id == first and events[-1].event_id == last:
                return events
            self._pinned = None  # the queue dropped some of them (overflow): build a fresh batch
        return self._queue.pending(self._limit)

    def _body(self, events: list[Event], encoded: list[bytes]) -> tuple[bytes, int]:
        """The largest prefix of `events` whose batch fits max_body_bytes, and its body."""
        cap = self._config.max_body_bytes
        envelope = {
            "schema": SCHEMA,
            "batch_id": "0" * 64,  # same length as the real id
            "device_id": self._config.device_id,
            "sent_at": -2.2250738585072014e-308,  # the longest repr of a float
            "events": [],
        }
        # An upper bound that does not depend on the clock, so a retry picks the same events.
        overhead = len(_dumps(envelope))
        count, size = 0, overhead
        for item in encoded:
            extra = len(item) + (1 if count else 0)
            if size + extra > cap:
                break
            size += extra
            count += 1
        if count == 0:
            return b"", 0
        envelope["batch_id"] = self.batch_id(events[:count])
        envelope["sent_at"] = self._clock()
        envelope["events"] = [json.loads(item) for item in encoded[:count]]
        return _dumps(envelope), count

    def _post(self, events: list[Event], body: bytes) -> UploadResult:
        config = self._config
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "edgekit-device-runtime",
            "X-Edgekit-Batch-Id": self.batch_id(events),
            "X-Edgekit-Device": config.device_id,  # lets the server authenticate before it parses
        }
        if config.token is not None:
            headers["Authorization"] = f"Bearer {config.token}"
        count = len(events)
        self.counters["batches"] += 1
        try:
            status, answer = self._transport(config.endpoint, body, headers, config.timeout_s)
        except Exception as e:  # OSError, HTTPException, or anything a custom transport raises
            return self._failed(events, None, f"no answer from {config.endpoint}: {type(e).__name__}: {e}")
        if 200 <= status < 300 or status == 409:
            self._queue.acknowledge(events[-1].seq)
            refused = _refused(answer) if status != 409 else 0
            self.counters["acknowledged"] += count
            self.counters["refused"] += refused
            self._failures = 0
            self._retry_after = 0.0
            self._pinned = None
            self._limit = min(config.batch_size, self._limit * 2)  # grow back after a 413
            return UploadResult(count, count, status, None, refused=refused)
        detail = answer[:200].decode("utf-8", errors="replace").strip()
        if status == _TOO_LARGE:
            self._pinned = None
            if count > 1:
                self._limit = max(1, count // 2)
                return UploadResult(count, 0, status, f"server refused the batch as too large ({detail})")
            self._drop(events[0], "oversize")
            self._limit = config.batch_size
            return UploadResult(
                1, 0, status, f"server refused event {events[0].event_id} as too large ({detail}); dropped", 1
            )
        if status == 429:
            self.counters["rate_limited"] += 1
            self._retry_after = min(config.max_backoff_s, _retry_after(answer))
        return self._failed(events, status, f"server answered {status}: {detail}")

    def _failed(self, events: list[Event], status: int | None, error: str) -> UploadResult:
        self._failures += 1
        self.counters["failures"] += 1
        self._pinned = (events[0].event_id, events[-1].event_id, len(events))
        return UploadResult(len(events), 0, status, error)

    def _drop(self, event: Event, counter: str) -> None:
        # Only ever the oldest queued event, so acknowledging up to it deletes that one event.
        self._queue.acknowledge(event.seq)
        self.counters[counter] += 1
        self._pinned = None

    # ---- the loop --------------------------------------------------------------------------------
    def run(self, stop: threading.Event) -> None:
        """Upload until `stop` is set: straight on while there is data, `next_delay()` after a failure,
        every `idle_poll_s` when the queue is empty. Never raises."""
        wait = self._sleep or stop.wait
        while not stop.is_set():
            try:
                result = self.upload_once()
            except Exception as e:  # the queue's database failed; try again later rather than die
                self._failures += 1
                self.counters["failures"] += 1
                _log.warning("telemetry upload failed: %s", e)
                result = UploadResult(0, 0, None, str(e))
            try:
                if result.failed:
                    wait(self.next_delay())
                elif result.sent == 0 and result.dropped == 0:
                    wait(self._config.idle_poll_s)
            except Exception as e:  # an injected sleep that fails must not kill the thread
                _log.warning("telemetry upload wait failed: %s", e)
                stop.wait(self._config.idle_poll_s)


def _dumps(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False).encode("ascii")


def _encode(events: Sequence[Event]) -> list[bytes]:
    """The JSON of each event up to (not including) the first that violates the contract or is not JSON."""
    encoded: list[bytes] = []
    for event in events:
        item = {"id": event.event_id, "kind": event.kind, "time": event.time, "payload": event.payload}
        try:
            parse_event(item)
            encoded.append(_dumps(item))
        except (ContractError, ValueError, TypeError):
            break  # it is dropped once it is the oldest; the events after it wait
    return encoded


def _answer(answer: bytes) -> dict[str, Any]:
    try:
        document = json.loads(answer)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return {}
    return document if isinstance(document, dict) else {}


def _refused(answer: bytes) -> int:
    """How many events the server's answer says it quarantined."""
    value = _answer(answer).get("quarantined", 0)
    return value if type(value) is int and 0 <= value <= MAX_EVENTS_PER_BATCH else 0


def _retry_after(answer: bytes) -> float:
    """The seconds a 429 answer asks the device to wait (0 when it names none)."""
    value = _answer(answer).get("retry_after_s", 0)
    if type(value) not in (int, float) or not 0 <= value <= 86_400:
        return 0.0
    return float(value)
