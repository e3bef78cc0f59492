"""Host-side model conversion, int8 quantization and the parity gate.

    convert(source, output)
        Keras / SavedModel / ONNX / scikit-learn -> ONNX or TFLite, fp32 parity proven
    export_torch(module, inputs, path)
        PyTorch -> ONNX (torch.onnx dynamo export), fp32 parity proven
    quantize(model, output, calibration)
        ONNX static/dynamic int8 or fp16; TFLite int8/dynamic/fp16 from Keras/SavedModel;
        the parity gate, accuracy-aware repair and the latency check
    parity.parity_report(reference, candidate, data)
        the one parity contract on any two models

Models run through `device_runtime` engines, so build-time numbers are the device's numbers. Heavy
frameworks (TensorFlow, onnx, torch) are imported inside the functions that need them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from converters.errors import (
    ConversionError,
    ConverterError,
    DataError,
    GateError,
    ModelInputError,
    QuantizationError,
    UnsupportedModelError,
)

if TYPE_CHECKING:  # pragma: no cover
    from converters.export import ExportResult

__all__ = [
    "ConversionError",
    "ConverterError",
    "DataError",
    "GateError",
    "ModelInputError",
    "QuantizationError",
    "UnsupportedModelError",
    "convert",
    "export_torch",
    "quantize",
]


def convert(*args: Any, **kwargs: Any) -> ExportResult:
    """See `converters.export.convert`."""
    from converters.export import convert as _convert

    return _convert(*args, **kwargs)


def export_torch(*args: Any, **kwargs: Any) -> ExportResult:
    """See `converters.torch_export.export_torch`."""
    from converters.torch_export import export_torch as _export_torch

    return _export_torch(*args, **kwargs)


def quantize(*args: Any, **kwargs: Any) -> Any:
    """See `converters.quantize.quantize`."""
    from converters.quantize import quantize as _quantize

    return _quantize(*args, **kwargs)
