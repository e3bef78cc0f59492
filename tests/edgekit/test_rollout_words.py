"""`rollout watch`'s words for states the live server test does not reach on purpose: waiting, failing."""

from __future__ import annotations

from typing import Any

from edgekit.commands._rollout_words import snapshot, state_line


def status(state: str, outcome: str, records: list[dict[str, Any]], reason: str = "") -> dict[str, Any]:
    plan = {
        "rollout_id": "r1",
        "model": "digits",
        "target": {"version": "1.2.0"},
        "baseline": {"version": "1.1.0"},
        "stages": [1, 5, 25, 100],
        "stage_index": 0,
        "state": state,
        "reason": reason,
    }
    decision = {"outcome": outcome, "time": 0.0, "stage_index": 0, "alert": None, "records": records}
    return {"plan": plan, "stage_percent": 1, "decisions": [decision]}


def record(
    metric: str, outcome: str, detail: str, t: float | None = None, c: float | None = None
) -> dict[str, Any]:
    return {"metric": metric, "outcome": outcome, "detail": detail, "treatment_value": t, "control_value": c}


def test_a_holding_stage_names_the_checks_that_wait_and_why() -> None:
    entry = status(
        "running",
        "hold",
        [
            record("telemetry", "pass", "present"),
            record("exposure", "hold", "2 of 3 devices per arm", t=2, c=3),
            record("crash_guardrail", "pass", "ok"),
        ],
    )
    line = state_line(entry)
    assert line == (
        "digits 1.2.0 over 1.1.0: stage 1% (1 of 4), running; devices: 2 on the update, 3 in the control; "
        "checks: 2 of 3 ok, exposure waiting (2 of 3 devices per arm); decision: hold at this stage"
    )
    assert snapshot(entry)["devices"] == {"treatment": 2, "control": 3}


def test_a_rollback_says_which_check_failed_and_the_reason() -> None:
    entry = status(
        "rolled_back",
        "rollback",
        [record("crash_rate", "rollback", "regression: 4.1 vs 0.9 crashes per 100 device-hours")],
        reason="crash_rate regression",
    )
    line = state_line(entry)
    assert "rolled back: crash_rate regression" in line
    assert "crash rate vs control FAILED (regression: 4.1 vs 0.9 crashes per 100 device-hours)" in line
    assert line.endswith("decision: roll back")
