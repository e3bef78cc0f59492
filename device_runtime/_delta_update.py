"""The updater's delta path: find, download and apply the delta from the active release (`Updater.update`).

Kept apart from `device_runtime.updater` (the TUF workflow) along the seam between "fetch the bundle" and
"fetch something that rebuilds it": `by_delta` gets the TUF look-up and the pinned download as callables,
raises `Fallback` (with a telemetry reason) for anything that stops the delta, and the updater then
downloads the full bundle. `report_transfer` records either outcome as a `download` telemetry event.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tuf.api.metadata import TargetFile

from device_runtime.delta import (
    DeltaError,
    DeltaLimits,
    SlotArchive,
    codec_available,
    delta_target_path,
    rebuild,
)
from device_runtime.errors import DeviceRuntimeError
from device_runtime.rollout_plan import Release
from device_runtime.state import is_storage_error

if TYPE_CHECKING:
    from device_runtime.updater import UpdaterConfig

__all__ = ["Fallback", "Transfer", "by_delta", "report_transfer"]


@dataclass(frozen=True)
class Transfer:
    """How a bundle was fetched: method delta | full, bytes downloaded, and why a delta was not used."""

    method: str
    bytes: int  # bytes downloaded (a delta, plus the full bundle after a fallback)
    full_bytes: int  # bytes of the full bundle
    base_bundle_id: str | None = None  # the active release a delta was built from or looked for
    fallback: str | None = None  # reason code: no-delta, delta-metadata, delta-download, delta-apply, ...
    detail: str = ""


class Fallback(Exception):
    """A delta could not be used: download the full bundle (`reason` goes to telemetry)."""

    def __init__(self, reason: str, detail: str, sent: int = 0) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail[:300]
        self.sent = sent


def report_transfer(runtime: Any, info: TargetFile, release: Release, transfer: Transfer) -> None:
    """Record the transfer in the runtime's telemetry (when it has one); never raises."""
    telemetry = getattr(runtime, "telemetry", None)
    if telemetry is None:
        return
    custom = info.custom if isinstance(info.custom, Mapping) else {}
    payload: dict[str, Any] = {
        "bundle_id": custom.get("bundle_id"),
        "method": transfer.method,
        "bytes": transfer.bytes,
        "full_bytes": transfer.full_bytes,
        "version": release.version,
    }
    if transfer.base_bundle_id is not None:
        payload["base_bundle_id"] = transfer.base_bundle_id
    if transfer.fallback is not None:
        payload["fallback"] = transfer.fallback
        payload["detail"] = transfer.detail[:300]
    with contextlib.suppress(Exception):
        telemetry.record("download", **payload)


def by_delta(
    info: TargetFile,
    release: Release,
    runtime: Any,
    base: str,
    *,
    config: UpdaterConfig,
    targetinfo: Callable[[str], TargetFile | None],
    download: Callable[[TargetFile, str], Path],
) -> tuple[Path, int]:
    """Rebuild the bundle `info` names from the active slot and its delta; (path, bytes downloaded).

    Raises:
        Fallback: anything that stops the delta; the caller downloads the full bundle.
    """
    archive_of = getattr(runtime, "active_archive", None)
    if archive_of is None or not codec_available():
        raise Fallback("no-codec", "this device cannot apply deltas (no zstandard or no slot access)")
    path = delta_target_path(config.model, release.version, base)
    try:
        delta_info = targetinfo(path)
    except DeviceRuntimeError as e:  # the updater's MetadataError, TransportError
        raise Fallback("delta-metadata", str(e)) from e
    if delta_info is None:
        raise Fallback("no-delta", f"no delta {path} is published")
    custom = delta_info.custom if isinstance(delta_info.custom, Mapping) else {}
    about: Mapping[str, Any] = custom["delta"] if isinstance(custom.get("delta"), Mapping) else {}
    found = tuple(about.get(k) for k in ("target", "target_sha256", "target_length", "base"))
    expected = (info.path, info.hashes.get("sha256"), info.length, base)
    if found != expected:
        raise Fallback("delta-metadata", f"{path} describes {found}, expected {expected}")
    if delta_info.length >= info.length:
        raise Fallback("delta-metadata", f"{path} is {delta_info.length} B, not below the bundle's")
    try:
        delta_file = download(delta_info, ".ekd")
    except DeviceRuntimeError as e:  # the updater's MetadataError, TransportError
        raise Fallback("delta-download", str(e)) from e
    sent = delta_info.length
    digest = info.hashes["sha256"]
    final = config.download_dir / f"{digest}.ekb"
    partial = config.download_dir / f".{digest}.ekb.delta.part"
    try:
        with contextlib.suppress(FileNotFoundError):
            partial.unlink()
        try:
            opened = archive_of()
        except OSError as e:
            raise Fallback("slot-changed", f"the active slot cannot be read: {e}", sent) from e
        if opened is None or opened[0] != base:
            raise Fallback("slot-changed", "the active release changed before the rebuild", sent)
        with opened[1] as archive:
            rebuilt = _rebuild(delta_file, archive, partial, info.length, sent, config.delta_limits)
        now_active = (runtime.status().get("active") or {}).get("bundle_id")
        if now_active != base:
            raise Fallback("slot-changed", "the active release changed during the rebuild", sent)
        if rebuilt != digest:
            # A delta only moves bytes: what it builds must be exactly the bundle TUF pins.
            raise Fallback("delta-hash", f"rebuilt SHA-256 {rebuilt}, TUF pins {digest}", sent)
        os.replace(partial, final)
    except BaseException:
        with contextlib.suppress(OSError):
            partial.unlink()
        raise
    finally:
        with contextlib.suppress(OSError):
            delta_file.unlink()
    return final, sent


def _rebuild(
    delta_file: Path, archive: SlotArchive, partial: Path, length: int, sent: int, limits: DeltaLimits
) -> str:
    try:
        return rebuild(delta_file, archive, partial, target_length=length, limits=limits)
    except DeltaError as e:
        raise Fallback(e.reason, str(e), sent) from e
    except OSError as e:
        reason = "delta-storage" if is_storage_error(e) else "delta-io"
        raise Fallback(reason, str(e), sent) from e
    except (ValueError, MemoryError) as e:  # numpy or zstandard on input they refuse
        raise Fallback("delta-apply", f"{type(e).__name__}: {e}"[:300], sent) from e
