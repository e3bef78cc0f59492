"""Capture what native code writes to the process's file descriptors during one short call.

LiteRT prints `INFO: Created TensorFlow Lite XNNPACK delegate for CPU.` from C++ straight to file descriptor
2 the first time an interpreter allocates its tensors, below anything Python can redirect. `descriptors()`
points the chosen descriptors at a temporary file for the duration of one call; afterwards they are
restored, lines that match the caller's known noise are dropped, and every other line is written back to
fd 2, so an engine's explanation of a failure is never lost (only delayed until the call returns).

This is the one implementation of descriptor capture: the host's `converters._quiet.captured()` builds on
it (adding Python streams and log records), and the device's engine loader uses it directly. Stdlib only.

Thread safety: file descriptors are process-wide. `LOCK` serializes captures (re-entrant, so a capture may
nest inside another on the same thread: the inner one writes back into the outer one's file); while one is
open, what any other thread writes to a captured descriptor lands in it and is written back afterwards.
Keep the captured call short (one engine load). When the descriptors cannot be duplicated or no temporary
file can be made (a daemon with closed descriptors, a read-only /tmp), nothing is captured.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import sys
import tempfile
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import IO

__all__ = ["ENGINE_NOISE", "LOCK", "Printed", "descriptors", "is_noise", "write_back"]

# What an engine prints while loading a model in normal operation: nothing a user can act on.
ENGINE_NOISE: tuple[re.Pattern[str], ...] = (
    re.compile(r"^INFO: Created TensorFlow Lite XNNPACK delegate for CPU\.$"),
    re.compile(r"^$"),
)
LOCK = threading.RLock()


@dataclass
class Printed:
    """What the descriptors received during one capture (filled when the capture ends)."""

    lines: list[str] = field(default_factory=list)  # every line, noise included
    kept: list[str] = field(default_factory=list)  # the lines written back to fd 2


def is_noise(line: str, noise: Sequence[re.Pattern[str]]) -> bool:
    """True when one of the `noise` patterns matches `line` from its start."""
    return any(pattern.match(line) for pattern in noise)


def write_back(lines: Sequence[str]) -> None:
    """Write `lines` to fd 2 (where they would have gone without a capture); never raises."""
    if lines:
        with contextlib.suppress(OSError):
            os.write(2, ("\n".join(lines) + "\n").encode("utf-8", errors="replace"))


def _flush() -> None:
    """Python's buffered streams, then C stdio's (fflush(NULL)), go to their descriptors before a swap."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(AttributeError, OSError, ValueError):
            stream.flush()
    with contextlib.suppress(OSError, AttributeError):  # no libc symbols (unusual platforms): skip
        ctypes.CDLL(None).fflush(None)


@contextlib.contextmanager
def descriptors(
    noise: Sequence[re.Pattern[str]] = ENGINE_NOISE, *, fds: Sequence[int] = (2,)
) -> Iterator[Printed]:
    """Capture `fds` for the duration of the block (see the module doc); yields what they received.

    `noise`: patterns of lines to drop; every other line is written back to fd 2 when the block ends,
    also when it raises. `fds`: the descriptors to capture (the engine banner goes to 2; host converters
    also print on 1; none: nothing is captured).
    """
    printed = Printed()
    with LOCK, contextlib.ExitStack() as stack:
        sink: IO[bytes] | None = None
        saved: list[tuple[int, int]] = []  # (descriptor, its duplicate to restore from)
        try:
            if fds:
                sink = stack.enter_context(tempfile.TemporaryFile())
            for fd in fds:
                saved.append((fd, os.dup(fd)))
                stack.callback(os.close, saved[-1][1])
        except OSError:
            sink = None
        if sink is None:  # nothing to capture, or nowhere to: the call prints as it would have
            yield printed
            return
        _flush()
        for fd, _copy in saved:
            os.dup2(sink.fileno(), fd)
        try:
            yield printed
        finally:
            _flush()
            for fd, copy in saved:
                os.dup2(copy, fd)
            sink.seek(0)
            text = sink.read().decode("utf-8", errors="replace")
            printed.lines = [line.rstrip() for line in text.splitlines()]
            printed.kept = [line for line in printed.lines if not is_noise(line, noise)]
            write_back(printed.kept)
