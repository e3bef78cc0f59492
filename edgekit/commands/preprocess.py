"""`edgekit preprocess init|import -o SPEC.json`: write a preprocessing spec from flags, a model's inputs or
another tool's config."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from edgekit.commands._common import CommandError, emit_result, handle_errors, json_flag, write_json
from edgekit.commands._role_option import role_option

HF_CONFIG_NAME = "preprocessor_config.json"


@click.group()
def preprocess() -> None:
    """Preprocessing specs (edgekit.preprocess/v1): init (from flags or a model), import (Hugging Face)."""


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
@json_flag("the spec and notes")
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
    _print_spec(spec)
    for note in notes:
        click.echo(f"note: {note}", err=True)


def _choice(*values: str) -> click.Choice:
    return click.Choice(list(values))


@preprocess.command("init")
@click.option(
    "-o",
    "--output",
    "output",
    required=True,
    type=click.Path(path_type=Path, dir_okay=False),
    help="Write the spec (JSON) here; refused if it exists, unless --force.",
)
@click.option(
    "--from-model",
    "model",
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    help="Read the inputs (names, dtypes, image size and layout) from this .onnx or .tflite model.",
)
@click.option(
    "--input-name",
    "input_names",
    multiple=True,
    help="The image input's name (repeatable). Default: 'image', or with --from-model every 4-D input "
    "with 1 or 3 channels; the model's other inputs are passed through as tensors.",
)
@click.option(
    "--size", help="Image height x width in pixels after resizing, e.g. 224x224 (default: the model's)."
)
@click.option(
    "--dtype", type=_choice("float32", "uint8", "int8"), help="Image tensor dtype [default: float32]."
)
@click.option(
    "--layout", type=_choice("NHWC", "NCHW"), help="Image tensor layout [default: NHWC or the model's]."
)
@click.option("--color", type=_choice("RGB", "BGR", "GRAY"), help="Channel order [default: RGB].")
@click.option(
    "--resize",
    type=_choice("stretch", "shortest_edge", "letterbox"),
    help="How an image is fitted to --size [default: stretch].",
)
@click.option(
    "--interpolation",
    type=_choice("nearest", "bilinear", "bicubic", "area"),
    help="Resampling filter [default: bilinear].",
)
@click.option(
    "--center-crop", help="Crop H x W from the resized image's centre, e.g. 224x224 (default: none)."
)
@click.option(
    "--rescale", type=click.FloatRange(0, 65536, min_open=True), help="Pixel scale factor [default: 1/255]."
)
@click.option("--mean", help="Mean per channel after rescaling, e.g. 0.485,0.456,0.406 [default: 0].")
@click.option(
    "--std", help="Standard deviation per channel after rescaling, e.g. 0.229,0.224,0.225 [default: 1]."
)
@role_option(
    "Describe an output: how the parity gate judges it and the device decodes it.",
    example="logits=classification,activation=softmax",
    tail="With --from-model, outputs not given are labelled by role where their shape makes it clear.",
)
@click.option("--force", is_flag=True, help="Replace an existing --output file.")
@json_flag("the spec and notes")
@handle_errors
def init(
    output: Path,
    model: Path | None,
    input_names: tuple[str, ...],
    size: str | None,
    dtype: str | None,
    layout: str | None,
    color: str | None,
    resize: str | None,
    interpolation: str | None,
    center_crop: str | None,
    rescale: float | None,
    mean: str | None,
    std: str | None,
    roles: tuple[str, ...],
    force: bool,
    as_json: bool,
) -> None:
    """Write a preprocessing spec from flags, or from a model's inputs (--from-model) and flags.

    The spec is validated (as a device would read it) before it is written, atomically.
    """
    from converters.roles import parse_role_option
    from device_runtime.errors import SpecError
    from device_runtime.preprocess import parse_spec
    from edgekit.commands._spec_init import (
        ImageFlags,
        output_document,
        output_roles,
        parse_floats,
        parse_size,
        spec_document,
    )

    if output.exists() and not force:
        raise CommandError(f"{output} exists", code="OutputExists", hint="pass --force to replace it")
    try:
        flags = ImageFlags(
            size=None if size is None else parse_size(size, "--size"),
            dtype=dtype,
            layout=layout,
            color=color,
            resize=resize,
            interpolation=interpolation,
            center_crop=None if center_crop is None else parse_size(center_crop, "--center-crop"),
            rescale=rescale,
            mean=None if mean is None else parse_floats(mean, "--mean"),
            std=None if std is None else parse_floats(std, "--std"),
        )
    except ValueError as e:
        raise click.UsageError(str(e)) from None
    engine: Any = None
    if model is not None:
        from converters._quiet import load_engine

        engine = load_engine(model)
    outputs = [output_document(parse_role_option(text)) for text in roles]
    try:
        document, notes = spec_document(
            model_inputs=tuple(engine.inputs) if engine is not None else (),
            image_names=input_names,
            flags=flags,
            outputs=outputs,
        )
        spec = parse_spec(document)
        if engine is not None:  # what bundle would refuse is refused now, before anything is written
            from device_runtime.preprocess import check_against_model

            document["outputs"], more = output_roles(_output_shapes(engine, spec), outputs)
            notes += more
            spec = parse_spec(document)
            check_against_model(
                spec,
                {t.name: (t.shape, t.dtype) for t in engine.inputs},
                model_outputs={t.name: (t.shape, t.dtype) for t in engine.outputs},
                model_quantization={t.name: (t.scale or 0.0, t.zero_point or 0) for t in engine.inputs},
            )
    except ValueError as e:
        raise CommandError(str(e), code="SpecError") from None
    except SpecError as e:
        # The spec was built from this command's options: say which one to change, not "fix the spec".
        fix = "; fix --role OUTPUT=ROLE" if str(e).startswith("outputs[") else "; fix the options"
        raise SpecError(f"{output}: " + str(e).replace("; fix the spec", fix)) from e
    written = spec.to_dict()
    write_json(written, output)
    if as_json:
        emit_result(
            {
                "spec_path": str(output),
                "model": None if model is None else str(model),
                "notes": notes,
                "spec": written,
            }
        )
        return
    click.echo(f"wrote {output}" + (f" from the inputs of {model}" if model is not None else ""))
    _print_spec(spec)
    for note in notes:
        click.echo(f"note: {note}", err=True)


def _output_shapes(engine: Any, spec: Any) -> dict[str, tuple[int | None, ...]]:
    """The model's output shapes, as the model declares them or, where a size there is dynamic (a
    detector's anchor count follows the image size), as one run on a blank input of the spec's size gives
    them. The declared shapes when the run cannot be made (a dynamic input the spec does not size)."""
    import numpy as np

    from device_runtime.preprocess import ImageInputSpec

    declared = {t.name: tuple(t.shape) for t in engine.outputs}
    if all(d is not None for shape in declared.values() for d in shape[1:]):
        return declared
    feeds = {}
    for item in spec.inputs:
        shape = (1, *item.shape[1:])
        if not isinstance(item, ImageInputSpec) and (not item.shape or None in shape):
            return declared  # a scalar (its meaning unknown: zero may be refused) or an unsized axis
        feeds[item.name] = np.zeros(shape, dtype=item.dtype)
    try:
        ran = engine.run(feeds)
    except Exception:  # the model refuses a blank input: fall back to what it declares
        return declared
    return {
        name: (None, *np.shape(ran[name])[1:]) if name in ran else shape for name, shape in declared.items()
    }


def _print_spec(spec: Any) -> None:
    from device_runtime.preprocess import ImageInputSpec

    for item in spec.inputs:
        if isinstance(item, ImageInputSpec):
            described = f"image {item.dtype} {item.size[0]}x{item.size[1]} {item.layout} {item.color}"
        else:
            shape = "x".join("N" if d is None else str(d) for d in item.shape)
            described = f"tensor {item.dtype} {shape or 'scalar'}"
        click.echo(f"  input {item.name!r}: {described}")
    for output in spec.outputs:
        click.echo(f"  output {output.name!r}: {output.kind}")
