"""Where does int8 hurt? Per-tensor SQNR of float vs QDQ activations, and a ranking of nodes by damage.

The QDQ model keeps every float tensor name of the model it was made from (QuantizeLinear and
DequantizeLinear are inserted beside them), so both models can expose the same intermediate tensors as
outputs. A node's damage is how much SQNR it loses between its worst input and its output: the error that
quantizing this node adds, rather than the error it inherits. SQNR is taken per channel and averaged, so
one outlier channel that dominates a tensor's energy cannot hide the destruction of all the others.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from converters._quiet import load_engine
from converters.data import Dataset
from converters.parity import IDENTICAL_SQNR_DB

__all__ = [
    "NodeDamage",
    "activation_outliers",
    "as_report_rows",
    "ensure_node_names",
    "exclusion_units",
    "int8_node_count",
    "localize",
    "quantized_nodes",
]

_QDQ_OPS = {"QuantizeLinear", "DequantizeLinear"}
# Operators that compute in integers themselves (dynamic int8 and QOperator models).
_INTEGER_OPS = {
    "ConvInteger",
    "MatMulInteger",
    "DynamicQuantizeMatMul",
    "DynamicQuantizeLSTM",
    "QLinearConv",
    "QLinearMatMul",
    "QGemm",
    "QAttention",
}
_DQ_SUFFIX = "_DequantizeLinear_Output"


@dataclass(frozen=True)
class NodeDamage:
    """One quantized node: its output SQNR and the SQNR it loses relative to its inputs."""

    node: str
    op_type: str
    tensor: str
    sqnr_db: float  # whole-tensor SQNR of the output
    channel_sqnr_db: float  # mean over channels of per-channel SQNR (sees outlier channels)
    damage_db: float  # channel SQNR lost between the node's worst input and its output
    order: int  # position in the graph (topological), for stable ties and plots
    consumers: tuple[str, ...] = ()  # quantized nodes reading this node's output


def _channel_axis(array: np.ndarray) -> int:
    # ONNX convolutions are NCHW; everything else keeps features last.
    return 1 if array.ndim == 4 else array.ndim - 1


def _channel_sums(array: np.ndarray) -> np.ndarray:
    array = np.atleast_1d(array)  # a 0-d activation (a scalar in the graph) is one channel
    axis = _channel_axis(array)
    other = tuple(a for a in range(array.ndim) if a != axis)
    return np.sum(array * array, axis=other) if other else array * array


def ensure_node_names(model_path: Path) -> None:
    """Give every unnamed node a stable name (`nodes_to_exclude` addresses nodes by name)."""
    import onnx

    model = onnx.load(str(model_path))
    used = {n.name for n in model.graph.node if n.name}
    changed = False
    for index, node in enumerate(model.graph.node):
        if not node.name:
            name = f"{node.op_type}_{index}"
            while name in used:
                name += "_"
            node.name = name
            used.add(name)
            changed = True
    if changed:
        onnx.save(model, str(model_path))


def quantized_nodes(qdq_model_path: Path) -> list[str]:
    """Names of the compute nodes that consume at least one DequantizeLinear output (the int8 nodes)."""
    import onnx

    model = onnx.load(str(qdq_model_path), load_external_data=False)
    dequantized = {o for n in model.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    return [
        n.name
        for n in model.graph.node
        if n.op_type not in _QDQ_OPS and any(i in dequantized for i in n.input)
    ]


def int8_node_count(model_path: Path) -> int:
    """How many compute nodes run in int8: QDQ-fed nodes plus integer operators (dynamic int8).

    Nodes inside control-flow subgraphs (If / Loop / Scan bodies, e.g. silero's) count too.
    """
    import onnx

    model = onnx.load(str(model_path), load_external_data=False)
    nodes: list[Any] = []

    def walk(graph: Any) -> None:
        for node in graph.node:
            nodes.append(node)
            for attribute in node.attribute:
                if attribute.type == onnx.AttributeProto.GRAPH:
                    walk(attribute.g)
                elif attribute.type == onnx.AttributeProto.GRAPHS:
                    for subgraph in attribute.graphs:
                        walk(subgraph)

    walk(model.graph)
    dequantized = {o for n in nodes if n.op_type == "DequantizeLinear" for o in n.output}
    fed = sum(1 for n in nodes if n.op_type not in _QDQ_OPS and any(i in dequantized for i in n.input))
    return fed + sum(1 for n in nodes if n.op_type in _INTEGER_OPS)


def activation_outliers(
    float_model: Path, data: Dataset, workdir: Path, *, max_samples: int = 4, ratio: float = 8.0
) -> list[tuple[str, float]]:
    """Float activations whose maximum is far beyond their bulk: max |x| / 99.9th percentile of |x|.

    At a ratio of 8, MinMax leaves the bulk of the values fewer than 32 of int8's 256 levels (magika's GELU
    outputs measure about 17x and lose 3 points of agreement to it).

    MinMax calibration spends the int8 range on such outliers; percentile or entropy calibration clips
    them. Returns (tensor, ratio) for tensors above `ratio`, worst first, from up to `max_samples` samples.
    """
    import onnx

    proto = onnx.load(str(float_model))
    names = [o for n in proto.graph.node for o in n.output if o]
    probe = workdir / "probe_outliers.onnx"
    exposed = _with_outputs(proto, {t: t for t in names}, probe)
    engine = load_engine(probe)
    found: dict[str, float] = {}
    taken = 0
    for feeds in data.batches(1):  # one sample at a time: every activation of the model is exposed
        outputs = engine.run(feeds)
        for name in exposed:
            values = np.abs(np.asarray(outputs[name], dtype=np.float64)).ravel()
            if values.size < 1000:  # too few values for a 99.9th percentile
                continue
            bulk = float(np.quantile(values, 0.999))
            peak = float(values.max())
            if bulk > 0 and peak / bulk > ratio:
                found[name] = max(found.get(name, 0.0), peak / bulk)
        taken += next(iter(feeds.values())).shape[0]
        if taken >= max_samples:
            break
    return sorted(found.items(), key=lambda item: -item[1])


def _produced(model: Any) -> set[str]:
    return {o for n in model.graph.node for o in n.output} | {i.name for i in model.graph.input}


def _with_outputs(model: Any, tensors: dict[str, str], destination: Path) -> set[str]:
    """Save a copy of `model` exposing the mapped tensors as outputs; return the keys that were exposed.

    `tensors` maps a float tensor name to the name of the tensor to expose in this model.
    """
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model)
    types = {
        v.name: v.type for v in [*inferred.graph.value_info, *inferred.graph.output, *inferred.graph.input]
    }
    existing = {o.name for o in model.graph.output}
    produced = _produced(model)
    exposed = set()
    for key, name in tensors.items():
        if name in existing:
            exposed.add(key)
        elif (
            name in produced and name in types and types[name].tensor_type.elem_type == onnx.TensorProto.FLOAT
        ):
            value = onnx.ValueInfoProto()
            value.name = name
            value.type.CopyFrom(types[name])
            model.graph.output.append(value)
            existing.add(name)
            exposed.add(key)
    onnx.save(model, str(destination))
    return exposed


def localize(
    float_model: Path, qdq_model: Path, data: Dataset, workdir: Path, *, max_samples: int = 32
) -> list[NodeDamage]:
    """Rank the QDQ model's quantized nodes by the SQNR they lose, worst first.

    A float tensor T is compared with what consumers see in the QDQ model: `T_DequantizeLinear_Output`
    where T is quantized, else T itself (the QDQ quantizer folds Relu into the quantization of the
    producer's output, so a raw producer output there is not yet clipped). Runs both models on up to
    `max_samples` samples; sums of squares are accumulated batch by batch, so large activations never
    sit in memory together.
    """
    import onnx

    float_proto = onnx.load(str(float_model))
    qdq_proto = onnx.load(str(qdq_model))
    targets = set(quantized_nodes(qdq_model))
    float_activations = _produced(float_proto)
    qdq_produced = _produced(qdq_proto)
    # Walk the QDQ graph: its quantized nodes read `T_DequantizeLinear_Output` for a float tensor T and
    # write tensors whose names the float graph also has (after Relu folding, the Relu's output name).
    nodes: list[tuple[int, Any, list[str], list[str]]] = []
    mapping: dict[str, str] = {}
    for order, node in enumerate(qdq_proto.graph.node):
        if node.name not in targets:
            continue
        inputs = []
        for tensor in node.input:
            float_name = tensor.removesuffix(_DQ_SUFFIX)
            if float_name in float_activations:
                mapping[float_name] = tensor
                inputs.append(float_name)
        outputs = []
        for tensor in node.output:
            if tensor in float_activations:
                dequantized = tensor + _DQ_SUFFIX
                mapping[tensor] = dequantized if dequantized in qdq_produced else tensor
                outputs.append(tensor)
        nodes.append((order, node, inputs, outputs))
    float_probe, qdq_probe = workdir / "probe_float.onnx", workdir / "probe_qdq.onnx"
    exposed = _with_outputs(float_proto, {t: t for t in mapping}, float_probe) & _with_outputs(
        qdq_proto, mapping, qdq_probe
    )
    reference, candidate = load_engine(float_probe), load_engine(qdq_probe)
    signal: dict[str, np.ndarray] = {}
    noise: dict[str, np.ndarray] = {}
    taken = 0
    for feeds in data.batches(8):
        if taken >= max_samples:
            break
        x_out, y_out = reference.run(feeds), candidate.run(feeds)
        for name in exposed:
            x = x_out[name].astype(np.float64)
            error = x - y_out[mapping[name]].astype(np.float64)
            signal[name] = signal.get(name, 0.0) + _channel_sums(x)
            noise[name] = noise.get(name, 0.0) + _channel_sums(error)
        taken += next(iter(feeds.values())).shape[0]
    sqnr = {name: _sqnr(float(np.sum(signal[name])), float(np.sum(noise[name]))) for name in signal}
    channel_sqnr = {
        name: float(
            np.mean([_sqnr(float(s), float(n)) for s, n in zip(signal[name], noise[name], strict=True)])
        )
        for name in signal
    }
    consumers: dict[str, list[str]] = {}
    for _, node, node_inputs, _ in nodes:
        for tensor in node_inputs:
            consumers.setdefault(tensor, []).append(node.name)
    ranked = []
    for order, node, node_inputs, node_outputs in nodes:
        outputs = [t for t in node_outputs if t in sqnr]
        if not outputs:
            continue
        out_channel = min(channel_sqnr[t] for t in outputs)
        in_channel = min((channel_sqnr[t] for t in node_inputs if t in sqnr), default=IDENTICAL_SQNR_DB)
        readers = tuple(dict.fromkeys(c for t in outputs for c in consumers.get(t, [])))
        ranked.append(
            NodeDamage(
                node.name,
                node.op_type,
                outputs[0],
                min(sqnr[t] for t in outputs),
                out_channel,
                in_channel - out_channel,
                order,
                readers,
            )
        )
    ranked.sort(key=lambda d: (-d.damage_db, d.order))
    return ranked


def _sqnr(signal: float, noise: float) -> float:
    if noise == 0.0:
        return IDENTICAL_SQNR_DB
    if signal == 0.0 or not math.isfinite(noise):
        return -IDENTICAL_SQNR_DB
    return min(IDENTICAL_SQNR_DB, 10.0 * math.log10(signal / noise))


def as_report_rows(ranking: list[NodeDamage]) -> list[dict[str, Any]]:
    """Per-tensor SQNR rows for the parity report, in graph order."""
    return [
        {
            "tensor": d.tensor,
            "node": d.node,
            "op_type": d.op_type,
            "sqnr_db": d.sqnr_db,
            "channel_sqnr_db": d.channel_sqnr_db,
            "damage_db": d.damage_db,
        }
        for d in sorted(ranking, key=lambda d: d.order)
    ]


def exclusion_units(ranking: list[NodeDamage]) -> list[list[str]]:
    """Per ranked node, the nodes to keep in float so that its output stays float too.

    A tensor is quantized when either its producer or a consumer is, so keeping a damaging node's output in
    float means excluding the node and the quantized nodes that read its output.
    """
    return [[d.node, *d.consumers] for d in ranking]
