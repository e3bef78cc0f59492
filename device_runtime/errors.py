"""Typed errors raised by the device runtime.

::

    RuntimeErrorBase (DeviceRuntimeError)
    ├── SpecError          preprocessing spec is malformed or out of bounds
    ├── InputError         a request does not match the model (shape, dtype, undecodable image)
    ├── EngineError        the inference engine is missing or failed to load / run a model
    ├── InstallError       a verified bundle could not be installed (self-test, runtime requirements)
    └── NoModelError       nothing verified is installed

Bundle verification failures are `signing.errors.VerificationError` (never retried).

Every message says what was observed, what was expected and how to fix it.
"""

from __future__ import annotations

__all__ = ["DeviceRuntimeError", "EngineError", "InputError", "InstallError", "NoModelError", "SpecError"]


class DeviceRuntimeError(Exception):
    """Base class of every error the device runtime raises on purpose."""


class SpecError(DeviceRuntimeError):
    """The preprocessing spec is malformed, out of bounds or does not match the model."""


class InputError(DeviceRuntimeError):
    """A request's data cannot be fed to the model (wrong shape or dtype, undecodable image)."""


class EngineError(DeviceRuntimeError):
    """The inference engine is not installed, or cannot load or run the model."""


class InstallError(DeviceRuntimeError):
    """A verified bundle could not be installed (self-test failed, runtime requirements unmet, storage)."""

    def __init__(self, message: str, reason: str = "install") -> None:
        super().__init__(message)
        self.reason = reason


class NoModelError(DeviceRuntimeError):
    """No verified model is installed, so nothing can be predicted."""


class ContractError(DeviceRuntimeError):
    """A telemetry event or batch violates `device_runtime.telemetry_contract` (a `DeviceRuntimeError`).

    ``reason`` is a short stable code (one of ``telemetry_contract.REASONS``), safe as a metrics label.
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


__all__ += ["ContractError"]  # appended here, so the tree above stays as it was
