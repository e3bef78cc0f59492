"""Reading and validating ONNX models: the checker, shape inference and a load in onnxruntime.

Every failure becomes one line that names the file and the fix, instead of a protobuf or C++ traceback.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from converters.errors import ModelInputError, UnsupportedModelError, explain

__all__ = ["check_onnx_file", "load_onnx", "onnx_opset"]

_UNKNOWN_OP = re.compile(r"No Op registered for (\S+) with domain_version of (\d+)")  # onnxruntime's words
_NO_KERNEL = re.compile(r"Could not find an implementation for (\S+)")
_IR_VERSION = re.compile(r"Unsupported model IR version: (\d+), max supported IR version: (\d+)")


def load_onnx(path: str | Path) -> Any:
    """Load and check an ONNX model, with shape inference; return the ModelProto.

    Raises:
        ModelInputError: missing, empty, truncated or not an ONNX protobuf.
        UnsupportedModelError: the graph uses an operator unknown to ONNX.
    """
    import onnx

    path = Path(path)
    if not path.is_file():
        raise ModelInputError(f"{path}: no such model file")
    if path.stat().st_size == 0:
        raise ModelInputError(f"{path}: the file is empty; re-export the model")
    try:
        model = onnx.load(str(path), load_external_data=True)
    except Exception as e:
        raise ModelInputError(
            f"{path}: not a readable ONNX model ({explain(e)}); the file is truncated or not ONNX — "
            "re-export it"
        ) from e
    if not model.graph.node and not model.graph.output:
        raise ModelInputError(f"{path}: parsed as ONNX but holds no graph; the file is not an ONNX model")
    try:
        onnx.checker.check_model(model, full_check=False)
        model = onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=False)
    except Exception as e:
        # Classified from the graph, not from the checker's words: an operator ONNX does not define at the
        # imported opset makes the model unsupported; anything else makes it invalid.
        undefined = _undefined_operator(model)
        if undefined is not None:
            op_type, opset = undefined
            raise UnsupportedModelError(
                f"{path}: operator {op_type} is not defined in ONNX opset {opset}; "
                "export with a supported operator or a newer opset"
            ) from e
        raise ModelInputError(f"{path}: the ONNX checker rejects the model: {explain(e)}") from e
    return model


def _undefined_operator(model: Any) -> tuple[str, int] | None:
    """The first operator (subgraphs included) of an ONNX domain that ONNX does not define at the opset the
    model imports, as (op_type, opset); operators of other domains (com.microsoft, custom) are not judged."""
    import onnx

    opsets = {("" if e.domain == "ai.onnx" else e.domain): int(e.version) for e in model.opset_import}
    graphs = [model.graph]
    while graphs:
        graph = graphs.pop()
        for node in graph.node:
            domain = "" if node.domain == "ai.onnx" else node.domain
            opset = opsets.get(domain, 0)
            if domain in ("", "ai.onnx.ml") and not onnx.defs.has(node.op_type, opset, domain):
                return node.op_type, opset
            for attribute in node.attribute:
                graphs.extend([attribute.g] if attribute.HasField("g") else [])
                graphs.extend(attribute.graphs)
    return None


def check_onnx_file(path: str | Path) -> None:
    """Check the model with ONNX and load it in onnxruntime (which rejects ops it has no kernel for).

    Raises:
        ModelInputError, UnsupportedModelError: as `load_onnx`, plus ops onnxruntime cannot run.
    """
    load_onnx(path)
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    try:
        ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as e:
        # One error type whatever onnxruntime says (it raises a generic `Fail`): its words are read only to
        # name the IR version or the operator in the message, never to choose the error.
        ir = _IR_VERSION.search(str(e))
        if ir:
            raise UnsupportedModelError(
                f"{path}: ONNX IR version {ir.group(1)} is newer than this onnxruntime supports "
                f"(at most {ir.group(2)}); save the model with ir_version <= {ir.group(2)}"
            ) from e
        match = _NO_KERNEL.search(str(e)) or _UNKNOWN_OP.search(str(e))
        if match:
            raise UnsupportedModelError(
                f"{path}: onnxruntime has no kernel for {match.group(1)}; replace the operator or "
                "export with a different opset"
            ) from e
        raise UnsupportedModelError(f"{path}: onnxruntime cannot load the model: {explain(e)}") from e


def onnx_opset(model: Any) -> int:
    """The default-domain opset the model imports."""
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return int(entry.version)
    return 0
