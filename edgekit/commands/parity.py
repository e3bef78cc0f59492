"""`edgekit parity REFERENCE CANDIDATE --data DATA`: the parity contract on any two models."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from edgekit.commands._common import (
    ClickProgress,
    CommandError,
    emit_result,
    handle_errors,
    json_flag,
    parse_signature,
    signature_options,
    write_json,
)
from edgekit.commands._role_option import role_option


def gate_options(function: Any) -> Any:
    """The gate thresholds shared by `parity` and `quantize`."""
    options = [
        click.option(
            "--min-agreement",
            type=click.FloatRange(0, 1),
            default=0.99,
            show_default=True,
            help="Minimum top-1 agreement (share of samples).",
        ),
        click.option(
            "--max-drop",
            type=click.FloatRange(0),
            default=1.0,
            show_default=True,
            help="Maximum accuracy drop in percentage points (with --labels).",
        ),
        click.option("--min-sqnr", type=float, default=20.0, show_default=True, help="Minimum SQNR in dB."),
        click.option(
            "--min-cosine",
            type=click.FloatRange(-1, 1),
            default=None,
            help="Minimum cosine similarity (off by default).",
        ),
    ]
    options.append(
        role_option(
            "Declare an output's role and its decoding.",
            example="output0=detection,score=0.25,iou=0.5",
            tail="Overrides the --preprocess spec's outputs; the others are inferred from their shape.",
        )
    )
    for option in reversed(options):
        function = option(function)
    return function


def target_option(function: Any) -> Any:
    """`--target host|arm64`: where the candidate's figures are measured (shared by parity and quantize)."""
    return click.option(
        "--target",
        type=click.Choice(["host", "arm64"]),
        default="host",
        show_default=True,
        help="Where the candidate runs for the gate: this host, or the emulated arm64 device (QEMU, "
        "Cortex-A72; the root is built on first use). The float reference always runs on this host.",
    )(function)


def print_summary(report: dict[str, Any]) -> None:
    """Human summary of a parity report."""
    verdict = "PASS" if report["passed"] else "FAIL"
    click.echo(f"parity on {report['samples']} samples: {verdict}")
    click.echo(f"  reference  {report['reference']['path']} ({report['reference']['engine']})")
    click.echo(f"  candidate  {report['candidate']['path']} ({report['candidate']['engine']})")
    target = report.get("target", {}).get("candidate")
    if target and target.get("name") != "host":
        emulated = f"emulated, {target.get('cpu', 'unknown CPU')}" if target.get("emulated") else "device"
        click.echo(f"  measured   candidate on {target['name']} ({target['machine']}, {emulated})")
    for output in report["outputs"]:
        parts = []
        if output["agreement"] is not None:
            parts.append(f"agreement {100 * output['agreement']:.2f}%")
        if output["accuracy_drop_pp"] is not None:
            parts.append(
                f"accuracy {100 * output['accuracy_reference']:.2f}% -> "
                f"{100 * output['accuracy_candidate']:.2f}% ({-output['accuracy_drop_pp']:+.2f} pp)"
            )
        parts += [
            f"SQNR {output['sqnr_db']:.2f} dB",
            f"cosine {output['cosine']:.5f}",
            f"max err {output['max_abs_error_norm']:.4f} (of max |x|)",
        ]
        click.echo(f"  {output['name']} ({output.get('role', 'tensor')}): " + ", ".join(parts))
        if output.get("judged_with"):
            click.echo(
                f"    judged with its detection output {output['judged_with']!r} (its recall, precision and "
                "score SQNR): the figures above are shown, not gated"
            )
        role_line = _role_line(output)
        if role_line:
            click.echo(f"    {role_line}")
    for failure in report["failures"]:
        click.echo(f"  failed: {failure}")


def _role_line(output: dict[str, Any]) -> str:
    """The role's own figures in one line ('' for classification and tensor)."""
    m, role = output.get("role_metrics") or {}, output.get("role")
    if role == "detection":
        matched = (
            f", matched scores: SQNR {m['matched_score_sqnr_db']:.2f} dB, max difference "
            f"{m['matched_score_max_difference']:.4f}"
            if m.get("matched_score_sqnr_db") is not None
            else ""
        )
        return (
            f"detections: recall {m['recall']:.3f}, precision {m['precision']:.3f}, class-score SQNR "
            f"{m['score_sqnr_db']:.2f} dB, box SQNR {m['box_sqnr_db']:.2f} dB, detections "
            f"{m['reference_detections']} -> {m['candidate_detections']}, images with a detection "
            f"{m['reference_images_with_detections']} -> {m['candidate_images_with_detections']}{matched}"
        )
    if role == "segmentation":
        return f"mask mean IoU {m['miou']:.4f}, pixel agreement {m['pixel_agreement']:.4f}"
    if role == "embedding":
        nn = m["neighbour_agreement"]
        shown = "n/a" if nn is None else f"{nn:.3f} (k={m['neighbour_k']})"
        return f"cosine mean {m['mean_cosine']:.5f}, min {m['min_cosine']:.5f}, neighbour agreement {shown}"
    if role == "sequence":
        return f"step agreement {m['step_agreement']:.4f}, exact decodes {m['exact_rate']:.4f}"
    if role == "regression":
        return f"relative error {m['relative_error']:.4f} (worst sample {m['max_sample_relative_error']:.4f})"
    return ""


@click.command()
@click.argument("reference", type=click.Path(path_type=Path))
@click.argument("candidate", type=click.Path(path_type=Path))
@click.option(
    "--data",
    required=True,
    type=click.Path(path_type=Path),
    help="Evaluation data: .npy, .npz (per input name) or a folder of images (with --preprocess).",
)
@click.option("--labels", type=click.Path(path_type=Path), help="Integer class ids (.npy), one per sample.")
@click.option("--preprocess", type=click.Path(path_type=Path), help="Preprocessing spec for image folders.")
@click.option("--samples", type=click.IntRange(1), default=None, help="Evaluate at most this many samples.")
@signature_options
@gate_options
@target_option
@click.option("--report", "report_path", type=click.Path(path_type=Path), help="Write the JSON report here.")
@click.option("--html", "html_path", type=click.Path(path_type=Path), help="Write the HTML report here.")
@json_flag("the parity report")
@handle_errors
def parity(
    reference: Path,
    candidate: Path,
    data: Path,
    labels: Path | None,
    preprocess: Path | None,
    samples: int | None,
    batch_axes: tuple[str, ...],
    states: tuple[str, ...],
    min_agreement: float,
    max_drop: float,
    min_sqnr: float,
    min_cosine: float | None,
    roles: tuple[str, ...],
    target: str,
    report_path: Path | None,
    html_path: Path | None,
    as_json: bool,
) -> None:
    """Compare CANDIDATE with REFERENCE (ONNX or TFLite, either engine) on DATA; exit 1 if the gate fails.

    Each output is judged as its role (--role, the --preprocess spec's outputs, else inferred from its
    shape): a detector by recall and precision of its detections after NMS, not by whole-tensor SQNR.
    With --target arm64 the candidate runs in the emulated arm64 device and the gate judges those outputs."""
    from converters._quiet import load_engine
    from converters.data import load_dataset, load_labels
    from converters.parity import Gate, parity_report
    from converters.report_html import write_html
    from converters.roles import load_roles
    from edgekit.targets import resolve_target

    declared = load_roles(roles, preprocess)
    progress = ClickProgress(quiet=as_json)
    engine = load_engine(reference)
    dataset = load_dataset(
        data,
        engine.inputs,
        max_samples=samples,
        preprocess=preprocess,
        signature=parse_signature(batch_axes, states),
        outputs=engine.outputs,
    )
    label_array = load_labels(labels, dataset) if labels is not None else None
    gate = Gate(
        min_agreement=min_agreement, max_drop_pp=max_drop, min_sqnr_db=min_sqnr, min_cosine=min_cosine
    )
    report = parity_report(
        reference,
        candidate,
        dataset,
        gate=gate,
        labels=label_array,
        progress=progress,
        roles=declared,
        target=resolve_target(target),
    )
    if report_path is not None:
        write_json(report, report_path)
    if html_path is not None:
        write_html(report, html_path)
    if as_json and not report["passed"]:
        error = CommandError(
            "the parity gate failed: " + "; ".join(report["failures"]),
            code="GateFailed",
            hint="see the figures; loosen a gate only with --min-agreement, --max-drop, --min-sqnr or "
            "--min-cosine if the use case allows it",
        )
        error.report = report  # type: ignore[attr-defined]
        raise error
    if as_json:
        emit_result(report)
    else:
        print_summary(report)
    if not report["passed"]:
        raise SystemExit(1)
