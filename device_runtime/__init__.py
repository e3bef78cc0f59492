"""The on-device library: preprocessing exactly as the build host, and engines loaded lazily.

Importing this package loads only the standard library and numpy; onnxruntime, LiteRT and Pillow load
when a model or image is first used.
"""

from device_runtime.errors import DeviceRuntimeError, EngineError, InputError, SpecError

__all__ = ["DeviceRuntimeError", "EngineError", "InputError", "SpecError"]
