"""`python -m device_runtime` on a device: real bundles and subprocesses, exit codes, one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.device_runtime.test_uploader import RecordingServer

ROOT = Path(__file__).resolve().parents[2]
CREATED = "2026-11-23T00:00:00Z"
WEIGHTS = np.random.default_rng(0).standard_normal((8, 4)).astype(np.float32)


def tiny_onnx(path: Path, weights: np.ndarray) -> Path:
    """x float32 [N, 8] -> MatMul -> logits [N, 4]."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["logits"])],
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 4])],
        initializer=[numpy_helper.from_array(weights, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


@pytest.fixture(scope="module")
def release(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Keys, and two signed releases (1.0.0 and 1.1.0) of the tiny model."""
    from edgekit.bundle_build import BundleRequest, build_bundle
    from signing.keys import generate_keypair

    folder = tmp_path_factory.mktemp("release")
    key, pub = generate_keypair(folder / "keys", name="release")
    _, other_pub = generate_keypair(folder / "keys", name="other")
    out: dict[str, Path] = {"key": key, "pub": pub, "other_pub": other_pub}
    for version, counter, weights in (("1.0.0", 1, WEIGHTS), ("1.1.0", 2, -WEIGHTS)):
        model = tiny_onnx(folder / f"tiny-{version}.onnx", weights)
        build_bundle(
            BundleRequest(
                model=model,
                output=folder / f"tiny-{version}.ekb",
                name="tiny",
                version=version,
                keys=[key],
                release_counter=counter,
                created=CREATED,
            )
        )
        out[version] = folder / f"tiny-{version}.ekb"
    return out


def cli(
    store: Path, pub: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    command = [
        sys.executable,
        "-m",
        "device_runtime",
        "--store",
        str(store),
        "--key",
        str(pub),
        "--device-id",
        "dev-1",
        "--hardware-id",
        "hw-1",
        *args,
    ]
    return subprocess.run(
        command,
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
        env={**os.environ, **(env or {})},
    )


def ok(result: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def as_json(result: subprocess.CompletedProcess[str]) -> Any:
    return json.loads(ok(result).stdout)


def one_line_error(result: subprocess.CompletedProcess[str], code: int = 1) -> str:
    assert result.returncode == code, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def flip(data: bytes, at: int) -> bytes:
    return data[:at] + bytes([data[at] ^ 0x01]) + data[at + 1 :]


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path / "store"


def test_install_status_predict_revert(release: dict[str, Path], store: Path, tmp_path: Path) -> None:
    pub = release["pub"]
    assert "active: none" in ok(cli(store, pub, "status")).stdout
    assert as_json(cli(store, pub, "status", "--json"))["active"] is None

    installed = ok(cli(store, pub, "install", str(release["1.0.0"]))).stdout
    assert "installed tiny 1.0.0" in installed
    again = as_json(cli(store, pub, "install", str(release["1.0.0"]), "--json"))
    assert again["already_active"] is True and again["version"] == "1.0.0"

    status = as_json(cli(store, pub, "status", "--json"))
    assert status["active"]["version"] == "1.0.0" and status["candidate"] is True
    assert status["previous"] is None and status["engine"] == "onnxruntime"

    x = np.linspace(-1, 1, 8, dtype=np.float32).reshape(1, 8)
    np.save(tmp_path / "x.npy", x)
    predicted = as_json(cli(store, pub, "predict", str(tmp_path / "x.npy"), "--json"))
    logits = x @ WEIGHTS
    assert predicted["version"] == "1.0.0"
    assert predicted["top_k"][0][0] == int(logits.argmax())
    np.testing.assert_allclose(predicted["outputs"]["logits"]["values"], logits, rtol=1e-5)
    assert "tiny 1.0.0" in ok(cli(store, pub, "predict", str(tmp_path / "x.npy"))).stdout

    nothing = one_line_error(cli(store, pub, "revert"))
    assert "no previous model" in nothing

    ok(cli(store, pub, "install", str(release["1.1.0"])))
    status = as_json(cli(store, pub, "status", "--json"))
    assert (status["active"]["version"], status["previous"]["version"]) == ("1.1.0", "1.0.0")
    second = as_json(cli(store, pub, "predict", str(tmp_path / "x.npy"), "--json"))
    assert second["top_k"][0][0] == int((-logits).argmax())

    reverted = as_json(cli(store, pub, "revert", "--json"))
    assert reverted["active"]["version"] == "1.0.0"
    status = as_json(cli(store, pub, "status", "--json"))
    assert status["active"]["version"] == "1.0.0" and len(status["bad_releases"]) == 1
    assert status["history"][-1]["event"] == "reverted"
    # The reverted release is refused from now on, with a reason on one line.
    refused = one_line_error(cli(store, pub, "install", str(release["1.1.0"])))
    assert "reverted on this device before" in refused


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda data: b"not a bundle" * 100, id="junk"),
        pytest.param(lambda data: data[: len(data) // 2], id="truncated"),
        pytest.param(lambda data: flip(data, data.index(WEIGHTS.tobytes())), id="flipped-weight-byte"),
        pytest.param(None, id="missing-file"),
    ],
)
def test_a_bad_bundle_exits_1_with_one_line(
    release: dict[str, Path], store: Path, tmp_path: Path, damage: Callable[[bytes], bytes] | None
) -> None:
    bad = tmp_path / "bad.ekb"
    if damage is not None:
        bad.write_bytes(damage(release["1.0.0"].read_bytes()))
    line = one_line_error(cli(store, release["pub"], "install", str(bad)))
    assert line.startswith("python -m device_runtime: error: ")
    assert as_json(cli(store, release["pub"], "status", "--json"))["active"] is None


def test_a_bundle_signed_by_an_unpinned_key_is_refused(release: dict[str, Path], store: Path) -> None:
    line = one_line_error(cli(store, release["other_pub"], "install", str(release["1.0.0"])))
    assert "signature" in line.lower() or "key" in line.lower()


def test_predict_errors_are_one_line(release: dict[str, Path], store: Path, tmp_path: Path) -> None:
    pub = release["pub"]
    np.save(tmp_path / "x.npy", np.zeros((1, 8), np.float32))
    assert "no verified model" in one_line_error(cli(store, pub, "predict", str(tmp_path / "x.npy")))
    ok(cli(store, pub, "install", str(release["1.0.0"])))
    np.save(tmp_path / "wrong.npy", np.zeros((1, 5), np.float32))
    assert "shape" in one_line_error(cli(store, pub, "predict", str(tmp_path / "wrong.npy")))
    np.save(tmp_path / "ints.npy", np.zeros((1, 8), np.int64))
    assert "dtype" in one_line_error(cli(store, pub, "predict", str(tmp_path / "ints.npy")))
    (tmp_path / "pickle.npy").write_bytes(b"\x93NUMPY garbage")
    one_line_error(cli(store, pub, "predict", str(tmp_path / "pickle.npy")))
    assert "no such file" in one_line_error(cli(store, pub, "predict", str(tmp_path / "absent.png")))
    (tmp_path / "photo.png").write_bytes(b"\x89PNG")
    assert ".npy" in one_line_error(cli(store, pub, "predict", str(tmp_path / "photo.png")))


def test_usage_errors_exit_2(release: dict[str, Path], store: Path) -> None:
    line = one_line_error(cli(store, release["pub"]), code=2)
    assert "--help" in line
    one_line_error(cli(store, release["pub"], "upload"), code=2)  # --endpoint is required
    one_line_error(cli(store, release["pub"], "upload", "--endpoint", "http://fleet.example.com/t"), code=2)
    one_line_error(
        cli(store, release["pub"], "upload", "--endpoint", "https://x.example/t", "--token-env", "EK_NOPE"),
        code=2,
    )


def test_a_missing_key_file_exits_1(store: Path, tmp_path: Path) -> None:
    assert "public key" in one_line_error(cli(store, tmp_path / "absent.pub", "status"))


def test_upload_sends_the_queue_with_the_token(release: dict[str, Path], store: Path) -> None:
    pub = release["pub"]
    ok(cli(store, pub, "install", str(release["1.0.0"])))  # queues an "install" event
    server = RecordingServer()
    try:
        summary = as_json(
            cli(
                store,
                pub,
                "upload",
                "--endpoint",
                server.url,
                "--token-env",
                "EK_TOKEN",
                "--json",
                env={"EK_TOKEN": "device-token"},
            )
        )
        assert summary["acknowledged"] >= 1 and summary["queued"] == 0 and summary["error"] is None
        assert server.requests[0]["headers"]["Authorization"] == "Bearer device-token"
        assert any(e["kind"] == "install" for b in server.batches for e in b["events"])
        assert server.batches[0]["device_id"] == "dev-1"
        server.responder = lambda batch: (503, b"maintenance")
        np.save(store.parent / "x.npy", np.zeros((1, 8), np.float32))
        ok(cli(store, pub, "predict", str(store.parent / "x.npy")))  # queues an inference aggregate
        failed = cli(store, pub, "upload", "--endpoint", server.url, "--json")
        assert failed.returncode == 1 and "503" in one_line_error(failed)
        assert json.loads(failed.stdout)["queued"] >= 1
    finally:
        server.close()
