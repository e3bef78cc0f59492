"""Strict checks of the values in a preprocessing spec (private to :mod:`device_runtime._spec` and
:mod:`device_runtime._output_spec`): each returns the value when it is allowed, else raises SpecError naming
the JSON path, what was found and the rule (booleans are not numbers, every number bounded)."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import Any, NoReturn

from device_runtime.errors import SpecError

MAX_SIDE = 8192  # pixels, for size and center_crop
MAX_RANK = 8
MAX_NAME = 256  # characters


def _show(value: object) -> str:
    try:
        text = json.dumps(value)
    except (TypeError, ValueError):  # not JSON, or an int too long to print
        text = f"a {type(value).__name__}"
    return text if len(text) <= 60 else text[:57] + "..."


def _fail(path: str, value: object, rule: str) -> NoReturn:
    raise SpecError(f"{path}: {_show(value)} is not allowed ({rule}); fix the spec")


def _obj(
    value: object, path: str, required: tuple[str, ...], optional: tuple[str, ...] = ()
) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        _fail(path, value, "expected an object")
    allowed = required + optional
    for key in value:
        if key not in allowed:
            raise SpecError(
                f"{path}.{key}: unknown key is not allowed (allowed: {', '.join(allowed)}); fix the spec"
            )
    for key in required:
        if key not in value:
            raise SpecError(f"{path}.{key}: missing (it is required); fix the spec")
    return value


def _enum(value: object, path: str, allowed: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in allowed:
        _fail(path, value, "allowed: " + ", ".join(json.dumps(a) for a in allowed))
    return value


def _int(value: object, path: str, name: str, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        _fail(path, value, f"{name} must be an integer from {lo} to {hi}")
    return value


def _float(
    value: object,
    path: str,
    name: str,
    *,
    gt: float | None = None,
    ge: float | None = None,
    le: float | None = None,
) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        _fail(path, value, f"{name} must be a number")
    try:
        x = float(value)
    except OverflowError:  # an int beyond float range
        x = math.inf
    if not math.isfinite(x):
        _fail(path, value, f"{name} must be finite")
    if gt is not None and not x > gt:
        _fail(path, value, f"{name} must be > {gt:g}")
    if ge is not None and not x >= ge:
        _fail(path, value, f"{name} must be >= {ge:g}")
    if le is not None and not x <= le:
        _fail(path, value, f"{name} must be <= {le:g}")
    return x


def _list(value: object, path: str, name: str, lo: int, hi: int) -> Sequence[Any]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or not lo <= len(value) <= hi:
        count = f"exactly {lo}" if lo == hi else f"{lo} to {hi}"
        _fail(path, value, f"{name} must be a list of {count} items")
    return value


def _name(value: object, path: str) -> str:
    if not isinstance(value, str) or not 1 <= len(value) <= MAX_NAME or not value.isprintable():
        _fail(path, value, f"a name must be 1 to {MAX_NAME} printable characters")
    return value


def _pair(value: object, path: str, name: str) -> tuple[int, int]:
    items = _list(value, path, name, 2, 2)
    return (_int(items[0], f"{path}[0]", name, 1, MAX_SIDE), _int(items[1], f"{path}[1]", name, 1, MAX_SIDE))
