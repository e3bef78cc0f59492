"""ONNX models built in code for the quantization tests: each has one known way to break int8."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _save(nodes: list, initializers: dict[str, np.ndarray], inputs: list, outputs: list, path: Path) -> Path:
    import onnx
    from onnx import helper, numpy_helper

    graph = helper.make_graph(
        nodes, "test", inputs, outputs, [numpy_helper.from_array(v, k) for k, v in initializers.items()]
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def fragile_inputs(count: int, *, width: int = 32, seed: int = 0) -> np.ndarray:
    """Inputs for `fragile_mlp`: ten well-separated positive clusters (so top-1 is a stable decision)."""
    rng = np.random.default_rng(seed)
    centers = np.random.default_rng(99).uniform(0.0, 1.0, (10, width))
    labels = rng.integers(0, 10, count)
    return (centers[labels] + 0.05 * rng.standard_normal((count, width))).clip(0).astype(np.float32)


def fragile_mlp(path: Path, *, layers: int = 24, width: int = 32, fragile_layer: int = 11) -> Path:
    """A deep, near-identity MLP classifier whose layer `fragile_layer` emits one channel 1000x larger.

    The next layer scales that channel back down, so the float model is ordinary; but an int8 tensor
    whose range is set by the outlier channel flattens every other channel to a few levels.
    """
    from onnx import TensorProto, helper

    rng = np.random.default_rng(7)
    nodes, inits = [], {}
    current = "x"
    for i in range(layers):
        w = (np.eye(width) + 0.05 * rng.standard_normal((width, width))).astype(np.float32)
        b = (0.01 * rng.standard_normal(width)).astype(np.float32)
        if i == fragile_layer:
            w[:, 0] *= 1000.0
            b[0] *= 1000.0
        if i == fragile_layer + 1:
            w[0, :] /= 1000.0
        inits[f"w{i}"], inits[f"b{i}"] = w, b
        nodes.append(helper.make_node("Gemm", [current, f"w{i}", f"b{i}"], [f"g{i}"], name=f"gemm_{i}"))
        current = f"g{i}"
        if i != fragile_layer:  # the outlier tensor feeds the next Gemm directly
            nodes.append(helper.make_node("Relu", [current], [f"r{i}"], name=f"relu_{i}"))
            current = f"r{i}"
    inits["head"] = np.random.default_rng(99).uniform(0.0, 1.0, (10, width)).T.astype(np.float32)
    inits["head_b"] = np.zeros(10, np.float32)
    nodes.append(helper.make_node("Gemm", [current, "head", "head_b"], ["logits"], name="head"))
    return _save(
        nodes,
        inits,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", width])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])],
        path,
    )


def depthwise_model(path: Path, *, channels: int = 8) -> Path:
    """Depthwise conv whose channel weights span 1000x, then a head that weighs every channel equally.

    Per-tensor weight scales round the small channels' weights to zero; per-channel scales keep them.
    """
    from onnx import TensorProto, helper

    rng = np.random.default_rng(3)
    scales = np.logspace(-3, 0, channels).astype(np.float32)
    dw = (rng.standard_normal((channels, 1, 3, 3)) * scales[:, None, None, None]).astype(np.float32)
    head = (rng.standard_normal((channels, 10)) / scales[:, None]).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["x", "dw"], ["c"], group=channels, pads=[1, 1, 1, 1], name="depthwise"),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("GlobalAveragePool", ["r"], ["p"], name="pool"),
        helper.make_node("Flatten", ["p"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "head", "head_b"], ["logits"], name="head"),
    ]
    return _save(
        nodes,
        {"dw": dw, "head": head, "head_b": np.zeros(10, np.float32)},
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", channels, 12, 12])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])],
        path,
    )
