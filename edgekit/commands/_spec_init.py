"""Build an `edgekit.preprocess/v1` document from flags and, optionally, a model's inputs (`preprocess init`).

Pure: takes the model's tensor descriptions (`device_runtime.engines.TensorInfo`) and the flags, returns
the document and notes for the user; the command validates it with `parse_spec` and writes it. Outputs
come from `--role` options, and with a model also from the shapes of the outputs not given, where the
shape makes the role unambiguous (`converters.roles.infer_role`, the rule the parity gate applies).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

__all__ = [
    "ImageFlags",
    "image_input",
    "output_document",
    "output_roles",
    "parse_floats",
    "parse_size",
    "spec_document",
]

IMAGE_DTYPES = ("float32", "uint8", "int8")


@dataclass(frozen=True)
class ImageFlags:
    """The image fields given on the command line (None: not given, so from the model or the default)."""

    size: tuple[int, int] | None = None
    dtype: str | None = None
    layout: str | None = None
    color: str | None = None
    resize: str | None = None
    interpolation: str | None = None
    center_crop: tuple[int, int] | None = None
    rescale: float | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None

    def given(self) -> bool:
        """At least one image flag was passed."""
        return any(getattr(self, f.name) is not None for f in fields(self))


def parse_size(text: str, option: str) -> tuple[int, int]:
    """`224`, `224x224`, `480x640` or `480,640` -> (H, W); raises ValueError naming `option`."""
    parts = text.lower().replace(",", "x").split("x")
    try:
        values = [int(p) for p in parts]
    except ValueError:
        values = []
    if len(values) == 1:
        values = values * 2
    if len(values) != 2 or any(v < 1 for v in values):
        raise ValueError(f"{option} {text!r}: expected H x W in pixels, e.g. 224x224 (or 224 for a square)")
    return values[0], values[1]


def parse_floats(text: str, option: str) -> tuple[float, ...]:
    """`0.485,0.456,0.406` (or one value for every channel) -> floats; raises ValueError naming `option`."""
    try:
        return tuple(float(p) for p in text.split(","))
    except ValueError:
        raise ValueError(
            f"{option} {text!r}: expected numbers separated by commas, e.g. 0.5,0.5,0.5"
        ) from None


def _image_geometry(shape: Sequence[int | None]) -> tuple[str, int, tuple[int | None, int | None]] | None:
    """(layout, channels, (H, W)) of a rank-4 image tensor, or None when it does not look like one."""
    if len(shape) != 4:
        return None
    if shape[3] in (1, 3):
        return "NHWC", int(shape[3]), (shape[1], shape[2])
    if shape[1] in (1, 3):
        return "NCHW", int(shape[1]), (shape[2], shape[3])
    return None


def image_input(name: str, flags: ImageFlags, model: Any = None) -> tuple[dict[str, Any], list[str]]:
    """One image INPUT object: the flags, else what the model's tensor `model` says, else the defaults."""
    notes: list[str] = []
    doc: dict[str, Any] = {"name": name, "kind": "image"}
    geometry = _image_geometry(model.shape) if model is not None else None
    size = flags.size
    if size is None and geometry is not None and None not in geometry[2]:
        size = (int(geometry[2][0]), int(geometry[2][1]))  # type: ignore[arg-type]
    if size is None:
        raise ValueError(
            f"input {name!r}: the image size is not known"
            + (" (the model's height and width are dynamic)" if geometry is not None else "")
            + "; pass --size HxW"
        )
    doc["size"] = list(size)
    dtype = flags.dtype or (model.dtype if model is not None and model.dtype in IMAGE_DTYPES else None)
    if dtype is not None:
        doc["dtype"] = dtype
    layout = flags.layout or (geometry[0] if geometry is not None else None)
    if layout is not None:
        doc["layout"] = layout
    color = flags.color or ("GRAY" if geometry is not None and geometry[1] == 1 else None)
    if color is not None:
        doc["color"] = color
    for key in ("resize", "interpolation", "rescale"):
        value = getattr(flags, key)
        if value is not None:
            doc[key] = value
    if flags.center_crop is not None:
        doc["center_crop"] = list(flags.center_crop)
    channels = 1 if color == "GRAY" else 3
    for key in ("mean", "std"):
        value = getattr(flags, key)
        if value is not None:
            doc[key] = list(value) * channels if len(value) == 1 else list(value)
    if model is not None and dtype in ("uint8", "int8") and model.scale:
        doc["quantization"] = {"scale": float(model.scale), "zero_point": int(model.zero_point or 0)}
        notes.append(
            f"input {name!r}: quantization scale {model.scale:g}, zero point {model.zero_point} "
            "taken from the model"
        )
    if model is not None and flags.mean is None and flags.std is None:
        notes.append(
            f"input {name!r}: a model does not record its normalization; the spec uses pixels / 255 with "
            "mean 0 and std 1: pass --mean/--std (and --rescale) if the model was trained otherwise"
        )
    if model is not None and flags.color is None and color != "GRAY":
        notes.append(f"input {name!r}: channel order assumed RGB; pass --color BGR if the model expects BGR")
    return doc, notes


def output_document(role: Any) -> dict[str, Any]:
    """An output role (`device_runtime.preprocess.OutputSpec`) as its spec object, every key written."""
    from device_runtime.preprocess import SCHEMA, PreprocessSpec

    document: dict[str, Any] = PreprocessSpec(schema=SCHEMA, inputs=(), outputs=(role,)).to_dict()
    return dict(document["outputs"][0])


def output_roles(
    output_shapes: Mapping[str, Sequence[int | None]], declared: Sequence[Mapping[str, Any]] = ()
) -> tuple[list[dict[str, Any]], list[str]]:
    """The OUTPUT objects: the `declared` ones, then each output in `output_shapes` (name: shape, batch
    axis first, None for a dynamic size) not declared whose shape makes its role unambiguous (a classifier
    [N, C], a YOLO head); notes say which were labelled and which were left out (judged as plain tensors
    unless declared)."""
    from converters.roles import infer_role
    from edgekit.commands._role_option import ROLE_NAMES

    outputs = [dict(o) for o in declared]
    given = {str(o.get("name")) for o in declared}
    notes: list[str] = []
    unclear: list[str] = []
    for name, shape in output_shapes.items():
        if name in given:
            continue
        dims = [1 if axis == 0 and d is None else d for axis, d in enumerate(shape)]
        role = None if None in dims else infer_role(name, [int(d) for d in dims if d is not None])
        shown = f"{name!r} ({'x'.join('N' if d is None else str(d) for d in shape) or 'scalar'})"
        if role is not None and role.kind != "tensor":
            outputs.append(output_document(role))
            notes.append(
                f"output {shown}: labelled {role.kind} from its shape; --role {name}=ROLE changes it"
            )
        else:
            unclear.append(shown)
    if unclear:
        notes.append(
            f"output{'s' if len(unclear) > 1 else ''} {', '.join(unclear)}: no role is clear from the shape, "
            "so the spec leaves them out and they are judged as plain tensors; declare one with "
            f"--role OUTPUT=ROLE (ROLE: {ROLE_NAMES})"
        )
    return outputs, notes


def spec_document(
    *,
    model_inputs: Sequence[Any] = (),
    image_names: Sequence[str] = (),
    flags: ImageFlags,
    outputs: Sequence[Mapping[str, Any]] = (),
    default_name: str = "image",
) -> tuple[dict[str, Any], list[str]]:
    """The spec document and notes.

    Without `model_inputs`: one image input named `image_names[0]` (else `default_name`) from the flags.
    With them: the inputs named in `image_names` (default: every rank-4 input with 1 or 3 channels) become
    image inputs, the others tensor inputs passed through with their dtype and shape. `outputs`: the
    OUTPUT objects, as given (`output_roles` adds the model's others).

    Raises:
        ValueError: a named input the model lacks, or an image whose size is unknown.
    """
    notes: list[str] = []
    inputs: list[dict[str, Any]] = []
    if not model_inputs:
        doc, more = image_input(image_names[0] if image_names else default_name, flags)
        return {"schema": "edgekit.preprocess/v1", "inputs": [doc], "outputs": list(outputs)}, more
    names = [tensor.name for tensor in model_inputs]
    missing = [n for n in image_names if n not in names]
    if missing:
        raise ValueError(f"--input-name {missing[0]!r}: the model has no such input (its inputs: {names})")
    chosen = set(image_names) or {t.name for t in model_inputs if _image_geometry(t.shape) is not None}
    for tensor in model_inputs:
        if tensor.name in chosen:
            doc, more = image_input(tensor.name, flags, tensor)
            inputs.append(doc)
            notes += more
        else:
            inputs.append(
                {"name": tensor.name, "kind": "tensor", "dtype": tensor.dtype, "shape": list(tensor.shape)}
            )
            notes.append(
                f"input {tensor.name!r}: not an image ({tensor.dtype} {list(tensor.shape)}); passed through "
                "as a tensor"
            )
    if not chosen and flags.given():
        notes.append("the model has no image-shaped input; the image flags were not used")
    return {"schema": "edgekit.preprocess/v1", "inputs": inputs, "outputs": list(outputs)}, notes
