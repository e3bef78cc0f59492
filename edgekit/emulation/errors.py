"""The errors of `edgekit.emulation`: the host cannot emulate arm64, the root cannot be built, or a command
in it did not finish.

    EdgekitError                edgekit.errors
    └── EmulationError          any failure of the emulated arm64 environment
        ├── HostSetupError      the host lacks something emulation needs (root rights, a Debian package,
        │                       binfmt_misc); the message names the command that fixes it
        ├── RootBuildError      mmdebstrap or the root's certificate update failed
        ├── RootCommandTimeout  a command in the root ran past its timeout and was killed
        └── DeviceEnvError      the device package or its locked dependencies did not install in the root
"""

from __future__ import annotations

from edgekit.errors import EdgekitError

__all__ = [
    "DeviceEnvError",
    "EmulationError",
    "HostSetupError",
    "RootBuildError",
    "RootCommandTimeout",
]

APT_PACKAGES = "qemu-user-static binfmt-support mmdebstrap"
APT_FIX = f"apt-get install -y {APT_PACKAGES}"


class EmulationError(EdgekitError):
    """The emulated arm64 environment cannot be used (the message says what and how to fix it)."""


class HostSetupError(EmulationError):
    """The host lacks something emulation needs: root rights, a Debian package or binfmt_misc."""


class RootBuildError(EmulationError):
    """Building or updating the arm64 root failed."""


class RootCommandTimeout(EmulationError):
    """A command in the root ran past its timeout; it and everything it started were killed."""

    def __init__(self, message: str, timeout: float) -> None:
        super().__init__(message)
        self.timeout = timeout  # seconds


class DeviceEnvError(EmulationError):
    """The device package or its locked dependencies did not install in the root."""
