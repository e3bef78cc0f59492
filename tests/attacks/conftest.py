"""Fixtures for the attack suite: keys, signed bundles, hand-made archives and hand-made envelopes.

Built without the bundle builder: files are hashed here, the manifest is a `signing.manifest.BundleManifest`,
`model.sig` comes from `signing.envelope.sign_manifest` (or from `sign_statement` for statements that the
real signer would never write), and the `.ekb` from `signing.archive.write_ekb` (or from `raw_tar` /
`tar_with` for archive-level attacks).
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import random
import tarfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from signing.archive import member_order, write_ekb
from signing.envelope import BUNDLE_MEDIA_TYPE, PAYLOAD_TYPE, pae, sign_manifest
from signing.keys import PublicKey, generate_keypair, key_id, load_private_key, load_public_key
from signing.manifest import BundleManifest, FileEntry, Runtime, build_statement
from signing.strict_json import canonical_bytes
from signing.verify import VerifyPolicy

BUNDLE_NAME = "digits-1.0.0"
HARDWARE = "rpi4"
RELEASE = 5


@dataclass(frozen=True)
class KeyPair:
    """A private key and its pinned public form."""

    private: ec.EllipticCurvePrivateKey
    public: PublicKey

    @property
    def key_id(self) -> str:
        return self.public.key_id


@dataclass(frozen=True)
class Keys:
    """Two trusted release keys (for k-of-n) and one attacker key that is never pinned."""

    trusted: KeyPair
    second: KeyPair
    attacker: KeyPair


@pytest.fixture(scope="session")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    folder = tmp_path_factory.mktemp("keys")

    def make(name: str) -> KeyPair:
        private_path, public_path = generate_keypair(folder, name=name)
        return KeyPair(load_private_key(private_path), load_public_key(public_path))

    return Keys(trusted=make("release"), second=make("rotation"), attacker=make("attacker"))


@pytest.fixture
def policy() -> VerifyPolicy:
    """The device's policy: it is an rpi4 and has installed release 5 before."""
    return VerifyPolicy(hardware_id=HARDWARE, release_floor=RELEASE)


def default_files(seed: int = 0) -> dict[str, bytes]:
    """A small bundle: the verifier never parses the model, so random bytes will do."""
    rng = random.Random(seed)
    return {
        "model.onnx": rng.randbytes(4096),
        "preprocess.json": json.dumps(
            {"schema": "edgekit.preprocess/v1", "inputs": [{"name": "image", "mean": [0.5], "std": [0.25]}]},
            sort_keys=True,
        ).encode(),
        "labels.txt": "".join(f"{i}\n" for i in range(10)).encode(),
        "golden/input_0.npy": b"\x93NUMPY" + rng.randbytes(250),
        "golden/output_0.npy": b"\x93NUMPY" + rng.randbytes(250),
    }


def role_for(name: str) -> str:
    if name.endswith((".onnx", ".tflite")):
        return "model"
    if name.endswith((".bin", ".data")):
        return "external-data"
    if name.startswith("golden/"):
        return "golden"
    return {"preprocess.json": "preprocess", "labels.txt": "labels", "parity.json": "parity"}.get(
        name, "metadata"
    )


def entries_for(files: Mapping[str, bytes], roles: Mapping[str, str] | None = None) -> dict[str, FileEntry]:
    roles = roles or {}
    return {
        name: FileEntry(name, len(data), hashlib.sha256(data).hexdigest(), roles.get(name, role_for(name)))
        for name, data in files.items()
    }


def make_manifest(files: Mapping[str, bytes], **overrides: Any) -> BundleManifest:
    """The manifest of `files`; keyword arguments replace any BundleManifest field (roles= sets roles)."""
    roles = overrides.pop("roles", None)
    manifest = BundleManifest(
        bundle_name=BUNDLE_NAME,
        name="digits",
        version="1.0.0",
        release_counter=RELEASE,
        hardware_ids=(HARDWARE,),
        runtime=Runtime("onnxruntime", "1.14", 17),
        entrypoint="model.onnx",
        files=entries_for(files, roles),
        created="2024-05-01T12:00:00Z",
    )
    return replace(manifest, **overrides)


@dataclass(frozen=True)
class Bundle:
    """A signed bundle directory, its `.ekb` next to it, and what went into both."""

    directory: Path
    ekb: Path
    manifest: BundleManifest
    files: dict[str, bytes]
    signature: bytes
    work: Path  # the folder holding directory and ekb; destinations go in a sibling folder

    @property
    def ekb_bytes(self) -> bytes:
        return self.ekb.read_bytes()

    def member(self, name: str) -> bytes:
        return self.signature if name == "model.sig" else self.files[name]

    def members(self) -> list[tuple[str, bytes]]:
        """(name, bytes) in the archive order the real writer uses."""
        return [(name, self.member(name)) for name in member_order(self.manifest)]


BundleMaker = Callable[..., Bundle]


@pytest.fixture
def make_bundle(tmp_path: Path, keys: Keys) -> BundleMaker:
    """make_bundle(files=None, *, signers=None, signature=None, tag="b", **manifest_overrides) -> Bundle."""
    counter = iter(range(1000))

    def make(
        files: Mapping[str, bytes] | None = None,
        *,
        signers: Iterable[ec.EllipticCurvePrivateKey] | None = None,
        signature: bytes | None = None,
        tag: str | None = None,
        **overrides: Any,
    ) -> Bundle:
        contents = dict(default_files() if files is None else files)
        manifest = make_manifest(contents, **overrides)
        work = tmp_path / f"{tag or 'bundle'}-{next(counter)}"
        directory = work / manifest.bundle_name
        for name, data in contents.items():
            path = directory / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        signature = signature or sign_manifest(manifest, list(signers or [keys.trusted.private]))
        (directory / "model.sig").write_bytes(signature)
        ekb = work / f"{manifest.bundle_name}.ekb"
        write_ekb(directory, member_order(manifest), ekb)
        return Bundle(directory, ekb, manifest, contents, signature, work)

    return make


@pytest.fixture
def bundle(make_bundle: BundleMaker) -> Bundle:
    return make_bundle()


@dataclass
class Outside:
    """A destination inside an otherwise empty folder; `untouched()` says nothing else appeared there."""

    root: Path
    dest: Path
    before: list[str] = field(default_factory=list)

    def untouched(self) -> bool:
        return listing(self.root) == self.before

    def clean_failure(self) -> None:
        """After a refusal: no destination (nothing half-written) and nothing new around it."""
        assert not self.dest.exists(), f"{self.dest} was left behind after a failed verification"
        assert self.untouched(), f"files appeared outside the destination: {listing(self.root)}"


def listing(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@pytest.fixture
def outside(tmp_path: Path) -> Outside:
    """`tmp_path/sandbox/inner/dest`: traversal names like `../x` or `../../x` would land in the sandbox."""
    root = tmp_path / "sandbox"
    (root / "inner").mkdir(parents=True)
    return Outside(root, root / "inner" / "dest", listing(root))


@contextmanager
def refuses(error: type[Exception], fragment: str) -> Iterator[None]:
    """The block raises exactly `error` (not a subclass or a parent) with `fragment` in its message."""
    with pytest.raises(error) as caught:
        yield
    assert type(caught.value) is error, f"expected {error.__name__}, got {type(caught.value).__name__}"
    assert fragment in str(caught.value), f"{fragment!r} not in {str(caught.value)!r}"


# ---------------------------------------------------------------------------------------------------------
# Hand-made archives
# ---------------------------------------------------------------------------------------------------------


def ustar_header(
    name: bytes | str,
    size: int,
    typeflag: bytes = b"0",
    *,
    linkname: bytes | str = b"",
    mode: int = 0o644,
    size_field: bytes | None = None,
) -> bytes:
    """One raw 512-byte POSIX ustar header (valid checksum); `size_field` overrides the 12-byte size."""
    name = name.encode("utf-8", "surrogateescape") if isinstance(name, str) else name
    linkname = linkname.encode() if isinstance(linkname, str) else linkname
    if len(name) > 100 or len(linkname) > 100:
        raise ValueError("raw ustar names are at most 100 bytes")
    header = bytearray(512)
    header[0 : len(name)] = name
    header[100:108] = b"%07o\0" % mode
    header[108:116] = b"0000000\0"
    header[116:124] = b"0000000\0"
    header[124:136] = size_field if size_field is not None else b"%011o\0" % size
    header[136:148] = b"00000000000\0"
    header[156:157] = typeflag
    header[157 : 157 + len(linkname)] = linkname
    header[257:265] = b"ustar\x0000"
    header[148:156] = b" " * 8
    header[148:156] = b"%06o\0 " % sum(header)
    return bytes(header)


def pad(data: bytes) -> bytes:
    return data + b"\0" * (-len(data) % 512)


def raw_member(name: bytes | str, data: bytes, typeflag: bytes = b"0", **kw: Any) -> bytes:
    """Header plus padded data; `declared=` sets the header's size independently of the data."""
    declared = kw.pop("declared", len(data))
    return ustar_header(name, declared, typeflag, **kw) + pad(data)


def pax_member(records: Mapping[str, str], *, global_header: bool = False) -> bytes:
    """A pax extended header (type x, or g) carrying `records` for the member that follows."""
    body = b""
    for key, value in records.items():
        item = f" {key}={value}\n".encode("utf-8", "surrogateescape")
        length = len(item) + 1
        while len(str(length).encode()) + len(item) != length:
            length += 1
        body += str(length).encode() + item
    return raw_member(b"././@PaxHeader", body, b"g" if global_header else b"x")


def raw_tar(*chunks: bytes) -> bytes:
    """Concatenate raw members and close with the two zero blocks (no record padding)."""
    return b"".join(chunks) + b"\0" * 1024


def tar_with(members: Iterable[tuple[str, bytes] | tarfile.TarInfo | tuple[tarfile.TarInfo, bytes]]) -> bytes:
    """A PAX archive made by tarfile: (name, data) regular files, or TarInfo (with data) of any type."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for item in members:
            if isinstance(item, tarfile.TarInfo):
                tar.addfile(item)
                continue
            first, data = item
            info = first if isinstance(first, tarfile.TarInfo) else tarfile.TarInfo(first)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def special(name: str, kind: bytes, linkname: str = "") -> tarfile.TarInfo:
    """A TarInfo of type `kind` (tarfile.SYMTYPE, LNKTYPE, FIFOTYPE, CHRTYPE, BLKTYPE, DIRTYPE)."""
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    if kind in (tarfile.CHRTYPE, tarfile.BLKTYPE):
        info.devmajor, info.devminor = 1, 3
    return info


class EndlessSource(io.RawIOBase):
    """`prefix` then `filler` bytes forever; refuses (RuntimeError) to serve more than `cap` bytes."""

    def __init__(self, prefix: bytes, cap: int, filler: bytes = b"\0") -> None:
        super().__init__()
        self.prefix, self.cap, self.filler, self.served = prefix, cap, filler, 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        count = len(view)
        if self.served + count > self.cap:
            raise RuntimeError(f"the verifier read past {self.cap} bytes of an endless stream")
        head = self.prefix[self.served : self.served + count]
        tail = count - len(head)
        view[: len(head)] = head
        if tail:
            view[len(head) :] = (self.filler * (tail // len(self.filler) + 1))[:tail]
        self.served += count
        return count


# ---------------------------------------------------------------------------------------------------------
# Hand-made envelopes
# ---------------------------------------------------------------------------------------------------------


def b64(data: bytes, *, urlsafe: bool = False, padded: bool = True) -> str:
    text = (base64.urlsafe_b64encode if urlsafe else base64.b64encode)(data).decode()
    return text if padded else text.rstrip("=")


def ecdsa_sign(
    key: ec.EllipticCurvePrivateKey,
    payload: bytes,
    payload_type: str = PAYLOAD_TYPE,
    hash_algorithm: hashes.HashAlgorithm | None = None,
) -> bytes:
    """A DER ECDSA signature over DSSE PAE(payload_type, payload) (SHA-256 unless told)."""
    return key.sign(pae(payload_type, payload), ec.ECDSA(hash_algorithm or hashes.SHA256()))


def statement_of(manifest: BundleManifest) -> dict[str, Any]:
    """A deep copy of the statement the real signer writes, ready for hand edits."""
    return json.loads(canonical_bytes(build_statement(manifest)))


def envelope_document(
    payload: bytes,
    signatures: Iterable[bytes | str],
    *,
    payload_type: str = PAYLOAD_TYPE,
    media_type: str = BUNDLE_MEDIA_TYPE,
    hint: str = "",
    keyid: str = "",
    urlsafe: bool = False,
) -> dict[str, Any]:
    """The model.sig document as a dict (signatures given as DER bytes or ready-made strings)."""
    return {
        "mediaType": media_type,
        "verificationMaterial": {"publicKey": {"hint": hint}, "tlogEntries": []},
        "dsseEnvelope": {
            "payload": b64(payload, urlsafe=urlsafe, padded=not urlsafe),
            "payloadType": payload_type,
            "signatures": [
                {
                    "keyid": keyid,
                    "sig": s if isinstance(s, str) else b64(s, urlsafe=urlsafe, padded=not urlsafe),
                }
                for s in signatures
            ],
        },
    }


def sign_statement(
    statement: Mapping[str, Any] | bytes,
    signers: Iterable[ec.EllipticCurvePrivateKey],
    *,
    payload_type: str = PAYLOAD_TYPE,
    signed_type: str | None = None,
    hint: str | None = None,
    hash_algorithm: hashes.HashAlgorithm | None = None,
    urlsafe: bool = False,
) -> bytes:
    """model.sig bytes for a hand-edited statement (dict, canonicalized; or raw payload bytes), really signed.

    `signed_type` is the payload type put into PAE when it should differ from the declared one.
    """
    payload = statement if isinstance(statement, bytes) else canonical_bytes(statement)
    signers = list(signers)
    signatures = [ecdsa_sign(k, payload, signed_type or payload_type, hash_algorithm) for k in signers]
    if hint is None:
        hint = key_id(signers[0].public_key()) if signers else ""
    document = envelope_document(payload, signatures, payload_type=payload_type, hint=hint, urlsafe=urlsafe)
    return canonical_bytes(document) + b"\n"


def ekb_of(signature: bytes, members: Iterable[tuple[str, bytes]]) -> bytes:
    """A well-formed archive: model.sig first, then `members` as regular files."""
    return tar_with([("model.sig", signature), *members])


__all__ = [
    "BUNDLE_NAME",
    "HARDWARE",
    "RELEASE",
    "Bundle",
    "BundleMaker",
    "EndlessSource",
    "KeyPair",
    "Keys",
    "Outside",
    "b64",
    "default_files",
    "ecdsa_sign",
    "ekb_of",
    "entries_for",
    "envelope_document",
    "listing",
    "make_manifest",
    "pad",
    "pax_member",
    "raw_member",
    "raw_tar",
    "refuses",
    "role_for",
    "sign_statement",
    "special",
    "statement_of",
    "tar_with",
    "ustar_header",
]
