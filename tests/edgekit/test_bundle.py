"""Bundles end to end: build, verify, inspect, co-sign, refuse bad inputs, interoperate with model_signing."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from device_runtime.engines import load_engine
from device_runtime.golden import check_golden
from edgekit.cli import cli
from signing.keys import load_public_key
from signing.verify import verify_ekb

CREATED = "2026-11-23T00:00:00Z"


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("keys")
    for name in ("release", "second", "attacker"):
        result = CliRunner().invoke(cli, ["keygen", "-o", str(folder), "--name", name])
        assert result.exit_code == 0, result.output
    return folder


@pytest.fixture(scope="module")
def labels(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("labels") / "labels.txt"
    path.write_text("".join(f"digit {i}\n" for i in range(10)), encoding="utf-8")
    return path


def run(*args: str) -> object:
    return CliRunner().invoke(cli, list(args))


def build(model: Path, out: Path, keys: Path, *extra: str) -> object:
    return run(
        "bundle",
        str(model),
        "-o",
        str(out),
        "--name",
        "digits",
        "--version",
        "1.0.0",
        "--key",
        str(keys / "release.key"),
        "--created",
        CREATED,
        *extra,
    )


@pytest.fixture(scope="module")
def ekb(
    tmp_path_factory: pytest.TempPathFactory,
    digits_onnx: Path,
    keys: Path,
    labels: Path,
    data_files: dict[str, Path],
) -> Path:
    out = tmp_path_factory.mktemp("bundle") / "digits-1.0.0.ekb"
    result = build(
        digits_onnx,
        out,
        keys,
        "--labels",
        str(labels),
        "--golden",
        str(data_files["eval"]),
        "--hardware",
        "rpi4",
        "--release-counter",
        "7",
    )
    assert result.exit_code == 0, result.output
    return out


def test_bundle_verifies_and_extracts_with_the_device_verifier(ekb: Path, keys: Path, tmp_path: Path) -> None:
    verified = verify_ekb(ekb, [load_public_key(keys / "release.pub")], destination=tmp_path / "slot")
    manifest = verified.manifest
    assert (manifest.name, manifest.version, manifest.release_counter) == ("digits", "1.0.0", 7)
    assert manifest.runtime.engine == "onnxruntime" and manifest.runtime.opset == 17
    roles = {e.role for e in manifest.files.values()}
    assert roles == {"model", "preprocess", "labels", "golden", "metadata"}
    assert manifest.files["health.json"].role == "metadata"  # the reference health profile (--golden)
    assert (tmp_path / "slot" / "model.onnx").stat().st_mode & 0o777 == 0o600


def test_health_samples_sizes_the_signed_profile_and_zero_leaves_it_out(
    digits_onnx: Path, keys: Path, data_files: dict[str, Path], tmp_path: Path
) -> None:
    sized = build(
        digits_onnx,
        tmp_path / "a.ekb",
        keys,
        "--golden",
        str(data_files["eval"]),
        "--health-samples",
        "16",
        "--json",
    )
    assert sized.exit_code == 0, sized.output
    summary = json.loads(sized.output)
    assert summary["health"]["samples"] == 16 and summary["health"]["inputs"]
    with tarfile.open(tmp_path / "a.ekb") as archive:
        profile = json.loads(archive.extractfile("health.json").read())  # type: ignore[union-attr]
    assert profile["samples"] == 16
    none = build(
        digits_onnx,
        tmp_path / "b.ekb",
        keys,
        "--golden",
        str(data_files["eval"]),
        "--health-samples",
        "0",
        "--json",
    )
    assert none.exit_code == 0, none.output
    assert json.loads(none.output)["health"] is None
    with tarfile.open(tmp_path / "b.ekb") as archive:
        assert "health.json" not in archive.getnames()


def test_golden_vectors_pass_on_the_device_engine_and_catch_a_changed_model(
    ekb: Path, keys: Path, tmp_path: Path
) -> None:
    slot = tmp_path / "slot"
    verify_ekb(ekb, [load_public_key(keys / "release.pub")], destination=slot)
    engine = load_engine(slot / "model.onnx")
    assert check_golden(slot, engine.run).passed
    broken = check_golden(slot, lambda feeds: {k: v * 0.5 for k, v in engine.run(feeds).items()})
    assert not broken.passed and "SQNR" in broken.details[0]


def test_the_same_inputs_give_the_same_bytes(
    digits_onnx: Path, keys: Path, labels: Path, tmp_path: Path
) -> None:
    a, b = tmp_path / "a.ekb", tmp_path / "b.ekb"
    assert build(digits_onnx, a, keys, "--labels", str(labels)).exit_code == 0
    assert build(digits_onnx, b, keys, "--labels", str(labels)).exit_code == 0
    assert a.read_bytes() == b.read_bytes()
    with tarfile.open(a) as archive:
        members = archive.getmembers()
    assert members[0].name == "model.sig" and members[-1].name == "model.onnx"
    assert all(m.mtime == 0 and m.uid == 0 and m.mode == 0o644 and m.isreg() for m in members)


def test_verify_and_inspect_commands(ekb: Path, keys: Path) -> None:
    ok = run("verify", str(ekb), "--pubkey", str(keys / "release.pub"), "--hardware-id", "rpi4", "--json")
    assert ok.exit_code == 0, ok.output
    assert json.loads(ok.output)["verified"] is True
    wrong_key = run("verify", str(ekb), "--pubkey", str(keys / "attacker.pub"))
    assert wrong_key.exit_code == 1 and "not signed by a trusted release key" in wrong_key.output
    other_hardware = run("verify", str(ekb), "--pubkey", str(keys / "release.pub"), "--hardware-id", "jetson")
    assert other_hardware.exit_code == 1 and "built for hardware" in other_hardware.output
    rollback = run("verify", str(ekb), "--pubkey", str(keys / "release.pub"), "--release-floor", "8")
    assert rollback.exit_code == 1 and "rollback" in rollback.output
    shown = run("inspect", str(ekb), "--json")
    document = json.loads(shown.output)
    assert document["verified"] is False and document["signatures"] == 1
    assert {f["name"] for f in document["files"]} >= {"model.onnx", "labels.txt", "golden/golden.json"}


def test_inspect_says_a_paired_scores_output_is_judged_with_its_detection_output(
    digits_onnx: Path, keys: Path, tmp_path: Path
) -> None:
    # A detector's parity report as `edgekit parity` writes it: the logits output's SQNR is below the 20 dB
    # floor and the report passed, because the detection output judges it; inspect says so.
    row = {"agreement": None, "accuracy_drop_pp": None}
    report = {
        "schema": "edgekit.parity/v1",
        "passed": True,
        "samples": 7,
        "outputs": [
            {**row, "name": "regressors", "sqnr_db": 23.0},
            {**row, "name": "classificators", "sqnr_db": 12.4, "judged_with": "regressors"},
        ],
    }
    (tmp_path / "parity.json").write_text(json.dumps(report))
    out = tmp_path / "face.ekb"
    assert build(digits_onnx, out, keys, "--parity", str(tmp_path / "parity.json")).exit_code == 0
    shown = run("inspect", str(out))
    assert "parity regressors: agreement n/a, SQNR 23.0 dB (7 samples, PASS)\n" in shown.output
    assert (
        "parity classificators: agreement n/a, SQNR 12.4 dB (7 samples, PASS); judged with its detection "
        "output 'regressors', not by its own SQNR" in shown.output
    )
    outputs = json.loads(run("inspect", str(out), "--json").output)["parity"]["outputs"]
    assert "judged_with" not in outputs[0] and outputs[1]["judged_with"] == "regressors"


def test_co_signing_reaches_a_two_of_two_threshold(ekb: Path, keys: Path, tmp_path: Path) -> None:
    two = tmp_path / "two.ekb"
    assert run("sign", str(ekb), "--key", str(keys / "second.key"), "-o", str(two)).exit_code == 0
    pubkeys = ["--pubkey", str(keys / "release.pub"), "--pubkey", str(keys / "second.pub")]
    assert run("verify", str(two), *pubkeys, "--threshold", "2").exit_code == 0
    one = run("verify", str(ekb), *pubkeys, "--threshold", "2")
    assert one.exit_code == 1 and "1 of the required 2" in one.output
    same_key_twice = run(
        "verify",
        str(two),
        "--pubkey",
        str(keys / "release.pub"),
        "--pubkey",
        str(keys / "release.pub"),
        "--threshold",
        "2",
    )
    assert same_key_twice.exit_code == 1


def test_keygen_refuses_to_overwrite_and_protects_the_private_key(
    keys: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert (keys / "release.key").stat().st_mode & 0o777 == 0o600
    again = run("keygen", "-o", str(keys), "--name", "release")
    assert again.exit_code == 1 and "refusing to overwrite" in again.output
    monkeypatch.setenv("EDGEKIT_TEST_PASSPHRASE", "correct horse")
    assert (
        run(
            "keygen", "-o", str(tmp_path), "--name", "locked", "--passphrase-env", "EDGEKIT_TEST_PASSPHRASE"
        ).exit_code
        == 0
    )
    assert b"ENCRYPTED" in (tmp_path / "locked.key").read_bytes()
    monkeypatch.setenv("EDGEKIT_TEST_PASSPHRASE", "wrong")
    from signing.errors import KeyFileError
    from signing.keys import load_private_key

    with pytest.raises(KeyFileError, match="passphrase"):
        load_private_key(tmp_path / "locked.key", b"wrong")


def _labels(tmp_path: Path, count: int) -> Path:
    path = tmp_path / "labels.txt"
    path.write_text("".join(f"l{i}\n" for i in range(count)), encoding="utf-8")
    return path


def _wrong_spec(tmp_path: Path) -> Path:
    path = tmp_path / "spec.json"
    path.write_text(
        json.dumps(
            {
                "schema": "edgekit.preprocess/v1",
                "inputs": [
                    {"name": "pixels", "kind": "tensor", "dtype": "float32", "shape": [None, 8, 8, 1]}
                ],
            }
        )
    )
    return path


def _failed_parity(tmp_path: Path) -> Path:
    path = tmp_path / "parity.json"
    path.write_text(json.dumps({"schema": "edgekit.parity/v1", "passed": False, "outputs": []}))
    return path


@pytest.mark.parametrize(
    ("make_args", "fragment"),
    [
        pytest.param(lambda t: ["--labels", str(_labels(t, 7))], "7 labels", id="labels-count"),
        pytest.param(
            lambda t: ["--preprocess", str(_wrong_spec(t))], "does not match the model", id="spec-mismatch"
        ),
        pytest.param(
            lambda t: ["--parity", str(_failed_parity(t))], "did not pass", id="failed-parity-report"
        ),
        pytest.param(lambda t: ["--name", "Bad Name"], "--name", id="bad-name"),
    ],
)
def test_bundle_refuses_inputs_a_device_could_not_use(
    make_args: object, fragment: str, digits_onnx: Path, keys: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out" / "x.ekb"
    out.parent.mkdir()
    result = build(digits_onnx, out, keys, *make_args(tmp_path))  # type: ignore[operator]
    assert result.exit_code == 1, result.output
    assert fragment in result.output and "Traceback" not in result.output
    assert list(out.parent.iterdir()) == []


def test_custom_operator_domains_cannot_state_requirements(keys: Path, tmp_path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper

    node = helper.make_node("Gelu", ["x"], ["y"], domain="com.example")
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)]
    )
    model.ir_version = 9
    path = tmp_path / "custom.onnx"
    onnx.save(model, str(path))
    result = build(path, tmp_path / "c.ekb", keys)
    assert result.exit_code == 1 and ("com.example" in result.output or "cannot load" in result.output)
    assert not (tmp_path / "c.ekb").exists()


def test_external_data_escaping_the_model_folder_is_refused(keys: Path, tmp_path: Path) -> None:
    """Attack 12: an ONNX external-data location that climbs out of the bundle."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weights = numpy_helper.from_array(np.ones((4, 4), np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
        [weights],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    folder = tmp_path / "m"
    folder.mkdir()
    onnx.save(
        model, str(folder / "model.onnx"), save_as_external_data=True, location="w.bin", size_threshold=0
    )
    (tmp_path / "outside.bin").write_bytes((folder / "w.bin").read_bytes())
    loaded = onnx.load(str(folder / "model.onnx"), load_external_data=False)
    for entry in loaded.graph.initializer[0].external_data:
        if entry.key == "location":
            entry.value = "../outside.bin"
    onnx.save(loaded, str(folder / "model.onnx"))
    result = build(folder / "model.onnx", tmp_path / "e.ekb", keys)
    assert result.exit_code == 1 and "escapes" in result.output, result.output


def test_tflite_labels_contradicting_the_embedded_ones_are_refused(
    keras_digits: Path, keys: Path, tmp_path: Path
) -> None:
    """Attack 13: labels.txt must not contradict labels packed into the TFLite model."""
    from converters.export import convert

    model = tmp_path / "digits.tflite"
    convert(keras_digits, model)
    packed = io.BytesIO()
    with zipfile.ZipFile(packed, "w") as archive:
        archive.writestr("labels.txt", "".join(f"class {i}\n" for i in range(10)))
    model.write_bytes(model.read_bytes() + packed.getvalue())
    contradicting = build(model, tmp_path / "t.ekb", keys, "--labels", str(_labels(tmp_path, 10)))
    assert contradicting.exit_code == 1 and "contradicts the labels embedded" in contradicting.output
    agreeing = tmp_path / "agree.txt"
    agreeing.write_text("".join(f"class {i}\n" for i in range(10)))
    assert build(model, tmp_path / "t.ekb", keys, "--labels", str(agreeing)).exit_code == 0


MODEL_SIGNING = shutil.which("model_signing", path=str(Path(sys.executable).parent))


@pytest.mark.skipif(MODEL_SIGNING is None, reason="model-signing is installed with the dev extras")
def test_model_signing_verifies_edgekit_bundles_and_rejects_tampering(
    ekb: Path, keys: Path, tmp_path: Path
) -> None:
    """Interoperability: the unmodified `model_signing verify key` accepts what edgekit signs."""
    bundle_dir = tmp_path / "digits-1.0.0"
    bundle_dir.mkdir()
    with tarfile.open(ekb) as archive:
        for member in archive.getmembers():
            target = bundle_dir / member.name
            target.parent.mkdir(parents=True, exist_ok=True)
            source = archive.extractfile(member)
            assert source is not None
            target.write_bytes(source.read())
    command = [
        str(MODEL_SIGNING),
        "verify",
        "key",
        "--signature",
        str(bundle_dir / "model.sig"),
        "--public_key",
        str(keys / "release.pub"),
        str(bundle_dir),
    ]
    accepted = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert accepted.returncode == 0, accepted.stdout + accepted.stderr
    labels = bundle_dir / "labels.txt"
    labels.write_text(labels.read_text().replace("digit 1", "digit 7"))
    rejected = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert rejected.returncode != 0


def test_preprocess_import_is_a_registered_command(tmp_path: Path) -> None:
    config = tmp_path / "preprocessor_config.json"
    config.write_text(
        json.dumps(
            {
                "image_processor_type": "ViTImageProcessor",
                "do_resize": True,
                "size": {"height": 224, "width": 224},
                "resample": 2,
                "do_rescale": True,
                "rescale_factor": 1 / 255,
                "do_normalize": True,
                "image_mean": [0.5] * 3,
                "image_std": [0.5] * 3,
            }
        )
    )
    result = run("preprocess", "import", str(config), "-o", str(tmp_path / "spec.json"))
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "spec.json").read_text())["schema"] == "edgekit.preprocess/v1"
