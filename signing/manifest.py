"""The signed statement: in-toto Statement v1, model_signing v1.0 predicate, edgekit's signed extension.

Building is deterministic (canonical JSON, resources in `PurePosixPath` order). Parsing checks every rule of
verification step 4 (docs/bundle-format.md) and refuses anything else: this is pure code, with no IO.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any

from signing.errors import ManifestError

__all__ = [
    "BUNDLE_SCHEMA",
    "NAME_PATTERN",
    "PREDICATE_TYPE",
    "SERIALIZATION",
    "SIGNATURE_FILE",
    "STATEMENT_TYPE",
    "VERSION_PATTERN",
    "BundleManifest",
    "FileEntry",
    "Runtime",
    "build_statement",
    "check_member_name",
    "parse_statement",
    "root_digest",
]

STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://model_signing/signature/v1.0"
BUNDLE_SCHEMA = "edgekit.bundle/v1"
SIGNATURE_FILE = "model.sig"
SERIALIZATION = {
    "method": "files",
    "hash_type": "sha256",
    "allow_symlinks": False,
    "ignore_paths": [SIGNATURE_FILE],
}
ROLES = ("model", "external-data", "preprocess", "labels", "golden", "parity", "metadata")
ENGINES = ("onnxruntime", "litert")
MAX_FILES = 256
MAX_FILE_SIZE = 1 << 40  # bytes; a bound for the integer, real caps come from the device config
_COMPONENT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_HEX64 = re.compile(r"[0-9a-f]{64}")
_VERSION = re.compile(r"[0-9A-Za-z][0-9A-Za-z.+_-]{0,63}")
_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
# Public so that other signed documents (the rollout plan, device_runtime.rollout_plan) name models and
# versions by exactly the rules a bundle's manifest does.
NAME_PATTERN, VERSION_PATTERN = _NAME, _VERSION


@dataclass(frozen=True)
class FileEntry:
    """One signed file: its bundle-relative POSIX name, size in bytes, SHA-256 and role."""

    name: str
    size: int
    sha256: str
    role: str


@dataclass(frozen=True)
class Runtime:
    """What the device needs to run the model."""

    engine: str  # onnxruntime | litert
    min_version: str
    opset: int | None  # ONNX default-domain opset; None for TFLite


@dataclass(frozen=True)
class BundleManifest:
    """Everything the signature covers, as parsed (or as about to be signed)."""

    bundle_name: str  # the in-toto subject name: the bundle directory's name
    name: str
    version: str
    release_counter: int
    hardware_ids: tuple[str, ...]
    runtime: Runtime
    entrypoint: str
    files: Mapping[str, FileEntry]
    created: str
    root: str = field(default="")

    def ordered_files(self) -> list[FileEntry]:
        """Files in model_signing's resource order (PurePosixPath order: `a/b` before `a.txt`)."""
        return [self.files[n] for n in sorted(self.files, key=PurePosixPath)]


def check_member_name(name: str) -> str:
    """Accept only plain relative POSIX names made of safe components (attack 7 and 26).

    Raises:
        ManifestError: absolute, traversal, backslash, drive letter, NUL, `.` components, odd characters.
    """
    if not isinstance(name, str) or not name or len(name) > 512:
        raise ManifestError(f"file name {name!r}: must be a non-empty string of at most 512 characters")
    parts = name.split("/")
    if (
        len(parts) > 4
        or not all(_COMPONENT.fullmatch(p) for p in parts)
        or any(p in (".", "..") for p in parts)
    ):
        raise ManifestError(
            f"file name {name!r}: only relative names of [A-Za-z0-9._-] components "
            "(at most 4 levels, no '.', "
            "'..', '/', '\\', ':' or NUL) are allowed"
        )
    return name


def root_digest(entries: list[FileEntry]) -> str:
    """ROOT: SHA-256 over the concatenated raw digests, in resource order."""
    hasher = hashlib.sha256()
    for entry in entries:
        hasher.update(bytes.fromhex(entry.sha256))
    return hasher.hexdigest()


def build_statement(manifest: BundleManifest) -> dict[str, Any]:
    """The in-toto statement for `manifest` (files hashed already)."""
    ordered = manifest.ordered_files()
    return {
        "_type": STATEMENT_TYPE,
        "subject": [{"name": manifest.bundle_name, "digest": {"sha256": root_digest(ordered)}}],
        "predicateType": PREDICATE_TYPE,
        "predicate": {
            "serialization": dict(SERIALIZATION),
            "resources": [{"name": e.name, "algorithm": "sha256", "digest": e.sha256} for e in ordered],
            "edgekit": {
                "schema": BUNDLE_SCHEMA,
                "name": manifest.name,
                "version": manifest.version,
                "release_counter": manifest.release_counter,
                "hardware_ids": list(manifest.hardware_ids),
                "runtime": {
                    "engine": manifest.runtime.engine,
                    "min_version": manifest.runtime.min_version,
                    "opset": manifest.runtime.opset,
                },
                "entrypoint": manifest.entrypoint,
                "files": {e.name: {"size": e.size, "role": e.role} for e in ordered},
                "created": manifest.created,
            },
        },
    }


def _object(value: Any, where: str, keys: set[str], optional: frozenset[str] = frozenset()) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ManifestError(f"{where}: expected an object, got {type(value).__name__}")
    missing = keys - optional - set(value)
    extra = set(value) - keys
    if missing or extra:
        raise ManifestError(f"{where}: missing keys {sorted(missing)}, unexpected keys {sorted(extra)}")
    return value


def _string(value: Any, where: str, pattern: re.Pattern[str] | None = None) -> str:
    if not isinstance(value, str):
        raise ManifestError(f"{where}: expected a string, got {type(value).__name__}")
    if pattern is not None and not pattern.fullmatch(value):
        raise ManifestError(f"{where}: {value!r} is not in canonical form ({pattern.pattern})")
    return value


def _integer(value: Any, where: str, low: int, high: int) -> int:
    # bool is an int in Python; floats such as 3.0 are non-canonical: refuse both (attack 16).
    if isinstance(value, bool) or not isinstance(value, int):
        raise ManifestError(f"{where}: expected an integer, got {type(value).__name__} {value!r}")
    if not low <= value <= high:
        raise ManifestError(f"{where}: {value} is outside [{low}, {high}]")
    return value


def parse_statement(statement: Any) -> BundleManifest:
    """Validate a verified statement against edgekit's policy and return its manifest.

    Raises:
        ManifestError: any deviation (types, predicate, serialization policy, weak algorithm, ROOT,
            file lists that disagree, non-canonical signed values).
    """
    top = _object(statement, "statement", {"_type", "subject", "predicateType", "predicate"})
    if top["_type"] != STATEMENT_TYPE:
        raise ManifestError(f"statement _type {top['_type']!r}; expected {STATEMENT_TYPE}")
    if top["predicateType"] != PREDICATE_TYPE:
        raise ManifestError(f"predicateType {top['predicateType']!r}; expected {PREDICATE_TYPE}")
    subjects = top["subject"]
    if not isinstance(subjects, list) or len(subjects) != 1:
        raise ManifestError("statement must have exactly one subject")
    subject = _object(subjects[0], "subject[0]", {"name", "digest"})
    bundle_name = check_member_name(_string(subject["name"], "subject[0].name"))
    digest = _object(subject["digest"], "subject[0].digest", {"sha256"})
    expected_root = _string(digest["sha256"], "subject[0].digest.sha256", _HEX64)
    predicate = _object(top["predicate"], "predicate", {"serialization", "resources", "edgekit"})
    # Compared as JSON text: in Python 0 == False == 0.0, and those are not edgekit's values (attack 16).
    serialization = json.dumps(predicate["serialization"], sort_keys=True, default=repr)
    if serialization != json.dumps(SERIALIZATION, sort_keys=True):
        raise ManifestError(
            f"serialization policy {predicate['serialization']!r} is not edgekit's {SERIALIZATION!r} "
            "(ignore_paths must be exactly ['model.sig'], symlinks never allowed)"
        )
    resources = predicate["resources"]
    if not isinstance(resources, list) or not 1 <= len(resources) <= MAX_FILES:
        raise ManifestError(f"predicate.resources: expected 1..{MAX_FILES} entries")
    digests: dict[str, str] = {}
    order: list[str] = []
    for index, resource in enumerate(resources):
        where = f"resources[{index}]"
        item = _object(resource, where, {"name", "algorithm", "digest"})
        name = check_member_name(_string(item["name"], f"{where}.name"))
        if item["algorithm"] != "sha256":
            raise ManifestError(f"{where}.algorithm {item['algorithm']!r}: only sha256 is accepted")
        if name in digests:
            raise ManifestError(f"{where}: file {name!r} is listed twice")
        if name == SIGNATURE_FILE:
            raise ManifestError(f"{where}: {SIGNATURE_FILE} cannot be a signed resource")
        digests[name] = _string(item["digest"], f"{where}.digest", _HEX64)
        order.append(name)
    if order != sorted(order, key=PurePosixPath):
        raise ManifestError("predicate.resources are not in canonical (PurePosixPath) order")
    folders = {"/".join(n.split("/")[:i]) for n in order for i in range(1, n.count("/") + 1)}
    if clash := sorted(folders & set(digests)):
        raise ManifestError(f"resources {clash} are both files and folders of other files")
    ext = _object(
        predicate["edgekit"],
        "predicate.edgekit",
        {
            "schema",
            "name",
            "version",
            "release_counter",
            "hardware_ids",
            "runtime",
            "entrypoint",
            "files",
            "created",
        },
    )
    if ext["schema"] != BUNDLE_SCHEMA:
        raise ManifestError(f"edgekit.schema {ext['schema']!r}; expected {BUNDLE_SCHEMA}")
    hardware = ext["hardware_ids"]
    if not isinstance(hardware, list) or len(hardware) > 64:
        raise ManifestError("edgekit.hardware_ids: expected a list of at most 64 ids")
    hardware_ids = tuple(_string(h, f"edgekit.hardware_ids[{i}]", _VERSION) for i, h in enumerate(hardware))
    runtime = _object(ext["runtime"], "edgekit.runtime", {"engine", "min_version", "opset"})
    if runtime["engine"] not in ENGINES:
        raise ManifestError(f"edgekit.runtime.engine {runtime['engine']!r}; expected one of {ENGINES}")
    opset = None if runtime["opset"] is None else _integer(runtime["opset"], "edgekit.runtime.opset", 1, 1000)
    files_doc = ext["files"]
    if not isinstance(files_doc, dict):
        raise ManifestError("edgekit.files: expected an object")
    if set(files_doc) != set(digests):
        raise ManifestError(
            f"edgekit.files names {sorted(files_doc)} but resources name {sorted(digests)}; "
            "they must be the same set"
        )
    files: dict[str, FileEntry] = {}
    for name in order:
        info = _object(files_doc[name], f"edgekit.files[{name!r}]", {"size", "role"})
        role = _string(info["role"], f"edgekit.files[{name!r}].role")
        if role not in ROLES:
            raise ManifestError(f"edgekit.files[{name!r}].role {role!r}; expected one of {ROLES}")
        size = _integer(info["size"], f"edgekit.files[{name!r}].size", 0, MAX_FILE_SIZE)
        files[name] = FileEntry(name, size, digests[name], role)
    entrypoint = _string(ext["entrypoint"], "edgekit.entrypoint")
    if entrypoint not in files or files[entrypoint].role != "model":
        raise ManifestError(f"edgekit.entrypoint {entrypoint!r} is not a signed file with role 'model'")
    root = root_digest([files[n] for n in order])
    if root != expected_root:
        raise ManifestError(f"subject digest {expected_root} does not match the resources' ROOT {root}")
    return BundleManifest(
        bundle_name=bundle_name,
        name=_string(ext["name"], "edgekit.name", _NAME),
        version=_string(ext["version"], "edgekit.version", _VERSION),
        release_counter=_integer(ext["release_counter"], "edgekit.release_counter", 0, 2**53 - 1),
        hardware_ids=hardware_ids,
        runtime=Runtime(
            runtime["engine"], _string(runtime["min_version"], "edgekit.runtime.min_version", _VERSION), opset
        ),
        entrypoint=entrypoint,
        files=files,
        created=_string(ext["created"], "edgekit.created"),
        root=root,
    )
