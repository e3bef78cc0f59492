"""Red-team findings against the issue-10 defences, each replayed against the real server or gate code.

Every test here failed on the code as merged and passes with the fix named in its docstring.
"""

from __future__ import annotations

from typing import Any

from edgekit.rollout.gates import DeviceTelemetry, decide
from edgekit.rollout.plan import arm
from tests.adversarial._hostile import (
    HOUR,
    PLAIN,
    ROBUST,
    START,
    fleet_rows,
    honest_devices,
    insert_events,
    latency_sum,
    send_batch,
    truthful_decision,
)
from tests.server.fleet import evaluate, start_rollout
from tests.server.test_rollout_e2e import assert_replay_reproduces

# -- the SPRT's negligible-rate pass ignored the devices that could be removed ---------------------------
#
# `_sprt` checked "rollback at the lowest LLR", then "pass at the highest", then "the treatment's rate is
# negligible". A liar that adds clean treatment exposure (or control errors) drags the lowest LLR under A,
# and the negligible bound (on the treatment's rate without the removable devices) then passed the metric
# although the honest devices' own data shows a regression. Fixed: the negligible pass needs that no
# removal leaves a rollback (the highest LLR below A, or too few expected events).


def _clean_liar(now: float) -> DeviceTelemetry:
    return DeviceTelemetry(
        "liar",
        "treatment",
        reported=True,
        first=START,
        last=now,
        inferences=10**9,
        latency_histogram=(0, 0, 10**9) + (0,) * 10,
    )


def test_clean_inferences_from_one_device_do_not_turn_an_error_regression_into_a_promotion() -> None:
    hours = 3.0
    now = START + hours * HOUR
    honest = honest_devices(
        1,
        devices=(24, 24),
        hours=hours,
        crash_hazard=(0.02, 0.02),
        error_rate=(0.03, 0.0),  # a 3% error rate, under the 5% guardrail, against an error-free control
        slow_buckets=0,
        feedback=False,
        accuracy=(0.9, 0.9),
    )
    truth = decide(10, honest, PLAIN, now, START)
    assert truth.outcome == "rollback", truth
    attacked = decide(10, [*honest, _clean_liar(now)], ROBUST, now, START)
    assert attacked.outcome in ("rollback", "hold"), attacked


def test_the_robust_gates_never_pass_a_regression_the_plain_gates_roll_back() -> None:
    """Without any liar: taking the K most influential devices away must not turn a rollback into a pass."""
    hours = 3.0
    now = START + hours * HOUR
    honest = honest_devices(
        1,
        devices=(24, 24),
        hours=hours,
        crash_hazard=(0.02, 0.02),
        error_rate=(0.017, 0.0),
        slow_buckets=0,
        feedback=False,
        accuracy=(0.9, 0.9),
    )
    assert decide(10, honest, PLAIN, now, START).outcome == "rollback"
    assert decide(10, honest, ROBUST, now, START).outcome in ("rollback", "hold")


def test_a_liar_claiming_clean_inferences_over_http_does_not_promote_an_error_regression(fleet: Any) -> None:
    server, clock, tokens = fleet
    plan = start_rollout(server, "1.1.0", "1.0.0", [10, 50, 100])
    start = clock.now
    liar = next(d for d in sorted(tokens) if arm(plan, d) == "treatment")
    devices = [d for d in sorted(tokens) if d != liar]
    # 2 of every 60 treatment inferences fail (3.3%: under the 5% guardrail); the control has no errors.
    insert_events(server.app.state.database, fleet_rows(plan, devices, start, treatment_errors=2))
    most = [0, 0, 1_000_000] + [0] * 10  # fast, and more than the per-device cap lets count
    clean = {
        "bundle_id": plan.target.bundle_id,
        "inferences": sum(most),
        "errors": 0,
        "latency_ms_buckets": most,
        "latency_ms_sum": latency_sum(most),
        "window_s": 3600.0,
    }
    at = [start + 0.01 * HOUR, start + HOUR, start + 2.9 * HOUR]  # its reports span the window
    assert send_batch(server, liar, tokens[liar], [("inferences", t, clean) for t in at]) == 200
    refused = server.app.state.database.execute(
        "SELECT reason FROM quarantine WHERE device_id = ? AND received_at >= ?", (liar, start)
    )
    assert refused == [], refused  # within the contract: stored
    clock.now += 3 * HOUR
    result = evaluate(server)
    truth = truthful_decision(server, plan, clock.now, {liar})
    assert truth.outcome == "rollback", truth
    assert result["decision"]["outcome"] in ("rollback", "hold"), [
        (r["metric"], r["outcome"], r["detail"]) for r in result["decision"]["records"]
    ]
    assert_replay_reproduces(server, plan.rollout_id, expected=1)
