"""The one verifier, shared by host and device: `.ekb` streams and bundle directories.

An `.ekb` is verified in a single streaming pass: `model.sig` must come first and is verified before any
other byte is trusted; each following member is hashed while it is copied, capped at its signed size, into
a fresh 0700 directory with O_CREAT|O_EXCL|O_NOFOLLOW. Only signed names and regular files are accepted;
extra, missing and duplicate members are refused. On any failure the partial directory is removed, so a
caller either gets a fully verified private copy or nothing. (Never `tarfile.extractall`.)
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import stat
import tarfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Protocol

from signing.atomic import fsync_dir
from signing.envelope import MAX_SIGNATURE_BYTES, Verified, verify_signature_document
from signing.errors import ContentError, FormatError, ManifestError, MemberError, PolicyError
from signing.keys import PublicKey
from signing.manifest import SIGNATURE_FILE, BundleManifest, FileEntry, check_member_name

__all__ = [
    "VerifiedBundle",
    "VerifyPolicy",
    "check_directory_contents",
    "unsafe_extract_unverified",
    "verify_directory",
    "verify_ekb",
]

CHUNK = 1 << 20  # bytes
# Bytes an archive may hold beyond its signed contents: tarfile reads ahead up to two CHUNKs, and each member
# brings headers (ustar, pax, GNU long name; names are at most 512 characters) and padding.
READ_AHEAD = 2 * CHUNK + (64 << 10)  # bytes
MEMBER_OVERHEAD = 8 << 10  # bytes


@dataclass(frozen=True)
class VerifyPolicy:
    """What this verifier accepts beyond a valid signature."""

    threshold: int = 1
    hardware_id: str | None = None  # this device's id; a bundle listing hardware ids must name it
    release_floor: int | None = None  # refuse release_counter below this (anti-rollback)
    expected_name: str | None = None  # the model this install slot is for
    max_total_bytes: int = 8 << 30  # bytes: the sum of signed sizes (size-bomb cap)
    max_members: int = 256
    fsync: bool = False  # fsync every extracted file and directory (device installs)


@dataclass(frozen=True)
class VerifiedBundle:
    """A verified bundle: manifest, identity (SHA-256 of the signed payload), signers, extracted copy."""

    manifest: BundleManifest
    payload_sha256: str
    signer_ids: tuple[str, ...]
    path: Path | None = None
    notes: tuple[str, ...] = field(default=())


def check_policy(verified: Verified, policy: VerifyPolicy) -> None:
    """Step 6: hardware id, release counter floor, expected model name, size cap.

    Raises:
        PolicyError: validly signed but not acceptable here.
    """
    manifest = verified.manifest
    if policy.expected_name is not None and manifest.name != policy.expected_name:
        raise PolicyError(f"bundle is for model {manifest.name!r}, this slot holds {policy.expected_name!r}")
    # A device always states its hardware id; a host checking a bundle without one skips this step.
    if (
        policy.hardware_id is not None
        and manifest.hardware_ids
        and policy.hardware_id not in manifest.hardware_ids
    ):
        raise PolicyError(
            f"bundle is built for hardware {list(manifest.hardware_ids)}, "
            f"this device is {policy.hardware_id!r}",
            reason="hardware",
        )
    if policy.release_floor is not None and manifest.release_counter < policy.release_floor:
        raise PolicyError(
            f"release_counter {manifest.release_counter} of {manifest.name} {manifest.version} is below this "
            f"device's floor {policy.release_floor}: a validly signed older release is refused (rollback)",
            reason="rollback",
        )
    total = sum(e.size for e in manifest.files.values())
    if total > policy.max_total_bytes:
        raise PolicyError(f"bundle declares {total} bytes, above the limit of {policy.max_total_bytes}")
    if len(manifest.files) + 1 > policy.max_members:
        raise PolicyError(
            f"bundle declares {len(manifest.files)} files, above the limit of {policy.max_members}"
        )


class _BoundedReader:
    """The download as tarfile sees it, refusing to deliver more than `limit` bytes (attacks 9 and 10).

    tarfile buffers pax and GNU long-name headers whole, whatever size their header claims: without this
    bound an endless or hostile stream is read into memory before model.sig is even reached.
    """

    def __init__(self, source: IO[bytes], limit: int) -> None:
        self._source = source
        self.limit = limit
        self.count = 0

    def read(self, size: int = -1) -> bytes:
        allowed = self.limit - self.count + 1
        data = self._source.read(allowed if size is None or size < 0 else min(size, allowed))
        self.count += len(data)
        if self.count > self.limit:
            raise FormatError(f".ekb archive holds more than {self.limit} bytes, beyond its signed files")
        return data


class _BoundedFile(_BoundedReader):
    """A seekable regular file as tarfile sees it, with the same bound on the furthest byte read.

    Used instead of the stream for a seekable regular file: tarfile then reads headers in place (mode `r:`)
    and member data is read straight from the file into one reused buffer (`_MemberData`), which avoids
    the three copies of tarfile's stream and buffered-reader layers (bench/verify.py measures it).
    """

    def __init__(self, source: IO[bytes], limit: int) -> None:
        super().__init__(source, limit)
        self._start = source.tell()

    def _account(self, position: int) -> None:
        self.count = max(self.count, position - self._start)
        if self.count > self.limit:
            raise FormatError(f".ekb archive holds more than {self.limit} bytes, beyond its signed files")

    def read(self, size: int = -1) -> bytes:
        position = self._source.tell()
        allowed = max(0, self.limit - (position - self._start) + 1)
        data = self._source.read(allowed if size is None or size < 0 else min(size, allowed))
        self._account(position + len(data))
        return data

    def readinto(self, buffer: memoryview) -> int:
        position = self._source.tell()
        allowed = max(0, self.limit - (position - self._start) + 1)
        count = self._source.readinto(buffer[:allowed]) or 0  # type: ignore[attr-defined]
        self._account(position + count)
        return int(count)

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        return self._source.seek(offset, whence)

    def tell(self) -> int:
        return self._source.tell()

    def seekable(self) -> bool:
        return True


class _ReadInto(Protocol):
    def readinto(self, buffer: memoryview, /) -> int | None: ...


class _MemberData:
    """A member's data read in place from a `_BoundedFile`; a short read fails as tarfile's own does."""

    def __init__(self, source: _BoundedFile, offset: int) -> None:
        self._source = source
        self._position = offset

    def readinto(self, buffer: memoryview) -> int:
        self._source.seek(self._position)
        filled = 0
        while filled < len(buffer):
            count = self._source.readinto(buffer[filled:])
            if not count:
                raise tarfile.ReadError("unexpected end of data")
            filled += count
        self._position += filled
        return filled


def _is_regular_file(source: IO[bytes]) -> bool:
    try:
        return (
            stat.S_ISREG(os.fstat(source.fileno()).st_mode)
            and source.seekable()
            and callable(getattr(source, "readinto", None))
        )
    except (OSError, ValueError, AttributeError):  # BytesIO and friends: io.UnsupportedOperation
        return False


def _read_capped(stream: IO[bytes], limit: int, what: str) -> bytes:
    try:
        data = stream.read(limit + 1)
    except (tarfile.TarError, EOFError) as e:  # tarfile: "unexpected end of data"
        raise FormatError(f"{what}: the archive ends inside it ({e})") from e
    if len(data) > limit:
        raise FormatError(f"{what} is larger than {limit} bytes")
    return data


def verify_ekb(
    source: str | Path | IO[bytes],
    trusted_keys: Sequence[PublicKey],
    *,
    destination: str | Path | None = None,
    policy: VerifyPolicy | None = None,
) -> VerifiedBundle:
    """Verify an `.ekb` in one streaming pass; extract into `destination` (must not exist) if given.

    Raises:
        VerificationError: FormatError, SignatureError, ManifestError, MemberError, ContentError or
            PolicyError.
    """
    policy = policy or VerifyPolicy()

    def check(signature: bytes) -> Verified:
        verified = verify_signature_document(signature, trusted_keys, threshold=policy.threshold)
        check_policy(verified, policy)
        return verified

    return _stream_ekb(source, destination, policy, check)


def _stream_ekb(
    source: str | Path | IO[bytes],
    destination: str | Path | None,
    policy: VerifyPolicy,
    check: Callable[[bytes], Verified],
) -> VerifiedBundle:
    if isinstance(source, str | Path):
        with open(source, "rb") as handle:
            return _stream_ekb(handle, destination, policy, check)
    target = Path(destination) if destination is not None else None
    created = False
    try:
        regular = _is_regular_file(source)
        bounded = (_BoundedFile if regular else _BoundedReader)(source, MAX_SIGNATURE_BYTES + READ_AHEAD)
        with _open_archive(bounded) as archive:
            members = iter(archive)
            first = _next_member(members)
            if first is None or first.name != SIGNATURE_FILE or not first.isreg():
                raise MemberError(f"the first archive member must be the regular file {SIGNATURE_FILE}")
            if first.size > MAX_SIGNATURE_BYTES:
                raise FormatError(f"{SIGNATURE_FILE} is {first.size} bytes, above {MAX_SIGNATURE_BYTES}")
            signature_stream = archive.extractfile(first)
            assert signature_stream is not None
            signature = _read_capped(signature_stream, MAX_SIGNATURE_BYTES, SIGNATURE_FILE)
            verified = check(signature)
            manifest = verified.manifest
            signed_bytes = sum(e.size for e in manifest.files.values())
            bounded.limit += signed_bytes + MEMBER_OVERHEAD * policy.max_members
            if target is not None:
                os.mkdir(target, 0o700)  # fresh: FileExistsError if anything is there
                created = True
                _write_new(target, SIGNATURE_FILE, [signature], policy.fsync)
            seen: set[str] = set()
            count = 1
            while (member := _next_member(members)) is not None:
                count += 1
                if count > policy.max_members:
                    raise MemberError(f"more than {policy.max_members} archive members")
                entry = _check_member(member, manifest, seen)
                stream: _ReadInto | None
                if isinstance(bounded, _BoundedFile) and member.sparse is None:
                    stream = _MemberData(bounded, member.offset_data)
                else:
                    stream = archive.extractfile(member)  # type: ignore[assignment]  # a BufferedReader
                assert stream is not None
                _copy_verified(stream, entry.name, entry.size, entry.sha256, target, policy.fsync)
            missing = sorted(set(manifest.files) - seen)
            if missing:
                raise MemberError(f"signed file(s) {missing} are missing from the archive")
        if target is not None and policy.fsync:
            _fsync_dir(target)
        return VerifiedBundle(manifest, verified.payload_sha256, verified.signer_ids, target)
    except BaseException:
        if created and target is not None:
            shutil.rmtree(target, ignore_errors=True)
        raise


def _open_archive(source: _BoundedReader) -> tarfile.TarFile:
    try:
        if isinstance(source, _BoundedFile):  # headers read in place, in order: the same parser
            return tarfile.open(fileobj=source, mode="r:")  # type: ignore[call-overload]
        return tarfile.open(fileobj=source, mode="r|", bufsize=CHUNK)  # type: ignore[call-overload]
    except (tarfile.TarError, OSError, EOFError, ValueError) as e:  # ValueError: bad pax numbers
        raise FormatError(f"not an .ekb archive ({e})") from e


def _next_member(members: object) -> tarfile.TarInfo | None:
    try:
        return next(members, None)  # type: ignore[call-overload, no-any-return]
    except (tarfile.TarError, OSError, EOFError, ValueError) as e:  # ValueError: bad pax numbers, names
        raise FormatError(f"corrupt .ekb archive ({e})") from e


def _check_member(member: tarfile.TarInfo, manifest: BundleManifest, seen: set[str]) -> FileEntry:
    name = member.name
    if name == SIGNATURE_FILE or name in seen:
        raise MemberError(f"archive member {name!r} appears twice")
    if not member.isreg():
        kind = (
            "symlink"
            if member.issym()
            else "hardlink"
            if member.islnk()
            else ("directory" if member.isdir() else "special file")
        )
        raise MemberError(f"archive member {name!r} is a {kind}; only regular files are accepted")
    try:
        check_member_name(name)
    except ManifestError as e:
        raise MemberError(f"archive member {name!r}: unsafe name ({e})") from e
    if name not in manifest.files:
        raise MemberError(f"archive member {name!r} is not signed")
    entry = manifest.files[name]
    if member.size != entry.size:
        raise ContentError(f"{name}: archive says {member.size} bytes, the signature says {entry.size}")
    seen.add(name)
    return entry


def _open_new(root: Path, name: str) -> int:
    parts = name.split("/")
    directory = root
    for part in parts[:-1]:
        directory = directory / part
        try:
            os.mkdir(directory, 0o700)
        except FileExistsError:
            if not stat.S_ISDIR(os.lstat(directory).st_mode):
                raise MemberError(f"{name}: {part} is not a directory") from None
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    return os.open(root / name, flags, 0o600)


def _write_new(root: Path, name: str, chunks: list[bytes], fsync: bool) -> None:
    fd = _open_new(root, name)
    with os.fdopen(fd, "wb") as handle:
        for chunk in chunks:
            handle.write(chunk)
        if fsync:
            handle.flush()
            os.fsync(handle.fileno())


def _copy_verified(
    stream: _ReadInto, name: str, size: int, digest: str, target: Path | None, fsync: bool
) -> None:
    hasher = hashlib.sha256()
    remaining = size
    buffer = memoryview(bytearray(min(CHUNK, size)))  # reused: no allocation per chunk
    handle = os.fdopen(_open_new(target, name), "wb") if target is not None else None
    try:
        while remaining > 0:
            try:
                count = stream.readinto(buffer[: min(CHUNK, remaining)])
            except (tarfile.TarError, EOFError) as e:  # tarfile: "unexpected end of data"
                raise ContentError(f"{name}: archive ends {remaining} bytes early ({e})") from e
            if not count:
                raise ContentError(f"{name}: archive ends {remaining} bytes early")
            remaining -= count
            chunk = buffer[:count]
            hasher.update(chunk)
            if handle is not None:
                handle.write(chunk)
        if hasher.hexdigest() != digest:
            raise ContentError(f"{name}: SHA-256 {hasher.hexdigest()} does not match the signed {digest}")
        if handle is not None and fsync:
            handle.flush()
            os.fsync(handle.fileno())
    finally:
        if handle is not None:
            handle.close()


def _fsync_dir(path: Path) -> None:
    """fsync `path` and every folder below it (the extracted tree)."""
    for directory in [path, *(p for p in path.rglob("*") if p.is_dir())]:
        fsync_dir(directory)


def verify_directory(
    path: str | Path, trusted_keys: Sequence[PublicKey], *, policy: VerifyPolicy | None = None
) -> VerifiedBundle:
    """Verify a bundle directory in place: every entry a regular file, exactly the signed set, digests match.

    Raises:
        VerificationError.
    """
    policy = policy or VerifyPolicy()
    root = Path(path)
    signature_path = root / SIGNATURE_FILE
    try:
        if not stat.S_ISREG(os.lstat(signature_path).st_mode):
            raise MemberError(f"{signature_path} is not a regular file")
        with open(signature_path, "rb") as handle:
            signature = _read_capped(handle, MAX_SIGNATURE_BYTES, SIGNATURE_FILE)
    except FileNotFoundError as e:
        raise MemberError(f"{root}: no {SIGNATURE_FILE}; the bundle is not signed") from e
    verified = verify_signature_document(signature, trusted_keys, threshold=policy.threshold)
    check_policy(verified, policy)
    manifest = verified.manifest
    check_directory_contents(root, manifest)
    return VerifiedBundle(manifest, verified.payload_sha256, verified.signer_ids, root)


def check_directory_contents(root: Path, manifest: BundleManifest) -> None:
    """Every entry a regular file, exactly the signed set plus model.sig, sizes and digests as signed.

    Raises:
        MemberError, ContentError.
    """
    present: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        for name in [*dirnames, *filenames]:
            full = Path(dirpath) / name
            relative = full.relative_to(root).as_posix()
            mode = os.lstat(full).st_mode
            if stat.S_ISDIR(mode):
                continue
            if not stat.S_ISREG(mode):
                raise MemberError(f"{relative}: not a regular file (symlinks and special files are refused)")
            if relative != SIGNATURE_FILE:
                present.add(relative)
    extra, missing = sorted(present - set(manifest.files)), sorted(set(manifest.files) - present)
    if extra:
        raise MemberError(f"unsigned file(s) {extra} in the bundle directory")
    if missing:
        raise MemberError(f"signed file(s) {missing} are missing")
    for entry in manifest.files.values():
        file_path = root / entry.name
        if os.lstat(file_path).st_size != entry.size:
            raise ContentError(
                f"{entry.name}: {os.lstat(file_path).st_size} bytes, the signature says {entry.size}"
            )
        flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0)
        with os.fdopen(os.open(file_path, flags), "rb") as handle:
            _copy_verified(handle, entry.name, entry.size, entry.sha256, None, False)


def unsafe_extract_unverified(source: str | Path | IO[bytes], destination: str | Path) -> VerifiedBundle:
    """Extract an `.ekb` checking every file against its statement, WITHOUT checking any signature.

    Only for co-signing (`edgekit sign`): the co-signer vouches for the bytes it hashed here. Archive
    safety rules (names, regular files, sizes, digests, fresh 0700 folder) all still apply.
    """
    import hashlib as _hashlib

    from signing.envelope import signed_payload
    from signing.manifest import parse_statement
    from signing.strict_json import parse_strict

    def check(signature: bytes) -> Verified:
        payload = signed_payload(signature)
        statement = parse_strict(payload, what="signed statement", max_bytes=MAX_SIGNATURE_BYTES)
        return Verified(parse_statement(statement), _hashlib.sha256(payload).hexdigest(), ())

    return _stream_ekb(source, destination, VerifyPolicy(), check)
