"""Loading a verified bundle directory into an engine, and the install-time checks of what was loaded.

Every file loaded is read once and checked against its signed digest: the bytes used are the bytes verified,
whatever happens to the slot between verification and load (attack 11). A file that changed size, digest or
became a symlink since verification raises `VerificationError`. The engine, the preprocessing code and the
golden checker are imported when first used, so that importing the runtime stays light.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from device_runtime.errors import InstallError
from device_runtime.state import SlotRecord
from signing.errors import VerificationError
from signing.manifest import BundleManifest

__all__ = ["Loaded", "check_engine_version", "load_model", "read_verified", "self_test"]


@dataclass
class Loaded:
    """A model ready to run: its slot record, manifest, engine, preprocessing spec and labels."""

    record: SlotRecord
    manifest: BundleManifest
    engine: Any
    spec: Any
    labels: list[str] | None


def load_model(
    directory: Path, manifest: BundleManifest, record: SlotRecord | None, *, threads: int | None
) -> Loaded:
    """Load the verified bundle in `directory` (`record` None: not yet in a slot, a placeholder is used).

    Raises:
        VerificationError: a file changed after verification.
        SpecError: the preprocessing spec is invalid.  EngineError: the engine cannot load the model.
    """
    from device_runtime.engines import load_engine
    from device_runtime.preprocess import load_spec

    data = read_verified(directory, manifest, manifest.entrypoint)
    kind = manifest.runtime.engine
    if "preprocess.json" in manifest.files:
        spec = _parse_spec(read_verified(directory, manifest, "preprocess.json"))
    else:
        spec = load_spec(directory / "preprocess.json")
    labels = None
    if "labels.txt" in manifest.files:
        labels = read_verified(directory, manifest, "labels.txt").decode("utf-8").splitlines()
    engine = load_engine(data, kind=kind, threads=threads)
    placeholder = record or SlotRecord("?", "", manifest.name, manifest.version, manifest.release_counter)
    return Loaded(placeholder, manifest, engine, spec, labels)


def self_test(directory: Path, loaded: Loaded) -> dict[str, float]:
    """Run the bundle's golden vectors on this device's engine; the SQNR (dB) of each output.

    Raises:
        InstallError: no golden vectors, or the outputs do not match them (reason "self-test").
    """
    from device_runtime.golden import check_golden

    if not (directory / "golden" / "golden.json").is_file():
        raise InstallError(
            "the bundle has no golden vectors; rebuild it with edgekit bundle", reason="self-test"
        )
    result = check_golden(directory, loaded.engine.run, preprocess=_image_preprocessor(loaded))
    if not result.passed:
        raise InstallError(
            "golden self-test failed on this device's engine: " + "; ".join(result.details),
            reason="self-test",
        )
    return dict(result.sqnr_db)


def _image_preprocessor(loaded: Loaded) -> Any:
    from device_runtime.preprocess import ImageInputSpec, prepare_inputs

    if not any(isinstance(i, ImageInputSpec) for i in loaded.spec.inputs):
        return None
    return lambda path: prepare_inputs(loaded.spec, path)


def _read_exact(path: Path, size: int) -> bytes:
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0)
    try:
        with os.fdopen(os.open(path, flags), "rb") as handle:
            data = handle.read(size + 1)
    except OSError as e:  # removed or replaced by a symlink since verification
        raise VerificationError(f"{path.name} changed after verification ({e}); refusing to load it") from e
    if len(data) != size:
        raise VerificationError(f"{path.name} changed size after verification; refusing to load it")
    return data


def read_verified(directory: Path, manifest: BundleManifest, name: str) -> bytes:
    """The bytes of the manifest's file `name`, checked against its signed size and digest.

    Raises:
        VerificationError: the file is gone, a symlink, or differs from what was signed.
    """
    entry = manifest.files[name]
    data = _read_exact(directory / entry.name, entry.size)
    if hashlib.sha256(data).hexdigest() != entry.sha256:
        raise VerificationError(f"{entry.name} changed after verification; refusing to load it")
    return data


def _parse_spec(data: bytes) -> Any:
    """A preprocessing spec from verified bytes (strict JSON, then the spec's own validation)."""
    from device_runtime.errors import SpecError
    from device_runtime.preprocess import parse_spec
    from signing.errors import FormatError
    from signing.strict_json import parse_strict

    try:
        document = parse_strict(data, what="preprocess.json", max_bytes=1 << 20)
    except FormatError as e:
        raise SpecError(f"preprocess.json: {e}") from e
    return parse_spec(document)


def check_engine_version(manifest: BundleManifest) -> None:
    """Refuse a bundle whose engine is not installed, or (onnxruntime) older than it needs.

    Raises:
        InstallError: reason "runtime-requirement".
    """
    from importlib import metadata

    package = {"onnxruntime": "onnxruntime", "litert": "ai-edge-litert"}[manifest.runtime.engine]
    try:
        installed = metadata.version(package)
    except metadata.PackageNotFoundError as e:
        raise InstallError(
            f"the bundle needs {package}, which is not installed on this device", reason="runtime-requirement"
        ) from e

    def parts(version: str) -> tuple[int, ...]:
        return tuple(int(p) for p in version.split("+")[0].split(".")[:3] if p.isdigit())

    if manifest.runtime.engine == "onnxruntime" and parts(installed) < parts(manifest.runtime.min_version):
        raise InstallError(
            f"the bundle needs onnxruntime >= {manifest.runtime.min_version}; this device has {installed}",
            reason="runtime-requirement",
        )
