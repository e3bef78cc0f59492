"""The runtime's side of shadow trials: stage a shadow bundle in the inactive slot, run it, report, recover.

`Runtime` inherits these methods (`ShadowControl`); the running and comparing is `device_runtime.shadow`.

- `stage_shadow(source)` verifies a bundle exactly as `install` does (signatures, hardware, release floor,
  previously reverted, engine version, golden self-test on this engine) and places it in the INACTIVE slot
  without activating it: the active model keeps serving, state.json does not name it, and a later install of
  the same release is the normal install (it replaces that slot). A verified previous model in that slot is
  given up for it, as an install would, but never while the active model is still in trial (the previous
  model is then its fallback). The staged slot is recorded in ``shadow.json``; a store whose
  state.json is lost drops the staged slot before rebuilding its state from the slots, so a shadow is never
  mistaken for a release to serve.
- `shadow(bundle_id)` runs an already present bundle in shadow of the active one: the active bundle itself
  (self-shadow: a second engine on the active slot, no install) or the staged one. `stop_shadow()` ends it.
- Strikes (failures, timeouts, process deaths during a shadow run) are persisted per shadow bundle; at
  `RuntimeConfig.max_shadow_strikes` the bundle is not shadowed again on this device (`status()["shadow"]
  ["struck"]`).
- One ``shadow`` telemetry event per reporting window (the health windows), and on close.

Nothing here can stop the active model from serving: every failure is counted (`status()["shadow"]
["failures"]`) or raised from the shadow call itself, never from `predict`.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import threading
import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from device_runtime._loading import Loaded, load_model
from device_runtime.config import RuntimeConfig
from device_runtime.errors import InstallError, NoModelError
from device_runtime.state import SlotRecord, State, atomic_write
from device_runtime.telemetry import TelemetryQueue
from signing.atomic import fsync_dir
from signing.manifest import BundleManifest
from signing.verify import VerifiedBundle

__all__ = ["ShadowControl", "ShadowRecord", "load_record", "save_record"]

_DEFAULT_MIN_SQNR_DB = 30.0  # dB: the golden default, for a bundle whose tolerance cannot be read
RECORD_SCHEMA = "edgekit.device-shadow/v1"
MAX_STRIKES_REMEMBERED = 16  # bundles whose shadow strikes shadow.json keeps


# ---- the persisted record (shadow.json): the staged bundle and the strikes per shadow bundle -----------
@dataclass(frozen=True)
class ShadowRecord:
    """What ``shadow.json`` holds: the staged bundle (slot, bundle id, version) and strikes per bundle."""

    staged: tuple[str, str, str] | None = None  # (slot, bundle_id, version) in the inactive slot
    strikes: dict[str, int] = field(default_factory=dict)  # shadow bundle_id -> strikes on this device


def load_record(path: Path) -> ShadowRecord:
    """The record at `path`; an empty one when it is absent or unreadable (shadowing is never needed to
    serve; the updater stages again)."""
    try:
        document = json.loads(path.read_bytes())
        if document.get("schema") != RECORD_SCHEMA:
            return ShadowRecord()
        staged = document.get("staged")
        strikes = {str(k): int(v) for k, v in document.get("strikes", {}).items()}
        return ShadowRecord(
            None if staged is None else (str(staged[0]), str(staged[1]), str(staged[2])),
            dict(list(strikes.items())[-MAX_STRIKES_REMEMBERED:]),
        )
    except (OSError, ValueError, TypeError, KeyError, IndexError, AttributeError):
        return ShadowRecord()


def save_record(path: Path, record: ShadowRecord) -> None:
    """Persist the record atomically.

    Raises:
        OSError: the store cannot be written.
    """
    strikes = dict(list(record.strikes.items())[-MAX_STRIKES_REMEMBERED:])
    document = {
        "schema": RECORD_SCHEMA,
        "staged": record.staged,
        "strikes": strikes,
    }
    atomic_write(path, json.dumps(document, sort_keys=True).encode() + b"\n")


# ---- the runtime's methods -----------------------------------------------------------------------------


class ShadowControl:
    """Shadow-trial methods of `Runtime` (see the module docstring). Not used on its own."""

    # Provided by Runtime.
    _config: RuntimeConfig
    _root: Path
    _lock: threading.RLock
    _state: State
    _manifests: dict[str, BundleManifest]
    telemetry: TelemetryQueue

    if TYPE_CHECKING:  # pragma: no cover - Runtime's methods

        def _slot_dir(self, slot: str) -> Path: ...
        def _write(self, state: State) -> None: ...
        def _verify_slot(self, slot: str) -> SlotRecord | None: ...
        def _verified_incoming(
            self, source: str | Path | IO[bytes], incoming: Path, what: str
        ) -> tuple[VerifiedBundle, Loaded | None, dict[str, float]]: ...

    # -- state ---------------------------------------------------------------------------------------
    def _init_shadow(self) -> None:
        self._shadow: Any = None  # the ShadowRunner while shadowing
        self._shadow_path = self._root / "shadow.json"
        self._shadow_record = load_record(self._shadow_path)
        self._shadow_record_lock = threading.RLock()  # strikes arrive from the worker thread too
        self._shadow_failures = 0  # hook, report or record-write failures (never raised to the app)

    def _save_shadow_record(self, record: Any) -> None:
        with self._shadow_record_lock:
            self._shadow_record = record
            try:
                save_record(self._shadow_path, record)
            except OSError:  # a full disk: kept in memory, written with the next change
                self._shadow_failures += 1

    def _shadow_strike(self, bundle_id: str, strikes: int) -> None:
        with self._shadow_record_lock:
            record = self._shadow_record
            counts = {k: v for k, v in record.strikes.items() if k != bundle_id}
            counts[bundle_id] = max(strikes, record.strikes.get(bundle_id, 0))
            self._save_shadow_record(replace(record, strikes=counts))

    def _recover_shadow(self, state_lost: bool) -> tuple[str, ...]:
        """Start-up: charge shadow runs in flight at the last death to their bundles (crash event and a
        strike); with state.json lost, drop the staged slot first. Returns the bundles charged."""
        from device_runtime._recovery import died_in_shadow_run

        staged = self._shadow_record.staged
        if staged is not None and (state_lost or not self._slot_dir(staged[0]).is_dir()):
            if state_lost:
                shutil.rmtree(self._slot_dir(staged[0]), ignore_errors=True)
            self._save_shadow_record(replace(self._shadow_record, staged=None))
        crashed = died_in_shadow_run(self._root)
        for bundle_id in crashed:
            self.telemetry.record("crash", bundle_id=bundle_id, during="shadow")
            self._shadow_strike(bundle_id, self._shadow_record.strikes.get(bundle_id, 0) + 1)
        return crashed

    def _release_shadow_slot(self, slot: str) -> None:
        """An install is about to replace `slot`: a shadow staged there (or any shadow of the model about to
        be replaced) stops."""
        staged = self._shadow_record.staged
        self.stop_shadow()
        if staged is not None and staged[0] == slot:
            self._manifests.pop(slot, None)
            self._save_shadow_record(replace(self._shadow_record, staged=None))

    def _struck(self, bundle_id: str) -> bool:
        return self._shadow_record.strikes.get(bundle_id, 0) >= self._config.max_shadow_strikes

    # -- public API ----------------------------------------------------------------------------------
    def stage_shadow(
        self, source: str | Path | IO[bytes], *, sample: float = 0.1, max_cpu: float = 0.2
    ) -> Any:
        """Verify `source` exactly as `install` does, place it in the inactive slot WITHOUT activating it,
        and run it in shadow of the active model (`sample`, `max_cpu`: see `device_runtime.shadow`).

        A bundle that is the active release is shadowed as itself (self-shadow), nothing is installed.

        Returns:
            the `InstallResult` (``slot``: where it is staged; ``already_active`` for a self-shadow).

        Raises:
            VerificationError, InstallError: as `install` (recorded in telemetry); InstallError reason
                "shadow-struck" when this device already gave up shadowing the bundle, "no-model" when
                nothing is active to shadow, "in-trial" when the active model is still in trial and its
                fallback holds the inactive slot (a trial failure must still find it). The active model
                keeps serving either way.
        """
        from device_runtime.runtime import InstallResult
        from device_runtime.shadow import ShadowSettings

        settings = ShadowSettings(sample, max_cpu)
        with self._lock:
            active = self._state.active
            if active is None:
                raise InstallError("nothing is active to run a shadow next to; install a model", "no-model")
            incoming = self._root / "slots" / f".incoming-{uuid.uuid4().hex}"
            verified, _, quality = self._verified_incoming(source, incoming, "shadow")
            manifest, bundle_id = verified.manifest, verified.payload_sha256
            if bundle_id == active.bundle_id or self._struck(bundle_id):
                shutil.rmtree(incoming, ignore_errors=True)
                if bundle_id != active.bundle_id:
                    raise InstallError(
                        f"{manifest.name} {manifest.version} failed in shadow "
                        f"{self._config.max_shadow_strikes} times on this device; it is not shadowed again",
                        reason="shadow-struck",
                    )
                self.shadow(bundle_id, sample=settings.sample, max_cpu=settings.max_cpu)
                return InstallResult(manifest.name, manifest.version, bundle_id, active.slot, {}, True)
            target = "b" if active.slot == "a" else "a"
            if self._state.trial is not None and self._state.previous is not None:
                shutil.rmtree(incoming, ignore_errors=True)
                raise InstallError(
                    f"{active.name} {active.version} is still in trial and its fallback, "
                    f"{self._state.previous.version}, holds the inactive slot; stage the shadow after the "
                    "trial commits",
                    reason="in-trial",
                )
            try:
                self._release_shadow_slot(target)
                if self._state.previous is not None and self._state.previous.slot == target:
                    self._write(replace(self._state, previous=None))  # its slot is about to be reused
                shutil.rmtree(self._slot_dir(target), ignore_errors=True)
                os.replace(incoming, self._slot_dir(target))
                fsync_dir(self._root / "slots")
            except OSError as e:
                shutil.rmtree(incoming, ignore_errors=True)
                self.telemetry.record(
                    "install", outcome="failed", reason="storage", detail=f"shadow: {e}"[:300]
                )
                raise InstallError(f"cannot write the slot for the shadow: {e}", reason="storage") from e
            self._manifests[target] = manifest
            self._save_shadow_record(
                replace(self._shadow_record, staged=(target, bundle_id, manifest.version))
            )
            self.shadow(bundle_id, sample=settings.sample, max_cpu=settings.max_cpu)
            return InstallResult(manifest.name, manifest.version, bundle_id, target, quality)

    def shadow(self, bundle_id: str, *, sample: float = 0.1, max_cpu: float = 0.2) -> bool:
        """Run `bundle_id` in shadow of the active model when it is here: the active bundle (self-shadow) or
        the one staged in the inactive slot. False when it is neither, or when this device gave up
        shadowing it (`status()["shadow"]["struck"]`): then nothing runs.

        Raises:
            ValueError: `sample` or `max_cpu` outside (0, 1].
        """
        from device_runtime.shadow import ShadowSettings

        settings = ShadowSettings(sample, max_cpu)
        with self._lock:
            active = self._state.active
            runner = self._shadow
            if active is None or self._struck(bundle_id):
                self.stop_shadow()
                return False
            if (
                runner is not None
                and runner.bundle_id == bundle_id
                and runner.served_bundle_id == active.bundle_id
            ):
                runner.settings = settings  # the plan may change the share; the worker reads it per input
                return not runner.stopped
            staged = self._shadow_record.staged
            if bundle_id == active.bundle_id:
                slot = active.slot
            elif staged is not None and staged[1] == bundle_id:
                slot = staged[0]
            else:
                self.stop_shadow()
                return False
            self.stop_shadow()
            try:
                self._shadow = self._start_runner(slot, bundle_id, active.bundle_id, settings)
            except Exception as e:  # a staged slot that no longer verifies or loads: not shadowed
                self._shadow_failures += 1
                if slot != active.slot:
                    self._save_shadow_record(replace(self._shadow_record, staged=None))
                self.telemetry.record(
                    "slot-verify-failed", slot=slot, reason="shadow", detail=f"{type(e).__name__}: {e}"[:300]
                )
                return False
            return True

    def _start_runner(self, slot: str, bundle_id: str, served: str, settings: Any) -> Any:
        from device_runtime.errors import SpecError
        from device_runtime.golden import golden_tolerance
        from device_runtime.shadow import ShadowRunner

        directory = self._slot_dir(slot)
        manifest = self._manifests.get(slot)
        if manifest is None:  # a staged slot after a restart: verified again before anything is loaded
            verified = self._verify_slot(slot)
            if verified is None or verified.bundle_id != bundle_id:
                raise NoModelError(f"slot {slot} no longer holds the verified bundle {bundle_id[:12]}")
            manifest = self._manifests[slot]
        # Every file load_model reads is checked against this (verified) manifest's digests.
        record = SlotRecord(slot, bundle_id, manifest.name, manifest.version, manifest.release_counter)
        loaded = load_model(directory, manifest, record, threads=1)  # one thread: a bounded CPU share
        try:
            min_sqnr_db = golden_tolerance(directory).min_sqnr_db
        except SpecError:
            min_sqnr_db = _DEFAULT_MIN_SQNR_DB
        return ShadowRunner(
            loaded.engine,
            loaded.spec,
            bundle_id=bundle_id,
            version=manifest.version,
            served_bundle_id=served,
            settings=settings,
            min_sqnr_db=min_sqnr_db,
            deadline_s=self._config.shadow_deadline_seconds,
            max_strikes=self._config.max_shadow_strikes,
            strikes=self._shadow_record.strikes.get(bundle_id, 0),
            marker_dir=self._root,
            on_strike=lambda strikes: self._shadow_strike(bundle_id, strikes),
            clock=self._config.clock,
        )

    def stop_shadow(self) -> None:
        """Stop shadowing (its last window is reported); a staged bundle stays in the inactive slot."""
        with self._lock:
            runner, self._shadow = self._shadow, None
            if runner is None:
                return
            with contextlib.suppress(Exception):
                self._report_shadow(runner, self._config.clock())
            runner.close()

    def flush_shadow(self) -> None:
        """Report the open shadow window now (one ``shadow`` telemetry event; also on close)."""
        with self._lock:
            if self._shadow is not None:
                try:
                    self._report_shadow(self._shadow, self._config.clock())
                except Exception:
                    self._shadow_failures += 1

    def shadow_status(self) -> dict[str, Any]:
        """What `status()["shadow"]` shows: the staged bundle, the running shadow's totals, strikes."""
        with self._shadow_record_lock:
            record = self._shadow_record
        staged = record.staged
        runner = self._shadow
        return {
            "staged": None
            if staged is None
            else {"slot": staged[0], "bundle_id": staged[1], "version": staged[2]},
            "running": None if runner is None else runner.status(),
            "strikes": dict(record.strikes),
            "struck": sorted(k for k, v in record.strikes.items() if v >= self._config.max_shadow_strikes),
            "failures": self._shadow_failures,
        }

    # -- the predict hook ----------------------------------------------------------------------------
    def _offer_shadow(self, loaded: Loaded, feeds: dict[str, Any], result: Any) -> None:
        """`predict`'s one shadow call (under the runtime lock, after the served result is final); never
        raises and never waits for the shadow."""
        runner = self._shadow
        if runner.served_bundle_id != loaded.record.bundle_id:
            return  # the served model changed since the shadow started: the updater restarts it
        try:
            runner.offer(feeds, result.outputs, loaded.spec, result.latency_ms)
            now = self._config.clock()
            if runner.due(now, self._config.health_every, self._config.health_seconds):
                self._report_shadow(runner, now)
        except Exception:
            self._shadow_failures += 1

    def _report_shadow(self, runner: Any, now: float) -> None:
        payload = runner.drain(now)
        if payload is not None:
            self.telemetry.record("shadow", **payload)
