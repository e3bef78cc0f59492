"""A model's input signature: which axis of each tensor is the batch, and which outputs feed back as state.

Everything that feeds data to a model (calibration, parity, latency, golden vectors) needs to know where
the samples are. Axis 0 is the usual answer but not the only one: a recurrent model may take its state as
`[layers, batch, hidden]` (batch on axis 1), a sample-rate input may be a 0-d scalar with no batch at all,
and a model exported with a fixed batch of 1 cannot take more than one sample per run.

Rules when the axis is not declared (first that applies):

1. a 0-d input has no batch axis (it is one constant for every sample);
2. the model names its dynamic dimensions (ONNX `dim_param`): the name at axis 0 of the inputs, when
   another tensor shares it, is the batch name, and an input's batch axis is where that name sits;
3. axis 0 when it is dynamic or 1 (a fixed batch of one);
4. the only dynamic axis, when there is exactly one (silero's `state [2, ?, 128]` → axis 1);
5. otherwise no batch axis (a fully static tensor such as a fixed-size state is fed whole).

A declared axis (`Signature.batch_axes`, the CLI's `--batch-axis NAME=AXIS|none`) wins over the rules.
`Signature.states` names stateful pairs (`--state OUTPUT=INPUT`): the output of one step is the input of
the next, and the data then holds sequences (see `converters.data`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field

from converters.errors import DataError
from device_runtime.engines import TensorInfo

__all__ = [
    "Signature",
    "batch_symbol",
    "describe",
    "infer_batch_axis",
    "resolve_batch_axes",
    "sample_shape",
    "with_hints",
]


@dataclass(frozen=True)
class Signature:
    """What the user declared about the model's inputs; everything else is inferred from the graph.

    `batch_axes`: input name → its batch axis, or None for an input without one (fed the same every run).
    `states`: output name → the input it feeds at the next step of a sequence.
    """

    batch_axes: Mapping[str, int | None] = field(default_factory=dict)
    states: Mapping[str, str] = field(default_factory=dict)


def with_hints(error: Exception, hints: Mapping[str, str]) -> Exception:
    """Attach CLI hints to an error: option → sentence; the CLI prints those its command has."""
    error.option_hints = dict(hints)  # type: ignore[attr-defined]
    return error


def batch_symbol(inputs: tuple[TensorInfo, ...], outputs: tuple[TensorInfo, ...] = ()) -> str | None:
    """The symbolic batch dimension name: the most common name at axis 0 of the inputs, if shared."""
    first = Counter(i.dim_names[0] for i in inputs if i.dim_names and i.dim_names[0])
    if not first:
        return None
    name, _ = first.most_common(1)[0]
    holders = sum(name in t.dim_names for t in (*inputs, *outputs))
    return name if holders >= 2 or len(inputs) == 1 else None


def infer_batch_axis(info: TensorInfo, symbol: str | None = None) -> int | None:
    """The batch axis of one tensor by the module's rules (None: no batch axis)."""
    shape = info.shape
    if not shape:
        return None
    if symbol is not None and info.dim_names and info.dim_names.count(symbol) == 1:
        return info.dim_names.index(symbol)
    if shape[0] is None or shape[0] == 1:
        return 0
    dynamic = [axis for axis, d in enumerate(shape) if d is None]
    if len(dynamic) == 1:
        return dynamic[0]
    if dynamic:
        return dynamic[0]
    return None


def resolve_batch_axes(
    inputs: tuple[TensorInfo, ...],
    outputs: tuple[TensorInfo, ...] = (),
    signature: Signature | None = None,
) -> dict[str, int | None]:
    """The batch axis of every input: declared ones checked, the rest inferred.

    Raises:
        DataError: a declared name is not a model input or output, or an axis is out of range.
    """
    signature = signature or Signature()
    by_name = {i.name: i for i in inputs}
    unknown = sorted(set(signature.batch_axes) - set(by_name))
    if unknown:
        raise DataError(f"--batch-axis names {unknown}, but the model inputs are {sorted(by_name)}")
    output_names = {o.name for o in outputs}
    for output, target in signature.states.items():
        if output_names and output not in output_names:
            raise DataError(
                f"--state {output}={target}: {output!r} is not a model output; the outputs are "
                f"{sorted(output_names)}"
            )
        if target not in by_name:
            raise DataError(
                f"--state {output}={target}: {target!r} is not a model input; "
                f"the inputs are {sorted(by_name)}"
            )
    symbol = batch_symbol(inputs, outputs)
    axes: dict[str, int | None] = {}
    for info in inputs:
        if info.name in signature.batch_axes:
            axis = signature.batch_axes[info.name]
            if axis is not None and not 0 <= axis < len(info.shape):
                raise DataError(
                    f"--batch-axis {info.name}={axis}: the input has {len(info.shape)} dimensions "
                    f"{info.shape}; give an axis in 0..{len(info.shape) - 1} or 'none'"
                )
            axes[info.name] = axis
        else:
            axes[info.name] = infer_batch_axis(info, symbol)
    return axes


def sample_shape(info: TensorInfo, axis: int | None) -> tuple[int | None, ...]:
    """The shape of one sample: the tensor's shape without its batch axis."""
    if axis is None:
        return info.shape
    return info.shape[:axis] + info.shape[axis + 1 :]


def describe(info: TensorInfo, axis: int | None, lead: str = "N") -> str:
    """A shape for messages, the batch axis shown as `lead` and dynamic dims as '?'."""
    dims = ["?" if d is None else str(d) for d in info.shape]
    if axis is not None:
        dims[axis] = lead
    return "(" + ", ".join(dims) + ("," if len(dims) == 1 else "") + ")"
