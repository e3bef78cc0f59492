"""Finding 12: one process per store.

Two real processes on one store: before, the second one's start-up removed the first one's `.incoming-*`
while that install was in progress, and the first then reported a false tamper error. Now the store is
locked (`flock` on `<store>/lock`) for the life of a `Runtime` (and an `Updater` locks its metadata
directory): the second process gets a `StoreLockedError` naming the store and the holder's PID, the install
in progress completes, and a holder killed with SIGKILL leaves nothing locked.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from device_runtime import errors
from device_runtime.runtime import Runtime
from tests.adversarial._device import device_fixtures
from tests.device_runtime.runtime_fixtures import HARDWARE, ROOT, Releases, config, reset_store, sample

releases, committed_template = device_fixtures()
# getattr: this file also runs against the runtime before the lock existed, where it fails by not raising
StoreLockedError: type[Exception] = getattr(errors, "StoreLockedError", errors.DeviceRuntimeError)

HOLDER_SOURCE = r'''
"""Child: open a Runtime (or an Updater) on a store and hold it; optionally pause an install mid-way."""
import json, sys
from pathlib import Path

import device_runtime._install as install_module
import device_runtime.runtime as runtime_module
from device_runtime.config import RuntimeConfig
from device_runtime import errors
from device_runtime.errors import DeviceRuntimeError

StoreLockedError = getattr(errors, "StoreLockedError", ())  # (): a runtime without the lock catches nothing

args = json.loads(sys.argv[1])


def say(**values):
    print(json.dumps(values), flush=True)


try:
    if args["op"] == "updater":
        from device_runtime.updater import Updater, UpdaterConfig

        holder = Updater(UpdaterConfig(
            metadata_url="http://127.0.0.1:9/metadata/", targets_url="http://127.0.0.1:9/targets/",
            metadata_dir=Path(args["metadata_dir"]), download_dir=Path(args["metadata_dir"]) / "downloads",
            model="tiny", channel="stable", device_id="device-1", bootstrap_root=b"{}",
        ))
    else:
        holder = runtime_module.Runtime(RuntimeConfig(
            store_dir=Path(args["store"]), trusted_keys=[Path(args["public_key"])], device_id="device-1",
            hardware_id=args["hardware"], trial_inferences=1, trial_seconds=0.0, engine_threads=1,
        ))
except StoreLockedError as e:
    say(error="StoreLockedError", path=str(e.path), pid=e.pid, message=str(e))
    sys.exit(0)
say(ready=True)
if args["op"] == "install":  # pause between extraction into .incoming-* and loading it
    real_load = install_module.load_model  # the install path's loader

    def paused_load(directory, *a, **k):
        say(paused=str(directory))
        sys.stdin.readline()
        return real_load(directory, *a, **k)

    install_module.load_model = paused_load
    try:
        result = holder.install(args["bundle"])
        say(installed=result.version)
    except (DeviceRuntimeError, Exception) as e:
        say(install_error=type(e).__name__, message=str(e))
sys.stdin.readline()  # hold the store until told
'''


class Child:
    """A real process running HOLDER_SOURCE; talks JSON lines on stdout, waits for lines on stdin."""

    def __init__(self, folder: Path, **args: Any) -> None:
        script = folder / "holder.py"
        script.write_text(HOLDER_SOURCE)
        path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
        self.process = subprocess.Popen(
            [sys.executable, str(script), json.dumps(args, default=str)],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": path},  # this checkout's code
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def read(self) -> dict[str, Any]:
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line:
            assert self.process.stderr is not None
            raise AssertionError(f"the child ended: {self.process.stderr.read()[-3000:]}")
        return dict(json.loads(line))

    def tell(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write("go\n")
        self.process.stdin.flush()

    def finish(self) -> None:
        if self.process.poll() is None:
            with_input = self.process.stdin
            if with_input is not None:
                with_input.close()
            self.process.wait(timeout=60)
        for stream in (self.process.stdout, self.process.stderr):
            if stream is not None:
                stream.close()

    def kill(self) -> None:
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=60)


@pytest.fixture
def children(tmp_path: Path) -> Iterator[Any]:
    started: list[Child] = []

    def start(**args: Any) -> Child:
        folder = tmp_path / f"child-{len(started)}"
        folder.mkdir()
        child = Child(folder, **args)
        started.append(child)
        return child

    yield start
    for child in started:
        if child.process.poll() is None:
            child.kill()
        child.finish()


def runtime_args(store: Path, releases: Releases, **extra: Any) -> dict[str, Any]:
    return {"store": store, "public_key": releases.public_key, "hardware": HARDWARE, **extra}


def test_a_second_process_on_the_store_gets_a_typed_error_naming_the_store_and_the_holder(
    tmp_path: Path, releases: Releases, committed_template: Path, children: Any
) -> None:
    store = reset_store(committed_template, tmp_path / "store")
    first = children(op="hold", **runtime_args(store, releases))
    assert first.read() == {"ready": True}
    second = children(op="hold", **runtime_args(store, releases))
    refused = second.read()
    assert refused["error"] == "StoreLockedError"
    assert refused["pid"] == first.process.pid and refused["path"] == str(store)
    assert str(store) in refused["message"] and str(first.process.pid) in refused["message"]
    # and this (third) process too
    with pytest.raises(StoreLockedError) as caught:
        Runtime(config(store, releases))
    assert caught.value.pid == first.process.pid and Path(str(caught.value.path)) == store


def test_the_second_process_never_deletes_an_install_in_progress(
    tmp_path: Path, releases: Releases, committed_template: Path, children: Any
) -> None:
    store = reset_store(committed_template, tmp_path / "store")
    installer = children(op="install", bundle=releases.bundles["1.1.0"], **runtime_args(store, releases))
    assert installer.read() == {"ready": True}
    incoming = Path(installer.read()["paused"])  # extracted and verified, not yet loaded
    assert incoming.name.startswith(".incoming-") and incoming.is_dir()
    with pytest.raises(StoreLockedError):
        Runtime(config(store, releases))  # before: its start-up removed `incoming`
    assert incoming.is_dir()
    installer.tell()
    assert installer.read() == {"installed": "1.1.0"}  # before: a false "changed after verification"
    installer.tell()
    installer.finish()
    rt = Runtime(config(store, releases))
    try:
        assert rt.status()["active"]["version"] == "1.1.0"
        assert rt.predict(sample()).version == "1.1.0"
    finally:
        rt.close()


def test_a_holder_killed_mid_install_leaves_the_store_unlocked_and_cleaned(
    tmp_path: Path, releases: Releases, committed_template: Path, children: Any
) -> None:
    store = reset_store(committed_template, tmp_path / "store")
    installer = children(op="install", bundle=releases.bundles["1.1.0"], **runtime_args(store, releases))
    assert installer.read() == {"ready": True}
    incoming = Path(installer.read()["paused"])
    installer.kill()  # SIGKILL: the kernel drops the lock with the process
    rt = Runtime(config(store, releases))
    try:
        assert not incoming.exists()  # the dead process's half install is removed, under the lock
        assert rt.predict(sample()).version == "1.0.0"
    finally:
        rt.close()


def test_one_runtime_per_store_within_a_process_and_close_releases_it(
    tmp_path: Path, releases: Releases, committed_template: Path
) -> None:
    store = reset_store(committed_template, tmp_path / "store")
    rt = Runtime(config(store, releases))
    with pytest.raises(StoreLockedError) as caught:
        Runtime(config(store, releases))
    assert caught.value.pid == os.getpid()
    rt.close()
    again = Runtime(config(store, releases))
    assert again.predict(sample()).version == "1.0.0"
    again.close()


def test_a_second_updater_process_on_the_metadata_directory_is_refused(tmp_path: Path, children: Any) -> None:
    metadata = tmp_path / "tuf"
    first = children(op="updater", metadata_dir=metadata)
    assert first.read() == {"ready": True}
    second = children(op="updater", metadata_dir=metadata)
    refused = second.read()
    assert refused["error"] == "StoreLockedError" and refused["pid"] == first.process.pid
    assert refused["path"] == str(metadata)
