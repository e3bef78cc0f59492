"""Fleet simulation: reproducible, catches a 2x crash regression early, rarely halts a healthy release."""

from __future__ import annotations

import json
import time

import click
import pytest
from click.testing import CliRunner

from edgekit.commands.simulate import simulate as simulate_command
from edgekit.rollout.gates import GateConfig
from edgekit.rollout.simulate import (
    FleetModel,
    Regression,
    SimulationError,
    plot,
    simulate,
    simulate_run,
)

FLEET = FleetModel()  # 100,000 devices, 1e-3 crashes per device-hour
SMALL = FleetModel(devices=10_000, max_hours=120)
TIMING_KEYS = ("seconds", "runs_per_second", "seconds_per_run")


def _json_without_timing(summary_dict: dict[str, object]) -> str:
    return json.dumps({k: v for k, v in summary_dict.items() if k not in TIMING_KEYS}, sort_keys=True)


def test_same_seed_gives_the_same_figures() -> None:
    first, _ = simulate(SMALL, Regression("crash", 2.0), 5, 7)
    again, _ = simulate(SMALL, Regression("crash", 2.0), 5, 7)
    other, _ = simulate(SMALL, Regression("crash", 2.0), 5, 8)
    assert _json_without_timing(first.to_dict()) == _json_without_timing(again.to_dict())
    assert first.to_dict(timing=False) != other.to_dict(timing=False)


def test_run_i_does_not_depend_on_the_number_of_runs() -> None:
    _, three = simulate(SMALL, None, 3, 11)
    _, five = simulate(SMALL, None, 5, 11)
    assert [(r.outcome, r.end_hour, r.exposed_devices) for r in three] == [
        (r.outcome, r.end_hour, r.exposed_devices) for r in five[:3]
    ]


def test_a_2x_crash_regression_is_halted_in_the_first_stage() -> None:
    summary, results = simulate(FLEET, Regression("crash", 2.0), 20, 1)
    assert summary.halted_before_stage[2] >= 0.8
    assert summary.halted_before_stage[3] == 1.0
    assert all(r.outcome == "rolled_back" for r in results)
    assert summary.rollback_metrics.get("crash_rate", 0) >= 16
    # At the 1% stage roughly 1,000 devices (plus a few joiners) ran the target before the halt.
    assert summary.mean_exposed_devices is not None and summary.mean_exposed_devices < 5_000


def test_a_healthy_release_is_rarely_halted_and_reaches_100_percent() -> None:
    summary, results = simulate(FLEET, None, 20, 2)
    assert summary.false_halt_rate is not None and summary.false_halt_rate <= 1 / 20
    assert summary.complete >= 0.9
    assert summary.hours_to_full["p50"] is not None and summary.hours_to_full["p50"] <= 96
    completed = [r for r in results if r.outcome == "complete"]
    assert [s for s, _ in completed[0].stage_starts] == [1, 5, 25, 100]
    assert completed[0].exposed_devices >= FLEET.devices  # every device (joiners too) ran the target


def test_summary_json_has_the_figures_the_issue_asks_for() -> None:
    summary, _ = simulate(SMALL, None, 2, 3)
    data = summary.to_dict()
    for key in (
        "halted_before_stage_2",
        "halted_before_stage_3",
        "false_halt_rate",
        "mean_exposed_devices",
        "hours_to_full",
        "runs_per_second",
    ):
        assert key in data
    assert set(data["hours_to_full"]) >= {"mean", "p50", "p95"}
    json.dumps(data, allow_nan=False)


def test_a_run_records_every_evaluation_with_its_statistics() -> None:
    import numpy as np

    result = simulate_run(SMALL, Regression("crash", 3.0), GateConfig(), np.random.default_rng(0))
    assert result.evaluations
    assert [e.hour for e in result.evaluations] == list(range(1, result.end_hour + 1))
    assert "crash_rate" in result.evaluations[-1].statistics
    if result.outcome == "rolled_back":
        assert result.rollback_metrics


@pytest.mark.parametrize(
    "text, expected",
    [
        pytest.param("crash:2.0", Regression("crash", 2.0), id="crash"),
        pytest.param("errors:1.5", Regression("errors", 1.5), id="errors"),
        pytest.param("accuracy:-2", Regression("accuracy", -2.0), id="accuracy"),
        pytest.param("latency:1.5", Regression("latency", 1.5), id="latency"),
    ],
)
def test_regressions_parse(text: str, expected: Regression) -> None:
    assert Regression.parse(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("crash", id="no-amount"),
        pytest.param("memory:2", id="unknown-kind"),
        pytest.param("crash:-1", id="negative-factor"),
        pytest.param("crash:nan", id="nan"),
    ],
)
def test_bad_regressions_are_refused(text: str) -> None:
    with pytest.raises(SimulationError):
        Regression.parse(text)


@pytest.mark.parametrize(
    "fields",
    [
        pytest.param({"devices": 0}, id="no-devices"),
        pytest.param({"telemetry_loss": 1.0}, id="all-lost"),
        pytest.param({"crash_hazard_per_hour": float("nan")}, id="nan-hazard"),
        pytest.param({"report_interval_hours": 0}, id="zero-interval"),
    ],
)
def test_bad_fleet_models_are_refused(fields: dict[str, object]) -> None:
    with pytest.raises(SimulationError):
        FleetModel(**fields)  # type: ignore[arg-type]


def test_cli_prints_json() -> None:
    result = CliRunner().invoke(
        simulate_command,
        ["--devices", "10000", "--regression", "crash:2.0", "--runs", "3", "--seed", "1", "--json"],
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["regression"] == "crash:2" and data["runs"] == 3 and data["devices"] == 10_000
    assert "halted_before_stage_2" in data


def test_cli_prints_a_table_with_targets() -> None:
    result = CliRunner().invoke(simulate_command, ["--devices", "10000", "--runs", "2", "--max-days", "5"])
    assert result.exit_code == 0, result.output
    assert "false halts (A/A)" in result.output and "target" in result.output


def test_cli_refuses_a_bad_regression() -> None:
    result = CliRunner().invoke(simulate_command, ["--regression", "crash"])
    assert result.exit_code == click.UsageError.exit_code
    assert "KIND:AMOUNT" in result.output


def test_plot_writes_a_png(tmp_path) -> None:
    summary, results = simulate(SMALL, Regression("crash", 2.0), 3, 4)
    path = plot(summary, results, tmp_path / "runs.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in tmp_path.iterdir()] == ["runs.png"]  # no temporary file left behind


def test_cli_writes_the_plot(tmp_path) -> None:
    out = tmp_path / "sim.png"
    result = CliRunner().invoke(
        simulate_command, ["--devices", "10000", "--runs", "2", "--json", "--plot", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert out.read_bytes()[:4] == b"\x89PNG"


def test_one_100k_device_rollout_completes() -> None:
    """Times one full rollout of the 100k fleet; the time is printed, not asserted (timings are reported)."""
    import numpy as np

    began = time.perf_counter()
    result = simulate_run(FLEET, None, GateConfig(), np.random.default_rng(0))
    seconds = time.perf_counter() - began
    print(f"one 100k-device rollout: {seconds:.3f} s, {result.outcome} at {result.end_hour} h")
    assert result.outcome in ("complete", "rolled_back", "stuck")


def test_three_hostile_devices_per_arm_can_stall_a_rollout_but_never_steer_it() -> None:
    hostile = FleetModel(devices=10_000, max_hours=120, hostile_devices=3)
    plain = GateConfig(robust_devices=0)
    healthy, _ = simulate(hostile, None, 3, 5)
    regressed, _ = simulate(hostile, Regression("crash", 2.0), 3, 5)
    assert healthy.false_halt_rate == 0.0, "no false rollback"
    assert regressed.false_promote_rate == 0.0, "no false promotion"
    # The same liars against gates that trust every device: every run goes the wrong way.
    fooled, _ = simulate(hostile, None, 3, 5, plain)
    promoted, _ = simulate(hostile, Regression("crash", 2.0), 3, 5, plain)
    assert fooled.false_halt_rate == 1.0 and promoted.false_promote_rate == 1.0
    assert healthy.to_dict()["hostile_devices"] == 3


def test_cli_hostile_devices_hold_a_regression_instead_of_promoting_it() -> None:
    result = CliRunner().invoke(
        simulate_command,
        [
            *("--devices", "100000", "--regression", "crash:2.0", "--runs", "4", "--seed", "1", "--json"),
            *("--hostile-devices", "3", "--max-days", "3"),
        ],
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["hostile_devices"] == 3, data
    assert data["complete"] == 0.0, "no lying devices may carry a 2x crash regression to 100%"
