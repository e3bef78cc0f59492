"""onnxruntime quantization calls: presets, calibration, and the fall-backs this stack needs.

Facts behind the choices: on x86 with VNNI, QDQ with uint8 activations and int8
per-channel weights is the fast configuration; on ARM, symmetric int8 for both. `Distribution`
calibration gives garbage for int8 and is refused. `quant_pre_process` needs sympy and its symbolic shape
inference fails on some models (retried without it). `quantize_static` itself can raise on real models:
the failure is recorded and the next configuration is tried.
"""

from __future__ import annotations

import platform
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from converters._quiet import captured, onnxruntime_warnings_off
from converters.data import Dataset
from converters.errors import QuantizationError, explain
from converters.progress import NullProgress, Progress

__all__ = [
    "CALIBRATION_METHODS",
    "PRESETS",
    "StaticConfig",
    "check_calibration_method",
    "cpu_has_vnni",
    "lift_constants",
    "preprocess_for_quantization",
    "quantize_dynamic_onnx",
    "quantize_fp16_onnx",
    "quantize_static_onnx",
    "resolve_preset",
    "saturation_note",
    "upgrade_opset",
]

CALIBRATION_METHODS = ("minmax", "entropy", "percentile")


@dataclass(frozen=True)
class StaticConfig:
    """One static int8 configuration for `quantize_static`."""

    name: str
    activation_type: str  # "uint8" | "int8"
    weight_type: str  # "int8" | "uint8"
    per_channel: bool
    symmetric_activations: bool
    reduce_range: bool = False
    calibration: str = "minmax"


PRESETS: dict[str, StaticConfig] = {
    "x86": StaticConfig("x86", "uint8", "int8", per_channel=True, symmetric_activations=False),
    # 7-bit weights: no u8s8 saturation on CPUs without VNNI, at some cost in SQNR and speed.
    "x86-reduce-range": StaticConfig(
        "x86-reduce-range", "uint8", "int8", per_channel=True, symmetric_activations=False, reduce_range=True
    ),
    "arm": StaticConfig("arm", "int8", "int8", per_channel=True, symmetric_activations=True),
}


def resolve_preset(preset: str) -> StaticConfig:
    """`auto` picks by this host's CPU (the models are usually benchmarked where they are built).

    On x86 without VNNI, u8s8 kernels saturate (digits CNN: 40 -> 18.8 dB; MobileNetV2: 12.8 dB) while
    7-bit weights keep 30-34 dB at the same or better speed (bench/README.md), so auto takes reduce-range.
    """
    if preset == "auto":
        machine = platform.machine().lower()
        if machine.startswith(("arm", "aarch64")):
            preset = "arm"
        else:
            preset = "x86-reduce-range" if cpu_has_vnni() is False else "x86"
    if preset not in PRESETS:
        raise QuantizationError(f"unknown preset {preset!r}; use auto, {', '.join(PRESETS)}")
    return PRESETS[preset]


def cpu_has_vnni() -> bool | None:
    """Whether this x86 CPU has VNNI (None when unknown, e.g. not Linux or not x86)."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as handle:
            flags = next((line for line in handle if line.startswith("flags")), "")
    except OSError:
        return None
    if not flags:
        return None
    words = set(flags.split())
    return bool(words & {"avx512_vnni", "avx_vnni", "amx_int8"})


def saturation_note(config: StaticConfig) -> str | None:
    """Warn when u8s8 runs on an x86 CPU without VNNI, where int16 accumulation can saturate."""
    u8s8 = config.activation_type == "uint8" and config.weight_type == "int8" and not config.reduce_range
    on_x86 = platform.machine().lower() in ("x86_64", "amd64")
    if u8s8 and on_x86 and cpu_has_vnni() is False:
        return (
            "this CPU has no VNNI: u8s8 int8 kernels can saturate (measured: SQNR 40 -> 18 dB on the "
            "digits CNN); the gate catches it and the repair keeps saturating layers in float. "
            "--preset auto (x86-reduce-range here) avoids it"
        )
    return None


# quant_pre_process runs in a child process whose working directory is inside edgekit's workdir:
# onnxruntime's symbolic shape inference saves `sym_shape_infer_temp.onnx` and a `<uuid>.data` file into
# the *current* directory when it fails, and no option moves them.
_PREPROCESS_SCRIPT = """
import json, sys
from onnxruntime.quantization.shape_inference import quant_pre_process
args = json.loads(sys.argv[1])
quant_pre_process(args["source"], args["destination"], skip_optimization=args["skip_optimization"],
                  skip_symbolic_shape=args["skip_symbolic_shape"])
"""


def _run_pre_process(source: Path, destination: Path, *, optimize: bool, symbolic: bool, cwd: Path) -> None:
    """One `quant_pre_process` call in a child process run from `cwd`; raises QuantizationError."""
    import json
    import subprocess
    import sys

    cwd.mkdir(parents=True, exist_ok=True)
    args = {
        "source": str(source.resolve()),
        "destination": str(destination.resolve()),
        "skip_optimization": not optimize,
        "skip_symbolic_shape": not symbolic,
    }
    done = subprocess.run(
        [sys.executable, "-c", _PREPROCESS_SCRIPT, json.dumps(args)],
        cwd=cwd,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        tail = done.stderr.strip().splitlines()[-12:]
        if any("sympy is required" in line for line in tail):
            raise ImportError("sympy")
        raise QuantizationError(explain(RuntimeError("\n".join(tail) or f"exit {done.returncode}")))


def preprocess_for_quantization(
    source: Path, destination: Path, progress: Progress, *, optimize: bool = True, workdir: Path | None = None
) -> Path:
    """Run onnxruntime's `quant_pre_process` (shape inference, and graph fusions when `optimize`).

    `optimize=False` skips onnxruntime's graph optimisation: on Paddle exports its Conv+Add / Conv+BN
    fusions produce a bias that no longer loads once quantized. Every file onnxruntime writes lands under
    `workdir` (default: beside `destination`), never in the current directory. Falls back to running
    without symbolic shape inference, then to the model as exported.

    Returns the model to quantize: `destination` on success, `source` if pre-processing is impossible.
    """
    scratch = (workdir or destination.parent) / f"ort-cwd-{destination.stem}"
    for symbolic in (True, False):
        try:
            _run_pre_process(source, destination, optimize=optimize, symbolic=symbolic, cwd=scratch)
            if not symbolic:
                progress.note(
                    "onnxruntime's symbolic shape inference failed on this graph; pre-processed with ONNX's "
                    "own shape inference instead (usually harmless)"
                )
            return destination
        except ImportError as e:
            raise QuantizationError(
                "onnxruntime's quantization tools need sympy: "
                "pip install 'onnxruntime[quantization,symbolic]'"
            ) from e
        except QuantizationError:
            continue
    progress.note("quant_pre_process failed twice; quantizing the model as exported")
    return source


def lift_constants(model_path: Path) -> int:
    """Turn `Constant` nodes holding a tensor into initializers, in place; return how many were lifted.

    Paddle exports keep every weight in a Constant node and have no initializers at all. The quantizers
    only treat initializers as weights: otherwise a convolution's weights are calibrated like an
    activation (asymmetric, one scale per tensor, per-channel silently ignored) and dynamic quantization
    refuses the model (`Expected conv2d_157.w_0 to be an initializer`). The graph is unchanged otherwise.
    """
    import onnx

    model = onnx.load(str(model_path))
    graph = model.graph
    kept, lifted = [], 0
    for node in graph.node:
        value = next((a for a in node.attribute if a.name == "value"), None)
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx") and value is not None:
            tensor = onnx.TensorProto()
            tensor.CopyFrom(value.t)
            tensor.name = node.output[0]
            graph.initializer.append(tensor)
            lifted += 1
        else:
            kept.append(node)
    if lifted:
        del graph.node[:]
        graph.node.extend(kept)
        onnx.save(model, str(model_path))
    return lifted


PER_CHANNEL_MIN_OPSET = 13  # DequantizeLinear's `axis` attribute, which per-channel weights need


def upgrade_opset(model_path: Path, target: int = PER_CHANNEL_MIN_OPSET) -> int | None:
    """Convert the model to `target` opset in place when it is older; return the old opset if converted.

    Per-channel QDQ writes `DequantizeLinear(axis=...)`, an attribute that exists from opset 13: on an
    opset-11 export (Paddle's) the quantized model fails to load with `Unrecognized attribute: axis`.
    Leaves the file untouched when onnx's version converter cannot convert it.
    """
    import onnx
    from onnx import version_converter

    model = onnx.load(str(model_path))
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    if opset is None or opset >= target:
        return None
    try:
        converted = version_converter.convert_version(model, target)
        onnx.checker.check_model(converted)
    except Exception:
        return None
    onnx.save(converted, str(model_path))
    return opset


class _Reader:
    """CalibrationDataReader over a Dataset, one sample per call, with progress."""

    def __init__(self, data: Dataset, progress: Progress) -> None:
        self._data = data
        self._progress = progress
        self._iterator: Iterator[dict[str, Any]] | None = None
        self._task: Any = None

    def get_next(self) -> dict[str, Any] | None:
        if self._iterator is None:
            self._iterator = self._data.samples()
            self._task = self._progress.task("calibrating", self._data.size)
        sample = next(self._iterator, None)
        if sample is None:
            self._task.close()
            return None
        self._task.advance()
        return sample

    def rewind(self) -> None:
        self._iterator = None


def _qtype(name: str) -> Any:
    from onnxruntime.quantization import QuantType

    return {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}[name]


def check_calibration_method(name: str) -> None:
    """Refuse calibration methods that cannot make a usable int8 model (before any work is done)."""
    if name == "distribution":
        raise QuantizationError(
            "calibration method 'distribution' produces garbage int8 models (SQNR about -1.6 dB on a CNN); "
            "use minmax, entropy or percentile"
        )
    if name not in CALIBRATION_METHODS:
        raise QuantizationError(f"unknown calibration method {name!r}; use {', '.join(CALIBRATION_METHODS)}")


def _method(name: str) -> Any:
    from onnxruntime.quantization import CalibrationMethod

    check_calibration_method(name)
    methods = {
        "minmax": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
    }
    return methods[name]


def quantize_static_onnx(
    model: Path,
    output: Path,
    data: Dataset,
    config: StaticConfig,
    *,
    exclude: tuple[str, ...] = (),
    op_types: tuple[str, ...] | None = None,
    progress: Progress | None = None,
) -> StaticConfig:
    """Static QDQ int8 quantization; on a crash, retry with per-tensor weights. Returns the config used.

    Raises:
        QuantizationError: every configuration failed (the message lists each failure).
    """
    from onnxruntime.quantization import QuantFormat, quantize_static

    progress = progress or NullProgress()
    method = _method(config.calibration)
    attempts = [config]
    if config.per_channel:
        attempts.append(replace(config, name=f"{config.name}/per-tensor", per_channel=False))
    failures = []
    for attempt in attempts:
        reader = _Reader(data, progress)
        try:
            # onnxruntime's histogram calibrators print to stdout, which would corrupt `--json` output, and
            # it logs a pre-processing advice on the root logger (edgekit runs quant_pre_process itself).
            with captured(descriptors=False), onnxruntime_warnings_off():
                quantize_static(
                    str(model),
                    str(output),
                    reader,
                    quant_format=QuantFormat.QDQ,
                    activation_type=_qtype(attempt.activation_type),
                    weight_type=_qtype(attempt.weight_type),
                    per_channel=attempt.per_channel,
                    reduce_range=attempt.reduce_range,  # costs ~9 dB SQNR on VNNI CPUs
                    calibrate_method=method,
                    nodes_to_exclude=list(exclude),
                    op_types_to_quantize=list(op_types) if op_types else None,
                    extra_options={
                        "ActivationSymmetric": attempt.symmetric_activations,
                        "WeightSymmetric": True,
                    },
                )
            if attempt is not config:
                progress.note(f"quantize_static failed with {config.name}; used {attempt.name} instead")
            return attempt
        except QuantizationError:
            raise
        except Exception as e:
            text = explain(e)
            failures.append(f"{attempt.name}: {type(e).__name__}: {text}")
    raise QuantizationError(
        "onnxruntime's quantize_static failed for every configuration: " + "; ".join(failures)
    )


def quantize_dynamic_onnx(model: Path, output: Path, *, op_types: tuple[str, ...] | None = None) -> None:
    """Dynamic int8 (weights int8, activations quantized at run time)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    try:
        # the same pre-processing advice as quantize_static, and the same session warnings
        with captured(descriptors=False), onnxruntime_warnings_off():
            quantize_dynamic(
                str(model),
                str(output),
                weight_type=QuantType.QInt8,
                per_channel=True,
                op_types_to_quantize=list(op_types) if op_types else None,
            )
    except Exception as e:
        text = explain(e)
        raise QuantizationError(f"dynamic quantization failed: {text}") from e


def quantize_fp16_onnx(model: Path, output: Path, progress: Progress | None = None) -> None:
    """float16 weights and activations, float32 inputs and outputs, loadable on real graphs.

    See `converters.fp16.convert_to_float16` (nodes onnxruntime cannot run in float16, or whose constants
    overflow it, stay float32). The converter's clipping of extreme weights is one note on `progress`.
    """
    from converters.fp16 import convert_to_float16

    result = convert_to_float16(model, output)
    if result.clipping and progress is not None:
        progress.note(result.clipping)
