"""`python -m device_runtime ... bench BUNDLE [BUNDLE ...]`: compare models' speed on this device itself.

The build host is not the device: whether int8 beats float32 depends on the device's CPU (dot-product
instructions, cache sizes) and engine build. This measures it where it matters:

1. Each bundle is verified with the pinned keys and this device's policy, its engine version checked and
   its model loaded exactly as `Runtime.install` does (`signing.verify`, `device_runtime._loading`).
2. Inputs: the bundle's golden inputs (its stored tensors, or its golden images through its own
   preprocessing), or one given input (`.npy`, `.npz` or an image, as for `predict`) for every bundle.
3. Each bundle is warmed up, then timed in interleaved rounds until the time budget is spent: every round
   runs each bundle for about the same wall time (the bundle order alternates between rounds, so drift
   and turbo states hit all of them alike) and records its mean time per call.
4. Per bundle: the median over rounds (and the 10th/90th percentiles). Against the first bundle: the
   median of the per-round ratios with a distribution-free 95% confidence interval (order statistics of
   the binomial sign test), so "B is 1.8x faster" comes with how sure the measurement is.

The report names the machine (CPU model, cores, architecture), the engine and its version. Device code
only: stdlib, numpy, the engines, `signing`.
"""

from __future__ import annotations

import math
import os
import platform
import shutil
import statistics
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from device_runtime.errors import SpecError

__all__ = ["BenchResult", "BundleTiming", "bench_bundles", "machine", "median_ci"]

ROUND_SECONDS = 0.05  # wall time each bundle gets per round (calls are repeated to fill it)
MAX_ROUNDS = 500
MIN_ROUNDS = 3


@dataclass
class BundleTiming:
    """One bundle's timing on this device."""

    path: str
    name: str
    version: str
    bundle_id: str
    engine: str
    inputs: str  # "golden" or the given file's name
    samples: int
    calls_per_round: int = 0
    per_round_ms: list[float] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        """Median and spread of the per-round mean latency, in milliseconds."""
        values = sorted(self.per_round_ms)
        return {
            "path": self.path,
            "name": self.name,
            "version": self.version,
            "bundle_id": self.bundle_id,
            "engine": self.engine,
            "inputs": self.inputs,
            "samples": self.samples,
            "rounds": len(values),
            "calls_per_round": self.calls_per_round,
            "median_ms": statistics.median(values) if values else None,
            "p10_ms": _quantile(values, 0.1),
            "p90_ms": _quantile(values, 0.9),
        }


@dataclass
class BenchResult:
    """The whole report: machine, per-bundle timings, ratios against the first bundle."""

    machine: dict[str, Any]
    bundles: list[BundleTiming]
    seconds: float
    threads: int | None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready report."""
        first = self.bundles[0]
        ratios = []
        for other in self.bundles[1:]:
            paired = [b / a for a, b in zip(first.per_round_ms, other.per_round_ms, strict=False) if a > 0]
            median, low, high = median_ci(paired)
            ratios.append(
                {
                    "bundle": other.path,
                    "versus": first.path,
                    "latency_ratio": median,  # other / first: below 1 means `other` is faster
                    "ci95": [low, high],
                    "speedup": None if not median else 1.0 / median,
                    "rounds": len(paired),
                }
            )
        return {
            "schema": "edgekit.device-bench/v1",
            "machine": self.machine,
            "threads": self.threads,
            "seconds": self.seconds,
            "bundles": [b.summary() for b in self.bundles],
            "ratios": ratios,
        }


def _quantile(values: Sequence[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    position = q * (len(ordered) - 1)
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def median_ci(
    values: Sequence[float], confidence: float = 0.95
) -> tuple[float | None, float | None, float | None]:
    """Median and a distribution-free confidence interval from order statistics (binomial sign test).

    With fewer than 6 values no 95% interval exists: the bounds are None.
    """
    ordered = sorted(values)
    n = len(ordered)
    if n == 0:
        return None, None, None
    median = statistics.median(ordered)
    alpha = 1.0 - confidence
    # Largest k with P(Binomial(n, 1/2) <= k - 1) <= alpha / 2; the interval is [x_(k), x_(n-k+1)].
    cumulative = 0.0
    k = 0
    for j in range(n + 1):
        cumulative += math.comb(n, j) / 2.0**n
        if cumulative > alpha / 2:
            break
        k = j + 1
    if k == 0:
        return median, None, None
    return median, ordered[k - 1], ordered[n - k]


def machine() -> dict[str, Any]:
    """CPU model, cores, architecture, OS, Python and engine versions of this device."""
    from importlib import metadata

    model = platform.processor() or ""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as handle:
            for line in handle:
                if line.startswith(("model name", "Hardware", "Model")) and ":" in line:
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    engines = {}
    for package in ("onnxruntime", "ai-edge-litert"):
        try:
            engines[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    return {
        "cpu": model or platform.machine(),
        "architecture": platform.machine(),
        "logical_cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "system": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "engines": engines,
    }


@dataclass
class _Prepared:
    timing: BundleTiming
    engine: Any
    feeds: list[dict[str, np.ndarray]]


def _golden_feeds(directory: Path, loaded: Any) -> list[dict[str, np.ndarray]]:
    from device_runtime.golden import golden_feeds
    from device_runtime.preprocess import ImageInputSpec, prepare_inputs

    images = any(isinstance(i, ImageInputSpec) for i in loaded.spec.inputs)
    preprocess = (lambda path: prepare_inputs(loaded.spec, path)) if images else None
    return golden_feeds(directory, preprocess=preprocess)


def _prepare(
    path: Path, workdir: Path, keys: Sequence[Any], policy: Any, request: Any, label: str, threads: int | None
) -> _Prepared:
    from device_runtime._loading import check_engine_version, load_model
    from device_runtime.preprocess import prepare_inputs
    from signing.verify import verify_directory, verify_ekb

    destination = workdir / f"bundle-{len(list(workdir.iterdir()))}"
    if path.is_dir():
        verified = verify_directory(path, list(keys), policy=policy)
        shutil.copytree(path, destination)
    else:
        verified = verify_ekb(path, list(keys), destination=destination, policy=policy)
    check_engine_version(verified.manifest)
    loaded = load_model(destination, verified.manifest, None, threads=threads)
    if request is None:
        feeds = _golden_feeds(destination, loaded)
        source = "golden"
    else:
        feeds = [prepare_inputs(loaded.spec, request)]
        source = label
    if not feeds:
        raise SpecError(f"{path}: the bundle has no golden inputs; pass an input file")
    feeds = [_as_model_dtypes(loaded.engine, f) for f in feeds]
    manifest = verified.manifest
    timing = BundleTiming(
        str(path),
        manifest.name,
        manifest.version,
        verified.payload_sha256,
        manifest.runtime.engine,
        source,
        len(feeds),
    )
    return _Prepared(timing, loaded.engine, feeds)


def _as_model_dtypes(engine: Any, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Cast once, before timing (float16 golden inputs would otherwise be converted on every call)."""
    wanted = {i.name: "float32" if i.scale else i.dtype for i in engine.inputs}
    return {
        name: np.ascontiguousarray(np.asarray(value).astype(wanted.get(name, np.asarray(value).dtype)))
        for name, value in feeds.items()
    }


def _run_calls(prepared: _Prepared, calls: int) -> float:
    """Seconds per call over `calls` calls, cycling through the bundle's inputs."""
    run = prepared.engine.run
    feeds = prepared.feeds
    started = time.perf_counter()
    for index in range(calls):
        run(feeds[index % len(feeds)])
    return (time.perf_counter() - started) / calls


def bench_bundles(
    paths: Sequence[Path],
    keys: Sequence[Any],
    policy: Any,
    *,
    seconds: float = 10.0,
    request: Any = None,
    request_name: str = "given",
    threads: int | None = None,
) -> BenchResult:
    """Verify, load and time `paths` on this device (see the module docstring).

    Args:
        paths: bundles (`.ekb` files or verified bundle directories), the first is the reference.
        keys: pinned public keys (`signing.keys.PublicKey`).
        policy: `signing.verify.VerifyPolicy` of this device.
        seconds: time budget of the timed rounds (warm-up not included).
        request: one input for every bundle (array, dict of arrays or image path); None: golden inputs.
        request_name: how the report names that input (e.g. its file name).
        threads: intra-op threads of every engine (None: the engine's default).

    Raises:
        VerificationError: a bundle does not verify.  InstallError: its engine is missing or too old.
        SpecError / InputError: no usable inputs.
    """
    with tempfile.TemporaryDirectory(prefix="edgekit-device-bench-") as tmp:
        workdir = Path(tmp)
        prepared = [_prepare(Path(p), workdir, keys, policy, request, request_name, threads) for p in paths]
        calls = []
        for item in prepared:
            per_call = min(_run_calls(item, max(1, len(item.feeds))) for _ in range(2))  # warm-up
            calls.append(max(1, int(ROUND_SECONDS / max(per_call, 1e-6))))
            item.timing.calls_per_round = calls[-1]
        deadline = time.perf_counter() + seconds
        rounds = 0
        while rounds < MAX_ROUNDS and (rounds < MIN_ROUNDS or time.perf_counter() < deadline):
            order = range(len(prepared)) if rounds % 2 == 0 else reversed(range(len(prepared)))
            for index in order:
                item = prepared[index]
                item.timing.per_round_ms.append(1000.0 * _run_calls(item, calls[index]))
            rounds += 1
    return BenchResult(machine(), [p.timing for p in prepared], seconds, threads)


def format_report(report: dict[str, Any]) -> list[str]:
    """Human-readable lines of a `BenchResult.to_dict()` report."""
    m = report["machine"]
    engines = ", ".join(f"{k} {v}" for k, v in m["engines"].items())
    lines = [
        f"machine: {m['cpu']} ({m['architecture']}, {m['usable_cores']} usable cores), {m['system']}; "
        f"{engines}",
        f"threads: {report['threads'] or 'engine default'}; {report['seconds']:g} s of interleaved rounds",
    ]
    for b in report["bundles"]:
        lines.append(
            f"  {b['name']} {b['version']} ({b['engine']}, {b['inputs']} inputs x{b['samples']}): "
            f"median {b['median_ms']:.3f} ms/call (p10 {b['p10_ms']:.3f}, p90 {b['p90_ms']:.3f}; "
            f"{b['rounds']} rounds of {b['calls_per_round']} calls)"
        )
    for r in report["ratios"]:
        low, high = r["ci95"]
        interval = "n/a (too few rounds)" if low is None else f"{low:.3f}..{high:.3f}"
        lines.append(
            f"ratio {Path(r['bundle']).name} / {Path(r['versus']).name}: latency x{r['latency_ratio']:.3f} "
            f"(95% CI {interval}, {r['rounds']} paired rounds); speed-up {r['speedup']:.2f}x"
        )
    return lines
