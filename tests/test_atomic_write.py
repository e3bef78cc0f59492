"""`signing.atomic`: the one atomic, durable write the device, the server and the converters share."""

from __future__ import annotations

import os
import stat
import threading
from pathlib import Path

import pytest

from signing.atomic import atomic_output, atomic_write


def _umask() -> int:
    # Read in a child-free way for the test only (the library never changes the umask).
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def test_atomic_write_replaces_the_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    path.write_bytes(b"old")
    atomic_write(path, b"new")
    assert path.read_bytes() == b"new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]


def test_mode_is_applied_and_the_default_follows_the_umask(tmp_path: Path) -> None:
    atomic_write(tmp_path / "private", b"x", mode=0o600)
    assert stat.S_IMODE((tmp_path / "private").stat().st_mode) == 0o600
    atomic_write(tmp_path / "public", b"x")
    assert stat.S_IMODE((tmp_path / "public").stat().st_mode) == 0o666 & ~_umask()


def test_a_failed_write_leaves_the_destination_and_no_temporary(tmp_path: Path) -> None:
    path = tmp_path / "model.onnx"
    path.write_bytes(b"good")
    with pytest.raises(TypeError):
        atomic_write(path, "text is not bytes")  # type: ignore[arg-type]
    with pytest.raises(RuntimeError), atomic_output(path) as temp:
        assert temp.parent == tmp_path and temp.suffix == ".onnx"  # writers that check the suffix
        temp.write_bytes(b"half")
        raise RuntimeError("the exporter failed")
    assert path.read_bytes() == b"good"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]


def test_atomic_output_renames_on_success_and_creates_the_folder(tmp_path: Path) -> None:
    path = tmp_path / "out" / "report.html"
    with atomic_output(path) as temp:
        temp.write_text("<p>ok</p>")
        assert not path.exists()
    assert path.read_text() == "<p>ok</p>"
    assert sorted(p.name for p in path.parent.iterdir()) == ["report.html"]


def test_concurrent_writers_of_one_file_never_mix_their_bytes(tmp_path: Path) -> None:
    path = tmp_path / "plan.json"
    payloads = [bytes([65 + i]) * 200_000 for i in range(4)]
    errors: list[BaseException] = []

    def writer(data: bytes) -> None:
        try:
            for _ in range(25):
                atomic_write(path, data)
                content = path.read_bytes()
                assert content in payloads  # whole, from one writer
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=writer, args=(p,)) for p in payloads]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert path.read_bytes() in payloads
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plan.json"]
