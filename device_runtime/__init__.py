"""The on-device library: verify and install signed bundles into A/B slots, self-test, trial and revert
locally, predict with the build host's exact preprocessing, and queue telemetry.

    from device_runtime import Runtime, RuntimeConfig
    rt = Runtime(RuntimeConfig(store_dir=..., trusted_keys=[...], device_id=..., hardware_id=...))
    rt.install("model-1.2.0.ekb"); result = rt.predict(image); rt.feedback(result.prediction_id, label)

Importing this package loads the standard library, `signing` (cryptography) and nothing heavy: numpy,
onnxruntime, LiteRT and Pillow load when a model or an image is first used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from device_runtime.errors import (
    DeviceRuntimeError,
    EngineError,
    InputError,
    InstallError,
    NoModelError,
    SpecError,
)

if TYPE_CHECKING:  # pragma: no cover
    from device_runtime.config import RuntimeConfig
    from device_runtime.runtime import InstallResult, PredictionResult, Runtime

__all__ = [
    "DeviceRuntimeError",
    "EngineError",
    "InputError",
    "InstallError",
    "InstallResult",
    "NoModelError",
    "PredictionResult",
    "Runtime",
    "RuntimeConfig",
    "SpecError",
]

_LAZY = {
    "Runtime": "device_runtime.runtime",
    "InstallResult": "device_runtime.runtime",
    "PredictionResult": "device_runtime.runtime",
    "RuntimeConfig": "device_runtime.config",
}


def __getattr__(name: str) -> Any:
    # Lazy so that `import device_runtime` stays light; `from device_runtime import Runtime` still works.
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'device_runtime' has no attribute {name!r}")
