"""The telemetry contract's bounds and field checks, shared by every payload kind.

Constants with units and the small checks every parser uses (plain functions on the hot path: `type(x) is`
tests, exceptions only on failure). The public names are re-exported by `device_runtime.telemetry_contract`,
which owns the contract and documents it.
"""

from __future__ import annotations

import math
import re
from typing import Any

from device_runtime._roles import OUTPUT_KINDS
from device_runtime.errors import ContractError

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
SHADOW_ROLES = OUTPUT_KINDS  # shadow trials compare outputs by the role their bundle's spec gives them

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
