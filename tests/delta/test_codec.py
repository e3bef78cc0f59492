"""The delta format: encoder and device decoder agree, the base is the slot read in place, limits hold."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest

from device_runtime.delta import (
    MAGIC,
    DeltaError,
    DeltaLimits,
    SlotArchive,
    apply_delta,
    pack_varints,
    unpack_varints,
)
from device_runtime.errors import ContractError
from device_runtime.telemetry_contract import parse_payload
from edgekit.delta import canonical_archive, encode_delta, onnx_tensors
from signing.archive import member_order
from signing.manifest import SIGNATURE_FILE
from signing.verify import unsafe_extract_unverified
from tests.device_runtime.runtime_fixtures import Releases, build_releases


@pytest.fixture(scope="module")
def releases(tmp_path_factory: pytest.TempPathFactory) -> Releases:
    return build_releases(tmp_path_factory.mktemp("releases"))


def _slot(bundle: Path, folder: Path) -> SlotArchive:
    verified = unsafe_extract_unverified(bundle, folder)
    members = [(SIGNATURE_FILE, (folder / SIGNATURE_FILE).stat().st_size)]
    members += [(n, verified.manifest.files[n].size) for n in member_order(verified.manifest)[1:]]
    return SlotArchive(folder, members)


def _apply(delta: bytes, base: SlotArchive, length: int, limits: DeltaLimits | None = None) -> bytes:
    out = io.BytesIO()
    apply_delta(io.BytesIO(delta), base, out, target_length=length, limits=limits)
    return out.getvalue()


def test_the_slot_read_in_place_is_the_published_archive(releases: Releases, tmp_path: Path) -> None:
    bundle = releases.bundles["1.0.0"]
    with _slot(bundle, tmp_path / "slot") as slot:
        assert slot.read(0, slot.length) == canonical_archive(bundle) == bundle.read_bytes()
        assert slot.read(700, 1500) == bundle.read_bytes()[700:2200]  # across a header and a member


@pytest.mark.parametrize("old", ["1.0.0", "1.1.0", "1.2.0"])
def test_a_delta_rebuilds_the_target_exactly(releases: Releases, tmp_path: Path, old: str) -> None:
    target = releases.bundles["1.2.0"].read_bytes()
    delta, stats = encode_delta(canonical_archive(releases.bundles[old]), target)
    assert stats.chosen in ("structured", "generic") and len(delta) < len(target)
    with _slot(releases.bundles[old], tmp_path / "slot") as slot:
        assert _apply(delta, slot, len(target)) == target


def test_onnx_initializers_are_found_where_the_bytes_are(releases: Releases) -> None:
    model = (releases.folder / "tiny-1.0.0.onnx").read_bytes()
    ((name, width, offset, length),) = onnx_tensors(model)
    from tests.device_runtime.runtime_fixtures import weights

    assert (name, width, length) == ("W", 4, 8 * 4 * 4)
    assert np.array_equal(
        np.frombuffer(model[offset : offset + length], "<f4").reshape(8, 4), weights("1.0.0")
    )
    assert onnx_tensors(b"not a model at all") == []


def _broken(delta: bytes) -> dict[str, bytes]:
    header_end = unpack_varints(delta, 3, len(MAGIC))[1]
    return {
        "bad-magic": b"EKDELTA0" + delta[8:],
        "truncated": delta[:-3],
        "trailing-bytes": delta + b"\0",
        "unknown-op": delta[:header_end] + b"Z" + delta[header_end + 1 :],
        "copy-beyond-base": delta[:header_end] + b"C" + pack_varints(1 << 40, 16) + delta[header_end:],
    }


@pytest.mark.parametrize(
    "case", ["bad-magic", "truncated", "trailing-bytes", "unknown-op", "copy-beyond-base"]
)
def test_malformed_deltas_are_refused_with_a_reason(releases: Releases, tmp_path: Path, case: str) -> None:
    target = releases.bundles["1.1.0"].read_bytes()
    delta, _ = encode_delta(canonical_archive(releases.bundles["1.0.0"]), target)
    with _slot(releases.bundles["1.0.0"], tmp_path / "slot") as slot, pytest.raises(DeltaError) as caught:
        _apply(_broken(delta)[case], slot, len(target))
    assert caught.value.reason == "delta-apply"


def test_the_device_limits_bound_what_a_delta_may_ask(releases: Releases, tmp_path: Path) -> None:
    target = releases.bundles["1.1.0"].read_bytes()
    delta, _ = encode_delta(canonical_archive(releases.bundles["1.0.0"]), target)
    with _slot(releases.bundles["1.0.0"], tmp_path / "slot") as slot:
        with pytest.raises(DeltaError, match="above the limit"):
            _apply(delta, slot, len(target), DeltaLimits(max_ref_bytes=64, max_chunk_bytes=64))
        with pytest.raises(DeltaError, match="the target is"):
            _apply(delta, slot, len(target) - 1)  # not the length TUF pins: refused before any output


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param({"method": "delta"}, id="delta-without-base"),
        pytest.param(
            {"method": "delta", "base_bundle_id": "a" * 64, "fallback": "no-delta"}, id="delta-fallback"
        ),
        pytest.param({"method": "patch"}, id="unknown-method"),
        pytest.param({"method": "full", "bytes": -1}, id="negative-bytes"),
        pytest.param({"method": "full", "full_bytes": 0}, id="empty-bundle"),
        pytest.param({"method": "full", "fallback": "no delta!"}, id="fallback-not-a-code"),
    ],
)
def test_download_events_that_break_the_contract_are_refused(payload: dict[str, object]) -> None:
    good = {"bundle_id": "b" * 64, "method": "full", "bytes": 10, "full_bytes": 10}
    parse_payload("download", {**good, "fallback": "delta-hash", "base_bundle_id": "a" * 64})
    with pytest.raises(ContractError):
        parse_payload("download", {**good, **payload})


def test_a_delta_cannot_make_the_device_read_the_base_over_and_over(
    releases: Releases, tmp_path: Path
) -> None:
    from edgekit.delta import _ref

    base = canonical_archive(releases.bundles["1.0.0"])
    op = _ref(b"x", base, 0, len(base))  # one output byte for a whole read of the base

    def delta(count: int) -> bytes:
        return MAGIC + pack_varints(len(base), count, count) + op * count

    limits = DeltaLimits(max_ref_bytes=len(base), max_read_factor=1)
    with _slot(releases.bundles["1.0.0"], tmp_path / "slot") as slot:
        assert _apply(delta(1), slot, 1, limits) == b"x"
        with pytest.raises(DeltaError, match="more of the base"):
            _apply(delta(3), slot, 3, limits)
