"""Static int8 ONNX quantization vs the fp32 ONNX model it came from, measured in the same run.

    python -m bench.quantize [--quick] [--json OUT.json]

Models: (a) the digits CNN (examples/digits/train.py, trained into a temporary folder; real digits for
calibration and evaluation) and (b) a MobileNetV2-shaped Keras model with random weights (no download;
random-normal inputs). Each is exported with `converters.export.convert`, pre-processed with
`preprocess_for_quantization` and quantized with `quantize_static_onnx` under several configurations,
without the gate (random weights cannot pass it; whether the gate *would* pass is reported). The digits
model also goes through the product path, `converters.quantize.quantize` (gate + repair + latency check,
a slower verdict is only a warning), to show what `edgekit quantize` ships.

Baseline: the exported fp32 ONNX model, run through the same engine code with the same onnxruntime
session options, measured interleaved with the int8 model in the same run (`compare_latency`).
Figures go to stdout, progress to stderr. This is a benchmark, not a test: nothing here asserts speed.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import platform
import sys
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

ROOT = Path(__file__).resolve().parents[1]
BASELINE = "baseline: fp32 ONNX model, same onnxruntime session options, same run"
CALIBRATION_SAMPLES = 64
EVAL_SAMPLES = 128
SEED = 0
CPU_FLAGS = ("avx2", "avx512_vnni", "avx_vnni")
FLOAT_COMPUTE_OPS = frozenset({"Conv", "MatMul", "Gemm", "FusedConv", "FusedMatMul", "FusedGemm"})
INT8_COMPUTE_OPS = frozenset({"ConvInteger", "MatMulInteger", "MatMulIntegerToFloat", "QGemm"})

_START = time.perf_counter()


def log(message: str) -> None:
    """One progress line on stderr, stamped with the seconds since start."""
    print(f"[bench {time.perf_counter() - _START:6.1f}s] {message}", file=sys.stderr, flush=True)


class _StderrProgress:
    """converters.progress.Progress that prints notes to stderr and keeps them for the JSON."""

    def __init__(self) -> None:
        self.notes: list[str] = []

    def task(self, description: str, total: int) -> Any:
        from converters.progress import NullProgress

        return NullProgress().task(description, total)

    def note(self, message: str) -> None:
        self.notes.append(message)
        log(f"note: {message}")


# ---------------------------------------------------------------------------------------------- host


def host_info() -> dict[str, Any]:
    """CPU model, the int8-relevant flags, core count and library versions."""
    import onnxruntime

    from bench._host import cpu

    model_name, flags, _ = cpu()
    return {
        "cpu": model_name,
        "machine": platform.machine(),
        "cores": os.cpu_count(),
        "flags": {flag: flag in flags for flag in CPU_FLAGS},
        "onnxruntime": onnxruntime.__version__,
        "python": platform.python_version(),
    }


# ------------------------------------------------------------------------------------------- models


def _import_digits_train() -> Any:
    path = ROOT / "examples" / "digits" / "train.py"
    spec = importlib.util.spec_from_file_location("edgekit_bench_digits_train", path)
    if spec is None or spec.loader is None:
        raise RuntimeError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def prepare_digits(workdir: Path, epochs: int) -> dict[str, Any]:
    """Train the digits CNN, export it to ONNX, load real calibration and held-out data."""
    from converters.data import load_dataset, load_labels
    from converters.export import convert
    from device_runtime.engines import load_engine

    out = workdir / "digits"
    log(f"digits: training ({epochs} epochs)")
    figures = _import_digits_train().train(out, epochs=epochs, seed=SEED)
    log(f"digits: trained, held-out accuracy {100 * figures['eval_accuracy']:.1f}%; exporting to ONNX")
    onnx_path = out / "digits.onnx"
    convert(out / "digits.keras", onnx_path)
    inputs = load_engine(onnx_path).inputs
    calib = load_dataset(
        out / "images" / "calib",
        inputs,
        max_samples=CALIBRATION_SAMPLES,
        seed=SEED,
        preprocess=out / "preprocess.json",
    )
    evaluation = load_dataset(out / "eval.npy", inputs, max_samples=EVAL_SAMPLES, seed=SEED)
    labels = load_labels(out / "eval_labels.npy", evaluation)
    return {
        "name": "digits",
        "description": f"digits CNN, 32x32x1, trained {epochs} epochs "
        f"(Keras held-out accuracy {100 * figures['eval_accuracy']:.1f}%)",
        "onnx": onnx_path,
        "calib": calib,
        "eval": evaluation,
        "labels": labels,
        "data": "real digits (64 calibration images from the training split, 128 held-out)",
        "dir": out,
    }


def _random_dataset(name: str, shape: tuple[int, ...], count: int, seed: int) -> Any:
    from converters.data import Dataset

    array = np.random.default_rng(seed).standard_normal((count, *shape)).astype(np.float32)
    return Dataset(
        arrays={name: array},
        source=f"random-normal(seed={seed})",
        indices=np.arange(count),
        source_size=count,
    )


def prepare_mobilenet(workdir: Path, size: int) -> dict[str, Any]:
    """Build MobileNetV2 (random weights, logits), export it, make random-normal data."""
    import keras

    from converters.export import convert
    from device_runtime.engines import load_engine

    out = workdir / "mobilenetv2"
    out.mkdir(parents=True, exist_ok=True)
    log(f"mobilenetv2: building {size}x{size}x3 with random weights (weights=None, no download)")
    keras.utils.set_random_seed(SEED)
    model = keras.applications.MobileNetV2(
        weights=None, input_shape=(size, size, 3), classes=10, classifier_activation=None
    )
    model.save(out / "mobilenetv2.keras")
    log("mobilenetv2: exporting to ONNX")
    onnx_path = out / "mobilenetv2.onnx"
    convert(out / "mobilenetv2.keras", onnx_path)
    info = load_engine(onnx_path).inputs[0]
    shape = tuple(int(d) for d in info.shape[1:] if d is not None)
    return {
        "name": "mobilenetv2",
        "description": f"MobileNetV2 {size}x{size}x3, 10 classes, random weights (logits)",
        "onnx": onnx_path,
        "calib": _random_dataset(info.name, shape, CALIBRATION_SAMPLES, SEED + 1),
        "eval": _random_dataset(info.name, shape, EVAL_SAMPLES, SEED + 2),
        "labels": None,
        "data": "random-normal inputs (64 calibration, 128 held-out, different seeds)",
        "dir": out,
    }


# ---------------------------------------------------------------------------------------- measuring


def count_compute_nodes(model: Path, workdir: Path) -> dict[str, Any]:
    """Conv/MatMul/Gemm nodes left in float vs int8 compute nodes in onnxruntime's optimized graph."""
    import onnx
    import onnxruntime as ort

    optimized = workdir / f"{model.stem}.ort-optimized.onnx"
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(optimized)
    ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
    graph = onnx.load(str(optimized), load_external_data=False).graph
    float_ops: dict[str, int] = {}
    int8_ops: dict[str, int] = {}
    for node in graph.node:
        op = node.op_type
        if op in FLOAT_COMPUTE_OPS:
            float_ops[op] = float_ops.get(op, 0) + 1
        elif op.startswith(("QLinear", "DynamicQuantize")) or op in INT8_COMPUTE_OPS:
            int8_ops[op] = int8_ops.get(op, 0) + 1
    optimized.unlink(missing_ok=True)
    return {
        "float_compute": sum(float_ops.values()),
        "int8_compute": sum(int8_ops.values()),
        "float_ops": dict(sorted(float_ops.items())),
        "int8_ops": dict(sorted(int8_ops.items())),
        "nodes": len(graph.node),
    }


def measure(
    reference: Path,
    candidate: Path,
    prepared: dict[str, Any],
    reference_outputs: dict[str, np.ndarray],
    latency_config: Any,
    workdir: Path,
) -> dict[str, Any]:
    """Size, parity (128 held-out samples), would-the-gate-pass, latency and graph node counts."""
    from converters.latency import compare_latency
    from converters.parity import INT8_GATE, compare_outputs, evaluate_gate, run_model
    from device_runtime.engines import load_engine

    outputs = run_model(load_engine(candidate), prepared["eval"])
    metrics = compare_outputs(reference_outputs, outputs, prepared["labels"])
    failures = evaluate_gate(metrics, INT8_GATE)
    worst = min(metrics, key=lambda m: m.sqnr_db)
    agreements = [m.agreement for m in metrics if m.agreement is not None]
    sample = {name: a[: max(latency_config.batch_sizes)] for name, a in prepared["eval"].arrays.items()}
    latency = compare_latency(reference, candidate, sample, latency_config)
    fp32_bytes, int8_bytes = reference.stat().st_size, candidate.stat().st_size
    return {
        "fp32_bytes": fp32_bytes,
        "int8_bytes": int8_bytes,
        "size_ratio": fp32_bytes / int8_bytes,
        "latency": latency,
        "agreement": min(agreements) if agreements else None,
        "sqnr_db": worst.sqnr_db,
        "cosine": min(m.cosine for m in metrics),
        "accuracy_drop_pp": max(
            (m.accuracy_drop_pp for m in metrics if m.accuracy_drop_pp is not None), default=None
        ),
        "gate_would_pass": not failures,
        "gate_failures": failures,
        "graph": count_compute_nodes(candidate, workdir),
    }


def bench_model(prepared: dict[str, Any], latency_config: Any, workdir: Path) -> dict[str, Any]:
    """Quantize one model under each configuration (library calls, no gate) and measure each."""
    from converters.parity import run_model
    from converters.quantize_onnx import preprocess_for_quantization, quantize_static_onnx, resolve_preset
    from device_runtime.engines import load_engine

    name, reference = prepared["name"], prepared["onnx"]
    progress = _StderrProgress()
    log(f"{name}: quant_pre_process")
    preprocessed = preprocess_for_quantization(reference, prepared["dir"] / "preprocessed.onnx", progress)
    reference_outputs = run_model(load_engine(reference), prepared["eval"])
    auto = resolve_preset("auto")
    configs = [
        ("auto", auto),
        ("x86-reduce-range", resolve_preset("x86-reduce-range")),
        ("auto, per-tensor", replace(auto, name=f"{auto.name}/per-tensor", per_channel=False)),
    ]
    rows = []
    for label, config in configs:
        candidate = prepared["dir"] / f"{name}.{label.replace(', ', '-')}.int8.onnx"
        log(f"{name} [{label}]: quantize_static_onnx ({config.name})")
        started = time.perf_counter()
        used = quantize_static_onnx(preprocessed, candidate, prepared["calib"], config, progress=progress)
        quantize_s = time.perf_counter() - started
        log(f"{name} [{label}]: parity, graph and latency")
        row = measure(reference, candidate, prepared, reference_outputs, latency_config, workdir)
        rows.append(
            {
                "config": label,
                "requested": asdict(config),
                "used": asdict(used),
                "quantize_s": quantize_s,
                **row,
            }
        )
    fp32_graph = count_compute_nodes(reference, workdir)
    return {
        "description": prepared["description"],
        "data": prepared["data"],
        "calibration_samples": prepared["calib"].size,
        "eval_samples": prepared["eval"].size,
        "fp32_graph": fp32_graph,
        "configs": rows,
        "notes": progress.notes,
    }


def bench_product(prepared: dict[str, Any], latency_config: Any, workdir: Path) -> dict[str, Any]:
    """The digits model through `converters.quantize.quantize` (what `edgekit quantize` ships)."""
    from converters.errors import GateError
    from converters.parity import run_model
    from converters.quantize import QuantizeOptions, quantize
    from device_runtime.engines import load_engine

    out = prepared["dir"]
    shipped = out / "digits.product.int8.onnx"
    progress = _StderrProgress()
    options = QuantizeOptions(latency=latency_config, preprocess=out / "preprocess.json")
    log("digits [product]: converters.quantize.quantize (gate + strategy ladder + speed verdict)")
    started = time.perf_counter()
    try:
        result = quantize(
            prepared["onnx"],
            shipped,
            out / "images" / "calib",
            eval_data=out / "eval.npy",
            labels=out / "eval_labels.npy",
            options=options,
            progress=progress,
        )
        report = result.report
    except GateError as e:
        log(f"digits [product]: refused: {e}")
        return {
            "shipped": False,
            "error": str(e),
            "report": e.report if hasattr(e, "report") else None,
            "seconds": time.perf_counter() - started,
            "notes": progress.notes,
        }
    seconds = time.perf_counter() - started
    log("digits [product]: parity on the bench's 128 held-out samples, graph and latency")
    reference_outputs = run_model(load_engine(prepared["onnx"]), prepared["eval"])
    row = measure(prepared["onnx"], shipped, prepared, reference_outputs, latency_config, workdir)
    repair = report.get("repair", {})
    return {
        "shipped": True,
        "seconds": seconds,
        "config": report["quantization"].get("config"),
        "product_report": {
            "passed": report["passed"],
            "samples": report["samples"],
            "outputs": [{k: v for k, v in o.items() if k != "error_histogram"} for o in report["outputs"]],
            "latency": report.get("latency"),
            "excluded_nodes": repair.get("excluded_nodes", []),
            "repair_evaluations": repair.get("evaluations", 0),
            "cpu_note": report["quantization"].get("cpu_note"),
        },
        "notes": progress.notes,
        **row,
    }


# ------------------------------------------------------------------------------------------ output


def _ms(value: float) -> str:
    return f"{value:8.2f}" if value < 100 else f"{value:8.1f}"


def format_table(rows: list[tuple[str, str, dict[str, Any]]]) -> str:
    """One line per (model, config): sizes, latency b1/b32, parity, graph counts, gate."""
    header = (
        f"{'model':<12} {'config':<22} {'fp32 KB':>8} {'int8 KB':>8} {'size x':>6} "
        f"{'b1 fp32':>8} {'b1 int8':>8} {'b1 x':>5} {'b32 fp32':>8} {'b32 int8':>8} {'b32 x':>5} "
        f"{'top-1':>7} {'SQNR dB':>7} {'float':>5} {'int8':>5} {'gate':>5}"
    )
    lines = [header, "-" * len(header)]
    for model, config, row in rows:
        lat = row["latency"]
        agreement = "-" if row["agreement"] is None else f"{100 * row['agreement']:6.1f}%"
        lines.append(
            f"{model:<12} {config:<22} {row['fp32_bytes'] / 1024:8.0f} {row['int8_bytes'] / 1024:8.0f} "
            f"{row['size_ratio']:6.2f} "
            f"{_ms(lat['reference_ms']['1'])} {_ms(lat['candidate_ms']['1'])} {lat['ratio']['1']:5.2f} "
            f"{_ms(lat['reference_ms']['32'])} {_ms(lat['candidate_ms']['32'])} {lat['ratio']['32']:5.2f} "
            f"{agreement:>7} {row['sqnr_db']:7.1f} {row['graph']['float_compute']:5d} "
            f"{row['graph']['int8_compute']:5d} {'pass' if row['gate_would_pass'] else 'FAIL':>5}"
        )
    return "\n".join(lines)


def _json_default(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


def _clean(value: Any) -> Any:
    """Replace non-finite floats (JSON has none) with strings."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="smaller models and shorter timing (smoke run)")
    parser.add_argument("--json", type=Path, help="write every figure to this JSON file")
    args = parser.parse_args(argv)

    from converters.latency import LatencyConfig

    if args.quick:
        epochs, size = 3, 96
        latency_config = LatencyConfig(rounds=3, seconds_per_round=0.05, warmup_calls=1)
    else:
        epochs, size = 10, 160
        latency_config = LatencyConfig(rounds=5, seconds_per_round=0.2)
    host = host_info()
    flags = ", ".join(f"{flag}={'yes' if present else 'no'}" for flag, present in host["flags"].items())
    print(
        f"host: {host['cpu']} ({host['machine']}, {host['cores']} cores), onnxruntime {host['onnxruntime']}"
    )
    print(f"int8 CPU flags: {flags}")
    print(BASELINE)
    print(
        f"latency: median of {latency_config.rounds} interleaved rounds x "
        f"{latency_config.seconds_per_round}s per model, "
        f"{latency_config.threads} intra-op thread; x = fp32 time / int8 time (above 1: int8 faster)"
    )
    sys.stdout.flush()

    results: dict[str, Any] = {
        "mode": "quick" if args.quick else "full",
        "baseline": BASELINE,
        "host": host,
        "latency_config": asdict(latency_config),
        "models": {},
    }
    table_rows: list[tuple[str, str, dict[str, Any]]] = []
    with tempfile.TemporaryDirectory(prefix="edgekit-bench-") as tmp:
        workdir = Path(tmp)
        digits = prepare_digits(workdir, epochs)
        results["models"]["digits"] = bench_model(digits, latency_config, workdir)
        table_rows += [("digits", r["config"], r) for r in results["models"]["digits"]["configs"]]
        product = bench_product(digits, latency_config, workdir)
        results["product"] = product
        if product["shipped"]:
            table_rows.append(("digits", "product (gate+repair)", product))
        mobilenet = prepare_mobilenet(workdir, size)
        results["models"]["mobilenetv2"] = bench_model(mobilenet, latency_config, workdir)
        table_rows += [("mobilenetv2", r["config"], r) for r in results["models"]["mobilenetv2"]["configs"]]

    print()
    for name, model in results["models"].items():
        print(f"{name}: {model['description']}; {model['data']}")
    print()
    print(format_table(table_rows))
    print()
    print("columns: size x = fp32 bytes / int8 bytes; b1/b32 = ms per call at batch 1/32 (x = fp32/int8);")
    print("  top-1 = argmax agreement with fp32 on 128 held-out samples; SQNR vs fp32 outputs;")
    print(
        "  float / int8 = Conv/MatMul/Gemm(+Fused*) nodes left float / QLinear*, *Integer, DynamicQuantize*"
    )
    print("  nodes in onnxruntime's optimized (ORT_ENABLE_EXTENDED) int8 graph; gate = INT8 gate would pass")
    for name, model in results["models"].items():
        print(f"  {name} fp32 graph: {model['fp32_graph']['float_compute']} float compute nodes")
    if product["shipped"]:
        info = product["product_report"]
        excluded = info["excluded_nodes"]
        print(
            f"product path: config {product['config']['name'] if product['config'] else '?'}, "
            f"{len(excluded)} node(s) kept float by repair{': ' + ', '.join(excluded) if excluded else ''} "
            f"({info['repair_evaluations']} evaluations); product report on {info['samples']} samples: "
            + "; ".join(
                f"{o['name']} agreement {100 * (o['agreement'] or 0):.1f}% SQNR {o['sqnr_db']:.1f} dB"
                for o in info["outputs"]
            )
        )
    else:
        print(f"product path: refused to ship: {product['error']}")
    for _, config, row in table_rows:
        if row["latency"]["slower"]:
            print(
                f"WARNING: {config} int8 is SLOWER than fp32 on this host (ratios {row['latency']['ratio']})"
            )
    notes = {n for model in results["models"].values() for n in model["notes"]} | set(product["notes"])
    for note in sorted(notes):
        print(f"note: {note}")
    results["elapsed_s"] = time.perf_counter() - _START
    print(f"elapsed: {results['elapsed_s']:.0f} s")
    if args.json:
        args.json.write_text(
            json.dumps(_clean(results), indent=2, default=_json_default) + "\n", encoding="utf-8"
        )
        log(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
