"""binfmt_misc for arm64: the kernel hands aarch64 executables to qemu-user, also inside a chroot.

The registration must carry the F flag ("fix binary"): the kernel then opens the interpreter when it is
registered, so it runs in a root that has no qemu binary of its own. Debian's `qemu-user-static` registers
`qemu-aarch64` that way through `binfmt-support`; this module only mounts binfmt_misc when a container
left it unmounted, enables the registration and verifies the result.

This is host configuration and stays in place, like the packages: the registration lives in the kernel,
not in the mount, and unmounting binfmt_misc would only hide it from the next check. Every mount a run in
the root makes (/proc, /dev, /sys, binds) is private to that run and gone when it ends (`chroot.py`).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from edgekit.emulation.errors import APT_FIX, HostSetupError

__all__ = ["BINFMT_DIR", "BinfmtEntry", "ensure_binfmt", "parse_entry", "read_entry"]

BINFMT_DIR = Path("/proc/sys/fs/binfmt_misc")
ENTRY = "qemu-aarch64"


@dataclass(frozen=True)
class BinfmtEntry:
    """One binfmt_misc registration as the kernel reports it."""

    enabled: bool
    interpreter: str
    flags: str

    @property
    def usable_in_chroot(self) -> bool:
        """True when the kernel holds the interpreter open (F flag), so a root needs no qemu of its own."""
        return self.enabled and "F" in self.flags


def parse_entry(text: str) -> BinfmtEntry:
    """Parse the text of /proc/sys/fs/binfmt_misc/<name> (no IO)."""
    enabled = False
    interpreter = ""
    flags = ""
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        if line.strip() == "enabled":
            enabled = True
        elif key == "interpreter":
            interpreter = value.strip()
        elif key == "flags:":
            flags = value.strip()
    return BinfmtEntry(enabled=enabled, interpreter=interpreter, flags=flags)


def read_entry(binfmt_dir: Path = BINFMT_DIR) -> BinfmtEntry | None:
    """The qemu-aarch64 registration, or None when binfmt_misc is unmounted or has no such entry."""
    try:
        return parse_entry((binfmt_dir / ENTRY).read_text())
    except OSError:
        return None


def _run(argv: list[str], what: str) -> None:
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise HostSetupError(
            f"{what} failed (`{' '.join(argv)}` exited {proc.returncode}: {proc.stderr.strip()[-400:]}); "
            f"run it by hand as root to see why"
        )


def ensure_binfmt(binfmt_dir: Path = BINFMT_DIR) -> BinfmtEntry:
    """Make the kernel run aarch64 executables through qemu, also inside a chroot; return the registration.

    Does nothing when the registration is already enabled with the F flag. Otherwise (as root) mounts
    binfmt_misc if it is not mounted and enables `qemu-aarch64` with `update-binfmts`.

    Raises:
        HostSetupError: not root when a change is needed, `qemu-user-static`/`binfmt-support` missing,
            or the registration still lacks the F flag afterwards.
    """
    entry = read_entry(binfmt_dir)
    if entry is not None and entry.usable_in_chroot:
        return entry
    if os.geteuid() != 0:
        raise HostSetupError(
            f"arm64 emulation needs the binfmt_misc entry {ENTRY} enabled with the F flag "
            f"(found: {entry or 'no entry'}); run as root so edgekit can enable it"
        )
    if shutil.which("update-binfmts") is None or shutil.which("qemu-aarch64-static") is None:
        raise HostSetupError(f"qemu-user-static and binfmt-support are not installed; run `{APT_FIX}`")
    if not (binfmt_dir / "register").exists():
        # Containers often start without binfmt_misc mounted although the kernel supports it.
        _run(["mount", "-t", "binfmt_misc", "binfmt_misc", str(binfmt_dir)], "mounting binfmt_misc")
    _run(["update-binfmts", "--enable", ENTRY], f"enabling the binfmt entry {ENTRY}")
    entry = read_entry(binfmt_dir)
    if entry is None or not entry.usable_in_chroot:
        raise HostSetupError(
            f"binfmt entry {ENTRY} is {entry or 'missing'} after `update-binfmts --enable {ENTRY}`; "
            f"it must be enabled with the F flag (Debian's qemu-user-static registers it so); "
            f"reinstall it: `{APT_FIX}`"
        )
    return entry
