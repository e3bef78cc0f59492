"""Keras (`.keras`) and SavedModel sources, normalized to one SavedModel with a named signature.

Keras 3 models cannot go through `tf2onnx.convert.from_keras` (KeyError 'keras_tensor_N'), so every
TensorFlow source becomes a `tf.function` with an explicit input signature whose outputs are a dict keyed
by output name. The same function feeds tf2onnx (ONNX) and, saved as a SavedModel, the TFLite converter,
so ONNX and TFLite models carry the same input and output names.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from converters._quiet import quiet_import
from converters.errors import ModelInputError, explain
from device_runtime.engines import TensorInfo

__all__ = ["TFSource", "is_savedmodel_dir", "load_tf_source"]

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


@dataclass
class TFSource:
    """A TensorFlow model reduced to a signature function and the SavedModel that holds it."""

    function: Any  # tf.types.experimental.GenericFunction with a fixed input signature
    input_signature: list[Any]  # tf.TensorSpec, named
    output_names: list[str]
    saved_model_dir: Path
    inputs: tuple[TensorInfo, ...]

    def predict(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the source framework itself (the reference every export is proven against)."""
        args = [feeds[spec.name] for spec in self.input_signature]
        outputs = self.function(*args)
        return {name: np.asarray(outputs[name]) for name in self.output_names}


def is_savedmodel_dir(path: Path) -> bool:
    """True for a folder holding a TensorFlow SavedModel."""
    return path.is_dir() and (path / "saved_model.pb").is_file()


def load_tf_source(
    path: str | Path, workdir: Path, input_shapes: dict[str, list[int]] | None = None
) -> TFSource:
    """Load a `.keras` file or a SavedModel folder as a TFSource.

    Args:
        path: the model.
        workdir: a private temporary folder; a `.keras` model is re-saved there as a SavedModel.
        input_shapes: fixed shapes for inputs with dynamic non-batch dimensions.

    Raises:
        ModelInputError: unreadable model, or no serving signature.
    """
    tf = quiet_import("tensorflow")

    path = Path(path)
    if path.is_dir():
        if not is_savedmodel_dir(path):
            raise ModelInputError(f"{path}: a folder but not a SavedModel (no saved_model.pb)")
        return _from_savedmodel(tf, path, input_shapes)
    return _from_keras(tf, path, workdir, input_shapes)


def _shape_for(name: str, shape: Any, input_shapes: dict[str, list[int]] | None) -> list[int | None]:
    dims: list[int | None] = [None if d is None else int(d) for d in shape]
    if input_shapes and name in input_shapes:
        fixed = input_shapes[name]
        if len(fixed) != len(dims):
            raise ModelInputError(f"--input-shape {name}: {len(fixed)} dims given, the model has {len(dims)}")
        return [None if i == 0 else int(d) for i, d in enumerate(fixed)]
    if dims and any(d is None for d in dims[1:]):
        error = ModelInputError(f"input {name!r} has dynamic dimensions {dims}")
        error.option_hints = {"--input-shape": f"fix them with --input-shape {name}:1,..."}  # type: ignore[attr-defined]
        raise error
    return [None, *dims[1:]]


def _from_keras(tf: Any, path: Path, workdir: Path, input_shapes: dict[str, list[int]] | None) -> TFSource:
    keras = quiet_import("keras")

    if path.suffix not in (".keras", ".h5"):
        raise ModelInputError(f"{path}: expected a .keras file or a SavedModel folder")
    try:
        model = keras.models.load_model(path, compile=False)
    except Exception as e:
        raise ModelInputError(f"{path}: Keras cannot load the model ({explain(e)}); re-save it") from e
    names = [_clean(t.name) or f"input_{i}" for i, t in enumerate(model.inputs)]
    specs = [
        tf.TensorSpec(_shape_for(n, t.shape, input_shapes), t.dtype, name=n)
        for n, t in zip(names, model.inputs, strict=True)
    ]
    output_names = _keras_output_names(model)

    def serve(*args: Any) -> dict[str, Any]:
        outputs = model(list(args) if len(args) > 1 else args[0], training=False)
        if not isinstance(outputs, list | tuple):
            outputs = [outputs]
        return dict(zip(output_names, outputs, strict=True))

    function = tf.function(serve, input_signature=specs)
    target = workdir / "savedmodel"
    # ExportArchive tracks the Keras variables; a plain tf.Module leaves READ_VARIABLE ops in TFLite
    # models that then output NaN.
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(name="serve", fn=serve, input_signature=specs)
    try:
        archive.write_out(str(target), verbose=False)
    except Exception as e:
        raise ModelInputError(f"{path}: cannot be saved as a SavedModel ({explain(e)})") from e
    return TFSource(function, specs, output_names, target, _infos(specs))


def _from_savedmodel(tf: Any, path: Path, input_shapes: dict[str, list[int]] | None) -> TFSource:
    try:
        loaded = tf.saved_model.load(str(path))
    except Exception as e:
        raise ModelInputError(f"{path}: TensorFlow cannot load the SavedModel ({explain(e)})") from e
    signature = loaded.signatures.get("serving_default")
    if signature is None:
        raise ModelInputError(f"{path}: the SavedModel has no 'serving_default' signature; export one")
    _, keyword_specs = signature.structured_input_signature
    names = sorted(keyword_specs)
    specs = [
        tf.TensorSpec(_shape_for(n, keyword_specs[n].shape, input_shapes), keyword_specs[n].dtype, name=n)
        for n in names
    ]
    output_names = sorted(signature.structured_outputs)

    def serve(*args: Any) -> dict[str, Any]:
        return dict(signature(**dict(zip(names, args, strict=True))))

    function = tf.function(serve, input_signature=specs)
    function._edgekit_keepalive = loaded  # the signature dies with the loaded object
    return TFSource(function, specs, output_names, path, _infos(specs))


def _keras_output_names(model: Any) -> list[str]:
    """Output names from the layers that produce them (Keras 3 Sequential has no `output_names`)."""
    names: list[str] = []
    for i, tensor in enumerate(model.outputs):
        history = getattr(tensor, "_keras_history", None)
        name = _clean(history.operation.name) if history is not None else f"output_{i}"
        names.append(name if name not in names else f"{name}_{i}")
    return names


def _infos(specs: list[Any]) -> tuple[TensorInfo, ...]:
    return tuple(
        TensorInfo(s.name, tuple(None if d is None else int(d) for d in s.shape), s.dtype.name) for s in specs
    )


def _clean(name: str) -> str:
    return name.split(":")[0].replace("/", "_")
