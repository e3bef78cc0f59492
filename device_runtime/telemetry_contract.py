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

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

from device_runtime._contract_fields import (
    _BATCH_KEYS,
    _CODE,
    _EVENT_KEYS,
    _HEX64,
    _ID,
    _LOWER_MS,
    _OUTPUT,
    _UPPER_MS,
    _VERSION,
    CLOCK_TOLERANCE_S,
    CONFIDENCE_BINS,
    DETECTION_COUNT_EDGES,
    EVENT_KINDS,
    HISTOGRAM_SIZE,
    LATENCY_BUCKETS_MS,
    MAX_ABS_SQNR_DB,
    MAX_BATCH_BYTES,
    MAX_CONCURRENT_INFERENCES,
    MAX_COUNTER,
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
    MAX_OUTPUTS,
    MAX_QUANTILE_EDGES,
    MAX_REASONS,
    MAX_SAMPLED_PER_INFERENCE,
    MAX_TIME_S,
    MAX_WINDOW_S,
    MIN_WINDOW_S,
    REASONS,
    SCHEMA,
    SHADOW_ROLES,
    _bundle,
    _fail,
    _int,
    _keys,
    _match,
    _number,
    _one_of,
    _optional_code,
    _optional_text,
    _text,
    _version,
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


# ---- typed payloads ------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class InferencesPayload:
    """An inference aggregate: counts over ``window_s`` seconds of one bundle."""

    bundle_id: str
    version: str | None
    inferences: int
    errors: int
    latency_ms_buckets: tuple[int, ...]  # len(LATENCY_BUCKETS_MS) + 1 counts
    latency_ms_sum: float  # ms
    window_s: float  # seconds covered


@dataclass(frozen=True, slots=True)
class CrashPayload:
    """The process died while running this bundle (``during``: what it was doing)."""

    bundle_id: str
    version: str | None = None
    during: str | None = None


@dataclass(frozen=True, slots=True)
class FeedbackPayload:
    """Ground truth for one prediction: was it correct."""

    bundle_id: str
    correct: bool


@dataclass(frozen=True, slots=True)
class InstallPayload:
    """An install attempt's outcome (``reason``: a stable code for refusals and failures)."""

    outcome: str
    reason: str | None = None
    detail: str | None = None
    bundle_id: str | None = None
    version: str | None = None
    model_sha256: str | None = None
    self_test_sqnr_db: tuple[tuple[str, float], ...] | None = None  # (output name, dB), sorted


@dataclass(frozen=True, slots=True)
class TrialPayload:
    """A trial ended: the new bundle was committed or reverted."""

    outcome: str
    bundle_id: str
    version: str | None = None
    strikes: int | None = None
    successes: int | None = None
    reasons: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class SlotVerifyFailedPayload:
    """An installed slot no longer verifies (``reason``: a stable code)."""

    slot: str
    reason: str
    detail: str | None = None


@dataclass(frozen=True, slots=True)
class TelemetryResetPayload:
    """The on-device telemetry database was unreadable and set aside."""

    detail: str


@dataclass(frozen=True, slots=True)
class DownloadPayload:
    """How a bundle came to the device: by delta or in full, with the bytes moved and any fallback."""

    bundle_id: str
    method: str  # "delta" | "full"
    bytes: int  # bytes downloaded for this bundle (delta, plus the full bundle after a fallback)
    full_bytes: int  # bytes of the full bundle (its TUF length)
    version: str | None = None
    base_bundle_id: str | None = None  # the active release a delta was built from (or looked for)
    fallback: str | None = None  # reason code: why the full bundle was fetched instead of a delta
    detail: str | None = None


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


# ---- per kind ------------------------------------------------------------------------------------
_INFERENCES_REQUIRED = frozenset(
    ("bundle_id", "inferences", "errors", "latency_ms_buckets", "latency_ms_sum", "window_s")
)
_INFERENCES_ALLOWED = _INFERENCES_REQUIRED | {"version"}
_MAX_INFERENCES = int(MAX_INFERENCES_PER_S * MAX_WINDOW_S)


def _check_inferences(p: Any) -> str:
    """Validate an inferences payload, return its bundle id. The hot path of ingest: each check is a
    cheap test first, and the precise (raising) check only when the cheap one fails."""
    if type(p) is not dict or not _INFERENCES_REQUIRED <= p.keys() <= _INFERENCES_ALLOWED:
        _keys("inferences", p, _INFERENCES_REQUIRED, _INFERENCES_ALLOWED)
    bundle_id = p["bundle_id"]
    if type(bundle_id) is not str or _HEX64.fullmatch(bundle_id) is None:
        _bundle(bundle_id)
    version = p.get("version")
    if version is not None and (type(version) is not str or _VERSION.fullmatch(version) is None):
        _version(p)
    window = p["window_s"]
    if type(window) is not float or not 0.0 <= window <= MAX_WINDOW_S:
        window = _number(window, "window_s", 0.0, MAX_WINDOW_S)
    limit = int(MAX_INFERENCES_PER_S * (window if window > MIN_WINDOW_S else MIN_WINDOW_S))
    inferences = p["inferences"]
    if type(inferences) is not int or not 1 <= inferences <= limit:
        _int(inferences, "inferences", 1, limit)
    errors = p["errors"]
    if type(errors) is not int or not 0 <= errors <= inferences:
        _int(errors, "errors", 0, _MAX_INFERENCES)
        raise _fail("errors-exceed-inferences", f"errors {errors} > inferences {inferences}")
    buckets = p["latency_ms_buckets"]
    if type(buckets) is not list:
        raise _fail("wrong-type", f"latency_ms_buckets must be a list, got {type(buckets).__name__}")
    if len(buckets) != HISTOGRAM_SIZE:
        raise _fail(
            "histogram-length", f"latency_ms_buckets has {len(buckets)} counts, expected {HISTOGRAM_SIZE}"
        )
    # One pass: types, signs, the sum, and the latency range the counts allow (most buckets are 0).
    counted, low, high = 0, 0.0, 0.0
    for count, lower, upper in zip(buckets, _LOWER_MS, _UPPER_MS, strict=False):  # equal lengths, checked
        if type(count) is not int:
            raise _fail("wrong-type", f"latency_ms_buckets holds a {type(count).__name__}, not an integer")
        if count:
            if count < 0:
                raise _fail("out-of-range", "latency_ms_buckets holds a negative count")
            counted += count
            low += count * lower
            high += count * upper
    if counted != inferences:
        raise _fail("histogram-sum", f"latency_ms_buckets sum to {counted}, not inferences {inferences}")
    total = p["latency_ms_sum"]
    if type(total) is not float or not 0.0 <= total < math.inf:
        total = _number(total, "latency_ms_sum", 0.0, math.inf)
    # No more than MAX_CONCURRENT_INFERENCES ran at once during the window.
    ceiling = MAX_CONCURRENT_INFERENCES * (window + MIN_WINDOW_S) * 1000.0
    if high > ceiling:
        high = ceiling
    if not low * (1 - 1e-9) <= total <= high * (1 + 1e-9) + 1e-6:
        raise _fail(
            "latency-inconsistent",
            f"latency_ms_sum {total:g} ms is outside {low:g}..{high:g} ms allowed by the histogram and "
            f"a {window:g} s window",
        )
    return bundle_id


def _inferences(p: Any) -> InferencesPayload:
    _check_inferences(p)
    return InferencesPayload(
        p["bundle_id"],
        p.get("version"),
        p["inferences"],
        p["errors"],
        tuple(p["latency_ms_buckets"]),
        float(p["latency_ms_sum"]),
        float(p["window_s"]),
    )


_CRASH_ALLOWED = frozenset(("bundle_id", "version", "during"))
_BUNDLE_ONLY = frozenset(("bundle_id",))


def _crash(p: Any) -> CrashPayload:
    _keys("crash", p, _BUNDLE_ONLY, _CRASH_ALLOWED)
    return CrashPayload(_bundle(p["bundle_id"]), _version(p), _optional_code(p, "during"))


_FEEDBACK_KEYS = frozenset(("bundle_id", "correct"))


def _feedback(p: Any) -> FeedbackPayload:
    _keys("feedback", p, _FEEDBACK_KEYS, _FEEDBACK_KEYS)
    correct = p["correct"]
    if type(correct) is not bool:
        raise _fail("wrong-type", f"correct must be true or false, got {type(correct).__name__}")
    return FeedbackPayload(_bundle(p["bundle_id"]), correct)


_INSTALL_ALLOWED = frozenset(
    ("outcome", "reason", "detail", "bundle_id", "version", "model_sha256", "self_test_sqnr_db")
)
_OUTCOME_ONLY = frozenset(("outcome",))


def _install(p: Any) -> InstallPayload:
    _keys("install", p, _OUTCOME_ONLY, _INSTALL_ALLOWED)
    outcome = _one_of(p["outcome"], "outcome", ("activated", "refused", "failed"))
    bundle_id = p.get("bundle_id")
    if bundle_id is not None:
        _bundle(bundle_id)
    elif outcome == "activated":
        raise _fail("missing-field", "an activated install names its bundle_id")
    model = p.get("model_sha256")
    if model is not None:
        _match(model, "model_sha256", _HEX64, "a SHA-256 (64 lower-case hex digits)")
    quality = p.get("self_test_sqnr_db")
    pairs: tuple[tuple[str, float], ...] | None = None
    if quality is not None:
        if type(quality) is not dict:
            raise _fail("wrong-type", "self_test_sqnr_db must be an object of output name -> dB")
        if len(quality) > MAX_OUTPUTS:
            raise _fail("too-long", f"self_test_sqnr_db has {len(quality)} outputs, more than {MAX_OUTPUTS}")
        pairs = tuple(
            sorted(
                (
                    _match(name, "self_test_sqnr_db key", _OUTPUT, "an output name"),
                    _number(db, "self_test_sqnr_db value", -MAX_ABS_SQNR_DB, MAX_ABS_SQNR_DB),
                )
                for name, db in quality.items()
            )
        )
    return InstallPayload(
        outcome,
        _optional_code(p, "reason"),
        _optional_text(p, "detail"),
        bundle_id,
        _version(p),
        model,
        pairs,
    )


_TRIAL_REQUIRED = frozenset(("outcome", "bundle_id"))
_TRIAL_ALLOWED = _TRIAL_REQUIRED | {"version", "strikes", "successes", "reasons"}


def _trial(p: Any) -> TrialPayload:
    _keys("trial", p, _TRIAL_REQUIRED, _TRIAL_ALLOWED)
    outcome = _one_of(p["outcome"], "outcome", ("committed", "reverted"))
    strikes, successes = p.get("strikes"), p.get("successes")
    reasons = p.get("reasons", [])
    if type(reasons) is not list:
        raise _fail("wrong-type", "reasons must be a list of strings")
    if len(reasons) > MAX_REASONS:
        raise _fail("too-long", f"reasons has {len(reasons)} entries, more than {MAX_REASONS}")
    return TrialPayload(
        outcome,
        _bundle(p["bundle_id"]),
        _version(p),
        None if strikes is None else _int(strikes, "strikes", 0, MAX_COUNTER),
        None if successes is None else _int(successes, "successes", 0, MAX_COUNTER),
        tuple(_text(r, "reasons[]") for r in reasons),
    )


_SLOT_REQUIRED = frozenset(("slot", "reason"))
_SLOT_ALLOWED = _SLOT_REQUIRED | {"detail"}


def _slot_verify_failed(p: Any) -> SlotVerifyFailedPayload:
    _keys("slot-verify-failed", p, _SLOT_REQUIRED, _SLOT_ALLOWED)
    reason = _match(p["reason"], "reason", _CODE, "a reason code (1-64 of [A-Za-z0-9._:-])")
    slot = _one_of(p["slot"], "slot", ("a", "b"))
    return SlotVerifyFailedPayload(slot, reason, _optional_text(p, "detail"))


_DETAIL_ONLY = frozenset(("detail",))


def _telemetry_reset(p: Any) -> TelemetryResetPayload:
    _keys("telemetry-reset", p, _DETAIL_ONLY, _DETAIL_ONLY)
    return TelemetryResetPayload(_text(p["detail"], "detail"))


_DOWNLOAD_REQUIRED = frozenset(("bundle_id", "method", "bytes", "full_bytes"))
_DOWNLOAD_ALLOWED = _DOWNLOAD_REQUIRED | {"version", "base_bundle_id", "fallback", "detail"}


def _download(p: Any) -> DownloadPayload:
    _keys("download", p, _DOWNLOAD_REQUIRED, _DOWNLOAD_ALLOWED)
    method = _one_of(p["method"], "method", ("delta", "full"))
    base = p.get("base_bundle_id")
    if base is not None:
        _bundle(base, "base_bundle_id")
    elif method == "delta":
        raise _fail("missing-field", "a delta download names its base_bundle_id")
    fallback = _optional_code(p, "fallback")
    if fallback is not None and method == "delta":
        raise _fail("out-of-range", "a delta download has no fallback; a fallback downloads the full bundle")
    return DownloadPayload(
        _bundle(p["bundle_id"]),
        method,
        _int(p["bytes"], "bytes", 0, MAX_DOWNLOAD_BYTES),
        _int(p["full_bytes"], "full_bytes", 1, MAX_DOWNLOAD_BYTES),
        _version(p),
        base,
        fallback,
        _optional_text(p, "detail"),
    )


_PARSERS: dict[str, Callable[[Any], Payload]] = {
    "inferences": _inferences,
    "crash": _crash,
    "feedback": _feedback,
    "install": _install,
    "trial": _trial,
    "slot-verify-failed": _slot_verify_failed,
    "telemetry-reset": _telemetry_reset,
    "download": _download,
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
                bundle_id: str | None = _check_inferences(item["payload"])
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
