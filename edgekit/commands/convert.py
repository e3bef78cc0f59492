"""`edgekit convert SRC -o OUT`: export to ONNX or TFLite with proven fp32 parity."""

from __future__ import annotations

from pathlib import Path

import click

from edgekit.commands._common import (
    emit_result,
    handle_errors,
    json_flag,
    parse_input_shapes,
    parse_signature,
    signature_options,
)


@click.command()
@click.argument("source", type=click.Path(path_type=Path))
@click.option(
    "-o",
    "--output",
    required=True,
    type=click.Path(path_type=Path),
    help="Destination; the suffix picks the format (.onnx or .tflite).",
)
@click.option("--opset", default=17, show_default=True, type=click.IntRange(9, 23), help="ONNX opset.")
@click.option(
    "--input-shape",
    "input_shapes",
    multiple=True,
    metavar="NAME:D0,D1,...",
    help="Fix the shape of an input (repeatable); an ONNX model is written with these fixed dimensions.",
)
@click.option(
    "--precision",
    type=click.Choice(["float32", "float16"]),
    default="float32",
    show_default=True,
    help="TFLite output precision.",
)
@click.option(
    "--sample",
    "sample_data",
    type=click.Path(path_type=Path),
    help="Real inputs (.npy/.npz) for the parity check instead of random ones.",
)
@signature_options
@json_flag("the conversion result")
@handle_errors
def convert(
    source: Path,
    output: Path,
    opset: int,
    input_shapes: tuple[str, ...],
    precision: str,
    sample_data: Path | None,
    batch_axes: tuple[str, ...],
    states: tuple[str, ...],
    as_json: bool,
) -> None:
    """Export SOURCE (.keras, SavedModel folder, .tflite, .onnx, scikit-learn .pkl/.joblib) to OUTPUT.

    The exported model is run next to the source framework on sample inputs and written only if it
    reproduces it (top-1 agreement 100%, SQNR >= 80 dB; >= 40 dB for float16). Pickles run code when
    loaded: convert only scikit-learn files you trust.
    """
    from converters.export import convert as run_convert

    result = run_convert(
        source,
        output,
        opset=opset,
        input_shapes=parse_input_shapes(input_shapes),
        precision=precision,
        sample_data=sample_data,
        signature=parse_signature(batch_axes, states),
    )
    if as_json:
        emit_result({"output": str(result.path), "route": result.route, "parity": result.parity})
        return
    parity = result.parity
    agreement = "n/a" if parity["agreement"] is None else f"{100 * parity['agreement']:.1f}%"
    click.echo(f"wrote {result.path} ({result.path.stat().st_size:,} bytes) via {result.route}")
    click.echo(
        f"parity with the source on {parity['samples']} samples: top-1 agreement {agreement}, "
        f"SQNR {parity['sqnr_db']:.1f} dB  [PASS]"
    )
