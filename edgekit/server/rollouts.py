"""Rollouts on the server: start, act on, and evaluate plans; publish each change through TUF.

Every plan change is written to the database and published as the delegated `rollouts` target, so devices
see it on their next refresh. Gate evaluations are stored whole (one record per check), whatever their
outcome: `rollout status` and the dashboard show them, and replaying the stored telemetry through the
same pure `edgekit.rollout.gates.evaluate` gives the same decisions.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import secrets
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from device_runtime.rollout_plan import parse_plan
from edgekit.errors import PlanError, RolloutConflictError, RolloutError, UnknownRolloutError
from edgekit.rollout.gates import DecisionRecord, GateConfig, StageDecision, decide
from edgekit.rollout.plan import Release, RolloutPlan, release_from_dict, shadow_from_dict
from edgekit.server.aggregate import Window, current_devices, window_devices
from edgekit.server.cohort_draw import CohortDraw, draw_cohorts
from edgekit.server.label_free_window import label_free_evidence
from edgekit.server.storage import Database, dumps
from edgekit.server.tuf_repo import TufRepository

__all__ = [
    "ACTIONS",
    "RolloutConflictError",
    "RolloutError",
    "RolloutService",
    "Started",
    "UnknownRolloutError",
]

ACTIONS = ("pause", "resume", "abort", "promote")


class Started(NamedTuple):
    """A started rollout: its plan, and the cohorts its salt draws among the registered devices."""

    plan: RolloutPlan
    cohorts: CohortDraw


@dataclass
class RolloutService:
    """Plans, decisions and their publication; one evaluator at a time across replicas."""

    db: Database
    repo: TufRepository
    gates: GateConfig = field(default_factory=GateConfig)
    clock: Callable[[], float] = time.time
    _lock: threading.Lock = field(default_factory=threading.Lock)

    # -- queries -----------------------------------------------------------------------------------
    def plans(self) -> list[RolloutPlan]:
        """Every rollout, newest first."""
        rows = self.db.execute("SELECT plan FROM rollouts ORDER BY created_at DESC")
        return [RolloutPlan.from_json(row[0]) for row in rows]

    def plan(self, rollout_id: str) -> RolloutPlan:
        """One rollout by id.

        Raises:
            UnknownRolloutError: unknown id.
        """
        rows = self.db.execute("SELECT plan FROM rollouts WHERE rollout_id = ?", (rollout_id,))
        if not rows:
            raise UnknownRolloutError(rollout_id)
        return RolloutPlan.from_json(rows[0][0])

    def decisions(self, rollout_id: str, limit: int = 200) -> list[dict[str, Any]]:
        """The latest decisions of a rollout, oldest first."""
        rows = self.db.execute(
            "SELECT seq, time, stage_index, outcome, alert, records FROM decisions WHERE rollout_id = ? "
            "ORDER BY seq DESC LIMIT ?",
            (rollout_id, limit),
        )
        decisions = []
        for seq, t, stage, outcome, alert, stored in reversed(rows):
            document = json.loads(stored)
            decisions.append(
                {
                    "seq": seq,
                    "time": t,
                    "stage_index": stage,
                    "outcome": outcome,
                    "alert": alert,
                    "records": document["records"],
                    "plan": document["plan"],
                    "skipped_rows": int(document.get("skipped_rows", 0)),
                }
            )
        return decisions

    def replay(self, rollout_id: str) -> list[tuple[dict[str, Any], StageDecision]]:
        """Recompute every stored gate decision of a rollout from the stored telemetry.

        Each decision is recomputed from the raw events (not the rollups) the server had received by
        then, with the plan as it was, through the same `decide` the live evaluation uses; the result
        must equal what was stored.
        """
        replayed = []
        for stored in self.decisions(rollout_id, limit=100_000):
            if stored["outcome"] in ("start", "error") or stored["outcome"].startswith("manual-"):
                continue
            plan = RolloutPlan.from_dict(stored["plan"])
            replayed.append(
                (stored, self._decide(plan, window_devices(self.db, plan, stored["time"]), stored["time"]))
            )
        return replayed

    def _decide(self, plan: RolloutPlan, window: Window, now: float) -> StageDecision:
        """The gates on the stage window at `now`: the telemetry `window` plus the label-free evidence
        (health sketches, shadow runs, reference profiles) of the same window, read from the same stored
        rows whether live or in a replay. Rows either part skips are counted in the decision."""
        evidence, skipped = label_free_evidence(self.db, plan, now, self.repo)
        return decide(
            plan.stage_percent,
            window.devices.values(),
            self.gates,
            now,
            plan.stage_started_at,
            skipped_rows=window.skipped + skipped,
            skipped_example=window.first_problem,
            label_free=evidence,
        )

    def releases(self, model: str) -> dict[str, Release]:
        """Published bundles of a model by version, from the TUF repository."""
        found = {}
        for target in self.repo.status()["targets"]:
            custom = target.get("custom") or {}
            if custom.get("name") == model and target["path"].startswith("bundles/"):
                found[custom["version"]] = release_from_dict(
                    {
                        "version": custom["version"],
                        "release_counter": custom["release_counter"],
                        "target_path": target["path"],
                        "bundle_id": custom["bundle_id"],
                    },
                    where=f"published target {target['path']}",
                )
        return found

    # -- changes -----------------------------------------------------------------------------------
    def _store(self, plan: RolloutPlan, now: float, *, new: bool = False) -> None:
        if new:
            self.db.execute(
                "INSERT INTO rollouts (rollout_id, model, channel, plan, created_at, updated_at) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (plan.rollout_id, plan.model, plan.channel, plan.to_json(), now, now),
            )
        else:
            self.db.execute(
                "UPDATE rollouts SET plan = ?, updated_at = ? WHERE rollout_id = ?",
                (plan.to_json(), now, plan.rollout_id),
            )
        self.repo.set_plan(plan.model, plan.channel, plan.to_dict())

    def _record(self, plan: RolloutPlan, decision: dict[str, Any], now: float) -> None:
        decision = {**decision, "plan": plan.to_dict()}  # the plan as evaluated: what replay needs
        rows = self.db.execute(
            "SELECT COALESCE(MAX(seq), 0) FROM decisions WHERE rollout_id = ?", (plan.rollout_id,)
        )
        self.db.execute(
            "INSERT INTO decisions (rollout_id, seq, time, stage_index, outcome, alert, records) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                plan.rollout_id,
                int(rows[0][0]) + 1,
                now,
                plan.stage_index,
                decision["outcome"],
                decision.get("alert"),
                dumps(
                    {
                        "records": decision["records"],
                        "plan": decision["plan"],
                        "skipped_rows": decision.get("skipped_rows", 0),
                    }
                ),
            ),
        )

    def start(
        self,
        model: str,
        channel: str,
        target_version: str,
        baseline_version: str,
        *,
        stages: tuple[int, ...] = (1, 5, 25, 100),
        control: bool = True,
        deadline_hours: float = 72.0,
        shadow: Mapping[str, Any] | None = None,
        min_arm_devices: int = 0,
    ) -> Started:
        """Start rolling `target_version` out over `baseline_version` (`shadow`: the plan's optional
        ``{stages, sample, max_cpu}`` shadow trial).

        The salt is drawn among the registered devices (`edgekit.server.cohort_draw`): with
        `min_arm_devices` N > 0, until every stage before the last has at least N of them in each arm.
        The returned cohorts say each such stage's arm sizes either way.

        Raises:
            RolloutConflictError: unpublished versions, a non-increasing release counter, a rollout
                already running for this model and channel, a plan the contract refuses, or arms of N
                devices the registered fleet cannot give (nothing is stored or published then).
        """
        if min_arm_devices < 0:
            raise RolloutConflictError(f"min_arm_devices must be >= 0 (devices), got {min_arm_devices}")
        with self._lock:
            now = self.clock()
            releases = self.releases(model)
            for version in (target_version, baseline_version):
                if version not in releases:
                    raise RolloutConflictError(
                        f"{model} {version} is not published; publish it with `edgekit publish BUNDLE.ekb` "
                        f"(published: {sorted(releases) or 'none'})"
                    )
            target, baseline = releases[target_version], releases[baseline_version]
            if target.release_counter <= baseline.release_counter:
                raise RolloutConflictError(
                    f"target release_counter {target.release_counter} must be above the baseline's "
                    f"{baseline.release_counter} (devices refuse older releases)"
                )
            for existing in self.plans():
                if (
                    existing.model == model
                    and existing.channel == channel
                    and existing.state in ("running", "paused")
                ):
                    raise RolloutConflictError(
                        f"rollout {existing.rollout_id} is {existing.state}; abort or finish it first"
                    )
            try:
                plan = RolloutPlan(
                    model=model,
                    channel=channel,
                    rollout_id=f"{model}-{channel}-{int(now)}-{secrets.token_hex(3)}",
                    salt=secrets.token_hex(16),
                    target=target,
                    baseline=baseline,
                    stages=tuple(stages),
                    control=control,
                    stage_started_at=now,
                    stage_deadline_hours=deadline_hours,
                    shadow=None if shadow is None else shadow_from_dict(shadow),
                )
            except PlanError as e:
                raise RolloutConflictError(str(e)) from e
            # Only arm counts of registered devices choose the salt, never which devices or what they
            # reported: the arms stay random samples of the fleet (the cohort_draw docstring says why).
            registered = [str(row[0]) for row in self.db.execute("SELECT device_id FROM devices")]
            drawn = draw_cohorts(registered, plan.stages, plan.control, min_arm_devices)
            plan = dataclasses.replace(plan, salt=drawn.salt)
            self._store(plan, now, new=True)
            self._record(plan, {"outcome": "start", "records": [], "alert": None}, now)
            return Started(plan, drawn)

    def act(self, rollout_id: str, action: str, reason: str = "operator") -> RolloutPlan:
        """pause / resume / abort (roll back everyone) / promote (skip the gate: an operator's decision).

        Raises:
            UnknownRolloutError: unknown id.
            RolloutConflictError: unknown action or one the plan's state does not allow.
        """
        if action not in ACTIONS:
            raise RolloutConflictError(f"unknown action {action!r}; use one of {ACTIONS}")
        with self._lock:
            now = self.clock()
            plan = self.plan(rollout_id)
            try:
                if action == "pause":
                    changed = plan.pause()
                elif action == "resume":
                    changed = plan.resume()
                elif action == "abort":
                    changed = plan.roll_back(f"aborted by {reason}")
                else:
                    changed = plan.complete() if plan.at_last_stage else plan.promote(now)
            except PlanError as e:
                raise RolloutConflictError(str(e)) from e
            self._store(changed, now)
            self._record(changed, {"outcome": f"manual-{action}", "records": [], "alert": None}, now)
            return changed

    def evaluate(self) -> list[tuple[RolloutPlan, StageDecision]]:
        """Run the gates on every running rollout once; apply promote / roll back; store every decision.

        Never raises for one rollout: a rollout whose evaluation fails holds, its failure is stored as
        an `error` decision with an alert, and every other rollout is still evaluated.
        """
        results: list[tuple[RolloutPlan, StageDecision]] = []
        with self._lock:
            if not self.db.try_evaluator_lock():
                return results  # another replica is the evaluator
            try:
                now = self.clock()
                self._republish_lagging()
                for plan in self._running():
                    try:
                        results.append(self._evaluate_one(plan, now))
                    except Exception as e:  # one rollout's failure must not stop the others
                        results.append((plan, self._failed(plan, now, e)))
            finally:
                self.db.release_evaluator_lock()
        return results

    def _republish_lagging(self) -> None:
        """Publish each model and channel's newest stored plan where the repository shows another.

        A plan change is stored, then published; a process that dies between the two (or a repository
        write that failed) leaves devices on the old plan. The evaluator repairs that on its next run, so a
        replica killed mid-decision loses nothing. A plan the repository refuses is left for the operator.
        """
        newest: dict[tuple[str, str], RolloutPlan] = {}
        rows = self.db.execute("SELECT plan FROM rollouts ORDER BY updated_at DESC, created_at DESC")
        for (text,) in rows:
            try:
                plan = RolloutPlan.from_json(text)
            except Exception:  # a corrupt row is skipped here as in _running
                continue
            newest.setdefault((plan.model, plan.channel), plan)
        for (model, channel), plan in newest.items():
            with contextlib.suppress(Exception):
                canonical = parse_plan(plan.to_dict(), model=model, channel=channel).to_bytes()
                if self.repo.published_plan_sha256(model, channel) != hashlib.sha256(canonical).hexdigest():
                    self.repo.set_plan(model, channel, plan.to_dict())

    def _running(self) -> list[RolloutPlan]:
        """Running rollouts; a stored plan that no longer parses is left out rather than stopping all."""
        found = []
        for (text,) in self.db.execute("SELECT plan FROM rollouts ORDER BY created_at DESC"):
            try:
                plan = RolloutPlan.from_json(text)
            except Exception:  # a corrupt row cannot stop the others
                continue
            if plan.state == "running":
                found.append(plan)
        return found

    def _evaluate_one(self, plan: RolloutPlan, now: float) -> tuple[RolloutPlan, StageDecision]:
        decision = self._decide(plan, current_devices(self.db, plan, now), now)
        changed = plan
        if decision.outcome == "rollback":
            changed = plan.roll_back(decision.alert or "gate: regression detected")
        elif decision.outcome == "promote":
            changed = plan.complete() if plan.at_last_stage else plan.promote(now)
        self._record(plan, decision.to_dict(), now)
        if changed != plan:
            self._store(changed, now)
        return changed, decision

    def _failed(self, plan: RolloutPlan, now: float, error: Exception) -> StageDecision:
        """The rollout holds; the failure is stored (outcome `error`) so status and the dashboard show it."""
        why = f"evaluation failed: {type(error).__name__}: {str(error)[:300]}"
        record = DecisionRecord("evaluation", None, None, 0, None, None, "hold", why)
        decision = StageDecision("hold", (record,), why, plan.stage_percent, now)
        with contextlib.suppress(Exception):  # the database itself failing: nothing more to store
            self._record(plan, {**decision.to_dict(), "outcome": "error"}, now)
        return decision
