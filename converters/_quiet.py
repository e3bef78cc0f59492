"""Capture what third-party engines and converters print, so the CLI shows only what matters.

TensorFlow Lite, its converter and onnxruntime's quantizer write to the process's file descriptors from C++
(`INFO: Created TensorFlow Lite XNNPACK delegate for CPU.`, `fully_quantize: 0, inference_type: 6, ...`)
and to Python's streams and logging (`WARNING:root:Please consider to run pre-processing ...`). `captured()`
takes all three for the duration of one call: file descriptors 1 and 2 through the device library's
capture (`device_runtime._quiet_fd`, the one implementation, which the device's engine loader also uses),
`sys.stdout`/`sys.stderr` into a buffer (Python-level writes, e.g. under a test runner), and a handler on
the root logger (and on any `loggers` asked for) collects log records. Afterwards everything is restored;
lines that are known noise are dropped, and every other line is written back to the original stderr, so
an engine's explanation of a failure is never lost.

Thread safety: file descriptors are process-wide. One lock (the device capture's) serializes captures;
while one is open, what any other thread writes to fd 1 or 2 lands in it too and is written back
afterwards (delayed, not lost). Keep the captured call short (one conversion, one engine load).
"""

from __future__ import annotations

import contextlib
import io
import logging
import re
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from device_runtime._quiet_fd import ENGINE_NOISE, LOCK, Printed, is_noise, write_back
from device_runtime._quiet_fd import descriptors as capture_descriptors
from device_runtime.engines import load_engine

__all__ = [
    "NOISE",
    "Captured",
    "captured",
    "fp16_clipping_summary",
    "load_engine",
    "onnxruntime_warnings_off",
    "quiet_import",
]

# Lines third-party code prints in normal operation, which say nothing a user can act on: the engine's
# (the device library's list) and the converters'.
NOISE: tuple[re.Pattern[str], ...] = (
    *ENGINE_NOISE,
    re.compile(r"^fully_quantize: \d+, inference_type: \d+, input_inference_type: .*$"),
    re.compile(r"^(WARNING:root:)?Please consider to run pre-processing before quantization\..*$"),
    re.compile(r"^(DEBUG:[\w.]+:)?the float32 number \S+ will be truncated to \S+$"),
    re.compile(r"^.*UserWarning: the float32 number \S+ will be truncated to \S+$"),
    re.compile(r"^\s*warnings\.warn\($"),
    # TensorFlow's start-up banners (absl, printed even with TF_CPP_MIN_LOG_LEVEL=3).
    re.compile(r"^I\d{4} [\d:. ]+\s+\d+ port\.cc:\d+\] oneDNN custom operations are on\..*$"),
    re.compile(r"^WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR$"),
    re.compile(r"^I\d{4} [\d:. ]+\s+\d+ cpu_feature_guard\.cc:\d+\] This TensorFlow binary is optimized .*$"),
    re.compile(r"^To enable the following instructions: .* rebuild TensorFlow with the appropriate compiler"),
    # torch.onnx's exporter: optional torchvision ops it cannot register, and a deprecation inside torch.
    re.compile(r"^.*torchvision is not installed\. Skipping torchvision::\w+$"),
    re.compile(r"^.*FutureWarning: `isinstance\(treespec, LeafSpec\)` is deprecated.*$"),
    re.compile(r"^\s*return cls\.__new__\(cls, \*args\)$"),
    re.compile(r"^.*\|\s*\d+/\d+ \[[^\]]*\]\s*$"),  # a progress bar's frame drawn meanwhile (tqdm)
)
_TRUNCATED = re.compile(r"the float32 number (\S+) will be truncated to (\S+)")


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
        return [line for line in self.visible if not is_noise(line, NOISE)]


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


@contextlib.contextmanager
def onnxruntime_warnings_off() -> Iterator[None]:
    """onnxruntime's own C++ log at ERROR and above for one call (sessions that library code creates).

    `quantize_static` builds sessions edgekit cannot configure, and their graph clean-up warnings (`Removing
    initializer ... It is not used by any node`) are colored lines on the terminal that need no action.
    Errors still reach the log, and failures still raise. onnxruntime has no getter for the level, so it is
    set back to onnxruntime's default (2, warnings) afterwards.
    """
    import onnxruntime as ort

    ort.set_default_logger_severity(3)
    try:
        yield
    finally:
        ort.set_default_logger_severity(2)


@contextlib.contextmanager
def captured(*, loggers: Sequence[str] = (), descriptors: bool = True) -> Iterator[Captured]:
    """Capture fds 1/2, Python's stdout/stderr and log records of one third-party call (see the module doc).

    `loggers`: named loggers whose DEBUG records are collected too (their level is restored afterwards).
    `descriptors`: False leaves fds 1 and 2 alone, for calls whose noise is Python-level only (then a
    progress bar drawn meanwhile on the terminal stays live).
    Unrecognized lines are written back to the original stderr when the block ends, also on an error.
    """
    result = Captured()
    fd_printed = Printed()  # stays empty if the capture cannot start
    with LOCK:
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
                capture_descriptors(NOISE, fds=(1, 2) if descriptors else ()) as fd_printed,
                contextlib.redirect_stdout(buffer),
                contextlib.redirect_stderr(buffer),
            ):
                yield result
        finally:
            root.removeHandler(records)
            for logger, level in zip(named, levels, strict=True):
                logger.removeHandler(records)
                logger.setLevel(level)
            # The descriptors' own capture has written back its unrecognized lines already.
            streams = [line.rstrip() for line in buffer.getvalue().splitlines()]
            result.lines = fd_printed.lines + streams + records.lines
            result.visible = fd_printed.lines + streams + records.visible
            write_back([line for line in streams + records.visible if not is_noise(line, NOISE)])


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


def quiet_import(name: str) -> Any:
    """Import a heavy third-party module (tensorflow, keras, tf2onnx) with its start-up banners captured."""
    import importlib

    if name in sys.modules:
        return sys.modules[name]
    with captured():
        return importlib.import_module(name)
