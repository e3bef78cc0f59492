"""The device update loop over TUF: refresh, read the signed rollout plan, compute the cohort, install.

    updater = Updater(UpdaterConfig(metadata_url=..., targets_url=..., metadata_dir=store / "tuf",
                                    download_dir=store / "downloads", model="digits", channel="stable",
                                    device_id="dev-42", bootstrap_root=ROOT_SHIPPED_WITH_THE_APP))
    decision = updater.check()          # which release this device should run, and why
    outcome = updater.update(runtime)   # installed | up-to-date | refused (+ reason)

Trust: every check builds a fresh `tuf.ngclient.Updater` from `UpdaterConfig.bootstrap_root`, the root the
app ships. The metadata directory is only a cache: a root.json an attacker writes there is never a trust
anchor (attack 25); newer roots are accepted only through the chain of signatures from the bootstrap root.
TUF pins the plan's and the bundle's length and hashes (rollback, freeze, mix-and-match, endless data);
`BoundedFetcher` adds what TUF leaves out: an overall timeout and a minimum average speed (slow retrieval).
Remote names never become local paths (attack 26): plan target paths must be `bundles/<model>/<file>.ekb`
made of safe components, and files are stored under their SHA-256 only. The bundle's own signature, release
floor and self-test are then checked by `Runtime.install`.

Deltas (`device_runtime.delta`): when a release is active, the updater first looks for the target
`deltas/<model>/<version>/<active bundle id>.ekd` that `edgekit publish` signs next to the bundle, downloads
it through TUF (length and hash pinned), rebuilds the `.ekb` from the active slot and accepts the result only
if its SHA-256 and length are the ones TUF pins for the full bundle; then `Runtime.install` verifies it like
any download. No delta, a delta that does not apply, another hash, a slot that changed: the full bundle is
downloaded. Either way a `download` telemetry event says how (method, bytes, fallback reason).

The plan's contract (keys, name rules, stages, states, baseline), the cohorts and the decision are the pure
module `device_runtime.rollout_plan`, which the server's plan state machine builds on too.

Shadow trials: when the decision names a ``shadow`` release (a shadow stage of the plan), `update` first
brings the wanted release as above, then, with it active, asks the runtime to run the shadow release next to
it: the active release itself needs nothing (self-shadow); a bundle already staged runs as it is; otherwise
it is downloaded exactly like an install (TUF-pinned length and hash, the target's custom metadata checked
against the plan, a delta from the active release when one is published) and `Runtime.stage_shadow` verifies
and self-tests it and stages it in the inactive slot, never activating it. A decision without a shadow stops
any shadow. `Outcome.shadow` says what happened; a shadow problem never changes the install outcome.

Errors (each a `DeviceRuntimeError` with a stable `reason` code for telemetry)::

    UpdaterError
    ├── MetadataError   TUF refused metadata or a target (rollback, expiry, signatures, hashes): never trust
    └── TransportError  the network failed, was too slow or sent too much (retried later)
    PlanError           (device_runtime.rollout_plan) the signed plan is malformed, unsafe or not for this
                        model and channel, or does not match its targets: fail closed, keep the model
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import logging
import math
import os
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import urllib3
from tuf.api import exceptions as tuf_exceptions
from tuf.api.metadata import TargetFile
from tuf.ngclient import Updater as _NgUpdater
from tuf.ngclient import UpdaterConfig as _NgConfig
from tuf.ngclient.fetcher import FetcherInterface
from tuf.ngclient.urllib3_fetcher import Urllib3Fetcher

from device_runtime._delta_update import Fallback, Transfer, by_delta, report_transfer
from device_runtime.delta import DeltaLimits
from device_runtime.errors import DeviceRuntimeError
from device_runtime.rollout_plan import (
    MAX_PLAN_BYTES,
    Decision,
    Plan,
    PlanError,
    Release,
    decide,
    parse_plan,
    plan_target_path,
)
from device_runtime.state import StoreLock, is_storage_error
from signing.errors import VerificationError
from signing.manifest import NAME_PATTERN

__all__ = [
    "BoundedFetcher",
    "MetadataError",
    "Outcome",
    "PlanError",  # raised by `Updater.check`; defined by the plan contract, device_runtime.rollout_plan
    "Transfer",
    "TransportError",
    "Updater",
    "UpdaterConfig",
    "UpdaterError",
]

logger = logging.getLogger(__name__)

_SHA256 = re.compile(r"[0-9a-f]{64}")


# ---- errors ---------------------------------------------------------------------------------------------
class UpdaterError(DeviceRuntimeError):
    """Base class of the updater's errors; `reason` is a stable code for telemetry."""

    def __init__(self, message: str, reason: str = "update") -> None:
        super().__init__(message)
        self.reason = reason


class MetadataError(UpdaterError):
    """TUF refused the metadata or a target (rollback, freeze, bad signatures, wrong hashes): never trust."""


class TransportError(UpdaterError):
    """The download failed, was slower than the floor or longer than allowed: retry later."""


def _reason(error: BaseException) -> str:
    """`ExpiredMetadataError` -> `expired-metadata`."""
    name = type(error).__name__.removesuffix("Error") or type(error).__name__
    return re.sub(r"(?<!^)(?=[A-Z])", "-", name).lower()


# ---- configuration --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class UpdaterConfig:
    """Configuration of one `Updater` (one model and channel on one device).

    Attributes:
        metadata_url: base URL of the TUF metadata (`.../metadata/`).
        targets_url: base URL of the TUF targets (`.../targets/`).
        metadata_dir: cache of trusted metadata (writable; never a trust anchor).
        download_dir: where verified downloads are kept until installed (writable).
        model: model name; the plan is the target `rollouts/<model>/<channel>.json`.
        channel: release channel, e.g. "stable".
        device_id: stable id of this device (cohort).
        bootstrap_root: the root metadata the app ships: the only trust anchor.
        max_bundle_bytes: bundles whose TUF length is larger are refused before download.
        min_speed_bytes_per_s: a download slower than this on average after `speed_grace_s` is aborted.
        speed_grace_s: seconds before the speed floor applies (connection set-up, TCP slow start).
        timeout_s: a single download taking longer than this is aborted.
        clock: seconds since the epoch; read once per check to judge metadata expiry (injected for tests).
        use_deltas: fetch a published delta from the active release and rebuild the bundle from the slot
            when one exists; any failure falls back to the full bundle (reported in telemetry).
        delta_limits: what a delta may ask of this device (memory per operation, operations).
    """

    metadata_url: str
    targets_url: str
    metadata_dir: Path
    download_dir: Path
    model: str
    channel: str
    device_id: str
    bootstrap_root: bytes = field(repr=False)
    max_bundle_bytes: int = 2 << 30  # bytes
    min_speed_bytes_per_s: int = 16 << 10  # bytes per second
    speed_grace_s: float = 5.0  # seconds
    timeout_s: float = 600.0  # seconds
    clock: Callable[[], float] = field(default=time.time, compare=False)
    use_deltas: bool = True
    delta_limits: DeltaLimits = field(default_factory=DeltaLimits)

    def __post_init__(self) -> None:
        object.__setattr__(self, "metadata_dir", Path(self.metadata_dir))
        object.__setattr__(self, "download_dir", Path(self.download_dir))
        for label in ("model", "channel"):
            if not NAME_PATTERN.fullmatch(getattr(self, label)):
                raise ValueError(f"UpdaterConfig.{label}: use lower-case letters, digits, '.', '_', '-'")
        if not self.device_id:
            raise ValueError("UpdaterConfig.device_id is required")
        if not self.bootstrap_root:
            raise ValueError("UpdaterConfig.bootstrap_root: give the root metadata shipped with the app")
        if self.max_bundle_bytes < 1 or self.min_speed_bytes_per_s < 0:
            raise ValueError("UpdaterConfig: max_bundle_bytes >= 1 and min_speed_bytes_per_s >= 0")
        if not 0 < self.timeout_s <= 86_400 or not 0 <= self.speed_grace_s <= self.timeout_s:
            raise ValueError("UpdaterConfig: 0 < timeout_s <= 86400 and 0 <= speed_grace_s <= timeout_s")


# ---- network: the fetcher with a speed floor ------------------------------------------------------------
class BoundedFetcher(Urllib3Fetcher):
    """ngclient's urllib3 fetcher plus an overall timeout and a minimum average speed (slow retrieval).

    urllib3's own timeout bounds each gap between bytes only, so a server that trickles a byte every few
    seconds never trips it. The body is read with `read1`, which returns whatever has arrived, and every
    chunk checks elapsed time against `timeout_s` and, after `grace_s`, the average speed against
    `min_speed_bytes_per_s`. A server that sends nothing at all trips the socket gap timeout.
    """

    def __init__(
        self,
        *,
        timeout_s: float,
        min_speed_bytes_per_s: int,
        grace_s: float,
        gap_timeout_s: float = 10.0,  # seconds
        chunk_size: int = 64 << 10,  # bytes
        clock: Callable[[], float] = time.monotonic,
        app_user_agent: str | None = "edgekit-device",
    ) -> None:
        super().__init__(
            socket_timeout=max(1, math.ceil(min(timeout_s, gap_timeout_s))),
            chunk_size=chunk_size,
            app_user_agent=app_user_agent,
        )
        self.timeout_s = timeout_s
        self.min_speed_bytes_per_s = min_speed_bytes_per_s
        self.grace_s = grace_s
        self._clock = clock

    # tuf 7's Urllib3Fetcher iterates the body in `_chunks`; this override is the seam (tests pin it).
    def _chunks(self, response: urllib3.response.BaseHTTPResponse) -> Iterator[bytes]:
        started = self._clock()
        received = 0
        try:
            while True:
                chunk = response.read1(self.chunk_size)
                if not chunk:
                    return
                received += len(chunk)
                elapsed = self._clock() - started
                if elapsed > self.timeout_s:
                    raise tuf_exceptions.SlowRetrievalError(
                        f"download took more than {self.timeout_s:g} s ({received} bytes received)"
                    )
                if elapsed > self.grace_s and received < self.min_speed_bytes_per_s * elapsed:
                    raise tuf_exceptions.SlowRetrievalError(
                        f"average speed {received / elapsed:.0f} B/s after {elapsed:.1f} s is below "
                        f"the floor of {self.min_speed_bytes_per_s} B/s"
                    )
                yield chunk
        except urllib3.exceptions.TimeoutError as e:
            response.close()
            raise tuf_exceptions.SlowRetrievalError(f"no data for {self.socket_timeout} s") from e
        except BaseException:
            response.close()  # never hand a half-read connection back to the pool
            raise
        finally:
            response.release_conn()


# ---- the updater: IO workflow ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Outcome:
    """What `update` did: status installed | up-to-date | refused, with a reason code and detail."""

    status: str
    reason: str
    decision: Decision | None = None
    release: Release | None = None
    bundle_id: str | None = None
    detail: str = ""
    transfer: Transfer | None = None
    # The shadow trial: "" (none asked, none running), running (self-shadow or already staged), staged
    # (downloaded, verified, staged and running), stopped, struck (this device gave it up), waiting (the
    # wanted release is not active yet), refused-<reason>.
    shadow: str = ""


class _Installer(Protocol):
    def status(self) -> dict[str, Any]: ...

    def install(self, source: str | Path) -> Any: ...

    def revert(self, reason: str = ..., *, mark_bad: bool = ...) -> bool: ...


class Updater:
    """TUF-verified updates of one model on one device. Thread-safe; one Updater per metadata directory.

    The metadata directory is locked for the updater's life (`close` releases it): a second Updater on it,
    in this process or another, raises `StoreLockedError` naming the holder, instead of two processes
    writing the same metadata cache and downloads.
    """

    def __init__(self, config: UpdaterConfig, *, fetcher: FetcherInterface | None = None) -> None:
        config.metadata_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._store_lock = StoreLock(config.metadata_dir, "metadata directory")
        self._config = config
        self._fetcher = fetcher or BoundedFetcher(
            timeout_s=config.timeout_s,
            min_speed_bytes_per_s=config.min_speed_bytes_per_s,
            grace_s=config.speed_grace_s,
        )
        self._lock = threading.Lock()

    @property
    def config(self) -> UpdaterConfig:
        """The configuration this updater was built from."""
        return self._config

    def close(self) -> None:
        """Release the metadata directory (idempotent)."""
        self._store_lock.release()

    def _session(self) -> _NgUpdater:
        """A fresh ngclient Updater (one refresh each), bootstrapped from the app's root, never the cache."""
        config = self._config
        for directory in (config.metadata_dir, config.download_dir):
            directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        with _tuf_errors("bootstrap"):
            session = _NgUpdater(
                str(config.metadata_dir),
                config.metadata_url,
                str(config.download_dir),
                config.targets_url,
                fetcher=self._fetcher,
                config=_NgConfig(max_root_rotations=32, app_user_agent="edgekit-device"),
                bootstrap=config.bootstrap_root,
            )
        # ngclient reads the wall clock once, when it is built; the injected clock replaces that reading
        # (STYLE: injected clock, read once per update). No public hook exists in tuf 7.0.
        trusted = getattr(session, "_trusted_set", None)
        if trusted is not None and hasattr(trusted, "reference_time"):
            trusted.reference_time = _dt.datetime.fromtimestamp(config.clock(), _dt.timezone.utc)
        return session

    def check(self) -> Decision:
        """Refresh the TUF metadata, read this model's plan and decide which release this device runs.

        Raises:
            MetadataError, TransportError: TUF refused the metadata or the network failed.
            PlanError: no plan for this model and channel, or a malformed one.
        """
        with self._lock:
            return self._check(self._session())[1]

    def _check(self, session: _NgUpdater) -> tuple[Plan, Decision]:
        config = self._config
        with _tuf_errors("refresh"):
            session.refresh()
        path = plan_target_path(config.model, config.channel)
        info = self._targetinfo(session, path)
        if info is None:
            raise PlanError(f"the repository has no plan {path}", reason="no-plan")
        if info.length > MAX_PLAN_BYTES:
            raise PlanError(f"plan {path} is {info.length} bytes, above {MAX_PLAN_BYTES}", "plan-format")
        local = self._download(session, info, ".plan.json")
        try:
            data = local.read_bytes()
        finally:
            with contextlib.suppress(OSError):
                local.unlink()
        plan = parse_plan(data, model=config.model, channel=config.channel)
        decision = decide(plan, config.device_id)
        logger.info("plan %s: %s", plan.rollout_id, decision.reason)
        return plan, decision

    def update(self, runtime: _Installer) -> Outcome:
        """Check, then download the wanted bundle through TUF and install it unless it is already active;
        then run the decision's shadow release, if any, next to it (`Outcome.shadow`).

        Never raises for a refused update: the outcome says why (`reason`) and the runtime keeps serving.
        """
        with self._lock:
            sessions: list[_NgUpdater] = []
            outcome = self._update(runtime, sessions)
            if sessions and outcome.decision is not None and hasattr(runtime, "stage_shadow"):
                shadow = self._update_shadow(sessions[0], outcome.decision, runtime)
                outcome = dataclasses.replace(outcome, shadow=shadow)
            return outcome

    def _update(self, runtime: _Installer, sessions: list[_NgUpdater]) -> Outcome:
        decision: Decision | None = None
        release: Release | None = None
        try:
            session = self._session()
            sessions.append(session)
            _, decision = self._check(session)
            release = decision.wanted
            if release is None:
                return Outcome("up-to-date", "no-baseline", decision, detail=decision.reason)
            info = self._targetinfo(session, release.target_path)
            if info is None:
                raise MetadataError(
                    f"the plan names {release.target_path}, which is not a target", "no-target"
                )
            bundle_id = self._check_target(info, release)
            device = runtime.status()
            active = device.get("active")
            if active is not None and active.get("bundle_id") == bundle_id:
                return Outcome("up-to-date", "active", decision, release, bundle_id)
            previous = device.get("previous")
            if previous is not None and previous.get("bundle_id") == bundle_id:
                # A halted or rolled-back plan sends this device back to the release it ran before:
                # revert to the verified previous slot. Installing it again would be refused by the
                # release-counter floor once the newer release was committed, stranding the device.
                why = f"rollout {decision.rollout_id} is {decision.state}: back to {release.version}"
                if runtime.revert(why, mark_bad=False):
                    return Outcome("installed", "reverted", decision, release, bundle_id)
            if info.length > self._config.max_bundle_bytes:
                raise TransportError(
                    f"{release.target_path} is {info.length} bytes, above max_bundle_bytes "
                    f"{self._config.max_bundle_bytes}",
                    reason="too-large",
                )
            path, transfer = self._fetch(session, info, release, runtime, active)
        except (UpdaterError, PlanError) as e:
            # str(e): a log record must not keep the traceback (and this updater's lock) alive
            logger.warning("update refused (%s): %s", e.reason, str(e))
            return Outcome("refused", e.reason, decision, release, detail=str(e))
        except Exception as e:  # never raise for a refused update: the device keeps its model
            reason = "storage" if is_storage_error(e) else "internal"
            logger.warning("update refused (%s): %s", reason, str(e), exc_info=reason == "internal")
            return Outcome("refused", reason, decision, release, detail=f"{type(e).__name__}: {e}"[:300])
        try:
            result = runtime.install(path)
        except (VerificationError, DeviceRuntimeError) as e:  # the runtime recorded its telemetry
            reason = getattr(e, "reason", None) or _reason(e)
            return Outcome("refused", f"install-{reason}", decision, release, bundle_id, str(e), transfer)
        except Exception as e:  # an installer that raised untyped: refused all the same, logged
            reason = "storage" if is_storage_error(e) else "internal"
            logger.warning("install refused (%s): %s", reason, str(e), exc_info=reason == "internal")
            detail = f"{type(e).__name__}: {e}"[:300]
            return Outcome("refused", f"install-{reason}", decision, release, bundle_id, detail, transfer)
        finally:
            with contextlib.suppress(OSError):
                path.unlink()
        status = "up-to-date" if getattr(result, "already_active", False) else "installed"
        reason = "installed" if status == "installed" else "active"
        return Outcome(status, reason, decision, release, bundle_id, transfer=transfer)

    def _update_shadow(self, session: _NgUpdater, decision: Decision, runtime: Any) -> str:
        """Run the decision's shadow release next to the active one (see the module docstring)."""
        release, config = decision.shadow, decision.shadow_config
        try:
            if release is None or config is None:
                running = (runtime.status().get("shadow") or {}).get("running")
                runtime.stop_shadow()
                return "stopped" if running else ""
            device = runtime.status()
            active = device.get("active")
            wanted = decision.wanted
            if active is None or wanted is None or active.get("bundle_id") != wanted.bundle_id:
                runtime.stop_shadow()
                return "waiting"  # a shadow runs next to the wanted release only
            if release.bundle_id in (device.get("shadow") or {}).get("struck", ()):
                runtime.stop_shadow()
                return "struck"
            if runtime.shadow(release.bundle_id, sample=config.sample, max_cpu=config.max_cpu):
                return "running"
            if device.get("candidate") and device.get("previous") is not None:
                return "waiting"  # the trial's fallback holds the inactive slot: the runtime would refuse
            info = self._targetinfo(session, release.target_path)
            if info is None:
                raise MetadataError(
                    f"the plan names {release.target_path}, which is not a target", "no-target"
                )
            self._check_target(info, release)
            if info.length > self._config.max_bundle_bytes:
                raise TransportError(
                    f"{release.target_path} is {info.length} bytes, above max_bundle_bytes "
                    f"{self._config.max_bundle_bytes}",
                    reason="too-large",
                )
            path, _ = self._fetch(session, info, release, runtime, active)
            try:
                runtime.stage_shadow(path, sample=config.sample, max_cpu=config.max_cpu)
            finally:
                with contextlib.suppress(OSError):
                    path.unlink()
            return "staged"
        except (UpdaterError, PlanError) as e:
            logger.warning("shadow refused (%s): %s", e.reason, str(e))
            return f"refused-{e.reason}"
        except (VerificationError, DeviceRuntimeError) as e:  # the runtime recorded its telemetry
            return f"refused-install-{getattr(e, 'reason', None) or _reason(e)}"
        except Exception as e:  # a shadow never costs the update
            reason = "storage" if is_storage_error(e) else "internal"
            logger.warning("shadow refused (%s): %s", reason, str(e), exc_info=reason == "internal")
            return f"refused-{reason}"

    # -- fetching: a delta from the active release when one is published, else the full bundle
    def _fetch(
        self,
        session: _NgUpdater,
        info: TargetFile,
        release: Release,
        runtime: _Installer,
        active: Mapping[str, Any] | None,
    ) -> tuple[Path, Transfer]:
        """The bundle, rebuilt from a delta or downloaded in full; the transfer is reported in telemetry."""
        base = active.get("bundle_id") if active is not None else None
        sent = 0
        fallback: tuple[str, str] | None = None
        if self._config.use_deltas and isinstance(base, str) and _SHA256.fullmatch(base):
            try:
                path, sent = by_delta(
                    info,
                    release,
                    runtime,
                    base,
                    config=self._config,
                    targetinfo=lambda target: self._targetinfo(session, target),
                    download=lambda target, suffix: self._download(session, target, suffix),
                )
                transfer = Transfer("delta", sent, info.length, base)
                report_transfer(runtime, info, release, transfer)
                return path, transfer
            except Fallback as e:
                sent, fallback = e.sent, (e.reason, e.detail)
                logger.info("delta update not used (%s): %s", e.reason, e.detail)
            except Exception as e:  # a delta never costs the update: anything unforeseen falls back too
                fallback = ("delta-internal", f"{type(e).__name__}: {e}"[:300])
                logger.warning("delta update failed unexpectedly: %s", str(e), exc_info=True)
        path = self._download(session, info, ".ekb")
        reason, detail = fallback or (None, "")
        transfer = Transfer("full", sent + info.length, info.length, base, reason, detail)
        report_transfer(runtime, info, release, transfer)
        return path, transfer

    def _check_target(self, info: TargetFile, release: Release) -> str:
        custom = info.custom if isinstance(info.custom, Mapping) else {}
        bundle_id = custom.get("bundle_id")
        if not isinstance(bundle_id, str) or not _SHA256.fullmatch(bundle_id):
            raise MetadataError(f"{info.path}: the target has no bundle_id", reason="target-custom")
        found = (custom.get("name"), custom.get("version"), custom.get("release_counter"), bundle_id)
        expected = (self._config.model, release.version, release.release_counter, release.bundle_id)
        if found != expected:
            raise PlanError(
                f"{info.path}: the target is {found} (name, version, release_counter, bundle_id); "
                f"the plan says {expected}",
                reason="plan-mismatch",
            )
        return bundle_id

    @staticmethod
    def _targetinfo(session: _NgUpdater, path: str) -> TargetFile | None:
        with _tuf_errors("targets"):
            return session.get_targetinfo(path)

    def _download(self, session: _NgUpdater, info: TargetFile, suffix: str) -> Path:
        """Download into download_dir named by the target's SHA-256 (never its remote name); reuse a cache."""
        digest = info.hashes.get("sha256")
        if not isinstance(digest, str) or not _SHA256.fullmatch(digest):
            raise MetadataError(f"{info.path}: no SHA-256 in the target's hashes", reason="target-hashes")
        final = self._config.download_dir / f"{digest}{suffix}"
        if session.find_cached_target(info, str(final)) is not None:
            return final
        partial = self._config.download_dir / f".{digest}{suffix}.part"
        with contextlib.suppress(FileNotFoundError):
            partial.unlink()
        try:
            with _tuf_errors("download"):
                session.download_target(info, filepath=str(partial))
            try:
                with open(partial, "rb") as handle:
                    os.fsync(handle.fileno())
                os.replace(partial, final)
            except OSError as e:
                reason = "storage" if is_storage_error(e) else "io"
                raise UpdaterError(f"cannot store the download {final.name}: {e}", reason=reason) from e
        except BaseException:
            with contextlib.suppress(OSError):
                partial.unlink()
            raise
        return final


@contextlib.contextmanager
def _tuf_errors(step: str) -> Iterator[None]:
    """Translate python-tuf's errors into the updater's typed errors (with a reason code)."""
    try:
        yield
    except tuf_exceptions.DownloadError as e:
        raise TransportError(f"{step}: {type(e).__name__}: {e}", reason=_reason(e)) from e
    except tuf_exceptions.RepositoryError as e:
        raise MetadataError(f"{step}: {type(e).__name__}: {e}", reason=_reason(e)) from e
    except OSError as e:
        reason = "storage" if is_storage_error(e) else "io"
        raise UpdaterError(f"{step}: cannot write the cache: {e}", reason=reason) from e
    except ValueError as e:  # ngclient: a malformed bootstrap root or argument
        raise MetadataError(f"{step}: {e}", reason="bad-metadata") from e
