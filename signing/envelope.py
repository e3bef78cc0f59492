"""DSSE envelopes inside a Sigstore bundle v0.3, as `model_signing sign key` writes them.

Verification steps (docs/bundle-format.md, "Verification on the device"), labelled in the code:
  (1) size-capped strict JSON;  (2) exact media type and payload type, standard or URL-safe base64;
  (3) signatures over PAE checked against pinned keys only: `keyid` and `hint` are never trusted, and a
      key counts once however many signatures it made;  (4) the verified payload bytes are parsed and
      checked as a statement. The payload's SHA-256 is the bundle's identity (ROOT does not bind names).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ec

from signing.errors import FormatError, SignatureError
from signing.keys import PublicKey, hash_for_curve, key_id
from signing.manifest import BundleManifest, build_statement, parse_statement
from signing.strict_json import canonical_bytes, parse_strict

__all__ = [
    "BUNDLE_MEDIA_TYPE",
    "MAX_SIGNATURE_BYTES",
    "PAYLOAD_TYPE",
    "Verified",
    "add_signature",
    "pae",
    "sign_manifest",
    "signed_payload",
    "verify_signature_document",
]

BUNDLE_MEDIA_TYPE = "application/vnd.dev.sigstore.bundle.v0.3+json"
PAYLOAD_TYPE = "application/vnd.in-toto+json"
MAX_SIGNATURE_BYTES = 1 << 20  # model.sig larger than 1 MiB is refused before parsing
MAX_SIGNATURES = 16


@dataclass(frozen=True)
class Verified:
    """A verified statement: the manifest, the payload's SHA-256 and the ids of the keys that signed."""

    manifest: BundleManifest
    payload_sha256: str
    signer_ids: tuple[str, ...]


def pae(payload_type: str, body: bytes) -> bytes:
    """DSSE pre-authentication encoding: "DSSEv1" SP len(type) SP type SP len(body) SP body."""
    type_bytes = payload_type.encode("utf-8")
    return b" ".join([b"DSSEv1", str(len(type_bytes)).encode(), type_bytes, str(len(body)).encode(), body])


def _signature_algorithm(key: ec.EllipticCurvePublicKey | ec.EllipticCurvePrivateKey) -> ec.ECDSA:
    public = key.public_key() if isinstance(key, ec.EllipticCurvePrivateKey) else key
    return ec.ECDSA(hash_for_curve(public.curve.name), deterministic_signing=True)


def sign_manifest(manifest: BundleManifest, private_keys: Sequence[ec.EllipticCurvePrivateKey]) -> bytes:
    """Sign the manifest's statement with every key (RFC 6979: same inputs, same bytes); return model.sig.

    The first key's PEM hash is the bundle's `hint`, so `model_signing verify key` with that key accepts it.
    """
    if not private_keys:
        raise SignatureError("signing needs at least one private key")
    payload = canonical_bytes(build_statement(manifest))
    message = pae(PAYLOAD_TYPE, payload)
    signatures = [
        {"keyid": "", "sig": base64.b64encode(key.sign(message, _signature_algorithm(key))).decode()}
        for key in private_keys
    ]
    document = {
        "mediaType": BUNDLE_MEDIA_TYPE,
        "verificationMaterial": {
            "publicKey": {"hint": key_id(private_keys[0].public_key())},
            "tlogEntries": [],
        },
        "dsseEnvelope": {
            "payload": base64.b64encode(payload).decode(),
            "payloadType": PAYLOAD_TYPE,
            "signatures": signatures,
        },
    }
    return canonical_bytes(document) + b"\n"


def _b64decode(text: Any, where: str) -> bytes:
    if not isinstance(text, str) or not text:
        raise FormatError(f"{where}: expected a base64 string")
    candidate = text.replace("-", "+").replace("_", "/")  # URL-safe alphabet accepted too
    candidate += "=" * (-len(candidate) % 4)
    try:
        return base64.b64decode(candidate, validate=True)
    except (binascii.Error, ValueError) as e:
        raise FormatError(f"{where}: not valid base64") from e


def _exact_keys(
    value: Any, where: str, required: set[str], optional: frozenset[str] = frozenset()
) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise FormatError(f"{where}: expected an object")
    missing, extra = required - set(value), set(value) - required - optional
    if missing or extra:
        raise FormatError(f"{where}: missing keys {sorted(missing)}, unexpected keys {sorted(extra)}")
    return value


def _envelope(data: bytes) -> tuple[dict[str, Any], dict[str, Any], bytes]:
    """Steps (1) and (2): the document, its envelope and the payload bytes (nothing verified yet)."""
    document = parse_strict(data, what="model.sig", max_bytes=MAX_SIGNATURE_BYTES)
    top = _exact_keys(document, "model.sig", {"mediaType", "verificationMaterial", "dsseEnvelope"})
    if top["mediaType"] != BUNDLE_MEDIA_TYPE:
        raise FormatError(f"model.sig mediaType {top['mediaType']!r}; expected {BUNDLE_MEDIA_TYPE}")
    envelope = _exact_keys(top["dsseEnvelope"], "dsseEnvelope", {"payload", "payloadType", "signatures"})
    if envelope["payloadType"] != PAYLOAD_TYPE:
        raise FormatError(
            f"payloadType {envelope['payloadType']!r}; expected {PAYLOAD_TYPE} (type confusion)"
        )
    payload = _b64decode(envelope["payload"], "dsseEnvelope.payload")
    return top, envelope, payload


def signed_payload(data: bytes) -> bytes:
    """The statement bytes of a well-formed model.sig, signatures NOT checked (inspection, co-signing)."""
    return _envelope(data)[2]


def add_signature(data: bytes, private_key: ec.EllipticCurvePrivateKey) -> bytes:
    """model.sig with one more signature over the same payload (k-of-n co-signing); idempotent."""
    top, envelope, payload = _envelope(data)
    new = base64.b64encode(
        private_key.sign(pae(PAYLOAD_TYPE, payload), _signature_algorithm(private_key))
    ).decode()
    signatures = list(envelope["signatures"])
    if all(s.get("sig") != new for s in signatures if isinstance(s, dict)):
        signatures.append({"keyid": "", "sig": new})
    return canonical_bytes({**top, "dsseEnvelope": {**envelope, "signatures": signatures}}) + b"\n"


def verify_signature_document(
    data: bytes, trusted_keys: Sequence[PublicKey], *, threshold: int = 1
) -> Verified:
    """Verify a model.sig document against pinned keys; pure (no IO).

    Args:
        data: the bytes of model.sig.
        trusted_keys: pinned public keys (duplicates count once).
        threshold: how many distinct pinned keys must have signed.

    Raises:
        FormatError, SignatureError, ManifestError.
    """
    distinct = {k.key_id: k for k in trusted_keys}
    if not 1 <= threshold <= max(1, len(distinct)):
        raise SignatureError(
            f"threshold {threshold} needs between 1 and {len(distinct)} distinct pinned keys"
        )
    if not distinct:
        raise SignatureError("no pinned public keys to verify against")
    # (1)
    document = parse_strict(data, what="model.sig", max_bytes=MAX_SIGNATURE_BYTES)
    # (2)
    top = _exact_keys(document, "model.sig", {"mediaType", "verificationMaterial", "dsseEnvelope"})
    if top["mediaType"] != BUNDLE_MEDIA_TYPE:
        raise FormatError(f"model.sig mediaType {top['mediaType']!r}; expected {BUNDLE_MEDIA_TYPE}")
    envelope = _exact_keys(top["dsseEnvelope"], "dsseEnvelope", {"payload", "payloadType", "signatures"})
    if envelope["payloadType"] != PAYLOAD_TYPE:
        raise FormatError(
            f"payloadType {envelope['payloadType']!r}; expected {PAYLOAD_TYPE} (type confusion)"
        )
    payload = _b64decode(envelope["payload"], "dsseEnvelope.payload")
    signatures = envelope["signatures"]
    if not isinstance(signatures, list) or not 1 <= len(signatures) <= MAX_SIGNATURES:
        raise FormatError(f"dsseEnvelope.signatures: expected 1..{MAX_SIGNATURES} entries")
    raw_signatures = [
        _b64decode(
            _exact_keys(s, f"signatures[{i}]", {"sig"}, frozenset({"keyid"}))["sig"], f"signatures[{i}].sig"
        )
        for i, s in enumerate(signatures)
    ]
    # (3) every pinned key is tried against every signature; a key counts once.
    message = pae(PAYLOAD_TYPE, payload)
    signers = []
    for identifier, key in sorted(distinct.items()):
        for signature in raw_signatures:
            try:
                key.key.verify(signature, message, ec.ECDSA(key.hash_algorithm()))
            except (InvalidSignature, ValueError):
                continue
            signers.append(identifier)
            break
    if len(signers) < threshold:
        raise SignatureError(
            f"{len(signers)} of the required {threshold} pinned key(s) signed this bundle "
            f"({len(raw_signatures)} signature(s) present); it was not signed by a trusted release key"
        )
    # (4)
    statement = parse_strict(payload, what="signed statement", max_bytes=MAX_SIGNATURE_BYTES)
    manifest = parse_statement(statement)
    return Verified(manifest, hashlib.sha256(payload).hexdigest(), tuple(signers))
