"""`python -m bench [--quick] [--out DIR]`: run every benchmark and write one report (Markdown and JSON).

Each benchmark runs in its own process with `--json` (so one cannot warm the next one's caches or
skew its memory), then every headline figure is put next to its baseline from the same run and its
target. The targets are the ones the issues set; the report marks each PASS or MISS, for information:
benchmarks assert nothing.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
Row = dict[str, Any]


def _run(module: list[str], out: Path, quick: bool, extra: list[str] | None = None) -> dict[str, Any] | None:
    command = [
        sys.executable,
        "-m",
        *module,
        "--json",
        str(out),
        *(["--quick"] if quick else []),
        *(extra or []),
    ]
    print(f"[bench] {' '.join(command[1:])}", file=sys.stderr, flush=True)
    started = time.perf_counter()
    result = subprocess.run(command, cwd=ROOT, text=True, capture_output=True, check=False)
    if result.returncode != 0 or not out.exists():
        print(
            f"[bench]   failed ({result.returncode}): {result.stderr.strip().splitlines()[-1:]}",
            file=sys.stderr,
        )
        return None
    document: dict[str, Any] = json.loads(out.read_text())
    document["_seconds"] = time.perf_counter() - started
    return document


def _row(area: str, figure: str, value: str, baseline: str, target: str, met: bool | None) -> Row:
    return {
        "area": area,
        "figure": figure,
        "value": value,
        "baseline": baseline,
        "target": target,
        "status": "-" if met is None else ("PASS" if met else "MISS"),
    }


def quantize_rows(d: dict[str, Any]) -> list[Row]:
    rows = []
    for model, data in d.get("models", {}).items():
        for config in data["configs"]:
            latency = config["latency"]
            rows.append(
                _row(
                    "quantize",
                    f"{model} [{config['config']}] int8 vs fp32",
                    f"size {config['size_ratio']:.2f}x smaller; speed-up b1 {latency['ratio']['1']:.2f}x, "
                    f"b32 {latency['ratio']['32']:.2f}x; agreement {100 * (config['agreement'] or 0):.1f}%, "
                    f"SQNR {config['sqnr_db']:.1f} dB",
                    "fp32 ONNX, same session options, same run",
                    "int8 not slower; gate passes",
                    (not latency["slower"]) and config["gate_would_pass"],
                )
            )
    product = d.get("product") or {}
    if product.get("shipped"):
        report = product["product_report"]
        out = report["outputs"][0]
        ratio = report["latency"]["ratio"] if report.get("latency") else {}
        rows.append(
            _row(
                "quantize",
                "digits, what `edgekit quantize` ships",
                f"agreement {100 * out['agreement']:.2f}%, SQNR {out['sqnr_db']:.1f} dB, speed-up "
                + ", ".join(f"b{k} {v:.2f}x" for k, v in ratio.items()),
                "fp32 ONNX, same run",
                "gate passes, not slower",
                report["passed"],
            )
        )
    return rows


def verify_rows(d: dict[str, Any]) -> list[Row]:
    return [
        _row(
            "verify",
            f"{name} ({d['size_mib']} MiB .ekb)",
            f"{t['ratio']:.2f}x",
            "hashlib.sha256 (+ copy) over the same file, same run",
            f"<= {t['target']}x",
            t["met"],
        )
        for name, t in d["targets"].items()
    ]


def runtime_rows(d: dict[str, Any]) -> list[Row]:
    rows = []
    for p in d["predict"]:
        if p["model"] == "mobilenetv2":
            rows.append(
                _row(
                    "runtime",
                    "Runtime.predict overhead, MobileNetV2",
                    f"{p['overhead_pct']:+.1f}%",
                    f"raw onnxruntime {p['raw_us']:.0f} us/call",
                    "<= 5%",
                    p["overhead_pct"] <= 5.0,
                )
            )
        else:
            rows.append(
                _row(
                    "runtime",
                    "Runtime.predict overhead, digits",
                    f"{p['overhead_us']:.1f} us/call",
                    f"raw onnxruntime {p['raw_us']:.0f} us/call",
                    "<= 50 us",
                    p["overhead_us"] <= 50.0,
                )
            )
        if "health_overhead_us" in p:  # issue 11: the same with the label-free health sketches on
            mobilenet = p["model"] == "mobilenetv2"
            model = "MobileNetV2" if mobilenet else "digits"
            rows.append(
                _row(
                    "runtime",
                    f"Runtime.predict overhead with health sketches, {model}",
                    f"{p['health_overhead_pct']:+.1f}%"
                    if mobilenet
                    else f"{p['health_overhead_us']:.1f} us/call",
                    f"raw onnxruntime {p['raw_us']:.0f} us/call",
                    "<= 3%" if mobilenet else "<= 50 us",
                    p["health_overhead_pct"] <= 3.0 if mobilenet else p["health_overhead_us"] <= 50.0,
                )
            )
    imports = d["import"]
    rows.append(
        _row(
            "runtime",
            "import device_runtime",
            f"{imports['import_ms']:.0f} ms, peak RSS {imports['rss_kib'] / 1024:.1f} MiB",
            f"python -c pass: {imports['baseline_rss_kib'] / 1024:.1f} MiB",
            "-",
            None,
        )
    )
    install = d["install"]
    rows.append(
        _row(
            "runtime",
            f"install a {install['bundle_mb']:.0f} MB bundle",
            f"{install['install_s']:.2f} s ({install['ratio']:.2f}x)",
            f"hash+copy {install['hash_copy_s']:.2f} s",
            "-",
            None,
        )
    )
    return rows


def install_memory_rows(d: dict[str, Any]) -> list[Row]:
    if "skipped" in d:
        return [_row("install memory", "PP-OCRv4 detector", f"skipped: {d['skipped']}", "-", "-", None)]
    rows = []
    for label in ("install", "install-unbounded"):
        if label not in d:
            continue
        row = d[label]
        rows.append(
            _row(
                "install memory",
                f"{d['model']} {label}: peak RSS, bundle size",
                f"{row['peak_kib'] / 1024:.0f} MiB ({row['vs_inference']:.2f}x); bundle "
                f"{row['bundle_to_model']:.2f}x the model",
                f"onnxruntime session + one inference: {d['baseline_inference_kib'] / 1024:.0f} MiB; "
                f"session alone {d['baseline_session_kib'] / 1024:.0f} MiB",
                "-",
                None,
            )
        )
    return rows


def server_rows(d: dict[str, Any]) -> list[Row]:
    baseline = f"{d.get('baseline', 'static file server')}, same run"
    return [
        _row("server", t["name"], str(t["value"]), baseline, str(t.get("target", "-")), t.get("met"))
        for t in d.get("targets", [])
    ]


def evaluate_rows(d: dict[str, Any]) -> list[Row]:
    small, large = d["sizes"]
    return [
        _row(
            "evaluate",
            f"gate evaluation at {large['stored_events']:,} vs {small['stored_events']:,} stored events "
            f"({d['backend']})",
            f"{d['ratio']:.2f}x ({small['evaluate_median_ms']:.0f} -> {large['evaluate_median_ms']:.0f} ms)",
            f"recount of the window, same run: {d['recount_ratio']:.2f}x",
            "<= 2x",
            d["ratio"] <= 2.0,
        )
    ]


def simulate_rows(d: dict[str, Any]) -> list[Row]:
    rows = []
    for name, doc in d.items():
        if not isinstance(doc, dict) or "runs" not in doc:
            continue
        if name == "aa":
            rows.append(
                _row(
                    "simulate",
                    "A/A false halts (100k devices)",
                    f"{100 * doc['false_halt_rate']:.2f}%",
                    f"{doc['runs']} healthy runs",
                    "<= 1%",
                    doc["false_halt_rate"] <= 0.01,
                )
            )
            hours = doc.get("hours_to_full")
            mean = hours.get("mean") if isinstance(hours, dict) else hours
            if mean is not None:
                rows.append(
                    _row(
                        "simulate",
                        "healthy release: hours to 100%",
                        f"{mean:.1f} h (mean)",
                        "-",
                        "<= 96 h",
                        mean <= 96,
                    )
                )
        else:
            rows.append(
                _row(
                    "simulate",
                    "2x crash regressions halted in the 1% stage",
                    f"{100 * doc['halted_before_stage_2']:.1f}%",
                    f"{doc['runs']} runs",
                    ">= 90%",
                    doc["halted_before_stage_2"] >= 0.9,
                )
            )
            rows.append(
                _row(
                    "simulate",
                    "... halted before 25%",
                    f"{100 * doc['halted_before_stage_3']:.2f}%",
                    f"{doc['runs']} runs",
                    ">= 99.9%",
                    doc["halted_before_stage_3"] >= 0.999,
                )
            )
    return rows


def zoo_rows(d: dict[str, Any]) -> list[Row]:
    rows = []
    for m in d.get("models", []):
        if "unavailable" in m or "float_model" in m:
            value = m.get("unavailable") or m.get("float_model")
            rows.append(_row("zoo", f"{m['model']}", f"not run: {value}", "-", "-", None))
            continue
        speed = m.get("speed_ratio")
        speed_text = (
            ", ".join(f"b{k} {v:.2f}x" for k, v in speed.items()) if isinstance(speed, dict) else speed
        )
        size = m.get("size_ratio")
        metrics = "; ".join(
            f"{name} ({v['role']}) {v['metric']} {v['value']:.3g}"
            if isinstance(v.get("value"), float)
            else f"{name} ({v['role']}) {v['metric']} n/a"
            for name, v in (m.get("role_metric") or {}).items()
        )
        rows.append(
            _row(
                "zoo",
                f"{m['model']} [{m.get('strategy') or 'no strategy'}]",
                f"size {size if isinstance(size, str) else f'{size:.2f}x smaller'}; speed-up {speed_text}; "
                f"{metrics or m.get('quantize', 'no report')}; quantize {m.get('quantize_seconds')} s; "
                f"bundle/model {m.get('bundle_vs_model')}; "
                f"install peak RSS {m.get('install_peak_rss_mib')} MiB",
                d.get("baseline", "fp32 model, same run"),
                "quantized, gate passes",
                isinstance(size, float) and "quantize" not in m,
            )
        )
    return rows


def delta_rows(d: dict[str, Any]) -> list[Row]:
    rows = []
    for r in d["rows"]:
        patch = r.get("patch_from")
        baseline = (
            f"full .ekb {r['full']:,} B; zstd -19 --patch-from {patch:,} B ({100 * patch / r['full']:.1f}%)"
            if patch is not None
            else f"full .ekb {r['full']:,} B; zstd CLI absent (no --patch-from baseline)"
        )
        targets = [t for t in r["targets"] if not t["name"].startswith("rebuild")]
        rows.append(
            _row(
                "delta",
                f"{r['scenario']}: delta bytes",
                f"{r['delta']:,} B ({100 * r['share']:.1f}% of the bundle, {r['chosen']})",
                baseline,
                "; ".join(t["name"] for t in targets),
                None if any(t["met"] is None for t in targets) else all(t["met"] for t in targets),
            )
        )
        rows.append(
            _row(
                "delta",
                f"{r['scenario']}: device rebuild + verify",
                f"{1000 * r['rebuild_verify_s']:.1f} ms ({r['ratio']:.2f}x)",
                f"verify of the full download {1000 * r['verify_s']:.1f} ms, same run",
                "<= 2x",
                r["ratio"] <= 2.0,
            )
        )
    return rows


def run_simulations(out: Path, quick: bool) -> dict[str, Any] | None:
    runs = "50" if quick else "1000"
    results = {}
    for name, extra in (("regression", ["--regression", "crash:2.0"]), ("aa", [])):
        target = out.with_name(f"simulate-{name}.json")
        command = [
            sys.executable,
            "-m",
            "edgekit",
            "simulate",
            "--devices",
            "100000",
            "--runs",
            runs,
            "--seed",
            "1",
            "--json",
            *extra,
        ]
        print(f"[bench] {' '.join(command[1:])}", file=sys.stderr, flush=True)
        result = subprocess.run(command, cwd=ROOT, text=True, capture_output=True, check=False)
        if result.returncode != 0:
            print(f"[bench]   failed: {result.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
            return None
        results[name] = json.loads(result.stdout)
        target.write_text(result.stdout)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="the smoke-sized variant of every benchmark")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results", help="report folder")
    parser.add_argument(
        "--skip", action="append", default=[], help="skip a benchmark (quantize, verify, ...)"
    )
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    plan: list[tuple[str, Callable[[], dict[str, Any] | None], Callable[[dict[str, Any]], list[Row]]]] = [
        ("quantize", lambda: _run(["bench.quantize"], args.out / "quantize.json", args.quick), quantize_rows),
        ("verify", lambda: _run(["bench.verify"], args.out / "verify.json", args.quick), verify_rows),
        ("runtime", lambda: _run(["bench.runtime"], args.out / "runtime.json", args.quick), runtime_rows),
        (
            "install_memory",
            lambda: _run(["bench.install_memory"], args.out / "install_memory.json", args.quick),
            install_memory_rows,
        ),
        ("server", lambda: _run(["bench.server"], args.out / "server.json", args.quick), server_rows),
        ("evaluate", lambda: _run(["bench.evaluate"], args.out / "evaluate.json", args.quick), evaluate_rows),
        ("simulate", lambda: run_simulations(args.out / "simulate.json", args.quick), simulate_rows),
        ("zoo", lambda: _run(["bench.zoo"], args.out / "zoo.json", args.quick), zoo_rows),
        ("delta", lambda: _run(["bench.delta"], args.out / "delta.json", args.quick), delta_rows),
    ]
    rows: list[Row] = []
    raw: dict[str, Any] = {}
    for name, run, extract in plan:
        if name in args.skip:
            continue
        document = run()
        raw[name] = document
        if document is None:
            rows.append(_row(name, "benchmark", "failed to run (see stderr)", "-", "-", False))
            continue
        try:
            rows.extend(extract(document))
        except (KeyError, TypeError, ValueError) as e:
            rows.append(_row(name, "benchmark", f"unreadable result ({e})", "-", "-", False))
    lines = [
        "# edgekit benchmark report",
        "",
        f"mode: {'quick' if args.quick else 'full'}; "
        "every figure is measured against its baseline in the same run.",
        "",
        "| area | figure | value | baseline (same run) | target | |",
        "|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['area']} | {r['figure']} | {r['value']} | {r['baseline']} | {r['target']} | {r['status']} |"
        for r in rows
    ]
    (args.out / "report.md").write_text("\n".join(lines) + "\n")
    (args.out / "report.json").write_text(json.dumps({"rows": rows, "raw": raw}, indent=2, default=str))
    print("\n".join(lines))
    print(f"\nreport: {args.out / 'report.md'} and report.json", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
