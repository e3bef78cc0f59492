"""run_in_root: commands run as aarch64, see only a clean environment, and leave no mount behind."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from edgekit.emulation import EmulationError, RootCommandTimeout, run_in_root

pytestmark = pytest.mark.slow  # each call starts an emulated process


def _mounts_under(root: Path) -> list[str]:
    """Lines of the host's mount table whose mount point lies in `root`."""
    prefix = str(root.resolve())
    lines = Path("/proc/self/mountinfo").read_text().splitlines()
    return [line for line in lines if line.split()[4].startswith(prefix)]


def _processes_in(root: Path) -> list[int]:
    """PIDs of host processes whose root directory is `root`."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.readlink(entry / "root") == str(root.resolve()):
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def test_commands_in_the_root_run_as_aarch64(arm64_root: Path) -> None:
    proc = run_in_root(arm64_root, ["/usr/bin/python3", "-c", "import platform; print(platform.machine())"])
    assert (proc.returncode, proc.stdout.strip()) == (0, "aarch64")


def test_the_root_sees_an_arm64_cpuinfo(arm64_root: Path) -> None:
    proc = run_in_root(arm64_root, ["/bin/cat", "/proc/cpuinfo"])
    assert "CPU implementer\t: 0x41" in proc.stdout
    assert "GenuineIntel" not in proc.stdout and "AuthenticAMD" not in proc.stdout


def test_host_environment_and_pip_settings_do_not_leak_in(
    arm64_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PIP_FIND_LINKS", "/opt/wheels")
    monkeypatch.setenv("PIP_INDEX_URL", "http://host-only.invalid/simple")
    monkeypatch.setenv("PYTHONPATH", "/work/somewhere")
    script = (
        "import json, os; print(json.dumps([dict(os.environ), "
        "[p for p in ('/etc/pip.conf', '/etc/xdg/pip') if os.path.exists(p)]]))"
    )
    proc = run_in_root(arm64_root, ["/usr/bin/python3", "-c", script], env={"EXTRA": "1"})
    environ, pip_configs = json.loads(proc.stdout)
    environ.pop("PWD", None)  # set by env(1) when it changes directory
    assert environ == {
        "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "HOME": "/root",
        "LANG": "C.UTF-8",
        "QEMU_CPU": "cortex-a72",
        "EXTRA": "1",
    }
    assert pip_configs == []


def test_binds_are_shared_with_the_host_for_the_call_only(arm64_root: Path, tmp_path: Path) -> None:
    (tmp_path / "in.txt").write_text("from the host")
    proc = run_in_root(
        arm64_root,
        ["/bin/sh", "-c", "cat in.txt && echo from the root > out.txt"],
        binds={tmp_path: "/mnt/edgekit-test"},
        cwd="/mnt/edgekit-test",
    )
    assert (proc.returncode, proc.stdout.strip()) == (0, "from the host")
    assert (tmp_path / "out.txt").read_text() == "from the root\n"
    assert _mounts_under(arm64_root) == []


def test_the_exit_code_of_the_command_is_returned(arm64_root: Path) -> None:
    proc = run_in_root(arm64_root, ["/bin/sh", "-c", "echo oops >&2; exit 3"])
    assert (proc.returncode, proc.stderr.strip()) == (3, "oops")


def test_no_mount_survives_a_command_killed_at_its_timeout(arm64_root: Path) -> None:
    with pytest.raises(RootCommandTimeout, match="ran past its timeout"):
        run_in_root(arm64_root, ["/bin/sh", "-c", "sleep 60 & sleep 60"], timeout=3)
    assert _mounts_under(arm64_root) == []
    _wait_until_no_process_in(arm64_root)


def test_no_mount_survives_when_the_calling_process_is_killed(arm64_root: Path, tmp_path: Path) -> None:
    # A separate host process enters the root, then is SIGKILLed: nothing of it may stay mounted.
    marker = tmp_path / "started"
    code = (
        "import sys; from edgekit.emulation import run_in_root; run_in_root(sys.argv[1], "
        "['/bin/sh', '-c', 'touch /mnt/t/started; sleep 60'], binds={sys.argv[2]: '/mnt/t'})"
    )
    caller = subprocess.Popen(
        [sys.executable, "-c", code, str(arm64_root), str(tmp_path)],
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
        start_new_session=True,
    )  # fmt: skip
    try:
        for _ in range(600):
            if marker.exists() or caller.poll() is not None:
                break
            subprocess.run(["sleep", "0.1"], check=True)
        assert marker.exists(), "the command in the root never started"
    finally:
        os.killpg(caller.pid, 9)
        caller.wait()
    assert _mounts_under(arm64_root) == []
    _wait_until_no_process_in(arm64_root)


def _wait_until_no_process_in(root: Path) -> None:
    """Killed emulated processes may take a moment to exit on a busy host: poll for up to 10 s."""
    for _ in range(100):
        if not _processes_in(root):
            return
        subprocess.run(["sleep", "0.1"], check=True)
    assert _processes_in(root) == []


@pytest.mark.parametrize(
    ("binds", "match"),
    [
        pytest.param({"/nonexistent/edgekit": "/mnt/x"}, "does not exist on the host", id="missing-source"),
        pytest.param({"/tmp": "relative/path"}, "must be an absolute path", id="relative-target"),
    ],
)
def test_bad_binds_are_refused_before_entering(arm64_root: Path, binds: dict[str, str], match: str) -> None:
    with pytest.raises(EmulationError, match=match):
        run_in_root(arm64_root, ["/bin/true"], binds=binds)
