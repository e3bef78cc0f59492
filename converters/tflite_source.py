"""TFLite → ONNX with tf2onnx's TFLite front end, so a model from a mobile SDK can take the int8 ladder.

A `.tflite` file from an SDK (MediaPipe and the like) has no Keras or SavedModel source to re-quantize
from; its ONNX twin does have the whole ONNX strategy ladder and the accuracy-aware repair. The route:

1. check the file is a TFLite flatbuffer (identifier ``TFL3``) that LiteRT loads, else a one-line
   `ModelInputError` (truncated files, other files with a ``.tflite`` suffix);
2. convert with ``tf2onnx.convert.from_tflite``; inputs keep the TFLite layout (NHWC stays NHWC, so a
   preprocessing spec written for the TFLite model still fits) and the batch stays as the model has it;
3. lower MediaPipe's custom ``Convolution2DTransposeBias`` (a transposed convolution with bias, its
   padding and strides in the op's custom options) to ONNX ``ConvTranspose``; refuse a graph in which
   tf2onnx left any other op it could not convert (it does not raise: it keeps the TFLite op, which no
   ONNX runtime can run);
4. rename the ONNX inputs and outputs to the names the device's LiteRT engine reports (signature names
   when the model has exactly one signature, tensor names otherwise), so specs and labels still fit.

Parity against LiteRT is proven by `converters.export`, which owns the gate.
"""

from __future__ import annotations

import logging
import re
import warnings
from pathlib import Path
from typing import Any

from converters._quiet import captured, load_engine, quiet_import
from converters.errors import ConversionError, ModelInputError, UnsupportedModelError, explain
from device_runtime.engines import Engine
from device_runtime.errors import EngineError

__all__ = ["TFLITE_IDENTIFIER", "check_tflite_file", "tflite_to_onnx"]

TFLITE_IDENTIFIER = b"TFL3"  # flatbuffer file identifier, bytes 4..8 of every TFLite model
_TF2ONNX_LOGGERS = ("tf2onnx", "tensorflow")


def check_tflite_file(source: Path) -> Engine:
    """Load `source` in LiteRT after checking it is a TFLite flatbuffer.

    Returns:
        the LiteRT engine (the parity reference).

    Raises:
        ModelInputError: not a TFLite file, or one LiteRT cannot load (truncated, corrupt).
        UnsupportedModelError: the model needs a custom op LiteRT lacks.
    """
    with source.open("rb") as f:
        head = f.read(8)
    if len(head) < 8 or head[4:8] != TFLITE_IDENTIFIER:
        found = head[4:8] if len(head) >= 8 else f"{len(head)} bytes in all".encode()
        raise ModelInputError(
            f"{source}: not a TFLite model (file identifier {found!r}, expected {TFLITE_IDENTIFIER!r}); "
            "give a .tflite flatbuffer, or a file with its own suffix (.onnx, .keras, ...)"
        )
    try:
        return load_engine(source, kind="litert")
    except EngineError as e:
        custom = re.search(r"unresolved custom op: (\w+)", str(e))
        if custom:
            raise UnsupportedModelError(
                f"{source}: uses the custom op {custom.group(1)}, which LiteRT does not have (the SDK that "
                "made the model registers it), so neither a conversion nor a bundle can run it here"
            ) from e
        raise ModelInputError(
            f"{source}: LiteRT cannot load this TFLite model ({explain(e)}); the file is truncated "
            "or corrupt: copy it again from its source"
        ) from e


def tflite_to_onnx(source: Path, output: Path, reference: Engine, *, opset: int) -> list[str]:
    """Write the ONNX conversion of TFLite model `source` to `output`, named as `reference` names tensors.

    Args:
        source: the `.tflite` file (checked by `check_tflite_file`).
        output: where the ONNX model goes (the caller's temporary file).
        reference: the LiteRT engine of `source`; its input/output names are kept.
        opset: the ONNX opset.

    Returns:
        notes for the export result (e.g. input layouts kept).

    Raises:
        UnsupportedModelError: tf2onnx left TFLite ops it cannot convert (named in the message).
        ConversionError: tf2onnx fails, or the graph's inputs/outputs do not match the TFLite model's.
    """
    import onnx

    tf2onnx = quiet_import("tf2onnx")
    quiet = [(logging.getLogger(n), logging.getLogger(n).level) for n in _TF2ONNX_LOGGERS]
    for logger, _ in quiet:
        logger.setLevel(logging.CRITICAL)  # tf2onnx logs unsupported ops; we report them ourselves
    try:
        # tf2onnx runs tf.lite.Interpreter, which warns it is deprecated and prints the XNNPACK banner.
        with warnings.catch_warnings(), captured():
            warnings.simplefilter("ignore")
            model, _ = tf2onnx.convert.from_tflite(str(source), opset=opset)
    except Exception as e:
        raise ConversionError(f"tf2onnx cannot convert {source.name}: {explain(e)}") from e
    finally:
        for logger, level in quiet:
            logger.setLevel(level)
    _lower_transpose_conv_bias(model, source)
    unconverted = _unconverted_ops(model)
    if unconverted:
        ops = ", ".join(unconverted)
        raise UnsupportedModelError(
            f"{source}: tf2onnx cannot convert the TFLite custom op{'s' if len(unconverted) > 1 else ''} "
            f"{ops} to ONNX; the model can still be bundled as it is with `edgekit bundle` "
            "(int8 quantization needs the ONNX route)"
        )
    _rename_io(model, source, reference)
    onnx.save(model, str(output))
    return [f"{i.name}: layout kept as in the TFLite model {list(i.shape)}" for i in reference.inputs]


def _lower_transpose_conv_bias(model: Any, source: Path) -> None:
    """Replace each ``TFL_Convolution2DTransposeBias`` node with Transpose → ConvTranspose → Transpose.

    MediaPipe's custom options are a raw ``TfLiteTransposeConvParams`` (int32 padding, stride_width,
    stride_height; padding 1 = SAME, 2 = VALID); the weights are ``[out, kh, kw, in]`` as in TFLite's
    TRANSPOSE_CONV and the op works on NHWC tensors. Pads come from the TFLite output shape, split as
    TensorFlow splits SAME padding (the extra pixel at the end).
    """
    import numpy as np
    from onnx import helper, numpy_helper

    nodes = [n for n in model.graph.node if n.op_type == "TFL_Convolution2DTransposeBias"]
    if not nodes:
        return
    ops = _custom_ops(source, "Convolution2DTransposeBias")
    initializers = {t.name: t for t in model.graph.initializer}
    for node in nodes:
        found = ops.get(node.output[0])
        if found is None or len(node.input) != 3 or node.input[1] not in initializers:
            return  # left in the graph: refused by name below
        options, in_shape, out_shape = found
        if len(options) != 12 or len(in_shape) != 4 or len(out_shape) != 4:
            return
        padding, stride_w, stride_h = (int(v) for v in np.frombuffer(options, dtype="<i4"))
        weights = numpy_helper.to_array(initializers[node.input[1]])  # [out, kh, kw, in]
        kh, kw = int(weights.shape[1]), int(weights.shape[2])
        pads = []
        for size, out, stride, kernel in (
            (in_shape[1], out_shape[1], stride_h, kh),
            (in_shape[2], out_shape[2], stride_w, kw),
        ):
            total = (int(size) - 1) * stride + kernel - int(out)
            if total < 0 or (padding == 2 and total != 0):
                return
            pads.append((total // 2, total - total // 2))
        name = node.name or node.output[0]
        weight = numpy_helper.from_array(
            np.ascontiguousarray(weights.transpose(3, 0, 1, 2)), f"{name}__weights_iohw"
        )
        model.graph.initializer.append(weight)
        lowered = [
            helper.make_node("Transpose", [node.input[0]], [f"{name}__nchw"], perm=[0, 3, 1, 2]),
            helper.make_node(
                "ConvTranspose",
                [f"{name}__nchw", weight.name, node.input[2]],
                [f"{name}__conv"],
                kernel_shape=[kh, kw],
                strides=[stride_h, stride_w],
                pads=[pads[0][0], pads[1][0], pads[0][1], pads[1][1]],
            ),
            helper.make_node("Transpose", [f"{name}__conv"], [node.output[0]], perm=[0, 2, 3, 1]),
        ]
        position = list(model.graph.node).index(node)
        model.graph.node.remove(node)
        for offset, new in enumerate(lowered):
            model.graph.node.insert(position + offset, new)


def _custom_ops(source: Path, code: str) -> dict[str, tuple[bytes, list[int], list[int]]]:
    """Custom ops named `code` in subgraph 0: output tensor name → (custom options, in, out shape)."""
    from tf2onnx.tflite import Model

    model = Model.Model.GetRootAsModel(source.read_bytes(), 0)
    graph = model.Subgraphs(0)
    found = {}
    for i in range(graph.OperatorsLength()):
        op = graph.Operators(i)
        if model.OperatorCodes(op.OpcodeIndex()).CustomCode() != code.encode():
            continue
        output, first = graph.Tensors(op.Outputs(0)), graph.Tensors(op.Inputs(0))
        options = bytes(op.CustomOptionsAsNumpy()) if op.CustomOptionsLength() else b""
        shapes = first.ShapeAsNumpy().tolist(), output.ShapeAsNumpy().tolist()
        found[output.Name().decode()] = (options, *shapes)
    return found


def _unconverted_ops(model: Any) -> list[str]:
    """TFLite ops tf2onnx kept as they were: op types ONNX does not define (``TFL_X`` → ``X``)."""
    import onnx

    left = set()
    for node in model.graph.node:
        known = node.domain not in ("", "ai.onnx") or onnx.defs.has(node.op_type)
        if not known:
            left.add(node.op_type.removeprefix("TFL_"))
    return sorted(left)


def _rename_io(model: Any, source: Path, reference: Engine) -> None:
    """Give graph inputs/outputs the names LiteRT reports for them (positions follow the subgraph)."""
    raw_in, raw_out = _raw_names(source)
    engine_in = {_index_of(source, i.name, raw_in): i.name for i in reference.inputs}
    engine_out = {_index_of(source, o.name, raw_out): o.name for o in reference.outputs}
    initializers = {t.name for t in model.graph.initializer}
    graph_in = [i for i in model.graph.input if i.name not in initializers]
    graph_out = list(model.graph.output)
    if len(graph_in) != len(raw_in) or len(graph_out) != len(raw_out):
        raise ConversionError(
            f"tf2onnx gave {source.name} {len(graph_in)} inputs and {len(graph_out)} outputs, the TFLite "
            f"model has {len(raw_in)} and {len(raw_out)}; report this model to the edgekit maintainers"
        )
    renames: dict[str, str] = {}
    for values, raw, named in ((graph_in, raw_in, engine_in), (graph_out, raw_out, engine_out)):
        by_name = {v.name: v for v in values}
        for position, tensor in enumerate(raw):
            value = by_name.get(tensor, values[position])  # tf2onnx keeps tensor names; else by position
            target = named.get(position, tensor)
            if value.name != target:
                renames[value.name] = target
    for old, new in renames.items():
        _rename_tensor(model.graph, old, new)


def _raw_names(source: Path) -> tuple[list[str], list[str]]:
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(source))
    return (
        [d["name"] for d in interpreter.get_input_details()],
        [d["name"] for d in interpreter.get_output_details()],
    )


def _index_of(source: Path, name: str, raw: list[str]) -> int:
    """Position of an engine tensor among the subgraph's tensors (signature names map through indices)."""
    if name in raw:
        return raw.index(name)
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(source))
    runner = interpreter.get_signature_runner(next(iter(interpreter.get_signature_list())))
    details = {**runner.get_input_details(), **runner.get_output_details()}
    index = details[name]["index"]
    order = [d["index"] for d in (*interpreter.get_input_details(), *interpreter.get_output_details())]
    inputs = len(interpreter.get_input_details())
    position = order.index(index)
    return position if position < inputs else position - inputs


def _rename_tensor(graph: Any, old: str, new: str) -> None:
    for value in (*graph.input, *graph.output, *graph.value_info):
        if value.name == old:
            value.name = new
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name == old:
                node.input[i] = new
        for i, name in enumerate(node.output):
            if name == old:
                node.output[i] = new
