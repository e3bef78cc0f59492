"""The controls: good bundles verify, so every refusal in this folder is caused by its attack alone."""

from __future__ import annotations

import io
import json
import stat
from dataclasses import replace

from signing.archive import ekb_bytes, member_order
from signing.envelope import verify_signature_document
from signing.verify import VerifyPolicy, verify_directory, verify_ekb
from tests.attacks.conftest import (
    Bundle,
    BundleMaker,
    Keys,
    Outside,
    envelope_document,
    sign_statement,
    statement_of,
)


def test_good_ekb_verifies_and_extracts_identical_private_files(
    bundle: Bundle, keys: Keys, policy: VerifyPolicy, outside: Outside
) -> None:
    result = verify_ekb(bundle.ekb, [keys.trusted.public], destination=outside.dest, policy=policy)

    assert result.path == outside.dest
    assert result.manifest == replace(bundle.manifest, root=result.manifest.root)
    assert result.signer_ids == (keys.trusted.key_id,)
    extracted = sorted(p.relative_to(outside.dest).as_posix() for p in outside.dest.rglob("*") if p.is_file())
    assert extracted == sorted([*bundle.files, "model.sig"])
    for name in extracted:
        path = outside.dest / name
        assert path.read_bytes() == bundle.member(name)
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, name
    for directory in [outside.dest, *(p for p in outside.dest.rglob("*") if p.is_dir())]:
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700, directory
    assert sorted(p.name for p in outside.dest.parent.iterdir()) == ["dest"]


def test_good_ekb_verifies_from_a_stream_without_extracting(
    bundle: Bundle, keys: Keys, policy: VerifyPolicy
) -> None:
    result = verify_ekb(io.BytesIO(bundle.ekb_bytes), [keys.trusted.public], policy=policy)
    assert result.path is None
    assert result.manifest.release_counter == 5


def test_good_directory_verifies(bundle: Bundle, keys: Keys, policy: VerifyPolicy) -> None:
    result = verify_directory(bundle.directory, [keys.trusted.public], policy=policy)
    assert result.path == bundle.directory
    assert set(result.manifest.files) == set(bundle.files)


def test_ekb_is_deterministic_and_in_streaming_order(bundle: Bundle) -> None:
    names = member_order(bundle.manifest)
    assert names[0] == "model.sig" and names[-1] == "model.onnx"
    assert ekb_bytes(bundle.directory, names) == bundle.ekb_bytes


def test_identity_is_the_payload_hash_not_root(bundle: Bundle, keys: Keys, policy: VerifyPolicy) -> None:
    by_ekb = verify_ekb(bundle.ekb, [keys.trusted.public], policy=policy)
    by_dir = verify_directory(bundle.directory, [keys.trusted.public], policy=policy)
    assert by_ekb.payload_sha256 == by_dir.payload_sha256
    assert by_ekb.manifest.root != by_ekb.payload_sha256


def test_two_of_two_distinct_keys_pass(make_bundle: BundleMaker, keys: Keys, policy: VerifyPolicy) -> None:
    both = make_bundle(signers=[keys.trusted.private, keys.second.private])
    two = VerifyPolicy(hardware_id="rpi4", release_floor=5, threshold=2)
    pinned = [keys.trusted.public, keys.second.public]

    result = verify_ekb(both.ekb, pinned, policy=two)

    assert set(result.signer_ids) == {keys.trusted.key_id, keys.second.key_id}
    assert verify_directory(both.directory, pinned, policy=two).signer_ids == result.signer_ids


def test_one_of_two_pinned_keys_is_enough_at_threshold_one(
    make_bundle: BundleMaker, keys: Keys, policy: VerifyPolicy
) -> None:
    rotated = make_bundle(signers=[keys.second.private])
    result = verify_ekb(rotated.ekb, [keys.trusted.public, keys.second.public], policy=policy)
    assert result.signer_ids == (keys.second.key_id,)


def test_url_safe_unpadded_base64_is_accepted(bundle: Bundle, keys: Keys, policy: VerifyPolicy) -> None:
    signature = sign_statement(statement_of(bundle.manifest), [keys.trusted.private], urlsafe=True)
    document = json.loads(signature)
    assert "=" not in document["dsseEnvelope"]["payload"]
    verified = verify_signature_document(signature, [keys.trusted.public])
    assert verified.manifest.files == bundle.manifest.files


def test_standard_base64_payload_with_url_safe_signature_is_accepted(bundle: Bundle, keys: Keys) -> None:
    original = json.loads(bundle.signature)
    payload = original["dsseEnvelope"]["payload"]
    sig = original["dsseEnvelope"]["signatures"][0]["sig"]
    url_sig = sig.replace("+", "-").replace("/", "_").rstrip("=")
    document = envelope_document(b"", [url_sig])
    document["dsseEnvelope"]["payload"] = payload
    data = json.dumps(document).encode()
    assert verify_signature_document(data, [keys.trusted.public]).manifest.name == "digits"


def test_release_at_the_floor_and_matching_hardware_pass(bundle: Bundle, keys: Keys) -> None:
    exact = VerifyPolicy(
        hardware_id="rpi4", release_floor=5, max_total_bytes=sum(map(len, bundle.files.values()))
    )
    assert verify_ekb(bundle.ekb, [keys.trusted.public], policy=exact).manifest.release_counter == 5
