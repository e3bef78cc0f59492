"""The arm64 Debian root: built once with mmdebstrap, reused while its recipe stays the same.

`ensure_root()` returns a complete root or builds one. A root is complete when its stamp
(`/etc/edgekit-root.json` inside it) names the current recipe; it is built into a temporary sibling
directory and renamed into place only when complete, so an interrupted build never looks finished. A lock
file beside it serializes builders. The host's extra CA certificates (/usr/local/share/ca-certificates,
e.g. a proxy's authority that pip must trust) are copied in and `update-ca-certificates` runs in the root;
they are synced again whenever the host's set changes.

The build runs mmdebstrap in a private mount namespace, so the mounts it makes in the new root never
outlive it, even when it is killed.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from edgekit.emulation.binfmt import ensure_binfmt
from edgekit.emulation.chroot import clean_env, run_in_root
from edgekit.emulation.errors import APT_FIX, HostSetupError, RootBuildError

__all__ = ["HOST_CA_DIR", "RECIPE", "default_root_path", "ensure_root", "is_complete"]

# What the root is made of. Any change here makes existing roots stale, so they are rebuilt.
RECIPE = {
    "version": 1,
    "suite": "bookworm",
    "arch": "arm64",
    "variant": "apt",
    "packages": ["python3", "python3-venv", "ca-certificates"],
    "mirror": "http://deb.debian.org/debian",
}
STAMP = "etc/edgekit-root.json"
HOST_CA_DIR = Path("/usr/local/share/ca-certificates")
_ROOT_CA_DIR = "usr/local/share/ca-certificates/edgekit-host"
BUILD_TIMEOUT = 3600  # seconds; from nothing it takes 4-8 minutes on a 2-core host


def default_root_path() -> Path:
    """`$EDGEKIT_ARM64_ROOT`, else ~/.cache/edgekit/arm64/bookworm."""
    configured = os.environ.get("EDGEKIT_ARM64_ROOT")
    if configured:
        return Path(configured)
    return Path.home() / ".cache" / "edgekit" / "arm64" / str(RECIPE["suite"])


def _read_stamp(root: Path) -> dict[str, object]:
    try:
        stamp = json.loads((root / STAMP).read_text())
    except (OSError, ValueError):
        return {}
    return stamp if isinstance(stamp, dict) else {}


def is_complete(root: Path) -> bool:
    """True when `root` holds a finished build of the current recipe (reads its stamp only)."""
    return _read_stamp(root).get("recipe") == RECIPE


def host_ca_digest(ca_dir: Path = HOST_CA_DIR) -> str:
    """SHA-256 over the names and contents of the host's extra CA certificates ("" when there are none)."""
    files = sorted(p for p in ca_dir.rglob("*.crt") if p.is_file()) if ca_dir.is_dir() else []
    if not files:
        return ""
    h = hashlib.sha256()
    for p in files:
        h.update(str(p.relative_to(ca_dir)).encode() + b"\0" + p.read_bytes() + b"\0")
    return h.hexdigest()


def _write_stamp(root: Path, ca_digest: str) -> None:
    target = root / STAMP
    tmp = target.with_name(target.name + ".tmp")
    tmp.write_text(json.dumps({"recipe": RECIPE, "ca_digest": ca_digest}, indent=2) + "\n")
    os.replace(tmp, target)


def _sync_ca(root: Path, digest: str, *, fresh: bool) -> None:
    """Install the host's extra CA certificates in the root (replacing an older copy). `fresh` rebuilds the
    whole bundle, which drops certificates the host no longer has; a new root only needs them added, and
    rebuilding runs a shell per certificate, minutes under emulation on a busy host."""
    dest = root / _ROOT_CA_DIR
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    if digest:
        for p in sorted(HOST_CA_DIR.rglob("*.crt")):
            if p.is_file():
                target = dest / p.relative_to(HOST_CA_DIR)
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(p, target)
    proc = run_in_root(root, ["update-ca-certificates", *(["--fresh"] if fresh else [])], timeout=1800)
    if proc.returncode != 0:
        raise RootBuildError(
            f"update-ca-certificates failed in the arm64 root {root} (exit {proc.returncode}): "
            f"{proc.stderr.strip()[-400:]}; delete the root to rebuild it"
        )


@contextmanager
def _locked(root: Path) -> Iterator[None]:
    lock = root.parent / f".{root.name}.lock"
    with open(lock, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)  # blocks while another process builds or syncs this root
        yield


def _check_host() -> None:
    if os.geteuid() != 0:
        raise HostSetupError("building the arm64 root needs root rights (mmdebstrap, chroot); run as root")
    missing = [t for t in ("mmdebstrap", "qemu-aarch64-static", "update-binfmts") if shutil.which(t) is None]
    if missing:
        raise HostSetupError(f"{', '.join(missing)} not found; install the Debian packages: `{APT_FIX}`")


def _build(target: Path, log: Path) -> None:
    """mmdebstrap the recipe into the empty directory `target`, logging to `log`; its mounts die with its
    namespace."""
    argv = [
        "unshare", "--mount", "--propagation", "private", "--",
        "mmdebstrap", f"--arch={RECIPE['arch']}", f"--variant={RECIPE['variant']}",
        "--include=" + ",".join(RECIPE["packages"]),  # type: ignore[arg-type]
        str(RECIPE["suite"]), str(target), str(RECIPE["mirror"]),
    ]  # fmt: skip
    # Only what apt needs to reach the mirror passes from the host environment.
    passed = {k: v for k, v in os.environ.items() if k.lower() in ("http_proxy", "https_proxy", "no_proxy")}
    with open(log, "w") as out:
        try:
            proc = subprocess.run(
                argv, stdout=out, stderr=subprocess.STDOUT, env=clean_env(passed),
                timeout=BUILD_TIMEOUT, check=False, start_new_session=True,
            )  # fmt: skip
        except subprocess.TimeoutExpired as e:
            raise RootBuildError(f"mmdebstrap ran past {BUILD_TIMEOUT} s building {target}; see {log}") from e
    if proc.returncode != 0:
        tail = log.read_text(errors="replace").strip().splitlines()[-5:]
        raise RootBuildError(
            f"mmdebstrap failed building the arm64 root (exit {proc.returncode}); last lines of {log}: "
            f"{' | '.join(tail)}; check that {RECIPE['mirror']} is reachable"
        )
    log.unlink()


def ensure_root(path: str | os.PathLike[str] | None = None) -> Path:
    """Return a complete arm64 root at `path` (default `default_root_path()`), building it if needed.

    Reuses a root whose stamp names the current recipe (syncing the host's extra CA certificates if they
    changed); otherwise builds a new one into a temporary sibling and renames it into place, replacing a
    stale one that edgekit built (never a directory it did not build). Enables binfmt_misc for aarch64 first.

    Raises:
        HostSetupError: not root, or mmdebstrap / qemu-user-static / binfmt-support missing or unusable.
        RootBuildError: mmdebstrap or update-ca-certificates failed.
    """
    root = Path(path) if path is not None else default_root_path()
    root = root.absolute()
    _check_host()
    ensure_binfmt()
    root.parent.mkdir(parents=True, exist_ok=True)
    digest = host_ca_digest()
    with _locked(root):
        if root.exists() and not _read_stamp(root) and any(root.iterdir()):
            raise RootBuildError(
                f"{root} exists and is not an arm64 root edgekit built (no /{STAMP}); remove it or choose "
                f"another path (EDGEKIT_ARM64_ROOT)"
            )
        if is_complete(root):
            if _read_stamp(root).get("ca_digest") != digest:
                _sync_ca(root, digest, fresh=True)
                _write_stamp(root, digest)
            return root
        fresh = Path(tempfile.mkdtemp(prefix=f".{root.name}.build-", dir=root.parent))
        try:
            _build(fresh, root.parent / f"{root.name}.build.log")
            _sync_ca(fresh, digest, fresh=False)
            _write_stamp(fresh, digest)
            if root.exists():
                stale = Path(tempfile.mkdtemp(prefix=f".{root.name}.stale-", dir=root.parent))
                os.rename(root, stale / "root")
                shutil.rmtree(stale, ignore_errors=True)
            os.rename(fresh, root)
        except BaseException:
            shutil.rmtree(fresh, ignore_errors=True)
            raise
    return root
