"""The device distribution installed in the arm64 root: a venv with edgekit-device and both engines.

`ensure_device_python(root, wheel, lock)` returns the root-side path of that venv's python. The venv
lives at /opt/edgekit-device/venv inside the root and is reused while its stamp (a hash of the wheel, the
lock file and the extras) matches; otherwise it is rebuilt from scratch, the stamp written last so a
half-built venv is never reused. pip runs in the root with the clean environment of `run_in_root`,
installs only binary wheels (aarch64 wheels exist for every locked dependency; nothing compiles) and
keeps its download cache in the root.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shlex
import shutil
from collections.abc import Sequence
from pathlib import Path

from edgekit.emulation.chroot import run_in_root
from edgekit.emulation.errors import DeviceEnvError

__all__ = ["DEVICE_DIR", "VENV", "ensure_device_python", "installed_device_python", "venv_stamp"]

DEVICE_DIR = "/opt/edgekit-device"
VENV = f"{DEVICE_DIR}/venv"
_STAMP = ".edgekit-stamp"
# pip trusts the root's system bundle (it holds the host's extra CA certificates, see root.py) rather than
# its vendored one, and reads no configuration file.
_PIP_ENV = {
    "PIP_CERT": "/etc/ssl/certs/ca-certificates.crt",
    "PIP_CONFIG_FILE": "/dev/null",
    "PIP_NO_INPUT": "1",
}
# --no-compile: byte-compiling every installed file under emulation costs minutes; imports compile what
# they use. Part of the venv's stamp, so a change here rebuilds it.
_PIP_FLAGS = "--quiet --disable-pip-version-check --only-binary=:all: --no-compile"
INSTALL_TIMEOUT = 3600  # seconds; from nothing about 2 minutes under emulation, more on a slow mirror


def venv_stamp(wheel: Path, lock: Path, extras: Sequence[str]) -> str:
    """The hash a venv built from these inputs carries (no IO but reading the two files)."""
    h = hashlib.sha256()
    parts = (wheel.name, wheel.read_bytes(), lock.read_bytes(), ",".join(extras), _PIP_FLAGS)
    for part in parts:
        h.update(hashlib.sha256(part.encode() if isinstance(part, str) else part).digest())
    return h.hexdigest()


def ensure_device_python(
    root: str | os.PathLike[str],
    wheel: str | os.PathLike[str],
    lock: str | os.PathLike[str],
    *,
    extras: Sequence[str] = ("onnx", "tflite"),
) -> str:
    """Install the device distribution in the arm64 root (or reuse it) and return its python's root path.

    Args:
        root: a complete arm64 root (`edgekit.emulation.root.ensure_root()`).
        wheel: the edgekit-device wheel on the host (`bash scripts/device_suite.sh stage DIR` builds it).
        lock: the exact-pinned requirements for the root's Python (device/requirements/py311.txt).
        extras: extras of the wheel to install (default: both engines).

    Returns:
        The path of the venv's python inside the root, e.g. "/opt/edgekit-device/venv/bin/python".

    Raises:
        DeviceEnvError: a missing input, or pip failed in the root (the message has pip's last lines).
    """
    root_path = Path(root)
    wheel_path, lock_path = Path(wheel), Path(lock)
    if not wheel_path.is_file():
        raise DeviceEnvError(
            f"no device wheel at {wheel_path}; `bash scripts/device_suite.sh stage DIR` builds it (DIR/dist)"
        )
    if not lock_path.is_file():
        raise DeviceEnvError(f"no lock file at {lock_path}; the device's are in device/requirements/")
    stamp = venv_stamp(wheel_path, lock_path, extras)
    device_dir = root_path / DEVICE_DIR.lstrip("/")
    stamp_file = device_dir / "venv" / _STAMP
    python = f"{VENV}/bin/python"
    if _read(stamp_file) == stamp:
        return python
    device_dir.mkdir(parents=True, exist_ok=True)
    with open(device_dir / ".lock", "w") as lockf:
        fcntl.flock(lockf, fcntl.LOCK_EX)  # another process may be installing the same venv
        if _read(stamp_file) == stamp:
            return python
        inbox = device_dir / "in"
        shutil.rmtree(inbox, ignore_errors=True)
        inbox.mkdir()
        shutil.copyfile(wheel_path, inbox / wheel_path.name)
        shutil.copyfile(lock_path, inbox / "requirements.txt")
        target = f"{DEVICE_DIR}/in/{wheel_path.name}" + (f"[{','.join(extras)}]" if extras else "")
        script = (
            f"rm -rf {VENV} && python3 -m venv {VENV} && "
            f"{python} -m pip install {_PIP_FLAGS} "
            f"-r {DEVICE_DIR}/in/requirements.txt {shlex.quote(target)}"
        )
        proc = run_in_root(root_path, ["/bin/sh", "-c", script], env=_PIP_ENV, timeout=INSTALL_TIMEOUT)
        if proc.returncode != 0:
            tail = " | ".join((proc.stderr or proc.stdout).strip().splitlines()[-6:])
            raise DeviceEnvError(
                f"installing {wheel_path.name} with {lock_path} into {VENV} in the arm64 root {root_path} "
                f"failed (pip exit {proc.returncode}): {tail}"
            )
        tmp = stamp_file.with_name(_STAMP + ".tmp")
        tmp.write_text(stamp)
        os.replace(tmp, stamp_file)
    return python


def installed_device_python(
    root: str | os.PathLike[str], lock: str | os.PathLike[str] | None = None
) -> str | None:
    """The root-side path of the device venv's python when a finished install is there (whatever wheel it
    came from), else None; a venv whose install was interrupted has no stamp and does not count. With
    `lock`, the install must also have used exactly that lock file: after a pin changes (a new onnxruntime),
    measuring with the old engines would be measuring another device."""
    root_path = Path(root)
    if not _read(root_path / VENV.lstrip("/") / _STAMP):
        return None
    if lock is not None and _read(root_path / DEVICE_DIR.lstrip("/") / "in" / "requirements.txt") != _read(
        Path(lock)
    ):
        return None
    return f"{VENV}/bin/python"


def _read(p: Path) -> str | None:
    try:
        return p.read_text()
    except OSError:
        return None
