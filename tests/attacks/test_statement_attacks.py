"""Attacks on model.sig and the signed statement.

Statements are edited by hand and re-signed with real keys, so each refusal comes from the rule under test
and not from a broken signature. Archive cases check that the destination never appears.
"""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Callable
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature

from signing.envelope import BUNDLE_MEDIA_TYPE, PAYLOAD_TYPE, sign_manifest, verify_signature_document
from signing.errors import FormatError, ManifestError, PolicyError, SignatureError
from signing.keys import load_public_key, public_pem
from signing.strict_json import canonical_bytes
from signing.verify import VerifyPolicy, verify_directory, verify_ekb
from tests.attacks.conftest import (
    Bundle,
    BundleMaker,
    Keys,
    Outside,
    b64,
    default_files,
    ecdsa_sign,
    ekb_of,
    envelope_document,
    make_manifest,
    refuses,
    sign_statement,
    statement_of,
)

P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551


def verify_in_ekb(
    signature: bytes,
    bundle: Bundle,
    keys: Keys,
    outside: Outside,
    policy: VerifyPolicy,
    pinned: list[Any] | None = None,
) -> object:
    """The hand-made model.sig shipped with the bundle's real files, extracted into `outside.dest`."""
    data = ekb_of(signature, bundle.members()[1:])
    pinned = pinned if pinned is not None else [keys.trusted.public]
    return verify_ekb(io.BytesIO(data), pinned, destination=outside.dest, policy=policy)


def edited(bundle: Bundle, edit: Callable[[dict[str, Any]], object]) -> dict[str, Any]:
    statement = statement_of(bundle.manifest)
    edit(statement)
    return statement


def edgekit(statement: dict[str, Any]) -> dict[str, Any]:
    return statement["predicate"]["edgekit"]


def resource(statement: dict[str, Any], name: str) -> dict[str, Any]:
    return next(r for r in statement["predicate"]["resources"] if r["name"] == name)


# --- attack 4: the signer's ignore_paths hiding a loaded file ------------------------------------------


def _hide_labels(statement: dict[str, Any]) -> None:
    statement["predicate"]["serialization"]["ignore_paths"] = ["model.sig", "labels.txt"]


def _hide_labels_everywhere(statement: dict[str, Any]) -> None:
    _hide_labels(statement)
    statement["predicate"]["resources"] = [
        r for r in statement["predicate"]["resources"] if r["name"] != "labels.txt"
    ]
    del edgekit(statement)["files"]["labels.txt"]


def _set_serialization(key: str, value: object) -> Callable[[dict[str, Any]], None]:
    def edit(statement: dict[str, Any]) -> None:
        statement["predicate"]["serialization"][key] = value

    return edit


@pytest.mark.parametrize(
    "edit",
    [
        pytest.param(_hide_labels, id="attack-04-ignore-labels"),
        pytest.param(_hide_labels_everywhere, id="attack-04-ignore-and-unlist-labels"),
        pytest.param(_set_serialization("ignore_paths", []), id="attack-04-ignore-nothing"),
        pytest.param(
            _set_serialization("ignore_paths", ["model.sig", "golden"]), id="attack-04-ignore-folder"
        ),
        pytest.param(_set_serialization("allow_symlinks", True), id="attack-04-allow-symlinks"),
        pytest.param(_set_serialization("method", "shards"), id="attack-04-other-method"),
    ],
)
def test_attack_04_serialization_policy_other_than_edgekits_is_refused(
    edit: Callable[[dict[str, Any]], None], bundle: Bundle, keys: Keys, policy: VerifyPolicy, outside: Outside
) -> None:
    signature = sign_statement(edited(bundle, edit), [keys.trusted.private])
    with refuses(ManifestError, "ignore_paths must be exactly ['model.sig']"):
        verify_in_ekb(signature, bundle, keys, outside, policy)
    outside.clean_failure()


def test_attack_04_hidden_file_is_refused_in_a_directory_too(
    bundle: Bundle, keys: Keys, policy: VerifyPolicy
) -> None:
    signature = sign_statement(edited(bundle, _hide_labels_everywhere), [keys.trusted.private])
    (bundle.directory / "model.sig").write_bytes(signature)
    with refuses(ManifestError, "serialization policy"):
        verify_directory(bundle.directory, [keys.trusted.public], policy=policy)


# --- attack 7 and 12: unsafe names in the signed statement ---------------------------------------------

UNSAFE_SIGNED_NAMES = [
    pytest.param("../x", id="attack-07-signed-dotdot"),
    pytest.param("/etc/x", id="attack-07-signed-absolute"),
    pytest.param("a/../../x", id="attack-07-signed-inner-dotdot"),
    pytest.param("C:x", id="attack-07-signed-drive-letter"),
    pytest.param("a\\b", id="attack-07-signed-backslash"),
    pytest.param("a\x00b", id="attack-07-signed-nul"),
    pytest.param("a/./b", id="attack-07-signed-dot-component"),
    pytest.param("a//b", id="attack-07-signed-empty-component"),
    pytest.param("a/", id="attack-07-signed-trailing-slash"),
    pytest.param(".", id="attack-07-signed-dot"),
    pytest.param("", id="attack-07-signed-empty"),
    pytest.param("a/b/c/d/e", id="attack-07-signed-too-deep"),
    pytest.param("x" * 600, id="attack-07-signed-too-long"),
    pytest.param("caf\u00e9.txt", id="attack-07-signed-non-ascii"),
]


@pytest.mark.parametrize("name", UNSAFE_SIGNED_NAMES)
def test_attack_07_unsafe_signed_resource_name_is_refused(
    name: str, keys: Keys, policy: VerifyPolicy, outside: Outside, make_bundle: BundleMaker
) -> None:
    bundle = make_bundle()
    files = {**default_files(), name: b"escaped!"}
    signature = sign_manifest(make_manifest(files, roles={name: "golden"}), [keys.trusted.private])
    with refuses(ManifestError, f"file name {name!r}"):
        verify_signature_document(signature, [keys.trusted.public])
    with refuses(ManifestError, "file name"):
        verify_in_ekb(signature, bundle, keys, outside, policy)
    outside.clean_failure()


@pytest.mark.parametrize(
    "name",
    [
        pytest.param("../x", id="attack-07-subject-dotdot"),
        pytest.param("/etc", id="attack-07-subject-absolute"),
    ],
)
def test_attack_07_unsafe_bundle_name_is_refused(
    name: str, bundle: Bundle, keys: Keys, policy: VerifyPolicy, outside: Outside
) -> None:
    signature = sign_manifest(make_manifest(default_files(), bundle_name=name), [keys.trusted.private])
    with refuses(ManifestError, f"file name {name!r}"):
        verify_in_ekb(signature, bundle, keys, outside, policy)
    outside.clean_failure()


@pytest.mark.parametrize(
    "name",
    [
        pytest.param("../weights.bin", id="attack-12-external-data-dotdot"),
        pytest.param("/var/lib/weights.bin", id="attack-12-external-data-absolute"),
        pytest.param("..\\weights.bin", id="attack-12-external-data-backslash"),
    ],
)
def test_attack_12_external_data_named_outside_the_bundle_is_refused(
    name: str, bundle: Bundle, keys: Keys, policy: VerifyPolicy, outside: Outside
) -> None:
    """The signed-name rule only. Model-level checks (an ONNX `location` pointing outside the bundle) come
    with the bundle builder, which reads the model."""
    files = {**default_files(), name: b"\0" * 64}
    manifest = make_manifest(files, roles={name: "external-data"})
    signature = sign_manifest(manifest, [keys.trusted.private])
    with refuses(ManifestError, f"file name {name!r}"):
        verify_in_ekb(signature, bundle, keys, outside, policy)
    outside.clean_failure()


# --- attack 14: payloadType confusion ------------------------------------------------------------------


@pytest.mark.parametrize(
    "payload_type",
    [
        pytest.param("application/json", id="attack-14-json"),
        pytest.param("application/vnd.in-toto+json; charset=utf-8", id="attack-14-parameter"),
        pytest.param("application/vnd.in-toto+JSON", id="attack-14-case"),
        pytest.param("", id="attack-14-empty"),
    ],
)
def test_attack_14_other_payload_type_validly_signed_is_refused(
    payload_type: str, bundle: Bundle, keys: Keys, policy: VerifyPolicy, outside: Outside
) -> None:
    signature = sign_statement(
        statement_of(bundle.manifest), [keys.trusted.private], payload_type=payload_type
    )
    with refuses(FormatError, "(type confusion)"):
        verify_in_ekb(signature, bundle, keys, outside, policy)
    outside.clean_failure()


def test_attack_14_signature_over_another_type_is_refused(
    bundle: Bundle, keys: Keys, policy: VerifyPolicy, outside: Outside
) -> None:
    """The declared type is right, but the signature was made for an `application/json` document."""
    signature = sign_statement(
        statement_of(bundle.manifest), [keys.trusted.private], signed_type="application/json"
    )
    with refuses(SignatureError, "0 of the required 1"):
        verify_in_ekb(signature, bundle, keys, outside, policy)
    outside.clean_failure()


def test_attack_14_other_media_type_is_refused(bundle: Bundle, keys: Keys) -> None:
    document = json.loads(bundle.signature)
    document["mediaType"] = "application/vnd.dev.sigstore.bundle+json;version=0.2"
    with refuses(FormatError, f"expected {BUNDLE_MEDIA_TYPE}"):
        verify_signature_document(canonical_bytes(document), [keys.trusted.public])


# --- attack 15: duplicate keys, NaN, huge integers -----------------------------------------------------


def _duplicate_payload(bundle: Bundle, keys: Keys) -> bytes:
    evil = sign_statement(
        edited(bundle, lambda s: edgekit(s).update(release_counter=99)), [keys.attacker.private]
    )
    evil_payload = json.loads(evil)["dsseEnvelope"]["payload"]
    text = bundle.signature.decode()
    return text.replace('"payload":', f'"payload":"{evil_payload}","payload":', 1).encode()


@pytest.mark.parametrize(
    ("make", "fragment"),
    [
        pytest.param(
            _duplicate_payload, "duplicate JSON key 'payload'", id="attack-15-sig-duplicate-payload"
        ),
        pytest.param(
            lambda b, k: b.signature.replace(b'"mediaType":', b'"mediaType":"x","mediaType":', 1),
            "duplicate JSON key 'mediaType'",
            id="attack-15-sig-duplicate-media-type",
        ),
        pytest.param(
            lambda b, k: b.signature.replace(b'"tlogEntries":[]', b'"tlogEntries":[NaN]'),
            "NaN",
            id="attack-15-sig-nan",
        ),
        pytest.param(
            lambda b, k: b.signature.replace(b'"tlogEntries":[]', b'"tlogEntries":[-Infinity]'),
            "-Infinity",
            id="attack-15-sig-infinity",
        ),
        pytest.param(
            lambda b, k: b.signature.replace(b'"tlogEntries":[]', b'"tlogEntries":[1' + b"0" * 30 + b"]"),
            "out of range",
            id="attack-15-sig-huge-integer",
        ),
        pytest.param(
            lambda b, k: b.signature.replace(b'"tlogEntries":[]', b'"tlogEntries":[1e999]'),
            "model.sig",
            id="attack-15-sig-overflowing-float",
        ),
        pytest.param(
            lambda b, k: b.signature.replace(b'"tlogEntries":[]', b'"tlogEntries":' + b"[" * 100000),
            "model.sig: not valid JSON",
            id="attack-15-sig-deep-nesting",
        ),
        pytest.param(lambda b, k: b"\xff" + b.signature, "not UTF-8", id="attack-15-sig-not-utf8"),
        pytest.param(lambda b, k: b"\xef\xbb\xbf" + b.signature, "not valid JSON", id="attack-15-sig-bom"),
    ],
)
def test_attack_15_malformed_signature_json_is_refused(
    make: Callable[[Bundle, Keys], bytes],
    fragment: str,
    bundle: Bundle,
    keys: Keys,
    policy: VerifyPolicy,
    outside: Outside,
) -> None:
    data = make(bundle, keys)
    assert data != bundle.signature
    with refuses(FormatError, fragment):
        verify_in_ekb(data, bundle, keys, outside, policy)
    outside.clean_failure()


def signed_text(bundle: Bundle, old: bytes, new: bytes) -> bytes:
    """The canonical payload with one textual edit (things canonical_bytes cannot write)."""
    payload = canonical_bytes(statement_of(bundle.manifest))
    assert old in payload
    return payload.replace(old, new, 1)


@pytest.mark.parametrize(
    ("old", "new", "fragment"),
    [
        pytest.param(
            b'"release_counter":5',
            b'"release_counter":1,"release_counter":5',
            "duplicate JSON key 'release_counter'",
            id="attack-15-payload-duplicate-key",
        ),
        pytest.param(
            b'"subject":',
            b'"subject":[],"subject":',
            "duplicate JSON key 'subject'",
            id="attack-15-payload-dup-subject",
        ),
        pytest.param(b'"release_counter":5', b'"release_counter":NaN', "NaN", id="attack-15-payload-nan"),
        pytest.param(
            b'"release_counter":5', b'"release_counter":Infinity', "Infinity", id="attack-15-payload-inf"
        ),
        pytest.param(
            b'"release_counter":5',
            b'"release_counter":1e999',
            "signed statement",
            id="attack-15-payload-1e999",
        ),
        pytest.param(
            b'"release_counter":5',
            b'"release_counter":1' + b"0" * 30,
            "out of range",
            id="attack-15-payload-10e30",
        ),
        pytest.param(
            b'"release_counter":5',
            b'"release_counter":%d' % 2**53,
            "out of range",
            id="attack-15-payload-2e53",
        ),
        pytest.param(
            b'"release_counter":5',
            b'"release_counter":-' + b"9" * 25,
            "out of range",
            id="attack-15-payload-negative",
        ),
    ],
)
def test_attack_15_malformed_signed_payload_is_refused(
    old: bytes, new: bytes, fragment: str, bundle: Bundle, keys: Keys, policy: VerifyPolicy, outside: Outside
) -> None:
    signature = sign_statement(signed_text(bundle, old, new), [keys.trusted.private])  # validly signed
    with refuses(FormatError, fragment):
        verify_in_ekb(signature, bundle, keys, outside, policy)
    outside.clean_failure()


# --- attack 16: floats and non-canonical values in signed fields ---------------------------------------


def _set(path: str, value: object) -> Callable[[dict[str, Any]], None]:
    """An edit setting edgekit field `path` (dotted, `files.NAME.key` allowed) to `value`."""

    def edit(statement: dict[str, Any]) -> None:
        node: Any = edgekit(statement)
        *parents, last = path.split(":")
        for part in parents:
            node = node[part]
        node[last] = value

    return edit


def _uppercase_digest(statement: dict[str, Any]) -> None:
    item = resource(statement, "labels.txt")
    item["digest"] = item["digest"].upper()


def _uppercase_root(statement: dict[str, Any]) -> None:
    digest = statement["subject"][0]["digest"]
    digest["sha256"] = digest["sha256"].upper()


def _reverse_resources(statement: dict[str, Any]) -> None:
    statement["predicate"]["resources"].reverse()


@pytest.mark.parametrize(
    ("edit", "fragment"),
    [
        pytest.param(
            _set("release_counter", 5.0), "expected an integer, got float 5.0", id="attack-16-counter-float"
        ),
        pytest.param(
            _set("release_counter", "5"), "expected an integer, got str", id="attack-16-counter-string"
        ),
        pytest.param(
            _set("release_counter", True), "expected an integer, got bool", id="attack-16-counter-bool"
        ),
        pytest.param(_set("release_counter", -1), "outside", id="attack-16-counter-negative"),
        pytest.param(_set("files:labels.txt:size", True), "got bool True", id="attack-16-size-true"),
        pytest.param(_set("files:labels.txt:size", 20.0), "got float 20.0", id="attack-16-size-float"),
        pytest.param(_set("files:labels.txt:size", -20), "outside", id="attack-16-size-negative"),
        pytest.param(_set("runtime:opset", 17.0), "got float 17.0", id="attack-16-opset-float"),
        pytest.param(_set("hardware_ids", ["rpi 4"]), "canonical form", id="attack-16-hardware-space"),
        pytest.param(_set("version", "1.0.0 "), "canonical form", id="attack-16-version-space"),
        pytest.param(_set("name", "Digits"), "canonical form", id="attack-16-name-case"),
        pytest.param(_uppercase_digest, "canonical form", id="attack-16-digest-uppercase"),
        pytest.param(_uppercase_root, "canonical form", id="attack-16-root-uppercase"),
        pytest.param(_reverse_resources, "canonical (PurePosixPath) order", id="attack-16-resources-order"),
        pytest.param(
            _set_serialization("allow_symlinks", 0),
            "serialization policy",
            id="attack-16-allow-symlinks-zero",
        ),
        pytest.param(
            _set_serialization("allow_symlinks", 0.0),
            "serialization policy",
            id="attack-16-allow-symlinks-float",
        ),
        pytest.param(_set("schema", "edgekit.bundle/v2"), "edgekit.schema", id="attack-16-schema"),
        pytest.param(_set("extra", 1), "unexpected keys ['extra']", id="attack-16-unknown-key"),
        pytest.param(_set("entrypoint", "labels.txt"), "role 'model'", id="attack-16-entrypoint-not-model"),
    ],
)
def test_attack_16_non_canonical_signed_value_is_refused(
    edit: Callable[[dict[str, Any]], None],
    fragment: str,
    bundle: Bundle,
    keys: Keys,
    policy: VerifyPolicy,
    outside: Outside,
) -> None:
    signature = sign_statement(edited(bundle, edit), [keys.trusted.private])
    with refuses(ManifestError, fragment):
        verify_signature_document(signature, [keys.trusted.public])
    with refuses(ManifestError, fragment):
        verify_in_ekb(signature, bundle, keys, outside, policy)
    outside.clean_failure()


# --- attack 17: attacker key with a matching hint ------------------------------------------------------


def _attacker_signed(bundle: Bundle, keys: Keys, **material: str) -> bytes:
    payload = canonical_bytes(statement_of(bundle.manifest))
    document = envelope_document(
        payload,
        [ecdsa_sign(keys.attacker.private, payload)],
        hint=keys.trusted.key_id,
        keyid=material.pop("keyid", ""),
    )
    document["verificationMaterial"]["publicKey"].update(material)
    return canonical_bytes(document)


@pytest.mark.parametrize(
    "material",
    [
        pytest.param({}, id="attack-17-hint"),
        pytest.param({"keyid": "TRUSTED"}, id="attack-17-keyid"),
        pytest.param({"rawBytes": "ATTACKER_PEM"}, id="attack-17-embedded-key"),
    ],
)
def test_attack_17_attacker_key_with_trusted_hint_is_refused(
    material: dict[str, str], bundle: Bundle, keys: Keys, policy: VerifyPolicy, outside: Outside
) -> None:
    material = {
        k: keys.trusted.key_id
        if v == "TRUSTED"
        else b64(public_pem(keys.attacker.private.public_key()))
        if v == "ATTACKER_PEM"
        else v
        for k, v in material.items()
    }
    signature = _attacker_signed(bundle, keys, **material)
    with refuses(SignatureError, "0 of the required 1 pinned key(s) signed this bundle"):
        verify_in_ekb(signature, bundle, keys, outside, policy)
    outside.clean_failure()


def test_attack_17_attacker_signature_next_to_a_trusted_one_adds_nothing(
    bundle: Bundle, keys: Keys, policy: VerifyPolicy, outside: Outside
) -> None:
    """Threshold 2 with one trusted and one attacker signature: the attacker's hint claims the second key."""
    payload = canonical_bytes(statement_of(bundle.manifest))
    sigs = [ecdsa_sign(keys.trusted.private, payload), ecdsa_sign(keys.attacker.private, payload)]
    signature = canonical_bytes(
        envelope_document(payload, sigs, hint=keys.second.key_id, keyid=keys.second.key_id)
    )
    two = VerifyPolicy(hardware_id="rpi4", threshold=2)
    with refuses(SignatureError, "1 of the required 2"):
        verify_in_ekb(signature, bundle, keys, outside, two, pinned=[keys.trusted.public, keys.second.public])
    outside.clean_failure()


# --- attack 18: one key counted twice toward a threshold -----------------------------------------------


def _malleate(der: bytes) -> bytes:
    r, s = decode_dss_signature(der)
    return encode_dss_signature(r, P256_ORDER - s)


def test_attack_18_two_signatures_by_one_key_count_once(
    bundle: Bundle, keys: Keys, policy: VerifyPolicy, outside: Outside
) -> None:
    payload = canonical_bytes(statement_of(bundle.manifest))
    first = ecdsa_sign(keys.trusted.private, payload)
    second = ecdsa_sign(keys.trusted.private, payload)  # randomized nonce: different bytes, same key
    assert first != second
    signature = canonical_bytes(envelope_document(payload, [first, second, _malleate(first)]))
    two = VerifyPolicy(hardware_id="rpi4", threshold=2)
    with refuses(
        SignatureError, "1 of the required 2 pinned key(s) signed this bundle (3 signature(s) present)"
    ):
        verify_in_ekb(signature, bundle, keys, outside, two, pinned=[keys.trusted.public, keys.second.public])
    outside.clean_failure()


def test_attack_18_same_pinned_key_twice_does_not_make_two(
    make_bundle: BundleMaker, keys: Keys, outside: Outside
) -> None:
    bundle = make_bundle(signers=[keys.trusted.private, keys.trusted.private])
    reloaded = load_public_key(public_pem(keys.trusted.private.public_key()))  # another object, same key
    two = VerifyPolicy(hardware_id="rpi4", threshold=2)
    with refuses(SignatureError, "threshold 2 needs between 1 and 1 distinct pinned keys"):
        verify_ekb(bundle.ekb, [keys.trusted.public, reloaded], destination=outside.dest, policy=two)
    outside.clean_failure()
    with refuses(SignatureError, "threshold 2 needs between 1 and 1 distinct pinned keys"):
        verify_directory(bundle.directory, [keys.trusted.public, keys.trusted.public], policy=two)


def test_attack_18_duplicated_signature_entry_counts_once(
    make_bundle: BundleMaker, keys: Keys, outside: Outside
) -> None:
    bundle = make_bundle(signers=[keys.trusted.private, keys.trusted.private])  # deterministic: same bytes
    sigs = json.loads(bundle.signature)["dsseEnvelope"]["signatures"]
    assert sigs[0] == sigs[1]
    two = VerifyPolicy(hardware_id="rpi4", threshold=2)
    with refuses(SignatureError, "1 of the required 2"):
        verify_ekb(
            bundle.ekb, [keys.trusted.public, keys.second.public], destination=outside.dest, policy=two
        )
    outside.clean_failure()


@pytest.mark.parametrize(
    ("count", "fragment"),
    [pytest.param(0, "expected 1..16 entries", id="no-signatures"), pytest.param(17, "1..16", id="too-many")],
)
def test_signature_count_is_bounded(count: int, fragment: str, bundle: Bundle, keys: Keys) -> None:
    payload = canonical_bytes(statement_of(bundle.manifest))
    signature = canonical_bytes(
        envelope_document(payload, [ecdsa_sign(keys.trusted.private, payload)] * count)
    )
    with refuses(FormatError, fragment):
        verify_signature_document(signature, [keys.trusted.public])


# --- attack 19: weak algorithms ------------------------------------------------------------------------


def _md5_resource(statement: dict[str, Any]) -> None:
    resource(statement, "labels.txt")["algorithm"] = "md5"


@pytest.mark.parametrize(
    ("edit", "fragment"),
    [
        pytest.param(_md5_resource, "algorithm 'md5': only sha256 is accepted", id="attack-19-md5-resource"),
        pytest.param(
            _set_serialization("hash_type", "md5"), "serialization policy", id="attack-19-md5-hash-type"
        ),
        pytest.param(
            _set_serialization("hash_type", "blake2"), "serialization policy", id="attack-19-other-hash-type"
        ),
    ],
)
def test_attack_19_weak_file_hash_is_refused(
    edit: Callable[[dict[str, Any]], None],
    fragment: str,
    bundle: Bundle,
    keys: Keys,
    policy: VerifyPolicy,
    outside: Outside,
) -> None:
    signature = sign_statement(edited(bundle, edit), [keys.trusted.private])
    with refuses(ManifestError, fragment):
        verify_in_ekb(signature, bundle, keys, outside, policy)
    outside.clean_failure()


@pytest.mark.parametrize(
    "algorithm",
    [
        pytest.param(hashes.SHA1(), id="attack-19-sha1-signature"),
        pytest.param(hashes.SHA224(), id="attack-19-sha224-signature"),
        pytest.param(hashes.SHA512(), id="attack-19-sha512-on-p256"),
    ],
)
def test_attack_19_signature_with_another_hash_is_refused(
    algorithm: hashes.HashAlgorithm, bundle: Bundle, keys: Keys, policy: VerifyPolicy, outside: Outside
) -> None:
    signature = sign_statement(
        statement_of(bundle.manifest), [keys.trusted.private], hash_algorithm=algorithm
    )
    with refuses(SignatureError, "0 of the required 1"):
        verify_in_ekb(signature, bundle, keys, outside, policy)
    outside.clean_failure()


def test_attack_19_garbage_signature_bytes_are_refused(bundle: Bundle, keys: Keys) -> None:
    payload = canonical_bytes(statement_of(bundle.manifest))
    for raw in (b"\x30\x00", b"\x00" * 64, ecdsa_sign(keys.trusted.private, payload)[:-3]):
        signature = canonical_bytes(envelope_document(payload, [raw]))
        with refuses(SignatureError, "0 of the required 1"):
            verify_signature_document(signature, [keys.trusted.public])


def test_attack_19_invalid_base64_is_refused(bundle: Bundle, keys: Keys) -> None:
    document = json.loads(bundle.signature)
    document["dsseEnvelope"]["signatures"][0]["sig"] = "not base64!"
    with refuses(FormatError, "signatures[0].sig: not valid base64"):
        verify_signature_document(canonical_bytes(document), [keys.trusted.public])
    document["dsseEnvelope"]["payload"] = "\u00e9\u00e9\u00e9\u00e9"
    with refuses(FormatError, "dsseEnvelope.payload: not valid base64"):
        verify_signature_document(canonical_bytes(document), [keys.trusted.public])


def test_attack_19_p384_key_is_checked_with_its_own_hash(keys: Keys, bundle: Bundle, tmp_path: Any) -> None:
    """A P-384 release key signs with SHA-384; the same key signing with SHA-256 does not verify."""
    key = ec.generate_private_key(ec.SECP384R1())
    pinned = load_public_key(public_pem(key.public_key()))
    statement = statement_of(bundle.manifest)
    good = sign_statement(statement, [key], hash_algorithm=hashes.SHA384())
    assert verify_signature_document(good, [pinned]).signer_ids == (pinned.key_id,)
    with refuses(SignatureError, "0 of the required 1"):
        verify_signature_document(sign_statement(statement, [key]), [pinned])


# --- attack 20: validly signed older release (rollback) ------------------------------------------------


def test_attack_20_older_release_is_refused(
    make_bundle: BundleMaker, keys: Keys, policy: VerifyPolicy, outside: Outside
) -> None:
    old = make_bundle(release_counter=3, version="0.9.0")
    with refuses(PolicyError, "release_counter 3 of digits 0.9.0 is below this device's floor 5"):
        verify_ekb(old.ekb, [keys.trusted.public], destination=outside.dest, policy=policy)
    outside.clean_failure()
    with refuses(PolicyError, "(rollback)"):
        verify_directory(old.directory, [keys.trusted.public], policy=policy)


# --- attack 23: bundle for other hardware --------------------------------------------------------------


def test_attack_23_bundle_for_other_hardware_is_refused(
    make_bundle: BundleMaker, keys: Keys, policy: VerifyPolicy, outside: Outside
) -> None:
    jetson = make_bundle(hardware_ids=("jetson-nano", "jetson-orin"))
    with refuses(
        PolicyError, "bundle is built for hardware ['jetson-nano', 'jetson-orin'], this device is 'rpi4'"
    ):
        verify_ekb(jetson.ekb, [keys.trusted.public], destination=outside.dest, policy=policy)
    outside.clean_failure()
    with refuses(PolicyError, "this device is 'rpi4'"):
        verify_directory(jetson.directory, [keys.trusted.public], policy=policy)


def test_bundle_for_another_model_slot_is_refused(bundle: Bundle, keys: Keys, outside: Outside) -> None:
    slot = VerifyPolicy(hardware_id="rpi4", expected_name="faces")
    with refuses(PolicyError, "bundle is for model 'digits', this slot holds 'faces'"):
        verify_ekb(bundle.ekb, [keys.trusted.public], destination=outside.dest, policy=slot)
    outside.clean_failure()


def test_unsigned_statement_with_no_pinned_keys_is_refused(bundle: Bundle) -> None:
    with refuses(SignatureError, "no pinned public keys"):
        verify_signature_document(bundle.signature, [])


def test_statement_type_and_predicate_type_are_checked(bundle: Bundle, keys: Keys) -> None:
    for key, value, fragment in (
        ("_type", "https://in-toto.io/Statement/v0.1", "statement _type"),
        ("predicateType", "https://slsa.dev/provenance/v1", "predicateType"),
    ):
        statement = statement_of(bundle.manifest)
        statement[key] = value
        with refuses(ManifestError, fragment):
            verify_signature_document(
                sign_statement(statement, [keys.trusted.private]), [keys.trusted.public]
            )


def test_payload_hash_binds_the_exact_signed_bytes(bundle: Bundle, keys: Keys) -> None:
    """Re-encoding the same statement (whitespace) is validly signed but has another identity."""
    statement = statement_of(bundle.manifest)
    spaced = json.dumps(statement, indent=1, sort_keys=True).encode()
    a = verify_signature_document(sign_statement(statement, [keys.trusted.private]), [keys.trusted.public])
    b = verify_signature_document(sign_statement(spaced, [keys.trusted.private]), [keys.trusted.public])
    assert a.manifest == b.manifest
    assert a.payload_sha256 != b.payload_sha256
    assert base64.b64decode(json.loads(bundle.signature)["dsseEnvelope"]["payload"]) == canonical_bytes(
        statement
    )
    assert PAYLOAD_TYPE == "application/vnd.in-toto+json"
