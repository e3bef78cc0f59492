"""Cross-architecture parity: every zoo model and both example models, float and int8, x86 vs arm64.

    python -m bench.cross_arch [--quick] [--models KEY,KEY...] [--root DIR] [--python PATH] [--json OUT]

Its own command, not part of ``python -m bench``: it needs root rights and the emulated arm64 device
(:mod:`edgekit.emulation`, QEMU user-mode, Cortex-A72), and runs for tens of minutes on a 2-core host.

Per model (zoo: the wheel's model through ``bench.zoo``'s float path, roles from the catalog, the zoo's
realistic inputs; examples: the digits CNN trained 3 epochs and MobileNetV2 with random weights, as
``bench.quantize`` builds them):

1. int8 on this host with the product path (``converters.quantize.quantize``: ladder, gate, repair;
   no latency), gated on x86 as ``edgekit quantize`` does by default;
2. the float and the int8 model run on the evaluation set here (x86 onnxruntime/LiteRT) and in the
   emulated arm64 device (aarch64 wheels of the same engines, ``python -m device_runtime run-model``);
3. **x86 vs arm64**, float and int8: the role-aware parity metrics of the arm64 outputs against the x86
   outputs of the same model (classification agreement, whole-tensor SQNR, the role's objective);
4. **the int8 gate on each architecture**: int8 (x86 and arm64 outputs) against the x86 float reference,
   judged by the default gate, plus on arm64 what ``--target arm64`` adds: the int8 model's arm64 outputs
   against its x86 outputs within the golden self-test's 30 dB; a model whose verdict differs is one
   ``--target arm64`` refuses or repairs while the x86 gate passes it;
5. **golden self-test on arm64**: the int8 model (float when int8 fails the gate) in a signed bundle whose
   golden outputs were recorded on x86, installed by ``python -m device_runtime install`` in the emulated
   device: the install runs the self-test and refuses the model when the outputs differ.

Emulated timings say nothing about a device's speed; none is reported. A benchmark, not a test: nothing
here asserts; a step that fails is reported with its error.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # zoo/ is not installed: it is imported from the repository root
    sys.path.insert(0, str(ROOT))

EXAMPLES = ("digits", "mobilenetv2", "digits-tflite", "mobilenetv2-tflite")
EVAL_SAMPLES = 1000
_START = time.perf_counter()


def log(message: str) -> None:
    """One progress line on stderr, stamped with the seconds since start."""
    print(f"[bench.cross_arch {time.perf_counter() - _START:7.1f}s] {message}", file=sys.stderr, flush=True)


def _short(error: BaseException) -> str:
    return f"n/a: {type(error).__name__}: {' '.join(str(error).split())[:300]}"


@dataclass
class Case:
    """One model to measure: its float model, data files and declared roles."""

    name: str
    source: str
    model: Path
    calibration: Path
    evaluation: Path
    roles: dict[str, Any]
    labels: Path | None = None
    quantize_source: Path | None = None  # what int8 is made from when not `model` (Keras for TFLite)


def _zoo_case(key: str, workdir: Path, quick: bool) -> Case:
    from bench.zoo import _declared_roles, _float_model
    from zoo import CATALOG
    from zoo.inputs import inputs_for

    inputs = inputs_for(key, quick=quick)
    model = _float_model(key, workdir, inputs)
    np.savez(workdir / "cal.npz", **inputs.calibration)  # type: ignore[arg-type]
    np.savez(workdir / "eval.npz", **inputs.evaluation)  # type: ignore[arg-type]
    info = CATALOG[key]
    return Case(
        key,
        f"{info.project} {info.format}",
        model,
        workdir / "cal.npz",
        workdir / "eval.npz",
        _declared_roles(key, model, inputs.spec),
    )


def _example_case(name: str, workdir: Path, quick: bool) -> Case:
    from bench.quantize import prepare_digits, prepare_mobilenet
    from converters.export import convert

    base = name.removesuffix("-tflite")
    prepared = prepare_digits(workdir, 3) if base == "digits" else prepare_mobilenet(workdir, 96)
    # one input: .npy, so the TFLite model (whose input is named differently) reads the same files
    (calibration,) = prepared["calib"].arrays.values()
    (evaluation,) = prepared["eval"].arrays.values()
    np.save(workdir / "cal.npy", calibration)
    np.save(workdir / "eval.npy", evaluation)
    labels = None
    if prepared["labels"] is not None:
        labels = workdir / "labels.npy"
        np.save(labels, prepared["labels"])
    if not name.endswith("-tflite"):
        return Case(
            name,
            "example: " + prepared["description"],
            prepared["onnx"],
            workdir / "cal.npy",
            workdir / "eval.npy",
            {},
            labels,
        )
    # the TFLite route: float32 TFLite from the Keras model, full int8 TFLite by `quantize` (LiteRT kernels)
    keras_model = prepared["dir"] / f"{base}.keras"
    float_tflite = workdir / f"{base}.tflite"
    convert(keras_model, float_tflite)
    return Case(
        name,
        "example (LiteRT): " + prepared["description"],
        float_tflite,
        workdir / "cal.npy",
        workdir / "eval.npy",
        {},
        labels,
        quantize_source=keras_model,
    )


def _uncapped_sqnr_db(x: np.ndarray, y: np.ndarray) -> float | str:
    """SQNR without the gate's 100 dB cap (x86 vs arm64 float differ by rounding only): 'identical' when
    bit-equal."""
    a, b = x.astype(np.float64).ravel(), y.astype(np.float64).ravel()
    noise = float(np.dot(a - b, a - b))
    if noise == 0.0:
        return "identical"
    return round(10.0 * float(np.log10(float(np.dot(a, a)) / noise)), 1)


def _output_rows(
    metrics: list[Any], x: dict[str, np.ndarray] | None = None, y: dict[str, np.ndarray] | None = None
) -> list[dict[str, Any]]:
    """Per output: role, classification agreement, SQNR (uncapped too when outputs are given), the role's
    objective."""
    from converters.role_metrics import role_objective

    rows = []
    for m in metrics:
        entry = asdict(m)
        what, value = role_objective(m.role, entry)
        extra = (
            {} if x is None or y is None else {"sqnr_uncapped_db": _uncapped_sqnr_db(x[m.name], y[m.name])}
        )
        rows.append(
            {
                "output": m.name,
                "role": m.role,
                "agreement": m.agreement,
                "sqnr_db": round(m.sqnr_db, 2),
                **extra,
                "max_abs_error_norm": m.max_abs_error_norm,
                "objective": what,
                "objective_value": round(value, 5),
            }
        )
    return rows


def _cross(
    x86: dict[str, np.ndarray],
    arm: dict[str, np.ndarray],
    roles: dict[str, Any],
    samples: int,
    labels: np.ndarray | None = None,
) -> list[Any]:
    from converters.parity import compare_outputs

    return compare_outputs(x86, arm, labels, roles, samples=samples)


def _preset_candidate(case: Case, engine: Any, output: Path, workdir: Path) -> str:
    """Build the first rung's candidate (the auto preset, static QDQ) of a model the x86 gate refused."""
    from converters.data import load_dataset
    from converters.progress import NullProgress
    from converters.quantize_onnx import preprocess_for_quantization, quantize_static_onnx, resolve_preset
    from device_runtime.engines import load_engine
    from device_runtime.errors import EngineError

    try:
        calibration = load_dataset(
            case.calibration, engine.inputs, max_samples=256, seed=0, outputs=engine.outputs
        )
        if calibration.stateful:
            return "n/a: stateful calibration data"
        for optimize in (True, False):  # Paddle exports load only without onnxruntime's fusions
            prepared = preprocess_for_quantization(
                case.model, workdir / "preprocessed.onnx", NullProgress(), optimize=optimize
            )
            used = quantize_static_onnx(prepared, output, calibration, resolve_preset("auto"))
            try:
                load_engine(output)
                break
            except EngineError:
                output.unlink()
    except Exception as e:  # a bench reports every failure and goes on
        return _short(e)
    if not output.exists():
        return "n/a: the preset candidate does not load with or without fusions"
    fusions = "" if optimize else ", without fusions"
    return f"the {used.name} preset candidate{fusions} (refused by the x86 gate)"


def measure(case: Case, target: Any, workdir: Path, max_evaluations: int = 20) -> dict[str, Any]:
    """Every figure of one case (see the module docstring); failures are recorded, not raised."""
    from converters.data import load_dataset, load_labels
    from converters.errors import GateError
    from converters.parity import INT8_GATE, consistency_failures, evaluate_gate, target_consistency
    from converters.quantize import QuantizeOptions, quantize
    from converters.runner import run_model
    from device_runtime.engines import load_engine

    row: dict[str, Any] = {"model": case.name, "source": case.source}
    engine = load_engine(case.model)
    data = load_dataset(
        case.evaluation, engine.inputs, max_samples=EVAL_SAMPLES, seed=0, outputs=engine.outputs
    )
    labels = load_labels(case.labels, data) if case.labels is not None else None
    row["samples"] = data.size
    int8 = workdir / f"int8{case.model.suffix}"
    log(f"{case.name}: quantize on x86 ({data.size} evaluation samples)")
    try:
        result = quantize(
            case.quantize_source or case.model,
            int8,
            case.calibration,
            eval_data=case.evaluation,
            labels=case.labels,
            options=QuantizeOptions(latency=None, roles=case.roles, max_evaluations=max_evaluations),
        )
        section = result.report.get("quantization", {})
        row["int8_strategy"] = section.get("strategy") or section.get("tflite_precision")
        row["kept_in_float"] = len((result.report.get("repair") or {}).get("excluded_nodes", []))
    except GateError as e:
        row["int8_strategy"] = _short(e)
    except Exception as e:  # a bench reports every failure and goes on
        row["int8_strategy"] = _short(e)
    if not int8.exists() and case.model.suffix == ".onnx":
        # refused on x86: its preset candidate still shows whether arm64 would judge it otherwise
        row["int8_measured"] = _preset_candidate(case, engine, int8, workdir)
    models = {"float": case.model, **({"int8": int8} if int8.exists() else {})}
    outputs: dict[str, dict[str, dict[str, np.ndarray]]] = {}
    for kind, path in models.items():
        model_engine = load_engine(path)
        log(f"{case.name}: {kind} on x86, then on {target.name}")
        x86 = run_model(model_engine, data)
        started = time.perf_counter()
        try:
            arm = run_model(model_engine, data, executor=target.executor(path))
        except Exception as e:
            row[f"{kind}_x86_vs_arm64"] = _short(e)
            continue
        row[f"{kind}_emulated_seconds"] = round(time.perf_counter() - started, 1)  # cost, not speed
        outputs[kind] = {"x86": x86, "arm64": arm}
        row[f"{kind}_x86_vs_arm64"] = _output_rows(_cross(x86, arm, case.roles, data.size), x86, arm)
    if "int8" in outputs and "float" in outputs:
        reference = outputs["float"]["x86"]
        for arch in ("x86", "arm64"):
            metrics = _cross(reference, outputs["int8"][arch], case.roles, data.size, labels)
            failures = evaluate_gate(metrics, INT8_GATE)
            if arch == "arm64":  # what `--target arm64` adds: the device's golden self-test against x86
                consistency = target_consistency(outputs["int8"]["x86"], outputs["int8"]["arm64"])
                failures += consistency_failures(consistency, "arm64")
            row[f"int8_gate_{arch}"] = {
                "passed": not failures,
                "failures": failures,
                "outputs": _output_rows(metrics),
            }
        row["gate_differs"] = row["int8_gate_x86"]["passed"] != row["int8_gate_arm64"]["passed"]
    shipped = int8 if int8.exists() else case.model
    row["golden"] = _golden_on_device(case, shipped, target, workdir)
    return row


def _golden_inputs(evaluation: Path, model: Path, workdir: Path) -> Path:
    """The evaluation inputs as the model takes them: a full-int8 TFLite model takes quantized inputs."""
    from device_runtime.engines import load_engine

    (info,) = load_engine(model).inputs if evaluation.suffix == ".npy" else (None,)
    if info is None or info.dtype not in ("int8", "uint8") or info.scale is None:
        return evaluation
    values = np.load(evaluation)
    limits = np.iinfo(np.dtype(info.dtype))
    quantized = np.clip(np.round(values / info.scale) + (info.zero_point or 0), limits.min, limits.max)
    np.save(workdir / "golden_inputs.npy", quantized.astype(info.dtype))
    return workdir / "golden_inputs.npy"


def _golden_on_device(case: Case, model: Path, target: Any, workdir: Path) -> dict[str, Any]:
    """Sign a bundle with golden outputs recorded here, install it on the device: its self-test result."""
    from converters.targets import stage_device_code
    from edgekit.bundle_build import BundleRequest, build_bundle

    keys = workdir / "keys"
    subprocess.run(
        [sys.executable, "-m", "edgekit", "keygen", "-o", str(keys)],
        cwd=ROOT,
        check=True,
        capture_output=True,
    )
    bundle = workdir / "device" / f"{case.name.replace('-', '')[:32]}-1.0.0.ekb"
    bundle.parent.mkdir(exist_ok=True)
    golden = _golden_inputs(case.evaluation, model, workdir)
    try:
        build_bundle(
            BundleRequest(
                model=model,
                output=bundle,
                name=bundle.stem.split("-")[0],
                version="1.0.0",
                keys=[keys / "release.key"],
                golden=golden,
            )
        )
    except Exception as e:
        return {"model": model.name, "installed": False, "error": _short(e)}
    (keys / "release.pub").replace(bundle.parent / "release.pub")
    stage_device_code(bundle.parent / "src")
    inside = "/mnt/edgekit-golden"
    argv = [
        target.python,
        "-m",
        "device_runtime",
        "--store",
        f"{inside}/store-{target.name}",
        "--key",
        f"{inside}/release.pub",
        "--device-id",
        "bench",
        "--hardware-id",
        "bench",
        "install",
        "--json",
        f"{inside}/{bundle.name}",
    ]
    log(f"{case.name}: install {bundle.name} on {target.name} (golden self-test)")
    done = target.run(argv, {str(bundle.parent): inside}, {"PYTHONPATH": f"{inside}/src"})
    result: dict[str, Any] = {"model": model.name, "installed": done.returncode == 0}
    if done.returncode == 0:
        try:
            result["self_test_sqnr_db"] = json.loads(done.stdout).get("self_test_sqnr_db")
        except ValueError:
            result["self_test_sqnr_db"] = done.stdout.strip()[-300:]
    else:
        result["error"] = (done.stderr.strip().splitlines() or ["no output"])[-1][:300]
    # the same bundle installed here: the self-test's figures on x86, for comparison
    host = subprocess.run(
        [
            sys.executable,
            "-m",
            "device_runtime",
            *[
                a.replace(inside, str(bundle.parent)).replace(f"store-{target.name}", "store-x86")
                for a in argv[3:]
            ],
        ],
        cwd=workdir,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        check=False,
    )
    if host.returncode == 0:
        result["x86_self_test_sqnr_db"] = json.loads(host.stdout).get("self_test_sqnr_db")
    else:
        result["x86_error"] = (host.stderr.strip().splitlines() or ["no output"])[-1][:300]
    return result


def _pair_cell(rows: Any) -> str:
    """'<objective> <value>, SQNR <dB>' of the worst output; 'identical' when every output is bit-equal."""
    if not isinstance(rows, list):
        return "-" if rows is None else str(rows)[:60]
    if all(r.get("sqnr_uncapped_db") == "identical" or r.get("max_abs_error_norm") == 0.0 for r in rows):
        return "identical"
    worst = min(rows, key=lambda r: (r["objective_value"], r["sqnr_db"]))
    sqnrs = [r.get("sqnr_uncapped_db", r["sqnr_db"]) for r in rows]
    numeric = [v for v in sqnrs if isinstance(v, (int, float))]
    sqnr = f"{min(numeric):.1f} dB" if numeric else "identical"
    if not any("sqnr_uncapped_db" in r for r in rows) and min(numeric) >= 100.0:
        sqnr = ">= 100 dB"  # the gate's SQNR is capped at 100 dB
    return f"{worst['objective']} {worst['objective_value']:.4g}, SQNR {sqnr}"


def _gate_cell(row: dict[str, Any], arch: str) -> str:
    gate = row.get(f"int8_gate_{arch}")
    if gate is None:
        return "-"
    if gate["passed"]:
        worst = min(gate["outputs"], key=lambda r: r["sqnr_db"])
        return f"pass ({worst['sqnr_db']:.1f} dB)"
    if all("golden self-test" in f for f in gate["failures"]):
        return "**fail**: x86 vs arm64 < 30 dB (golden self-test)"
    return "fail"


def table(document: dict[str, Any]) -> str:
    """The cross-architecture table (Markdown) of a ``--json`` document."""
    lines = [
        "| model | int8 (x86 gate) | float: x86 vs arm64 | int8: x86 vs arm64 | int8 gate x86 | "
        "int8 gate arm64 | golden self-test on arm64 |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in document["models"]:
        if "error" in row:
            lines.append(f"| {row['model']} | {row['error'][:80]} | | | | | |")
            continue
        strategy = str(row.get("int8_strategy", "-"))
        strategy = "refused" if strategy.startswith("n/a: GateError") else strategy[:40]
        if str(row.get("int8_measured", "")).startswith("the "):
            strategy += f"; measured: {row['int8_measured'].split(' (')[0].removeprefix('the ')}"
        golden = row.get("golden", {})
        if golden.get("installed"):
            sqnrs = [
                v for v in (golden.get("self_test_sqnr_db") or {}).values() if isinstance(v, (int, float))
            ]
            shown = f", min {min(sqnrs):.1f} dB" if sqnrs else ""
            host_sqnrs = [
                v for v in (golden.get("x86_self_test_sqnr_db") or {}).values() if isinstance(v, (int, float))
            ]
            shown += f"; x86 {min(host_sqnrs):.1f} dB" if host_sqnrs else ""
            golden_cell = f"pass ({golden['model']}{shown})"
        else:
            reason = str(golden.get("error", "-")).split("engine: ")[-1]
            host_sqnrs = [
                v for v in (golden.get("x86_self_test_sqnr_db") or {}).values() if isinstance(v, (int, float))
            ]
            on_host = f"; x86 passes, {min(host_sqnrs):.1f} dB" if host_sqnrs else ""
            golden_cell = f"**refused**: {reason[:70]}{on_host}"
        lines.append(
            f"| {row['model']} ({row.get('samples', '?')} samples) | {strategy} | "
            f"{_pair_cell(row.get('float_x86_vs_arm64'))} | {_pair_cell(row.get('int8_x86_vs_arm64'))} | "
            f"{_gate_cell(row, 'x86')} | {_gate_cell(row, 'arm64')} | {golden_cell} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="the zoo's smaller input sets")
    parser.add_argument("--models", help="comma-separated zoo keys and example names (default: all)")
    parser.add_argument("--root", help="use this arm64 root as it is (default: edgekit.emulation's)")
    parser.add_argument("--python", help="the device python inside the root (default: the device venv)")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument(
        "--max-evaluations",
        type=int,
        default=20,
        help="the quantize ladder's budget (default 20, as the CLI)",
    )
    parser.add_argument(
        "--table", type=Path, metavar="JSON", help="print the Markdown table of a --json file"
    )
    args = parser.parse_args(argv)
    if args.table is not None:
        print(table(json.loads(args.table.read_text())))
        return 0

    from bench._host import cpu
    from edgekit.targets import arm64_target
    from zoo import CATALOG

    target = arm64_target(args.root, args.python)
    names = args.models.split(",") if args.models else [*CATALOG, *EXAMPLES]
    rows = []
    for name in names:
        with tempfile.TemporaryDirectory(prefix=f"bench-cross-arch-{name}-") as tmp:
            workdir = Path(tmp)
            try:
                case = (
                    _example_case(name, workdir, args.quick)
                    if name in EXAMPLES
                    else _zoo_case(name, workdir, args.quick)
                )
                rows.append(measure(case, target, workdir, args.max_evaluations))
            except Exception as e:  # a bench reports every failure and goes on
                rows.append({"model": name, "error": _short(e)})
        log(f"{name}: {json.dumps(rows[-1], default=str)[:2000]}")
    model_name, _flags, cores = cpu()
    document = {
        "host": {"cpu": model_name, "cores": cores, "machine": "x86_64"},
        "target": target.describe(),
        "gate": "default int8 gate (agreement >= 99%, SQNR >= 20 dB, role thresholds)",
        "models": rows,
    }
    text = json.dumps(document, indent=2, default=str)
    if args.json:
        args.json.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
