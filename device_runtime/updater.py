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

Cohorts (pure, `cohort_u`): ``u = int.from_bytes(SHA-256(salt_utf8 + device_id_utf8)[:8], "big") / 2**64``,
the salt and the device id encoded as UTF-8 and concatenated with no separator. At stage p% a device is in
the treatment iff ``u < p/100``, in the control group iff ``p/100 <= u < 2p/100`` (same size, stays on the
baseline) and "other" otherwise. Stages nest (1% ⊂ 5% ⊂ 25%) and are sticky: u depends only on the salt and
the device id.

Errors (`UpdaterError`, a `DeviceRuntimeError`; each has a stable `reason` code for telemetry)::

    UpdaterError
    ├── PlanError       the signed plan is malformed or not for this model (fail closed: keep the model)
    ├── MetadataError   TUF refused metadata or a target (rollback, expiry, signatures, hashes): never trust
    └── TransportError  the network failed, was too slow or sent too much (retried later)
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import itertools
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

from device_runtime.errors import DeviceRuntimeError
from device_runtime.state import StoreLock, is_storage_error
from signing.errors import FormatError, VerificationError
from signing.strict_json import parse_strict

__all__ = [
    "PLAN_STATES",
    "BoundedFetcher",
    "Decision",
    "MetadataError",
    "Outcome",
    "Plan",
    "PlanError",
    "Release",
    "TransportError",
    "Updater",
    "UpdaterConfig",
    "UpdaterError",
    "cohort_u",
    "decide",
    "parse_plan",
    "plan_target_path",
]

logger = logging.getLogger(__name__)

PLAN_STATES = ("running", "paused", "halted", "rolled_back", "complete")
MAX_PLAN_BYTES = 64 << 10  # bytes
_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
_COMPONENT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,127}")
_SHA256 = re.compile(r"[0-9a-f]{64}")


# ---- errors ---------------------------------------------------------------------------------------------
class UpdaterError(DeviceRuntimeError):
    """Base class of the updater's errors; `reason` is a stable code for telemetry."""

    def __init__(self, message: str, reason: str = "update") -> None:
        super().__init__(message)
        self.reason = reason


class PlanError(UpdaterError):
    """The signed rollout plan is malformed or not for this model: keep the current model."""


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

    def __post_init__(self) -> None:
        object.__setattr__(self, "metadata_dir", Path(self.metadata_dir))
        object.__setattr__(self, "download_dir", Path(self.download_dir))
        for label in ("model", "channel"):
            if not _NAME.fullmatch(getattr(self, label)):
                raise ValueError(f"UpdaterConfig.{label}: use lower-case letters, digits, '.', '_', '-'")
        if not self.device_id:
            raise ValueError("UpdaterConfig.device_id is required")
        if not self.bootstrap_root:
            raise ValueError("UpdaterConfig.bootstrap_root: give the root metadata shipped with the app")
        if self.max_bundle_bytes < 1 or self.min_speed_bytes_per_s < 0:
            raise ValueError("UpdaterConfig: max_bundle_bytes >= 1 and min_speed_bytes_per_s >= 0")
        if not 0 < self.timeout_s <= 86_400 or not 0 <= self.speed_grace_s <= self.timeout_s:
            raise ValueError("UpdaterConfig: 0 < timeout_s <= 86400 and 0 <= speed_grace_s <= timeout_s")


# ---- the plan and the decision: pure code ----------------------------------------------------------------
@dataclass(frozen=True)
class Release:
    """A release a plan names: version, release counter and the TUF target path of its bundle."""

    version: str
    release_counter: int
    target_path: str


@dataclass(frozen=True)
class Plan:
    """A parsed rollout plan (ROLLOUT.md): one per model and channel."""

    model: str
    rollout_id: str
    salt: str
    target: Release
    baseline: Release | None
    stages: tuple[float, ...]  # percent
    stage_index: int
    state: str
    control: bool

    @property
    def stage_percent(self) -> float:
        """The current stage, in percent of the fleet."""
        return self.stages[self.stage_index]


@dataclass(frozen=True)
class Decision:
    """What this device should run: `arm` is its cohort at the current stage; `wanted` None keeps it."""

    rollout_id: str
    state: str
    arm: str  # treatment | control | other
    u: float
    stage_percent: float
    wanted: Release | None
    reason: str


def plan_target_path(model: str, channel: str) -> str:
    """The TUF target path of a model's plan on a channel."""
    return f"rollouts/{model}/{channel}.json"


def cohort_u(salt: str, device_id: str) -> float:
    """u in [0, 1): the first 8 bytes of SHA-256(UTF-8 salt ‖ UTF-8 device id), big-endian, over 2**64."""
    digest = hashlib.sha256(salt.encode("utf-8") + device_id.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def _check_bundle_path(path: Any, model: str, where: str) -> str:
    parts = path.split("/") if isinstance(path, str) else []
    if (
        len(parts) != 3
        or parts[0] != "bundles"
        or parts[1] != model
        or not all(_COMPONENT.fullmatch(p) and p not in (".", "..") for p in parts)
        or not parts[2].endswith(".ekb")
    ):
        raise PlanError(
            f"{where}.target_path {path!r}: expected bundles/{model}/<file>.ekb of [A-Za-z0-9._+-] parts "
            "(remote names never become local paths)",
            reason="unsafe-target-path",
        )
    return str(path)


def _release(value: Any, model: str, where: str) -> Release:
    if not isinstance(value, Mapping):
        raise PlanError(f"plan {where}: expected an object with version, release_counter, target_path")
    version, counter = value.get("version"), value.get("release_counter")
    if not isinstance(version, str) or not version:
        raise PlanError(f"plan {where}.version: expected a non-empty string, got {version!r}")
    if not isinstance(counter, int) or isinstance(counter, bool) or counter < 0:
        raise PlanError(f"plan {where}.release_counter: expected an integer >= 0, got {counter!r}")
    return Release(version, counter, _check_bundle_path(value.get("target_path"), model, f"plan {where}"))


def parse_plan(document: bytes | Mapping[str, Any], *, model: str | None = None) -> Plan:
    """Parse and check a rollout plan (bytes are parsed as strict JSON). `model`: the one expected.

    Raises:
        PlanError: malformed, unknown state, stages not increasing in (0, 100], unsafe target paths.
    """
    if isinstance(document, bytes):
        try:
            document = parse_strict(document, what="rollout plan", max_bytes=MAX_PLAN_BYTES)
        except FormatError as e:
            raise PlanError(str(e), reason="plan-format") from e
    if not isinstance(document, Mapping):
        raise PlanError("rollout plan: expected a JSON object", reason="plan-format")
    plan_model = document.get("model")
    if not isinstance(plan_model, str) or not _NAME.fullmatch(plan_model):
        raise PlanError(f"plan.model {plan_model!r}: expected a model name", reason="plan-format")
    if model is not None and plan_model != model:
        raise PlanError(f"the plan is for model {plan_model!r}, this updater is for {model!r}", "wrong-model")
    rollout_id, salt, state = document.get("rollout_id"), document.get("salt"), document.get("state")
    if not isinstance(rollout_id, str) or not rollout_id:
        raise PlanError("plan.rollout_id: expected a non-empty string", reason="plan-format")
    if not isinstance(salt, str) or not salt:
        raise PlanError("plan.salt: expected a non-empty string", reason="plan-format")
    if state not in PLAN_STATES:
        raise PlanError(f"plan.state {state!r}: expected one of {list(PLAN_STATES)}", reason="plan-format")
    stages = document.get("stages")
    if (
        not isinstance(stages, list)
        or not stages
        or not all(isinstance(s, int | float) and not isinstance(s, bool) and 0 < s <= 100 for s in stages)
        or any(b <= a for a, b in itertools.pairwise(stages))
    ):
        raise PlanError(f"plan.stages {stages!r}: expected increasing percentages in (0, 100]", "plan-format")
    index = document.get("stage_index")
    if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < len(stages):
        raise PlanError(f"plan.stage_index {index!r}: expected 0..{len(stages) - 1}", reason="plan-format")
    control = document.get("control", True)
    if not isinstance(control, bool):
        raise PlanError("plan.control: expected true or false", reason="plan-format")
    baseline = document.get("baseline")
    return Plan(
        model=plan_model,
        rollout_id=rollout_id,
        salt=salt,
        target=_release(document.get("target"), plan_model, "target"),
        baseline=None if baseline is None else _release(baseline, plan_model, "baseline"),
        stages=tuple(float(s) for s in stages),
        stage_index=index,
        state=state,
        control=control,
    )


def decide(plan: Plan, device_id: str) -> Decision:
    """Which release `device_id` runs under `plan` (no IO). See the module docstring for the rules."""
    u = cohort_u(plan.salt, device_id)
    p = plan.stage_percent / 100.0
    arm = "treatment" if u < p else "control" if plan.control and u < 2 * p else "other"
    wanted: Release | None
    if plan.state == "complete":
        wanted, reason = plan.target, "rollout complete: every device runs the target"
    elif plan.state in ("halted", "rolled_back"):
        wanted, reason = plan.baseline, f"rollout {plan.state}: every device runs the baseline"
    elif arm == "treatment":
        wanted, reason = plan.target, f"u={u:.6f} < {p:.4f}: treatment at stage {plan.stage_percent:g}%"
    else:
        wanted, reason = plan.baseline, f"u={u:.6f} >= {p:.4f}: {arm} group stays on the baseline"
    return Decision(plan.rollout_id, plan.state, arm, u, plan.stage_percent, wanted, reason)


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
            trusted.reference_time = _dt.datetime.fromtimestamp(config.clock(), _dt.UTC)
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
        plan = parse_plan(data, model=config.model)
        decision = decide(plan, config.device_id)
        logger.info("plan %s: %s", plan.rollout_id, decision.reason)
        return plan, decision

    def update(self, runtime: _Installer) -> Outcome:
        """Check, then download the wanted bundle through TUF and install it unless it is already active.

        Never raises for a refused update: the outcome says why (`reason`) and the runtime keeps serving.
        """
        with self._lock:
            decision: Decision | None = None
            release: Release | None = None
            try:
                session = self._session()
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
                path = self._download(session, info, ".ekb")
            except UpdaterError as e:
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
                return Outcome("refused", f"install-{reason}", decision, release, bundle_id, str(e))
            except Exception as e:  # an installer that raised untyped: refused all the same, logged
                reason = "storage" if is_storage_error(e) else "internal"
                logger.warning("install refused (%s): %s", reason, str(e), exc_info=reason == "internal")
                detail = f"{type(e).__name__}: {e}"[:300]
                return Outcome("refused", f"install-{reason}", decision, release, bundle_id, detail)
            finally:
                with contextlib.suppress(OSError):
                    path.unlink()
            status = "up-to-date" if getattr(result, "already_active", False) else "installed"
            return Outcome(
                status, "installed" if status == "installed" else "active", decision, release, bundle_id
            )

    def _check_target(self, info: TargetFile, release: Release) -> str:
        custom = info.custom if isinstance(info.custom, Mapping) else {}
        bundle_id = custom.get("bundle_id")
        if not isinstance(bundle_id, str) or not _SHA256.fullmatch(bundle_id):
            raise MetadataError(f"{info.path}: the target has no bundle_id", reason="target-custom")
        found = (custom.get("name"), custom.get("version"), custom.get("release_counter"))
        expected = (self._config.model, release.version, release.release_counter)
        if found != expected:
            raise PlanError(
                f"{info.path}: the target is {found} (name, version, release_counter); "
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
