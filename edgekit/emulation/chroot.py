"""Run a command inside the arm64 root: the one way host code enters it.

Every call is one `unshare --mount --propagation private --pid` process. Inside its own mount namespace
it mounts /proc, /dev, a read-only /sys, a tmpfs on /tmp, an arm64-format /proc/cpuinfo, the host's
resolv.conf and the caller's binds, then chroots and runs the command under QEMU user-mode emulation
(binfmt_misc). The host's mount table never sees those mounts, and they vanish with the namespace's last
process. The command runs as the init of its own PID namespace, which the kernel kills when the caller
dies, so none of its processes (and so none of its mounts) outlives the call, however it ends: exit,
error, timeout, or the caller killed.

The command gets a clean environment: the host's pip configuration (PIP_* variables, /etc/pip.conf,
find-links to host wheels) and everything else of the caller's environment stay outside. Only PATH, HOME,
LANG, QEMU_CPU and what the caller passes in `env` reach it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

from edgekit.emulation.binfmt import ensure_binfmt
from edgekit.emulation.errors import EmulationError, HostSetupError, RootCommandTimeout

__all__ = ["QEMU_CPU", "arm64_cpuinfo", "clean_env", "run_in_root"]

# The emulated core: a Cortex-A72 is the Raspberry Pi 4's. Pinned so results do not follow QEMU's default.
QEMU_CPU = "cortex-a72"
_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# Runs on the host (x86 sh) inside the new mount namespace; the last line enters the root. Arguments:
# root, cpuinfo file, cwd, number of binds, then (host path, root path) pairs, then the command.
_ENTER = r"""
set -eu
root=$1; cpuinfo=$2; cwd=$3; n=$4; shift 4
mount -t proc proc "$root/proc"
mount --rbind /dev "$root/dev"
# Read-only sysfs: CPU-probing libraries (onnxruntime's cpuinfo) read the processor lists there.
mount -t sysfs -o ro,nosuid,nodev,noexec sysfs "$root/sys"
mount -t tmpfs -o mode=1777 tmpfs "$root/tmp"
# QEMU 7.2 shows the host's x86 /proc/cpuinfo, which makes onnxruntime's CPU probe crash on aarch64.
mount --bind "$cpuinfo" "$root/proc/cpuinfo"
if [ -f /etc/resolv.conf ] && [ -f "$root/etc/resolv.conf" ] && [ ! -L "$root/etc/resolv.conf" ]; then
  mount --bind /etc/resolv.conf "$root/etc/resolv.conf"
fi
while [ "$n" -gt 0 ]; do
  src=$1; dst=$root$2; shift 2; n=$((n - 1))
  if [ -d "$src" ]; then mkdir -p "$dst"; else mkdir -p "$(dirname "$dst")"; [ -e "$dst" ] || : > "$dst"; fi
  mount --rbind "$src" "$dst"
done
exec chroot "$root" /usr/bin/env -C "$cwd" -- "$@"
"""


def arm64_cpuinfo(ncpus: int) -> str:
    """An arm64-format /proc/cpuinfo describing `ncpus` Cortex-A72 cores (no IO)."""
    core = (
        "processor\t: {i}\nBogoMIPS\t: 108.00\nFeatures\t: fp asimd evtstrm crc32 cpuid\n"
        "CPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x0\nCPU part\t: 0xd08\n"
        "CPU revision\t: 3\n\n"
    )
    return "".join(core.format(i=i) for i in range(max(1, ncpus)))


def clean_env(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """The whole environment a command in the root sees: the fixed base plus `env` (no IO)."""
    base = {"PATH": _PATH, "HOME": "/root", "LANG": "C.UTF-8", "QEMU_CPU": QEMU_CPU}
    return base | dict(env or {})


def _check_root(root: Path) -> None:
    for needed in ("usr/bin/env", "proc", "dev", "sys", "tmp"):
        if not (root / needed).exists():
            raise EmulationError(
                f"{root} is not a usable arm64 root (no /{needed} in it); build one with "
                f"`edgekit.emulation.root.ensure_root()` or `bash scripts/arm64.sh`"
            )


def run_in_root(
    root: str | os.PathLike[str],
    argv: Sequence[str],
    binds: Mapping[str | os.PathLike[str], str] | None = None,
    env: Mapping[str, str] | None = None,
    timeout: float | None = None,
    cwd: str | None = None,
    *,
    capture: bool = True,
) -> subprocess.CompletedProcess[str]:
    """Run `argv` inside the arm64 `root` under emulation and return its exit code and output.

    Args:
        root: the root directory (see `edgekit.emulation.root.ensure_root`).
        argv: the command, resolved inside the root (e.g. ``["/usr/bin/python3", "-c", "..."]``).
        binds: host path -> absolute path inside the root, bind-mounted (read-write) for this call only;
            a missing mount point is created in the root.
        env: variables added to the clean environment (see `clean_env`); nothing else of the host's leaks.
        timeout: seconds before the command and everything it started are killed; None waits forever.
        cwd: working directory inside the root (default "/").
        capture: capture stdout and stderr as text (default); False lets them through to this process's.

    Returns:
        The CompletedProcess of the command (`args` is `argv`); a nonzero exit code is not an error here.

    Raises:
        HostSetupError: not root, or binfmt_misc cannot run aarch64 executables.
        EmulationError: `root` is not a usable root.
        RootCommandTimeout: the command ran past `timeout` (it was killed; its mounts are gone).
    """
    root_path = Path(root).resolve()
    if os.geteuid() != 0:
        raise HostSetupError("entering the arm64 root needs root (a mount namespace, chroot); run as root")
    ensure_binfmt()
    _check_root(root_path)
    pairs: list[str] = []
    for host_path, root_side in (binds or {}).items():
        if not str(root_side).startswith("/"):
            raise EmulationError(f"bind target {root_side!r} must be an absolute path inside the root")
        if not os.path.exists(host_path):
            raise EmulationError(f"bind source {os.fspath(host_path)!r} does not exist on the host")
        pairs += [os.path.realpath(host_path), str(root_side)]
    fd, cpuinfo = tempfile.mkstemp(prefix="edgekit-arm64-cpuinfo-")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(arm64_cpuinfo(os.cpu_count() or 1))
        # setpriv: the kernel kills unshare if this process dies (even by SIGKILL); --pid --kill-child:
        # unshare's child is the init of a new PID namespace and dies with unshare, and the kernel kills
        # everything left in a PID namespace when its init dies. So no process, and no mount, outlives us.
        command = [
            "setpriv", "--pdeathsig", "KILL", "--",
            "unshare", "--mount", "--propagation", "private", "--pid", "--kill-child", "--",
            "/bin/sh", "-c", _ENTER, "edgekit-enter",
            str(root_path), cpuinfo, cwd or "/", str(len(pairs) // 2), *pairs, *argv,
        ]  # fmt: skip
        out = subprocess.PIPE if capture else None
        # A new session, so a timeout kills the whole tree: the namespace's last process takes its mounts.
        with subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=out, stderr=out, env=clean_env(env),
            text=True, errors="replace", start_new_session=True,
        ) as proc:  # fmt: skip
            try:
                stdout, stderr = proc.communicate(timeout=timeout)
            except subprocess.TimeoutExpired:
                _kill_group(proc)
                proc.communicate()
                raise RootCommandTimeout(
                    f"`{' '.join(argv)}` in the arm64 root {root_path} ran past its timeout of {timeout} s "
                    f"and was killed; raise the timeout (emulation is about 9x slower than native)",
                    timeout=timeout or 0.0,
                ) from None
            except BaseException:
                _kill_group(proc)
                raise
        return subprocess.CompletedProcess(list(argv), proc.returncode, stdout, stderr)
    finally:
        os.unlink(cpuinfo)


def _kill_group(proc: subprocess.Popen[str]) -> None:
    with contextlib.suppress(ProcessLookupError):  # the group already exited
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
