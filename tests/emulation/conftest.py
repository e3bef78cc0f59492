"""The arm64 root for the emulation tests: used when it exists, skipped with the reason when it does not.

With EDGEKIT_REQUIRE_ARM64=1 (set by .ci/run after scripts/arm64.sh built the root) a missing root or host
tool fails the tests instead: CI must not pass by skipping the architecture it claims to test.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from edgekit.emulation.binfmt import read_entry
from edgekit.emulation.root import default_root_path, ensure_root, is_complete


def host_unavailable() -> str | None:
    """Why this host cannot emulate arm64, or None when it can (no IO beyond stat and reads)."""
    if os.geteuid() != 0:
        return "the arm64 root needs root rights (mount namespace, chroot)"
    if shutil.which("qemu-aarch64-static") is None or shutil.which("mmdebstrap") is None:
        return "qemu-user-static / mmdebstrap are not installed (bash scripts/arm64.sh installs them)"
    entry = read_entry()
    if entry is None or not entry.usable_in_chroot:
        return "binfmt_misc does not run aarch64 executables (bash scripts/arm64.sh enables it)"
    return None


def arm64_unavailable() -> str | None:
    """Why the emulation tests cannot run here (host or root missing), or None when they can."""
    reason = host_unavailable()
    if reason is not None:
        return reason
    if not is_complete(default_root_path()):
        return f"no arm64 root at {default_root_path()} (build it: bash scripts/arm64.sh)"
    return None


@pytest.fixture(scope="session")
def arm64_root() -> Path:
    """The complete arm64 root (scripts/arm64.sh builds it); skipped without it unless EDGEKIT_REQUIRE_ARM64=1
    (then it is built, or the typed error says what is missing)."""
    reason = arm64_unavailable()
    if reason is not None:
        if os.environ.get("EDGEKIT_REQUIRE_ARM64") != "1":
            pytest.skip(reason)
        return ensure_root()
    return default_root_path()


def requires_host() -> pytest.MarkDecorator:
    """Skip a test when the host cannot emulate arm64, unless EDGEKIT_REQUIRE_ARM64=1; CI requires it."""
    reason = host_unavailable()
    return pytest.mark.skipif(
        reason is not None and os.environ.get("EDGEKIT_REQUIRE_ARM64") != "1", reason=reason or ""
    )
