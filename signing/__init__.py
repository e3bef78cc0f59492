"""Signing and verification of edgekit bundles (device-safe: standard library and `cryptography` only).

Format: OpenSSF model signing v1.0 — a Sigstore bundle v0.3 wrapping a DSSE envelope wrapping an in-toto
Statement v1 whose predicate lists every file's SHA-256, plus edgekit's signed extension (name, version,
release counter, hardware ids, runtime, file sizes and roles). `model_signing verify key` accepts it.

    generate_keypair(dir)                      ECDSA P-256 keys (0600 private key, refuses to overwrite)
    sign_manifest(manifest, keys)              model.sig bytes, deterministic (RFC 6979)
    verify_ekb(stream, keys, destination=...)  one streaming pass: verify, hash while extracting, cap sizes
    verify_directory(path, keys)               the same checks on a bundle directory

Errors: SigningError > KeyFileError | VerificationError > FormatError | SignatureError | ManifestError |
ContentError | MemberError | PolicyError (see `signing.errors`).
"""

from signing.envelope import Verified, sign_manifest, verify_signature_document
from signing.errors import (
    ContentError,
    FormatError,
    KeyFileError,
    ManifestError,
    MemberError,
    PolicyError,
    SignatureError,
    SigningError,
    VerificationError,
)
from signing.keys import PublicKey, generate_keypair, key_id, load_private_key, load_public_key
from signing.manifest import BundleManifest, FileEntry, Runtime
from signing.verify import VerifiedBundle, VerifyPolicy, verify_directory, verify_ekb

__all__ = [
    "BundleManifest",
    "ContentError",
    "FileEntry",
    "FormatError",
    "KeyFileError",
    "ManifestError",
    "MemberError",
    "PolicyError",
    "PublicKey",
    "Runtime",
    "SignatureError",
    "SigningError",
    "VerificationError",
    "Verified",
    "VerifiedBundle",
    "VerifyPolicy",
    "generate_keypair",
    "key_id",
    "load_private_key",
    "load_public_key",
    "sign_manifest",
    "verify_directory",
    "verify_ekb",
    "verify_signature_document",
]
