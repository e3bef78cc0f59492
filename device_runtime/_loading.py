"""Loading a verified bundle directory into an engine, and the install-time checks of what was loaded.

Every file loaded is read once and checked against its signed digest: the bytes used are the bytes verified,
whatever happens to the slot between verification and load (attack 11). A file that changed size, digest or
became a symlink since verification raises `VerificationError`. The engine, the preprocessing code and the
golden checker are imported when first used, so that importing the runtime stays light.

Signed is not the same as well-formed: a publisher's key can sign labels that are not UTF-8 or do not match
the model's class count, or golden vectors that claim terabytes. Every such content is refused here with an
`InstallError` and a reason code ("labels", "golden") before the bundle is activated: the label count is
checked against the outputs the engine actually produced during the self-test, for every use `predict` makes
of the labels, so a bundle that installs never fails in `predict` for its labels.
"""

from __future__ import annotations

import hashlib
import os
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from device_runtime.errors import InstallError, SpecError
from device_runtime.state import SlotRecord
from signing.errors import VerificationError
from signing.manifest import BundleManifest

__all__ = [
    "Loaded",
    "check_engine_version",
    "check_labels",
    "load_model",
    "parse_labels",
    "read_verified",
    "self_test",
]


@dataclass
class Loaded:
    """A model ready to run: its slot record, manifest, engine, preprocessing spec and labels."""

    record: SlotRecord
    manifest: BundleManifest
    engine: Any
    spec: Any
    labels: list[str] | None
    health: Any = None  # the bundle's reference profile (`device_runtime.health.HealthProfile`), if any
    predict_path: Any = None  # `device_runtime._predict_path.PredictPath`, made at the first predict


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
        labels = parse_labels(read_verified(directory, manifest, "labels.txt"))
    health = None
    if "health.json" in manifest.files:  # bundles built before health profiles have none
        health = _parse_health(read_verified(directory, manifest, "health.json"))
    engine = load_engine(data, kind=kind, threads=threads)
    placeholder = record or SlotRecord("?", "", manifest.name, manifest.version, manifest.release_counter)
    return Loaded(placeholder, manifest, engine, spec, labels, health)


def _parse_health(data: bytes) -> Any:
    """A reference health profile from verified bytes.

    Raises:
        InstallError: reason "health": not strict JSON or not a bounded profile.
    """
    from device_runtime.health import PROFILE_SCHEMA, parse_profile
    from signing.errors import FormatError
    from signing.strict_json import parse_strict

    try:
        document = parse_strict(data, what="health.json", max_bytes=1 << 20)
    except FormatError as e:
        raise InstallError(f"health.json: {e}", reason="health") from e
    schema = document.get("schema") if isinstance(document, dict) else None
    if isinstance(schema, str) and schema.startswith("edgekit.health/") and schema != PROFILE_SCHEMA:
        # A newer profile format than this device knows: the profile is optional metadata, so the device
        # installs the bundle and reports sketches without reference bins rather than refusing the release.
        return None
    return parse_profile(document)


def parse_labels(data: bytes) -> list[str]:
    """One label per line of UTF-8 text (trailing empty lines ignored, as the bundle builder writes them).

    Raises:
        InstallError: reason "labels": not UTF-8, no labels, an empty label, or control characters.
    """
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise InstallError(
            f"labels.txt is not UTF-8 text ({e.reason} at byte {e.start}); "
            "rebuild the bundle with UTF-8 labels",
            reason="labels",
        ) from e
    lines = text.splitlines()
    while lines and not lines[-1]:
        lines.pop()
    if not lines or "" in lines:
        where = f"line {lines.index('') + 1} is empty" if "" in lines else "it holds none"
        raise InstallError(f"labels.txt: one non-empty label per line expected ({where})", reason="labels")
    for number, line in enumerate(lines, 1):
        if any(unicodedata.category(c) == "Cc" and c != "\t" for c in line):
            raise InstallError(f"labels.txt line {number}: control characters in a label", reason="labels")
    return lines


def check_labels(loaded: Loaded, outputs: dict[str, Any]) -> None:
    """The labels fit every output `predict` names with them, judged on outputs the engine produced.

    Mirrors `Runtime.predict`: the first classification output (one label per class of a sample), the
    decoded roles that name the labels file (their class count as `device_runtime.preprocess` reads it),
    and, when neither applies, the first `[1, C]` output that predict ranks by argmax.

    Raises:
        InstallError: reason "labels", with the counts.
    """
    from device_runtime.preprocess import _class_count

    labels = loaded.labels
    if labels is None or not outputs:
        return
    shapes = {name: (tuple(np.shape(value)), None) for name, value in outputs.items()}

    def refuse(name: str, classes: int) -> None:
        raise InstallError(
            f"labels.txt holds {len(labels)} labels but the model's output {name!r} has {classes} classes "
            f"(shape {list(shapes[name][0])}); publish a bundle with one label per class",
            reason="labels",
        )

    classified = decoded = False
    for spec in loaded.spec.outputs:
        if spec.name not in outputs:
            continue
        if spec.kind == "classification" and not classified:
            classified = True
            value = np.asarray(outputs[spec.name])
            classes = int((value if value.ndim <= 1 else value[0]).size)
            if classes != len(labels):
                refuse(spec.name, classes)
        elif spec.kind not in ("classification", "tensor"):
            decoded = True
            if spec.labels is None or (spec.scores is not None and spec.scores not in outputs):
                continue
            counted = _class_count(spec, shapes)
            if counted is not None and counted != len(labels):
                refuse(spec.name, counted)
    if not classified and not decoded:
        name, value = next(iter(outputs.items()))
        shape = np.shape(value)
        if len(shape) == 2 and shape[0] >= 1 and shape[1] > 1 and shape[1] != len(labels):
            refuse(name, int(shape[1]))


def self_test(directory: Path, loaded: Loaded) -> dict[str, float]:
    """Run the bundle's golden vectors on this device's engine; the SQNR (dB) of each output. Then check
    the labels against the outputs the engine produced (`check_labels`).

    Raises:
        InstallError: no golden vectors or the outputs do not match them (reason "self-test"), malformed
            golden vectors (reason "golden"), labels that do not fit the outputs (reason "labels").
    """
    from device_runtime.golden import check_golden

    if not (directory / "golden" / "golden.json").is_file():
        raise InstallError(
            "the bundle has no golden vectors; rebuild it with edgekit bundle", reason="self-test"
        )
    produced: dict[str, Any] = {}

    def run(feeds: dict[str, Any]) -> dict[str, Any]:
        outputs = loaded.engine.run(feeds)
        if not produced:
            produced.update(outputs)
        return dict(outputs)

    try:
        result = check_golden(directory, run, preprocess=_image_preprocessor(loaded))
    except SpecError as e:
        raise InstallError(f"the bundle's golden vectors are malformed: {e}", reason="golden") from e
    check_labels(loaded, produced)
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
