"""Fleet simulation of the label-free signals: regressions no feedback label reveals are halted at 1% by the
gate that sees them, a healthy release is not, and each arm's evidence is built as the server builds it."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from edgekit.commands.simulate import simulate as simulate_command
from edgekit.rollout._replay import MAX_INFERENCES_PER_DEVICE_HOUR
from edgekit.rollout._sim_label_free import BINS, INPUT_NAME, LabelFreeFleet, zipf_mix
from edgekit.rollout.gates import GateConfig
from edgekit.rollout.simulate import FleetModel, Regression, SimulationError, simulate, simulate_run

# 20,000 devices: 200 per arm at 1%, enough for the gates' minimum devices (+ K) and small enough to be quick.
BLIND = FleetModel(devices=20_000, max_hours=60, health_telemetry=True, feedback_share=0.0)


def _halted_at_1_percent_by(summary_rollback_metrics: dict[str, int], metric: str, runs: int) -> bool:
    return summary_rollback_metrics.get(metric, 0) == runs


def test_a_label_swap_of_a_frequent_and_a_rare_class_is_rolled_back_at_1_percent_without_feedback() -> None:
    summary, results = simulate(BLIND, Regression("label_swap", 1.0, "extreme"), 4, 1)
    assert summary.halted_before_stage[2] == 1.0
    assert all(r.outcome == "rolled_back" and r.last_stage == 1 for r in results)
    assert _halted_at_1_percent_by(summary.rollback_metrics, "class_shift", 4), summary.rollback_metrics
    assert "accuracy" not in summary.rollback_metrics  # no feedback: the accuracy gate cannot see it


def test_a_swap_of_two_equally_frequent_classes_is_invisible_to_the_histogram_but_not_to_the_shadow() -> None:
    even = FleetModel(devices=20_000, max_hours=40, health_telemetry=True, feedback_share=0.0, class_skew=0.0)
    swap = Regression("label_swap", 1.0, "random")
    served, _ = simulate(even, swap, 3, 2)
    assert served.rolled_back == 0.0, "the class histogram of equally frequent classes does not move"
    shadowed, results = simulate(even, swap, 3, 2, shadow_stages=(1,))
    assert shadowed.rolled_back == 1.0 and all(r.last_stage == 1 for r in results)
    assert shadowed.rollback_metrics.get("shadow_agreement") == 3, shadowed.rollback_metrics


def test_inverted_inputs_are_rolled_back_by_the_drift_gate() -> None:
    summary, results = simulate(BLIND, Regression("input_shift", 1.0), 3, 3)
    assert all(r.outcome == "rolled_back" and r.last_stage == 1 for r in results)
    assert summary.rollback_metrics.get("input_drift") == 3, summary.rollback_metrics


def test_a_confidence_drop_is_rolled_back_by_the_confidence_gate() -> None:
    summary, results = simulate(BLIND, Regression("confidence_drop", 0.2), 3, 4)
    assert all(r.outcome == "rolled_back" and r.last_stage == 1 for r in results)
    assert summary.rollback_metrics.get("confidence_shift") == 3, summary.rollback_metrics


def test_a_healthy_release_passes_every_label_free_gate_at_1_percent() -> None:
    # 1,000 devices per arm for 40 hours: the 1% stage of the 100k fleet, where the arms are smallest.
    fleet = FleetModel(max_hours=40, health_telemetry=True, feedback_share=0.0)
    summary, results = simulate(fleet, None, 2, 5, shadow_stages=(1,))
    assert summary.rolled_back == 0.0
    for result in results:
        judged = result.evaluations[-1].statistics
        for metric in ("class_shift", "confidence_shift", "input_drift", "shadow_agreement"):
            assert judged[metric][0] == "pass", (metric, judged[metric])


def test_label_free_signals_leave_the_other_telemetry_of_a_run_unchanged() -> None:
    """The signals draw from a stream of their own: switching them on changes no crash count, so the
    existing scenarios keep their figures."""
    plain = FleetModel(devices=20_000, max_hours=8)
    with_health = FleetModel(devices=20_000, max_hours=8, health_telemetry=True)
    a = simulate_run(plain, Regression("crash", 2.0), GateConfig(), np.random.default_rng(9))
    b = simulate_run(with_health, Regression("crash", 2.0), GateConfig(), np.random.default_rng(9))
    assert [e.statistics["crash_rate"] for e in a.evaluations] == [
        e.statistics["crash_rate"] for e in b.evaluations
    ]
    assert "class_shift" in b.evaluations[0].statistics


def test_each_arm_has_one_row_per_reporting_device_weighted_by_its_capped_inferences() -> None:
    fleet = FleetModel(devices=20_000, health_telemetry=True, hostile_devices=2, input_channels=3)
    signals = LabelFreeFleet(fleet, None, np.random.default_rng(0))
    signals.start_stage(200, 400, 0, shadow=True)
    since = np.zeros(200)
    for hour in range(1, 4):
        signals.hour(hour, since, since, 1.0, (1e-3, 1e-3))
    evidence = signals.evidence(3, ("bad", "good"))
    t, c = evidence.treatment, evidence.control
    honest = t.weights[:-2]
    assert 150 < honest.size <= 200  # devices offline all three hours have not reported yet
    assert np.all(honest > 0) and np.all(honest < 200)  # about 10 inferences an hour, far below the cap
    cap = MAX_INFERENCES_PER_DEVICE_HOUR * (3 + fleet.report_interval_hours)
    assert np.allclose(t.weights[-2:], cap)  # the liars claim exactly what the per-device cap allows
    assert t.classes is not None and np.allclose(t.classes.sum(axis=1), 1.0)
    assert t.classes.shape == (t.weights.size, fleet.classes)
    assert t.drift[INPUT_NAME].shape == (t.weights.size, 3, BINS)
    assert np.allclose(t.drift[INPUT_NAME].sum(axis=2), 1.0)
    assert t.shadow_compared is not None and t.shadow_agreed is not None
    assert np.all(t.shadow_agreed <= t.shadow_compared)
    assert c.shadow_compared is not None and c.weights.size > 150
    assert evidence.reference_treatment[INPUT_NAME].shape == (3, BINS)


def test_device_mixes_vary_around_the_fleet_mix() -> None:
    fleet = FleetModel(devices=20_000, health_telemetry=True)
    signals = LabelFreeFleet(fleet, None, np.random.default_rng(0))
    signals.start_stage(2_000, 4_000, 0, shadow=False)
    assert signals.traits is not None
    mixes = signals.traits.mix
    assert np.allclose(mixes.mean(axis=0), zipf_mix(10, 1.0), atol=0.01)
    assert mixes[:, 0].std() > 0.05  # heterogeneous devices, not one mix copied


@pytest.mark.parametrize(
    "text, expected",
    [
        pytest.param("label_swap:random", Regression("label_swap", 1.0, "random"), id="random-pair"),
        pytest.param("label_swap:extreme", Regression("label_swap", 1.0, "extreme"), id="extreme-pair"),
        pytest.param("label_swap:random:0.5", Regression("label_swap", 0.5, "random"), id="half"),
        pytest.param("input_shift:1", Regression("input_shift", 1.0), id="input-shift"),
        pytest.param("confidence_drop:0.15", Regression("confidence_drop", 0.15), id="confidence"),
    ],
)
def test_label_free_regressions_parse_and_print_back(text: str, expected: Regression) -> None:
    assert Regression.parse(text) == expected
    assert Regression.parse(str(expected)) == expected


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("label_swap:neighbours", id="unknown-pair"),
        pytest.param("input_shift:2", id="share-above-1"),
        pytest.param("confidence_drop:0", id="no-drop"),
    ],
)
def test_bad_label_free_regressions_are_refused(text: str) -> None:
    with pytest.raises(SimulationError):
        Regression.parse(text)


def test_a_label_free_regression_without_health_telemetry_is_refused() -> None:
    with pytest.raises(SimulationError, match="health_telemetry"):
        simulate(FleetModel(devices=1_000), Regression("label_swap", 1.0, "random"), 1, 0)
    with pytest.raises(SimulationError, match="shadow stage 5"):
        simulate(BLIND, None, 1, 0, stages=(1, 25, 100), shadow_stages=(5,))


def test_cli_runs_a_label_swap_without_feedback_in_a_shadow_stage() -> None:
    result = CliRunner().invoke(
        simulate_command,
        [
            *("--devices", "20000", "--regression", "label_swap:random", "--no-feedback"),
            *("--shadow-stage", "1", "--runs", "2", "--seed", "1", "--max-days", "2", "--json"),
        ],
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["regression"] == "label_swap:random" and data["health_telemetry"] is True
    assert data["feedback_share"] == 0.0 and data["shadow_stages"] == [1]
    assert data["halted_before_stage_2"] == 1.0, data


def test_runs_stopped_at_a_stage_report_only_the_stages_before_it() -> None:
    summary, _ = simulate(BLIND, Regression("label_swap", 1.0, "extreme"), 2, 6, stop_at_stage=5)
    assert summary.halted_before_stage == {2: 1.0}
    data = summary.to_dict()
    assert data["stop_at_stage"] == 5 and "halted_before_stage_3" not in data
    healthy = simulate_run(
        FleetModel(devices=20_000, max_hours=30),
        None,
        GateConfig(),
        np.random.default_rng(1),
        stop_at_stage=1,
    )
    assert healthy.outcome == "stopped" and healthy.evaluations == ()
