"""A rollout's state in one line of words, and its figures for `--json` (`edgekit rollout watch`).

Built from the status document of `GET /v1/admin/rollouts/{id}`; each check is said by
`edgekit.commands._rollout_words`, so `watch`, `status` and the fleet demo read alike.
"""

from __future__ import annotations

from typing import Any

from edgekit.commands._rollout_words import exposure_record, record_words

__all__ = ["FINAL_STATES", "snapshot", "state_line"]

# States after which nothing changes any more: `watch` stops by itself there.
FINAL_STATES = frozenset({"complete", "rolled_back"})

_STATE_WORDS = {
    "running": "running",
    "paused": "paused by an operator",
    "halted": "halted (devices back on the baseline; waiting for an operator)",
    "rolled_back": "rolled back",
    "complete": "complete",
}
_DECISION_WORDS = {
    "start": "rollout started",
    "promote": "promote to the next stage",
    "hold": "hold at this stage",
    "rollback": "roll back",
}


# ---- a rollout's state ---------------------------------------------------------------------------------
def _latest(entry: dict[str, Any]) -> dict[str, Any] | None:
    decisions = entry.get("decisions") or []
    return decisions[-1] if decisions else None


def _arms(decision: dict[str, Any] | None) -> tuple[int | None, int | None]:
    """Devices in the treatment and control arms, as the latest exposure check counted them."""
    record = exposure_record(decision or {})
    if record is None:
        return None, None
    treatment, control = record.get("treatment_value"), record.get("control_value")
    return None if treatment is None else int(treatment), None if control is None else int(control)


def snapshot(entry: dict[str, Any]) -> dict[str, Any]:
    """The figures of one poll for `watch --json`: stable keys, no decision log."""
    plan = entry["plan"]
    decision = _latest(entry)
    treatment, control = _arms(decision)
    return {
        "rollout_id": plan["rollout_id"],
        "state": plan["state"],
        "reason": plan.get("reason"),
        "stage_percent": entry.get("stage_percent"),
        "stage_number": plan["stage_index"] + 1,
        "stages": plan["stages"],
        "devices": {"treatment": treatment, "control": control},
        "decision": None
        if decision is None
        else {
            "outcome": decision["outcome"],
            "time": decision["time"],
            "alert": decision.get("alert"),
            "checks": {r["metric"]: r.get("outcome") for r in decision.get("records", [])},
        },
    }


def state_line(entry: dict[str, Any]) -> str:
    """One line in words: stage, devices per arm, the checks that are not yet ok (in words) and the decision.

    e.g. `digits 1.1.0 over 1.0.0: stage 1% (1 of 4), running; devices: 3 on the update, 3 in the
    control; checks: 10 of 11 ok, waiting: crashes: no crashes so far, ...; decision: hold at this stage`.
    """
    plan = entry["plan"]
    stages = plan["stages"]
    state = _STATE_WORDS.get(plan["state"], plan["state"])
    reason = plan.get("reason") or ""
    if reason and plan["state"] != "running" and not reason.startswith("rollback: "):
        state += f": {reason}"  # an operator's or a halt's reason; a gate's rollback is said in the checks
    parts = [
        f"{plan['model']} {plan['target']['version']} over {plan['baseline']['version']}: stage "
        f"{stages[plan['stage_index']]}% ({plan['stage_index'] + 1} of {len(stages)}), {state}"
    ]
    decision = _latest(entry)
    if decision is None:
        parts.append("no evaluation yet")
        return "; ".join(parts)
    treatment, control = _arms(decision)
    if treatment is not None:
        devices = f"devices: {treatment} on the update"
        parts.append(devices + (f", {control} in the control" if control is not None else ""))
    records = decision.get("records") or []
    if records:
        exposure = exposure_record(decision)
        passed = [r for r in records if r.get("outcome") == "pass"]
        waiting = [record_words(r, exposure) for r in records if r.get("outcome") == "hold"]
        failed = [record_words(r, exposure) for r in records if r.get("outcome") == "rollback"]
        if len(passed) == len(records):
            parts.append(f"checks: all {len(records)} ok")
        else:
            words = f"checks: {len(passed)} of {len(records)} ok"
            if failed:
                words += ", FAILED: " + ", ".join(failed)
            if waiting:
                words += ", waiting: " + ", ".join(waiting)
            parts.append(words)
    words = _DECISION_WORDS.get(decision["outcome"], decision["outcome"])
    if decision["outcome"] == "promote" and decision.get("stage_index") == len(stages) - 1:
        words = "complete: every device gets the update"
    if decision.get("stage_index", plan["stage_index"]) != plan["stage_index"]:
        words += f" (at stage {stages[decision['stage_index']]}%)"
    alert = decision.get("alert") if decision["outcome"] != "rollback" else None  # a rollback's is its check
    parts.append(f"decision: {words}" + (f" (alert: {alert})" if alert else ""))
    return "; ".join(parts)
