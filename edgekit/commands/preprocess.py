"""`edgekit preprocess import SOURCE -o SPEC.json`: preprocessing specs from other tools' configs."""

from __future__ import annotations

import json
from pathlib import Path

import click

from edgekit.commands._common import emit_result, handle_errors, write_json

HF_CONFIG_NAME = "preprocessor_config.json"


@click.group()
def preprocess() -> None:
    """Make edgekit.preprocess/v1 specs."""


def _read_source(source: Path) -> tuple[Path, bytes]:
    from converters.hf_import import MAX_CONFIG_BYTES
    from device_runtime.errors import SpecError

    path = source / HF_CONFIG_NAME if source.is_dir() else source
    try:
        with open(path, "rb") as f:
            return path, f.read(MAX_CONFIG_BYTES + 1)
    except OSError as e:
        raise SpecError(f"{path}: cannot read the config ({e.strerror or e}); check the path") from e


@preprocess.command("import")
@click.argument("source", type=click.Path(path_type=Path))
@click.option(
    "-o",
    "--output",
    "output",
    required=True,
    type=click.Path(path_type=Path, dir_okay=False),
    help="Write the spec (JSON) here.",
)
@click.option("--input-name", default="pixel_values", show_default=True, help="The model's image input name.")
@click.option(
    "--layout", type=click.Choice(["NCHW", "NHWC"]), default="NCHW", show_default=True, help="Tensor layout."
)
@click.option(
    "--output-name", default=None, help="Also describe this classification output (softmax, top 5)."
)
@click.option(
    "--processor-class",
    default=None,
    help="Processor class to emulate, overriding the file's image_processor_type.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the spec and notes as JSON.")
@handle_errors
def import_(
    source: Path,
    output: Path,
    input_name: str,
    layout: str,
    output_name: str | None,
    processor_class: str | None,
    as_json: bool,
) -> None:
    """Convert a Hugging Face preprocessor_config.json (SOURCE: the file or its folder) into a spec."""
    from converters.hf_import import parse_hf_json, spec_from_hf_preprocessor
    from device_runtime.errors import SpecError
    from device_runtime.preprocess import parse_spec

    path, data = _read_source(source)
    try:
        config = parse_hf_json(data)
        spec, notes = spec_from_hf_preprocessor(
            config,
            input_name=input_name,
            layout=layout,
            output_name=output_name,
            processor_class=processor_class,
        )
    except SpecError as e:
        raise SpecError(f"{path}: {e}") from e
    document = spec.to_dict()
    if parse_spec(json.loads(json.dumps(document))) != spec:  # what is written must read back the same
        raise SpecError(f"{path}: the converted spec does not read back the same; please report this")
    write_json(document, output)
    if as_json:
        emit_result({"source": str(path), "spec_path": str(output), "notes": notes, "spec": document})
        return
    click.echo(f"wrote {output} from {path}")
    for image in spec.inputs:
        shape = "x".join("N" if d is None else str(d) for d in image.shape)
        click.echo(f"  input {image.name!r}: {image.dtype} {shape}")
    for note in notes:
        click.echo(f"note: {note}", err=True)
