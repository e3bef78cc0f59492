"""Delta updates, device side: rebuild a release's `.ekb` from the active slot's files plus a delta.

A delta only moves bytes; it never adds trust. The updater hashes what `apply_delta` writes and installs it
only when the SHA-256 and length are the ones TUF pins for the full bundle; `Runtime.install` then checks
the bundle's own signatures as for any download. Anything else falls back to the full bundle.

The base is the canonical archive of the active release (`SlotArchive`: the bytes `signing.archive.write_ekb`
writes for the slot's files, read in place, never copied). The format (``edgekit.delta/v1``, file `.ekd`)::

    b"EKDELTA1", base_length, target_length, ops
    then `ops` operations, each a one-byte code, its fields, then its zstd frame if it has one:
      C  base_offset, length                           target += base[offset:offset+length]
      L  length, frame_length                          target += zstd(frame)
      R  base_offset, ref, length, frame_length        target += zstd(frame, raw dictionary base[offset:+ref])
      X  base_offset, length, width, frame_length      (S: the same fields)
         the frame holds `length` bytes as `width` byte planes (byte 0 of every word, then byte 1, ...) of
         little-endian words d; target += base[offset:offset+length] XOR d (S: + d, modulo 2**(8*width))
      P  length, width, frame_length                   target += the words of zstd(frame), stored as planes

Every number is an unsigned LEB128 varint (at most 10 bytes): a re-release's delta is a few hundred bytes,
where fixed-width fields would be a tenth of it.

Memory is bounded by `DeltaLimits` whatever the delta says: one reference (`max_ref_bytes`) and a few
output chunks (`max_chunk_bytes`) at a time; the output streams to a file, hashed as it is written.
Errors: `DeltaError` (a `DeviceRuntimeError`) with a stable `reason` for telemetry.
"""

from __future__ import annotations

import bisect
import contextlib
import hashlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from device_runtime.errors import DeviceRuntimeError
from signing.archive import ArchiveSegment, archive_layout

__all__ = [
    "MAGIC",
    "SCHEMA",
    "DeltaError",
    "DeltaLimits",
    "SlotArchive",
    "apply_delta",
    "codec_available",
    "delta_target_path",
    "pack_varints",
    "unpack_varints",
]

MAGIC = b"EKDELTA1"
SCHEMA = "edgekit.delta/v1"
OP_COPY, OP_LITERAL, OP_REF, OP_XOR, OP_SUB, OP_PLANES = b"C", b"L", b"R", b"X", b"S", b"P"
WIDTHS = (1, 2, 4, 8)  # bytes per word of an X or S operation
_MAX_VARINT = 10  # bytes of one LEB128 number (64 bits)
_DTYPES = {1: "<u1", 2: "<u2", 4: "<u4", 8: "<u8"}


class DeltaError(DeviceRuntimeError):
    """A delta that cannot be used here: malformed, beyond the limits, or not for this base."""

    def __init__(self, message: str, reason: str = "delta-apply") -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class DeltaLimits:
    """What a delta may ask of the device (the encoder keeps to the same limits)."""

    max_ref_bytes: int = 32 << 20  # bytes of base one R operation may use as its dictionary
    max_chunk_bytes: int = 4 << 20  # bytes one L, R, X or S operation may produce
    max_ops: int = 1 << 20  # operations in one delta
    max_frame_bytes: int = 8 << 20  # bytes of one compressed frame
    max_read_factor: int = 16  # base bytes read in all, at most this times the target plus one reference

    @property
    def max_window_bytes(self) -> int:
        """The zstd window a frame may need: its reference plus its output, as a power of two."""
        return 1 << (self.max_ref_bytes + self.max_chunk_bytes - 1).bit_length()


def delta_target_path(model: str, version: str, base_bundle_id: str) -> str:
    """The TUF target path of the delta from release `base_bundle_id` to `version` of `model`."""
    return f"deltas/{model}/{version}/{base_bundle_id}.ekd"


def codec_available() -> bool:
    """Whether this device can decode deltas (the `zstandard` package is installed)."""
    try:
        import zstandard  # noqa: F401
    except ImportError:
        return False
    return True


def pack_varints(*values: int) -> bytes:
    """Unsigned LEB128 encoding of each value, concatenated (the format's numbers)."""
    out = bytearray()
    for value in values:
        if value < 0:
            raise ValueError(f"varints are unsigned, got {value}")
        while True:
            byte, value = value & 0x7F, value >> 7
            out.append(byte | (0x80 if value else 0))
            if not value:
                break
    return bytes(out)


def unpack_varints(data: bytes, count: int, position: int = 0) -> tuple[list[int], int]:
    """`count` LEB128 numbers from `data` at `position`; returns them and the position after them.

    Raises:
        DeltaError: the data ends inside a number, or a number is longer than 10 bytes.
    """
    values = []
    for _ in range(count):
        value = shift = 0
        for index in range(_MAX_VARINT + 1):
            if index == _MAX_VARINT or position >= len(data):
                raise DeltaError("the delta ends inside a number, or a number is too long")
            byte = data[position]
            position += 1
            value |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                break
        values.append(value)
    return values, position


# ---- the base: the active slot as the archive it came from -------------------------------------------------
class SlotArchive:
    """The canonical `.ekb` of a verified slot, read in place: `members` are `(name, size)` in archive order.

    Use as a context manager (it keeps the slot's files open while a delta is applied).
    """

    def __init__(self, directory: Path, members: list[tuple[str, int]]) -> None:
        self.directory = Path(directory)
        self.budget: int | None = None  # bytes `read` may still return (set by `apply_delta`)
        self._segments: list[ArchiveSegment] = archive_layout(members)
        self._starts = [s.offset for s in self._segments]
        last = self._segments[-1]
        self.length = last.offset + last.length
        self._files: dict[str, IO[bytes]] = {}

    def __enter__(self) -> SlotArchive:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the slot's files."""
        for handle in self._files.values():
            handle.close()
        self._files.clear()

    def _file(self, name: str, size: int) -> IO[bytes]:
        handle = self._files.get(name)
        if handle is None:
            fd = os.open(self.directory / name, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
            handle = os.fdopen(fd, "rb")
            if os.fstat(handle.fileno()).st_size != size:
                handle.close()
                raise DeltaError(f"{name} in the active slot is no longer {size} bytes", "slot-changed")
            self._files[name] = handle
        return handle

    def read(self, offset: int, length: int) -> bytes:
        """`length` bytes at `offset` of the archive."""
        if offset < 0 or length < 0 or offset + length > self.length:
            raise DeltaError(
                f"the delta reads base bytes {offset}..{offset + length}, beyond its {self.length} bytes"
            )
        if self.budget is not None:
            self.budget -= length
            if self.budget < 0:
                raise DeltaError("the delta reads more of the base than its limits allow")
        parts = []
        index = bisect.bisect_right(self._starts, offset) - 1
        while length > 0:
            segment = self._segments[index]
            inner = offset - segment.offset
            count = min(length, segment.length - inner)
            if segment.name is None:
                parts.append(segment.data[inner : inner + count])
            else:
                handle = self._file(segment.name, segment.length)
                handle.seek(inner)
                data = handle.read(count)
                if len(data) != count:
                    raise DeltaError(f"{segment.name} in the active slot is shorter", "slot-changed")
                parts.append(data)
            offset += count
            length -= count
            index += 1
        return b"".join(parts)


# ---- applying ----------------------------------------------------------------------------------------------
class _Reader:
    def __init__(self, source: IO[bytes]) -> None:
        self._source = source

    def take(self, count: int, what: str) -> bytes:
        data = self._source.read(count)
        if len(data) != count:
            raise DeltaError(f"the delta ends inside {what}")
        return data

    def numbers(self, count: int, what: str) -> list[int]:
        values = []
        for _ in range(count):
            encoded = b""
            while True:
                byte = self.take(1, what)
                encoded += byte
                if not byte[0] & 0x80 or len(encoded) >= _MAX_VARINT:
                    break
            values += unpack_varints(encoded, 1)[0]
        return values

    def frame(self, length: int, limits: DeltaLimits) -> bytes:
        if length > limits.max_frame_bytes:
            raise DeltaError(f"a frame of {length} bytes is above the limit of {limits.max_frame_bytes}")
        return self.take(length, "a frame")


def _header(reader: _Reader) -> dict[str, int]:
    if reader.take(len(MAGIC), "the magic") != MAGIC:
        raise DeltaError(f"not an edgekit delta ({SCHEMA}): bad magic")
    base_length, target_length, ops = reader.numbers(3, "the header")
    return {"base_length": base_length, "target_length": target_length, "ops": ops}


def _decompress(frame: bytes, length: int, limits: DeltaLimits, dictionary: bytes | None = None) -> bytes:
    import zstandard

    try:
        if zstandard.frame_content_size(frame) != length:
            raise DeltaError(f"a frame does not declare the {length} bytes its operation says")
        dict_data = (
            None
            if dictionary is None
            else zstandard.ZstdCompressionDict(dictionary, dict_type=zstandard.DICT_TYPE_RAWCONTENT)
        )
        decompressor = zstandard.ZstdDecompressor(
            dict_data=dict_data, max_window_size=limits.max_window_bytes
        )
        data = decompressor.decompress(frame, max_output_size=length, allow_extra_data=False)
    except zstandard.ZstdError as e:
        raise DeltaError(f"a frame does not decompress ({e})") from e
    if len(data) != length:
        raise DeltaError(f"a frame gave {len(data)} bytes, its operation says {length}")
    return data


def _words(planes: bytes, width: int) -> Any:
    import numpy as np

    if width not in WIDTHS:
        raise DeltaError(f"word width {width} is not one of {WIDTHS}")
    if len(planes) % width:
        raise DeltaError(f"{len(planes)} bytes are not whole {width}-byte words")
    return np.frombuffer(planes, np.uint8).reshape(width, -1).T.copy().view(_DTYPES[width]).ravel()


def _combine(base: bytes, planes: bytes, width: int, subtract: bool) -> bytes:
    import numpy as np

    words = _words(planes, width)
    old = np.frombuffer(base, _DTYPES[width])
    return bytes(old + words if subtract else old ^ words)


def _operations(reader: _Reader, base: SlotArchive, count: int, limits: DeltaLimits) -> Iterator[bytes]:
    """The target's bytes, one operation at a time (COPY in bounded pieces)."""
    for _ in range(count):
        code = reader.take(1, "an operation code")
        if code == OP_COPY:
            offset, length = reader.numbers(2, "a COPY")
            while length > 0:
                piece = min(length, limits.max_chunk_bytes)
                yield base.read(offset, piece)
                offset += piece
                length -= piece
        elif code == OP_LITERAL:
            length, frame = reader.numbers(2, "a LITERAL")
            _check_chunk(length, limits)
            yield _decompress(reader.frame(frame, limits), length, limits)
        elif code == OP_REF:
            offset, ref, length, frame = reader.numbers(4, "a REF")
            _check_chunk(length, limits)
            if ref > limits.max_ref_bytes:
                raise DeltaError(f"a reference of {ref} bytes is above the limit of {limits.max_ref_bytes}")
            dictionary = base.read(offset, ref)
            yield _decompress(reader.frame(frame, limits), length, limits, dictionary)
        elif code in (OP_XOR, OP_SUB):
            offset, length, width, frame = reader.numbers(4, "an XOR/SUB")
            _check_chunk(length, limits)
            planes = _decompress(reader.frame(frame, limits), length, limits)
            yield _combine(base.read(offset, length), planes, width, code == OP_SUB)
        elif code == OP_PLANES:
            length, width, frame = reader.numbers(3, "a PLANES")
            _check_chunk(length, limits)
            yield bytes(_words(_decompress(reader.frame(frame, limits), length, limits), width))
        else:
            raise DeltaError(f"unknown delta operation {code!r}")


def _check_chunk(length: int, limits: DeltaLimits) -> None:
    if length > limits.max_chunk_bytes:
        raise DeltaError(f"an operation of {length} bytes is above the limit of {limits.max_chunk_bytes}")


def apply_delta(
    delta: IO[bytes],
    base: SlotArchive,
    output: IO[bytes],
    *,
    target_length: int,
    limits: DeltaLimits | None = None,
) -> str:
    """Write the target that `delta` rebuilds from `base` to `output`; return its SHA-256 (hex).

    Writing stops as soon as the output would pass `target_length` (the TUF-pinned length of the full
    bundle). The caller compares the digest with the pinned one: this function proves nothing.

    Raises:
        DeltaError: a malformed delta, one for another base, or one beyond `limits` (reason
            "delta-apply"), or a slot that changed under it (reason "slot-changed").
    """
    limits = limits or DeltaLimits()
    reader = _Reader(delta)
    header = _header(reader)
    if header["base_length"] != base.length:
        raise DeltaError(
            f"the delta is for a base of {header['base_length']} bytes, the active slot is {base.length}",
            "slot-changed",
        )
    if header["target_length"] != target_length:
        raise DeltaError(f"the delta builds {header['target_length']} bytes, the target is {target_length}")
    if header["ops"] > limits.max_ops:
        raise DeltaError(f"{header['ops']} operations are above the limit of {limits.max_ops}")
    digest = hashlib.sha256()
    written = 0
    base.budget = limits.max_read_factor * target_length + limits.max_ref_bytes
    for chunk in _operations(reader, base, header["ops"], limits):
        written += len(chunk)
        if written > target_length:
            raise DeltaError(f"the delta builds more than the target's {target_length} bytes")
        digest.update(chunk)
        output.write(chunk)
    if written != target_length:
        raise DeltaError(f"the delta built {written} bytes, the target is {target_length}")
    if delta.read(1):
        raise DeltaError("the delta holds bytes after its last operation")
    return digest.hexdigest()


def rebuild(
    delta_path: Path, base: SlotArchive, output_path: Path, *, target_length: int, limits: DeltaLimits | None
) -> str:
    """`apply_delta` from a file into a new file (fsynced); the partial output is removed on failure."""
    try:
        with open(delta_path, "rb") as delta, open(output_path, "xb") as output:
            digest = apply_delta(delta, base, output, target_length=target_length, limits=limits)
            output.flush()
            os.fsync(output.fileno())
        return digest
    except BaseException:
        with contextlib.suppress(OSError):
            output_path.unlink()
        raise
