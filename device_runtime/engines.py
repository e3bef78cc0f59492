"""Inference engines behind one small interface: onnxruntime and ai_edge_litert.

The device and the build host run models through this module, so a number measured at build time (golden
vectors, parity) is produced by the same code path the device uses. Engines import lazily: importing this
module loads neither onnxruntime nor LiteRT.

Quantized TFLite inputs and outputs are handled from the model's own scale and zero point: float inputs are
quantized on the way in and integer outputs are dequantized on the way out, so callers always see floats.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from device_runtime.errors import EngineError, InputError

__all__ = ["Engine", "FeedCheck", "TensorInfo", "engine_for_path", "feed_checks", "feeds_fit", "load_engine"]

_ONNX_DTYPES = {
    "tensor(float)": "float32",
    "tensor(float16)": "float16",
    "tensor(double)": "float64",
    "tensor(int8)": "int8",
    "tensor(uint8)": "uint8",
    "tensor(int32)": "int32",
    "tensor(int64)": "int64",
    "tensor(bool)": "bool",
    "tensor(string)": "str",
}


@dataclass(frozen=True)
class TensorInfo:
    """Name, shape (None for a dynamic dimension), dtype and optional quantization of a model tensor.

    `dim_names` holds the symbolic name of each dynamic dimension when the model names it (ONNX
    `dim_param`, e.g. "batch"), None elsewhere; empty when the engine does not report names. Shared names
    tell which axis of each tensor is the batch.
    """

    name: str
    shape: tuple[int | None, ...]
    dtype: str
    scale: float | None = None
    zero_point: int | None = None
    dim_names: tuple[str | None, ...] = ()


class Engine(Protocol):
    """What every engine offers: tensor descriptions and one `run` call."""

    kind: str
    inputs: tuple[TensorInfo, ...]
    outputs: tuple[TensorInfo, ...]

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one batch; returns every output by name (float32 for quantized outputs)."""
        ...


def engine_for_path(path: str | Path) -> str:
    """Name the engine for a model file by its suffix: `onnxruntime` or `litert`."""
    suffix = Path(path).suffix.lower()
    if suffix == ".onnx":
        return "onnxruntime"
    if suffix == ".tflite":
        return "litert"
    raise EngineError(f"{path}: unknown model type {suffix!r}; expected a .onnx or .tflite file")


def load_engine(model: str | Path | bytes, *, kind: str | None = None, threads: int | None = None) -> Engine:
    """Load a model into its engine.

    Args:
        model: a model file, or the model's bytes (the device loads exactly the bytes it verified).
        kind: `onnxruntime` or `litert`; derived from the file suffix when omitted.
        threads: intra-op threads (None: the engine's default).

    Raises:
        EngineError: the engine is not installed or refuses the model.
    """
    if kind is None:
        if isinstance(model, bytes):
            raise EngineError("loading a model from bytes needs kind='onnxruntime' or kind='litert'")
        kind = engine_for_path(model)
    if kind == "onnxruntime":
        return _OnnxEngine(model, threads)
    if kind == "litert":
        return _LiteRTEngine(model, threads)
    raise EngineError(f"unknown engine {kind!r}; expected 'onnxruntime' or 'litert'")


def _describe(model: str | Path | bytes) -> str:
    return f"model ({len(model)} bytes)" if isinstance(model, bytes) else str(model)


def _check_feed(info: TensorInfo, array: np.ndarray) -> None:
    if array.ndim != len(info.shape):
        raise InputError(
            f"input {info.name!r}: got {array.ndim} dimensions {tuple(array.shape)}, "
            f"the model expects {len(info.shape)} {info.shape}"
        )
    for axis, (got, want) in enumerate(zip(array.shape, info.shape, strict=True)):
        if want is not None and got != want:
            raise InputError(
                f"input {info.name!r}: dimension {axis} is {got}, the model expects {want} "
                f"(full shape {info.shape}, got {tuple(array.shape)})"
            )


class _OnnxEngine:
    kind = "onnxruntime"

    def __init__(self, model: str | Path | bytes, threads: int | None) -> None:
        try:
            import onnxruntime as ort
        except ImportError as e:  # pragma: no cover - depends on the install
            raise EngineError("onnxruntime is not installed: pip install 'edgekit[onnx]'") from e
        options = ort.SessionOptions()
        options.log_severity_level = 3
        if threads is not None:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        source = model if isinstance(model, bytes) else str(model)
        try:
            self._session = ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
        except Exception as e:
            raise EngineError(f"onnxruntime cannot load {_describe(model)}: {_first_line(e)}") from e
        self.inputs = tuple(_onnx_info(i) for i in self._session.get_inputs())
        self.outputs = tuple(_onnx_info(o) for o in self._session.get_outputs())
        self._output_names = [o.name for o in self.outputs]
        self._checks = feed_checks(self.inputs)
        # `InferenceSession.run` is a Python wrapper that re-checks the feeds' names and OrtValues on every
        # call, then calls the compiled session with the same three arguments. Feeds reach it here checked
        # against `inputs` (numpy arrays only, CPU provider only: the wrapper's OrtValue, graph-capture and
        # provider-fallback steps have nothing to do), so `run` calls the compiled session directly, about
        # 10 us less per call on a 2.8 GHz Xeon; the public method when an onnxruntime build has none.
        compiled = getattr(self._session, "_sess", None)
        run = getattr(compiled, "run", None)
        self._run = run if callable(run) else self._session.run

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self._checks is None or not feeds_fit(self._checks, feeds):
            feeds = _prepare_feeds(self.inputs, feeds)
        try:
            values = self._run(self._output_names, feeds, None)
        except Exception as e:
            raise EngineError(f"onnxruntime failed to run the model: {_first_line(e)}") from e
        return dict(zip(self._output_names, values, strict=True))


def _onnx_info(node: Any) -> TensorInfo:
    shape = tuple(d if isinstance(d, int) else None for d in node.shape)
    names = tuple(d if isinstance(d, str) and d else None for d in node.shape)
    return TensorInfo(
        name=node.name,
        shape=shape,
        dtype=_ONNX_DTYPES.get(node.type, node.type),
        dim_names=names if any(names) else (),
    )


@functools.lru_cache(maxsize=64)
def _numpy_dtype(name: str) -> np.dtype[Any]:
    return np.dtype(name)


def _fits(info: TensorInfo, array: object) -> bool:
    """Already the right name, dtype, rank, static dims and layout: nothing to convert."""
    if (
        not isinstance(array, np.ndarray)
        or array.dtype != _numpy_dtype(info.dtype)
        or not array.flags.c_contiguous
    ):
        return False
    shape = array.shape
    if len(shape) != len(info.shape):
        return False
    # Same length checked above, so strict=False cannot hide a mismatch.
    pairs = enumerate(zip(shape, info.shape, strict=False))
    return all(want is None or got == want for _, (got, want) in pairs)


# One input's check on the hot path: name, dtype, shape (None: any size), and that shape without its first
# axis when only the first axis is dynamic (the usual batch axis: one tuple comparison), else None.
FeedCheck = tuple[str, np.dtype[Any], tuple[int | None, ...], tuple[int, ...] | None]


def feed_checks(inputs: Iterable[TensorInfo]) -> tuple[FeedCheck, ...] | None:
    """The checks `feeds_fit` runs for these inputs, made once (None: a dtype numpy does not name)."""
    checks = []
    for info in inputs:
        try:
            dtype = np.dtype(info.dtype)
        except TypeError:
            return None
        tail = tuple(d for d in info.shape[1:] if d is not None)
        batch_only = len(info.shape) >= 1 and info.shape[0] is None and len(tail) == len(info.shape) - 1
        checks.append((info.name, dtype, info.shape, tail if batch_only else None))
    return tuple(checks)


def feeds_fit(checks: tuple[FeedCheck, ...], feeds: Mapping[str, object]) -> bool:
    """Exactly the checked names, each a C-ordered numpy array of its dtype and a shape that fits: what
    goes to the engine untouched (the hot path of every predict)."""
    if len(feeds) != len(checks):
        return False
    for name, dtype, shape, tail in checks:
        value = feeds.get(name)
        if not isinstance(value, np.ndarray) or value.dtype != dtype or not value.flags.c_contiguous:
            return False
        got = value.shape
        if tail is not None:
            if len(got) != len(shape) or got[1:] != tail:
                return False
        elif got != shape and not (
            len(got) == len(shape) and all(w is None or g == w for g, w in zip(got, shape, strict=True))
        ):
            return False
    return True


def _prepare_feeds(inputs: tuple[TensorInfo, ...], feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    # Feeds that already fit go through untouched (`feeds_fit`: the same test, faster, on the hot path).
    if len(feeds) == len(inputs) and all(_fits(info, feeds.get(info.name)) for info in inputs):
        return feeds
    expected = {i.name for i in inputs}
    missing = sorted(expected - set(feeds))
    extra = sorted(set(feeds) - expected)
    if missing or extra:
        raise InputError(f"model inputs are {sorted(expected)}; missing {missing}, unexpected {extra}")
    prepared: dict[str, np.ndarray] = {}
    for info in inputs:
        array = np.asarray(feeds[info.name])
        _check_feed(info, array)
        if array.dtype != np.dtype(info.dtype):
            if not np.can_cast(array.dtype, info.dtype, casting="same_kind"):
                raise InputError(
                    f"input {info.name!r}: dtype {array.dtype} cannot be fed to a {info.dtype} input"
                )
            array = array.astype(info.dtype)
        prepared[info.name] = np.require(array, requirements="C")  # ascontiguousarray makes 0-d 1-d
    return prepared


class _LiteRTEngine:
    kind = "litert"

    def __init__(self, model: str | Path | bytes, threads: int | None) -> None:
        try:
            from ai_edge_litert.interpreter import Interpreter
        except ImportError as e:  # pragma: no cover - depends on the install
            raise EngineError("ai-edge-litert is not installed: pip install 'edgekit[tflite]'") from e
        from device_runtime._quiet_fd import descriptors

        try:
            # The first allocation in a process prints the XNNPACK delegate's banner from C++ to fd 2:
            # captured and dropped; anything else LiteRT prints meanwhile is written back.
            with descriptors():
                if isinstance(model, bytes):
                    self._interpreter = Interpreter(model_content=model, num_threads=threads)
                else:
                    self._interpreter = Interpreter(model_path=str(model), num_threads=threads)
                self._interpreter.allocate_tensors()
        except Exception as e:
            raise EngineError(f"LiteRT cannot load {_describe(model)}: {_first_line(e)}") from e
        self._input_details, self._output_details = _litert_details(self._interpreter)
        self.inputs = tuple(_litert_info(d) for d in self._input_details)
        self.outputs = tuple(_litert_info(d) for d in self._output_details)
        # What callers feed: float32 for quantized inputs (quantized here from the model's scale).
        self._fed = tuple(TensorInfo(i.name, i.shape, "float32" if i.scale else i.dtype) for i in self.inputs)
        self._checks = feed_checks(self._fed)
        self._batch = 1

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        fits = self._checks is not None and feeds_fit(self._checks, feeds)
        prepared = feeds if fits else _prepare_feeds(self._fed, feeds)
        # The first input with an axis 0 gives the batch (a 0-d input, e.g. a sample rate, has none).
        batch = next((int(a.shape[0]) for a in prepared.values() if a.ndim > 0), 1)
        try:
            if batch != self._batch:
                for detail in self._input_details:
                    shape = list(detail["shape"])
                    if not shape:
                        continue
                    shape[0] = batch
                    self._interpreter.resize_tensor_input(detail["index"], shape)
                self._interpreter.allocate_tensors()
                self._batch = batch
            for detail, info in zip(self._input_details, self.inputs, strict=True):
                self._interpreter.set_tensor(detail["index"], _quantize(prepared[info.name], info))
            self._interpreter.invoke()
            return {
                info.name: _dequantize(self._interpreter.get_tensor(detail["index"]), info)
                for detail, info in zip(self._output_details, self.outputs, strict=True)
            }
        except InputError:
            raise
        except Exception as e:
            raise EngineError(f"LiteRT failed to run the model: {_first_line(e)}") from e


def _litert_details(interpreter: Any) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Tensor details named by the model's signature when it has exactly one.

    Converters name signature inputs and outputs after the source model ('image', 'logits'), while the raw
    tensor names are internal ('serving_default_image:0'); a single signature runs on subgraph 0, so its
    tensor indices address the interpreter's own tensors.
    """
    inputs = interpreter.get_input_details()
    outputs = interpreter.get_output_details()
    signatures = interpreter.get_signature_list()
    if len(signatures) != 1:
        return inputs, outputs
    runner = interpreter.get_signature_runner(next(iter(signatures)))
    by_index_in = {d["index"]: d for d in inputs}
    by_index_out = {d["index"]: d for d in outputs}
    named_in = [
        {**by_index_in[d["index"]], "name": n}
        for n, d in runner.get_input_details().items()
        if d["index"] in by_index_in
    ]
    named_out = [
        {**by_index_out[d["index"]], "name": n}
        for n, d in runner.get_output_details().items()
        if d["index"] in by_index_out
    ]
    if len(named_in) != len(inputs) or len(named_out) != len(outputs):
        return inputs, outputs
    return named_in, named_out


def _litert_info(detail: dict[str, Any]) -> TensorInfo:
    signature = detail.get("shape_signature")
    dims = signature if signature is not None and len(signature) else detail["shape"]
    shape = tuple(None if int(d) < 0 or (axis == 0) else int(d) for axis, d in enumerate(dims))
    scale, zero_point = detail.get("quantization", (0.0, 0))
    dtype = np.dtype(detail["dtype"]).name
    if scale and dtype in ("int8", "uint8", "int16"):
        return TensorInfo(detail["name"], shape, dtype, float(scale), int(zero_point))
    return TensorInfo(detail["name"], shape, dtype)


def _quantize(array: np.ndarray, info: TensorInfo) -> np.ndarray:
    if info.scale is None or info.zero_point is None:
        return array.astype(info.dtype, copy=False)
    limits = np.iinfo(np.dtype(info.dtype))
    q = np.round(array.astype(np.float32) / info.scale) + info.zero_point
    return np.clip(q, limits.min, limits.max).astype(info.dtype)


def _dequantize(array: np.ndarray, info: TensorInfo) -> np.ndarray:
    if info.scale is None or info.zero_point is None:
        return np.array(array)
    return ((array.astype(np.float32) - info.zero_point) * info.scale).astype(np.float32)


def _first_line(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0][:400]
