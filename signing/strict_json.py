"""Strict JSON for signed documents: bounded size, no duplicate keys, no NaN/Infinity, bounded integers.

Python's `json` accepts duplicate keys (last one wins), `NaN` and arbitrarily large integers; an attacker
can use each to make two parsers disagree about a signed document. Canonical output is sorted, compact
UTF-8, so the same document always serializes to the same bytes.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from signing.errors import FormatError

__all__ = ["MAX_INTEGER", "canonical_bytes", "parse_strict"]

MAX_INTEGER = 2**53 - 1  # the range every JSON implementation represents exactly


def _reject_constant(name: str) -> Any:
    raise FormatError(f"JSON constant {name} is not allowed in signed documents")


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)  # built in C; a duplicate key makes it shorter than the pairs
    if len(result) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise FormatError(f"duplicate JSON key {key!r}")
            seen.add(key)
    return result


# 16 or more digits in a row: where such a run starts a JSON number, that integer may exceed 2^53 (which has
# 16 digits). Runs inside strings (hex ids) are told apart by the character before them.
_LONG_DIGITS = re.compile(r"[0-9]{16,}")
_WORD = frozenset("0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ_.")


def _may_hold_a_big_integer(text: str) -> bool:
    """False only if no JSON integer in `text` has 16 or more digits (a cheap scan in C, then a look at
    the character before each long digit run: a letter or '.' means it is inside a word or a fraction)."""
    for match in _LONG_DIGITS.finditer(text):
        start = match.start()
        if start == 0 or text[start - 1] not in _WORD:
            return True
    return False


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
        if not _may_hold_a_big_integer(text):
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
