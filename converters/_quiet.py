"""Capture what third-party engines and converters print, so the CLI shows only what matters.

TensorFlow Lite, its converter and onnxruntime's quantizer write to the process's file descriptors from C++
(`INFO: Created TensorFlow Lite XNNPACK delegate for CPU.`, `fully_quantize: 0, inference_type: 6, ...`)
and to Python's streams and logging (`WARNING:root:Please consider to run pre-processing ...`). `captured()`
takes all three for the duration of one call: file descriptors 1 and 2 are pointed at a temporary file
(C-level writes), `sys.stdout`/`sys.stderr` at a buffer (Python-level writes, e.g. under a test runner),
and a handler on the root logger (and on any `loggers` asked for) collects log records. Afterwards
everything is restored; lines that are known noise are dropped, and every other line is written back to
the original stderr, so an engine's explanation of a failure is never lost.

Thread safety: file descriptors are process-wide. One lock serializes captures; while one is open, what
any other thread writes to fd 1 or 2 lands in it too and is written back afterwards (delayed, not lost).
Keep the captured call short (one conversion, one engine load).
"""

from __future__ import annotations

import contextlib
import ctypes
import io
import logging
import os
import re
import sys
import tempfile
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["NOISE", "Captured", "captured", "fp16_clipping_summary", "load_engine", "quiet_import"]

# Lines third-party code prints in normal operation, which say nothing a user can act on.
NOISE: tuple[re.Pattern[str], ...] = (
    re.compile(r"^INFO: Created TensorFlow Lite XNNPACK delegate for CPU\.$"),
    re.compile(r"^fully_quantize: \d+, inference_type: \d+, input_inference_type: .*$"),
    re.compile(r"^(WARNING:root:)?Please consider to run pre-processing before quantization\..*$"),
    re.compile(r"^(DEBUG:[\w.]+:)?the float32 number \S+ will be truncated to \S+$"),
    re.compile(r"^.*UserWarning: the float32 number \S+ will be truncated to \S+$"),
    re.compile(r"^\s*warnings\.warn\($"),
    re.compile(r"^$"),
    # TensorFlow's start-up banners (absl, printed even with TF_CPP_MIN_LOG_LEVEL=3).
    re.compile(r"^I\d{4} [\d:. ]+\s+\d+ port\.cc:\d+\] oneDNN custom operations are on\..*$"),
    re.compile(r"^WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR$"),
    re.compile(r"^.*\|\s*\d+/\d+ \[[^\]]*\]\s*$"),  # a progress bar's frame drawn meanwhile (tqdm)
)
_TRUNCATED = re.compile(r"the float32 number (\S+) will be truncated to (\S+)")
_LOCK = threading.RLock()


@dataclass
class Captured:
    """What one captured call printed (every line, noise included) and its log records."""

    lines: list[str] = field(default_factory=list)
    # The lines a user would have seen without the capture: stream output and records of level WARNING
    # and above (DEBUG records of `loggers` are collected for summaries only).
    visible: list[str] = field(default_factory=list)

    def matching(self, pattern: re.Pattern[str]) -> list[str]:
        """The captured lines `pattern` finds something in."""
        return [line for line in self.lines if pattern.search(line)]

    def unrecognized(self) -> list[str]:
        """The visible lines that are not known noise (written back to stderr when the capture ends)."""
        return [line for line in self.visible if not any(p.match(line) for p in NOISE)]


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []
        self.visible: list[str] = []
        self._seen: set[int] = set()  # a record reaches this handler on its logger and on the root

    def emit(self, record: logging.LogRecord) -> None:
        if id(record) in self._seen:
            return
        self._seen.add(id(record))
        with contextlib.suppress(Exception):  # a broken record never breaks the call it came from
            line = f"{record.levelname}:{record.name}:{record.getMessage()}"
            self.lines.append(line)
            if record.levelno >= logging.WARNING:
                self.visible.append(line)


def _flush_c_streams() -> None:
    """fflush(NULL): C stdio buffers go to their descriptors before those are swapped."""
    with contextlib.suppress(OSError, AttributeError):  # no libc symbols (unusual platforms): skip
        ctypes.CDLL(None).fflush(None)


def _flush_python_streams() -> None:
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(AttributeError, OSError, ValueError):
            stream.flush()


@contextlib.contextmanager
def _descriptors(sink: Any) -> Iterator[bool]:
    """Point fds 1 and 2 at `sink` for the duration; yields False (and does nothing) if they cannot be."""
    try:
        saved = (os.dup(1), os.dup(2))
    except OSError:
        yield False
        return
    _flush_python_streams()
    _flush_c_streams()
    os.dup2(sink.fileno(), 1)
    os.dup2(sink.fileno(), 2)
    try:
        yield True
    finally:
        _flush_python_streams()
        _flush_c_streams()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        os.close(saved[0])
        os.close(saved[1])


@contextlib.contextmanager
def captured(*, loggers: Sequence[str] = (), descriptors: bool = True) -> Iterator[Captured]:
    """Capture fds 1/2, Python's stdout/stderr and log records of one third-party call (see the module doc).

    `loggers`: named loggers whose DEBUG records are collected too (their level is restored afterwards).
    `descriptors`: False leaves fds 1 and 2 alone, for calls whose noise is Python-level only (then a
    progress bar drawn meanwhile on the terminal stays live).
    Unrecognized lines are written back to the original stderr when the block ends, also on an error.
    """
    result = Captured()
    with _LOCK, tempfile.TemporaryFile() as sink:
        buffer = io.StringIO()
        records = _Records()
        root = logging.getLogger()
        named = [logging.getLogger(name) for name in loggers]
        levels = [logger.level for logger in named]
        # A handler on the root logger also stops logging.warning() from calling basicConfig() here,
        # which would bind a handler to the temporary buffer for the rest of the process.
        root.addHandler(records)
        for logger in named:
            logger.addHandler(records)
            logger.setLevel(logging.DEBUG)
        try:
            with (
                _descriptors(sink) if descriptors else contextlib.nullcontext(False),
                contextlib.redirect_stdout(buffer),
                contextlib.redirect_stderr(buffer),
            ):
                yield result
        finally:
            root.removeHandler(records)
            for logger, level in zip(named, levels, strict=True):
                logger.removeHandler(records)
                logger.setLevel(level)
            sink.seek(0)
            text = sink.read().decode("utf-8", errors="replace") + buffer.getvalue()
            streams = [line.rstrip() for line in text.splitlines()]
            result.lines = streams + records.lines
            result.visible = streams + records.visible
            kept = result.unrecognized()
            if kept:
                with contextlib.suppress(OSError):
                    os.write(2, ("\n".join(kept) + "\n").encode("utf-8", errors="replace"))


def fp16_clipping_summary(result: Captured) -> str | None:
    """One line for the float16 converter's clipping messages, None when there were none.

    The converter reports, per tensor, the extreme values it clips into float16's range (|x| above 65504
    or below 5.96e-08, the smallest subnormal, which it raises to it).
    """
    found = [m for line in result.lines for m in _TRUNCATED.finditer(line)]
    if not found:
        return None
    large = [abs(float(m.group(1))) for m in found if abs(float(m.group(1))) >= 65504]
    small = len(found) - len(large)
    parts = []
    if large:
        parts.append(f"{len(large)} above float16's maximum 65504 (largest {max(large):.4g}) clipped to it")
    if small:
        parts.append(f"{small} closer to zero than 5.96e-08 raised to it")
    return f"fp16: {len(found)} extreme weight value(s) outside float16's range: " + "; ".join(parts)


def load_engine(model: str | Path | bytes, **kwargs: Any) -> Any:
    """`device_runtime.engines.load_engine` with the engine's start-up banner captured (host code only)."""
    from device_runtime.engines import load_engine as load

    with captured():
        return load(model, **kwargs)


def quiet_import(name: str) -> Any:
    """Import a heavy third-party module (tensorflow, keras, tf2onnx) with its start-up banners captured."""
    import importlib

    if name in sys.modules:
        return sys.modules[name]
    with captured():
        return importlib.import_module(name)
