"""The Runtime an app embeds: install into A/B slots, self-test, trial and local revert, predict, telemetry.

    rt = Runtime(RuntimeConfig(store_dir=..., trusted_keys=[...], device_id=..., hardware_id=...))
    rt.install("model-1.2.0.ekb")      # verify -> inactive slot -> golden self-test -> atomic activate
    result = rt.predict(image)         # preprocessing spec -> engine -> outputs, labels, top-k
    rt.feedback(result.prediction_id, true_label)
    rt.status()
    rt.stage_shadow("model-1.3.0.ekb")  # verify -> inactive slot, NOT activated -> run in shadow, compare

Store layout: `slots/a`, `slots/b` (verified private copies), `state.json` (atomic pointer), `reverted.json`
(the journal of releases reverted here, written before the state.json of a revert), `inflight` (marker
written around trial inferences), `shadow.json` and `shadow-inflight-*` (shadow trials:
`device_runtime._shadow_control`), `telemetry.db`, `lock` (held by the one process using the store).
Every persisted step is write-temp, fsync, rename; at start the runtime removes half-finished installs,
turns an in-flight marker into a strike, and re-verifies the active slot, so a kill at any instant leaves a
verified model that loads. The previous model keeps serving until the pointer swap and after any failure.
The start-up steps live in `device_runtime._recovery`; the install path (verify, self-test, activate) in
`device_runtime._install`; loading a slot's verified files and the install-time self-test in
`device_runtime._loading`.

A full disk never stops a verified model from serving: recovery, trial bookkeeping and reverts keep their
state in memory when it cannot be written and persist it later (`status()["storage"]` counts the failed
writes); a trial inference whose in-flight marker cannot be written runs without it (counted). Installing
is what needs space: it fails with `InstallError` (reason "storage") and the current model keeps serving.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from device_runtime._install import InstallControl, InstallResult, reason_code
from device_runtime._loading import Loaded, load_model
from device_runtime._predict_path import PredictPath, interpret_outputs
from device_runtime._recovery import (
    apply_reverted,
    died_in_trial_inference,
    open_telemetry,
    rebuild_state,
    remove_unfinished_installs,
    verify_slots,
)
from device_runtime._shadow_control import ShadowControl
from device_runtime.config import RuntimeConfig
from device_runtime.delta import SlotArchive
from device_runtime.errors import EngineError, InputError, NoModelError
from device_runtime.state import (
    SlotRecord,
    State,
    StoreLock,
    atomic_write,
    load_reverted,
    load_state,
    merge_bad,
    save_reverted,
    save_state,
)
from signing.archive import member_order
from signing.errors import VerificationError
from signing.keys import PublicKey, load_public_key
from signing.manifest import SIGNATURE_FILE, BundleManifest
from signing.verify import VerifyPolicy, verify_directory

__all__ = ["InstallResult", "PredictionResult", "Runtime", "interpret_outputs"]

FEEDBACK_MEMORY = 1000  # predictions remembered for feedback
PERSIST_RETRY_SECONDS = 5.0  # seconds between attempts to persist a state a full disk refused


@dataclass(frozen=True, slots=True)  # slots: built on every predict
class PredictionResult:
    """One prediction: raw outputs by name, top-k of the first classification output, provenance, and
    ``decoded``: every other declared output (detection, segmentation, sequence, embedding, regression)
    decoded as its role by name (:func:`device_runtime.decode.decode_output`)."""

    prediction_id: str
    outputs: dict[str, Any]
    top_k: list[tuple[str | int, float]]
    model: str
    version: str
    bundle_id: str
    latency_ms: float
    top_index: int | None = None  # class index of the top-1 prediction (None for non-classifiers)
    decoded: dict[str, dict[str, Any]] = field(default_factory=dict)


def _health_monitor(config: RuntimeConfig) -> Any:
    if not config.health:
        return None
    from device_runtime.health import HealthMonitor

    return HealthMonitor(every=config.health_every, seconds=config.health_seconds)


class Runtime(InstallControl, ShadowControl):
    """One model on one device, with A/B slots. Thread-safe; one Runtime per store directory.

    Raises:
        StoreLockedError: another process (or another open Runtime) uses this store.
    """

    def __init__(self, config: RuntimeConfig) -> None:
        self._config = config
        self._root = config.store_dir
        self._marker_path = self._root / "inflight"  # built once: predict is a hot path
        self._marker_name = str(self._marker_path)
        self._prediction_prefix = uuid.uuid4().hex[:16]
        self._prediction_count = 0
        self._root.mkdir(parents=True, exist_ok=True)
        # Taken before anything is read or removed: start-up removes `.incoming-*`, which must never be
        # another process's install in progress.
        self._store_lock = StoreLock(self._root, "store")
        try:
            (self._root / "slots").mkdir(exist_ok=True)
            self._keys: list[PublicKey] = [load_public_key(k) for k in config.trusted_keys]
            self._lock = threading.RLock()
            self.telemetry = open_telemetry(self._root / "telemetry.db", config)
            self._loaded: Loaded | None = None
            self._manifests: dict[str, BundleManifest] = {}
            self._feedback: OrderedDict[str, tuple[str, Any, int | None]] = OrderedDict()
            self._journaled: tuple[str, ...] = ()  # what reverted.json holds on disk
            self._unsaved = False  # the state in memory is newer than state.json (a write failed)
            self._next_persist = 0.0  # time.monotonic() of the next retry while unsaved
            self._write_failures = 0  # state or journal writes that failed (full disk, read-only)
            self._marker_failures = 0  # trial inferences served without their in-flight marker
            self._health = _health_monitor(config)
            self._health_failures = 0  # predictions whose health sketch update failed (never raised)
            self._init_shadow()
            self._recover()
        except BaseException:
            self._store_lock.release()
            raise

    # ---- paths and persistence -------------------------------------------------------------------
    @property
    def _state_path(self) -> Path:
        return self._root / "state.json"

    @property
    def _reverted_path(self) -> Path:
        return self._root / "reverted.json"

    @property
    def _marker(self) -> Path:
        return self._marker_path

    def _slot_dir(self, slot: str) -> Path:
        return self._root / "slots" / slot

    def _write(self, state: State) -> None:
        """Persist `state` (the journal first when it names a newly reverted release), then adopt it.

        Raises:
            OSError: the store cannot be written; nothing was adopted.
        """
        if not set(state.bad_releases) <= set(self._journaled):
            journal = merge_bad(self._journaled, state.bad_releases)
            save_reverted(self._reverted_path, journal)
            self._journaled = journal
        save_state(self._state_path, state)
        self._state = state
        self._unsaved = False

    def _save(self, state: State) -> None:
        """Adopt `state` and persist it; when the store cannot be written (full disk) it stays in memory
        and is persisted later (`_retry_persist`): serving never waits for the disk."""
        try:
            self._write(state)
        except OSError:
            self._state = state
            self._unsaved = True
            self._write_failures += 1
            self._next_persist = time.monotonic() + PERSIST_RETRY_SECONDS

    def _retry_persist(self) -> None:
        if self._unsaved and time.monotonic() >= self._next_persist:
            self._save(self._state)

    def _policy(self) -> VerifyPolicy:
        return VerifyPolicy(
            threshold=self._config.threshold,
            hardware_id=self._config.hardware_id,
            max_total_bytes=self._config.max_bundle_bytes,
            fsync=True,
        )

    # ---- start-up recovery (the steps are in device_runtime._recovery) ---------------------------
    def _recover(self) -> None:
        now = self._config.clock()
        remove_unfinished_installs(self._root / "slots")
        self._journaled = load_reverted(self._reverted_path)
        loaded_state = load_state(self._state_path)
        # Before any rebuild: a shadow staged in the inactive slot must never be taken for a release to serve.
        shadow_deaths = self._recover_shadow(state_lost=loaded_state is None)
        state = loaded_state or rebuild_state(self._verify_slot, now, self._journaled)
        state = apply_reverted(state, self._journaled, now)
        if shadow_deaths:  # the death is the shadow's; a trial marker of the same death is not a strike
            self._clear_marker()
        elif died_in_trial_inference(self._marker, state):
            assert state.active is not None
            self.telemetry.record(
                "crash", bundle_id=state.active.bundle_id, version=state.active.version, during="inference"
            )
            state = self._strike(state, now, "crash: the process died during an inference")
        state = verify_slots(state, self._verify_slot, now)
        self._save(state)  # a full disk: serve from memory, persist later

    def _verify_slot(self, slot: str) -> SlotRecord | None:
        path = self._slot_dir(slot)
        if not path.is_dir():
            return None
        try:
            verified = verify_directory(path, self._keys, policy=self._policy())
        except (VerificationError, OSError) as e:
            self.telemetry.record("slot-verify-failed", slot=slot, reason=reason_code(e), detail=str(e)[:300])
            return None
        self._manifests[slot] = verified.manifest
        manifest = verified.manifest
        return SlotRecord(
            slot, verified.payload_sha256, manifest.name, manifest.version, manifest.release_counter
        )

    # ---- trial -----------------------------------------------------------------------------------
    def _strike(self, state: State, now: float, reason: str) -> State:
        assert state.trial is not None and state.active is not None
        reverted = state.active
        trial = replace(state.trial, strikes=state.trial.strikes + 1, reasons=(*state.trial.reasons, reason))
        state = replace(state, trial=trial).with_event(now, "strike", reason=reason, strikes=trial.strikes)
        if trial.strikes < self._config.max_strikes:
            return state
        self.telemetry.record(
            "trial",
            outcome="reverted",
            bundle_id=reverted.bundle_id,
            version=reverted.version,
            strikes=trial.strikes,
            reasons=list(trial.reasons),
        )
        self._loaded = None
        return replace(
            state,
            active=state.previous,
            previous=None,
            trial=None,
            bad_releases=merge_bad(state.bad_releases, (reverted.bundle_id,)),
        ).with_event(now, "reverted", version=reverted.version, reasons=list(trial.reasons))

    def _after_trial_inference(self, now: float) -> None:
        state = self._state
        assert state.trial is not None and state.active is not None
        trial = replace(state.trial, successes=state.trial.successes + 1)
        if (
            trial.successes >= self._config.trial_inferences
            and now - trial.started >= self._config.trial_seconds
        ):
            active = state.active
            floors = dict(state.floors)
            floors[active.name] = max(floors.get(active.name, 0), active.release_counter)
            self.telemetry.record(
                "trial",
                outcome="committed",
                bundle_id=active.bundle_id,
                version=active.version,
                successes=trial.successes,
            )
            self._save(
                replace(state, trial=None, floors=floors).with_event(now, "committed", version=active.version)
            )
        else:
            self._save(replace(state, trial=trial))

    # ---- loading ---------------------------------------------------------------------------------
    def _ensure_loaded(self) -> Loaded:
        state = self._state
        if state.active is None:
            raise NoModelError("no verified model is installed; call install() with a signed bundle")
        if self._loaded is not None and self._loaded.record.bundle_id == state.active.bundle_id:
            return self._loaded
        manifest = self._manifests.get(state.active.slot)
        if manifest is None:
            record = self._verify_slot(state.active.slot)
            if record is None:
                raise NoModelError("the active slot no longer verifies")
            manifest = self._manifests[state.active.slot]
        self._loaded = load_model(
            self._slot_dir(state.active.slot), manifest, state.active, threads=self._config.engine_threads
        )
        return self._loaded

    # ---- predict ---------------------------------------------------------------------------------
    def predict(self, request: Any) -> PredictionResult:
        """Preprocess `request` exactly as the bundle's spec says, run the engine, post-process.

        Raises:
            NoModelError: nothing installed.  InputError: the request does not fit (the runtime keeps
            serving).  EngineError: the model failed (in trial this is a strike).
        """
        # The hot path: what can be decided once per loaded model is in `PredictPath` (built at load).
        with self._lock:
            if self._unsaved:
                self._retry_persist()
            loaded = self._loaded
            active = self._state.active
            if loaded is None or active is None or loaded.record.bundle_id != active.bundle_id:
                loaded = self._ensure_loaded()
            path = loaded.predict_path
            if path is None:
                path = loaded.predict_path = PredictPath(loaded.spec, loaded.engine, loaded.labels)
            feeds = path.prepare(request)
            in_trial = self._state.trial is not None
            marked = in_trial and self._write_marker(loaded.record.bundle_id)
            started = time.perf_counter()
            try:
                outputs = loaded.engine.run(feeds)
            except InputError:
                if marked:
                    self._clear_marker()
                raise
            except EngineError as e:
                if marked:
                    self._clear_marker()
                self.telemetry.record_inference(loaded.record.bundle_id, loaded.record.version, 0.0, False)
                if in_trial:
                    self._save(
                        self._strike(self._state, self._config.clock(), f"inference error: {str(e)[:120]}")
                    )
                raise
            latency_ms = 1000.0 * (time.perf_counter() - started)
            if marked:
                self._clear_marker()
            record = loaded.record
            self.telemetry.record_inference(record.bundle_id, record.version, latency_ms, True)
            if in_trial and self._state.trial is not None:
                now = self._config.clock()
                if latency_ms > 1000.0 * self._config.hang_seconds:
                    self._save(self._strike(self._state, now, f"hang: {latency_ms:.0f} ms"))
                else:
                    self._after_trial_inference(now)
            result = self._result(loaded, path, outputs, latency_ms)
            if self._shadow is not None:
                self._offer_shadow(loaded, feeds, result)
            if self._health is not None:
                self._observe_health(loaded, feeds, result)
            return result

    def _observe_health(self, loaded: Loaded, feeds: dict[str, Any], result: PredictionResult) -> None:
        """Count the prediction into the bundle's health sketches; never raises (a failure is counted)."""
        health = self._health
        assert health is not None
        try:
            now = self._config.clock()
            record = loaded.record
            health.observe(record.bundle_id, record.version, loaded.health, feeds, result, now)
            if health.due(now):
                self._report_health(now)
        except Exception:
            self._health_failures += 1

    def _report_health(self, now: float) -> None:
        assert self._health is not None
        for payload in self._health.drain(now):
            self.telemetry.record("health", **payload)

    def flush_health(self) -> None:
        """Report the open health windows now, one ``health`` telemetry event per bundle (also on close)."""
        with self._lock:
            if self._health is not None:
                try:
                    self._report_health(self._config.clock())
                except Exception:
                    self._health_failures += 1

    def _write_marker(self, bundle_id: str) -> bool:
        """Write the in-flight marker; False (counted) when the disk refuses it: the inference still runs,
        only a crash during it would go unnoticed."""
        try:
            atomic_write(self._marker, json.dumps({"bundle_id": bundle_id}).encode())
        except OSError:
            self._marker_failures += 1
            return False
        return True

    def _clear_marker(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._marker_name)

    def _result(
        self, loaded: Loaded, path: PredictPath, outputs: dict[str, Any], latency_ms: float
    ) -> PredictionResult:
        # Unique per runtime instance without a syscall per call (uuid4 reads os.urandom each time).
        self._prediction_count += 1
        prediction_id = f"{self._prediction_prefix}-{self._prediction_count}"
        top, top_index, decoded = path.interpret(outputs)
        record = loaded.record
        feedback = self._feedback
        feedback[prediction_id] = (record.bundle_id, top[0][0] if top else None, top_index)
        if len(feedback) > FEEDBACK_MEMORY:
            feedback.popitem(last=False)
        return PredictionResult(
            prediction_id,
            outputs,
            top,
            record.name,
            record.version,
            record.bundle_id,
            latency_ms,
            top_index,
            decoded,
        )

    def feedback(self, prediction_id: str, true_label: str | int) -> bool:
        """Report ground truth for a recent prediction: a label string or a class index.

        Returns False when the prediction is unknown (too old, or already given feedback).
        """
        with self._lock:
            remembered = self._feedback.pop(prediction_id, None)
        if remembered is None:
            return False
        bundle_id, predicted_label, predicted_index = remembered
        if isinstance(true_label, int) and not isinstance(true_label, bool):
            correct = predicted_index == true_label
        else:
            correct = predicted_label == true_label
        self.telemetry.record("feedback", bundle_id=bundle_id, correct=bool(correct))
        return True

    # ---- status and manual revert ----------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        """Active, previous and trial state, floors, engine and telemetry queue figures."""
        with self._lock:
            state = self._state

            def describe(record: SlotRecord | None) -> dict[str, Any] | None:
                return (
                    None
                    if record is None
                    else {
                        "slot": record.slot,
                        "name": record.name,
                        "version": record.version,
                        "release_counter": record.release_counter,
                        "bundle_id": record.bundle_id,
                    }
                )

            return {
                "active": describe(state.active),
                "previous": describe(state.previous),
                "candidate": state.trial is not None,
                "trial": None
                if state.trial is None
                else {
                    "successes": state.trial.successes,
                    "strikes": state.trial.strikes,
                    "started": state.trial.started,
                    "reasons": list(state.trial.reasons),
                    "needs": {
                        "inferences": self._config.trial_inferences,
                        "seconds": self._config.trial_seconds,
                    },
                },
                "floors": dict(state.floors),
                "bad_releases": list(state.bad_releases),
                "engine": None
                if state.active is None
                else self._manifests.get(state.active.slot, None)
                and self._manifests[state.active.slot].runtime.engine,
                "telemetry": self._telemetry_stats(),
                "storage": {
                    "unsaved": self._unsaved,
                    "write_failures": self._write_failures,
                    "marker_failures": self._marker_failures,
                },
                "health": {"enabled": self._health is not None, "failures": self._health_failures},
                "shadow": self.shadow_status(),
                "history": list(state.history[-10:]),
            }

    def active_archive(self) -> tuple[str, SlotArchive] | None:
        """The active release as the `.ekb` archive it came from, read in place (delta updates).

        Returns its bundle id and a `SlotArchive` over the active slot's files (close it after use), or
        None when nothing is active. The archive is only a base for rebuilding: whatever it yields is checked
        against a TUF-pinned hash before any install.
        """
        with self._lock:
            active = self._state.active
            if active is None:
                return None
            manifest = self._manifests.get(active.slot)
            if manifest is None:
                if self._verify_slot(active.slot) is None:
                    return None
                manifest = self._manifests[active.slot]
            directory = self._slot_dir(active.slot)
            signature_size = os.stat(directory / SIGNATURE_FILE, follow_symlinks=False).st_size
            members = [(SIGNATURE_FILE, signature_size)]
            members += [(name, manifest.files[name].size) for name in member_order(manifest)[1:]]
            return active.bundle_id, SlotArchive(directory, members)

    def _telemetry_stats(self) -> dict[str, int | None]:
        try:
            return dict(self.telemetry.stats())
        except Exception:  # a broken database must not break status(); counts unknown
            return {"queued": None, "dropped": None, "failures": self.telemetry.failures}

    def revert(self, reason: str = "manual", *, mark_bad: bool = True) -> bool:
        """Go back to the previous slot now (no network needed). False when there is no previous model.

        `mark_bad` refuses the reverted release from then on (right when it misbehaved here); a revert
        asked for by a signed rollout plan passes False, since the operator may roll the release out again.
        """
        with self._lock:
            self._retry_persist()
            state = self._state
            if state.previous is None or state.active is None:
                return False
            now = self._config.clock()
            reverted = state.active
            self.telemetry.record(
                "trial",
                outcome="reverted",
                bundle_id=reverted.bundle_id,
                version=reverted.version,
                reasons=[reason],
            )
            self._save(
                replace(
                    state,
                    active=state.previous,
                    previous=None,
                    trial=None,
                    bad_releases=merge_bad(state.bad_releases, (reverted.bundle_id,))
                    if mark_bad
                    else state.bad_releases,
                ).with_event(now, "reverted", version=reverted.version, reasons=[reason])
            )
            self._loaded = None
            return True

    def close(self) -> None:
        """Flush telemetry, release the database and the store (idempotent for the store lock)."""
        try:
            with self._lock:
                if self._unsaved:
                    self._save(self._state)
            self.flush_health()
            self.stop_shadow()  # reports its last window
            self.telemetry.close()
        finally:
            self._store_lock.release()
