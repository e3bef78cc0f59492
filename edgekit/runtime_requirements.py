"""What a device needs to run a model: engine, minimum engine version, opset, taken from the model itself.

A bundle states these so a device can refuse a model it cannot run before it replaces a working one.

- ONNX: the default-domain opset maps to the first onnxruntime release that implements it; `ai.onnx.ml` is
  accepted; any other operator domain (custom operators) is refused: no device can check it has them.
- TFLite: every operator code of the flatbuffer (builtin code from `builtin_code` or, in older files,
  `deprecated_builtin_code`, plus the op version) maps to the first TFLite runtime that implements it
  (`edgekit._tflite_op_versions`, transcribed from TensorFlow's own table); the requirement is the maximum.
  The model's own `min_runtime_version` metadata, when present, can only raise it. Custom operators are
  refused, except MediaPipe's operators that stock LiteRT runs through its default XNNPACK delegate.
- `--min-runtime-version` states the requirement explicitly: it must be at least what the model's operators
  need, and it is the way to bundle operators newer than the table.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgekit.errors import EdgekitError
from signing.manifest import Runtime

__all__ = [
    "ONNXRUNTIME_FOR_OPSET",
    "Requirements",
    "RequirementsError",
    "onnx_external_data",
    "parse_version",
    "runtime_requirements",
]

# First onnxruntime release supporting each ONNX default-domain opset (onnxruntime's compatibility table,
# docs/Versioning.md). Older opsets run on every release listed here.
ONNXRUNTIME_FOR_OPSET = {
    11: "1.4",
    12: "1.5",
    13: "1.7",
    14: "1.10",
    15: "1.11",
    16: "1.12",
    17: "1.14",
    18: "1.16",
    19: "1.17",
    20: "1.18",
    21: "1.20",
    22: "1.21",
    23: "1.23",
}
_ALLOWED_DOMAINS = {"", "ai.onnx", "ai.onnx.ml"}
_VERSION = re.compile(r"^[0-9]{1,4}(\.[0-9]{1,4}){1,2}$")
_CUSTOM = 32  # BuiltinOperator.CUSTOM
_PLACEHOLDER = 127  # BuiltinOperator.PLACEHOLDER_FOR_GREATER_OP_CODES: the real code is in builtin_code


class RequirementsError(EdgekitError):
    """The model's runtime requirements cannot be stated (so it must not be bundled)."""


@dataclass(frozen=True)
class Requirements:
    """The runtime a model needs, where the figure comes from, and notes for the person bundling it."""

    runtime: Runtime
    source: str  # "operators", "operators+metadata", "--min-runtime-version"
    operators: tuple[str, ...] = ()  # TFLite: "NAME vN" per operator code; ONNX: domains used
    notes: tuple[str, ...] = field(default=())


def parse_version(text: str) -> tuple[int, ...]:
    """`2.13.0` -> (2, 13, 0); `2.13` compares equal to `2.13.0`.

    Raises:
        RequirementsError: not two or three dot-separated numbers.
    """
    if not isinstance(text, str) or not _VERSION.match(text):
        raise RequirementsError(
            f"runtime version {text!r}: expected two or three dot-separated numbers, e.g. 2.13.0"
        )
    parts = tuple(int(p) for p in text.split("."))
    return parts + (0,) * (3 - len(parts))


def runtime_requirements(model_path: Path, *, min_runtime_version: str | None = None) -> Requirements:
    """Engine, minimum version and opset of an `.onnx` or `.tflite` model, read from the model itself.

    Args:
        model_path: the model file.
        min_runtime_version: an explicit requirement (`--min-runtime-version`); must be at least what the
            model's operators need, and makes operators newer than edgekit's tables acceptable.

    Raises:
        RequirementsError: custom operators, unknown operator codes, an opset or op version no table covers
            (without an explicit version), or an explicit version below what the operators need.
    """
    if min_runtime_version is not None:
        parse_version(min_runtime_version)
    suffix = model_path.suffix.lower()
    if suffix == ".onnx":
        return _onnx_requirements(model_path, min_runtime_version)
    if suffix == ".tflite":
        return _tflite_requirements(model_path, min_runtime_version)
    raise RequirementsError(f"{model_path}: a bundle carries a .onnx or .tflite model")


def _explicit(path: Path, derived: str | None, given: str, engine: str) -> str:
    if derived is not None and parse_version(given) < parse_version(derived):
        raise RequirementsError(
            f"{path.name}: --min-runtime-version {given} is below what the model's operators need "
            f"({engine} >= {derived}); a device with {given} could not run it. Give {derived} or higher"
        )
    return given


def _onnx_requirements(path: Path, explicit: str | None) -> Requirements:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    used_domains = {node.domain for node in model.graph.node}  # imports without nodes cost nothing
    for function in model.functions:
        used_domains |= {node.domain for node in function.node}
    # Model-local functions (e.g. torch.onnx's) are defined inside the model: calling them is not custom.
    used_domains -= {function.domain for function in model.functions}
    opset = None
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx"):
            opset = int(entry.version)
    custom = sorted(d for d in used_domains if d not in _ALLOWED_DOMAINS)
    if custom:
        raise RequirementsError(
            f"{path.name}: uses operator domain(s) {custom}; a device cannot check that its onnxruntime "
            "implements custom operators, so only standard ONNX operators (domains '' and ai.onnx.ml) can "
            "be bundled: re-export without custom operators"
        )
    if opset is None:
        raise RequirementsError(f"{path.name}: declares no default-domain ONNX opset; re-export the model")
    derived = ONNXRUNTIME_FOR_OPSET.get(max(opset, min(ONNXRUNTIME_FOR_OPSET)))
    domains = tuple(sorted(d or "ai.onnx" for d in used_domains))
    if explicit is not None:
        version = _explicit(path, derived, explicit, "onnxruntime")
        return Requirements(Runtime("onnxruntime", version, opset), "--min-runtime-version", domains)
    if derived is None:
        known = f"{min(ONNXRUNTIME_FOR_OPSET)}..{max(ONNXRUNTIME_FOR_OPSET)}"
        raise RequirementsError(
            f"{path.name}: ONNX opset {opset} is newer than edgekit's onnxruntime table (opsets {known}); "
            "state the onnxruntime release that runs it with --min-runtime-version"
        )
    return Requirements(Runtime("onnxruntime", derived, opset), "operators", domains)


def onnx_external_data(path: Path) -> list[str]:
    """Locations of the model's external-data files, each checked to stay inside the model's folder.

    Raises:
        RequirementsError: a location is absolute, climbs out of the folder, or is missing (attack 12).
    """
    import onnx
    from onnx.external_data_helper import uses_external_data

    model = onnx.load(str(path), load_external_data=False)
    locations: list[str] = []
    for tensor in onnx.external_data_helper._get_all_tensors(model):
        if not uses_external_data(tensor):
            continue
        info = {entry.key: entry.value for entry in tensor.external_data}
        location = info.get("location", "")
        resolved = (path.parent / location).resolve()
        if not location or Path(location).is_absolute() or ".." in Path(location).parts or "\\" in location:
            raise RequirementsError(
                f"{path.name}: external data location {location!r} escapes the model's folder"
            )
        if not resolved.is_relative_to(path.parent.resolve()) or not resolved.is_file():
            raise RequirementsError(
                f"{path.name}: external data file {location!r} is missing or outside the folder"
            )
        if location not in locations:
            locations.append(location)
    return locations


def _read_tflite(path: Path) -> tuple[list[tuple[int, int, str | None]], str | None]:
    """(builtin code, op version, custom name) per operator code, and the min_runtime_version metadata."""
    from ai_edge_litert import schema_py_generated as schema

    data = path.read_bytes()
    if len(data) < 8 or data[4:8] != b"TFL3":
        raise RequirementsError(f"{path.name}: not a TFLite flatbuffer (no TFL3 identifier)")
    try:
        model: Any = schema.Model.GetRootAsModel(data, 0)
        codes = []
        for index in range(model.OperatorCodesLength()):
            code = model.OperatorCodes(index)
            # Schema v3a: `builtin_code` (int32) replaced `deprecated_builtin_code` (int8); old files only
            # fill the deprecated field, new ones put 127 there for codes >= 127. The real code is the max.
            builtin = max(int(code.BuiltinCode()), int(code.DeprecatedBuiltinCode()))
            custom = code.CustomCode()
            codes.append(
                (builtin, int(code.Version()), custom.decode("utf-8", "replace") if custom else None)
            )
        recorded = None
        for index in range(model.MetadataLength()):
            metadata = model.Metadata(index)
            if metadata.Name() == b"min_runtime_version":
                raw = (
                    model.Buffers(metadata.Buffer())
                    .DataAsNumpy()
                    .tobytes()
                    .rstrip(b"\0")
                    .decode("ascii", "replace")
                )
                recorded = raw if _VERSION.match(raw) else None
    except RequirementsError:
        raise
    except Exception as e:  # a malformed flatbuffer
        raise RequirementsError(f"{path.name}: not a readable TFLite flatbuffer ({e})") from e
    return codes, recorded


def _tflite_requirements(path: Path, explicit: str | None) -> Requirements:
    from ai_edge_litert import schema_py_generated as schema

    from edgekit._tflite_op_versions import MIN_RUNTIME, XNNPACK_CUSTOM_OPS

    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    codes, recorded = _read_tflite(path)
    needed: list[tuple[tuple[int, ...], str, str]] = []  # (parsed, version, "OP vN")
    uncovered: list[str] = []
    custom_ok: list[str] = []
    described: list[str] = []
    for builtin, version, custom in codes:
        name = names.get(builtin)
        if name is None or builtin == _PLACEHOLDER:
            raise RequirementsError(
                f"{path.name}: operator code {builtin} (version {version}) is not a TFLite builtin operator "
                f"known to this edgekit (known codes 0..{max(names)}); a device cannot check it runs an "
                "unknown operator. Re-export the model with a converter matching the device's LiteRT"
            )
        if builtin == _CUSTOM:
            label = custom or "<unnamed>"
            if label not in XNNPACK_CUSTOM_OPS:
                raise RequirementsError(
                    f"{path.name}: uses the custom operator {label!r}, which stock LiteRT does not implement "
                    "and no device can check for; re-export the model with builtin operators only"
                )
            custom_ok.append(label)
            described.append(f"CUSTOM {label} v{version}")
            continue
        key = f"{name} v{version}"
        described.append(key)
        runtime = MIN_RUNTIME.get((name, version))
        if runtime is None:
            uncovered.append(key)
        else:
            needed.append((parse_version(runtime), runtime, key))
    derived = max(needed)[1] if needed else None
    notes = []
    if custom_ok:
        notes.append(
            f"custom operator(s) {sorted(set(custom_ok))} run only through LiteRT's XNNPACK delegate; "
            "the device's install-time self-test checks that its runtime has them"
        )
    if explicit is not None:
        stated = _explicit(path, derived, explicit, "TFLite runtime")
        return Requirements(
            Runtime("litert", stated, None), "--min-runtime-version", tuple(described), tuple(notes)
        )
    if recorded is not None and (derived is None or parse_version(recorded) >= parse_version(derived)):
        if uncovered:
            notes.append(f"{uncovered} are newer than edgekit's op table; the model's metadata covers them")
        return Requirements(Runtime("litert", recorded, None), "metadata", tuple(described), tuple(notes))
    if uncovered:
        raise RequirementsError(
            f"{path.name}: operator version(s) {uncovered} are newer than edgekit's op-version table "
            "(TensorFlow's runtime_version.cc up to TF 2.13) and the model records no min_runtime_version; "
            "state the TFLite runtime that runs them with --min-runtime-version"
        )
    if derived is None:  # only XNNPACK custom operators, or no operators at all
        derived = "1.5.0"  # the first release in TensorFlow's table: no builtin operator raises it
    if recorded is not None:
        notes.append(f"the model's own min_runtime_version {recorded} is below what its operators need")
    return Requirements(Runtime("litert", derived, None), "operators", tuple(described), tuple(notes))
