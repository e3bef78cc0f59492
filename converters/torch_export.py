"""PyTorch → ONNX through `torch.onnx.export(..., dynamo=True)`, with fp32 parity proven against torch.

torch is optional: install `edgekit[torch]` (torch==2.13.0, the CPU wheel). The batch axis is exported as
dynamic (`dynamic_shapes`, the dynamo exporter's spelling; `dynamic_axes` is the legacy one).
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from converters._files import atomic_output
from converters._quiet import captured, load_engine
from converters.errors import ConversionError, ModelInputError, explain
from converters.export import ExportResult, prove_parity, sample_inputs
from converters.onnx_model import check_onnx_file
from converters.parity import EXPORT_GATE

__all__ = ["export_torch"]


def export_torch(
    module: Any,
    example_inputs: Sequence[Any],
    path: str | Path,
    *,
    input_names: Sequence[str] | None = None,
    output_names: Sequence[str] | None = None,
    opset: int = 18,
    dynamic_batch: bool = True,
) -> ExportResult:
    """Export a `torch.nn.Module` to ONNX at `path` and prove parity with torch on sample inputs.

    Args:
        module: the model (put in eval mode here).
        example_inputs: one tensor per model input, with a batch axis first.
        path: destination `.onnx`, written only if parity holds.
        input_names: ONNX input names (default `input_0...`).
        output_names: ONNX output names (default `output_0...`).
        opset: ONNX opset (the dynamo exporter needs 18 or newer).
        dynamic_batch: make axis 0 dynamic.

    Raises:
        ModelInputError: torch missing or bad arguments; ConversionError: export or parity failed.
    """
    try:
        import torch
    except ImportError as e:
        raise ModelInputError("PyTorch export needs torch: pip install 'edgekit[torch]'") from e
    path = Path(path)
    if path.suffix.lower() != ".onnx":
        raise ModelInputError(f"{path}: PyTorch models export to .onnx")
    if not isinstance(module, torch.nn.Module):
        raise ModelInputError(f"expected a torch.nn.Module, got {type(module).__name__}")
    examples = tuple(example_inputs)
    if not examples or not all(isinstance(t, torch.Tensor) for t in examples):
        raise ModelInputError("example_inputs must be a non-empty sequence of torch tensors")
    names = list(input_names or [f"input_{i}" for i in range(len(examples))])
    module = module.eval()
    with torch.no_grad():
        first = module(*examples)
    outputs = list(first) if isinstance(first, list | tuple) else [first]
    out_names = list(output_names or [f"output_{i}" for i in range(len(outputs))])
    dynamic = None
    if dynamic_batch:
        batch = torch.export.Dim("batch", min=1, max=65536)
        dynamic = tuple({0: batch} for _ in examples)
    with tempfile.TemporaryDirectory(prefix="edgekit-torch-") as tmp, atomic_output(path) as out:
        staging = Path(tmp) / "model.onnx"
        try:
            with captured():  # the exporter logs optional ops it skips and warns about torch internals
                torch.onnx.export(
                    module,
                    examples,
                    str(staging),
                    dynamo=True,
                    opset_version=opset,
                    input_names=names,
                    output_names=out_names,
                    dynamic_shapes=dynamic,
                    external_data=False,
                    verbose=False,
                )
        except Exception as e:
            text = explain(e)
            raise ConversionError(f"torch.onnx.export failed: {text}") from e
        check_onnx_file(staging)
        out.write_bytes(staging.read_bytes())
        engine = load_engine(out)
        feeds = sample_inputs(engine.inputs)
        with torch.no_grad():
            produced = module(*(torch.from_numpy(feeds[n]) for n in names))
        produced_list = list(produced) if isinstance(produced, list | tuple) else [produced]
        reference = {n: np.asarray(t.detach().numpy()) for n, t in zip(out_names, produced_list, strict=True)}
        parity = prove_parity(reference, out, feeds, EXPORT_GATE)
    return ExportResult(path, f"torch->onnx (dynamo, opset {opset})", parity)
