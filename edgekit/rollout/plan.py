"""Rollout plans: the signed document that tells every device which release to run, and its state machine.

A plan names a model and channel, the `target` release being rolled out and the `baseline` it replaces,
the stage percentages (nested: 1% ⊂ 5% ⊂ 25% ⊂ 100%), the current stage and the plan's state. Devices
compute their own cohort from the plan's salt and their id (`cohort_u`), so the server keeps no
per-device rows and a device that joins later falls into its cohort by itself. Everything here is pure:
no IO, no clock (callers pass `now`), canonical JSON in and out.

States and transitions (anything else raises `PlanError`)::

    running --promote(now)--> running (next stage)      running --complete()--> complete (last stage)
    running --pause()-->  paused  --resume()--> running
    running|paused --halt(reason)--> halted              (exposed devices go back to the baseline)
    running|paused|halted --roll_back(reason)--> rolled_back   (terminal; so is complete)

Errors::

    RolloutError          base class of everything `edgekit.rollout` raises
    └── PlanError         an invalid plan, plan document or transition
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import math
import re
from dataclasses import dataclass
from typing import Any, Literal

__all__ = [
    "ARMS",
    "STATES",
    "Arm",
    "PlanError",
    "Release",
    "RolloutError",
    "RolloutPlan",
    "State",
    "arm",
    "cohort_u",
    "wanted_release",
]

State = Literal["running", "paused", "halted", "rolled_back", "complete"]
Arm = Literal["treatment", "control", "other"]
STATES: tuple[str, ...] = ("running", "paused", "halted", "rolled_back", "complete")
ARMS: tuple[str, ...] = ("treatment", "control", "other")

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_RELEASE_KEYS = frozenset({"version", "release_counter", "target_path", "bundle_id"})
_PLAN_KEYS = frozenset(
    {
        "model",
        "channel",
        "rollout_id",
        "salt",
        "target",
        "baseline",
        "stages",
        "stage_index",
        "state",
        "control",
        "stage_started_at",
        "stage_deadline_hours",
        "reason",
    }
)


class RolloutError(Exception):
    """Base class of the errors raised by `edgekit.rollout`."""


class PlanError(RolloutError):
    """A rollout plan, plan document or state transition is invalid (the message says which and why)."""


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


@dataclass(frozen=True)
class Release:
    """One release of a model as the plan refers to it.

    Attributes:
        version: the model version string (for example "1.4.0").
        release_counter: monotonic anti-rollback counter signed into the bundle (integer >= 0).
        target_path: the TUF target path of the `.ekb` bundle.
        bundle_id: the bundle's identity (payload digest) as reported back in telemetry.
    """

    version: str
    release_counter: int
    target_path: str
    bundle_id: str

    def __post_init__(self) -> None:
        for name in ("version", "target_path", "bundle_id"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value:
                raise PlanError(f"release {name} must be a non-empty string, got {value!r}")
        if not _is_int(self.release_counter) or self.release_counter < 0:
            raise PlanError(f"release_counter must be an integer >= 0, got {self.release_counter!r}")

    def to_dict(self) -> dict[str, Any]:
        """The release as a JSON-ready dict."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: object, *, where: str = "release") -> Release:
        """Build a release from a parsed JSON object, refusing unknown or missing keys.

        Raises:
            PlanError: not an object, wrong keys or invalid values.
        """
        if not isinstance(data, dict):
            raise PlanError(f"{where} must be a JSON object, got {type(data).__name__}")
        _check_keys(data, _RELEASE_KEYS, where)
        return cls(**data)


@dataclass(frozen=True)
class RolloutPlan:
    """The rollout of `target` over `baseline` for one model and channel.

    Attributes:
        model: model name.
        channel: release channel (for example "stable").
        rollout_id: unique id of this rollout.
        salt: cohort salt; a new salt reshuffles cohorts, so it stays fixed for the rollout's life.
        target: the release being rolled out.
        baseline: the release devices outside the treatment run (and return to on halt or roll-back).
        stages: strictly increasing stage percentages, each in (0, 100], ending at 100.
        stage_index: index into `stages` of the current stage.
        state: running, paused, halted, rolled_back or complete.
        control: whether a same-size control group (`p <= u < 2p`) is held on the baseline.
        stage_started_at: when the current stage started (seconds since the Unix epoch).
        stage_deadline_hours: hours after which a stage without a decision alerts (hours).
        reason: why the plan was halted or rolled back ("" otherwise).

    Raises:
        PlanError: on any invalid field (checked at construction).
    """

    model: str
    channel: str
    rollout_id: str
    salt: str
    target: Release
    baseline: Release
    stages: tuple[int, ...] = (1, 5, 25, 100)
    stage_index: int = 0
    state: State = "running"
    control: bool = True
    stage_started_at: float = 0.0  # seconds since the Unix epoch
    stage_deadline_hours: float = 72.0  # hours
    reason: str = ""

    def __post_init__(self) -> None:
        for name in ("model", "channel", "rollout_id"):
            value = getattr(self, name)
            if not isinstance(value, str) or not _NAME.fullmatch(value):
                raise PlanError(
                    f"{name} must be 1-128 characters of letters, digits, '.', '_' or '-' starting with a "
                    f"letter or digit, got {value!r}"
                )
        if not isinstance(self.salt, str) or not self.salt:
            raise PlanError(f"salt must be a non-empty string, got {self.salt!r}")
        for name in ("target", "baseline"):
            if not isinstance(getattr(self, name), Release):
                raise PlanError(f"{name} must be a Release, got {type(getattr(self, name)).__name__}")
        if self.target == self.baseline:
            raise PlanError("target and baseline are the same release; a rollout needs two releases")
        self._check_stages()
        if not _is_int(self.stage_index) or not 0 <= self.stage_index < len(self.stages):
            raise PlanError(
                f"stage_index must be an integer in [0, {len(self.stages) - 1}], got {self.stage_index!r}"
            )
        if self.state not in STATES:
            raise PlanError(f"state must be one of {', '.join(STATES)}, got {self.state!r}")
        if not isinstance(self.control, bool):
            raise PlanError(f"control must be true or false, got {self.control!r}")
        if not _is_number(self.stage_started_at) or not math.isfinite(self.stage_started_at):
            raise PlanError(
                f"stage_started_at must be a finite number of seconds, got {self.stage_started_at!r}"
            )
        if self.stage_started_at < 0:
            raise PlanError(f"stage_started_at must be >= 0 seconds, got {self.stage_started_at!r}")
        deadline = self.stage_deadline_hours
        if not _is_number(deadline) or not math.isfinite(deadline) or deadline <= 0:
            raise PlanError(f"stage_deadline_hours must be a finite number > 0, got {deadline!r}")
        # Normalise numbers so equal plans have equal canonical JSON (0 and 0.0 both become 0.0).
        object.__setattr__(self, "stage_started_at", float(self.stage_started_at))
        object.__setattr__(self, "stage_deadline_hours", float(deadline))
        if not isinstance(self.reason, str):
            raise PlanError(f"reason must be a string, got {self.reason!r}")
        if self.state == "complete" and self.stage_index != len(self.stages) - 1:
            raise PlanError("a complete plan must be at its last stage (100%)")

    def _check_stages(self) -> None:
        stages = self.stages
        if not isinstance(stages, tuple) or not stages:
            raise PlanError(f"stages must be a non-empty tuple of percentages, got {stages!r}")
        if not all(_is_int(s) and 0 < s <= 100 for s in stages):
            raise PlanError(f"every stage must be an integer percentage in (0, 100], got {stages!r}")
        if any(a >= b for a, b in itertools.pairwise(stages)):
            raise PlanError(f"stages must be strictly increasing, got {stages!r}")
        if stages[-1] != 100:
            raise PlanError(f"the last stage must be 100 so the rollout can finish, got {stages!r}")
        if self.control and any(s > 50 for s in stages[:-1]):
            raise PlanError(
                f"with a control group every stage before 100 must be <= 50% (control is p <= u < 2p), "
                f"got {stages!r}; lower the stage or set control to false"
            )

    # -- derived values ---------------------------------------------------------------------------------

    @property
    def stage_percent(self) -> int:
        """The current stage as a percentage of the fleet."""
        return self.stages[self.stage_index]

    @property
    def at_last_stage(self) -> bool:
        """Whether the current stage is the last one (100%)."""
        return self.stage_index == len(self.stages) - 1

    # -- transitions ------------------------------------------------------------------------------------

    def _require(self, action: str, *states: str) -> None:
        if self.state not in states:
            raise PlanError(
                f"cannot {action} a plan that is {self.state} (allowed from: {', '.join(states)})"
            )

    def promote(self, now: float) -> RolloutPlan:
        """Move to the next stage, starting it at `now` (seconds since the epoch).

        Raises:
            PlanError: the plan is not running, is at its last stage (use `complete`), or `now` is before
                the current stage started.
        """
        self._require("promote", "running")
        if self.at_last_stage:
            raise PlanError("the plan is at its last stage; call complete() instead of promote()")
        if not _is_number(now) or not math.isfinite(now) or now < self.stage_started_at:
            raise PlanError(
                f"promote(now={now!r}) must be a finite time no earlier than the stage start "
                f"{self.stage_started_at!r}; check the server clock"
            )
        return dataclasses.replace(self, stage_index=self.stage_index + 1, stage_started_at=float(now))

    def hold(self) -> RolloutPlan:
        """Stay at the current stage (the plan is unchanged).

        Raises:
            PlanError: the plan is not running.
        """
        self._require("hold", "running")
        return self

    def pause(self) -> RolloutPlan:
        """Pause the rollout: cohorts stay as they are, gates stop deciding.

        Raises:
            PlanError: the plan is not running.
        """
        self._require("pause", "running")
        return dataclasses.replace(self, state="paused")

    def resume(self) -> RolloutPlan:
        """Resume a paused rollout at the same stage.

        Raises:
            PlanError: the plan is not paused.
        """
        self._require("resume", "paused")
        return dataclasses.replace(self, state="running")

    def halt(self, reason: str) -> RolloutPlan:
        """Stop the rollout and send exposed devices back to the baseline, pending an operator.

        Raises:
            PlanError: the plan is not running or paused, or `reason` is empty.
        """
        self._require("halt", "running", "paused")
        return dataclasses.replace(self, state="halted", reason=_reason(reason))

    def roll_back(self, reason: str) -> RolloutPlan:
        """Abandon the rollout for good: every device returns to the baseline.

        Raises:
            PlanError: the plan is rolled back or complete already, or `reason` is empty.
        """
        self._require("roll back", "running", "paused", "halted")
        return dataclasses.replace(self, state="rolled_back", reason=_reason(reason))

    def complete(self) -> RolloutPlan:
        """Finish the rollout: the target becomes every device's release.

        Raises:
            PlanError: the plan is not running at its last stage.
        """
        self._require("complete", "running")
        if not self.at_last_stage:
            raise PlanError(f"cannot complete at stage {self.stage_percent}%; promote to 100% first")
        return dataclasses.replace(self, state="complete")

    # -- JSON -------------------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """The plan as a JSON-ready dict."""
        data = dataclasses.asdict(self)
        data["stages"] = list(self.stages)
        return data

    def to_json(self) -> str:
        """Canonical JSON: sorted keys, no whitespace, ASCII only; equal plans give equal text."""
        return json.dumps(
            self.to_dict(), sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
        )

    @classmethod
    def from_json(cls, text: str | bytes) -> RolloutPlan:
        """Parse a plan strictly: every key present, no unknown key, every value of the right type.

        Raises:
            PlanError: invalid JSON, duplicate keys, wrong keys, wrong types or invalid values.
        """
        try:
            data = json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constant)
        except (ValueError, UnicodeDecodeError) as e:
            raise PlanError(f"rollout plan is not valid JSON: {e}") from e
        return cls.from_dict(data)

    @classmethod
    def from_dict(cls, data: object) -> RolloutPlan:
        """Build a plan from a parsed JSON object (see `from_json`).

        Raises:
            PlanError: wrong keys, wrong types or invalid values.
        """
        if not isinstance(data, dict):
            raise PlanError(f"a rollout plan must be a JSON object, got {type(data).__name__}")
        _check_keys(data, _PLAN_KEYS, "rollout plan")
        stages = data["stages"]
        if not isinstance(stages, list):
            raise PlanError(f"stages must be a JSON list, got {stages!r}")
        fields = dict(data)
        fields["stages"] = tuple(stages)
        fields["target"] = Release.from_dict(data["target"], where="target")
        fields["baseline"] = Release.from_dict(data["baseline"], where="baseline")
        return cls(**fields)


def _reason(reason: str) -> str:
    if not isinstance(reason, str) or not reason.strip():
        raise PlanError("a halt or roll-back needs a non-empty reason (it is shown to operators)")
    return reason


def _check_keys(data: dict[str, Any], expected: frozenset[str], where: str) -> None:
    missing = sorted(expected - data.keys())
    unknown = sorted(data.keys() - expected)
    if missing or unknown:
        raise PlanError(f"{where}: missing keys {missing}, unknown keys {unknown}")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise PlanError(f"duplicate key {key!r} in rollout plan JSON")
        result[key] = value
    return result


def _no_constant(name: str) -> Any:
    raise PlanError(f"{name} is not allowed in a rollout plan (JSON has no NaN or Infinity)")


# -- cohorts ---------------------------------------------------------------------------------------------


def cohort_u(salt: str, device_id: str) -> float:
    """The device's cohort position in [0, 1): the first 8 bytes of SHA-256(salt ‖ device_id) / 2**64.

    Devices compute exactly the same value (UTF-8 encoding, big-endian), so it must never change.
    """
    digest = hashlib.sha256(salt.encode() + device_id.encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def arm(plan: RolloutPlan, device_id: str) -> Arm:
    """Which arm of the current stage a device is in.

    With p = stage percent / 100: treatment iff u < p; control iff the plan keeps one and p <= u < 2p;
    otherwise "other". At 100% there is no control: every device is treatment.
    """
    p = plan.stage_percent / 100
    u = cohort_u(plan.salt, device_id)
    if u < p:
        return "treatment"
    if plan.control and p < 1 and u < 2 * p:
        return "control"
    return "other"


def wanted_release(plan: RolloutPlan, device_id: str) -> Release:
    """The release a device should run under this plan.

    Halted or rolled back: the baseline. Complete: the target. Running or paused: the target for the
    treatment arm, the baseline for everyone else.
    """
    if plan.state in ("halted", "rolled_back"):
        return plan.baseline
    if plan.state == "complete":
        return plan.target
    return plan.target if arm(plan, device_id) == "treatment" else plan.baseline
