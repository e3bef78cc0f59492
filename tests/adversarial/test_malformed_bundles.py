"""Finding 11: every malformed signed content is a typed `InstallError` before activation.

The attacker holds the release key (a compromised or careless publisher): each bundle
here is a genuine release with one file changed and then signed with the real release key, so signature
and digests verify and the device must refuse the contents on their own merits: labels that are not UTF-8
or do not match the model's class count (3 labels for a 4-class output must fail at install, not in
predict), a `golden.json` with wrong types or thresholds that would switch the self-test off, `.npy` files
whose header claims 2 TiB. Every refusal has a reason code, is recorded in telemetry, leaves no
half-installed slot, and the model that was serving keeps serving. Through the TUF updater the same bundle
is an `Outcome` ("refused"), never an exception.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from device_runtime.errors import InstallError
from device_runtime.runtime import Runtime
from tests.adversarial._device import Files, device_fixtures, install_refusals, npy_header, resign
from tests.device_runtime.runtime_fixtures import Releases, config, expected_logits, reset_store, sample

releases, committed_template = device_fixtures()

GOLDEN = "golden/golden.json"
OUTPUT = "golden/output_0.npy"
CLASSIFIER_SPEC_OUTPUTS = [{"name": "logits", "kind": "classification", "top_k": 3}]


def golden(change: Callable[[dict[str, Any]], None]) -> Callable[[Files], None]:
    def mutate(files: Files) -> None:
        document = json.loads(files[GOLDEN])
        change(document)
        files[GOLDEN] = json.dumps(document).encode()

    return mutate


def tolerance(**values: Any) -> Callable[[Files], None]:
    return golden(lambda d: d["tolerance"].update(values))


def labels(data: bytes, *, classifier_spec: bool = False) -> Callable[[Files], None]:
    def mutate(files: Files) -> None:
        files["labels.txt"] = data
        if classifier_spec:
            spec = json.loads(files["preprocess.json"])
            spec["outputs"] = CLASSIFIER_SPEC_OUTPUTS
            files["preprocess.json"] = json.dumps(spec).encode()

    return mutate


def replace_file(name: str, data: bytes) -> Callable[[Files], None]:
    def mutate(files: Files) -> None:
        files[name] = data

    return mutate


def raw_golden(old: bytes, new: bytes) -> Callable[[Files], None]:
    def mutate(files: Files) -> None:
        assert old in files[GOLDEN]
        files[GOLDEN] = files[GOLDEN].replace(old, new)

    return mutate


TWO_TIB = npy_header("<f4", (8, 1 << 36))  # 8 x 2^36 float32 = 2 TiB of data claimed, none present

CASES: dict[str, tuple[Callable[[Files], None], str]] = {
    # labels
    "3-labels-for-4-outputs": (labels(b"cat\ndog\nbird\n"), "labels"),
    "3-labels-for-a-4-class-classifier": (labels(b"cat\ndog\nbird\n", classifier_spec=True), "labels"),
    "5-labels-for-4-outputs": (labels(b"cat\ndog\nbird\nfish\nemu\n"), "labels"),
    "labels-not-utf8": (labels(b"cat\n\xff\xfedog\nbird\nfish\n"), "labels"),
    "labels-with-an-empty-line": (labels(b"cat\n\ndog\nbird\n"), "labels"),
    "labels-with-nul": (labels(b"cat\ndo\x00g\nbird\nfish\n"), "labels"),
    "labels-empty": (labels(b""), "labels"),
    # golden.json types and structure
    "golden-is-a-list": (replace_file(GOLDEN, b"[]"), "golden"),
    "golden-not-utf8": (replace_file(GOLDEN, b'{"schema": "\xff"}'), "golden"),
    "golden-duplicate-keys": (raw_golden(b'"samples": 8', b'"samples": 8, "samples": 1'), "golden"),
    "golden-samples-a-string": (golden(lambda d: d.update(samples="8")), "golden"),
    "golden-samples-true": (golden(lambda d: d.update(samples=True)), "golden"),
    "golden-outputs-a-list": (golden(lambda d: d.update(outputs=["golden/output_0.npy"])), "golden"),
    "golden-no-outputs": (golden(lambda d: d.update(outputs={})), "golden"),
    "golden-file-a-number": (golden(lambda d: d["inputs"].update(x=5)), "golden"),
    "golden-tolerance-a-list": (golden(lambda d: d.update(tolerance=[30])), "golden"),
    "golden-tolerance-unknown-key": (tolerance(max_sqnr_db=1.0), "golden"),
    # thresholds that would switch the self-test off, or are not numbers
    "min-sqnr-minus-1e999": (raw_golden(b'"min_sqnr_db": 30.0', b'"min_sqnr_db": -1e999'), "golden"),
    "min-sqnr-nan": (raw_golden(b'"min_sqnr_db": 30.0', b'"min_sqnr_db": NaN'), "golden"),
    "min-sqnr-a-string": (tolerance(min_sqnr_db="30"), "golden"),
    "min-sqnr-true": (tolerance(min_sqnr_db=True), "golden"),
    "min-sqnr-negative": (tolerance(min_sqnr_db=-50.0), "golden"),
    "min-sqnr-zero-and-agreement-zero": (tolerance(min_sqnr_db=0.0, min_agreement=0.0), "golden"),
    "min-sqnr-1e308": (tolerance(min_sqnr_db=1e308), "golden"),
    "min-agreement-1.5": (tolerance(min_agreement=1.5), "golden"),
    "min-agreement-negative": (tolerance(min_agreement=-1.0), "golden"),
    # .npy files
    "npy-header-claims-2-tib": (replace_file(OUTPUT, TWO_TIB), "golden"),
    "npy-object-dtype": (replace_file(OUTPUT, npy_header("|O", (8, 4)) + b"\0" * 256), "golden"),
    "npy-truncated-data": (replace_file(OUTPUT, npy_header("<f4", (8, 4)) + b"\0" * 100), "golden"),
    "npy-bad-magic": (replace_file(OUTPUT, b"\x93NUMPZ" + b"\0" * 200), "golden"),
    "npy-huge-header-length": (
        replace_file(OUTPUT, b"\x93NUMPY\x02\x00" + (1 << 31).to_bytes(4, "little")),
        "golden",
    ),
    "npy-structured-dtype": (
        replace_file(OUTPUT, npy_header("[('a', '<f4')]".replace("'", '"'), (8, 4)) + b"\0" * 128),
        "golden",
    ),
    # the preprocessing spec (attack 27 family)
    "spec-inputs-a-string": (
        replace_file("preprocess.json", b'{"schema": "edgekit.preprocess/v1", "inputs": "x"}'),
        "spec",
    ),
    "spec-not-utf8": (replace_file("preprocess.json", b"\xff\xfe"), "spec"),
}


@pytest.fixture
def runtime(tmp_path: Path, releases: Releases, committed_template: Path) -> Any:
    rt = Runtime(config(reset_store(committed_template, tmp_path / "store"), releases))
    yield rt
    rt.close()


def serves(rt: Runtime, version: str) -> None:
    x = sample(3, seed=5)
    result = rt.predict(x)
    assert result.version == version
    np.testing.assert_allclose(result.outputs["logits"], expected_logits(version, x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("case", sorted(CASES))
def test_malformed_signed_contents_are_refused_at_install_and_the_old_model_keeps_serving(
    tmp_path: Path, releases: Releases, runtime: Runtime, case: str
) -> None:
    mutate, reason = CASES[case]
    hostile = resign(releases, tmp_path, mutate)
    with pytest.raises(InstallError) as refused:
        runtime.install(hostile)
    assert type(refused.value) is InstallError
    assert refused.value.reason == reason, refused.value
    events = install_refusals(runtime)
    assert [e["reason"] for e in events] == [reason], events
    status = runtime.status()
    assert status["active"]["version"] == "1.0.0" and status["trial"] is None
    assert not list((tmp_path / "store" / "slots").glob(".incoming-*"))
    for _ in range(4):  # would have committed a bad trial; now it never starts
        serves(runtime, "1.0.0")


def test_the_genuine_release_still_installs_after_the_hostile_ones(
    tmp_path: Path, releases: Releases, runtime: Runtime
) -> None:
    """Refusals leave nothing behind that blocks the next, well-formed release (re-signed untouched)."""
    with pytest.raises(InstallError):
        runtime.install(resign(releases, tmp_path / "bad", labels(b"cat\ndog\nbird\n")))
    genuine = resign(releases, tmp_path / "good", lambda files: None)
    result = runtime.install(genuine)
    assert result.version == "1.3.0"
    for _ in range(3):
        assert runtime.predict(sample()).top_k  # labels fit: predict names classes
    assert runtime.status()["trial"] is None  # committed


def test_a_hostile_bundle_through_tuf_is_a_refused_outcome(
    tmp_path: Path, releases: Releases, runtime: Runtime
) -> None:
    """The updater end to end: real TUF repository on loopback, real download, real install refusal."""
    from device_runtime.updater import Updater, UpdaterConfig
    from edgekit.server.tuf_repo import TufRepository
    from tests.server.tuf_fixtures import RepoServer, make_plan

    hostile = resign(releases, tmp_path / "hostile", labels(b"cat\ndog\nbird\n"))
    offline = tmp_path / "offline"
    repo = TufRepository.init(tmp_path / "data", offline_keys_dir=offline, release_keys=[releases.public_key])
    repo.add_bundle(releases.bundles["1.0.0"], offline_keys_dir=offline)
    published = repo.add_bundle(hostile, offline_keys_dir=offline)
    plan = make_plan("complete", stage_index=3, bundle_ids=releases.bundle_ids)
    plan["target"] = {
        "version": "1.3.0",
        "release_counter": 4,
        "target_path": "bundles/tiny/tiny-1.3.0.ekb",
        "bundle_id": published.custom["bundle_id"],
    }
    repo.set_plan("tiny", "stable", plan)
    server = RepoServer(repo.data_dir / "repo")
    updater = Updater(
        UpdaterConfig(
            metadata_url=server.metadata_url,
            targets_url=server.targets_url,
            metadata_dir=tmp_path / "device" / "tuf",
            download_dir=tmp_path / "device" / "downloads",
            model="tiny",
            channel="stable",
            device_id="device-1",
            bootstrap_root=(repo.metadata_dir / "1.root.json").read_bytes(),
            timeout_s=10.0,
            min_speed_bytes_per_s=1,
        )
    )
    try:
        outcome = updater.update(runtime)
    finally:
        updater.close()
        server.close()
    assert (outcome.status, outcome.reason) == ("refused", "install-labels"), outcome
    assert [e["reason"] for e in install_refusals(runtime)] == ["labels"]
    serves(runtime, "1.0.0")
