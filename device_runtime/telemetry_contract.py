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
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

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

SCHEMA = "edgekit.telemetry/v1"
LATENCY_BUCKETS_MS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000)  # upper bounds, ms
HISTOGRAM_SIZE = len(LATENCY_BUCKETS_MS) + 1  # the last bucket is "above 5000 ms"
EVENT_KINDS = (
    "inferences",
    "crash",
    "feedback",
    "install",
    "trial",
    "slot-verify-failed",
    "telemetry-reset",
    "download",
    "health",
    "shadow",
)

MAX_BATCH_BYTES = 1 << 20  # bytes of one batch's JSON
MAX_EVENTS_PER_BATCH = 5000  # events
MAX_WINDOW_S = 3600.0  # seconds one inferences aggregate may cover
MIN_WINDOW_S = 1.0  # seconds: a shorter window is bounded as if it were this long
MAX_INFERENCES_PER_S = 20_000  # inferences per second of covered time (far above any edge model)
MAX_CONCURRENT_INFERENCES = 16  # inferences in flight at once (the runtime serializes; headroom)
MAX_LATENCY_MS = MAX_WINDOW_S * 1000.0  # ms, one inference (the device caps what it records)
MAX_DETAIL_CHARS = 300  # characters of a free-text detail or reason
MAX_REASONS = 32  # entries of a trial's reasons
MAX_OUTPUTS = 64  # entries of an install's self_test_sqnr_db
MAX_ABS_SQNR_DB = 1000.0  # dB
MAX_COUNTER = 1_000_000_000  # a trial's strikes or successes
MAX_DOWNLOAD_BYTES = 1 << 40  # bytes: one download's size, far above any bundle
MAX_TIME_S = 7_258_118_400.0  # seconds since the epoch: 2200-01-01, beyond any clock
CLOCK_TOLERANCE_S = 86_400.0  # seconds: a device clock further off than this is rebased to the server's
MAX_EVENT_AGE_S = 30 * 86_400.0  # seconds: older (rebased) events are of no use to any rollout gate
# health sketches (one event per bundle and reporting window)
MAX_HEALTH_INPUTS = 8  # inputs sketched per bundle
MAX_HEALTH_CHANNELS = 16  # channels per input (more: the input is sketched as one channel)
MAX_QUANTILE_EDGES = 15  # reference bin edges per channel (so at most 16 bins)
MAX_SAMPLED_PER_INFERENCE = 1024  # input elements one inference adds to a channel's count, at most
MAX_HEALTH_OUTPUTS = 8  # outputs sketched per bundle
MAX_HEALTH_CLASSES = 1024  # predicted-class counts (higher classes share the last count)
CONFIDENCE_BINS = 10  # top-1 confidence or detection score bins over [0, 1], each 0.1 wide
DETECTION_COUNT_EDGES = (0, 1, 2, 3, 5, 10, 20, 50, 100)  # detections per input: bin i holds <= edge i
MAX_DETECTIONS_PER_INPUT = 1000  # detections one input may produce (the last bin's upper bound)
MAX_ABS_MOMENT = 1e38  # a channel's mean (float32 inputs stay below it)
# shadow trials: the output roles of a bundle spec (device_runtime._spec.OUTPUT_KINDS; a test pins equality)
SHADOW_ROLES = (
    "classification",
    "detection",
    "segmentation",
    "regression",
    "embedding",
    "sequence",
    "tensor",
)

REASONS = (
    "not-object",
    "unknown-kind",
    "unknown-field",
    "missing-field",
    "wrong-type",
    "not-finite",
    "out-of-range",
    "bad-id",
    "bad-bundle-id",
    "too-long",
    "histogram-length",
    "histogram-sum",
    "errors-exceed-inferences",
    "latency-inconsistent",
    "time-window",
    "duplicate-event",
    "sketch-inconsistent",
)

_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
_HEX64 = re.compile(r"[0-9a-f]{64}")
_VERSION = re.compile(r"[0-9A-Za-z][0-9A-Za-z.+_-]{0,63}")  # as signing.manifest
_CODE = re.compile(r"[A-Za-z0-9._:-]{1,64}")
_OUTPUT = re.compile(r"[^\x00-\x1f]{1,128}")
_EVENT_KEYS = frozenset(("id", "kind", "time", "payload"))
_BATCH_KEYS = frozenset(("schema", "batch_id", "device_id", "sent_at", "events"))
# Bucket i holds latencies in (LOWER[i], UPPER[i]] ms (bisect_left on the upper bounds).
_LOWER_MS = (0.0, *(float(b) for b in LATENCY_BUCKETS_MS))
_UPPER_MS = (*(float(b) for b in LATENCY_BUCKETS_MS), MAX_LATENCY_MS)


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


@dataclass(frozen=True, slots=True)
class HealthChannels:
    """One input's channel sketches: counts, means, M2s, and counts per reference bin (() without one)."""

    name: str
    n: tuple[int, ...]
    mean: tuple[float, ...]
    m2: tuple[float, ...]
    bins: tuple[tuple[int, ...], ...]


@dataclass(frozen=True, slots=True)
class HealthOutput:
    """One output's role sketch. classification: ``counts`` per predicted class, ``scores`` per confidence
    bin; detection: ``counts`` per `DETECTION_COUNT_EDGES` bin, ``scores`` per score bin, ``score_sum``."""

    name: str
    role: str
    counts: tuple[int, ...]
    scores: tuple[int, ...]
    score_sum: float = 0.0


@dataclass(frozen=True, slots=True)
class HealthPayload:
    """Label-free health sketches of one bundle over one reporting window (`device_runtime.health`)."""

    bundle_id: str
    version: str | None
    inferences: int
    window_s: float
    inputs: tuple[HealthChannels, ...]
    outputs: tuple[HealthOutput, ...]


@dataclass(frozen=True, slots=True)
class ShadowOutput:
    """One output's shadow agreement: runs compared and runs whose output agreed with the served one."""

    name: str
    role: str
    compared: int
    agreed: int


@dataclass(frozen=True, slots=True)
class ShadowPayload:
    """A shadow trial over one reporting window: the shadow bundle against the served one."""

    bundle_id: str  # the shadow bundle
    served_bundle_id: str
    compared: int
    agreed: int
    outputs: tuple[ShadowOutput, ...]  # sorted by name
    failures: int
    timeouts: int
    skipped_cpu: int
    latency_histogram: tuple[int, ...]  # len(LATENCY_BUCKETS_MS) + 1 counts of compared runs
    version: str | None = None
    window_s: float | None = None
    dropped: int = 0
    stopped: bool = False


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


# ---- field checks (hot path: plain functions, `type(x) is` tests, exceptions only on failure) -------
def _fail(reason: str, message: str) -> ContractError:
    return ContractError(reason, message)


def _keys(kind: str, payload: Any, required: frozenset[str], allowed: frozenset[str]) -> dict[str, Any]:
    if type(payload) is not dict:
        raise _fail("not-object", f"{kind} payload must be a JSON object, got {type(payload).__name__}")
    keys = payload.keys()
    if not keys <= allowed:
        unknown = sorted(str(k)[:40] for k in keys - allowed)
        raise _fail("unknown-field", f"{kind} payload: unknown fields {unknown}; allowed {sorted(allowed)}")
    if not required <= keys:
        raise _fail("missing-field", f"{kind} payload lacks {sorted(required - keys)}")
    return payload


def _int(value: Any, name: str, low: int, high: int) -> int:
    if type(value) is not int:  # bool is not int here: type(True) is bool
        raise _fail("wrong-type", f"{name} must be an integer, got {type(value).__name__}")
    if not low <= value <= high:
        raise _fail("out-of-range", f"{name} = {str(value)[:24]} is outside {low}..{high}")
    return value


def _number(value: Any, name: str, low: float, high: float) -> float:
    kind = type(value)
    if kind is float:
        if not math.isfinite(value):
            raise _fail("not-finite", f"{name} must be finite, got {value}")
    elif kind is int:
        value = float(value) if -(2**63) <= value <= 2**63 else math.inf
    else:
        raise _fail("wrong-type", f"{name} must be a number, got {kind.__name__}")
    if not low <= value <= high:
        raise _fail("out-of-range", f"{name} = {str(value)[:24]} is outside {low:g}..{high:g}")
    return float(value)


def _text(value: Any, name: str, limit: int = MAX_DETAIL_CHARS) -> str:
    if type(value) is not str:
        raise _fail("wrong-type", f"{name} must be a string, got {type(value).__name__}")
    if len(value) > limit:
        raise _fail("too-long", f"{name} has {len(value)} characters, more than {limit}")
    return value


def _match(value: Any, name: str, pattern: re.Pattern[str], what: str, reason: str = "bad-id") -> str:
    if type(value) is not str:
        raise _fail("wrong-type", f"{name} must be a string, got {type(value).__name__}")
    if pattern.fullmatch(value) is None:
        raise _fail(reason, f"{name} {value[:40]!r} is not {what}")
    return value


def _bundle(value: Any, name: str = "bundle_id") -> str:
    return _match(value, name, _HEX64, "a bundle id (64 lower-case hex digits)", "bad-bundle-id")


def _version(payload: dict[str, Any]) -> str | None:
    value = payload.get("version")
    if value is None:
        return None
    return _match(value, "version", _VERSION, "a version (1-64 of [0-9A-Za-z.+_-])")


def _optional_code(payload: dict[str, Any], key: str) -> str | None:
    value = payload.get(key)
    return None if value is None else _match(value, key, _CODE, "a reason code (1-64 of [A-Za-z0-9._:-])")


def _optional_text(payload: dict[str, Any], key: str) -> str | None:
    value = payload.get(key)
    return None if value is None else _text(value, key)


def _one_of(value: Any, name: str, choices: tuple[str, ...]) -> str:
    if type(value) is not str:
        raise _fail("wrong-type", f"{name} must be a string, got {type(value).__name__}")
    if value not in choices:
        raise _fail("out-of-range", f"{name} {value[:40]!r} is not one of {list(choices)}")
    return value


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


_HEALTH_REQUIRED = frozenset(("bundle_id", "inferences", "window_s", "inputs", "outputs"))
_HEALTH_ALLOWED = _HEALTH_REQUIRED | {"version"}
_CHANNEL_KEYS = frozenset(("name", "n", "mean", "m2", "bins"))
_CLASSIFICATION_KEYS = frozenset(("name", "role", "classes", "confidence"))
_DETECTION_KEYS = frozenset(("name", "role", "detections", "scores", "score_sum"))


def _counts(value: Any, name: str, low_len: int, high_len: int, total: int | None = None) -> tuple[int, ...]:
    """A list of non-negative integer counts of bounded length (summing to `total` when given)."""
    if type(value) is not list:
        raise _fail("wrong-type", f"{name} must be a list of counts, got {type(value).__name__}")
    if not low_len <= len(value) <= high_len:
        raise _fail("histogram-length", f"{name} has {len(value)} counts, expected {low_len}..{high_len}")
    for count in value:
        if type(count) is not int:
            raise _fail("wrong-type", f"{name} holds a {type(count).__name__}, not an integer")
        if count < 0:
            raise _fail("out-of-range", f"{name} holds a negative count")
    if total is not None and sum(value) != total:
        raise _fail("histogram-sum", f"{name} sums to {sum(value)}, not {total}")
    return tuple(value)


def _unique(entries: Any, name: str, limit: int) -> list[Any]:
    if type(entries) is not list:
        raise _fail("wrong-type", f"{name} must be a list, got {type(entries).__name__}")
    if len(entries) > limit:
        raise _fail("too-long", f"{name} has {len(entries)} entries, more than {limit}")
    names = set()
    for entry in entries:
        if type(entry) is not dict:
            raise _fail("not-object", f"{name} entries must be JSON objects")
        names.add(_match(entry.get("name"), f"{name}[].name", _OUTPUT, "a tensor name"))
    if len(names) != len(entries):
        raise _fail("sketch-inconsistent", f"{name} names a tensor twice")
    return entries


def _health_channels(entry: dict[str, Any], inferences: int) -> HealthChannels:
    _keys("health input", entry, _CHANNEL_KEYS, _CHANNEL_KEYS)
    n = _counts(entry["n"], "inputs[].n", 1, MAX_HEALTH_CHANNELS)
    channels = len(n)
    if max(n) > inferences * MAX_SAMPLED_PER_INFERENCE:
        raise _fail(
            "out-of-range", f"inputs[].n: more than {MAX_SAMPLED_PER_INFERENCE} elements per inference"
        )
    means, m2s = entry["mean"], entry["m2"]
    if type(means) is not list or type(m2s) is not list or not len(means) == len(m2s) == channels:
        raise _fail("histogram-length", f"inputs[].mean and m2 need one number per channel ({channels})")
    mean = tuple(_number(v, "inputs[].mean", -MAX_ABS_MOMENT, MAX_ABS_MOMENT) for v in means)
    m2 = tuple(_number(v, "inputs[].m2", 0.0, math.inf) for v in m2s)
    if any(c == 0 and (a != 0.0 or b != 0.0) for c, a, b in zip(n, mean, m2, strict=True)):
        raise _fail("sketch-inconsistent", "inputs[]: a channel with no elements has a mean or M2")
    rows = entry["bins"]
    if type(rows) is not list or len(rows) not in (0, channels):
        raise _fail("histogram-length", f"inputs[].bins: [] or one list per channel ({channels})")
    bins = tuple(
        _counts(row, "inputs[].bins[]", 2, MAX_QUANTILE_EDGES + 1, count)
        for row, count in zip(rows, n, strict=False)
    )
    if len({len(b) for b in bins}) > 1:
        raise _fail("histogram-length", "inputs[].bins: every channel has the same number of bins")
    return HealthChannels(entry["name"], n, mean, m2, bins)


def _health_output(entry: dict[str, Any], inferences: int) -> HealthOutput:
    role = _one_of(entry.get("role"), "outputs[].role", ("classification", "detection"))
    if role == "classification":
        _keys("health output", entry, _CLASSIFICATION_KEYS, _CLASSIFICATION_KEYS)
        classes = _counts(entry["classes"], "outputs[].classes", 1, MAX_HEALTH_CLASSES, inferences)
        confidence = _counts(
            entry["confidence"], "outputs[].confidence", CONFIDENCE_BINS, CONFIDENCE_BINS, inferences
        )
        return HealthOutput(entry["name"], role, classes, confidence)
    _keys("health output", entry, _DETECTION_KEYS, _DETECTION_KEYS)
    width = len(DETECTION_COUNT_EDGES) + 1
    detections = _counts(entry["detections"], "outputs[].detections", width, width, inferences)
    scores = _counts(entry["scores"], "outputs[].scores", CONFIDENCE_BINS, CONFIDENCE_BINS)
    lowest = sum(c * (low + 1) for c, low in zip(detections[1:], DETECTION_COUNT_EDGES, strict=False))
    highest = sum(
        c * high
        for c, high in zip(detections, (*DETECTION_COUNT_EDGES, MAX_DETECTIONS_PER_INPUT), strict=True)
    )
    total = sum(scores)
    if not lowest <= total <= highest:
        raise _fail(
            "sketch-inconsistent",
            f"outputs[].scores count {total} detections; the detections bins allow {lowest}..{highest}",
        )
    score_sum = _number(entry["score_sum"], "outputs[].score_sum", 0.0, float(highest))
    low = sum(c * i / CONFIDENCE_BINS for i, c in enumerate(scores))
    high = sum(c * (i + 1) / CONFIDENCE_BINS for i, c in enumerate(scores))
    if not low * (1 - 1e-9) - 1e-9 <= score_sum <= high * (1 + 1e-9) + 1e-9:
        raise _fail("sketch-inconsistent", f"outputs[].score_sum {score_sum:g} is outside {low:g}..{high:g}")
    return HealthOutput(entry["name"], role, detections, scores, score_sum)


def _health(p: Any) -> HealthPayload:
    _keys("health", p, _HEALTH_REQUIRED, _HEALTH_ALLOWED)
    window = _number(p["window_s"], "window_s", 0.0, MAX_WINDOW_S)
    limit = int(MAX_INFERENCES_PER_S * (window if window > MIN_WINDOW_S else MIN_WINDOW_S))
    inferences = _int(p["inferences"], "inferences", 1, limit)
    inputs = _unique(p["inputs"], "inputs", MAX_HEALTH_INPUTS)
    outputs = _unique(p["outputs"], "outputs", MAX_HEALTH_OUTPUTS)
    return HealthPayload(
        _bundle(p["bundle_id"]),
        _version(p),
        inferences,
        window,
        tuple(_health_channels(e, inferences) for e in inputs),
        tuple(_health_output(e, inferences) for e in outputs),
    )


_SHADOW_REQUIRED = frozenset(
    (
        "bundle_id",
        "served_bundle_id",
        "compared",
        "agreed",
        "outputs",
        "failures",
        "timeouts",
        "skipped_cpu",
        "latency_histogram",
    )
)
_SHADOW_ALLOWED = _SHADOW_REQUIRED | {"version", "window_s", "dropped", "stopped"}
_SHADOW_OUTPUT_KEYS = frozenset(("role", "compared", "agreed"))


def _shadow_output(name: Any, entry: Any, limit: int) -> ShadowOutput:
    _match(name, "outputs key", _OUTPUT, "a tensor name")
    _keys("shadow output", entry, _SHADOW_OUTPUT_KEYS, _SHADOW_OUTPUT_KEYS)
    role = _one_of(entry["role"], "outputs[].role", SHADOW_ROLES)
    compared = _int(entry["compared"], "outputs[].compared", 0, limit)
    agreed = _int(entry["agreed"], "outputs[].agreed", 0, limit)
    if agreed > compared:
        raise _fail("sketch-inconsistent", f"outputs[{name[:40]!r}]: agreed {agreed} > compared {compared}")
    return ShadowOutput(name, role, compared, agreed)


def _shadow(p: Any) -> ShadowPayload:
    _keys("shadow", p, _SHADOW_REQUIRED, _SHADOW_ALLOWED)
    window: float | None = None
    if p.get("window_s") is not None:
        window = _number(p["window_s"], "window_s", 0.0, MAX_WINDOW_S)
    span = MAX_WINDOW_S if window is None else max(window, MIN_WINDOW_S)
    limit = int(MAX_INFERENCES_PER_S * span)
    compared = _int(p["compared"], "compared", 0, limit)
    agreed = _int(p["agreed"], "agreed", 0, limit)
    if agreed > compared:
        raise _fail("sketch-inconsistent", f"agreed {agreed} > compared {compared}")
    outputs = p["outputs"]
    if type(outputs) is not dict:
        raise _fail(
            "wrong-type", f"outputs must be an object of output name -> counts, got {type(outputs).__name__}"
        )
    if len(outputs) > MAX_HEALTH_OUTPUTS:
        raise _fail("too-long", f"outputs has {len(outputs)} entries, more than {MAX_HEALTH_OUTPUTS}")
    parsed = tuple(_shadow_output(name, entry, limit) for name, entry in sorted(outputs.items()))
    if compared and not parsed:
        raise _fail("sketch-inconsistent", f"{compared} runs compared but no output is reported")
    if any(o.compared > compared for o in parsed):
        raise _fail("sketch-inconsistent", "an output compared more runs than the primary output's compared")
    if parsed and all((o.compared, o.agreed) != (compared, agreed) for o in parsed):
        raise _fail("sketch-inconsistent", "compared and agreed are not any output's (the primary output's)")
    histogram = _counts(p["latency_histogram"], "latency_histogram", HISTOGRAM_SIZE, HISTOGRAM_SIZE, compared)
    stopped = p.get("stopped", False)
    if type(stopped) is not bool:
        raise _fail("wrong-type", f"stopped must be true or false, got {type(stopped).__name__}")
    return ShadowPayload(
        _bundle(p["bundle_id"]),
        _bundle(p["served_bundle_id"], "served_bundle_id"),
        compared,
        agreed,
        parsed,
        _int(p["failures"], "failures", 0, limit),
        _int(p["timeouts"], "timeouts", 0, limit),
        _int(p["skipped_cpu"], "skipped_cpu", 0, limit),
        histogram,
        _version(p),
        window,
        _int(p.get("dropped", 0), "dropped", 0, limit),
        stopped,
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
    "health": _health,
    "shadow": _shadow,
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
