"""`edgekit quantize MODEL -o OUT --calibration DATA`: int8 / fp16 behind the parity gate."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from edgekit.commands._common import (
    ClickProgress,
    emit_result,
    handle_errors,
    json_flag,
    parse_signature,
    signature_options,
    write_json,
)
from edgekit.commands.parity import gate_options, print_summary, target_option


@click.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.option(
    "-o",
    "--output",
    required=True,
    type=click.Path(path_type=Path),
    help="Destination .onnx (from an ONNX model) or .tflite (from .keras / SavedModel).",
)
@click.option(
    "--calibration",
    required=True,
    type=click.Path(path_type=Path),
    help="Calibration data: .npy, .npz (per input name) or a folder of images (with --preprocess).",
)
@click.option(
    "--eval",
    "eval_data",
    type=click.Path(path_type=Path),
    help="Evaluation data for the gate (default: the calibration data).",
)
@click.option(
    "--labels",
    type=click.Path(path_type=Path),
    help="Integer class ids (.npy) for the evaluation data: enables the accuracy-drop check.",
)
@click.option("--preprocess", type=click.Path(path_type=Path), help="Preprocessing spec for image folders.")
@click.option(
    "--mode",
    type=click.Choice(["auto", "static", "dynamic", "fp16"]),
    default="auto",
    show_default=True,
    help="auto: static int8 strategies, then dynamic int8 for MatMul-heavy models; or force one mode.",
)
@click.option(
    "--preset",
    type=click.Choice(["auto", "x86", "x86-reduce-range", "arm"]),
    default="auto",
    show_default=True,
    help="Static int8 target: x86 = uint8 activations + int8 per-channel weights; arm = symmetric int8. "
    "auto: by this host's CPU, or arm with --target arm64.",
)
@click.option(
    "--per-tensor",
    is_flag=True,
    help="Force per-tensor weight scales (default: per-channel first, +9 dB on CNNs; the other if it fails).",
)
@click.option(
    "--calibration-method",
    type=click.Choice(["minmax", "entropy", "percentile", "distribution"]),
    default=None,
    help="Force one calibration method (default: minmax, then percentile/entropy on outliers). "
    "'distribution' is refused for int8 (it yields garbage).",
)
@click.option(
    "--samples",
    type=click.IntRange(1),
    default=256,
    show_default=True,
    help="Calibration samples, drawn deterministically from --seed.",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the calibration sampling.")
@signature_options
@gate_options
@target_option
@click.option(
    "--no-repair", is_flag=True, help="Do not search for nodes to keep in float when the gate fails."
)
@click.option(
    "--max-evaluations",
    type=click.IntRange(1, 100),
    default=20,
    show_default=True,
    help="Bound on candidate evaluations (strategies and repair together).",
)
@click.option(
    "--require-speedup",
    is_flag=True,
    help="Refuse a model measured slower than float on this host (default: a warning; the host is "
    "not the device).",
)
@click.option("--allow-slower", is_flag=True, hidden=True, help="Deprecated no-op (slower is now a warning).")
@click.option("--skip-latency", is_flag=True, help="Do not measure latency (no speed check).")
@click.option("--report", "report_path", type=click.Path(path_type=Path), help="Write the JSON report here.")
@click.option("--html", "html_path", type=click.Path(path_type=Path), help="Write the HTML report here.")
@json_flag("the parity report")
@handle_errors
def quantize(
    model: Path,
    output: Path,
    calibration: Path,
    eval_data: Path | None,
    labels: Path | None,
    preprocess: Path | None,
    mode: str,
    preset: str,
    per_tensor: bool,
    calibration_method: str | None,
    samples: int,
    seed: int,
    batch_axes: tuple[str, ...],
    states: tuple[str, ...],
    min_agreement: float,
    max_drop: float,
    min_sqnr: float,
    min_cosine: float | None,
    roles: tuple[str, ...],
    target: str,
    no_repair: bool,
    max_evaluations: int,
    require_speedup: bool,
    allow_slower: bool,
    skip_latency: bool,
    report_path: Path | None,
    html_path: Path | None,
    as_json: bool,
) -> None:
    """Quantize MODEL and write OUTPUT only if it passes the parity gate.

    For ONNX, strategies are tried in order until one passes: the preset, pre-processing without graph
    fusions, int8 Conv/MatMul/Gemm only, other calibration methods, the other weight granularity, dynamic
    int8, then the nodes that lose the most SQNR kept in float (bisection), within the evaluation budget.
    Speed on this host is reported; slower is a warning, and refused only on request. Same inputs and
    seed give identical bytes. With --target arm64 every candidate is judged on its outputs in the
    emulated arm64 device, so the ladder and the repair fix what fails on ARM.
    """
    from converters.errors import GateError, QuantizationError
    from converters.latency import LatencyConfig
    from converters.parity import Gate
    from converters.quantize import QuantizeOptions
    from converters.quantize import quantize as run_quantize
    from converters.report_html import write_html
    from converters.roles import load_roles
    from edgekit.targets import resolve_target

    progress = ClickProgress(quiet=as_json)
    if allow_slower:
        progress.note(
            "--allow-slower is deprecated and has no effect: a slower model is a warning unless "
            "--require-speedup is given"
        )
    options = QuantizeOptions(
        mode=mode,
        preset=preset,
        per_channel=False if per_tensor else None,
        calibration_method=calibration_method,
        samples=samples,
        seed=seed,
        gate=Gate(
            min_agreement=min_agreement, max_drop_pp=max_drop, min_sqnr_db=min_sqnr, min_cosine=min_cosine
        ),
        repair=not no_repair,
        max_evaluations=max_evaluations,
        require_speedup=require_speedup,
        latency=None if skip_latency else LatencyConfig(),
        preprocess=preprocess,
        signature=parse_signature(batch_axes, states),
        roles=load_roles(roles, preprocess),
        target=resolve_target(target),
    )
    report: dict[str, Any] | None = None
    try:
        result = run_quantize(
            model, output, calibration, eval_data=eval_data, labels=labels, options=options, progress=progress
        )
        report = result.report
    except QuantizationError as e:
        if e.report is not None:  # no candidate could be built: the report lists the strategies tried
            written = _write_reports(e.report, report_path, None, write_html)
            if not as_json:
                _print_extras(e.report)
                _note_reports(written)
        raise
    except GateError as e:
        if e.report is not None:
            written = _write_reports(e.report, report_path, html_path, write_html)
            if not as_json:
                print_summary(e.report)
                _print_extras(e.report)
                _note_reports(written)
        raise
    _write_reports(report, report_path, html_path, write_html)
    if as_json:
        emit_result(report)
        return
    print_summary(report)
    _print_extras(report)
    size, reference_size = report["candidate"]["size_bytes"], report["reference"]["size_bytes"]
    ratio = (
        f"{reference_size / size:.2f}x smaller"
        if size <= reference_size
        else f"{size / reference_size:.2f}x larger"
    )
    click.echo(f"wrote {output} ({size:,} bytes, {ratio})")
    chosen: dict[str, Any] = next(
        (row for row in report.get("quantization", {}).get("strategies") or [] if row.get("chosen")), {}
    )
    if chosen.get("nodes_quantized") == 0 and mode != "fp16":
        click.echo(
            f"note: no node of {model.name} could be quantized, so {output.name} is a float model; "
            f"bundle {model.name} itself",
            err=True,
        )


def _write_reports(
    report: dict[str, Any], report_path: Path | None, html_path: Path | None, write_html: Any
) -> list[Path]:
    written = []
    if report_path is not None:
        write_json(report, report_path)
        written.append(report_path)
    if html_path is not None:
        write_html(report, html_path)
        written.append(html_path)
    return written


def _note_reports(written: list[Path]) -> None:
    """The error ends "Nothing was written": true of the model; say where the reports of the run went."""
    if written:
        click.echo(
            f"note: no model was written; this run's report is in {' and '.join(map(str, written))}", err=True
        )


def _print_extras(report: dict[str, Any]) -> None:
    quantization = report.get("quantization", {})
    strategies = quantization.get("strategies") or []
    if strategies:
        click.echo("strategies tried:")
        for row in strategies:
            click.echo("  " + _strategy_line(row))
        if quantization.get("choice"):
            click.echo(f"chosen: {quantization['choice']}")
    repair = report.get("repair")
    if repair:
        excluded = repair["excluded_nodes"]
        if excluded:
            click.echo(
                f"repair: {len(excluded)} of {repair['quantizable_nodes']} quantized nodes kept in float "
                f"after {_count(repair['evaluations'], 'evaluation')} ({repair['stopped_because']})"
            )
        else:  # nothing passed: say what was tried, not "0 kept"
            click.echo(
                f"repair: no set of nodes kept in float passed, of {repair['quantizable_nodes']} quantized "
                f"nodes, after {_count(repair['evaluations'], 'evaluation')} ({repair['stopped_because']})"
            )
        for name in excluded:
            click.echo(f"  float: {name}")
        before, after = repair["before"], repair.get("after", {})
        if excluded:
            click.echo(f"  SQNR {before['sqnr_db']:.2f} -> {after.get('sqnr_db', float('nan')):.2f} dB")
        else:  # no passing set: the best one tried says how far float nodes went, not "x -> x"
            candidates = repair.get("candidates") or []
            tried = [c for c in candidates if c.get("excluded") and c.get("sqnr_db") is not None]
            best = max(tried, key=lambda c: c["sqnr_db"], default=None)
            if best is not None:
                click.echo(
                    f"  SQNR {before['sqnr_db']:.2f} dB before the repair; the best set tried, "
                    f"{best['excluded']} node(s) in float, reached {best['sqnr_db']:.2f} dB"
                )
    latency = report.get("latency")
    if latency:
        from converters.quantize import speed_words

        for batch in latency["batch_sizes"]:
            key = str(batch)
            interval = latency.get("per_batch", {}).get(key, {}).get("speedup_interval")
            spread = f", 95% interval {interval[0]:.2f}-{interval[1]:.2f}x" if interval else ""
            click.echo(
                f"latency batch {batch}: float {latency['reference_ms'][key]:.3f} ms, quantized "
                f"{latency['candidate_ms'][key]:.3f} ms ({latency['ratio'][key]:.2f}x speed-up{spread})"
            )
        click.echo(f"speed on this host: {latency['verdict']} ({speed_words(latency)})")


def _strategy_line(row: dict[str, Any]) -> str:
    mark = "*" if row.get("chosen") else " "
    if row.get("error"):
        return f"{mark} {row['name']:<13} error: {row['error'][:300]}"
    metrics = row.get("metrics") or {}
    figures = []
    if metrics.get("agreement") is not None:
        figures.append(f"agreement {100 * metrics['agreement']:.2f}%")
    if metrics.get("sqnr_db") is not None:
        figures.append(f"SQNR {metrics['sqnr_db']:.2f} dB")
    if row.get("size_bytes"):
        figures.append(f"{row['size_bytes']:,} bytes")
    if row.get("nodes_quantized") is not None:
        figures.append(f"{row['nodes_quantized']} int8 nodes")
    verdict = "pass" if row.get("passed") else "fail"
    return f"{mark} {row['name']:<13} {verdict}: {', '.join(figures)}"


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}" + ("" if number == 1 else "s")
