"""The repository's offline-key ceremonies: creating it (`edgekit repo init`) and rotating its root keys
(`edgekit repo rotate-root`).

Both make or use the OFFLINE root keys (and the top-level targets key) kept outside the data directory;
`TufRepository.init` and `TufRepository.rotate_root` are these functions. Split from `tuf_repo` along the
seam between the keys' ceremonies and day-to-day publishing (`add_bundle`, `set_plan`, `refresh_timestamp`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

from tuf.api.metadata import DelegatedRole, Delegations, Metadata, Root, Snapshot, Targets, Timestamp

from edgekit.server._tuf_files import (
    FileLock,
    RepositoryError,
    atomic_write,
    generate_key,
    load_signer,
    signers_in,
)

if TYPE_CHECKING:
    from edgekit.server.tuf_repo import ExpiryPolicy, TufRepository

__all__ = ["create_repository", "read_public_pem", "rotate_root"]


def create_repository(
    cls: type[TufRepository],
    data_dir: str | Path,
    *,
    offline_keys_dir: str | Path,
    release_keys: Sequence[str | Path | bytes],
    release_threshold: int,
    expiry: ExpiryPolicy | None,
    root_threshold: int,
    root_keys: int | None,
    clock: Callable[[], float],
) -> TufRepository:
    """`TufRepository.init` (see there): keys and version 1 of every role."""
    from edgekit.server.tuf_repo import CONFIG_FILE, LOCK_FILE, ROLLOUTS, ExpiryPolicy  # imports this module

    data_dir, offline = Path(data_dir), Path(offline_keys_dir)
    expiry = expiry or ExpiryPolicy()
    count = root_keys if root_keys is not None else root_threshold
    if not 1 <= root_threshold <= count:
        raise RepositoryError(f"root threshold {root_threshold} needs 1..{count} root keys")
    if offline.resolve().is_relative_to(data_dir.resolve()):
        raise RepositoryError(
            f"offline keys dir {offline} is inside the data dir {data_dir}; keep root and targets keys "
            "offline (choose a folder outside it)"
        )
    if (data_dir / CONFIG_FILE).exists() or (data_dir / "repo" / "metadata").exists():
        raise RepositoryError(f"{data_dir} already holds a TUF repository")
    existing = sorted(p.name for p in offline.glob("*.key")) if offline.is_dir() else []
    if existing:
        raise RepositoryError(f"{offline} already holds keys {existing}; use an empty folder")
    pems = [read_public_pem(k) for k in release_keys]
    if release_keys and not 1 <= release_threshold <= len(pems):
        raise RepositoryError(f"release threshold must be in 1..{len(pems)}")
    data_dir.mkdir(parents=True, exist_ok=True)
    config = {
        "expiry": asdict(expiry),
        "release_keys": pems,
        "release_threshold": release_threshold,
    }
    repo_lock = FileLock(data_dir / LOCK_FILE)
    with repo_lock:
        now = clock()
        roots = [generate_key(offline / f"root-{i + 1}.key") for i in range(count)]
        targets_key = generate_key(offline / "targets.key")
        online = {
            role: generate_key(data_dir / "keys" / f"{role}.key")
            for role in ("snapshot", "timestamp", ROLLOUTS)
        }
        os.chmod(data_dir / "keys", 0o700)

        root = Root(expires=expiry.expires("root", now), consistent_snapshot=True)
        for signer in roots:
            root.add_key(signer.public_key, Root.type)
        root.roles[Root.type].threshold = root_threshold
        root.add_key(targets_key.public_key, Targets.type)
        root.add_key(online["snapshot"].public_key, Snapshot.type)
        root.add_key(online["timestamp"].public_key, Timestamp.type)
        targets = Targets(expires=expiry.expires("targets", now))
        targets.delegations = Delegations(
            keys={},
            roles={ROLLOUTS: DelegatedRole(ROLLOUTS, [], 1, terminating=True, paths=[f"{ROLLOUTS}/*/*"])},
        )
        targets.add_key(online[ROLLOUTS].public_key, ROLLOUTS)
        rollouts = Targets(expires=expiry.expires(ROLLOUTS, now))

        atomic_write(data_dir / CONFIG_FILE, (json.dumps(config, indent=2, sort_keys=True) + "\n").encode())
        repo = cls(data_dir, clock=clock)
        repo._write_root(Metadata(root), roots)
        repo._write(Metadata(targets), Targets.type, [targets_key])
        repo._write(Metadata(rollouts), ROLLOUTS, [online[ROLLOUTS]])
        repo._commit(now, force_snapshot=True)
    return repo


def rotate_root(
    repo: TufRepository,
    new_root_keys_dir: str | Path,
    *,
    old_offline_keys_dir: str | Path,
    threshold: int,
    key_count: int | None,
) -> int:
    """`TufRepository.rotate_root` (see there): root N+1 signed by the old and the new root keys."""
    old_dir, new_dir = Path(old_offline_keys_dir), Path(new_root_keys_dir)
    if new_dir.resolve().is_relative_to(repo.data_dir.resolve()):
        raise RepositoryError(f"{new_dir} is inside the data dir; keep root keys offline")
    with repo._lock():
        now = repo._clock()
        current: Metadata[Root] = repo._load(Root.type)
        role = current.signed.roles[Root.type]
        old = [s for s in signers_in(old_dir, "root-*.key") if s.public_key.keyid in role.keyids]
        if len(old) < role.threshold:
            raise RepositoryError(
                f"{old_dir} holds {len(old)} of the current root keys; {role.threshold} are needed to sign"
            )
        new = signers_in(new_dir, "root-*.key") if new_dir.is_dir() else []
        if not new:
            count = key_count if key_count is not None else threshold
            new = [generate_key(new_dir / f"root-{i + 1}.key") for i in range(count)]
        if not 1 <= threshold <= len(new):
            raise RepositoryError(f"threshold {threshold} needs 1..{len(new)} new root keys")
        if not (new_dir / "targets.key").exists():
            source = old_dir / "targets.key"
            load_signer(source)  # refuse to copy something that is not a private key
            fd = os.open(new_dir / "targets.key", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as handle:
                handle.write(source.read_bytes())
                handle.flush()
                os.fsync(handle.fileno())
        root = current.signed
        for keyid in list(role.keyids):
            root.revoke_key(keyid, Root.type)
        for signer in new:
            root.add_key(signer.public_key, Root.type)
        root.roles[Root.type].threshold = threshold
        repo._bump(current, Root.type, now)
        repo._write_root(current, [*old, *new])
        return root.version


def read_public_pem(source: str | Path | bytes) -> str:
    """A public key (a PEM file's path or its bytes) as PEM text.

    Raises:
        RepositoryError: not a readable public key.
    """
    from signing.errors import KeyFileError
    from signing.keys import load_public_key, public_pem

    try:
        key = load_public_key(source if isinstance(source, bytes) else Path(source))
    except KeyFileError as e:
        raise RepositoryError(str(e)) from e
    return public_pem(key.key).decode()
