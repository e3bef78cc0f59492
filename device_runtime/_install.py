"""The runtime's install path: verify a bundle into a fresh directory, self-test it on this device's
engine, and activate it by an atomic swap of the inactive slot and the state pointer.

`Runtime` inherits these methods (`InstallControl`); a shadow trial stages a bundle through the same checks
(`_verified_incoming`, `device_runtime._shadow_control`). Every refusal is typed (`install_error`): a
`VerificationError` (do not trust) or an `InstallError` with a reason code (trusted, not installable here),
recorded in telemetry; the current model keeps serving.
"""

from __future__ import annotations

import os
import shutil
import threading
import uuid
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO, TYPE_CHECKING

from device_runtime._loading import Loaded, check_engine_version, load_model, self_test
from device_runtime.config import RuntimeConfig
from device_runtime.errors import DeviceRuntimeError, EngineError, InputError, InstallError, SpecError
from device_runtime.state import SlotRecord, State, TrialState, is_storage_error
from device_runtime.telemetry import TelemetryQueue
from signing.atomic import fsync_dir
from signing.errors import PolicyError, VerificationError
from signing.keys import PublicKey
from signing.manifest import BundleManifest
from signing.verify import VerifiedBundle, VerifyPolicy, verify_ekb

__all__ = ["InstallControl", "InstallResult", "install_error", "reason_code"]

# Errors that malformed signed content can raise from the parsers it reaches (numpy, json, the engines'
# wrappers); after the typed checks these are a last line of defence: refused as "malformed", never raised.
_MALFORMED = (ValueError, TypeError, KeyError, IndexError, MemoryError, OverflowError, RecursionError)


@dataclass(frozen=True)
class InstallResult:
    """What an install did."""

    name: str
    version: str
    bundle_id: str
    slot: str
    self_test: dict[str, float]
    already_active: bool = False


def reason_code(error: BaseException) -> str:
    """A stable reason code for telemetry."""
    if isinstance(error, PolicyError | InstallError):
        return error.reason
    if isinstance(error, VerificationError):
        return type(error).__name__.removesuffix("Error").lower()
    return type(error).__name__


def install_error(error: BaseException) -> VerificationError | InstallError | None:
    """The typed error an install raises for `error` (None: not ours to translate, e.g. KeyboardInterrupt).

    Whatever a signed bundle holds, a refusal is a VerificationError (do not trust) or an InstallError with
    a reason code (trusted but not installable here); never a raw parser, numpy or OS error.
    """
    if isinstance(error, VerificationError | InstallError):
        return error
    if isinstance(error, OSError):
        reason = "storage" if is_storage_error(error) else "io"
        return InstallError(f"cannot read or write the bundle ({reason}): {error}", reason=reason)
    if isinstance(error, SpecError):
        return InstallError(f"the bundle's preprocessing spec is invalid: {error}", reason="spec")
    if isinstance(error, EngineError):
        return InstallError(f"the engine cannot load the bundle's model: {error}", reason="engine")
    if isinstance(error, InputError):
        return InstallError(f"the golden inputs do not fit the model: {error}", reason="self-test")
    if isinstance(error, DeviceRuntimeError):
        return InstallError(str(error), reason=reason_code(error))
    if isinstance(error, _MALFORMED | UnicodeError):
        text = f"{type(error).__name__}: {error}"[:300]
        return InstallError(f"the bundle's signed contents are malformed ({text})", reason="malformed")
    if isinstance(error, Exception):
        text = f"{type(error).__name__}: {error}"[:300]
        return InstallError(f"the install failed unexpectedly ({text})", reason="internal")
    return None


class InstallControl:
    """Install methods of `Runtime` (see the module docstring). Not used on its own."""

    # Provided by Runtime.
    _config: RuntimeConfig
    _root: Path
    _lock: threading.RLock
    _state: State
    _keys: list[PublicKey]
    _loaded: Loaded | None
    _manifests: dict[str, BundleManifest]
    telemetry: TelemetryQueue

    if TYPE_CHECKING:  # pragma: no cover - Runtime's (and ShadowControl's) methods

        def _retry_persist(self) -> None: ...
        def _policy(self) -> VerifyPolicy: ...
        def _slot_dir(self, slot: str) -> Path: ...
        def _write(self, state: State) -> None: ...
        def _release_shadow_slot(self, slot: str) -> None: ...

    def install(self, source: str | Path | IO[bytes]) -> InstallResult:
        """Verify, extract into the inactive slot, self-test on this engine, then activate atomically.

        Raises:
            VerificationError: the bundle must not be trusted (including rollback and other hardware).
            InstallError: verified but not installable here, with a `reason` code: self-test, golden,
                labels, spec, engine, malformed (signed contents that do not parse), runtime-requirement,
                previously-reverted, storage (the disk is full), io. Recorded in telemetry; the current
                model keeps serving.
        """
        with self._lock:
            self._retry_persist()
            now = self._config.clock()
            incoming = self._root / "slots" / f".incoming-{uuid.uuid4().hex}"
            verified, loaded, quality = self._verified_incoming(source, incoming, "install")
            if loaded is None:  # the active release: nothing to do
                shutil.rmtree(incoming, ignore_errors=True)
                assert self._state.active is not None
                return InstallResult(
                    verified.manifest.name,
                    verified.manifest.version,
                    verified.payload_sha256,
                    self._state.active.slot,
                    {},
                    already_active=True,
                )
            return self._activate(incoming, verified, loaded, quality, now)

    def _verified_incoming(
        self, source: str | Path | IO[bytes], incoming: Path, what: str
    ) -> tuple[VerifiedBundle, Loaded | None, dict[str, float]]:
        """Verify `source` into `incoming` and self-test it: the checks of every install (and of a shadow,
        `what` "shadow"). The loaded model is None when the bundle is the active release (not self-tested).

        Raises:
            VerificationError, InstallError: as `install`, recorded in telemetry; `incoming` is removed.
        """
        try:
            verified = verify_ekb(source, self._keys, destination=incoming, policy=self._policy())
            self._check_installable(verified, self._state)
            active = self._state.active
            if active is not None and active.bundle_id == verified.payload_sha256:
                return verified, None, {}
            loaded = load_model(incoming, verified.manifest, None, threads=self._config.engine_threads)
            quality = self_test(incoming, loaded)
        except BaseException as e:
            shutil.rmtree(incoming, ignore_errors=True)
            typed = install_error(e)
            if typed is None:
                raise
            detail = str(typed) if what == "install" else f"{what}: {typed}"
            self.telemetry.record(
                "install", outcome="refused", reason=reason_code(typed), detail=detail[:300]
            )
            if typed is e:
                raise
            raise typed from e
        return verified, loaded, quality

    def _check_installable(self, verified: VerifiedBundle, state: State) -> None:
        manifest = verified.manifest
        floor = state.floors.get(manifest.name, 0)
        if state.active is not None and state.active.name == manifest.name:
            floor = max(floor, state.active.release_counter if state.trial is None else floor)
        if manifest.release_counter < floor:
            raise PolicyError(
                f"release_counter {manifest.release_counter} of {manifest.name} {manifest.version} is below "
                f"this device's floor {floor}: a validly signed older release is refused (rollback)",
                reason="rollback",
            )
        if verified.payload_sha256 in state.bad_releases:
            raise InstallError(
                f"{manifest.name} {manifest.version} was reverted on this device before; "
                "publish a new release",
                reason="previously-reverted",
            )
        check_engine_version(manifest)

    def _activate(
        self, incoming: Path, verified: VerifiedBundle, loaded: Loaded, quality: dict[str, float], now: float
    ) -> InstallResult:
        state = self._state
        target = "b" if state.active is not None and state.active.slot == "a" else "a"
        self._release_shadow_slot(target)  # a shadow staged there (or running) ends with this install
        try:
            if state.previous is not None and state.previous.slot == target:  # its slot is about to be reused
                self._write(replace(state, previous=None))
            shutil.rmtree(self._slot_dir(target), ignore_errors=True)
            os.replace(incoming, self._slot_dir(target))
            fsync_dir(self._root / "slots")
        except OSError as e:
            shutil.rmtree(incoming, ignore_errors=True)
            self.telemetry.record("install", outcome="failed", reason="storage", detail=str(e)[:300])
            raise InstallError(f"cannot write the slot: {e}", reason="storage") from e
        manifest = verified.manifest
        record = SlotRecord(
            target, verified.payload_sha256, manifest.name, manifest.version, manifest.release_counter
        )
        self._manifests[target] = manifest
        new_state = replace(
            self._state, previous=self._state.active, active=record, trial=TrialState(started=now)
        )
        try:
            self._write(new_state.with_event(now, "activated", version=manifest.version, slot=target))  # swap
        except OSError as e:  # not swapped: state.json still names the old model, whose slot is untouched
            shutil.rmtree(self._slot_dir(target), ignore_errors=True)
            self._manifests.pop(target, None)
            self.telemetry.record("install", outcome="failed", reason="storage", detail=str(e)[:300])
            raise InstallError(
                f"cannot write the state to activate the new slot: {e}", reason="storage"
            ) from e
        loaded.record = record
        self._loaded = loaded
        self.telemetry.record(
            "install",
            outcome="activated",
            bundle_id=record.bundle_id,
            version=record.version,
            model_sha256=manifest.files[manifest.entrypoint].sha256,
            self_test_sqnr_db=quality,
        )
        return InstallResult(manifest.name, manifest.version, record.bundle_id, target, quality)
