"""Publishing deltas next to a bundle: which earlier releases, encode, store, describe (`edgekit publish`).

Each delta is a top-level target `deltas/<name>/<version>/<base bundle id>.ekd` signed by the offline
targets key with the bundle, its custom field `delta` naming what it rebuilds (target path, SHA-256,
length) and from what (`base`: the bundle id a device has active). The encoding is `edgekit.delta`.
"""

from __future__ import annotations

import contextlib
import os
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tuf.api.metadata import Metadata, TargetFile, Targets

from device_runtime.delta import delta_target_path
from device_runtime.errors import DeviceRuntimeError
from edgekit.delta import canonical_archive, encode_delta, rebuilds_exactly
from signing.errors import SigningError

if TYPE_CHECKING:
    from edgekit.server.tuf_repo import PublishedTarget, TufRepository

__all__ = ["add_deltas"]


def add_deltas(
    repo: TufRepository,
    targets: Metadata[Targets],
    path: str,
    info: TargetFile,
    custom: dict[str, Any],
    count: int,
) -> Iterator[PublishedTarget]:
    """Encode and store the deltas to the bundle `path` (just stored, described by `info` and `custom`)
    from the `count` latest other releases of the model in `targets`, adding each to `targets`.

    Called by `TufRepository.add_bundle` under its lock, before it signs `targets`. A delta that is not
    smaller than the bundle, or that does not rebuild it exactly with the device's decoder, is skipped.
    """
    name = custom["name"]
    earlier = [
        (t.custom.get("release_counter", 0), p, t)
        for p, t in targets.signed.targets.items()
        if p.startswith(f"bundles/{name}/")
        and isinstance(t.custom, dict)
        and t.custom.get("bundle_id") != custom["bundle_id"]
    ]
    earlier.sort(key=lambda item: (item[0], item[1]), reverse=True)
    target = repo._stored(path, info).read_bytes()
    for _, old_path, old in earlier[: max(count, 0)]:
        base_id = old.custom["bundle_id"]
        base = repo._stored(old_path, old)
        try:
            delta, stats = encode_delta(canonical_archive(base), target)
            # Never sign a delta the device's own decoder would not turn into exactly this bundle.
            usable = len(delta) < info.length and rebuilds_exactly(base, delta, target)
        except (OSError, ValueError, MemoryError, tarfile.TarError, SigningError, DeviceRuntimeError):
            usable = False  # a base that cannot be read or encoded: devices on it take the full bundle
        if not usable:
            continue
        delta_path = delta_target_path(name, custom["version"], base_id)
        about = {
            "target": path,
            "target_sha256": info.hashes["sha256"],
            "target_length": info.length,
            "base": base_id,
            "base_version": old.custom.get("version"),
            "encoding": stats.chosen,
        }
        fd, temp_name = tempfile.mkstemp(dir=repo.targets_dir, prefix=".incoming-", suffix=".ekd")
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(delta)
                out.flush()
                os.fsync(out.fileno())
            delta_info = repo._store_target(delta_path, Path(temp_name))
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temp_name)
        delta_info.unrecognized_fields["custom"] = {"delta": about}
        targets.signed.targets[delta_path] = delta_info
        digest = delta_info.hashes["sha256"]
        yield _published(delta_path, delta_info.length, digest, {"delta": about})


def _published(path: str, length: int, sha256: str, custom: dict[str, Any]) -> PublishedTarget:
    from edgekit.server.tuf_repo import PublishedTarget

    return PublishedTarget(path, length, sha256, custom)
