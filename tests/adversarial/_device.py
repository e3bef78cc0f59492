"""Device-side helpers for the adversarial tests: real signed releases, a publisher who signs hostile
contents with the real release key, and a real full filesystem.

- `device_fixtures`: `releases` and `committed_template`: the tiny ONNX releases of
  `tests.device_runtime.runtime_fixtures` (real onnxruntime, real ECDSA signatures, golden vectors by the
  real bundle builder) and a store with release 1.0.0 installed and committed.
- `resign`: a malicious but key-holding publisher. It takes a genuine signed bundle, changes its files
  (labels, golden.json, .npy, preprocess.json) and signs the result with the release key, exactly as the
  builder signs: the device verifies the signature and must refuse the contents on their own merits.
- `small_tmpfs`: a real filesystem of a few hundred KiB (tmpfs, mounted here as root) that a test fills up
  with `fill`; the test is skipped, with the reason, where mounting is not permitted.
"""

from __future__ import annotations

import errno
import hashlib
import os
import subprocess
import uuid
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from tests.device_runtime.runtime_fixtures import HARDWARE, Releases, build_releases, make_store

Files = dict[str, bytes]


def device_fixtures() -> tuple[Any, Any]:
    """Module-scoped fixtures `releases` and `committed_template` (a store with 1.0.0 installed and
    committed, copied per test); a test module binds them: `releases, committed_template = device_fixtures()`.
    """

    @pytest.fixture(scope="module")
    def releases(tmp_path_factory: pytest.TempPathFactory) -> Releases:
        return build_releases(tmp_path_factory.mktemp("releases"))

    @pytest.fixture(scope="module")
    def committed_template(tmp_path_factory: pytest.TempPathFactory, releases: Releases) -> Path:
        return make_store(tmp_path_factory.mktemp("template") / "store", releases, ["1.0.0"])

    return releases, committed_template


def release_private_key(releases: Releases) -> Path:
    """The release key `build_releases` generated (the publisher holds it; so does this attacker)."""
    return releases.folder / "keys" / "release.key"


def resign(
    releases: Releases,
    folder: Path,
    mutate: Callable[[Files], None],
    *,
    base: str = "1.1.0",
    version: str = "1.3.0",
    release_counter: int = 4,
) -> Path:
    """A bundle made from release `base` with `mutate(files)` applied, signed with the release key.

    Returns the `.ekb` path (`folder/tiny-<version>.ekb`, the name a TUF target path takes).
    """
    from signing.archive import member_order, write_ekb
    from signing.envelope import sign_manifest
    from signing.keys import load_private_key, load_public_key
    from signing.manifest import FileEntry
    from signing.verify import VerifyPolicy, verify_ekb

    work = folder / f"resign-{uuid.uuid4().hex[:8]}"
    extracted = work / "extracted"
    work.mkdir(parents=True)
    verified = verify_ekb(
        releases.bundles[base],
        [load_public_key(releases.public_key)],
        destination=extracted,
        policy=VerifyPolicy(hardware_id=HARDWARE),
    )
    original = verified.manifest
    files = {name: (extracted / name).read_bytes() for name in original.files}
    mutate(files)
    roles = {name: entry.role for name, entry in original.files.items()}
    manifest = replace(
        original,
        version=version,
        release_counter=release_counter,
        root="",
        files={
            name: FileEntry(name, len(data), hashlib.sha256(data).hexdigest(), roles.get(name, "golden"))
            for name, data in files.items()
        },
    )
    directory = work / original.bundle_name
    for name, data in files.items():
        path = directory / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    signature = sign_manifest(manifest, [load_private_key(release_private_key(releases))])
    (directory / "model.sig").write_bytes(signature)
    output = folder / f"tiny-{version}.ekb"
    write_ekb(directory, member_order(manifest), output)
    return output


def npy_header(descr: str, shape: tuple[int, ...]) -> bytes:
    """A version 1.0 `.npy` header (magic, length, dict padded to 64 bytes) and no data."""
    text = f"{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape!r}, }}"
    pad = 64 - (10 + len(text) + 1) % 64
    body = (text + " " * pad + "\n").encode("latin1")
    return b"\x93NUMPY\x01\x00" + len(body).to_bytes(2, "little") + body


def install_refusals(rt: Any) -> list[dict[str, Any]]:
    """The `install` telemetry events with outcome refused or failed."""
    return [
        e.payload
        for e in rt.telemetry.pending(100_000)
        if e.kind == "install" and e.payload.get("outcome") in ("refused", "failed")
    ]


# ---- a real full filesystem -------------------------------------------------------------------------------
@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs mounted at tmp_path/disk, unmounted after the test (skipped if mount is refused)."""
    mountpoint = tmp_path / "disk"
    mountpoint.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m,mode=0700", "tmpfs", str(mountpoint)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (needs root): {done.stderr.strip()[:200]}")
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", "-l", str(mountpoint)], capture_output=True, check=False)


def fill(disk: Path) -> Path:
    """Fill `disk` to the last byte with one file; returns it (delete it to free the space)."""
    filler = disk / "filler"
    chunk = b"\0" * (64 << 10)
    with open(filler, "ab", buffering=0) as handle:  # unbuffered: every short write is seen
        for size in (len(chunk), 1):  # big chunks, then the last partial page byte by byte
            try:
                while handle.write(chunk[:size]):
                    pass
            except OSError as e:
                if e.errno != errno.ENOSPC:
                    raise
    probe = disk / "probe"
    with pytest.raises(OSError) as full:
        probe.write_bytes(b"x" * 4096)
    assert full.value.errno == errno.ENOSPC
    probe.unlink(missing_ok=True)
    return filler


def disk_free(disk: Path) -> int:
    """Free bytes on the filesystem holding `disk`."""
    stats = os.statvfs(disk)
    return stats.f_bavail * stats.f_frsize


# ---- a real process killed at one rename ------------------------------------------------------------------
KILL_AT_RENAME_SOURCE = r'''
"""Child: open the store, do `op`, and SIGKILL itself at the nth rename onto the file named `kill_on`."""
import json, os, signal, sys
from pathlib import Path

from device_runtime.config import RuntimeConfig
from device_runtime.runtime import Runtime

args = json.loads(sys.argv[1])
real_replace, seen = os.replace, [0]


def replace(src, dst, *a, **k):
    if Path(dst).name == args["kill_on"]:
        seen[0] += 1
        if seen[0] == args.get("nth", 1):
            os.kill(os.getpid(), signal.SIGKILL)  # power loss: the temp file is written and fsynced
    return real_replace(src, dst, *a, **k)


def runtime():
    return Runtime(RuntimeConfig(
        store_dir=Path(args["store"]), trusted_keys=[Path(args["public_key"])], device_id="device-1",
        hardware_id=args["hardware"], trial_inferences=100, trial_seconds=0.0, engine_threads=1,
    ))


if args["op"] == "revert":  # install the candidate, then revert it by hand (the kill is armed after install)
    rt = runtime()
    rt.install(args["bundle"])
    os.replace = replace
    rt.revert("misbehaved here")
else:  # "start": a plain start; its recovery may strike and revert
    os.replace = replace
    rt = runtime()
rt.close()
print(json.dumps({"finished": True, "renames": seen[0]}))
'''


def run_killed_at_rename(folder: Path, releases: Releases, store: Path, **args: Any) -> int:
    """Run KILL_AT_RENAME_SOURCE in a fresh interpreter; returns its exit status (-9 when it was killed)."""
    import json
    import sys

    from tests.device_runtime.runtime_fixtures import ROOT

    script = folder / "kill_at_rename.py"
    script.write_text(KILL_AT_RENAME_SOURCE)
    request = {"store": str(store), "public_key": str(releases.public_key), "hardware": HARDWARE, **args}
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    done = subprocess.run(
        [sys.executable, str(script), json.dumps(request, default=str)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": path},  # this checkout's code, not an installed copy
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if done.returncode not in (0, -9):
        raise AssertionError(f"the child failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return done.returncode
