"""ECDSA P-256 signing keys: generate, store (0600, optional passphrase), load, identify.

model_signing verifies ECDSA on P-256/P-384/P-521 (not Ed25519), so edgekit signs with P-256 and SHA-256.
A key id is the hex SHA-256 of the public key's PEM text, which is also the `hint` model_signing writes.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from signing.errors import KeyFileError

__all__ = ["PublicKey", "generate_keypair", "key_id", "load_private_key", "load_public_key", "public_pem"]

_CURVES = ("secp256r1", "secp384r1", "secp521r1")


def hash_for_curve(curve: str) -> hashes.HashAlgorithm:
    """The hash model_signing pairs with each curve."""
    algorithms: dict[str, hashes.HashAlgorithm] = {
        "secp256r1": hashes.SHA256(),
        "secp384r1": hashes.SHA384(),
        "secp521r1": hashes.SHA512(),
    }
    return algorithms[curve]


@dataclass(frozen=True)
class PublicKey:
    """A pinned public key and its id."""

    key: ec.EllipticCurvePublicKey
    key_id: str

    def hash_algorithm(self) -> hashes.HashAlgorithm:
        """The hash that goes with the curve (as model_signing pairs them)."""
        return hash_for_curve(self.key.curve.name)


def public_pem(key: ec.EllipticCurvePublicKey) -> bytes:
    """SubjectPublicKeyInfo PEM of a public key."""
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def key_id(key: ec.EllipticCurvePublicKey) -> str:
    """Hex SHA-256 of the public key's PEM text."""
    return hashlib.sha256(public_pem(key)).hexdigest()


def generate_keypair(
    directory: str | Path, *, name: str = "edgekit", passphrase: bytes | None = None
) -> tuple[Path, Path]:
    """Write NAME.key (private, PEM, mode 0600) and NAME.pub into `directory`; refuse to overwrite.

    Raises:
        KeyFileError: either file exists, or the name is not a plain file name.
    """
    if not name or "/" in name or "\\" in name or name.startswith("."):
        raise KeyFileError(f"key name {name!r}: use a plain file name such as 'release'")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    private_path, public_path = directory / f"{name}.key", directory / f"{name}.pub"
    for path in (private_path, public_path):
        if path.exists():
            raise KeyFileError(
                f"{path} exists; refusing to overwrite a key (choose another --name or folder)"
            )
    private = ec.generate_private_key(ec.SECP256R1())
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(passphrase) if passphrase else serialization.NoEncryption()
    )
    pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(pem)
    fd = os.open(public_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    with os.fdopen(fd, "wb") as handle:
        handle.write(public_pem(private.public_key()))
    return private_path, public_path


def load_private_key(path: str | Path, passphrase: bytes | None = None) -> ec.EllipticCurvePrivateKey:
    """Load a PEM ECDSA private key.

    Raises:
        KeyFileError: missing, encrypted without the right passphrase, or not an ECDSA P-256/384/521 key.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise KeyFileError(f"{path}: cannot read the private key ({e.strerror})") from e
    try:
        key = serialization.load_pem_private_key(data, passphrase)
    except TypeError as e:
        raise KeyFileError(f"{path}: the key is encrypted; give its passphrase") from e
    except ValueError as e:
        raise KeyFileError(f"{path}: not a PEM private key, or a wrong passphrase") from e
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name not in _CURVES:
        raise KeyFileError(
            f"{path}: {type(key).__name__} keys are not supported; use ECDSA P-256 (edgekit keygen)"
        )
    return key


def load_public_key(source: str | Path | bytes) -> PublicKey:
    """Load a PEM ECDSA public key (a path or the PEM bytes).

    Raises:
        KeyFileError: missing, malformed, or not ECDSA P-256/384/521.
    """
    where = "public key" if isinstance(source, bytes) else str(source)
    try:
        data = source if isinstance(source, bytes) else Path(source).read_bytes()
    except OSError as e:
        raise KeyFileError(f"{where}: cannot read the public key ({e.strerror})") from e
    try:
        key = serialization.load_pem_public_key(data)
    except ValueError as e:
        raise KeyFileError(f"{where}: not a PEM public key") from e
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name not in _CURVES:
        raise KeyFileError(f"{where}: {type(key).__name__} keys are not supported; use ECDSA P-256")
    return PublicKey(key, key_id(key))
