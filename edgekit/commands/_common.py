"""What every subcommand shares: error handling, progress bars, JSON output and parsing helpers."""

from __future__ import annotations

import functools
import json
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])

__all__ = ["ClickProgress", "echo_json", "handle_errors", "json_safe", "parse_input_shapes", "write_json"]


def handle_errors(function: F) -> F:
    """Turn the product's typed errors into one line on stderr and exit code 1 (tracebacks with --debug)."""

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from converters.errors import ConverterError
        from device_runtime.errors import DeviceRuntimeError
        from edgekit.bundle_build import BundleError
        from signing.errors import SigningError

        try:
            return function(*args, **kwargs)
        except (ConverterError, DeviceRuntimeError, SigningError, BundleError) as e:
            context = click.get_current_context(silent=True)
            if context is not None and context.find_root().obj and context.find_root().obj.get("debug"):
                raise
            raise click.ClickException(str(e)) from None
        except KeyboardInterrupt:
            raise click.ClickException("interrupted; nothing was written") from None

    return wrapper  # type: ignore[return-value]


class _Task:
    def __init__(self, bar: Any) -> None:
        self._bar = bar

    def advance(self, steps: int = 1) -> None:
        self._bar.update(steps)

    def close(self) -> None:
        self._bar.close()


class ClickProgress:
    """tqdm progress bars and notes on stderr; silent bars (notes kept) when `quiet`."""

    def __init__(self, quiet: bool = False) -> None:
        self.quiet = quiet
        self.notes: list[str] = []

    def task(self, description: str, total: int) -> _Task:
        from tqdm import tqdm

        # disable=None: bars only on a terminal, so logs and CI output stay clean.
        bar = tqdm(
            total=total,
            desc=description,
            unit="it",
            file=sys.stderr,
            leave=False,
            disable=True if self.quiet else None,
            dynamic_ncols=True,
        )
        return _Task(bar)

    def note(self, message: str) -> None:
        self.notes.append(message)
        if not self.quiet:
            click.echo(f"note: {message}", err=True)


def json_safe(value: Any) -> Any:
    """Replace non-finite floats (not JSON) with None, recursively."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


def echo_json(document: Any) -> None:
    """Print a document as JSON on stdout."""
    click.echo(json.dumps(json_safe(document), indent=2, sort_keys=True))


def write_json(document: Any, path: str | Path) -> None:
    """Write a document as JSON, atomically."""
    from converters._files import atomic_output

    with atomic_output(path) as tmp:
        tmp.write_text(json.dumps(json_safe(document), indent=2, sort_keys=True) + "\n", encoding="utf-8")


def parse_input_shapes(values: tuple[str, ...]) -> dict[str, list[int]] | None:
    """Parse `NAME:D0,D1,...` options."""
    if not values:
        return None
    shapes: dict[str, list[int]] = {}
    for value in values:
        name, sep, dims = value.rpartition(":")
        try:
            parsed = [int(d) for d in dims.split(",")]
        except ValueError:
            parsed = []
        if not sep or not name or not parsed or any(d < 1 for d in parsed):
            raise click.BadParameter(
                f"{value!r}: expected NAME:D0,D1,... with positive integers", param_hint="--input-shape"
            )
        shapes[name] = parsed
    return shapes
