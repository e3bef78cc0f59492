"""ONNX float32 → float16 that onnxruntime loads on real graphs, with float32 inputs and outputs.

Plain ``onnxconverter_common.float16.convert_float_to_float16(keep_io_types=True)`` breaks published models
in three ways, each handled here:

1. A ``Cast(to=FLOAT)`` feeding a float16 consumer (YOLOv8's ``/model.22/Cast_5`` before ``Range``,
   magika's one-hot ``Cast_1`` before a MatMul): the converter rewrites the output's ``value_info`` to
   float16 but leaves ``to`` at FLOAT, so onnxruntime sees a float16 declaration on a float result and refuses
   the graph.
   onnxruntime's own converter (``onnxruntime.transformers.float16``) rewrites ``to`` as well; after
   conversion :func:`_align_casts` makes every Cast agree with its declared output type anyway.
2. Stale ``value_info`` inside ``If``/``Loop`` bodies (silero_vad's STFT padding): also handled by
   onnxruntime's converter, which walks subgraphs; a node it still gets wrong is blocked by name (below).
3. Weights outside float16's range (PP-OCRv4 det's BatchNorm variance 9.8e7 > 65504): they clamp to the
   largest finite float16 and the output is garbage (SQNR ~0 dB) though the model loads. Nodes reading such an
   initializer or Constant stay float32 (:func:`_out_of_range_nodes`).

Most ops without a float16 CPU kernel load anyway: onnxruntime wraps them in casts itself. The converter's
default op block list (Range, Upsample, TopK, CumSum, Min/Max, NonMaxSuppression, the ai.onnx.ml ops; Resize
added here) keeps the known troublemakers in float32. Whatever still fails to load (e.g. RandomNormal:
NOT_IMPLEMENTED in float16) is parsed from onnxruntime's error, its op type or node added to the block lists,
and the conversion retried, at most ``max_attempts`` times.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from converters._quiet import captured, fp16_clipping_summary
from converters.errors import ModelInputError, QuantizationError, explain, first_line

__all__ = ["FP16_MAX", "Fp16Result", "convert_to_float16"]

FP16_MAX = 65504.0  # the largest finite float16
MAX_ATTEMPTS = 8  # conversions tried before giving up
# Added to onnxruntime's DEFAULT_OP_BLOCK_LIST: onnxconverter-common keeps Resize in float32 for onnxruntime's
# CPU provider too; where a float16 kernel is missing onnxruntime would wrap it in casts at load time anyway.
EXTRA_OP_BLOCK = ("Resize",)

# onnxruntime names the node in its load errors as `node (NAME)` or `node with name 'NAME'`; the last one in a
# message is the innermost (an If reports its failing subgraph node after itself).
_NODE_IN_ERROR = re.compile(r"node \(([^)]*)\)|node with name '([^']*)'", re.IGNORECASE)
_OP_WITHOUT_KERNEL = re.compile(r"implementation for (\w+)\(", re.IGNORECASE)


@dataclass(frozen=True)
class Fp16Result:
    """What :func:`convert_to_float16` wrote and what it kept in float32.

    Attributes:
        path: the float16 model written.
        blocked_ops: op types kept in float32 on top of the converter's default list, with the reason.
        blocked_nodes: node names kept in float32, with the reason (out-of-range weight, load error).
        attempts: conversions tried (1 when the first one loaded).
        default_blocked_ops: op types always kept in float32 (onnxruntime's converter's list and Resize).
    """

    path: Path
    blocked_ops: tuple[tuple[str, str], ...]
    blocked_nodes: tuple[tuple[str, str], ...]
    attempts: int
    default_blocked_ops: tuple[str, ...] = ()
    clipping: str | None = None  # one line on the weights clipped into float16's range, None when none


def _graphs(graph: Any) -> Iterator[Any]:
    """`graph` and every subgraph of an If/Loop/Scan inside it, depth first."""
    yield graph
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.g.ByteSize():
                yield from _graphs(attribute.g)
            for sub in attribute.graphs:
                yield from _graphs(sub)


def _constants_to_initializers(graph: Any, names: set[str]) -> None:
    """Turn the Constant nodes of `graph` that produce `names` into initializers.

    The converter wraps a blocked Constant in Cast(float16) → Cast(float), which clips a value above 65504;
    an initializer read only by blocked nodes it leaves in float32 instead.
    """
    keep = [n for n in graph.node if not (n.op_type == "Constant" and n.output[0] in names)]
    for node in graph.node:
        if node.op_type == "Constant" and node.output[0] in names:
            tensor = next(a.t for a in node.attribute if a.name == "value")
            tensor.name = node.output[0]
            graph.initializer.append(tensor)
    del graph.node[:]
    graph.node.extend(keep)


def _out_of_range_nodes(model: Any) -> dict[str, str]:
    """Nodes (by name) that read float32 weights with finite values float16 cannot represent.

    Edits `model`: such a node gets a name if it has none, and it and its constant operands become
    initializers so that they stay float32 with it (BatchNorm's mean next to a huge variance is large too, and
    `x - mean` in float16 cancels catastrophically).
    """
    import numpy as np
    from onnx import TensorProto, numpy_helper

    blocked: dict[str, str] = {}
    for graph in _graphs(model.graph):
        constants = {n.output[0]: a.t for n in graph.node if n.op_type == "Constant"
                     for a in n.attribute if a.name == "value"}
        tensors = {t.name: t for t in graph.initializer} | constants
        too_big: dict[str, float] = {}
        for name, tensor in tensors.items():
            if tensor.data_type != TensorProto.FLOAT:
                continue
            values = np.abs(numpy_helper.to_array(tensor))
            values = values[np.isfinite(values)]  # float16 has infinities: -inf masks survive as they are
            peak = float(values.max()) if values.size else 0.0
            if peak > FP16_MAX:
                too_big[name] = peak
        moved: set[str] = set()
        for node in graph.node:
            hit = next((name for name in node.input if name in too_big), None)
            if hit is None:
                continue
            node.name = node.name or f"{node.output[0]}_node"
            blocked[node.name] = f"reads {hit!r} with |x| up to {too_big[hit]:.3g} > {FP16_MAX:g}"
            moved |= {name for name in node.input if name in constants}
        _constants_to_initializers(graph, moved)
    return blocked


def _align_casts(model: Any) -> int:
    """Make each Cast's `to` agree with the float16 type declared for its output; returns how many changed."""
    from onnx import TensorProto

    changed = 0
    for graph in _graphs(model.graph):
        declared = {v.name: v.type.tensor_type.elem_type
                    for v in list(graph.value_info) + list(graph.output)}
        for node in graph.node:
            if node.op_type != "Cast" or declared.get(node.output[0]) != TensorProto.FLOAT16:
                continue
            for attribute in node.attribute:
                if attribute.name == "to" and attribute.i == TensorProto.FLOAT:
                    attribute.i = TensorProto.FLOAT16
                    changed += 1
    return changed


def _pack_float16(model: Any) -> None:
    """Store float16 tensors as raw little-endian bytes, not in `int32_data` (one varint per value).

    The converter leaves Constant-node weights in `int32_data`, where a float16 takes 2-3 bytes: PP-OCR cls
    shrank 1.42x instead of ~2x.
    """
    import numpy as np
    from onnx import TensorProto

    def pack(tensor: Any) -> None:
        if tensor.data_type == TensorProto.FLOAT16 and len(tensor.int32_data):
            bits = np.asarray(tensor.int32_data, dtype=np.uint16)
            del tensor.int32_data[:]
            tensor.raw_data = bits.astype("<u2").tobytes()

    for graph in _graphs(model.graph):
        for tensor in graph.initializer:
            pack(tensor)
        for node in graph.node:
            for attribute in node.attribute:
                if attribute.HasField("t"):
                    pack(attribute.t)


def _node_names(model: Any) -> dict[str, str]:
    """Every node name (subgraphs included) → its op type."""
    return {n.name: n.op_type for g in _graphs(model.graph) for n in g.node if n.name}


def _failing_node(message: str, names: dict[str, str]) -> str | None:
    """The model's node that onnxruntime's load error blames, or None when it names none of them.

    onnxruntime renames nodes of inlined If branches (`If_0_then_branch__Inline_0__/stft/Pad`), so a reported
    name that is not a node of the model is matched by the longest node name it ends with.
    """
    found = [a or b for a, b in _NODE_IN_ERROR.findall(message)]
    for reported in reversed(found):
        if reported in names:
            return reported
        suffixes = [name for name in names if reported.endswith(name)]
        if suffixes:
            return max(suffixes, key=len)
    return None


def _load_error(model: Any) -> str | None:
    """onnxruntime's complaint when it cannot load `model` on the CPU, None when it loads."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    try:
        ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own Fail/InvalidGraph/NotImplemented types
        return str(e)
    return None


def _convert(source: Any, op_block: list[str], node_block: list[str]) -> tuple[Any, str | None]:
    """One conversion with onnxruntime's float16 converter, then the Cast alignment and packing; returns
    the model and one line summarizing the converter's per-tensor clipping messages (None when none)."""
    from onnxruntime.transformers import float16

    # The converter reports every tensor whose extremes it clips, one message each (dozens on a real
    # model): captured and summarized in one line.
    with captured(loggers=(float16.__name__,), descriptors=False) as printed:
        model = float16.convert_float_to_float16(
            source, keep_io_types=True, op_block_list=op_block, node_block_list=node_block,
            min_positive_val=5.96e-08, max_finite_val=FP16_MAX)
    _align_casts(model)
    _pack_float16(model)
    return model, fp16_clipping_summary(printed)


def convert_to_float16(model: Path, output: Path, *, max_attempts: int = MAX_ATTEMPTS) -> Fp16Result:
    """Convert an ONNX model to float16 weights and activations, float32 inputs and outputs, loadable on CPU.

    Args:
        model: the float32 ONNX model.
        output: where to write the float16 model (written atomically; nothing else is written).
        max_attempts: conversions to try; each failed load blocks the node onnxruntime names, in float32.

    Returns:
        an :class:`Fp16Result` naming the nodes and op types kept in float32 and why.

    Raises:
        ModelInputError: `model` is not a readable ONNX model.
        QuantizationError: no conversion loaded in onnxruntime within `max_attempts`, or the converter failed.
    """
    import onnx
    from onnxruntime.transformers import float16

    try:
        source = onnx.load(str(model))
    except Exception as e:
        raise ModelInputError(f"{model}: cannot read it as ONNX: {explain(e)}") from e
    blocked_nodes = _out_of_range_nodes(source)  # edits `source` (names, initializers): first
    names = _node_names(source)
    default_block = tuple(sorted(set(float16.DEFAULT_OP_BLOCK_LIST) | set(EXTRA_OP_BLOCK)))
    op_block = list(default_block)
    blocked_ops: dict[str, str] = {}
    error = "no attempt made"
    for attempt in range(1, max_attempts + 1):
        try:
            attempt_source = onnx.ModelProto()
            attempt_source.CopyFrom(source)  # the converter edits its argument in place
            converted, clipping = _convert(attempt_source, op_block + list(blocked_ops), list(blocked_nodes))
        except Exception as e:
            raise QuantizationError(f"{model}: float16 conversion failed: {explain(e)}") from e
        error = _load_error(converted) or ""
        if not error:
            _write_atomically(converted, output)
            return Fp16Result(output, tuple(sorted(blocked_ops.items())),
                              tuple(sorted(blocked_nodes.items())), attempt, default_block, clipping)
        no_kernel = _OP_WITHOUT_KERNEL.search(error)
        culprit = _failing_node(error, names)
        if no_kernel and no_kernel.group(1) not in blocked_ops:
            blocked_ops[no_kernel.group(1)] = "onnxruntime has no CPU kernel for it in float16"
        elif culprit and culprit not in blocked_nodes:
            blocked_nodes[culprit] = f"onnxruntime refused it in float16: {first_line(Exception(error), 160)}"
        else:
            break
    raise QuantizationError(
        f"{model}: the float16 model does not load in onnxruntime after {attempt} attempt(s) "
        f"({len(blocked_nodes)} node(s) kept in float32): {first_line(Exception(error), 200)}; "
        "ship the float32 model or an int8 one (edgekit quantize --mode static / dynamic)")


def _write_atomically(model: Any, output: Path) -> None:
    """Save `model` to a temporary file beside `output`, then rename it over `output` (`signing.atomic`)."""
    import onnx

    from signing.atomic import atomic_output

    with atomic_output(output) as temp:
        onnx.save(model, temp)
