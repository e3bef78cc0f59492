"""A rollout's status in plain words, for `edgekit rollout watch` (one line) and its `--json` snapshots.

Reads the status document of `GET /v1/admin/rollouts/{id}` (plan, stage, decision log) and nothing else,
so the words say only what the server reported.
"""

from __future__ import annotations

from typing import Any

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
_CHECK_WORDS = {"pass": "ok", "hold": "waiting", "rollback": "FAILED"}
_CHECK_NAMES = {
    "telemetry": "telemetry",
    "exposure": "exposure",
    "crash_guardrail": "crash limit",
    "error_guardrail": "error limit",
    "install_failures": "install failures",
    "crash_rate": "crash rate vs control",
    "error_rate": "error rate vs control",
    "latency_p95": "p95 latency",
    "accuracy": "accuracy",
    "duration": "time at stage",
    "deadline": "deadline",
}


def _latest(entry: dict[str, Any]) -> dict[str, Any] | None:
    decisions = entry.get("decisions") or []
    return decisions[-1] if decisions else None


def _arms(decision: dict[str, Any] | None) -> tuple[int | None, int | None]:
    """Devices in the treatment and control arms, as the latest exposure check counted them."""
    for record in (decision or {}).get("records", []):
        if record.get("metric") == "exposure":
            treatment, control = record.get("treatment_value"), record.get("control_value")
            return (
                None if treatment is None else int(treatment),
                None if control is None else int(control),
            )
    return None, None


def _check_words(record: dict[str, Any]) -> str:
    name = _CHECK_NAMES.get(record["metric"], record["metric"].replace("_", " "))
    state = _CHECK_WORDS.get(record.get("outcome", ""), record.get("outcome", "?"))
    if record.get("outcome") == "pass" or not record.get("detail"):
        return f"{name} {state}"
    return f"{name} {state} ({record['detail']})"


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
    """One line in words: stage, devices per arm, each check's state and the decision.

    e.g. `digits 1.1.0 over 1.0.0: stage 1% (1 of 4), running; devices: 3 on the update, 3 in the
    control; checks: 10 of 11 ok, exposure waiting (...); decision: hold at this stage`.
    """
    plan = entry["plan"]
    stages = plan["stages"]
    state = _STATE_WORDS.get(plan["state"], plan["state"])
    if plan.get("reason") and plan["state"] != "running":
        state += f": {plan['reason']}"
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
        passed = [r for r in records if r.get("outcome") == "pass"]
        others = [_check_words(r) for r in records if r.get("outcome") != "pass"]
        if not others:
            parts.append(f"checks: all {len(records)} ok")
        else:
            parts.append(f"checks: {len(passed)} of {len(records)} ok, " + ", ".join(others))
    words = _DECISION_WORDS.get(decision["outcome"], decision["outcome"])
    if decision["outcome"] == "promote" and decision.get("stage_index") == len(stages) - 1:
        words = "complete: every device gets the update"
    if decision.get("stage_index", plan["stage_index"]) != plan["stage_index"]:
        words += f" (at stage {stages[decision['stage_index']]}%)"
    parts.append(f"decision: {words}" + (f" (alert: {decision['alert']})" if decision.get("alert") else ""))
    return "; ".join(parts)
