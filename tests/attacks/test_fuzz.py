"""Fuzzing the verifier: mutated `.ekb` files, model.sig documents and re-signed statements.

The only acceptable outcomes are a `VerificationError` subclass, or success with exactly the signed bytes (a
mutation that hit tar padding or the trailing newline). No other exception type, and nothing ever written
outside the destination folder.
"""

from __future__ import annotations

import io
import json
import shutil
import tarfile
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from signing.archive import ekb_bytes, member_order
from signing.envelope import sign_manifest, verify_signature_document
from signing.errors import VerificationError
from signing.keys import PublicKey
from signing.strict_json import canonical_bytes
from signing.verify import VerifyPolicy, verify_ekb
from tests.attacks.conftest import Keys, default_files, listing, make_manifest, sign_statement, statement_of

FUZZ = settings(
    deadline=None,
    database=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
POLICY = VerifyPolicy(hardware_id="rpi4", release_floor=5)


@dataclass(frozen=True)
class Material:
    ekb: bytes
    signature: bytes
    statement: dict[str, Any]
    files: dict[str, bytes]
    payload_sha256: str
    content_end: int  # offset where the last member's data ends (zero padding after it)
    pinned: list[PublicKey]
    keys: Keys
    scratch: Path


@pytest.fixture(scope="module")
def material(tmp_path_factory: pytest.TempPathFactory, keys: Keys) -> Material:
    work = tmp_path_factory.mktemp("fuzz")
    files = default_files(seed=7)
    manifest = make_manifest(files)
    directory = work / manifest.bundle_name
    for name, data in files.items():
        (directory / name).parent.mkdir(parents=True, exist_ok=True)
        (directory / name).write_bytes(data)
    signature = sign_manifest(manifest, [keys.trusted.private])
    (directory / "model.sig").write_bytes(signature)
    ekb = ekb_bytes(directory, member_order(manifest))
    verified = verify_signature_document(signature, [keys.trusted.public])
    scratch = work / "scratch"
    scratch.mkdir()
    return Material(
        ekb=ekb,
        signature=signature,
        statement=statement_of(manifest),
        files=files,
        payload_sha256=verified.payload_sha256,
        content_end=ekb.find(files["model.onnx"]) + len(files["model.onnx"]),
        pinned=[keys.trusted.public],
        keys=keys,
        scratch=scratch,
    )


MUTATIONS = st.lists(
    st.one_of(
        st.tuples(st.just("flip"), st.integers(0, 1 << 30), st.integers(1, 255)),
        st.tuples(st.just("insert"), st.integers(0, 1 << 30), st.binary(min_size=1, max_size=16)),
        st.tuples(st.just("delete"), st.integers(0, 1 << 30), st.integers(1, 600)),
        st.tuples(st.just("overwrite"), st.integers(0, 1 << 30), st.binary(min_size=1, max_size=16)),
        st.tuples(st.just("truncate"), st.integers(0, 1 << 30), st.just(0)),
    ),
    min_size=1,
    max_size=3,
)


def mutate(data: bytes, mutations: list[tuple[str, int, Any]], span: int) -> bytes:
    """Apply mutations at offsets folded into [0, span) (where the archive's content is)."""
    buffer = bytearray(data)
    for kind, raw_offset, arg in mutations:
        offset = raw_offset % max(1, min(span, len(buffer)))
        if kind == "flip" and buffer:
            buffer[offset] ^= arg
        elif kind == "insert":
            buffer[offset:offset] = arg
        elif kind == "delete":
            del buffer[offset : offset + arg]
        elif kind == "overwrite":
            buffer[offset : offset + len(arg)] = arg
        elif kind == "truncate":
            del buffer[offset:]
    return bytes(buffer)


@contextmanager
def sandbox(material: Material) -> Iterator[Path]:
    """A fresh empty folder; after the block, only `out/...` may exist in it."""
    folder = Path(tempfile.mkdtemp(dir=material.scratch))
    try:
        yield folder
        stray = [p for p in listing(folder) if p != "out" and not p.startswith("out/")]
        assert not stray, f"written outside the destination: {stray}"
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def check_outcome(material: Material, data: bytes, folder: Path) -> None:
    destination = folder / "out"
    try:
        result = verify_ekb(io.BytesIO(data), material.pinned, destination=destination, policy=POLICY)
    except VerificationError:
        assert listing(folder) == [], "a refused archive left files behind"
        return
    # Accepted: then it is exactly the signed bundle (the mutation hit padding or ignorable bytes).
    assert result.payload_sha256 == material.payload_sha256
    for name, content in material.files.items():
        assert (destination / name).read_bytes() == content


@settings(FUZZ, max_examples=80)
@given(mutations=MUTATIONS, anywhere=st.booleans())
def test_mutated_ekb_is_refused_or_exactly_the_signed_bundle(
    material: Material, mutations: list[tuple[str, int, Any]], anywhere: bool
) -> None:
    span = len(material.ekb) if anywhere else material.content_end
    data = mutate(material.ekb, mutations, span)
    with sandbox(material) as folder:
        check_outcome(material, data, folder)


@settings(FUZZ, max_examples=30)
@given(mutations=MUTATIONS)
def test_mutated_signature_document_raises_only_verification_errors(
    material: Material, mutations: list[tuple[str, int, Any]]
) -> None:
    data = mutate(material.signature, mutations, len(material.signature))
    try:
        verified = verify_signature_document(data, material.pinned)
    except VerificationError:
        return
    assert verified.payload_sha256 == material.payload_sha256


@settings(FUZZ, max_examples=30)
@given(mutations=MUTATIONS)
def test_mutated_signature_inside_an_ekb_is_refused_cleanly(
    material: Material, mutations: list[tuple[str, int, Any]]
) -> None:
    """model.sig mutated, then archived properly: the archive layer cannot hide parser failures."""
    signature = mutate(material.signature, mutations, len(material.signature))
    data = io.BytesIO()
    with tarfile.open(fileobj=data, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, content in [("model.sig", signature), *material.files.items()]:
            info = tarfile.TarInfo(name)
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
    with sandbox(material) as folder:
        check_outcome(material, data.getvalue(), folder)


@settings(FUZZ, max_examples=30)
@given(mutations=MUTATIONS)
def test_mutated_statement_text_validly_signed_raises_only_verification_errors(
    material: Material, mutations: list[tuple[str, int, Any]]
) -> None:
    """The signature is valid, so the statement parser itself is under fire."""
    payload = canonical_bytes(material.statement)
    mutated = mutate(payload, mutations, len(payload))
    signature = sign_statement(mutated, [material.keys.trusted.private])
    try:
        verified = verify_signature_document(signature, material.pinned)
    except VerificationError:
        return
    assert verified.manifest.files.keys() == material.files.keys()


JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**60), 2**60)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
    | st.sampled_from(["model.onnx", "../x", "sha256", "md5", "a" * 64, "rpi4", "model", "/etc/x"]),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)


def paths_of(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [prefix]
    if isinstance(node, dict):
        for key, value in node.items():
            found += paths_of(value, (*prefix, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            found += paths_of(value, (*prefix, index))
    return found


@settings(FUZZ, max_examples=40)
@given(choice=st.integers(0, 1 << 30), value=JSON_VALUES, delete=st.booleans())
def test_statement_with_a_field_replaced_validly_signed_raises_only_verification_errors(
    material: Material, choice: int, value: Any, delete: bool
) -> None:
    statement = json.loads(json.dumps(material.statement))
    paths = paths_of(statement)[1:]
    path = paths[choice % len(paths)]
    parent: Any = statement
    for step in path[:-1]:
        parent = parent[step]
    if delete and isinstance(parent, dict):
        del parent[path[-1]]
    else:
        parent[path[-1]] = value
    payload = json.dumps(statement, allow_nan=False).encode()  # sizes over 2^53 are a FormatError too
    signature = sign_statement(payload, [material.keys.trusted.private])
    try:
        verify_signature_document(signature, material.pinned)
    except VerificationError:
        return


@pytest.mark.parametrize("depth", [50, 500, 5000])
def test_deeply_nested_signed_values_raise_only_verification_errors(material: Material, depth: int) -> None:
    for field in ("serialization", "resources", "edgekit"):
        payload = canonical_bytes(material.statement).replace(
            b'"%s":' % field.encode(), b'"%s":%s1%s,"x":' % (field.encode(), b"[" * depth, b"]" * depth), 1
        )
        signature = sign_statement(payload, [material.keys.trusted.private])
        with pytest.raises(VerificationError):
            verify_signature_document(signature, material.pinned)
