"""`--target`: where `edgekit parity` and `edgekit quantize` measure the candidate.

``host`` runs it here. ``arm64`` runs it in the emulated arm64 device (:mod:`edgekit.emulation`: a Debian
arm64 root under QEMU user-mode emulation, CPU pinned to the Raspberry Pi 4's Cortex-A72), with the
device's own engines built for aarch64, so the gate judges the int8 kernels the device will run.
Emulation gives the device's numbers, never its speed.

The root is ``$EDGEKIT_ARM64_ROOT`` or the default of :func:`edgekit.emulation.root.ensure_root` (built on
first use, minutes); its device Python is the venv that :func:`edgekit.emulation.device_env.
ensure_device_python` installs (``$EDGEKIT_ARM64_PYTHON`` names another python inside the root). The
device code that runs there is this host's own (:mod:`converters.targets` stages it).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path

from converters.errors import TargetError
from converters.targets import HOST, DeviceTarget, Target

__all__ = ["EMULATED_CPU", "TARGETS", "arm64_target", "resolve_target"]

TARGETS = ("host", "arm64")
EMULATED_CPU = "cortex-a72"  # what edgekit.emulation.chroot pins with QEMU_CPU
DEVICE_TIMEOUT = 3600.0  # seconds for one device process (a whole evaluation set under emulation)


def resolve_target(name: str) -> Target:
    """The target called `name` (one of :data:`TARGETS`).

    Raises:
        TargetError: an unknown name, or the arm64 device cannot be prepared (the message says how to fix).
    """
    if name == "host":
        return HOST
    if name == "arm64":
        return arm64_target()
    raise TargetError(f"unknown target {name!r}; use one of {', '.join(TARGETS)}")


def arm64_target(root: str | os.PathLike[str] | None = None, python: str | None = None) -> DeviceTarget:
    """The emulated arm64 device: its root built or reused, its device Python installed or reused.

    ``root``: use this root as it is (default: ``ensure_root()``, which honours ``$EDGEKIT_ARM64_ROOT``);
    ``python``: the device-side interpreter inside the root (default: ``$EDGEKIT_ARM64_PYTHON``, else the
    device venv, installed when missing).

    Raises:
        TargetError: the host cannot emulate arm64 or the root/venv cannot be built (emulation's message).
    """
    from edgekit.emulation.errors import EmulationError
    from edgekit.emulation.root import ensure_root

    try:
        # an explicit root is used as it is (it may be one edgekit did not build); the default is ensured
        root_path = Path(root) if root is not None else ensure_root()
        device_python = python or os.environ.get("EDGEKIT_ARM64_PYTHON") or _device_python(root_path)
    except EmulationError as e:
        raise TargetError(f"the arm64 target is unavailable: {e}") from e

    def run(
        argv: list[str], binds: Mapping[str, str], env: Mapping[str, str]
    ) -> subprocess.CompletedProcess[str]:
        from edgekit.emulation.chroot import run_in_root
        from edgekit.emulation.errors import RootCommandTimeout

        mounts: dict[str | os.PathLike[str], str] = {host: inside for host, inside in binds.items()}
        try:
            return run_in_root(root_path, argv, binds=mounts, env=dict(env), timeout=DEVICE_TIMEOUT)
        except RootCommandTimeout as e:
            raise subprocess.TimeoutExpired(argv, e.timeout) from e
        except EmulationError as e:
            raise TargetError(f"the arm64 target cannot run: {e}") from e

    return DeviceTarget(
        name="arm64",
        python=device_python,
        run=run,
        machine="aarch64",
        emulated=True,
        details={"emulator": "qemu-user", "cpu": EMULATED_CPU, "root": str(root_path)},
    )


def _device_python(root: Path) -> str:
    """The root's device venv python; installed from this checkout's device distribution when missing."""
    from edgekit.emulation.device_env import VENV, ensure_device_python, installed_device_python

    checkout = Path(__file__).resolve().parents[1]
    device = checkout / "device"
    lock = device / "requirements" / "py311.txt"
    # Only a finished install counts, and, from a checkout, only one made with its current lock file.
    python = installed_device_python(root, lock if lock.is_file() else None)
    if python is not None:
        return python  # only numpy and the engines are used from it: the device code is staged per run
    if not (device / "pyproject.toml").is_file() or not lock.is_file():
        raise TargetError(
            f"the arm64 root {root} has no device Python ({VENV}/bin/python) and no device/ source is beside "
            "this edgekit to install it from; run `bash scripts/arm64.sh` from a checkout, or set "
            "EDGEKIT_ARM64_PYTHON to a python inside the root that has numpy and the engines"
        )
    with tempfile.TemporaryDirectory(prefix="edgekit-device-wheel-") as tmp:
        # Built from a copy: an in-tree build would leave build/ and egg-info folders in the user's checkout.
        tree = Path(tmp) / "tree"
        for part in ("device", "device_runtime", "signing"):
            shutil.copytree(checkout / part, tree / part, ignore=shutil.ignore_patterns("__pycache__"))
        built = subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", tmp, str(tree / "device")],
            capture_output=True,
            text=True,
            check=False,
        )
        wheels = sorted(Path(tmp).glob("edgekit_device-*.whl"))
        if built.returncode != 0 or not wheels:
            tail = " | ".join((built.stderr or built.stdout).strip().splitlines()[-4:])
            raise TargetError(f"building the device wheel from {device} failed: {tail}")
        return ensure_device_python(root, wheels[0], lock)
