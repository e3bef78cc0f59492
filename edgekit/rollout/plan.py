"""Rollout plans on the server: the plan contract devices read, plus the state machine that moves it.

The document, its rules, the cohorts and the device's decision are `device_runtime.rollout_plan` (the
device's own module, so the two sides cannot disagree); `RolloutPlan` is that `Plan` with a baseline
always present (the server runs staged rollouts of a target over a baseline) and the transitions below.
Everything here is pure: no IO, no clock (callers pass `now`), canonical JSON in and out. A plan's optional
shadow trial (`Shadow`: in which stages the treatment runs the target in shadow instead of serving it) is
carried unchanged by every transition.

States and transitions (anything else raises `PlanError`)::

    running --promote(now)--> running (next stage)      running --complete()--> complete (last stage)
    running --pause()-->  paused  --resume()--> running
    running|paused --halt(reason)--> halted              (exposed devices go back to the baseline)
    running|paused|halted --roll_back(reason)--> rolled_back   (terminal; so is complete)

Errors (`edgekit.errors`)::

    RolloutError          base class of everything `edgekit.rollout` raises
    └── PlanError         an invalid plan, plan document or transition
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from device_runtime import rollout_plan as contract
from device_runtime.rollout_plan import (
    ARMS,
    MAX_REASON_CHARS,
    STATES,
    Arm,
    Plan,
    Release,
    Shadow,
    State,
    arm,
    cohort_u,
    decide,
)
from edgekit.errors import PlanError, RolloutError

__all__ = [
    "ARMS",
    "STATES",
    "Arm",
    "PlanError",
    "Release",
    "RolloutError",
    "RolloutPlan",
    "Shadow",
    "State",
    "arm",
    "cohort_u",
    "release_from_dict",
    "shadow_from_dict",
    "wanted_release",
]


@dataclass(frozen=True)
class RolloutPlan(Plan):
    """The rollout of `target` over `baseline` for one model and channel (fields: see `Plan`).

    Raises:
        PlanError: on any invalid field (checked at construction), with the contract's reason code.
    """

    baseline: Release  # never None here: only a complete direct release (not a rollout) has none

    def __post_init__(self) -> None:
        try:
            super().__post_init__()
        except contract.PlanError as e:
            raise PlanError(str(e), reason=e.reason) from e
        if self.baseline is None:
            raise PlanError("a rollout needs a baseline release (the one devices return to on a halt)")

    # -- transitions ------------------------------------------------------------------------------------

    def _require(self, action: str, *states: str) -> None:
        if self.state not in states:
            raise PlanError(
                f"cannot {action} a plan that is {self.state} (allowed from: {', '.join(states)})",
                reason="transition",
            )

    def promote(self, now: float) -> RolloutPlan:
        """Move to the next stage, starting it at `now` (seconds since the epoch).

        Raises:
            PlanError: the plan is not running, is at its last stage (use `complete`), or `now` is before
                the current stage started.
        """
        self._require("promote", "running")
        if self.at_last_stage:
            raise PlanError(
                "the plan is at its last stage; call complete() instead of promote()", "transition"
            )
        finite = isinstance(now, int | float) and not isinstance(now, bool) and math.isfinite(now)
        if not finite or now < self.stage_started_at:
            raise PlanError(
                f"promote(now={now!r}) must be a finite time no earlier than the stage start "
                f"{self.stage_started_at!r}; check the server clock",
                reason="transition",
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
            raise PlanError(
                f"cannot complete at stage {self.stage_percent}%; promote to 100% first", "transition"
            )
        return dataclasses.replace(self, state="complete")

    # -- JSON -------------------------------------------------------------------------------------------

    def to_json(self) -> str:
        """The canonical document as text (the contract's canonical bytes): equal plans give equal text."""
        return self.to_bytes().decode("utf-8")

    @classmethod
    def from_json(cls, text: str | bytes) -> RolloutPlan:
        """Parse a plan strictly (the contract's parser): every key present, no unknown key, right types.

        Raises:
            PlanError: invalid JSON, duplicate keys, wrong keys, wrong types or invalid values.
        """
        try:
            document = contract.load_document(text)
        except contract.PlanError as e:
            raise PlanError(str(e), reason=e.reason) from e
        return cls.from_dict(document)

    @classmethod
    def from_dict(cls, data: object) -> RolloutPlan:
        """Build a plan from a parsed JSON object (see `from_json`).

        Raises:
            PlanError: wrong keys, wrong types or invalid values.
        """
        try:
            fields = contract.plan_fields(data)
        except contract.PlanError as e:
            raise PlanError(str(e), reason=e.reason) from e
        return cls(**fields)


def release_from_dict(data: Mapping[str, Any], *, where: str = "release") -> Release:
    """A `Release` from a JSON object, with edgekit's error type.

    Raises:
        PlanError: not an object, wrong keys or invalid values.
    """
    try:
        return Release.from_dict(data, where=where)
    except contract.PlanError as e:
        raise PlanError(str(e), reason=e.reason) from e


def shadow_from_dict(data: object) -> Shadow:
    """A `Shadow` trial from a JSON object (``{stages, sample, max_cpu}``), with edgekit's error type.

    Raises:
        PlanError: not an object, wrong keys or invalid values.
    """
    try:
        return Shadow.from_dict(data)
    except contract.PlanError as e:
        raise PlanError(str(e), reason=e.reason) from e


def _reason(reason: str) -> str:
    if not isinstance(reason, str) or not reason.strip():
        raise PlanError(
            "a halt or roll-back needs a non-empty reason (it is shown to operators)", reason="transition"
        )
    # A gate's alert can be long; the plan bounds its reason, and a halt must never fail on length.
    return reason if len(reason) <= MAX_REASON_CHARS else reason[: MAX_REASON_CHARS - 1] + "…"


def wanted_release(plan: RolloutPlan, device_id: str) -> Release:
    """The release a device should run under this plan: the device's own `decide`.

    Halted or rolled back: the baseline. Complete: the target. Running or paused: the target for the
    treatment arm, the baseline for everyone else.
    """
    wanted = decide(plan, device_id).wanted
    assert wanted is not None  # a RolloutPlan always has a baseline
    return wanted
