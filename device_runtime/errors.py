"""Typed errors raised by the device runtime.

::

    RuntimeErrorBase (DeviceRuntimeError)
    ├── SpecError          preprocessing spec is malformed or out of bounds
    ├── InputError         a request does not match the model (shape, dtype, undecodable image)
    └── EngineError        the inference engine is missing or failed to load / run a model

Every message says what was observed, what was expected and how to fix it.
"""

from __future__ import annotations

__all__ = ["DeviceRuntimeError", "EngineError", "InputError", "SpecError"]


class DeviceRuntimeError(Exception):
    """Base class of every error the device runtime raises on purpose."""


class SpecError(DeviceRuntimeError):
    """The preprocessing spec is malformed, out of bounds or does not match the model."""


class InputError(DeviceRuntimeError):
    """A request's data cannot be fed to the model (wrong shape or dtype, undecodable image)."""


class EngineError(DeviceRuntimeError):
    """The inference engine is not installed, or cannot load or run the model."""
