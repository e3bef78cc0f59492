"""A gate decision in plain words (`edgekit.commands._rollout_words`): the sentences `rollout status`,
`rollout watch` and the fleet demo print.

The records come from the real gates (`edgekit.rollout.gates.evaluate` and the label-free checks on real
evidence arrays), not from hand-written dicts, so every outcome a metric can give is the one the server
would store; each must read as a sentence: no Python repr (`None`, `nan`), no long raw float, no bare "vs".
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import pytest

from edgekit.commands._rollout_state import snapshot, state_line
from edgekit.commands._rollout_words import (
    decision_lines,
    evaluation_line,
    number,
    percent,
    record_words,
)
from edgekit.rollout.gates import ArmMetrics, GateConfig, evaluate
from edgekit.rollout.label_free import ArmEvidence, LabelFreeEvidence

HOUR = 3600.0
START = 1_000_000.0
# Small-fleet gates (as the demo's): decisions within a few devices and hours.
CONFIG = GateConfig(
    min_devices_per_arm=4,
    robust_devices=0,
    min_device_hours_per_arm=2.0,
    min_expected_events=1.0,
    max_crash_rate_per_device_hour=0.5,
    negligible_crash_rate_per_device_hour=0.5,
    max_error_rate=0.1,
    negligible_error_rate=0.05,
    max_install_failure_share=0.6,
    min_latency_samples=60,
    max_accuracy_drop_pp=10.0,
    min_feedback_per_arm=30,
    stage_min_hours=((1, 4.0), (5, 2.0), (25, 2.0), (100, 2.0)),
    label_free_tuned_devices=4.0,
    stage_deadline_hours=48.0,
    max_class_shift=0.15,
    max_shadow_disagreement_excess=0.1,
    max_shadow_failure_share=0.1,
)
_DECIMAL = re.compile(r"\d+\.\d+")


def arm(
    devices: int = 8,
    hours: float = 40.0,
    crashes: float = 0,
    errors: float = 0,
    inferences: float = 2000,
    installs: float = 8,
    install_failures: float = 0,
    feedback: float = 0,
    correct: float = 0,
    latency_bucket: int = 3,
) -> ArmMetrics:
    from edgekit.rollout.gates import HISTOGRAM_SIZE

    histogram = [0.0] * HISTOGRAM_SIZE
    histogram[latency_bucket] = inferences
    return ArmMetrics(
        devices=devices,
        device_hours=hours,
        crashes=crashes,
        inferences=inferences,
        inference_errors=errors,
        installs=installs,
        install_failures=install_failures,
        feedback_total=feedback,
        feedback_correct=correct,
        latency_histogram=tuple(histogram),
    )


def evidence(disagree: float, devices: int = 12, classes: bool = True) -> LabelFreeEvidence:
    """Both arms' shadow runs (the treatment disagreeing on `disagree` of them) and class shares."""
    rng = np.random.default_rng(0)

    def one(share: float, shift: float) -> ArmEvidence:
        compared = np.full(devices, 200.0)
        mix = np.tile(np.array([0.3 - shift, 0.3 + shift, 0.2, 0.2]), (devices, 1))
        return ArmEvidence(
            weights=np.full(devices, 300.0),
            classes=mix if classes else None,
            confidence=0.9 - shift + rng.normal(0, 0.005, devices),
            shadow_compared=compared,
            shadow_agreed=compared * (1 - share),
            shadow_failures=np.zeros(devices),
        )

    shift = 0.25 if disagree > 0.2 else 0.0
    return LabelFreeEvidence(treatment=one(disagree, shift), control=one(0.0, 0.0))


def as_dicts(decision: Any) -> dict[str, Any]:
    document = decision.to_dict()
    return {"outcome": document["outcome"], "stage_index": 0, "time": document["time"], **document}


def decisions() -> dict[str, dict[str, Any]]:
    """Real decisions: waiting on everything, a healthy promotion, and rollbacks on several gates."""
    now = START + 5 * HOUR
    return {
        "early": as_dicts(
            evaluate(
                1,
                arm(1, 0.2, inferences=8, installs=1),
                arm(1, 0.2, inferences=8),
                CONFIG,
                START + 0.3 * HOUR,
                START,
            )
        ),
        "no control": as_dicts(evaluate(1, arm(2, 1.0), None, CONFIG, now, START)),
        "healthy": as_dicts(
            evaluate(
                1,
                arm(feedback=400, correct=390),
                arm(feedback=400, correct=392),
                CONFIG,
                now,
                START,
                label_free=evidence(0.0),
            )
        ),
        "crashing": as_dicts(evaluate(1, arm(crashes=60), arm(), CONFIG, now, START)),
        "erroring": as_dicts(evaluate(1, arm(errors=800), arm(), CONFIG, now, START)),
        "slow": as_dicts(evaluate(1, arm(latency_bucket=12), arm(latency_bucket=3), CONFIG, now, START)),
        "inaccurate": as_dicts(
            evaluate(1, arm(feedback=400, correct=200), arm(feedback=400, correct=390), CONFIG, now, START)
        ),
        "failing installs": as_dicts(
            evaluate(1, arm(installs=40, install_failures=40), arm(), CONFIG, now, START)
        ),
        "label bug": as_dicts(evaluate(1, arm(), arm(), CONFIG, now, START, label_free=evidence(0.45))),
        "last stage": as_dicts(evaluate(100, arm(300, 50.0), None, CONFIG, now, START)),
        "few shadow devices": as_dicts(
            evaluate(1, arm(), arm(), CONFIG, now, START, label_free=evidence(0, 2))
        ),
        "late": as_dicts(evaluate(1, arm(1, 0.2), arm(1, 0.2), CONFIG, START + 60 * HOUR, START)),
    }


def assert_plain(text: str) -> None:
    assert "None" not in text and "nan" not in text.split() and "inf" not in text.split(), text
    for found in _DECIMAL.findall(text):  # at most 3 significant digits: no raw float
        assert len(found.replace(".", "").lstrip("0")) <= 3, (found, text)
    assert " vs " not in text and "_" not in text.replace("edgekit", ""), text


def test_every_record_of_every_real_decision_reads_as_a_sentence() -> None:
    seen: set[tuple[str, str]] = set()
    for name, decision in decisions().items():
        exposure = next(r for r in decision["records"] if r["metric"] == "exposure")
        for record in decision["records"]:
            words = record_words(record, exposure)
            assert_plain(words)
            assert words[:1].islower() or words[:1].isdigit(), (name, words)
            seen.add((record["metric"], record["outcome"]))
        for line in [evaluation_line(decision, [1, 5, 25, 100]), *decision_lines(decision)]:
            assert_plain(line)
    # the outcomes the brief asks for: every metric passing, every gate that can roll back rolling back
    for metric in (
        "crash_guardrail",
        "error_guardrail",
        "install_failures",
        "latency_p95",
        "accuracy",
        "shadow_agreement",
        "class_shift",
        "exposure",
        "duration",
        "crash_rate",
    ):
        assert (metric, "pass") in seen and (metric, "hold") in seen, (metric, sorted(seen))
    for metric in (
        "crash_guardrail",
        "error_guardrail",
        "install_failures",
        "latency_p95",
        "accuracy",
        "shadow_agreement",
        "class_shift",
    ):
        assert (metric, "rollback") in seen, (metric, sorted(seen))
    assert ("deadline", "hold") in seen


def test_a_rollback_names_the_statistic_and_the_threshold_in_words() -> None:
    decision = decisions()["label bug"]
    line = evaluation_line(decision, [1, 5, 25, 100])
    assert line.startswith("stage 1%: rolling back - ")
    shadow = next(r for r in decision["records"] if r["metric"] == "shadow_agreement")
    words = record_words(shadow)
    assert words.startswith(
        "shadow runs: the new release disagrees with the current one on 45% of inputs, "
        "the current one with itself on 0%; the excess disagreement 0.45 is above the "
        "0.1 limit even at its lower bound "
    )
    assert words.endswith("-> roll back") and words in line


def test_a_hold_says_what_it_waits_for_and_how_much_exposure_is_missing() -> None:
    line = evaluation_line(decisions()["early"], [1, 5, 25, 100])
    assert line.startswith("stage 1%: holding - 1 device has the update, 1 in the control; ")
    assert (
        "crash rate and error rate: not enough exposure yet to compare with the control, about 1.8 more "
        "device-hours needed" in line
    )
    assert "p95 latency: 8 timings in the smaller group, 60 needed" in line
    assert line.endswith(" more checks waiting")  # at most 3 named; `rollout status` says every one
    assert line.count("; ") == 4, line


def test_not_judged_checks_are_one_closing_line_not_one_sentence_each() -> None:
    decision = decisions()["crashing"]  # no health or shadow evidence, no feedback
    lines = decision_lines(decision)
    assert lines[-1].startswith("not judged (no data of that kind): accuracy (no feedback labels), ")
    assert not any("not judged" in line for line in lines[:-1])
    assert "not judged" not in evaluation_line(decision, [1, 5, 25, 100])
    assert not decision_lines(decision, skipped_line=False)[-1].startswith("not judged")


def test_a_promotion_line_says_where_to_and_that_every_judged_check_passed() -> None:
    healthy = decisions()["healthy"]
    assert healthy["outcome"] == "promote", [r for r in healthy["records"] if r["outcome"] != "pass"]
    assert evaluation_line(healthy, [1, 5, 25, 100]).startswith("stage 1%: promoted to 5% - all ")
    last = decisions()["last stage"]
    assert evaluation_line({**last, "stage_index": 3}, [1, 5, 25, 100]).startswith("stage 100%: complete")


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        (None, "?"),
        (float("nan"), "?"),
        (0.0, "0"),
        (24.55836510658264, "24.6"),
        (0.000123456, "0.00012"),
        (1234.5, "1,234"),
        (5.0, "5"),
        (0.101, "0.1"),
    ],
)
def test_numbers_are_rounded_for_people(value: float | None, shown: str) -> None:
    assert number(value) == shown


def test_shares_are_percentages() -> None:
    assert [percent(x) for x in (0.4417, 0.025, 0.004, 0.0, None)] == ["44%", "2.5%", "0.4%", "0%", "?%"]


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


def test_watch_names_the_waiting_checks_in_the_same_words_as_the_demo() -> None:
    decision = decisions()["early"]
    entry = status("running", "hold", decision["records"])
    line = state_line(entry)
    assert line.startswith(
        "digits 1.2.0 over 1.1.0: stage 1% (1 of 4), running; devices: 1 on the update, "
        "1 in the control; checks: "
    )
    exposure = next(r for r in decision["records"] if r["metric"] == "exposure")
    crash = next(r for r in decision["records"] if r["metric"] == "crash_rate")
    assert record_words(crash, exposure) in line and line.endswith("decision: hold at this stage")
    assert snapshot(entry)["devices"] == {"treatment": 1, "control": 1}
    assert_plain(line)


def test_watch_says_which_check_failed_without_the_raw_reason() -> None:
    records = decisions()["crashing"]["records"]
    reason = "rollback: crash_guardrail: treatment 1.5 per device-hour: lower bound 1.1 ..."
    line = state_line(status("rolled_back", "rollback", records, reason=reason))
    assert "rolled back;" in line and "crash_guardrail" not in line
    assert "FAILED: crashes: 1.5 per device-hour on the update; at least " in line
    assert line.endswith("decision: roll back")


def test_an_operators_reason_is_kept() -> None:
    line = state_line(status("rolled_back", "hold", [], reason="aborted by operator"))
    assert "rolled back: aborted by operator;" in line, line


def test_a_latency_rollback_off_the_scale_and_a_missed_deadline_are_said_first() -> None:
    slow = evaluation_line(decisions()["slow"], [1, 5, 25, 100])
    assert "p95 latency: the update's p95 is slower than the slowest latency bucket" in slow, slow
    assert slow.endswith("-> roll back")
    late = evaluation_line(decisions()["late"], [1, 5, 25, 100])
    assert late.split("; ")[1].startswith("past the 48 h deadline"), late  # after the devices clause
    missing = evaluation_line(decisions()["no control"], [1, 5, 25, 100])
    assert "?" not in missing and "None" not in missing, missing


def test_a_bound_next_to_its_limit_gets_the_digits_that_tell_them_apart() -> None:
    from edgekit.commands._rollout_words import beside

    assert beside(number, 0.1017, 0.1) == "0.102"  # not "0.1 ... above the 0.1 limit"
    assert beside(percent, 0.1004, 0.1) == "10.04%"
    assert beside(number, 0.25, 0.1) == number(0.25) and beside(number, 0.1, 0.1) == "0.1"
    assert beside(number, None, 0.1) == "?"
