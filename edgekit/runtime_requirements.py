"""What a device needs to run a model: engine, minimum engine version, opset.

A bundle must state these so a device can refuse a model it cannot run before it replaces a working one.
ONNX: the default-domain opset maps to the first onnxruntime release that implements it; `ai.onnx.ml` is
accepted, any other custom domain is refused. TFLite: the converter records `min_runtime_version` in the
model's metadata; a model without it cannot state its requirements and is refused.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from signing.manifest import Runtime

__all__ = ["ONNXRUNTIME_FOR_OPSET", "RequirementsError", "onnx_external_data", "runtime_requirements"]

# First onnxruntime release supporting each ONNX default-domain opset (onnxruntime's compatibility table).
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
_VERSION = re.compile(rb"^[0-9]+(\.[0-9]+){1,2}$")


class RequirementsError(Exception):
    """The model's runtime requirements cannot be stated (so it must not be bundled)."""


def runtime_requirements(model_path: Path) -> Runtime:
    """Engine, minimum version and opset for an `.onnx` or `.tflite` model.

    Raises:
        RequirementsError: unknown opset, custom operator domains, or TFLite without min_runtime_version.
    """
    suffix = model_path.suffix.lower()
    if suffix == ".onnx":
        return _onnx_requirements(model_path)
    if suffix == ".tflite":
        return Runtime("litert", _tflite_min_runtime(model_path), None)
    raise RequirementsError(f"{model_path}: a bundle carries a .onnx or .tflite model")


def _onnx_requirements(path: Path) -> Runtime:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    used_domains = {node.domain for node in model.graph.node}  # imports without nodes cost nothing
    opset = None
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx"):
            opset = int(entry.version)
        elif entry.domain in used_domains and entry.domain not in _ALLOWED_DOMAINS:
            raise RequirementsError(
                f"{path.name}: uses operator domain {entry.domain!r}; only standard ONNX operators can be "
                "stated as runtime requirements (re-export without custom operators)"
            )
    if opset is None or opset not in ONNXRUNTIME_FOR_OPSET:
        known = f"{min(ONNXRUNTIME_FOR_OPSET)}..{max(ONNXRUNTIME_FOR_OPSET)}"
        raise RequirementsError(
            f"{path.name}: ONNX opset {opset} has no known minimum onnxruntime release (known: {known}); "
            "re-export with a supported opset (`edgekit convert --opset`)"
        )
    return Runtime("onnxruntime", ONNXRUNTIME_FOR_OPSET[opset], opset)


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


def _tflite_min_runtime(path: Path) -> str:
    from ai_edge_litert import schema_py_generated as schema

    data = path.read_bytes()
    try:
        model: Any = schema.Model.GetRootAsModel(data, 0)
        for index in range(model.MetadataLength()):
            metadata = model.Metadata(index)
            if metadata.Name() == b"min_runtime_version":
                raw = model.Buffers(metadata.Buffer()).DataAsNumpy().tobytes().rstrip(b"\0")
                if _VERSION.match(raw):
                    return raw.decode()
    except Exception as e:  # a malformed flatbuffer
        raise RequirementsError(f"{path.name}: not a readable TFLite flatbuffer ({e})") from e
    raise RequirementsError(
        f"{path.name}: the TFLite model does not record min_runtime_version, so its runtime requirements "
        "cannot be stated; convert it with a current TFLite converter (edgekit convert)"
    )
