"""What `Runtime.predict` decides once per loaded model instead of on every call (its hot path).

`PredictPath` is built when a model is loaded. It holds:

- the feed check: a request that is a dict of numpy arrays the spec and the engine would both pass through
  untouched (exact names and dtypes, shapes that fit both, C order) is checked in one loop
  (`engines.feeds_fit`) instead of `prepare_inputs`'s per-input checks; anything else goes through
  `prepare_inputs`, with its conversions and its errors;
- the output reading: a spec whose outputs are classifications and plain tensors reads the top-k of its
  first classification output with `top_k_first` (no per-sample `Prediction` objects); any other spec, and
  any output that is not one sample, goes through `interpret_outputs`.

Both shortcuts give exactly what the general path gives (tests/device_runtime/test_predict_path.py compares
them); they only skip work whose outcome is known from the load. Device code: standard library and numpy.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from device_runtime.engines import FeedCheck, TensorInfo, feed_checks, feeds_fit

__all__ = ["PredictPath", "interpret_outputs"]

Ranked = tuple[list[tuple[str | int, float]], int | None, dict[str, dict[str, Any]]]


def interpret_outputs(spec: Any, labels: list[str] | None, outputs: dict[str, Any]) -> Ranked:
    """What `predict` makes of raw outputs: top-k of the first classification output (or of the first
    ``[1, C]`` output when no role is declared), its top-1 class index, and every other role decoded.
    Shared by `Runtime.predict` and the bundle builder's health reference, so both read outputs alike."""
    from device_runtime.preprocess import postprocess

    top: list[tuple[str | int, float]] = []
    top_index: int | None = None
    decoded: dict[str, dict[str, Any]] = {}
    classified = False
    for output in spec.outputs:
        if output.kind == "classification" and output.name in outputs and not classified:
            classified = True
            first = postprocess(output, outputs[output.name], labels=labels)[0]
            top = [(labels[i] if labels else i, s) for i, s in zip(first.indices, first.scores, strict=True)]
            top_index = int(first.indices[0]) if first.indices else None
        elif output.kind not in ("classification", "tensor") and output.name in outputs:
            named = labels if output.labels is not None else None
            paired = outputs.get(output.scores) if output.scores is not None else None
            sample = postprocess(output, outputs[output.name], labels=named, scores=paired)[0]
            decoded[output.name] = sample.decoded or {}
    if not top and not decoded:
        return _argmax_first(labels, outputs)
    return top, top_index, decoded


def _argmax_first(labels: list[str] | None, outputs: dict[str, Any]) -> Ranked:
    """No role read anything: the top-1 of the first output when it is a ``[B, C]`` batch of scores."""
    first_output = next(iter(outputs.values()))
    shape: tuple[int, ...] = getattr(first_output, "shape", ())
    if len(shape) == 2 and shape[0] >= 1 and shape[1] > 1:
        row = first_output[0]
        index = int(row.argmax())
        return [(labels[index] if labels else index, float(row[index]))], index, {}
    return [], None, {}


def _feed_checks(spec: Any, engine: Any) -> tuple[FeedCheck, ...] | None:
    """The one check a ready request needs, from the spec's and the engine's inputs: the shapes both
    accept (None: no shortcut: image inputs, names, dtypes or static sizes that differ)."""
    from device_runtime.preprocess import TensorInputSpec

    theirs = {info.name: info for info in engine.inputs}
    if len(theirs) != len(engine.inputs) or len(spec.inputs) != len(theirs):
        return None
    merged: list[TensorInfo] = []
    for inp in spec.inputs:
        info = theirs.get(inp.name)
        if not isinstance(inp, TensorInputSpec) or info is None or info.dtype != inp.dtype:
            return None
        if len(inp.shape) != len(info.shape):
            return None
        shape: list[int | None] = []
        for ours, engine_dim in zip(inp.shape, info.shape, strict=True):
            if ours is not None and engine_dim is not None and ours != engine_dim:
                return None
            shape.append(ours if ours is not None else engine_dim)
        merged.append(TensorInfo(inp.name, tuple(shape), inp.dtype))
    return feed_checks(merged)


class PredictPath:
    """A loaded model's feed check and output reading, decided at load (see the module docstring)."""

    __slots__ = (
        "_checks",
        "_classifications",
        "_names",
        "_prepare_inputs",
        "_simple",
        "_top_k_first",
        "labels",
        "spec",
    )

    def __init__(self, spec: Any, engine: Any, labels: list[str] | None) -> None:
        from device_runtime.preprocess import prepare_inputs, top_k_first

        self.spec, self.labels = spec, labels
        self._prepare_inputs, self._top_k_first = prepare_inputs, top_k_first  # no import per call
        self._checks = _feed_checks(spec, engine)
        self._names = tuple(inp.name for inp in spec.inputs)
        self._classifications = tuple(o for o in spec.outputs if o.kind == "classification")
        self._simple = all(o.kind in ("classification", "tensor") for o in spec.outputs)

    def prepare(self, request: Any) -> dict[str, np.ndarray]:
        """The engine's feeds for `request`: a dict of ready arrays as is (in the spec's order), anything
        else through `prepare_inputs`.

        Raises:
            InputError: the request does not fit (from `prepare_inputs`).
        """
        checks = self._checks
        if checks is not None and isinstance(request, dict) and feeds_fit(checks, request):
            return {name: request[name] for name in self._names}
        return self._prepare_inputs(self.spec, request)

    def interpret(self, outputs: dict[str, Any]) -> Ranked:
        """`interpret_outputs(spec, labels, outputs)`, the same result, with less work per call."""
        if self._simple:
            if not self._classifications:  # no role to read: the first [B, C] output's top-1
                return _argmax_first(self.labels, outputs)
            for output in self._classifications:
                if output.name in outputs:
                    ranked = self._top_k_first(output, outputs[output.name], self.labels)
                    if ranked is None or not ranked[0]:
                        break  # a batch, or nothing above the threshold: the general path decides
                    indices, scores = ranked
                    labels = self.labels
                    top = [(labels[i] if labels else i, s) for i, s in zip(indices, scores, strict=True)]
                    return top, indices[0], {}
        return interpret_outputs(self.spec, self.labels, outputs)
