"""`edgekit bundle`: assemble, check, sign and write a deterministic `.ekb`.

A bundle holds the model as it is (any existing ONNX or TFLite model: its runtime requirements are read
from its operators, `edgekit.runtime_requirements`), `preprocess.json`, optional `labels.txt`, golden
vectors made with the device's own preprocessing and engine code (`device_runtime`), and an optional
parity report, all signed (`signing`). It refuses what a device could not use safely: a model whose
runtime requirements cannot be stated, a spec that does not match the model's inputs, labels that do not
match the output size or contradict labels embedded in a TFLite model. Same inputs, same bytes
(`created` comes from `--created` or SOURCE_DATE_EPOCH when set).

Golden vectors go over the air to every device, so they are bounded (`edgekit._golden_pack`): at most
`golden_samples` samples and `golden_budget` bytes (default max(256 KiB, 10% of the model)), stored
compactly, and never fewer than one sample.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import re
import shutil
import tempfile
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from converters._files import atomic_output
from converters._quiet import load_engine
from device_runtime.engines import Engine
from edgekit._golden_pack import GoldenDataError, make_golden
from edgekit.errors import EdgekitError
from signing.archive import member_order, write_ekb
from signing.envelope import sign_manifest
from signing.keys import load_private_key
from signing.manifest import SIGNATURE_FILE, BundleManifest, FileEntry

__all__ = ["BuildResult", "BundleError", "BundleRequest", "build_bundle"]

GOLDEN_SAMPLES = 8  # default upper bound on golden samples
MAX_GOLDEN_SAMPLES = 64
GOLDEN_BUDGET_FLOOR = 256 << 10  # bytes
GOLDEN_BUDGET_SHARE = 0.10  # of the model's bytes (with ONNX external data)
_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
_VERSION = re.compile(r"[0-9A-Za-z][0-9A-Za-z.+_-]{0,63}")


class BundleError(EdgekitError):
    """The inputs cannot make a safe bundle (the message says which and how to fix it)."""


@dataclass(frozen=True)
class BundleRequest:
    """Everything `build_bundle` needs."""

    model: Path
    output: Path
    name: str
    version: str
    keys: Sequence[Path]
    passphrase: bytes | None = None
    preprocess: Path | None = None
    labels: Path | None = None
    golden: Path | None = None
    parity: Path | None = None
    hardware_ids: tuple[str, ...] = ()
    release_counter: int = 0
    created: str | None = None
    min_runtime_version: str | None = None  # explicit runtime requirement (else read from the model)
    golden_samples: int = GOLDEN_SAMPLES
    golden_budget: int | None = None  # bytes; None: max(256 KiB, 10% of the model)
    health_samples: int = 64  # samples of --golden data for the reference health profile; 0: none


@dataclass(frozen=True)
class BuildResult:
    """The written bundle."""

    path: Path
    manifest: BundleManifest
    payload_sha256: str
    notes: list[str] = field(default_factory=list)
    golden: dict[str, Any] = field(default_factory=dict)  # the golden storage figures
    requirements_source: str = ""  # where runtime.min_version comes from
    health: dict[str, Any] = field(default_factory=dict)  # the reference health profile's figures


def _created(request: BundleRequest) -> str:
    if request.created:
        return request.created
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    utc = _dt.timezone.utc  # not datetime.UTC: the device test suite runs this on Python 3.10
    moment = _dt.datetime.fromtimestamp(int(epoch), utc) if epoch else _dt.datetime.now(utc)
    return moment.replace(microsecond=0).isoformat().replace("+00:00", "Z")


def build_bundle(request: BundleRequest) -> BuildResult:
    """Check the inputs, build the bundle directory in a private temp folder, sign it, write the `.ekb`.

    Raises:
        BundleError: bad inputs (nothing is written).
    """
    from edgekit.runtime_requirements import RequirementsError, onnx_external_data, runtime_requirements

    model = request.model
    if not _NAME.fullmatch(request.name):
        raise BundleError(
            f"--name {request.name!r}: use lower-case letters, digits, '.', '_' or '-' (max 64)"
        )
    if not _VERSION.fullmatch(request.version):
        raise BundleError(
            f"--version {request.version!r}: use letters, digits, '.', '+', '_' or '-' (max 64)"
        )
    if request.output.suffix != ".ekb":
        raise BundleError(f"{request.output}: the bundle file must end in .ekb")
    if request.release_counter < 0:
        raise BundleError("--release-counter must be >= 0")
    if not model.is_file() or model.suffix.lower() not in (".onnx", ".tflite"):
        raise BundleError(f"{model}: a bundle carries an existing .onnx or .tflite model")
    if not request.keys:
        raise BundleError("give at least one signing key (--key)")
    if not 1 <= request.golden_samples <= MAX_GOLDEN_SAMPLES:
        raise BundleError(f"--golden-samples must be in 1..{MAX_GOLDEN_SAMPLES}")
    if request.golden_budget is not None and request.golden_budget < 1:
        raise BundleError("--golden-budget must be a positive number of bytes")
    private_keys = [load_private_key(k, request.passphrase) for k in request.keys]
    try:
        requirements = runtime_requirements(model, min_runtime_version=request.min_runtime_version)
        external = onnx_external_data(model) if model.suffix.lower() == ".onnx" else []
    except RequirementsError as e:
        raise BundleError(str(e)) from e
    runtime = requirements.runtime
    notes = list(requirements.notes)
    model_bytes = model.stat().st_size + sum((model.parent / x).stat().st_size for x in external)
    budget = (
        request.golden_budget if request.golden_budget is not None else default_golden_budget(model_bytes)
    )
    engine = load_engine(model)
    spec = _load_or_default_spec(request.preprocess, engine)
    labels = _read_labels(request.labels, model, engine, spec)
    bundle_name = f"{request.name}-{request.version}"
    entrypoint = "model" + model.suffix.lower()
    with tempfile.TemporaryDirectory(prefix="edgekit-bundle-") as tmp:
        root = Path(tmp) / bundle_name
        root.mkdir()
        files: dict[str, tuple[bytes | Path, str]] = {entrypoint: (model, "model")}
        for location in external:
            files[location] = (model.parent / location, "external-data")
        files["preprocess.json"] = (
            json.dumps(spec.to_dict(), indent=2, sort_keys=True).encode() + b"\n",
            "preprocess",
        )
        if labels is not None:
            files["labels.txt"] = ("\n".join(labels).encode("utf-8") + b"\n", "labels")
        try:
            golden = make_golden(request.golden, engine, spec, samples=request.golden_samples, budget=budget)
        except GoldenDataError as e:
            raise BundleError(f"{model.name}: {e}") from e
        notes += golden.notes
        for name, data in golden.files.items():
            files[name] = (data, "golden")
        if request.parity is not None:
            files["parity.json"] = (_read_parity(request.parity), "parity")
        health: dict[str, Any] = {}
        if request.golden is not None and request.health_samples > 0:
            # role "metadata": devices that predate health profiles verify and ignore it
            from device_runtime.errors import DeviceRuntimeError
            from edgekit._health_profile import HEALTH_FILE, make_health_profile

            try:
                profile, health = make_health_profile(
                    request.golden, engine, spec, labels, samples=request.health_samples
                )
                files[HEALTH_FILE] = (profile, "metadata")
            except (GoldenDataError, DeviceRuntimeError, ValueError) as e:
                # the bundle stays useful without a reference: devices still sketch, the server compares arms
                notes.append(f"no health reference profile: {str(e)[:200]}")
        entries = {}
        for name, (content, role) in files.items():
            target = root / name
            target.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(content, Path):
                shutil.copyfile(content, target)
            else:
                target.write_bytes(content)
            from converters._files import sha256_file

            entries[name] = FileEntry(name, target.stat().st_size, sha256_file(target), role)
        manifest = BundleManifest(
            bundle_name=bundle_name,
            name=request.name,
            version=request.version,
            release_counter=request.release_counter,
            hardware_ids=tuple(request.hardware_ids),
            runtime=runtime,
            entrypoint=entrypoint,
            files=entries,
            created=_created(request),
        )
        (root / SIGNATURE_FILE).write_bytes(sign_manifest(manifest, private_keys))
        from signing.envelope import verify_signature_document
        from signing.keys import PublicKey, key_id

        publics = [PublicKey(k.public_key(), key_id(k.public_key())) for k in private_keys]
        verified = verify_signature_document(
            (root / SIGNATURE_FILE).read_bytes(), publics, threshold=len(publics)
        )
        with atomic_output(request.output) as out:
            write_ekb(root, member_order(verified.manifest), out)
    return BuildResult(
        request.output,
        verified.manifest,
        verified.payload_sha256,
        notes,
        golden.figures,
        requirements.source,
        health,
    )


def default_golden_budget(model_bytes: int) -> int:
    """Bytes of golden vectors allowed by default: a share of the model with a floor."""
    return max(GOLDEN_BUDGET_FLOOR, int(model_bytes * GOLDEN_BUDGET_SHARE))


def _load_or_default_spec(path: Path | None, engine: Engine) -> Any:
    from device_runtime.errors import SpecError
    from device_runtime.preprocess import check_against_model, load_spec, parse_spec

    if path is None:  # the model's own tensors, passed through: the device still checks shapes and dtypes
        document = {
            "schema": "edgekit.preprocess/v1",
            "inputs": [
                {"name": i.name, "kind": "tensor", "dtype": i.dtype, "shape": list(i.shape)}
                for i in engine.inputs
            ],
            "outputs": [],
        }
        return parse_spec(document)
    spec = load_spec(path)
    try:
        check_against_model(
            spec,
            {i.name: (i.shape, i.dtype) for i in engine.inputs},
            model_outputs={o.name: (o.shape, o.dtype) for o in engine.outputs},
            model_quantization={
                i.name: (i.scale, i.zero_point)
                for i in engine.inputs
                if i.scale is not None and i.zero_point is not None
            },
        )
    except SpecError as e:
        raise BundleError(f"{path}: does not match the model: {e}") from e
    return spec


def _read_labels(path: Path | None, model: Path, engine: Engine, spec: Any) -> list[str] | None:
    if path is None:
        return None
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise BundleError(f"{path}: cannot read labels as UTF-8 text ({e})") from e
    while lines and not lines[-1]:
        lines.pop()
    # A label may be whitespace (a CTC charset's space character) but never empty.
    if not lines or any(not line for line in lines):
        where = f"line {lines.index('') + 1} is empty" if "" in lines else "the file holds none"
        raise BundleError(f"{path}: one non-empty label per line expected ({where})")
    sizes = [o.shape[-1] for o in engine.outputs if len(o.shape) >= 2 and o.shape[-1] is not None]
    if sizes and len(lines) not in sizes:
        raise BundleError(
            f"{path}: {len(lines)} labels, but the model's outputs have {sizes} classes; "
            "give one label per class"
        )
    embedded = _tflite_embedded_labels(model)
    if embedded is not None and embedded != lines:
        differ = next((i for i, (a, b) in enumerate(zip(embedded, lines, strict=False)) if a != b), None)
        where = f"line {differ + 1}" if differ is not None else f"{len(embedded)} vs {len(lines)} labels"
        raise BundleError(
            f"{path}: contradicts the labels embedded in {model.name} ({where}); "
            "use the embedded labels or re-export the model"
        )
    return lines


def _tflite_embedded_labels(model: Path) -> list[str] | None:
    """Labels packed into a TFLite model's metadata zip (associated files), if any."""
    if model.suffix.lower() != ".tflite" or not zipfile.is_zipfile(model):
        return None
    with zipfile.ZipFile(model) as archive:
        for info in archive.infolist():
            if info.filename.lower().endswith(".txt") and info.file_size < (1 << 20):
                return archive.read(info).decode("utf-8", errors="replace").strip().splitlines()
    return None


def _read_parity(path: Path) -> bytes:
    from signing.errors import FormatError
    from signing.strict_json import parse_strict

    try:
        document = parse_strict(path.read_bytes(), what=str(path), max_bytes=16 << 20)
    except (OSError, FormatError) as e:
        raise BundleError(f"{path}: not a readable parity report ({e})") from e
    if not isinstance(document, dict) or document.get("schema") != "edgekit.parity/v1":
        raise BundleError(
            f"{path}: not an edgekit parity report (schema edgekit.parity/v1); pass the file written by "
            "`edgekit quantize --report` or `edgekit parity --report`"
        )
    if document.get("passed") is not True:
        raise BundleError(f"{path}: the parity report did not pass its gate; refusing to ship that model")
    return json.dumps(document, indent=1, sort_keys=True).encode() + b"\n"
