"""Atomic, durable file writes: the one implementation the device, the server and the converters share.

A reader of the destination sees the old bytes or the new ones, never a mix, and after a power loss the
rename has either happened or not: write a temporary file in the destination's folder, fsync it, rename it
over the destination, fsync the folder. Standard library only, so that `signing`, `device_runtime` and the
host packages can all import it (it lives here because `signing` is the one package all of them import).

Temporary names are unique (`.<name>.<random>.tmp`, or `.<stem>.<random>.tmp<suffix>` for
`atomic_output`), so two writers of the same file never truncate each other's temporary file; the last
rename wins. New files get `mode` when given, otherwise the usual permissions (0o666 less the process
umask, applied by the kernel: the umask is never changed, which would race with other threads).
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path

__all__ = ["atomic_output", "atomic_write", "fsync_dir"]


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """fsync a directory so that a rename or a new file inside it survives power loss."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _temporary(destination: Path, mode: int | None, *, keep_suffix: bool = False) -> tuple[int, Path]:
    for _ in range(16):
        token = secrets.token_hex(6)
        if keep_suffix:
            name = f".{destination.stem}.{token}.tmp{destination.suffix}"
        else:
            name = f".{destination.name}.{token}.tmp"
        temp = destination.with_name(name)
        try:
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o666)
        except FileExistsError:
            continue
        if mode is not None:
            os.fchmod(fd, mode)
        return fd, temp
    raise FileExistsError(f"cannot create a unique temporary file next to {destination}")


def _commit(temp: Path, destination: Path) -> None:
    os.replace(temp, destination)
    fsync_dir(destination.parent)


def atomic_write(path: str | os.PathLike[str], data: bytes, *, mode: int | None = None) -> None:
    """Replace `path` with `data` atomically and durably (see the module docstring).

    Args:
        path: the destination; its folder must exist.
        data: the new content.
        mode: permission bits of the new file (e.g. 0o600 for private state); None: 0o666 less the umask.

    Raises:
        OSError: the folder is missing or not writable, or the disk is full; the destination is unchanged.
    """
    destination = Path(path)
    fd, temp = _temporary(destination, mode)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        _commit(temp, destination)
    except BaseException:
        with contextlib.suppress(OSError):
            temp.unlink()
        raise


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike[str], *, mode: int | None = None) -> Iterator[Path]:
    """Yield a temporary path next to `path` for a writer that takes a file name (onnx.save, exporters).

    On success the temporary file is fsynced and renamed over `path`; on any exception it is removed and
    `path` is left as it was. The temporary name keeps `path`'s suffix, for writers that check it. The
    folder is created when missing.

    Raises:
        OSError: as `atomic_write`.
    """
    destination = Path(path)
    destination.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = _temporary(destination, mode, keep_suffix=True)
    os.close(fd)
    try:
        yield temp
        with open(temp, "rb+") as handle:
            os.fsync(handle.fileno())
        _commit(temp, destination)
    finally:
        with contextlib.suppress(FileNotFoundError):
            temp.unlink()
