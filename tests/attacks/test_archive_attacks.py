"""Attacks on the bundle's files and on the `.ekb` archive.

Every refusal asserts the exact error class, a fragment of its message, and that the destination does not
exist afterwards and nothing appeared around it.
"""

from __future__ import annotations

import gzip
import io
import os
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from signing.envelope import MAX_SIGNATURE_BYTES, sign_manifest, verify_signature_document
from signing.errors import ContentError, FormatError, ManifestError, MemberError, PolicyError, SignatureError
from signing.verify import VerifyPolicy, verify_directory, verify_ekb
from tests.attacks.conftest import (
    Bundle,
    BundleMaker,
    EndlessSource,
    Keys,
    Outside,
    default_files,
    ekb_of,
    make_manifest,
    pax_member,
    raw_member,
    raw_tar,
    refuses,
    sign_statement,
    special,
    statement_of,
    tar_with,
    ustar_header,
)


def verify_bytes(data: bytes, keys: Keys, outside: Outside, policy: VerifyPolicy, **kw: object) -> object:
    return verify_ekb(io.BytesIO(data), [keys.trusted.public], destination=outside.dest, policy=policy, **kw)


def members_except(bundle: Bundle, *names: str) -> list[tuple[str, bytes]]:
    """The bundle's members after model.sig, in archive order, without `names`."""
    return [(n, d) for n, d in bundle.members()[1:] if n not in names]


def replaced(bundle: Bundle, name: str, data: bytes) -> list[tuple[str, bytes]]:
    return [(n, data if n == name else d) for n, d in bundle.members()[1:]]


def member_names(data: bytes) -> list[str]:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r|") as tar:
        return [m.name for m in tar]


# --- attack 1: one byte flipped or appended in the model ----------------------------------------------


def test_attack_01_flipped_model_byte_in_ekb_is_refused(
    bundle: Bundle, keys: Keys, policy: VerifyPolicy, outside: Outside
) -> None:
    data = bytearray(bundle.ekb_bytes)
    offset = data.find(bundle.files["model.onnx"]) + 1234
    data[offset] ^= 0x01
    with refuses(ContentError, "model.onnx: SHA-256"):
        verify_bytes(bytes(data), keys, outside, policy)
    outside.clean_failure()


def test_attack_01_appended_model_byte_in_ekb_is_refused(
    bundle: Bundle, keys: Keys, policy: VerifyPolicy, outside: Outside
) -> None:
    data = ekb_of(bundle.signature, replaced(bundle, "model.onnx", bundle.files["model.onnx"] + b"\0"))
    with refuses(ContentError, "model.onnx: archive says 4097 bytes, the signature says 4096"):
        verify_bytes(data, keys, outside, policy)
    outside.clean_failure()


def test_attack_01_bytes_past_the_declared_size_are_never_extracted(
    bundle: Bundle, keys: Keys, policy: VerifyPolicy, outside: Outside
) -> None:
    """A byte slipped into a member's padding is not part of it: what is extracted is what was hashed."""
    members = [raw_member("model.sig", bundle.signature)]
    for name, data in bundle.members()[1:]:
        tail = b"!" + b"\0" * (-(len(data) + 1) % 512) if name == "labels.txt" else b"\0" * (-len(data) % 512)
        members.append(ustar_header(name, len(data)) + data + tail)
    verify_bytes(raw_tar(*members), keys, outside, policy)
    assert (outside.dest / "labels.txt").read_bytes() == bundle.files["labels.txt"]


def test_attack_01_flipped_byte_in_a_small_file_is_refused(
    bundle: Bundle, keys: Keys, policy: VerifyPolicy, outside: Outside
) -> None:
    labels = bytearray(bundle.files["labels.txt"])
    labels[0] ^= 0x02
    data = ekb_of(bundle.signature, replaced(bundle, "labels.txt", bytes(labels)))
    with refuses(ContentError, "labels.txt: SHA-256"):
        verify_bytes(data, keys, outside, policy)
    outside.clean_failure()


def test_attack_01_flipped_model_byte_in_directory_is_refused(
    bundle: Bundle, keys: Keys, policy: VerifyPolicy
) -> None:
    model = bundle.directory / "model.onnx"
    data = bytearray(model.read_bytes())
    data[-1] ^= 0x80
    model.write_bytes(bytes(data))
    with refuses(ContentError, "model.onnx: SHA-256"):
        verify_directory(bundle.directory, [keys.trusted.public], policy=policy)


def test_attack_01_appended_model_byte_in_directory_is_refused(
    bundle: Bundle, keys: Keys, policy: VerifyPolicy
) -> None:
    with open(bundle.directory / "model.onnx", "ab") as handle:
        handle.write(b"\0")
    with refuses(ContentError, "model.onnx: 4097 bytes, the signature says 4096"):
        verify_directory(bundle.directory, [keys.trusted.public], policy=policy)


# --- attack 2: extra unsigned file ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        pytest.param("extra.txt", id="attack-02-extra-top-level"),
        pytest.param("golden/evil.npy", id="attack-02-extra-in-subfolder"),
        pytest.param("model.onnx.data", id="attack-02-extra-external-data"),
    ],
)
def test_attack_02_extra_archive_member_is_refused(
    name: str, bundle: Bundle, keys: Keys, policy: VerifyPolicy, outside: Outside
) -> None:
    data = ekb_of(bundle.signature, [*members_except(bundle), (name, b"payload")])
    with refuses(MemberError, f"archive member {name!r} is not signed"):
        verify_bytes(data, keys, outside, policy)
    outside.clean_failure()


def test_attack_02_extra_member_before_the_signed_ones_is_refused(
    bundle: Bundle, keys: Keys, policy: VerifyPolicy, outside: Outside
) -> None:
    data = ekb_of(bundle.signature, [("extra.py", b"import os"), *members_except(bundle)])
    with refuses(MemberError, "'extra.py' is not signed"):
        verify_bytes(data, keys, outside, policy)
    outside.clean_failure()


@pytest.mark.parametrize(
    "name",
    [
        pytest.param("extra.txt", id="attack-02-dir-extra-top-level"),
        pytest.param("golden/evil.npy", id="attack-02-dir-extra-in-subfolder"),
        pytest.param(".hidden", id="attack-02-dir-extra-hidden"),
        pytest.param("deep/er/x.bin", id="attack-02-dir-extra-nested"),
    ],
)
def test_attack_02_extra_file_in_directory_is_refused(
    name: str, bundle: Bundle, keys: Keys, policy: VerifyPolicy
) -> None:
    path = bundle.directory / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"payload")
    with refuses(MemberError, f"unsigned file(s) [{name!r}]"):
        verify_directory(bundle.directory, [keys.trusted.public], policy=policy)


# --- attack 3: missing file ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        pytest.param("labels.txt", id="attack-03-missing-labels"),
        pytest.param("model.onnx", id="attack-03-missing-model"),
        pytest.param("golden/output_0.npy", id="attack-03-missing-golden"),
    ],
)
def test_attack_03_missing_archive_member_is_refused(
    name: str, bundle: Bundle, keys: Keys, policy: VerifyPolicy, outside: Outside
) -> None:
    data = ekb_of(bundle.signature, members_except(bundle, name))
    with refuses(MemberError, f"signed file(s) [{name!r}] are missing from the archive"):
        verify_bytes(data, keys, outside, policy)
    outside.clean_failure()


def test_attack_03_archive_with_only_the_signature_is_refused(
    bundle: Bundle, keys: Keys, policy: VerifyPolicy, outside: Outside
) -> None:
    with refuses(MemberError, "are missing from the archive"):
        verify_bytes(ekb_of(bundle.signature, []), keys, outside, policy)
    outside.clean_failure()


def test_attack_03_missing_file_in_directory_is_refused(
    bundle: Bundle, keys: Keys, policy: VerifyPolicy
) -> None:
    (bundle.directory / "labels.txt").unlink()
    with refuses(MemberError, "signed file(s) ['labels.txt'] are missing"):
        verify_directory(bundle.directory, [keys.trusted.public], policy=policy)


def test_attack_03_unsigned_directory_is_refused(bundle: Bundle, keys: Keys, policy: VerifyPolicy) -> None:
    (bundle.directory / "model.sig").unlink()
    with refuses(MemberError, "no model.sig; the bundle is not signed"):
        verify_directory(bundle.directory, [keys.trusted.public], policy=policy)


# --- attack 5: renamed file with the same ROOT ---------------------------------------------------------


def test_attack_05_swapped_member_names_are_refused(
    bundle: Bundle, keys: Keys, policy: VerifyPolicy, outside: Outside
) -> None:
    """golden/input_0.npy and golden/output_0.npy have the same size: swap their names in the archive."""
    swap = {"golden/input_0.npy": "golden/output_0.npy", "golden/output_0.npy": "golden/input_0.npy"}
    members = [(swap.get(n, n), d) for n, d in bundle.members()[1:]]
    with refuses(ContentError, "golden/output_0.npy: SHA-256"):
        verify_bytes(ekb_of(bundle.signature, members), keys, outside, policy)
    outside.clean_failure()


def test_attack_05_renamed_file_in_directory_is_refused(
    bundle: Bundle, keys: Keys, policy: VerifyPolicy
) -> None:
    golden = bundle.directory / "golden"
    (golden / "input_0.npy").rename(golden / "input_1.npy")
    with refuses(MemberError, "unsigned file(s) ['golden/input_1.npy']"):
        verify_directory(bundle.directory, [keys.trusted.public], policy=policy)


def test_attack_05_swapped_contents_in_directory_are_refused(
    bundle: Bundle, keys: Keys, policy: VerifyPolicy
) -> None:
    golden = bundle.directory / "golden"
    a, b = (golden / "input_0.npy").read_bytes(), (golden / "output_0.npy").read_bytes()
    (golden / "input_0.npy").write_bytes(b)
    (golden / "output_0.npy").write_bytes(a)
    with refuses(ContentError, "SHA-256"):
        verify_directory(bundle.directory, [keys.trusted.public], policy=policy)


def test_attack_05_renamed_member_is_refused(
    bundle: Bundle, keys: Keys, policy: VerifyPolicy, outside: Outside
) -> None:
    """input_0 -> input_1 keeps the resource order, so ROOT is unchanged: names are checked, not ROOT."""
    members = [
        ("golden/input_1.npy" if n == "golden/input_0.npy" else n, d) for n, d in members_except(bundle)
    ]
    with refuses(MemberError, "archive member 'golden/input_1.npy' is not signed"):
        verify_bytes(ekb_of(bundle.signature, members), keys, outside, policy)
    outside.clean_failure()


def renamed_statement(bundle: Bundle) -> dict[str, Any]:
    """The statement with golden/input_0.npy renamed golden/input_1.npy: another statement, the same ROOT."""
    statement = statement_of(bundle.manifest)
    predicate = statement["predicate"]
    for resource in predicate["resources"]:
        if resource["name"] == "golden/input_0.npy":
            resource["name"] = "golden/input_1.npy"
    files = predicate["edgekit"]["files"]
    files["golden/input_1.npy"] = files.pop("golden/input_0.npy")
    return statement


def test_attack_05_renamed_statement_keeps_root_but_not_the_signature(
    bundle: Bundle, keys: Keys, policy: VerifyPolicy, outside: Outside
) -> None:
    statement = renamed_statement(bundle)
    assert statement["subject"] == statement_of(bundle.manifest)["subject"]  # same ROOT
    forged = sign_statement(statement, [keys.attacker.private], hint=keys.trusted.key_id)
    renamed = [
        ("golden/input_1.npy" if n == "golden/input_0.npy" else n, d) for n, d in members_except(bundle)
    ]
    with refuses(SignatureError, "0 of the required 1 pinned key(s) signed"):
        verify_bytes(ekb_of(forged, renamed), keys, outside, policy)
    outside.clean_failure()


def test_attack_05_same_root_is_not_the_same_bundle(
    bundle: Bundle, keys: Keys, policy: VerifyPolicy, outside: Outside
) -> None:
    """Even validly signed, a renamed statement has another identity and refuses the original names."""
    renamed = sign_statement(renamed_statement(bundle), [keys.trusted.private])
    honest = verify_signature_document(bundle.signature, [keys.trusted.public])
    other = verify_signature_document(renamed, [keys.trusted.public])
    assert honest.manifest.root == other.manifest.root
    assert honest.payload_sha256 != other.payload_sha256
    with refuses(MemberError, "archive member 'golden/input_0.npy' is not signed"):
        verify_bytes(ekb_of(renamed, members_except(bundle)), keys, outside, policy)
    outside.clean_failure()


# --- attack 6: duplicate archive member ----------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        pytest.param("labels.txt", id="attack-06-duplicate-small-file"),
        pytest.param("model.onnx", id="attack-06-duplicate-model"),
        pytest.param("model.sig", id="attack-06-duplicate-signature"),
    ],
)
def test_attack_06_duplicate_member_is_refused(
    name: str, bundle: Bundle, keys: Keys, policy: VerifyPolicy, outside: Outside
) -> None:
    members = [*members_except(bundle), (name, bundle.member(name))]
    with refuses(MemberError, f"archive member {name!r} appears twice"):
        verify_bytes(ekb_of(bundle.signature, members), keys, outside, policy)
    outside.clean_failure()


def test_attack_06_duplicate_with_other_bytes_right_after_the_first_is_refused(
    bundle: Bundle, keys: Keys, policy: VerifyPolicy, outside: Outside
) -> None:
    members = [("labels.txt", bundle.files["labels.txt"]), ("labels.txt", b"evil\n" * 4)]
    members += members_except(bundle, "labels.txt")
    with refuses(MemberError, "'labels.txt' appears twice"):
        verify_bytes(ekb_of(bundle.signature, members), keys, outside, policy)
    outside.clean_failure()


# --- attack 7: path traversal names as archive members -------------------------------------------------

TRAVERSAL_NAMES = [
    pytest.param("../x", id="attack-07-dotdot"),
    pytest.param("../../x", id="attack-07-dotdot-twice"),
    pytest.param("/etc/x", id="attack-07-absolute"),
    pytest.param("a/../../x", id="attack-07-inner-dotdot"),
    pytest.param("C:x", id="attack-07-drive-letter"),
    pytest.param("C:\\x", id="attack-07-drive-backslash"),
    pytest.param("a\\b", id="attack-07-backslash"),
    pytest.param("..\\..\\x", id="attack-07-backslash-dotdot"),
    pytest.param("a\x00b", id="attack-07-nul"),
    pytest.param("a/./b", id="attack-07-dot-component"),
    pytest.param("./labels.txt", id="attack-07-dot-prefix-of-signed-name"),
    pytest.param("golden//input_0.npy", id="attack-07-double-slash"),
    pytest.param("labels.txt\n", id="attack-07-newline"),
]


@pytest.mark.parametrize("name", TRAVERSAL_NAMES)
def test_attack_07_unsafe_member_name_is_refused_and_nothing_escapes(
    name: str, bundle: Bundle, keys: Keys, policy: VerifyPolicy, outside: Outside
) -> None:
    info = tarfile.TarInfo("placeholder")
    info.pax_headers = {"path": name}  # pax carries any name, NUL included
    data = ekb_of(bundle.signature, [(info, b"escaped!"), *members_except(bundle)])  # type: ignore[list-item]
    assert member_names(data)[1] == name  # the archive really carries the hostile name
    with refuses(MemberError, "unsafe name"):
        verify_bytes(data, keys, outside, policy)
    outside.clean_failure()


@pytest.mark.parametrize(
    "name",
    [
        pytest.param(b"../x", id="attack-07-raw-ustar-dotdot"),
        pytest.param(b"/etc/x", id="attack-07-raw-ustar-absolute"),
        pytest.param(b"a\\b", id="attack-07-raw-ustar-backslash"),
    ],
)
def test_attack_07_unsafe_raw_ustar_name_is_refused(
    name: bytes, bundle: Bundle, keys: Keys, policy: VerifyPolicy, outside: Outside
) -> None:
    members = [raw_member("model.sig", bundle.signature), raw_member(name, b"escaped!")]
    members += [raw_member(n, d) for n, d in members_except(bundle)]
    with refuses(MemberError, "unsafe name"):
        verify_bytes(raw_tar(*members), keys, outside, policy)
    outside.clean_failure()


# --- attack 8: symlink, hardlink, FIFO, device and directory members -----------------------------------


@pytest.mark.parametrize(
    ("info", "kind"),
    [
        pytest.param(
            special("labels.txt", tarfile.SYMTYPE, "/etc/passwd"), "symlink", id="attack-08-symlink"
        ),
        pytest.param(special("labels.txt", tarfile.SYMTYPE, "../../x"), "symlink", id="attack-08-symlink-up"),
        pytest.param(
            special("labels.txt", tarfile.LNKTYPE, "model.sig"), "hardlink", id="attack-08-hardlink"
        ),
        pytest.param(
            special("labels.txt", tarfile.LNKTYPE, "/etc/shadow"), "hardlink", id="attack-08-hardlink-abs"
        ),
        pytest.param(special("labels.txt", tarfile.FIFOTYPE), "special file", id="attack-08-fifo"),
        pytest.param(special("labels.txt", tarfile.CHRTYPE), "special file", id="attack-08-char-device"),
        pytest.param(special("labels.txt", tarfile.BLKTYPE), "special file", id="attack-08-block-device"),
        pytest.param(special("golden", tarfile.DIRTYPE), "directory", id="attack-08-directory"),
        pytest.param(special("golden/", tarfile.DIRTYPE), "directory", id="attack-08-directory-slash"),
    ],
)
def test_attack_08_irregular_member_is_refused(
    info: tarfile.TarInfo, kind: str, bundle: Bundle, keys: Keys, policy: VerifyPolicy, outside: Outside
) -> None:
    data = tar_with([("model.sig", bundle.signature), info, *members_except(bundle, "labels.txt")])
    with refuses(MemberError, f"is a {kind}; only regular files are accepted"):
        verify_bytes(data, keys, outside, policy)
    outside.clean_failure()


def test_attack_08_symlinked_folder_then_file_through_it_writes_nothing_outside(
    bundle: Bundle, keys: Keys, policy: VerifyPolicy, outside: Outside
) -> None:
    target = outside.root / "escaped"
    members = [
        special("golden", tarfile.SYMTYPE, str(target)),
        ("golden/input_0.npy", bundle.files["golden/input_0.npy"]),
        *members_except(bundle, "golden/input_0.npy"),
    ]
    with refuses(MemberError, "'golden' is a symlink"):
        verify_bytes(tar_with([("model.sig", bundle.signature), *members]), keys, outside, policy)
    outside.clean_failure()
    assert not target.exists()


def test_attack_08_signature_member_as_symlink_is_refused(
    bundle: Bundle, keys: Keys, policy: VerifyPolicy, outside: Outside
) -> None:
    data = tar_with([special("model.sig", tarfile.SYMTYPE, "/etc/passwd"), *members_except(bundle)])
    with refuses(MemberError, "the first archive member must be the regular file model.sig"):
        verify_bytes(data, keys, outside, policy)
    outside.clean_failure()


def test_attack_08_symlinked_file_in_directory_is_refused(
    bundle: Bundle, keys: Keys, policy: VerifyPolicy, tmp_path: Path
) -> None:
    elsewhere = tmp_path / "labels-elsewhere.txt"
    elsewhere.write_bytes(bundle.files["labels.txt"])  # even with identical bytes
    (bundle.directory / "labels.txt").unlink()
    (bundle.directory / "labels.txt").symlink_to(elsewhere)
    with refuses(MemberError, "labels.txt: not a regular file"):
        verify_directory(bundle.directory, [keys.trusted.public], policy=policy)


def test_attack_08_symlinked_folder_in_directory_is_refused(
    bundle: Bundle, keys: Keys, policy: VerifyPolicy, tmp_path: Path
) -> None:
    elsewhere = tmp_path / "golden-elsewhere"
    (bundle.directory / "golden").rename(elsewhere)
    (bundle.directory / "golden").symlink_to(elsewhere, target_is_directory=True)
    with refuses(MemberError, "golden: not a regular file"):
        verify_directory(bundle.directory, [keys.trusted.public], policy=policy)


def test_attack_08_symlinked_signature_in_directory_is_refused(
    bundle: Bundle, keys: Keys, policy: VerifyPolicy, tmp_path: Path
) -> None:
    elsewhere = tmp_path / "model.sig"
    (bundle.directory / "model.sig").rename(elsewhere)
    (bundle.directory / "model.sig").symlink_to(elsewhere)
    with refuses(MemberError, "model.sig is not a regular file"):
        verify_directory(bundle.directory, [keys.trusted.public], policy=policy)


def test_attack_08_fifo_in_directory_is_refused(bundle: Bundle, keys: Keys, policy: VerifyPolicy) -> None:
    os.mkfifo(bundle.directory / "golden" / "pipe")
    with refuses(MemberError, "golden/pipe: not a regular file"):
        verify_directory(bundle.directory, [keys.trusted.public], policy=policy)


def test_attack_08_existing_destination_is_never_reused(
    bundle: Bundle, keys: Keys, policy: VerifyPolicy, outside: Outside
) -> None:
    """A pre-made destination (perhaps holding a planted symlink) is refused, and left as it was."""
    outside.dest.mkdir()
    (outside.dest / "model.onnx").symlink_to(outside.root / "planted")
    with pytest.raises(FileExistsError):
        verify_ekb(bundle.ekb, [keys.trusted.public], destination=outside.dest, policy=policy)
    assert not (outside.root / "planted").exists()
    assert [p.name for p in outside.dest.iterdir()] == ["model.onnx"]


def test_file_and_folder_of_the_same_name_are_refused(
    keys: Keys, policy: VerifyPolicy, outside: Outside
) -> None:
    """A statement signing both `golden` and `golden/input_0.npy` cannot describe a real folder."""
    files = {**default_files(), "golden": b"a file where a folder goes"}
    manifest = make_manifest(files)
    signature = sign_manifest(manifest, [keys.trusted.private])
    order = ["golden/input_0.npy", "golden", "golden/output_0.npy", "labels.txt", "preprocess.json"]
    data = ekb_of(signature, [(n, files[n]) for n in [*order, "model.onnx"]])
    with refuses(ManifestError, "'golden'"):
        verify_bytes(data, keys, outside, policy)
    outside.clean_failure()


# --- attack 9: decompression and size bombs ------------------------------------------------------------


def test_attack_09_member_larger_than_signed_is_refused_before_reading(
    bundle: Bundle, keys: Keys, policy: VerifyPolicy, outside: Outside
) -> None:
    bomb = raw_member("model.onnx", b"", declared=8 << 30)  # header claims 8 GiB, nothing follows
    members = [raw_member("model.sig", bundle.signature)]
    members += [raw_member(n, d) for n, d in members_except(bundle, "model.onnx")]
    with refuses(ContentError, "model.onnx: archive says 8589934592 bytes, the signature says 4096"):
        verify_bytes(raw_tar(*members, bomb), keys, outside, policy)
    outside.clean_failure()


def test_attack_09_member_padded_past_its_signed_size_is_refused(
    bundle: Bundle, keys: Keys, policy: VerifyPolicy, outside: Outside
) -> None:
    padded = bundle.files["model.onnx"] + b"\0" * (1 << 20)
    with refuses(ContentError, "archive says 1052672 bytes, the signature says 4096"):
        verify_bytes(ekb_of(bundle.signature, replaced(bundle, "model.onnx", padded)), keys, outside, policy)
    outside.clean_failure()


def test_attack_09_pax_size_override_is_refused(
    bundle: Bundle, keys: Keys, policy: VerifyPolicy, outside: Outside
) -> None:
    members = [raw_member("model.sig", bundle.signature)]
    members += [raw_member(n, d) for n, d in members_except(bundle, "model.onnx")]
    members += [pax_member({"size": str(1 << 40)}), raw_member("model.onnx", bundle.files["model.onnx"])]
    with refuses(ContentError, f"archive says {1 << 40} bytes"):
        verify_bytes(raw_tar(*members), keys, outside, policy)
    outside.clean_failure()


def test_attack_09_total_above_the_policy_cap_is_refused(
    make_bundle: BundleMaker, keys: Keys, outside: Outside
) -> None:
    big = make_bundle({**default_files(), "model.onnx": bytes(64 << 10)})
    small_device = VerifyPolicy(hardware_id="rpi4", max_total_bytes=32 << 10)
    with refuses(PolicyError, "above the limit of 32768"):
        verify_ekb(big.ekb, [keys.trusted.public], destination=outside.dest, policy=small_device)
    outside.clean_failure()
    with refuses(PolicyError, "above the limit of 32768"):
        verify_directory(big.directory, [keys.trusted.public], policy=small_device)


def test_attack_09_too_many_members_is_refused(bundle: Bundle, keys: Keys, outside: Outside) -> None:
    few = VerifyPolicy(hardware_id="rpi4", max_members=3)
    with refuses(PolicyError, "bundle declares 5 files, above the limit of 3"):
        verify_ekb(bundle.ekb, [keys.trusted.public], destination=outside.dest, policy=few)
    outside.clean_failure()


def test_attack_09_compressed_archive_is_refused(
    bundle: Bundle, keys: Keys, policy: VerifyPolicy, outside: Outside
) -> None:
    """A .ekb is never decompressed, so a gzip bomb is just a malformed archive."""
    with refuses(FormatError, "not an .ekb archive"):
        verify_bytes(gzip.compress(bundle.ekb_bytes), keys, outside, policy)
    outside.clean_failure()


@pytest.mark.parametrize(
    "header",
    [
        pytest.param(b"x", id="attack-09-pax-header-bomb"),
        pytest.param(b"g", id="attack-09-pax-global-header-bomb"),
        pytest.param(b"L", id="attack-09-gnu-longname-bomb"),
    ],
)
def test_attack_09_metadata_header_bomb_is_refused_after_a_bounded_read(
    header: bytes, keys: Keys, policy: VerifyPolicy, outside: Outside
) -> None:
    """tarfile buffers pax and GNU long-name headers whole: one declaring 64 GiB must not be read."""
    bomb = ustar_header("././@LongLink", 64 << 30, header)
    source = EndlessSource(bomb, cap=64 << 20, filler=b"1 a=b\n")
    with refuses(FormatError, "bytes"):
        verify_ekb(source, [keys.trusted.public], destination=outside.dest, policy=policy)
    assert source.served < 16 << 20
    outside.clean_failure()


def test_attack_09_metadata_header_bomb_after_the_signature_is_refused(
    bundle: Bundle, keys: Keys, policy: VerifyPolicy, outside: Outside
) -> None:
    prefix = raw_member("model.sig", bundle.signature) + ustar_header("././@PaxHeader", 64 << 30, b"x")
    source = EndlessSource(prefix, cap=64 << 20, filler=b"1 a=b\n")
    with refuses(FormatError, "bytes"):
        verify_ekb(source, [keys.trusted.public], destination=outside.dest, policy=policy)
    assert source.served < 16 << 20
    outside.clean_failure()


# --- attack 10: endless or oversized download ----------------------------------------------------------


def test_attack_10_oversized_signature_member_is_refused(
    bundle: Bundle, keys: Keys, policy: VerifyPolicy, outside: Outside
) -> None:
    huge = bundle.signature + b" " * (MAX_SIGNATURE_BYTES + 1 - len(bundle.signature))
    with refuses(FormatError, f"model.sig is {MAX_SIGNATURE_BYTES + 1} bytes, above {MAX_SIGNATURE_BYTES}"):
        verify_bytes(ekb_of(huge, members_except(bundle)), keys, outside, policy)
    outside.clean_failure()


def test_attack_10_signature_header_claiming_gigabytes_is_refused_without_reading(
    keys: Keys, policy: VerifyPolicy, outside: Outside
) -> None:
    source = EndlessSource(ustar_header("model.sig", 4 << 30), cap=8 << 20)
    with refuses(FormatError, f"above {MAX_SIGNATURE_BYTES}"):
        verify_ekb(source, [keys.trusted.public], destination=outside.dest, policy=policy)
    outside.clean_failure()


def test_attack_10_oversized_signature_in_directory_is_refused(
    bundle: Bundle, keys: Keys, policy: VerifyPolicy
) -> None:
    with open(bundle.directory / "model.sig", "ab") as handle:
        handle.write(b" " * MAX_SIGNATURE_BYTES)
    with refuses(FormatError, f"model.sig is larger than {MAX_SIGNATURE_BYTES} bytes"):
        verify_directory(bundle.directory, [keys.trusted.public], policy=policy)


def test_attack_10_oversized_signature_document_is_refused(keys: Keys) -> None:
    with refuses(FormatError, f"exceeds the limit of {MAX_SIGNATURE_BYTES}"):
        verify_signature_document(b" " * (MAX_SIGNATURE_BYTES + 1), [keys.trusted.public])


def endless_member_stream(bundle: Bundle, filler: bytes) -> EndlessSource:
    """A download whose model member never ends: its header has the signed size, the data goes on forever."""
    prefix = raw_member("model.sig", bundle.signature)
    prefix += b"".join(raw_member(n, d) for n, d in members_except(bundle, "model.onnx"))
    prefix += ustar_header("model.onnx", len(bundle.files["model.onnx"]))
    return EndlessSource(prefix, cap=64 << 20, filler=filler)


@pytest.mark.parametrize(
    "filler",
    [pytest.param(b"\0", id="attack-10-endless-zeros"), pytest.param(b"\xa5", id="attack-10-endless-junk")],
)
def test_attack_10_endless_member_stops_at_the_signed_size(
    filler: bytes, bundle: Bundle, keys: Keys, policy: VerifyPolicy, outside: Outside
) -> None:
    source = endless_member_stream(bundle, filler)
    with refuses(ContentError, "model.onnx: SHA-256"):
        verify_ekb(source, [keys.trusted.public], destination=outside.dest, policy=policy)
    assert source.served <= 4 << 20  # the archive so far, plus at most the read-ahead buffers
    outside.clean_failure()


def test_attack_10_endless_tail_after_a_complete_bundle_is_not_read(
    bundle: Bundle, keys: Keys, policy: VerifyPolicy, outside: Outside
) -> None:
    """Junk after the last signed member ends the archive; the verifier does not wait for the stream's end."""
    prefix = bundle.ekb_bytes[: bundle.ekb_bytes.find(bundle.files["model.onnx"]) + 4096]
    source = EndlessSource(prefix, cap=64 << 20, filler=b"\xa5")
    result = verify_ekb(source, [keys.trusted.public], destination=outside.dest, policy=policy)
    assert (outside.dest / "model.onnx").read_bytes() == bundle.files["model.onnx"]
    assert result.path == outside.dest
    assert source.served <= 4 << 20


def test_attack_10_truncated_download_is_refused(
    bundle: Bundle, keys: Keys, policy: VerifyPolicy, outside: Outside
) -> None:
    data = bundle.ekb_bytes
    cut = data.find(bundle.files["model.onnx"]) + 2000
    with refuses(ContentError, "model.onnx: archive ends"):
        verify_bytes(data[:cut], keys, outside, policy)
    outside.clean_failure()


@pytest.mark.parametrize(
    "where",
    [
        pytest.param(lambda b: b.ekb_bytes.find(b.signature) + 100, id="attack-10-truncated-in-signature"),
        pytest.param(lambda b: 300, id="attack-10-truncated-in-first-header"),
        pytest.param(
            lambda b: b.ekb_bytes.find(b.files["labels.txt"]) + 3, id="attack-10-truncated-in-labels"
        ),
    ],
)
def test_attack_10_truncated_download_anywhere_is_a_verification_error(
    where: Callable[[Bundle], int], bundle: Bundle, keys: Keys, policy: VerifyPolicy, outside: Outside
) -> None:
    with pytest.raises((FormatError, ContentError, MemberError)):
        verify_bytes(bundle.ekb_bytes[: where(bundle)], keys, outside, policy)
    outside.clean_failure()


# --- tarfile parser errors that are not TarError -------------------------------------------------------


@pytest.mark.parametrize(
    "records",
    [
        pytest.param({"GNU.sparse.size": "many"}, id="attack-09-pax-bad-sparse-size"),
        pytest.param({"GNU.sparse.realsize": "x"}, id="attack-09-pax-bad-sparse-realsize"),
        pytest.param(
            {"GNU.sparse.map": "1,x", "GNU.sparse.numblocks": "1"}, id="attack-09-pax-bad-sparse-map"
        ),
    ],
)
@pytest.mark.parametrize("position", ["first", "after-signature"])
def test_malformed_pax_sparse_headers_are_format_errors(
    records: dict[str, str], position: str, bundle: Bundle, keys: Keys, policy: VerifyPolicy, outside: Outside
) -> None:
    hostile = pax_member(records) + raw_member("labels.txt", bundle.files["labels.txt"])
    signature = raw_member("model.sig", bundle.signature)
    rest = [raw_member(n, d) for n, d in members_except(bundle, "labels.txt")]
    data = raw_tar(hostile, signature, *rest) if position == "first" else raw_tar(signature, hostile, *rest)
    with pytest.raises(FormatError, match="archive"):
        verify_bytes(data, keys, outside, policy)
    outside.clean_failure()


# --- attack 22: mix and match across releases ----------------------------------------------------------


def next_release(make_bundle: BundleMaker) -> Bundle:
    files = default_files()
    files["preprocess.json"] = files["preprocess.json"].replace(b"0.25", b"0.26")  # same size, other spec
    return make_bundle(files, version="1.0.1", release_counter=6, tag="release6")


def test_attack_22_preprocessing_from_another_release_in_ekb_is_refused(
    bundle: Bundle, make_bundle: BundleMaker, keys: Keys, policy: VerifyPolicy, outside: Outside
) -> None:
    other = next_release(make_bundle)
    assert len(other.files["preprocess.json"]) == len(bundle.files["preprocess.json"])
    mixed = ekb_of(bundle.signature, replaced(bundle, "preprocess.json", other.files["preprocess.json"]))
    with refuses(ContentError, "preprocess.json: SHA-256"):
        verify_bytes(mixed, keys, outside, policy)
    outside.clean_failure()


def test_attack_22_model_from_one_release_with_signature_of_another_is_refused(
    bundle: Bundle, make_bundle: BundleMaker, keys: Keys, policy: VerifyPolicy, outside: Outside
) -> None:
    other = next_release(make_bundle)
    with refuses(ContentError, "preprocess.json: SHA-256"):
        verify_bytes(ekb_of(other.signature, members_except(bundle)), keys, outside, policy)
    outside.clean_failure()


def test_attack_22_preprocessing_from_another_release_in_directory_is_refused(
    bundle: Bundle, make_bundle: BundleMaker, keys: Keys, policy: VerifyPolicy
) -> None:
    other = next_release(make_bundle)
    (bundle.directory / "preprocess.json").write_bytes(other.files["preprocess.json"])
    with refuses(ContentError, "preprocess.json: SHA-256"):
        verify_directory(bundle.directory, [keys.trusted.public], policy=policy)


# --- attack 27 (structural): model.sig must be the first member ----------------------------------------


def test_attack_27_signature_not_first_is_refused(
    bundle: Bundle, keys: Keys, policy: VerifyPolicy, outside: Outside
) -> None:
    members = members_except(bundle)
    data = tar_with([members[0], ("model.sig", bundle.signature), *members[1:]])
    with refuses(MemberError, "the first archive member must be the regular file model.sig"):
        verify_bytes(data, keys, outside, policy)
    outside.clean_failure()


def test_attack_27_signature_last_is_refused(
    bundle: Bundle, keys: Keys, policy: VerifyPolicy, outside: Outside
) -> None:
    data = tar_with([*members_except(bundle), ("model.sig", bundle.signature)])
    with refuses(MemberError, "the first archive member must be the regular file model.sig"):
        verify_bytes(data, keys, outside, policy)
    outside.clean_failure()


def test_attack_27_archive_without_signature_is_refused(
    bundle: Bundle, keys: Keys, policy: VerifyPolicy, outside: Outside
) -> None:
    with refuses(MemberError, "the first archive member must be the regular file model.sig"):
        verify_bytes(tar_with(members_except(bundle)), keys, outside, policy)
    outside.clean_failure()


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"", id="attack-27-empty-download"),
        pytest.param(b"\0" * 10240, id="attack-27-only-end-blocks"),
        pytest.param(b"PK\x03\x04" + b"\0" * 600, id="attack-27-zip-not-tar"),
    ],
)
def test_attack_27_non_archive_is_refused(
    data: bytes, keys: Keys, policy: VerifyPolicy, outside: Outside
) -> None:
    with pytest.raises((FormatError, MemberError)):
        verify_bytes(data, keys, outside, policy)
    outside.clean_failure()
