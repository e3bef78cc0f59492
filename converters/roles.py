"""Output roles on the host: what each model output is, so the parity gate can judge it as what it is.

A role is the device's own output entry (:class:`device_runtime.preprocess.OutputSpec`, the ``outputs`` of
the ``edgekit.preprocess/v1`` spec), so the bundle carries exactly what the gate used. Roles come, by
precedence, from a ``--role OUTPUT=ROLE[,key=value...]`` option, then from the spec given with
``--preprocess``, then from the output's shape where that is unambiguous (:func:`infer_role`), else
``tensor``.

``--role`` keys (aliases of the spec's fields): ``score`` (score_threshold), ``iou`` (iou_threshold),
``max`` (max_detections), ``format``, ``scores``, ``top_k``, ``activation``, ``axis`` (class_axis),
``blank``; e.g. ``--role output0=detection,score=0.25,iou=0.5``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from converters.errors import DataError
from device_runtime.errors import SpecError
from device_runtime.preprocess import OUTPUT_KINDS, OutputSpec, load_spec
from device_runtime.preprocess import parse_output as _parse_output

__all__ = ["ROLE_KEYS", "infer_role", "load_roles", "parse_role_option", "resolve_roles"]

ROLE_KEYS = {
    "score": "score_threshold",
    "iou": "iou_threshold",
    "max": "max_detections",
    "format": "format",
    "scores": "scores",
    "top_k": "top_k",
    "activation": "activation",
    "axis": "class_axis",
    "blank": "blank",
}
# A YOLO head has many more anchors than channels (2100 anchors for 22 channels at 320x320), and its
# anchors tile strides 8, 16 and 32: (H/8)(W/8) + (H/16)(W/16) + (H/32)(W/32) = 21 (H/32)(W/32) (times 3
# anchor boxes per cell for YOLOv5), a multiple of 21. A CTC sequence [1, 40, 6625] is not.
MIN_ANCHORS_PER_CHANNEL = 8
YOLO_ANCHOR_MULTIPLE = 21


def infer_role(name: str, shape: Sequence[int], *, samples: int | None = None) -> OutputSpec:
    """The role an output's shape makes unambiguous (batch axis first), else ``tensor``.

    ``[N, C]`` with C >= 2 is classification; ``[N, 4 + C, A]`` with C >= 1, A >= 8 (4 + C) and A a
    multiple of 21 (anchors over strides 8, 16, 32) is a YOLO detection head (``[N, A, 4 + C]`` likewise,
    transposed). Segmentation, embedding, sequence and
    regression look like other things and must be declared. ``samples``: the evaluated sample count; when
    given, an output whose first axis is not the batch (a state ``[2, N, 128]``) stays a tensor.
    """
    dims = tuple(int(d) for d in shape)
    if samples is not None and (not dims or dims[0] != samples):
        return OutputSpec(name=name, kind="tensor")
    if len(dims) == 2 and dims[1] >= 2:
        return OutputSpec(name=name, kind="classification")
    if len(dims) == 3 and dims[0] >= 1:
        channels, anchors = dims[1], dims[2]
        if _yolo(channels, anchors):
            return OutputSpec(name=name, kind="detection")
        if _yolo(anchors, channels):
            return OutputSpec(name=name, kind="detection", format="yolo_transposed")
    return OutputSpec(name=name, kind="tensor")


def _yolo(channels: int, anchors: int) -> bool:
    return (
        channels >= 5
        and anchors >= MIN_ANCHORS_PER_CHANNEL * channels
        and anchors % YOLO_ANCHOR_MULTIPLE == 0
    )


def _value(text: str) -> Any:
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def parse_role_option(text: str) -> OutputSpec:
    """Parse ``OUTPUT=ROLE[,key=value...]`` into a validated output role.

    Raises:
        DataError: malformed text, an unknown key, or a value the spec's parser refuses.
    """
    head, _, rest = text.partition(",")
    name, eq, kind = head.partition("=")
    if not eq or not name or not kind:
        raise DataError(
            f"--role {text!r}: expected OUTPUT=ROLE[,key=value...] with ROLE one of "
            f"{', '.join(OUTPUT_KINDS)}, e.g. output0=detection,iou=0.5"
        )
    doc: dict[str, Any] = {"name": name, "kind": kind}
    for item in filter(None, rest.split(",")):
        key, eq, value = item.partition("=")
        if not eq or key not in ROLE_KEYS:
            raise DataError(
                f"--role {text!r}: {item!r} is not key=value with a known key (keys: {', '.join(ROLE_KEYS)})"
            )
        doc[ROLE_KEYS[key]] = _value(value)
    if doc.get("format") == "ssd":
        raise DataError(
            f"--role {text!r}: format=ssd needs its anchor grid, which only the preprocessing spec can "
            "declare (outputs[].anchors, see docs/preprocessing-spec.md); declare the role there and pass "
            "it with --preprocess"
        )
    try:
        return _parse_output(doc, f"--role {name}")
    except SpecError as e:
        raise DataError(str(e).replace("; fix the spec", "; fix the --role option")) from e


def load_roles(
    role_options: Iterable[str] = (), preprocess: str | Path | None = None
) -> dict[str, OutputSpec]:
    """Declared roles by output name: the spec's outputs, overridden by ``--role`` options.

    Raises:
        DataError: a bad option or the same output given twice; SpecError (device): a bad spec file.
    """
    roles: dict[str, OutputSpec] = {}
    if preprocess is not None:
        roles.update({o.name: o for o in load_spec(preprocess).outputs})
    seen: set[str] = set()
    for text in role_options:
        role = parse_role_option(text)
        if role.name in seen:
            raise DataError(f"--role {role.name}=... is given twice; give each output once")
        seen.add(role.name)
        roles[role.name] = role
    return roles


def resolve_roles(
    shapes: Mapping[str, Sequence[int]],
    declared: Mapping[str, OutputSpec] | None = None,
    *,
    samples: int | None = None,
) -> dict[str, OutputSpec]:
    """The role of every output in ``shapes``: declared, else inferred (:func:`infer_role`, with
    ``samples`` the evaluated sample count when known).

    Raises:
        DataError: a declared role names an output the model lacks, or a boxes- or ssd-format detection
        names a missing scores output.
    """
    declared = dict(declared or {})
    unknown = sorted(set(declared) - set(shapes))
    if unknown:
        raise DataError(
            f"roles are declared for {unknown}, but the model's outputs are {sorted(shapes)}; "
            "name outputs exactly as the model does"
        )
    # The scores output of a boxes- or ssd-format detection is judged with its boxes, not guessed at alone.
    paired = {r.scores for r in declared.values() if r.kind == "detection" and r.scores is not None}
    roles = {
        name: declared.get(name)
        or (
            OutputSpec(name=name, kind="tensor")
            if name in paired
            else infer_role(name, shape, samples=samples)
        )
        for name, shape in shapes.items()
    }
    for role in roles.values():
        if role.kind == "detection" and role.scores is not None and role.scores not in shapes:
            raise DataError(
                f"output {role.name!r}: its scores output {role.scores!r} is not among the model's "
                f"outputs {sorted(shapes)}"
            )
    return roles
