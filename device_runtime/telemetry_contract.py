"""The telemetry wire contract: every event kind a device records, its typed payload, and one batch check.

Pure (standard library only, no IO, no clock): the device's `TelemetryQueue` records only payloads that
pass `parse_payload`, the uploader sends only events that pass `parse_event`, and the server's ingest runs
`check_batch` on every batch it receives. The server's gate aggregation reads stored payloads back with
`parse_payload`, so one definition decides what a number in a payload may be.

A batch (``edgekit.telemetry/v1``)::

    {"schema": "edgekit.telemetry/v1", "batch_id": ID, "device_id": ID, "sent_at": SECONDS,
     "events": [{"id": ID, "kind": KIND, "time": SECONDS, "payload": {...}}, ...]}

Event kinds and their payloads (``?`` marks an optional key; no other keys are allowed):

    inferences          bundle_id, version?, inferences, errors, latency_ms_buckets, latency_ms_sum, window_s
    crash               bundle_id, version?, during?
    feedback            bundle_id, correct
    install             outcome (activated|refused|failed), reason?, detail?, bundle_id?, version?,
                        model_sha256?, self_test_sqnr_db?          (activated needs bundle_id)
    trial               outcome (committed|reverted), bundle_id, version?, strikes?, successes?, reasons?
    slot-verify-failed  slot (a|b), reason, detail?
    telemetry-reset     detail
    download            bundle_id, method (delta|full), bytes, full_bytes, version?, base_bundle_id?,
                        fallback?, detail?      (delta needs base_bundle_id; fallback only with full)
    health              bundle_id, version?, inferences, window_s, inputs, outputs   (see below)
    shadow              bundle_id, served_bundle_id, compared, agreed, outputs, failures, timeouts,
                        skipped_cpu, latency_histogram, version?, window_s?, dropped?, stopped?
                        (see below)

A ``download`` is one bundle fetched for an install: ``bytes`` on the wire (a delta, plus the full bundle
after a fallback), ``full_bytes`` the full bundle's TUF length, ``fallback`` the reason code when a delta
from the active release was tried or looked for and the full bundle was fetched instead.

A ``health`` event is one reporting window of label-free sketches of one bundle (`device_runtime.health`):
``inputs`` is a list (at most `MAX_HEALTH_INPUTS`) of ``{"name", "n", "mean", "m2", "bins"}``, one entry per
channel (at most `MAX_HEALTH_CHANNELS`) in each list: element count (at most `MAX_SAMPLED_PER_INFERENCE` per
inference), mean and M2 (finite, M2 >= 0), and ``bins``: ``[]`` (no reference profile) or per channel the
counts per reference bin (2..`MAX_QUANTILE_EDGES` + 1 bins) summing to that channel's ``n``. ``outputs`` is a
list (at most `MAX_HEALTH_OUTPUTS`) of ``{"name", "role": "classification", "classes", "confidence"}``
(at most `MAX_HEALTH_CLASSES` class counts and `CONFIDENCE_BINS` confidence counts, each summing to
``inferences``) or ``{"name", "role": "detection", "detections", "scores", "score_sum"}`` (counts per
`DETECTION_COUNT_EDGES` bin summing to ``inferences``, a score histogram whose total lies within what the
detection bins allow, and ``score_sum`` within what the score bins allow). Names are unique per list.
No input value is ever part of it: only counts and moments.

A ``shadow`` event is one reporting window of a shadow trial (`device_runtime.shadow`): ``bundle_id`` is the
SHADOW bundle (the one run next to the served one, never served), ``served_bundle_id`` the active bundle it
ran beside (equal for a self-shadow). ``outputs`` maps each compared output name (at most
`MAX_HEALTH_OUTPUTS`) to ``{"role": one of SHADOW_ROLES, "compared", "agreed"}``; ``compared`` and
``agreed`` at the top are the primary (first) output's, so no output compared more, and every ``agreed``
is at most its ``compared``. ``failures`` counts shadow runs that raised, ``timeouts`` runs past their
deadline, ``skipped_cpu`` sampled inputs not run because the CPU budget was spent, ``dropped`` sampled
inputs not run because the shadow's bounded queue was full; ``latency_histogram``
(``len(LATENCY_BUCKETS_MS) + 1`` buckets) holds the run time of each compared run, so it sums to
``compared``. Every count is at most `MAX_INFERENCES_PER_S` per second of ``window_s`` (when given;
otherwise of `MAX_WINDOW_S`). ``stopped`` is true when the device gave up on this shadow bundle after
too many strikes (failures, timeouts, and process deaths during a shadow run, which are reported as
``crash`` events of the shadow bundle with ``during`` "shadow"). No input or output value is ever part of it.

Bounds carry units. Numbers are finite; integers are JSON integers, never booleans. An ``inferences``
aggregate covers ``window_s`` seconds (at most `MAX_WINDOW_S`): it counts at most
`MAX_INFERENCES_PER_S` inferences per second of that window (a window shorter than `MIN_WINDOW_S` counts as
`MIN_WINDOW_S`), its histogram has ``len(LATENCY_BUCKETS_MS) + 1`` non-negative integer buckets summing to
``inferences``, ``errors <= inferences``, and ``latency_ms_sum`` lies between what the histogram's bucket
bounds allow and what `MAX_CONCURRENT_INFERENCES` inferences running side by side for the whole window
could take.

Event times (`check_batch`): the server's clock rules. ``skew = sent_at - now`` is reported; when it
exceeds `CLOCK_TOLERANCE_S` either way the device clock is wrong and every event time of the batch is
rebased by it. A (rebased) time must lie in ``[now - MAX_EVENT_AGE_S, now + CLOCK_TOLERANCE_S]``.

Violations raise `ContractError` (a `DeviceRuntimeError`) whose ``reason`` is one of `REASONS`: a short,
stable code, safe as a metrics label.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

from device_runtime._contract_fields import (
    _BATCH_KEYS,
    _EVENT_KEYS,
    _ID,
    CLOCK_TOLERANCE_S,
    CONFIDENCE_BINS,
    DETECTION_COUNT_EDGES,
    EVENT_KINDS,
    LATENCY_BUCKETS_MS,
    MAX_BATCH_BYTES,
    MAX_CONCURRENT_INFERENCES,
    MAX_DETAIL_CHARS,
    MAX_DETECTIONS_PER_INPUT,
    MAX_DOWNLOAD_BYTES,
    MAX_EVENT_AGE_S,
    MAX_EVENTS_PER_BATCH,
    MAX_HEALTH_CHANNELS,
    MAX_HEALTH_CLASSES,
    MAX_HEALTH_INPUTS,
    MAX_HEALTH_OUTPUTS,
    MAX_INFERENCES_PER_S,
    MAX_LATENCY_MS,
    MAX_QUANTILE_EDGES,
    MAX_SAMPLED_PER_INFERENCE,
    MAX_TIME_S,
    MAX_WINDOW_S,
    MIN_WINDOW_S,
    REASONS,
    SCHEMA,
    SHADOW_ROLES,
    _fail,
    _match,
    _number,
)
from device_runtime._contract_payloads import (
    CrashPayload,
    DownloadPayload,
    FeedbackPayload,
    InferencesPayload,
    InstallPayload,
    SlotVerifyFailedPayload,
    TelemetryResetPayload,
    TrialPayload,
    check_inferences,
    parse_crash,
    parse_download,
    parse_feedback,
    parse_inferences,
    parse_install,
    parse_slot_verify_failed,
    parse_telemetry_reset,
    parse_trial,
)
from device_runtime._contract_sketches import (
    HealthChannels,
    HealthOutput,
    HealthPayload,
    ShadowOutput,
    ShadowPayload,
    parse_health,
    parse_shadow,
)
from device_runtime.errors import ContractError

__all__ = [
    "CLOCK_TOLERANCE_S",
    "CONFIDENCE_BINS",
    "DETECTION_COUNT_EDGES",
    "EVENT_KINDS",
    "LATENCY_BUCKETS_MS",
    "MAX_BATCH_BYTES",
    "MAX_CONCURRENT_INFERENCES",
    "MAX_DETAIL_CHARS",
    "MAX_DETECTIONS_PER_INPUT",
    "MAX_DOWNLOAD_BYTES",
    "MAX_EVENTS_PER_BATCH",
    "MAX_EVENT_AGE_S",
    "MAX_HEALTH_CHANNELS",
    "MAX_HEALTH_CLASSES",
    "MAX_HEALTH_INPUTS",
    "MAX_HEALTH_OUTPUTS",
    "MAX_INFERENCES_PER_S",
    "MAX_LATENCY_MS",
    "MAX_QUANTILE_EDGES",
    "MAX_SAMPLED_PER_INFERENCE",
    "MAX_WINDOW_S",
    "MIN_WINDOW_S",
    "REASONS",
    "SCHEMA",
    "SHADOW_ROLES",
    "BatchCheck",
    "Checked",
    "ContractError",
    "CrashPayload",
    "DownloadPayload",
    "Event",
    "FeedbackPayload",
    "HealthChannels",
    "HealthOutput",
    "HealthPayload",
    "InferencesPayload",
    "InstallPayload",
    "Payload",
    "Rejected",
    "ShadowOutput",
    "ShadowPayload",
    "SlotVerifyFailedPayload",
    "TelemetryResetPayload",
    "TrialPayload",
    "check_batch",
    "check_payload",
    "parse_event",
    "parse_payload",
]


Payload = (
    InferencesPayload
    | CrashPayload
    | FeedbackPayload
    | InstallPayload
    | TrialPayload
    | SlotVerifyFailedPayload
    | TelemetryResetPayload
    | DownloadPayload
    | HealthPayload
    | ShadowPayload
)


@dataclass(frozen=True, slots=True)
class Event:
    """One event as the contract reads it."""

    id: str
    kind: str
    time: float  # seconds since the epoch, device clock
    payload: Payload


_PARSERS: dict[str, Callable[[Any], Payload]] = {
    "inferences": parse_inferences,
    "crash": parse_crash,
    "feedback": parse_feedback,
    "install": parse_install,
    "trial": parse_trial,
    "slot-verify-failed": parse_slot_verify_failed,
    "telemetry-reset": parse_telemetry_reset,
    "download": parse_download,
    "health": parse_health,
    "shadow": parse_shadow,
}
assert tuple(_PARSERS) == EVENT_KINDS


# ---- public API ----------------------------------------------------------------------------------
def parse_payload(kind: str, payload: object) -> Payload:
    """The typed payload of an event of `kind`.

    Raises:
        ContractError: unknown kind, or any violation of the kind's payload rules (see the module doc).
    """
    parser = _PARSERS.get(kind) if type(kind) is str else None
    if parser is None:
        raise _fail("unknown-kind", f"event kind {str(kind)[:40]!r} is not one of {list(EVENT_KINDS)}")
    return parser(payload)


def check_payload(kind: str, payload: object) -> str | None:
    """The payload's bundle id (None when its kind has none) if it satisfies the contract.

    Raises:
        ContractError: as `parse_payload`.
    """
    parsed = parse_payload(kind, payload)
    return getattr(parsed, "bundle_id", None)


def _event_fields(obj: Any) -> tuple[str, str, float]:
    if type(obj) is not dict:
        raise _fail("not-object", f"an event must be a JSON object, got {type(obj).__name__}")
    if obj.keys() != _EVENT_KEYS:
        raise _fail("unknown-field", f"event keys must be exactly {sorted(_EVENT_KEYS)}")
    event_id = _match(obj["id"], "event id", _ID, "1-128 characters of [A-Za-z0-9._:-]")
    kind = obj["kind"]
    if type(kind) is not str or kind not in _PARSERS:
        raise _fail("unknown-kind", f"event kind {str(kind)[:40]!r} is not one of {list(EVENT_KINDS)}")
    time = _number(obj["time"], "event time", 0.0, MAX_TIME_S)
    return event_id, kind, time


def parse_event(obj: object) -> Event:
    """One ``{"id", "kind", "time", "payload"}`` event, typed.

    Raises:
        ContractError: a malformed event or payload.
    """
    event_id, kind, time = _event_fields(obj)
    assert isinstance(obj, dict)
    return Event(event_id, kind, time, _PARSERS[kind](obj["payload"]))


class Checked(NamedTuple):
    """An event of a batch that satisfies the contract; ``payload`` is the JSON object as received."""

    position: int  # index in the batch's events
    id: str
    kind: str
    time: float  # seconds since the epoch, server-ruled (rebased when the device clock is off)
    bundle_id: str | None
    payload: dict[str, Any]


class Rejected(NamedTuple):
    """An event of a batch that violates the contract."""

    position: int  # index in the batch's events
    id: str | None  # the event's id when it has a usable one
    reason: str  # one of REASONS
    message: str


@dataclass(frozen=True)
class BatchCheck:
    """`check_batch`'s verdict.

    ``error`` (with ``error_reason``) is set when the envelope itself is wrong: the whole batch is refused
    and nothing else is filled in. Otherwise every event is in exactly one of ``accepted`` and ``rejected``.
    """

    error: str | None = None
    error_reason: str | None = None
    device_id: str = ""
    batch_id: str = ""
    sent_at: float = 0.0
    skew_s: float = 0.0  # sent_at - now: how far the device clock is ahead of the server's
    rebased: bool = False  # event times were shifted by -skew_s
    accepted: tuple[Checked, ...] = ()
    rejected: tuple[Rejected, ...] = ()


def _envelope_error(document: Any) -> tuple[str, str] | None:
    if type(document) is not dict:
        return "not-object", "a batch must be a JSON object"
    if document.keys() != _BATCH_KEYS:
        return "unknown-field", f"batch keys must be exactly {sorted(_BATCH_KEYS)}"
    if document["schema"] != SCHEMA:
        return "out-of-range", f"schema must be {SCHEMA!r}"
    for key in ("batch_id", "device_id"):
        value = document[key]
        if type(value) is not str or _ID.fullmatch(value) is None:
            return "bad-id", f"{key}: 1-128 characters of [A-Za-z0-9._:-]"
    sent_at = document["sent_at"]
    if type(sent_at) not in (int, float) or not 0 <= sent_at <= MAX_TIME_S:
        return "out-of-range", f"sent_at must be seconds since the epoch in 0..{MAX_TIME_S:.0f}"
    events = document["events"]
    if type(events) is not list or not 1 <= len(events) <= MAX_EVENTS_PER_BATCH:
        return "out-of-range", f"events: a list of 1..{MAX_EVENTS_PER_BATCH} events"
    return None


def check_batch(
    document: object,
    *,
    now: float,
    clock_tolerance_s: float = CLOCK_TOLERANCE_S,
    max_event_age_s: float = MAX_EVENT_AGE_S,
) -> BatchCheck:
    """Check a parsed batch: its envelope, then each event on its own, with times ruled by `now`.

    Args:
        document: the batch as parsed from strict JSON.
        now: the receiver's clock (seconds since the epoch): the server's receive time.
        clock_tolerance_s: a device clock this far off (either way) is trusted as is; further, event
            times are rebased by the skew. Also how far ahead of `now` a (rebased) time may be.
        max_event_age_s: how far before `now` a (rebased) time may be.

    Never raises for bad input: envelope problems are ``error``, event problems are ``rejected``.
    """
    problem = _envelope_error(document)
    if problem is not None:
        return BatchCheck(error=problem[1], error_reason=problem[0])
    assert isinstance(document, dict)
    sent_at = float(document["sent_at"])
    skew = sent_at - now
    rebased = abs(skew) > clock_tolerance_s
    shift = skew if rebased else 0.0
    earliest, latest = now - max_event_age_s, now + clock_tolerance_s
    accepted: list[Checked] = []
    rejected: list[Rejected] = []
    seen: set[str] = set()
    parsers = _PARSERS
    for index, item in enumerate(document["events"]):
        event_id: str | None = None
        try:
            event_id, kind, time = _event_fields(item)
            time -= shift
            if not earliest <= time <= latest:
                raise _fail(
                    "time-window",
                    f"event time {time:.0f} is outside {earliest:.0f}..{latest:.0f} (server clock "
                    f"{now:.0f}, device clock skew {skew:+.0f} s)",
                )
            if event_id in seen:
                raise _fail("duplicate-event", f"event id {event_id} appears twice in the batch")
            if kind == "inferences":
                bundle_id: str | None = check_inferences(item["payload"])
            else:
                bundle_id = getattr(parsers[kind](item["payload"]), "bundle_id", None)
            seen.add(event_id)
            accepted.append(Checked(index, event_id, kind, time, bundle_id, item["payload"]))
        except ContractError as e:
            if event_id is None and type(item) is dict and type(item.get("id")) is str:
                event_id = item["id"] if _ID.fullmatch(item["id"]) else None
            rejected.append(Rejected(index, event_id, e.reason, str(e)))
    return BatchCheck(
        device_id=document["device_id"],
        batch_id=document["batch_id"],
        sent_at=sent_at,
        skew_s=skew,
        rebased=rebased,
        accepted=tuple(accepted),
        rejected=tuple(rejected),
    )
