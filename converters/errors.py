"""Typed errors of the converter chain.

::

    ConverterError
    ├── ModelInputError     the model file is missing, not a model, truncated, or of an unknown kind
    ├── UnsupportedModelError  the model uses an op or feature no route can handle
    ├── DataError           calibration / evaluation data or labels do not fit the model
    ├── ConversionError     an export failed or did not reproduce the source framework's outputs
    ├── QuantizationError   every quantization configuration failed
    ├── GateError           the parity gate refused the candidate (carries the report)
    └── TargetError         the target device (e.g. the emulated arm64 root) could not run a model

Every message names the file or tensor, what was observed, what was expected and how to fix it.
"""

from __future__ import annotations

import re
from typing import Any

__all__ = [
    "ConversionError",
    "ConverterError",
    "DataError",
    "GateError",
    "ModelInputError",
    "QuantizationError",
    "TargetError",
    "UnsupportedModelError",
    "explain",
    "first_line",
]


class ConverterError(Exception):
    """Base class of every error the converters raise on purpose."""


class ModelInputError(ConverterError):
    """The model file is missing, not a model, truncated, or of a kind no route reads."""


class UnsupportedModelError(ConverterError):
    """The model uses an operator or feature that no conversion route handles."""


class DataError(ConverterError):
    """Calibration or evaluation data, or labels, do not fit the model."""


class ConversionError(ConverterError):
    """An export failed, or the exported model does not reproduce the source framework."""


class QuantizationError(ConverterError):
    """Every quantization configuration that was tried failed; `report`, when set, lists what was tried."""

    def __init__(self, message: str, report: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.report = report


class GateError(ConverterError):
    """The parity gate refused a candidate model; `report` holds the full parity report."""

    def __init__(self, message: str, report: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.report = report


class TargetError(ConverterError):
    """The target device (e.g. the emulated arm64 root) is unavailable or failed to run a model."""


def first_line(error: BaseException, limit: int = 300) -> str:
    """The first line of an exception's message, bounded: third-party errors can be pages of C++."""
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0][:limit]


# Lines of third-party errors that carry no explanation: C++ stack frames, Python traceback frames.
_NOISE = re.compile(r"^(\s*(#\d+|0x[0-9a-f]+|at |File \"|Traceback|Stacktrace:?$)|\s*$)", re.IGNORECASE)


def explain(error: BaseException, limit: int = 600) -> str:
    """An exception's message with the lines that explain it (node names, indices), bounded in length.

    onnxruntime puts the offending node and tensor names after the first line or deep in one long line
    (`INVALID_GRAPH ... In Node, ("ConvAddFusion_Add_B_Reshape@0_DequantizeLinear", ...)`), so the first
    line alone loses them, and the reason comes last. Stack frames are dropped, the remaining lines are
    joined with " | ", and a text longer than `limit` keeps its beginning and its end around an ellipsis.
    """
    text = str(error).strip() or type(error).__name__
    lines = [" ".join(line.split()) for line in text.splitlines() if not _NOISE.match(line)]
    joined = " | ".join(dict.fromkeys(line for line in lines if line)) or type(error).__name__
    if len(joined) <= limit:
        return joined
    # onnxruntime names the node first and gives the reason last (`..., Error Unrecognized attribute:
    # axis for operator DequantizeLinear`): keep both ends.
    tail = max(limit * 2 // 5, 1)
    return joined[: limit - tail - 3].rstrip() + " … " + joined[-tail:].lstrip()
