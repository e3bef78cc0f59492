"""The server's TUF repository: python-tuf Metadata API over a data directory, safe for several processes.

    repo = TufRepository.init(data_dir, offline_keys_dir=offline, release_keys=[release_pub])
    repo.add_bundle("tiny-1.1.0.ekb", offline_keys_dir=offline)   # verified first; top-level target
    repo.set_plan("tiny", "stable", plan)                           # delegated `rollouts` role (online)
    repo.refresh_timestamp()                                        # cron: keep timestamp/snapshot fresh

Roles and keys: `root` and the top-level `targets` are signed with OFFLINE keys kept in `offline_keys_dir`
(the operator's medium; never under the data directory); `snapshot`, `timestamp` and the delegated
`rollouts` role (paths `rollouts/*`, plans only) use ONLINE keys in `data_dir/keys` (0600). Ed25519 keys,
PEM PKCS#8. Consistent snapshots are on.

Layout (servable as static files): `data_dir/repo/metadata/` holds `N.root.json` and `root.json` (latest),
`N.targets.json`, `N.rollouts.json`, `N.snapshot.json` and `timestamp.json`; `data_dir/repo/targets/` holds
`bundles/<name>/<sha256>.<name>-<version>.ekb`, `deltas/<name>/<version>/<sha256>.<base bundle id>.ekd`
(deltas from earlier releases, `edgekit.delta`) and `rollouts/<model>/<sha256>.<channel>.json`.
`data_dir/tuf-config.json` keeps the expiry policy and the release public keys.

Every write is temp + fsync + rename, target files before the metadata naming them and `timestamp.json`
last, so a reader never sees a half-published state. Every operation holds an exclusive `fcntl` lock on
`data_dir/.tuf.lock` and re-reads the metadata from disk, so processes sharing a data directory never
interleave. Errors: `RepositoryError` (with `BundleRefusedError` for bundles that do not verify).
"""

from __future__ import annotations

import contextlib
import datetime
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from securesystemslib.signer import CryptoSigner
from tuf.api.metadata import (
    Metadata,
    MetaFile,
    Role,
    Root,
    Snapshot,
    TargetFile,
    Targets,
    Timestamp,
)
from tuf.api.serialization.json import JSONSerializer

from edgekit.server._tuf_deltas import add_deltas
from edgekit.server._tuf_files import (
    FileLock,
    RepositoryError,
    atomic_write,
    fsync_dir,
    generate_key,
    load_signer,
    utc,
)
from edgekit.server._tuf_root import create_repository, read_public_pem
from edgekit.server._tuf_root import rotate_root as rotate_root_keys
from signing.errors import FormatError
from signing.strict_json import parse_strict

__all__ = [
    "ROLLOUTS",
    "BundleRefusedError",
    "ExpiryPolicy",
    "PublishedTarget",
    "RepositoryError",
    "TufRepository",
    "generate_key",
    "load_signer",
]

ROLLOUTS = "rollouts"
CONFIG_FILE = "tuf-config.json"
LOCK_FILE = ".tuf.lock"
DEFAULT_DELTAS = 2  # earlier releases a new bundle gets a delta from
_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
_VERSIONED = re.compile(r"(\d+)\.([a-z][a-z0-9_-]*)\.json")
_DAY = 86_400.0  # seconds


class BundleRefusedError(RepositoryError):
    """A bundle does not verify against the release keys: it is never published."""


@dataclass(frozen=True)
class ExpiryPolicy:
    """How long each role's metadata is valid (days), and when online roles are re-signed early."""

    root_days: float = 365.0
    targets_days: float = 90.0
    rollouts_days: float = 7.0
    snapshot_days: float = 7.0
    timestamp_days: float = 1.0
    resign_fraction: float = 0.5  # re-sign an online role once less than this share of its lifetime is left

    def days(self, role: str) -> float:
        """Lifetime of `role` in days."""
        return float(getattr(self, f"{role}_days"))

    def expires(self, role: str, now: float) -> datetime.datetime:
        """When `role` metadata signed at `now` (seconds since the epoch) expires (UTC, whole seconds)."""
        return utc(now + self.days(role) * _DAY)

    def __post_init__(self) -> None:
        for role in ("root", "targets", "rollouts", "snapshot", "timestamp"):
            if not 0 < self.days(role) <= 3650:
                raise RepositoryError(
                    f"expiry {role}_days must be in (0, 3650] days, got {self.days(role)!r}; fix the "
                    "repository config or the option that set it"
                )
        if not 0 < self.resign_fraction < 1:
            raise RepositoryError(f"expiry resign_fraction must be in (0, 1), got {self.resign_fraction!r}")


@dataclass(frozen=True)
class PublishedTarget:
    """A target as published: TUF path, length (bytes), SHA-256, custom fields, signing role."""

    path: str
    length: int
    sha256: str
    custom: dict[str, Any] = field(default_factory=dict)
    role: str = "targets"
    already_published: bool = False
    deltas: tuple[PublishedTarget, ...] = ()  # deltas from earlier releases published with this bundle


# ---- the repository ---------------------------------------------------------------------------------------
class TufRepository:
    """A TUF repository in `data_dir/repo`; see the module docstring. Safe across threads and processes."""

    def __init__(self, data_dir: str | Path, *, clock: Callable[[], float] = time.time) -> None:
        """Open an initialised repository.

        Raises:
            RepositoryError: `data_dir` holds no repository (run `edgekit repo init`).
        """
        self.data_dir = Path(data_dir)
        self._clock = clock
        config_path = self.data_dir / CONFIG_FILE
        try:
            config = parse_strict(config_path.read_bytes(), what=str(config_path), max_bytes=1 << 20)
            self.expiry = ExpiryPolicy(**config["expiry"])
        except (OSError, FormatError, KeyError, TypeError) as e:
            raise RepositoryError(
                f"{self.data_dir}: no TUF repository here ({config_path} unreadable: {e}); "
                "run `edgekit repo init`"
            ) from e
        self.release_keys: tuple[bytes, ...] = tuple(k.encode() for k in config.get("release_keys", []))
        self.release_threshold = int(config.get("release_threshold", 1))

    # -- paths
    @property
    def metadata_dir(self) -> Path:
        """`data_dir/repo/metadata`."""
        return self.data_dir / "repo" / "metadata"

    @property
    def targets_dir(self) -> Path:
        """`data_dir/repo/targets`."""
        return self.data_dir / "repo" / "targets"

    @property
    def keys_dir(self) -> Path:
        """`data_dir/keys`: online keys only."""
        return self.data_dir / "keys"

    # -- init
    @classmethod
    def init(
        cls,
        data_dir: str | Path,
        *,
        offline_keys_dir: str | Path,
        release_keys: Sequence[str | Path | bytes] = (),
        release_threshold: int = 1,
        expiry: ExpiryPolicy | None = None,
        root_threshold: int = 1,
        root_keys: int | None = None,
        clock: Callable[[], float] = time.time,
    ) -> TufRepository:
        """Create keys and version 1 of every role (consistent snapshots on).

        Args:
            data_dir: server data directory (`repo/`, `keys/` are created in it).
            offline_keys_dir: where the root and top-level targets keys are written; must be outside
                `data_dir` (take it offline afterwards).
            release_keys: PEM public keys (paths or bytes) that bundles must be signed with.
            root_threshold: root signatures required; `root_keys` (default: the threshold) keys are made.

        Raises:
            RepositoryError: already initialised, offline keys inside the data directory, bad arguments.
        """
        return create_repository(
            cls,
            data_dir,
            offline_keys_dir=offline_keys_dir,
            release_keys=release_keys,
            release_threshold=release_threshold,
            expiry=expiry,
            root_threshold=root_threshold,
            root_keys=root_keys,
            clock=clock,
        )

    # -- reading
    def _latest_version(self, role: str) -> int:
        versions = [
            int(m.group(1))
            for p in self.metadata_dir.glob(f"*.{role}.json")
            if (m := _VERSIONED.fullmatch(p.name)) and m.group(2) == role
        ]
        if not versions:
            raise RepositoryError(f"{self.metadata_dir}: no {role} metadata; is the repository initialised?")
        return max(versions)

    def _path(self, role: str, version: int | None = None) -> Path:
        if role == Timestamp.type:
            return self.metadata_dir / "timestamp.json"
        return self.metadata_dir / f"{version or self._latest_version(role)}.{role}.json"

    def _load(self, role: str) -> Metadata[Any]:
        path = self._path(role)
        try:
            return Metadata.from_file(str(path))
        except Exception as e:  # DeserializationError, OSError
            raise RepositoryError(f"{path}: unreadable metadata ({e})") from e

    # -- writing
    def _write(self, md: Metadata[Any], role: str, signers: Sequence[CryptoSigner]) -> Path:
        md.signatures.clear()
        for signer in signers:
            md.sign(signer, append=True)
        path = self._path(role, md.signed.version)
        atomic_write(path, md.to_bytes(JSONSerializer(compact=False)))
        return path

    def _write_root(self, md: Metadata[Root], signers: Sequence[CryptoSigner]) -> None:
        self._write(md, Root.type, signers)
        atomic_write(self.metadata_dir / "root.json", self._path(Root.type, md.signed.version).read_bytes())

    def _online(self, role: str) -> CryptoSigner:
        return load_signer(self.keys_dir / f"{role}.key")

    def _bump(self, md: Metadata[Any], role: str, now: float, *, fresh: bool = False) -> None:
        if not fresh:
            md.signed.version += 1
        md.signed.expires = self.expiry.expires(role, now)

    def _near_expiry(self, md: Metadata[Any], role: str, now: float) -> bool:
        left = md.signed.expires.timestamp() - now
        return left < self.expiry.resign_fraction * self.expiry.days(role) * _DAY

    def _commit(self, now: float, *, force_snapshot: bool = False) -> None:
        """A new snapshot if any targets role changed (or forced, or near expiry), then a new timestamp."""
        meta = {
            f"{role}.json": MetaFile.from_data(
                self._latest_version(role), self._path(role).read_bytes(), ["sha256"]
            )
            for role in (Targets.type, ROLLOUTS)
        }
        snapshot_path: Path | None = None
        fresh = not self._path(Timestamp.type).exists()  # only during init: version 1 of both
        snapshot: Metadata[Snapshot] = Metadata(Snapshot(meta={})) if fresh else self._load(Snapshot.type)
        if (
            fresh
            or force_snapshot
            or snapshot.signed.meta != meta
            or self._near_expiry(snapshot, "snapshot", now)
        ):
            snapshot.signed.meta = meta
            self._bump(snapshot, Snapshot.type, now, fresh=fresh)
            snapshot_path = self._write(snapshot, Snapshot.type, [self._online(Snapshot.type)])
        snapshot_path = snapshot_path or self._path(Snapshot.type)
        timestamp: Metadata[Timestamp] = (
            Metadata(Timestamp(snapshot_meta=MetaFile(1))) if fresh else self._load(Timestamp.type)
        )
        timestamp.signed.snapshot_meta = MetaFile.from_data(
            snapshot.signed.version, snapshot_path.read_bytes(), ["sha256"]
        )
        self._bump(timestamp, Timestamp.type, now, fresh=fresh)
        self._write(timestamp, Timestamp.type, [self._online(Timestamp.type)])

    def _store_target(self, path: str, source: Path) -> TargetFile:
        """Move `source` to its consistent-snapshot name `<dir>/<sha256>.<basename>`; return its info."""
        info = TargetFile.from_file(path, str(source), ["sha256"])
        directory, _, basename = path.rpartition("/")
        final = self.targets_dir / directory / f"{info.hashes['sha256']}.{basename}"
        final.parent.mkdir(parents=True, exist_ok=True)
        os.chmod(source, 0o644)
        os.replace(source, final)
        fsync_dir(final.parent)
        return info

    def _lock(self) -> FileLock:
        return FileLock(self.data_dir / LOCK_FILE)

    # -- operations
    def add_bundle(
        self,
        ekb_path: str | Path,
        *,
        offline_keys_dir: str | Path,
        release_keys: Sequence[str | Path | bytes] | None = None,
        deltas: int = DEFAULT_DELTAS,
    ) -> PublishedTarget:
        """Verify a bundle, then publish it as `bundles/<name>/<name>-<version>.ekb` (offline targets key).

        The bytes verified are the bytes published: the bundle is copied into the repository first and the
        copy is verified. Publishing the same bytes again is a no-op; other bytes for a published
        name and version are refused. With `deltas` K > 0, the deltas from the K latest other published
        releases of the model (highest release counter) are published in the same targets version, as
        `deltas/<name>/<version>/<base bundle id>.ekd` (see `edgekit.delta`); a delta that is not smaller
        than the bundle is not published.

        Raises:
            BundleRefusedError: the signature does not verify against the release keys.
            RepositoryError: no release keys, wrong offline key, version already published differently.
        """
        from signing.errors import SigningError
        from signing.keys import load_public_key
        from signing.verify import VerifyPolicy, verify_ekb

        pems = [read_public_pem(k).encode() for k in release_keys] if release_keys else self.release_keys
        keys = [load_public_key(pem) for pem in pems]
        if not keys:
            raise RepositoryError("no release keys configured: give --release-key to `edgekit repo init`")
        threshold = min(self.release_threshold, len(keys))
        with self._lock():
            now = self._clock()
            self.targets_dir.mkdir(parents=True, exist_ok=True)
            fd, temp_name = tempfile.mkstemp(dir=self.targets_dir, prefix=".incoming-", suffix=".ekb")
            temp = Path(temp_name)
            try:
                with os.fdopen(fd, "wb") as out, open(ekb_path, "rb") as source:
                    shutil.copyfileobj(source, out, 1 << 20)
                    out.flush()
                    os.fsync(out.fileno())
                try:
                    verified = verify_ekb(temp, keys, policy=VerifyPolicy(threshold=threshold))
                except SigningError as e:
                    raise BundleRefusedError(f"{ekb_path}: refused, the bundle does not verify: {e}") from e
                manifest = verified.manifest
                path = f"bundles/{manifest.name}/{manifest.name}-{manifest.version}.ekb"
                custom = {
                    "name": manifest.name,
                    "version": manifest.version,
                    "release_counter": manifest.release_counter,
                    "bundle_id": verified.payload_sha256,
                }
                targets: Metadata[Targets] = self._load(Targets.type)
                signer = self._offline_targets_signer(Path(offline_keys_dir))
                candidate = TargetFile.from_file(path, str(temp), ["sha256"])
                existing = targets.signed.targets.get(path)
                if existing is not None:
                    if existing.hashes == candidate.hashes and existing.length == candidate.length:
                        return PublishedTarget(
                            path, existing.length, existing.hashes["sha256"], custom, already_published=True
                        )
                    raise RepositoryError(
                        f"{manifest.name} {manifest.version} is already published with other bytes; "
                        "publish a new version instead"
                    )
                info = self._store_target(path, temp)
                info.unrecognized_fields["custom"] = custom
                published = tuple(add_deltas(self, targets, path, info, custom, deltas))
                targets.signed.targets[path] = info
                self._bump(targets, Targets.type, now)
                self._write(targets, Targets.type, [signer])
                self._commit(now)
                return PublishedTarget(path, info.length, info.hashes["sha256"], custom, deltas=published)
            finally:
                with contextlib.suppress(FileNotFoundError):
                    temp.unlink()

    def _stored(self, path: str, info: TargetFile) -> Path:
        """Where the target file of `path` is kept (consistent snapshots: `<dir>/<sha256>.<name>`)."""
        directory, _, basename = path.rpartition("/")
        return self.targets_dir / directory / f"{info.hashes['sha256']}.{basename}"

    def _offline_targets_signer(self, offline: Path) -> CryptoSigner:
        signer = load_signer(offline / "targets.key")
        root: Metadata[Root] = self._load(Root.type)
        if signer.public_key.keyid not in root.signed.roles[Targets.type].keyids:
            raise RepositoryError(f"{offline / 'targets.key'} is not the targets key this root trusts")
        return signer

    def set_plan(self, model: str, channel: str, plan: dict[str, Any]) -> PublishedTarget:
        """Publish `plan` as `rollouts/<model>/<channel>.json` in the delegated `rollouts` role (online key).

        Raises:
            RepositoryError: bad names, a malformed plan, or a plan naming a bundle that is not published.
        """
        from device_runtime.rollout_plan import PlanError, parse_plan, plan_target_path

        for label, value in (("model", model), ("channel", channel)):
            if not _NAME.fullmatch(value):
                raise RepositoryError(f"{label} {value!r}: use lower-case letters, digits, '.', '_' or '-'")
        try:
            parsed = parse_plan(plan, model=model, channel=channel)
        except PlanError as e:
            raise RepositoryError(f"rollout plan for {model}/{channel} refused: {e}") from e
        data = parsed.to_bytes()  # the contract's canonical form: what every device parses
        path = plan_target_path(model, channel)
        with self._lock():
            now = self._clock()
            published = self._load(Targets.type).signed.targets
            for release in (parsed.target, parsed.baseline):
                if release is None:
                    continue
                if release.target_path not in published:
                    raise RepositoryError(f"the plan names {release.target_path}, which is not published")
                custom = published[release.target_path].custom or {}
                found = (custom.get("version"), custom.get("release_counter"), custom.get("bundle_id"))
                if found != (release.version, release.release_counter, release.bundle_id):
                    raise RepositoryError(
                        f"the plan names {release.target_path} as (version, release_counter, bundle_id) "
                        f"{(release.version, release.release_counter, release.bundle_id)}, but the "
                        f"published target is {found}"
                    )
            rollouts: Metadata[Targets] = self._load(ROLLOUTS)
            self.targets_dir.mkdir(parents=True, exist_ok=True)
            fd, temp_name = tempfile.mkstemp(dir=self.targets_dir, prefix=".incoming-", suffix=".json")
            with os.fdopen(fd, "wb") as out:
                out.write(data)
                out.flush()
                os.fsync(out.fileno())
            try:
                info = self._store_target(path, Path(temp_name))
            finally:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(temp_name)
            rollouts.signed.targets[path] = info
            self._bump(rollouts, ROLLOUTS, now)
            self._write(rollouts, ROLLOUTS, [self._online(ROLLOUTS)])
            self._commit(now)
            return PublishedTarget(path, info.length, info.hashes["sha256"], {}, role=ROLLOUTS)

    def published_plan_sha256(self, model: str, channel: str) -> str | None:
        """SHA-256 of the plan published for `model` on `channel` (its canonical bytes); None if none."""
        from device_runtime.rollout_plan import plan_target_path

        info = self._load(ROLLOUTS).signed.targets.get(plan_target_path(model, channel))
        return None if info is None else str(info.hashes["sha256"])

    def refresh_timestamp(self, *, force_snapshot: bool = False) -> dict[str, int]:
        """Re-sign timestamp (always), and rollouts and snapshot when near expiry. Returns role -> version.

        Top-level targets and root need the offline keys: they are reported by `status`, not refreshed.
        """
        with self._lock():
            now = self._clock()
            rollouts: Metadata[Targets] = self._load(ROLLOUTS)
            if self._near_expiry(rollouts, ROLLOUTS, now):
                self._bump(rollouts, ROLLOUTS, now)
                self._write(rollouts, ROLLOUTS, [self._online(ROLLOUTS)])
            self._commit(now, force_snapshot=force_snapshot)
            return {
                role: self._load(role).signed.version for role in (ROLLOUTS, Snapshot.type, Timestamp.type)
            }

    def rotate_root(
        self,
        new_root_keys_dir: str | Path,
        *,
        old_offline_keys_dir: str | Path,
        threshold: int = 1,
        key_count: int | None = None,
    ) -> int:
        """Write root N+1 trusting the root keys in `new_root_keys_dir`, signed by old AND new keys.

        Keys `root-*.key` already in the new folder are used; if there are none, `key_count` (default:
        `threshold`) are generated there. The targets key is copied into the new folder (unchanged), so
        it is a complete offline key set. Clients holding root N verify N+1 with both rings (the chain).

        Raises:
            RepositoryError: too few old root keys for the current threshold, or bad threshold.
        """
        return rotate_root_keys(
            self,
            new_root_keys_dir,
            old_offline_keys_dir=old_offline_keys_dir,
            threshold=threshold,
            key_count=key_count,
        )

    # -- status
    def status(self) -> dict[str, Any]:
        """Roles (version, expiry, keys, threshold), targets and plans, and warnings about expiry."""
        with self._lock():
            now = self._clock()
            root: Metadata[Root] = self._load(Root.type)
            roles: dict[str, Any] = {}
            warnings: list[str] = []
            documents: dict[str, Metadata[Any]] = {}
            for role in (Root.type, Targets.type, ROLLOUTS, Snapshot.type, Timestamp.type):
                md = self._load(role)
                documents[role] = md
                expires = md.signed.expires
                if role == ROLLOUTS:
                    delegated: Role = documents[Targets.type].signed.get_delegated_role(ROLLOUTS)
                else:
                    delegated = root.signed.roles[role]
                roles[role] = {
                    "version": md.signed.version,
                    "expires": expires.isoformat().replace("+00:00", "Z"),
                    "expired": expires.timestamp() <= now,
                    "keyids": list(delegated.keyids),
                    "threshold": delegated.threshold,
                    "online": role in (Snapshot.type, Timestamp.type, ROLLOUTS),
                }
                if expires.timestamp() <= now:
                    warnings.append(f"{role} expired at {roles[role]['expires']}")
                elif self._near_expiry(md, role, now):
                    how = "edgekit repo publish" if role == Targets.type else "edgekit repo rotate-root"
                    fix = "the server re-signs it" if roles[role]["online"] else f"re-sign with {how}"
                    warnings.append(f"{role} expires at {roles[role]['expires']} ({fix})")

            def describe(targets: Metadata[Targets]) -> list[dict[str, Any]]:
                return [
                    {"path": p, "length": t.length, "sha256": t.hashes.get("sha256"), "custom": t.custom}
                    for p, t in sorted(targets.signed.targets.items())
                ]

            return {
                "data_dir": str(self.data_dir),
                "consistent_snapshot": bool(root.signed.consistent_snapshot),
                "roles": roles,
                "targets": describe(documents[Targets.type]),
                "plans": describe(documents[ROLLOUTS]),
                "warnings": warnings,
            }
