"""SavedModel → TFLite with `tf.lite.TFLiteConverter`: float32, float16, dynamic-range and full int8.

Full int8 quantizes inputs and outputs too (what integer-only accelerators need); the device runtime
quantizes and dequantizes them from the model's own scale and zero point.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from converters._quiet import captured, quiet_import
from converters.errors import ConversionError, QuantizationError, explain

__all__ = ["convert_savedmodel"]


def convert_savedmodel(
    saved_model_dir: Path,
    *,
    precision: str = "float32",
    representative: Callable[[], Iterator[list[Any]]] | None = None,
) -> bytes:
    """Convert a SavedModel's serving signature to a TFLite flatbuffer.

    Args:
        saved_model_dir: the SavedModel.
        precision: `float32`, `float16`, `dynamic` (int8 weights, float activations) or `int8` (full integer).
        representative: for `int8`, a generator of calibration samples (lists of arrays in signature order).

    Raises:
        ConversionError: the converter fails; QuantizationError for a failing int8 conversion.
    """
    tf = quiet_import("tensorflow")

    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved_model_dir))
    if precision == "float16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif precision == "dynamic":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    elif precision == "int8":
        if representative is None:
            raise QuantizationError("full int8 TFLite needs calibration data (--calibration DATA)")
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = representative
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.int8
        converter.inference_output_type = tf.int8
    elif precision != "float32":
        raise ConversionError(
            f"unknown TFLite precision {precision!r}; use float32, float16, dynamic or int8"
        )
    try:
        # The converter prints its settings from C++ (`fully_quantize: 0, inference_type: 6, ...`).
        with captured():
            return bytes(converter.convert())
    except Exception as e:
        error = QuantizationError if precision == "int8" else ConversionError
        text = explain(e)
        raise error(f"the TFLite converter failed ({precision}): {text}") from e
