"""The one strict JSON parser and canonical serializer: bounded size, no duplicate keys, no NaN/Infinity,
bounded integers; sorted, compact UTF-8 out.

Python's `json` accepts duplicate keys (last one wins), `NaN` and arbitrarily large integers; an attacker
can use each to make two parsers disagree about a signed document. Every document edgekit reads from
outside (signed statements, rollout plans, preprocessing specs, configs, Hugging Face preprocessor files)
goes through `parse_strict`; canonical output is sorted, compact UTF-8, so the same document always
serializes to the same bytes. Standard library only, for the device and the host alike.
"""

from __future__ import annotations

import json
import math
from typing import Any

from signing.errors import FormatError

__all__ = ["MAX_INTEGER", "canonical_bytes", "parse_strict"]

MAX_INTEGER = 2**53 - 1  # the range every JSON implementation represents exactly


def _reject_constant(name: str) -> Any:
    raise FormatError(f"JSON constant {name} is not allowed (numbers must be finite)")


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)  # built in C; a duplicate key makes it shorter than the pairs
    if len(result) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise FormatError(f"duplicate JSON key {key!r}")
            seen.add(key)
    return result


# Digits -> "0"; letters, "_", "." and '"' -> "a"; anything else -> " ". In the translated text, " "
# followed by 16 "0" is a run of 16 or more digits that starts where a JSON number can start (a number never
# follows a letter, a dot or a quote): an integer that may exceed 2^53 (which has 16 digits). A match inside
# a string only costs the slow path. bytes.translate and `in` run in C (well under 1 ms per 1 MiB).
_CLASSES = bytes(
    ord("0") if 48 <= b <= 57 else ord("a") if (65 <= b <= 90 or 97 <= b <= 122 or b in b'_."') else 32
    for b in range(256)
)
_RISKY_RUN = b" " + b"0" * 16


def _may_hold_a_big_integer(data: bytes) -> bool:
    """False only if no JSON integer in `data` has 16 or more digits."""
    return _RISKY_RUN in (b" " + data).translate(_CLASSES)


def _parse_int(text: str) -> int:
    if len(text) > 20:
        raise FormatError(f"integer with {len(text)} digits is out of range")
    value = int(text)
    if abs(value) > MAX_INTEGER:
        raise FormatError(f"integer {value} is out of range (|n| <= 2^53-1)")
    return value


def _parse_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e999 is Infinity spelled as a number
        raise FormatError(f"number {text[:40]} overflows to {value}")
    return value


def parse_strict(data: bytes, *, what: str, max_bytes: int) -> Any:
    """Parse UTF-8 JSON strictly.

    Raises:
        FormatError: too large, not UTF-8, not JSON, duplicate keys, NaN/Infinity, huge integers.
    """
    if len(data) > max_bytes:
        raise FormatError(f"{what}: {len(data)} bytes exceeds the limit of {max_bytes}")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise FormatError(f"{what}: not UTF-8 ({e.reason} at byte {e.start})") from e
    # Fast path: with no long digit run where an integer could start, the C scanner's own integer parsing
    # gives the same result as the per-integer check (a telemetry batch holds thousands of integers).
    try:
        if not _may_hold_a_big_integer(data):
            return json.loads(
                text, object_pairs_hook=_pairs, parse_constant=_reject_constant, parse_float=_parse_float
            )
        return json.loads(
            text,
            object_pairs_hook=_pairs,
            parse_constant=_reject_constant,
            parse_int=_parse_int,
            parse_float=_parse_float,
        )
    except FormatError as e:
        raise FormatError(f"{what}: {e}") from e
    except (ValueError, RecursionError) as e:
        raise FormatError(f"{what}: not valid JSON ({str(e).splitlines()[0][:200]})") from e


def canonical_bytes(document: Any) -> bytes:
    """Sorted keys, no whitespace, UTF-8, NaN refused."""
    return json.dumps(
        document, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode()
