"""Delta updates, host side: encode the delta from one release's `.ekb` to the next (`edgekit publish`).

The base is the canonical archive of the old release (`canonical_archive`), the bytes a device rebuilds
from its slot (`device_runtime.delta.SlotArchive`). The encoder writes the format that
`device_runtime.delta` documents and applies, and keeps to the same `DeltaLimits`.

Choice by measurement (bench/delta.py, bench/README.md): the encoder builds two encodings and keeps the
smaller one.

- structured: the two archives are walked member by member. Identical members and identical runs are
  copied from the base. ONNX initializers (found by walking the protobuf, no onnx import) are matched by
  name, dtype and size, and each is sent as the difference of its words split into byte planes (XOR or
  subtraction, whichever compresses better: subtraction wins on re-quantized int8 weights, XOR on most
  float32), or compressed with the old tensor as a zstd dictionary, or plainly: the smallest frame wins,
  chunk by chunk. Members of the same size that are not ONNX (TFLite, external data) get the same
  word-wise candidates over the whole member. Everything else is compressed with the matching old bytes
  as a raw zstd dictionary.
- generic: the whole new archive compressed in chunks, each with the matching window of the old archive
  as its dictionary (the same idea as `zstd --patch-from`, memory-bounded).
"""

from __future__ import annotations

import io
import tarfile
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from device_runtime.delta import (
    MAGIC,
    OP_COPY,
    OP_LITERAL,
    OP_PLANES,
    OP_REF,
    OP_SUB,
    OP_XOR,
    DeltaLimits,
    pack_varints,
    unpack_varints,
)

__all__ = ["DeltaStats", "canonical_archive", "encode_delta", "onnx_tensors", "rebuilds_exactly"]

LEVEL = 19  # zstd level of every frame (as `zstd -19`)
_MIN_COPY = 64  # bytes: shorter identical runs are not worth an operation
_MIN_TENSOR = 4 << 10  # bytes: smaller initializers are diffed as bytes, with what surrounds them
_MARGIN = 64 << 10  # bytes of base on each side of where similar bytes are expected (REF dictionaries)
# ONNX TensorProto.DataType -> bytes per element (for the word-wise difference)
_ONNX_WIDTH = {1: 4, 2: 1, 3: 1, 4: 2, 5: 2, 6: 4, 7: 8, 9: 1, 10: 2, 11: 8, 12: 4, 13: 8, 16: 2}


@dataclass(frozen=True)
class DeltaStats:
    """What the encoder chose: the encoding kept and the size of each candidate (bytes)."""

    chosen: str
    structured_bytes: int
    generic_bytes: int


def canonical_archive(ekb: Path) -> bytes:
    """The canonical `.ekb` of a bundle (what `write_ekb` writes for its files, in `member_order`).

    The bundle is NOT verified here: the delta's output is checked against the TUF-pinned hash of the
    full bundle on the device, and the base against the device's verified slot.
    """
    from signing.archive import ekb_bytes, member_order
    from signing.verify import unsafe_extract_unverified

    with tempfile.TemporaryDirectory(prefix="edgekit-delta-") as scratch:
        folder = Path(scratch) / "bundle"
        bundle = unsafe_extract_unverified(ekb, folder)
        return ekb_bytes(folder, member_order(bundle.manifest))


def rebuilds_exactly(base_ekb: Path, delta: bytes, target: bytes) -> bool:
    """Whether `delta`, applied by the device's own code to the slot files of `base_ekb`, gives `target`
    byte for byte. `edgekit publish` checks every delta this way before signing it: an encoder bug must
    cost a skipped delta, not every device a useless download followed by the full bundle."""
    import hashlib

    from device_runtime.delta import DeltaError, SlotArchive, apply_delta
    from signing.archive import member_order
    from signing.manifest import SIGNATURE_FILE
    from signing.verify import unsafe_extract_unverified

    with tempfile.TemporaryDirectory(prefix="edgekit-delta-check-") as scratch:
        folder = Path(scratch) / "slot"
        bundle = unsafe_extract_unverified(base_ekb, folder)
        members = [(SIGNATURE_FILE, (folder / SIGNATURE_FILE).stat().st_size)]
        members += [(n, bundle.manifest.files[n].size) for n in member_order(bundle.manifest)[1:]]
        out = io.BytesIO()
        try:
            with SlotArchive(folder, members) as slot:
                digest = apply_delta(io.BytesIO(delta), slot, out, target_length=len(target))
        except DeltaError:
            return False
    return out.getvalue() == target and digest == hashlib.sha256(target).hexdigest()


# ---- the wire format ---------------------------------------------------------------------------------------
def _zstd(data: bytes, dictionary: bytes | None = None) -> bytes:
    import zstandard

    dict_data = (
        None
        if dictionary is None
        else zstandard.ZstdCompressionDict(dictionary, dict_type=zstandard.DICT_TYPE_RAWCONTENT)
    )
    return zstandard.ZstdCompressor(level=LEVEL, dict_data=dict_data, write_content_size=True).compress(data)


def _copy(offset: int, length: int) -> bytes:
    return OP_COPY + pack_varints(offset, length)


def _literal(data: bytes) -> bytes:
    frame = _zstd(data)
    return OP_LITERAL + pack_varints(len(data), len(frame)) + frame


def _ref(data: bytes, base: bytes, offset: int, ref: int) -> bytes:
    frame = _zstd(data, base[offset : offset + ref])
    return OP_REF + pack_varints(offset, ref, len(data), len(frame)) + frame


def _planes(new: bytes, old: bytes, width: int, subtract: bool) -> bytes:
    import numpy as np

    dtype = {1: "<u1", 2: "<u2", 4: "<u4", 8: "<u8"}[width]
    a, b = np.frombuffer(new, dtype), np.frombuffer(old, dtype)
    words = a - b if subtract else a ^ b
    return _split(words.tobytes(), width)


def _split(data: bytes, width: int) -> bytes:
    import numpy as np

    return np.frombuffer(data, np.uint8).reshape(-1, width).T.tobytes()


def _plane_literal(data: bytes, width: int) -> bytes:
    frame = _zstd(_split(data, width))
    return OP_PLANES + pack_varints(len(data), width, len(frame)) + frame


def _words(data: bytes, base: bytes, offset: int, width: int, subtract: bool) -> bytes:
    frame = _zstd(_planes(data, base[offset : offset + len(data)], width, subtract))
    code = OP_SUB if subtract else OP_XOR
    return code + pack_varints(offset, len(data), width, len(frame)) + frame


# ---- candidates --------------------------------------------------------------------------------------------
def _smallest(*candidates: bytes) -> bytes:
    return min(candidates, key=len)


def _window(base_length: int, start: int, length: int, limit: int) -> tuple[int, int]:
    """A reference window of at most `limit` bytes centred on [start, start + length) of the base."""
    size = min(limit, base_length)
    begin = max(0, min(start - (size - length) // 2, base_length - size))
    return begin, size


def _similar(
    data: bytes, base: bytes, start: int, end: int, limits: DeltaLimits, margin: int | None = None
) -> Iterator[bytes]:
    """`data` (no more than a chunk) encoded against base[start:end] (a hint where similar bytes are),
    widened by `margin` bytes each side (default: up to 64 KiB, less for small ranges)."""
    if not data:
        return
    span = max(end - start, len(data), 0)
    if margin is None:
        margin = min(_MARGIN, max(span, 4 << 10))  # small ranges (headers, gaps) get small dictionaries
    begin, size = _window(len(base), start, span, min(limits.max_ref_bytes, span + 2 * margin))
    candidates = [_literal(data)]
    if size:
        candidates.append(_ref(data, base, begin, size))
    yield _smallest(*candidates)


def _range(data: bytes, base: bytes, start: int, end: int, limits: DeltaLimits) -> Iterator[bytes]:
    """Any byte range: copied when equal to base[start:end], else chunks compressed against it."""
    if end - start == len(data) and len(data) >= _MIN_COPY and base[start:end] == data:
        yield _copy(start, len(data))
        return
    step = limits.max_chunk_bytes
    for index in range(0, len(data), step):
        scale = (end - start) / max(len(data), 1)
        hint = start + int(index * scale)
        yield from _similar(data[index : index + step], base, hint, hint + step, limits)


def _aligned(data: bytes, base: bytes, start: int, width: int, limits: DeltaLimits) -> Iterator[bytes]:
    """A run of words at the same size in both: the best of copy, XOR, SUB, REF and plain, per chunk."""
    step = limits.max_chunk_bytes - limits.max_chunk_bytes % 8
    for index in range(0, len(data), step):
        chunk = data[index : index + step]
        offset = start + index
        if base[offset : offset + len(chunk)] == chunk:
            yield _copy(offset, len(chunk))
            continue
        whole = len(chunk) - len(chunk) % width
        candidates = [b"".join(_similar(chunk, base, offset, offset + len(chunk), limits))]
        if whole:
            tail = b"".join(_similar(chunk[whole:], base, offset + whole, offset + len(chunk), limits))
            for subtract in (False, True):
                candidates.append(_words(chunk[:whole], base, offset, width, subtract) + tail)
            if width > 1:  # unrelated weights (retrained): the planes alone compress better than the bytes
                candidates.append(_plane_literal(chunk[:whole], width) + tail)
        yield _smallest(*candidates)


# ---- archive structure -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Member:
    name: str
    header: int  # offset of the header block
    data: int  # offset of the data
    size: int


def _members(archive: bytes) -> list[_Member]:
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:") as tar:
        return [_Member(m.name, m.offset, m.offset_data, m.size) for m in tar.getmembers() if m.isreg()]


def _varint(data: bytes, position: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[position]
        position += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, position
        shift += 7


def _fields(data: bytes, start: int, end: int) -> Iterator[tuple[int, int, int, int]]:
    """(field number, wire type, value or payload offset, payload length) of a protobuf message."""
    position = start
    while position < end:
        key, position = _varint(data, position)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, position = _varint(data, position)
            yield number, wire, value, 0
        elif wire == 1:
            yield number, wire, position, 8
            position += 8
        elif wire == 2:
            length, position = _varint(data, position)
            yield number, wire, position, length
            position += length
        elif wire == 5:
            yield number, wire, position, 4
            position += 4
        else:
            raise ValueError(f"protobuf wire type {wire}")
    if position != end:
        raise ValueError("protobuf message overruns its length")


def onnx_tensors(model: bytes) -> list[tuple[str, int, int, int]]:
    """The graph initializers stored as raw_data: (name, element width in bytes, offset, length), in order.

    Empty for anything that does not parse as an ONNX ModelProto (the encoder then treats it as bytes).
    """
    tensors = []
    try:
        for number, wire, graph, graph_length in _fields(model, 0, len(model)):
            if number != 7 or wire != 2:  # ModelProto.graph
                continue
            for field_number, field_wire, start, length in _fields(model, graph, graph + graph_length):
                if field_number != 5 or field_wire != 2:  # GraphProto.initializer
                    continue
                name, dtype, raw = "", 0, None
                for f, w, value, size in _fields(model, start, start + length):
                    if f == 8 and w == 2:
                        name = model[value : value + size].decode("utf-8", "replace")
                    elif f == 2 and w == 0:
                        dtype = value
                    elif f == 9 and w == 2:
                        raw = (value, size)
                if raw is not None and dtype in _ONNX_WIDTH:
                    tensors.append((name, _ONNX_WIDTH[dtype], raw[0], raw[1]))
    except (ValueError, IndexError):
        return []
    return tensors


def _member_ops(
    new: bytes, member: _Member, base: bytes, old: _Member, limits: DeltaLimits
) -> Iterator[bytes]:
    data = new[member.data : member.data + member.size]
    start, end = old.data, old.data + old.size
    if member.size == old.size and base[start:end] == data:
        yield _copy(start, member.size)
        return
    old_tensors = {t[0]: t for t in onnx_tensors(base[start:end])}
    # Small tensors (biases, scales, zero points) stay in the byte ranges between the large ones: one
    # dictionary-compressed range costs less than an operation and a frame per tensor.
    tensors = [t for t in onnx_tensors(data) if t[3] >= _MIN_TENSOR]
    if not tensors and member.size == old.size:
        yield _smallest(
            b"".join(_aligned(data, base, start, 4, limits)), b"".join(_aligned(data, base, start, 1, limits))
        )
        return
    position, old_position = 0, start
    for name, width, offset, length in tensors:
        match = old_tensors.get(name)
        if match is None or match[1:4:2] != (width, length):  # a new or reshaped tensor: no base to use
            yield from _range(
                data[position:offset], base, old_position, old_position + offset - position, limits
            )
            yield from _fresh(data[offset : offset + length], width, limits)
            old_position += offset + length - position
        else:
            old_offset = start + match[2]
            yield from _range(data[position:offset], base, old_position, old_offset, limits)
            yield from _aligned(data[offset : offset + length], base, old_offset, width, limits)
            old_position = old_offset + length
        position = offset + length
    yield from _range(data[position:], base, old_position, end, limits)


def _fresh(data: bytes, width: int, limits: DeltaLimits) -> Iterator[bytes]:
    """Words with nothing to compare to: the smaller of plain zstd and zstd of the byte planes, per chunk."""
    step = limits.max_chunk_bytes - limits.max_chunk_bytes % 8
    for index in range(0, len(data), step):
        chunk = data[index : index + step]
        whole = len(chunk) - len(chunk) % width
        candidates = [_literal(chunk)]
        if width > 1 and whole:
            candidates.append(
                _plane_literal(chunk[:whole], width) + (_literal(chunk[whole:]) if chunk[whole:] else b"")
            )
        yield _smallest(*candidates)


def _structured(base: bytes, target: bytes, limits: DeltaLimits) -> list[bytes]:
    old = {m.name: m for m in _members(base)}
    ops: list[bytes] = []
    position = 0
    for member in _members(target):
        match = old.get(member.name)
        # the old bytes that end where the old member's data starts (its header and the padding before it)
        hint = match.data - (member.data - position) if match is not None else 0
        ops += _range(target[position : member.data], base, hint, hint + member.data - position, limits)
        if match is None:
            ops += _range(target[member.data : member.data + member.size], base, 0, len(base), limits)
        else:
            ops += _member_ops(target, member, base, match, limits)
        position = member.data + member.size
    tail = len(target) - position
    ops += _range(target[position:], base, len(base) - tail, len(base), limits)
    return ops


def _generic(base: bytes, target: bytes, limits: DeltaLimits) -> list[bytes]:
    scale = len(base) / max(len(target), 1)
    ops: list[bytes] = []
    for index in range(0, len(target), limits.max_chunk_bytes):
        chunk = target[index : index + limits.max_chunk_bytes]
        hint = int(index * scale)
        margin = (limits.max_ref_bytes - len(chunk)) // 2  # as much of the old archive as the device allows
        ops += _similar(chunk, base, hint, hint + len(chunk), limits, margin)
    return ops


def _coalesce(ops: list[bytes]) -> list[bytes]:
    """Adjacent copies of adjacent base ranges as one copy (an unchanged run of members)."""
    merged: list[bytes] = []
    for op in ops:
        if op[:1] == OP_COPY and merged and merged[-1][:1] == OP_COPY:
            (start, length), _ = unpack_varints(merged[-1], 2, 1)
            (offset, more), _ = unpack_varints(op, 2, 1)
            if start + length == offset:
                merged[-1] = _copy(start, length + more)
                continue
        merged.append(op)
    return merged


def _document(base: bytes, target: bytes, ops: list[bytes]) -> bytes:
    ops = _coalesce(ops)
    return b"".join([MAGIC, pack_varints(len(base), len(target), len(ops)), *ops])


def encode_delta(
    base: bytes, target: bytes, *, limits: DeltaLimits | None = None
) -> tuple[bytes, DeltaStats]:
    """The delta that rebuilds `target` (a new `.ekb`) from `base` (the old release's canonical archive).

    Returns the delta and what the encoder chose (see the module docstring).
    """
    limits = limits or DeltaLimits()
    structured = _document(base, target, _structured(base, target, limits))
    generic = _document(base, target, _generic(base, target, limits))
    chosen = "structured" if len(structured) <= len(generic) else "generic"
    stats = DeltaStats(chosen, len(structured), len(generic))
    return (structured if chosen == "structured" else generic), stats
