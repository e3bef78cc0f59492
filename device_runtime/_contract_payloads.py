"""The telemetry contract's event kinds other than the sketches: ``inferences``, ``crash``, ``feedback``,
``install``, ``trial``, ``slot-verify-failed``, ``telemetry-reset`` and ``download``.

Their typed payloads and parsers; the rules are documented in `device_runtime.telemetry_contract`, which
dispatches to these parsers and re-exports the payload types (the sketch kinds, ``health`` and ``shadow``,
are `device_runtime._contract_sketches`). `check_inferences` is ingest's hot path: it validates without
building the payload.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from device_runtime._contract_fields import (
    _CODE,
    _HEX64,
    _LOWER_MS,
    _OUTPUT,
    _UPPER_MS,
    _VERSION,
    HISTOGRAM_SIZE,
    MAX_ABS_SQNR_DB,
    MAX_CONCURRENT_INFERENCES,
    MAX_COUNTER,
    MAX_DOWNLOAD_BYTES,
    MAX_INFERENCES_PER_S,
    MAX_OUTPUTS,
    MAX_REASONS,
    MAX_WINDOW_S,
    MIN_WINDOW_S,
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

__all__ = [
    "CrashPayload",
    "DownloadPayload",
    "FeedbackPayload",
    "InferencesPayload",
    "InstallPayload",
    "SlotVerifyFailedPayload",
    "TelemetryResetPayload",
    "TrialPayload",
    "check_inferences",
    "parse_crash",
    "parse_download",
    "parse_feedback",
    "parse_inferences",
    "parse_install",
    "parse_slot_verify_failed",
    "parse_telemetry_reset",
    "parse_trial",
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


# ---- per kind ------------------------------------------------------------------------------------
_INFERENCES_REQUIRED = frozenset(
    ("bundle_id", "inferences", "errors", "latency_ms_buckets", "latency_ms_sum", "window_s")
)
_INFERENCES_ALLOWED = _INFERENCES_REQUIRED | {"version"}
_MAX_INFERENCES = int(MAX_INFERENCES_PER_S * MAX_WINDOW_S)


def check_inferences(p: Any) -> str:
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


def parse_inferences(p: Any) -> InferencesPayload:
    check_inferences(p)
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


def parse_crash(p: Any) -> CrashPayload:
    _keys("crash", p, _BUNDLE_ONLY, _CRASH_ALLOWED)
    return CrashPayload(_bundle(p["bundle_id"]), _version(p), _optional_code(p, "during"))


_FEEDBACK_KEYS = frozenset(("bundle_id", "correct"))


def parse_feedback(p: Any) -> FeedbackPayload:
    _keys("feedback", p, _FEEDBACK_KEYS, _FEEDBACK_KEYS)
    correct = p["correct"]
    if type(correct) is not bool:
        raise _fail("wrong-type", f"correct must be true or false, got {type(correct).__name__}")
    return FeedbackPayload(_bundle(p["bundle_id"]), correct)


_INSTALL_ALLOWED = frozenset(
    ("outcome", "reason", "detail", "bundle_id", "version", "model_sha256", "self_test_sqnr_db")
)
_OUTCOME_ONLY = frozenset(("outcome",))


def parse_install(p: Any) -> InstallPayload:
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


def parse_trial(p: Any) -> TrialPayload:
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


def parse_slot_verify_failed(p: Any) -> SlotVerifyFailedPayload:
    _keys("slot-verify-failed", p, _SLOT_REQUIRED, _SLOT_ALLOWED)
    reason = _match(p["reason"], "reason", _CODE, "a reason code (1-64 of [A-Za-z0-9._:-])")
    slot = _one_of(p["slot"], "slot", ("a", "b"))
    return SlotVerifyFailedPayload(slot, reason, _optional_text(p, "detail"))


_DETAIL_ONLY = frozenset(("detail",))


def parse_telemetry_reset(p: Any) -> TelemetryResetPayload:
    _keys("telemetry-reset", p, _DETAIL_ONLY, _DETAIL_ONLY)
    return TelemetryResetPayload(_text(p["detail"], "detail"))


_DOWNLOAD_REQUIRED = frozenset(("bundle_id", "method", "bytes", "full_bytes"))
_DOWNLOAD_ALLOWED = _DOWNLOAD_REQUIRED | {"version", "base_bundle_id", "fallback", "detail"}


def parse_download(p: Any) -> DownloadPayload:
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
