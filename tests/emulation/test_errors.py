"""Typed errors that say what is wrong and how to fix it, before anything is built or entered."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from edgekit.emulation import EmulationError, RootBuildError, run_in_root
from edgekit.emulation.binfmt import parse_entry
from edgekit.emulation.errors import EmulationError as BaseError
from edgekit.errors import EdgekitError
from tests.emulation.conftest import requires_host

REPO = Path(__file__).resolve().parents[2]
needs_host = requires_host()


def test_emulation_errors_are_edgekit_errors() -> None:
    assert issubclass(BaseError, EdgekitError) and EmulationError is BaseError


def test_binfmt_entry_with_the_f_flag_is_usable_in_a_chroot() -> None:
    text = "enabled\ninterpreter /usr/libexec/qemu-binfmt/aarch64-binfmt-P\nflags: PF\noffset 0\n"
    entry = parse_entry(text)
    assert entry.interpreter == "/usr/libexec/qemu-binfmt/aarch64-binfmt-P"
    assert entry.usable_in_chroot


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("disabled\ninterpreter /usr/bin/qemu-aarch64\nflags: PF\n", id="disabled"),
        pytest.param("enabled\ninterpreter /usr/bin/qemu-aarch64\nflags: P\n", id="no-F-flag"),
    ],
)
def test_binfmt_entry_without_f_flag_or_disabled_is_not_usable(text: str) -> None:
    assert not parse_entry(text).usable_in_chroot


@needs_host
def test_a_directory_that_is_not_a_root_is_refused(tmp_path: Path) -> None:
    with pytest.raises(EmulationError, match="not a usable arm64 root"):
        run_in_root(tmp_path, ["/bin/true"])


@needs_host
def test_ensure_root_never_replaces_a_directory_it_did_not_build(tmp_path: Path) -> None:
    from edgekit.emulation.root import ensure_root

    (tmp_path / "precious.txt").write_text("keep me")
    with pytest.raises(RootBuildError, match="not an arm64 root edgekit built"):
        ensure_root(tmp_path)
    assert (tmp_path / "precious.txt").read_text() == "keep me"


# The system's python: the venv's interpreter may live under /root, which an unprivileged user cannot read.
SYSTEM_PYTHON = "/usr/bin/python3"


@pytest.mark.skipif(os.geteuid() != 0, reason="switching to an unprivileged user needs root")
@pytest.mark.skipif(not os.path.exists(SYSTEM_PYTHON), reason=f"no {SYSTEM_PYTHON} for an unprivileged user")
@pytest.mark.parametrize(
    ("call", "match"),
    [
        pytest.param("run_in_root('/', ['/bin/true'])", "needs root", id="run_in_root"),
        pytest.param("ensure_root('/tmp/edgekit-never-built')", "needs root rights", id="ensure_root"),
    ],
)
def test_unprivileged_callers_get_a_typed_error_naming_the_fix(call: str, match: str) -> None:
    # The checkout (and pytest's tmp_path) may sit where `nobody` cannot read: it imports a readable copy.
    with tempfile.TemporaryDirectory(prefix="edgekit-unprivileged-", dir="/tmp") as tmp:
        readable = Path(tmp)
        shutil.copytree(REPO / "edgekit", readable / "edgekit", ignore=shutil.ignore_patterns("__pycache__"))
        for path in [readable, *readable.rglob("*")]:
            path.chmod(0o755 if path.is_dir() else 0o644)
        code = (
            "from edgekit.emulation import run_in_root, HostSetupError\n"
            "from edgekit.emulation.root import ensure_root\n"
            f"try:\n    {call}\nexcept HostSetupError as e:\n    print('HostSetupError:', e)\n"
        )
        proc = subprocess.run(
            [SYSTEM_PYTHON, "-c", code], capture_output=True, text=True, user="nobody", group="nogroup",
            env={"PATH": os.environ["PATH"], "PYTHONPATH": str(readable), "HOME": "/tmp"},
            cwd="/", check=False,
        )  # fmt: skip
    assert proc.stdout.startswith("HostSetupError:"), proc.stderr
    assert match in proc.stdout and "run as root" in proc.stdout


def test_the_host_ca_digest_follows_the_certificates(tmp_path: Path) -> None:
    from edgekit.emulation.root import host_ca_digest

    assert host_ca_digest(tmp_path / "absent") == "" and host_ca_digest(tmp_path) == ""
    (tmp_path / "proxy.crt").write_text("-----BEGIN CERTIFICATE-----\nA\n")
    first = host_ca_digest(tmp_path)
    (tmp_path / "proxy.crt").write_text("-----BEGIN CERTIFICATE-----\nB\n")
    assert first and host_ca_digest(tmp_path) not in ("", first)
