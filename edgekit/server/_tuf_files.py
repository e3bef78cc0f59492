"""Files and keys for the TUF repository: atomic writes, Ed25519 role keys, a cross-process lock.

Split from `tuf_repo` along the seam between storage mechanics and TUF semantics.
"""

from __future__ import annotations

import datetime as _dt
import fcntl
import os
import stat
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from securesystemslib.signer import CryptoSigner

from edgekit.errors import EdgekitError
from signing import atomic as _atomic
from signing.atomic import fsync_dir

__all__ = [
    "FileLock",
    "RepositoryError",
    "atomic_write",
    "fsync_dir",
    "generate_key",
    "load_signer",
    "signers_in",
    "utc",
]


class RepositoryError(EdgekitError):
    """The repository cannot do what was asked (the message says why and how to fix it)."""


def atomic_write(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Create the folder, then write atomically and durably (`signing.atomic`); repository files: 0644."""
    path.parent.mkdir(parents=True, exist_ok=True)
    _atomic.atomic_write(path, data, mode=mode)


def generate_key(path: Path) -> CryptoSigner:
    """Create an Ed25519 key at `path` (PEM PKCS#8, mode 0600, folder 0700); refuse to overwrite."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    private = Ed25519PrivateKey.generate()
    signer = CryptoSigner(private)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
    except FileExistsError as e:
        raise RepositoryError(f"{path} exists; refusing to overwrite a key") from e
    with os.fdopen(fd, "wb") as handle:
        handle.write(signer.private_bytes)
        handle.flush()
        os.fsync(handle.fileno())
    fsync_dir(path.parent)
    return signer


def load_signer(path: Path) -> CryptoSigner:
    """Load a key written by `generate_key`.

    Raises:
        RepositoryError: missing, unreadable, readable by others, or not a PEM private key.
    """
    try:
        info = os.stat(path)
        data = path.read_bytes()
    except OSError as e:
        raise RepositoryError(f"{path}: cannot read the key ({e.strerror})") from e
    if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise RepositoryError(f"{path}: a private key must not be readable by others (chmod 600 {path})")
    try:
        return CryptoSigner(load_pem_private_key(data, None))
    except (ValueError, TypeError) as e:
        raise RepositoryError(f"{path}: not an unencrypted PEM private key ({e})") from e


def signers_in(directory: Path, pattern: str) -> list[CryptoSigner]:
    return [load_signer(p) for p in sorted(directory.glob(pattern))]


def utc(seconds: float) -> _dt.datetime:
    return _dt.datetime.fromtimestamp(seconds, _dt.timezone.utc).replace(microsecond=0)


class FileLock:
    """An exclusive `fcntl.flock` on a lock file; each use opens its own fd, so threads wait too."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._fd: int | None = None

    def __enter__(self) -> FileLock:
        self._path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        return self

    def __exit__(self, *exc: object) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
