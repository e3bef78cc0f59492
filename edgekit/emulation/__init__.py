"""Emulated arm64 devices on an x86 host: a Debian arm64 root run under QEMU user-mode emulation.

Edge devices are ARM64; this package lets the build host run the device side where its int8 kernels are
the device's. Layers, each usable alone:

- `binfmt`: the kernel hands aarch64 executables to qemu-user (binfmt_misc, F flag).
- `root`: `ensure_root()` builds (mmdebstrap) or reuses the arm64 Debian root, with the host's extra CA
  certificates installed in it.
- `chroot`: `run_in_root()` runs one command in the root inside a private mount namespace with a clean
  environment; the only way host code enters the root, and no mount outlives the call.
- `device_env`: `ensure_device_python()` installs the device distribution with its locked dependencies in
  a venv inside the root and returns that venv's python.

Emulated timings say nothing about a real device's speed; only outputs are meaningful.
Errors: `edgekit.emulation.errors` (all `EmulationError`, an `edgekit.errors.EdgekitError`).
"""

from __future__ import annotations

from edgekit.emulation.chroot import run_in_root
from edgekit.emulation.errors import (
    DeviceEnvError,
    EmulationError,
    HostSetupError,
    RootBuildError,
    RootCommandTimeout,
)

__all__ = [
    "DeviceEnvError",
    "EmulationError",
    "HostSetupError",
    "RootBuildError",
    "RootCommandTimeout",
    "run_in_root",
]
