"""scikit-learn → ONNX with skl2onnx (classifiers without ZipMap, so outputs are plain tensors).

Loading a pickle runs code from the file: only convert models you trust (the CLI says so in its help).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from converters.errors import ConversionError, ModelInputError, UnsupportedModelError, explain
from converters.onnx_model import check_onnx_file
from device_runtime.engines import TensorInfo

__all__ = ["export_sklearn", "load_sklearn"]

INPUT_NAME = "input"


def load_sklearn(path: Path) -> Any:
    """Load a fitted estimator from a pickle or joblib file.

    Raises:
        ModelInputError: unreadable, or not a fitted scikit-learn estimator.
    """
    import joblib

    try:
        estimator = joblib.load(path)
    except Exception as e:
        raise ModelInputError(f"{path}: not a readable pickle/joblib file ({explain(e)})") from e
    if not hasattr(estimator, "predict") or not hasattr(estimator, "n_features_in_"):
        raise ModelInputError(
            f"{path}: holds a {type(estimator).__name__}, not a fitted scikit-learn estimator; "
            "fit and save it"
        )
    return estimator


def export_sklearn(
    estimator: Any, path: Path, *, opset: int
) -> tuple[tuple[TensorInfo, ...], Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]]:
    """Write the estimator as ONNX; return its inputs and a function giving scikit-learn's own outputs.

    Raises:
        UnsupportedModelError: skl2onnx has no converter for the estimator.
    """
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import FloatTensorType

    features = int(estimator.n_features_in_)
    classifier = hasattr(estimator, "predict_proba")
    options = {id(estimator): {"zipmap": False}} if classifier else None
    try:
        onnx_model = to_onnx(
            estimator,
            initial_types=[(INPUT_NAME, FloatTensorType([None, features]))],
            target_opset={"": opset, "ai.onnx.ml": 3},
            options=options,
        )
    except Exception as e:
        raise UnsupportedModelError(
            f"skl2onnx cannot convert {type(estimator).__name__}: {explain(e)}"
        ) from e
    _dedupe_opsets(onnx_model)
    path.write_bytes(onnx_model.SerializeToString())
    check_onnx_file(path)
    output_names = [o.name for o in onnx_model.graph.output]

    def predict(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        x = feeds[INPUT_NAME]
        if classifier:
            if len(output_names) != 2:
                raise ConversionError(f"unexpected classifier outputs {output_names}")
            return {output_names[0]: estimator.predict(x), output_names[1]: estimator.predict_proba(x)}
        return {output_names[0]: np.asarray(estimator.predict(x), dtype=np.float32).reshape(len(x), -1)}

    return (TensorInfo(INPUT_NAME, (None, features), "float32"),), predict


def _dedupe_opsets(model: Any) -> None:
    """Keep one opset import per domain (the highest version).

    skl2onnx lists the default domain twice for a Pipeline; onnxruntime runs such a model, but its
    quantizer refuses it ("Failed to find proper ai.onnx domain"), so `edgekit quantize` could not take it.
    """
    versions: dict[str, int] = {}
    for entry in model.opset_import:
        domain = "" if entry.domain == "ai.onnx" else entry.domain
        versions[domain] = max(versions.get(domain, 0), int(entry.version))
    if len(versions) == len(model.opset_import):
        return
    del model.opset_import[:]
    for domain, version in sorted(versions.items()):
        model.opset_import.add(domain=domain, version=version)
