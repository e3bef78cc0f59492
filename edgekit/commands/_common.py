"""What every subcommand shares: error handling, progress bars, JSON output and parsing helpers.

The `--json` contract (one shape for every command, documented here once):

- success: one JSON object on stdout, exit 0: `{"ok": true, "command": "rollout status", ...result}`; the
  result's keys sit at the top level (a list result sits under a named key, e.g. `rollouts`);
- failure: one JSON object on stdout, exit 1 (2 for a usage error):
  `{"ok": false, "command": "...", "error": {"code": "...", "message": "...", "hint": "..." | null}}`;
  `code` is the error's class name (`GateError`, `UsageError`, `ServerError`, ...); when a gate failed,
  its report's keys sit at the top level too, as on success;
- long-running commands (`serve`, `rollout watch`) print one JSON object per line instead.

Human output (without `--json`) goes to stdout, notes and errors to stderr, exactly as before.
"""

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

__all__ = [
    "JSON_HELP",
    "JSON_SHAPE",
    "ClickProgress",
    "CommandError",
    "command_options",
    "echo_json",
    "emit_result",
    "error_document",
    "handle_errors",
    "json_flag",
    "json_help",
    "json_option",
    "json_safe",
    "parse_input_shapes",
    "parse_signature",
    "signature_options",
    "write_json",
]


JSON_SHAPE = '{"ok": ..., "command": ...}'


def json_help(what: str = "the result", *, per_line: bool = False) -> str:
    """The help of every `--json` flag: what the command prints, and the shared shape (module doc).

    `what`: the command's result in a few words ("the report"); `per_line`: a long-running command that
    prints one object per line (`what` then says when, e.g. "the rollout's state at each poll").
    """
    how = "as JSON on stdout, one object per line" if per_line else "as one JSON object on stdout"
    return f"Print {what} {how} ({JSON_SHAPE}); errors too."


JSON_HELP = json_help()


def json_flag(what: str = "the result", *, per_line: bool = False) -> Callable[[F], F]:
    """The `--json` flag (stored as `as_json`) with its help from `json_help`."""
    return click.option("--json", "as_json", is_flag=True, help=json_help(what, per_line=per_line))


def json_option(function: F) -> F:
    """The `--json` flag with the plain help (`JSON_HELP`): `@json_option`."""
    return json_flag()(function)


class CommandError(click.ClickException):
    """A command-level failure with a stable `code` and an optional `hint` (kept apart for `--json`)."""

    def __init__(self, message: str, *, code: str = "CommandError", hint: str | None = None) -> None:
        super().__init__(message if hint is None else f"{message}; {hint}")
        self.code = code
        self.reason = message
        self.hint = hint


def command_name(context: click.Context | None = None) -> str:
    """The command path without the program name, e.g. `rollout status`."""
    context = context or click.get_current_context(silent=True)
    names: list[str] = []
    while context is not None and context.parent is not None:  # the root's name is the program's
        names.append(context.info_name or "")
        context = context.parent
    return " ".join(reversed(names))


def emit_result(document: Any, *, line: bool = False, command: str | None = None) -> None:
    """Print a successful result in the `--json` shape (a dict: keys kept at the top level)."""
    body = document if isinstance(document, dict) else {"result": document}
    shaped = {"ok": True, "command": command or command_name(), **body}
    if line:
        click.echo(json.dumps(json_safe(shaped), sort_keys=True))
    else:
        echo_json(shaped)


def error_document(error: BaseException, command: str) -> dict[str, Any]:
    """The `--json` shape of a failure."""
    if isinstance(error, CommandError):
        code, message, hint = error.code, error.reason, error.hint
    elif isinstance(error, click.UsageError):
        code, message, hint = "UsageError", error.format_message(), None
    elif isinstance(error, click.ClickException):
        code, message, hint = "CommandError", error.format_message(), None
    else:
        code, message, hint = type(error).__name__, str(error), None
    document: dict[str, Any] = {
        "ok": False,
        "command": command,
        "error": {"code": code, "message": message, "hint": hint},
    }
    report = getattr(error, "report", None)
    if isinstance(report, dict):  # a failed gate still has its figures, at the top level as on success
        document = {**report, **document}
    return document


def handle_errors(function: F) -> F:
    """Turn the product's typed errors into one line on stderr and exit code 1 (tracebacks with --debug).

    The error's CLI hints (for options this command has) are kept apart from the message, so `--json`
    reports them in `error.hint`; the root group prints the JSON (see `edgekit.cli.LazyGroup`).
    """

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from converters.errors import ConverterError
        from device_runtime.errors import DeviceRuntimeError
        from edgekit.errors import EdgekitError
        from signing.errors import SigningError

        try:
            return function(*args, **kwargs)
        except (ConverterError, DeviceRuntimeError, SigningError, EdgekitError) as e:
            context = click.get_current_context(silent=True)
            if context is not None and context.find_root().obj and context.find_root().obj.get("debug"):
                raise
            error = CommandError(str(e), code=type(e).__name__, hint=_hints(e, context) or None)
            error.report = getattr(e, "report", None)  # type: ignore[attr-defined]
            raise error from None
        except KeyboardInterrupt:
            raise CommandError("interrupted; nothing was written", code="Interrupted") from None

    return wrapper  # type: ignore[return-value]


def command_options(command: click.Command) -> set[str]:
    """Every option string (`--name`, `-o`) a command accepts."""
    names: set[str] = set()
    for param in command.params:
        if isinstance(param, click.Option):
            names.update(param.opts)
            names.update(param.secondary_opts)
    return names


def _hints(error: BaseException, context: click.Context | None) -> str:
    """The error's CLI hints for options this command has (library errors cannot know the command)."""
    hints: dict[str, str] = getattr(error, "option_hints", None) or {}
    if not hints or context is None:
        return ""
    available = command_options(context.command)
    return "; ".join(text for option, text in hints.items() if option in available)


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


def signature_options(function: Any) -> Any:
    """`--batch-axis NAME=AXIS|none` and `--state OUTPUT=INPUT`, shared by convert, parity and quantize."""
    options = [
        click.option(
            "--batch-axis",
            "batch_axes",
            multiple=True,
            metavar="NAME=AXIS|none",
            help="The batch axis of an input, or 'none' for an input fed whole to every run "
            "(default: from the model's shapes; repeatable).",
        ),
        click.option(
            "--state",
            "states",
            multiple=True,
            metavar="OUTPUT=INPUT",
            help="A state output fed back as an input at the next step (repeatable): the data then holds "
            "sequences, (S, T, ...) per input; states start at zeros unless the data gives them.",
        ),
    ]
    for option in reversed(options):
        function = option(function)
    return function


def parse_signature(batch_axes: tuple[str, ...], states: tuple[str, ...]) -> Any:
    """Parse `--batch-axis` and `--state` into a `converters.signature.Signature` (None when neither)."""
    from converters.signature import Signature

    if not batch_axes and not states:
        return None
    axes: dict[str, int | None] = {}
    for value in batch_axes:
        name, sep, axis = value.rpartition("=")
        parsed: int | None
        if axis.strip().lower() == "none":
            parsed = None
        else:
            try:
                parsed = int(axis)
            except ValueError:
                parsed = -1
        if not sep or not name or (parsed is not None and parsed < 0):
            raise click.BadParameter(
                f"{value!r}: expected NAME=AXIS (a non-negative integer) or NAME=none",
                param_hint="--batch-axis",
            )
        axes[name] = parsed
    pairs: dict[str, str] = {}
    for value in states:
        output, sep, target = value.partition("=")
        if not sep or not output or not target:
            raise click.BadParameter(f"{value!r}: expected OUTPUT=INPUT", param_hint="--state")
        pairs[output] = target
    return Signature(batch_axes=axes, states=pairs)
