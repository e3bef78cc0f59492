"""The `.ekb` transport file: a deterministic, uncompressed POSIX ustar archive of a bundle directory.

mtime 0, uid/gid 0, empty user and group names, mode 0644, regular files only; `model.sig` first, then the
small files by name, then the model payload (the entrypoint and its external data) last, so a device can
verify the signature before the large part of the download arrives. Same inputs, same bytes.
"""

from __future__ import annotations

import io
import os
import tarfile
from collections.abc import Iterable
from pathlib import Path, PurePosixPath
from typing import NamedTuple

from signing.manifest import SIGNATURE_FILE, BundleManifest

__all__ = ["ArchiveSegment", "archive_layout", "member_order", "write_ekb"]


def member_order(manifest: BundleManifest) -> list[str]:
    """Archive order: model.sig, small files by name, then model and external data (largest last)."""
    payload_roles = ("model", "external-data")
    small = sorted(
        (e.name for e in manifest.files.values() if e.role not in payload_roles), key=PurePosixPath
    )
    large = sorted(
        (e for e in manifest.files.values() if e.role in payload_roles), key=lambda e: (e.size, e.name)
    )
    return [SIGNATURE_FILE, *small, *(e.name for e in large)]


def _info(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = 0
    info.mode = 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.type = tarfile.REGTYPE
    return info


class ArchiveSegment(NamedTuple):
    """A byte range of an archive `write_ekb` writes: a member's data (`name`) or literal bytes (`data`)."""

    offset: int  # bytes from the start of the archive
    length: int  # bytes
    name: str | None  # the member whose data this is; None for headers, padding and the end blocks
    data: bytes  # the literal bytes when `name` is None (headers and padding), else b""


def archive_layout(members: Iterable[tuple[str, int]]) -> list[ArchiveSegment]:
    """The exact byte layout `write_ekb` produces for `(name, size)` members, without reading any file.

    A device rebuilds a release's `.ekb` from its slot this way (delta updates): headers and padding are
    literal bytes, member data is read from the slot's files. Same members, same bytes as `write_ekb`.
    """
    segments: list[ArchiveSegment] = []
    offset = 0
    for name, size in members:
        header = _info(name, size).tobuf(tarfile.USTAR_FORMAT, "utf-8", "surrogateescape")
        segments.append(ArchiveSegment(offset, len(header), None, header))
        offset += len(header)
        segments.append(ArchiveSegment(offset, size, name, b""))
        offset += size
        padding = -size % tarfile.BLOCKSIZE
        if padding:
            segments.append(ArchiveSegment(offset, padding, None, bytes(padding)))
            offset += padding
    end = 2 * tarfile.BLOCKSIZE
    end += -(offset + end) % tarfile.RECORDSIZE  # tarfile pads the archive to a whole record
    segments.append(ArchiveSegment(offset, end, None, bytes(end)))
    return segments


def write_ekb(bundle_dir: Path, names: Iterable[str], destination: Path) -> None:
    """Write the named files of `bundle_dir` into `destination` (opened by the caller's atomic writer)."""
    with (
        open(destination, "wb") as raw,
        tarfile.open(fileobj=raw, mode="w", format=tarfile.USTAR_FORMAT) as tar,
    ):
        for name in names:
            path = bundle_dir / name
            size = os.stat(path, follow_symlinks=False).st_size
            with open(path, "rb") as handle:
                tar.addfile(_info(name, size), handle)


def ekb_bytes(bundle_dir: Path, names: Iterable[str]) -> bytes:
    """The archive in memory (tests and small bundles)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name in names:
            data = (bundle_dir / name).read_bytes()
            tar.addfile(_info(name, len(data)), io.BytesIO(data))
    return buffer.getvalue()
