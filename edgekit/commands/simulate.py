"""`edgekit simulate`: seeded fleet simulations of rollouts through the real gate engine, against targets."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from edgekit.commands._common import emit_result, json_flag

# (JSON key, what, comparison, target): informational, printed next to the figures.
_TARGETS: dict[str, tuple[tuple[str, str, str, float], ...]] = {
    "regression": (
        ("halted_before_stage_2", "halted before leaving the first stage", ">=", 0.90),
        ("halted_before_stage_3", "halted before the third stage", ">=", 0.999),
    ),
    "label_swap": (("halted_before_stage_2", "label swap halted in the first stage", ">=", 0.95),),
    "healthy": (
        ("false_halt_rate", "false halts (A/A)", "<=", 0.01),
        ("hours_to_full.share_within_96h", "at 100% within 96 h", ">=", 0.95),
        ("hours_to_full.p50", "median hours to 100%", "<=", 96.0),
    ),
}


def _parse_regression(ctx: click.Context, param: click.Parameter, value: str | None) -> Any:
    from edgekit.rollout.simulate import Regression, SimulationError

    if value is None:
        return None
    try:
        return Regression.parse(value)
    except SimulationError as e:
        raise click.BadParameter(str(e)) from None


def _lookup(data: dict[str, Any], key: str) -> Any:
    for part in key.split("."):
        data = data.get(part) if isinstance(data, dict) else None  # type: ignore[assignment]
    return data


class _Progress:
    """A line on stderr at every 10% of the runs (nothing for short simulations)."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.shown = 0

    def __call__(self, done: int, total: int) -> None:
        if self.quiet or total < 20:
            return
        tenth = done * 10 // total
        if tenth > self.shown:
            self.shown = tenth
            click.echo(f"simulate: {done}/{total} runs", err=True)


@click.command()
@click.option("--devices", type=click.IntRange(min=1), default=100_000, show_default=True, help="Fleet size.")
@click.option(
    "--regression",
    callback=_parse_regression,
    metavar="KIND:AMOUNT",
    help="crash:2.0, errors:1.5, latency:1.5 (factors), accuracy:-2 (pp), or label-free: label_swap:random, "
    "label_swap:extreme (the most and least frequent classes), input_shift:1 (share of inputs inverted), "
    "confidence_drop:0.15; omit for a healthy release.",
)
@click.option(
    "--runs", type=click.IntRange(min=1), default=200, show_default=True, help="Rollouts to simulate."
)
@click.option(
    "--seed", type=click.IntRange(min=0), default=0, show_default=True, help="Seed of the simulated fleets."
)
@click.option(
    "--hazard", type=click.FloatRange(min=0), default=1e-3, show_default=True, help="Crashes per device-hour."
)
@click.option(
    "--telemetry-loss",
    type=click.FloatRange(0, 1, max_open=True),
    default=0.01,
    show_default=True,
    help="Share of telemetry batches lost on the way.",
)
@click.option(
    "--offline",
    type=click.FloatRange(0, 1, max_open=True),
    default=0.10,
    show_default=True,
    help="Share of devices offline in an hour.",
)
@click.option(
    "--clock-skew", type=click.FloatRange(min=0), default=0.25, show_default=True, help="Hours (std dev)."
)
@click.option(
    "--join-rate",
    type=click.FloatRange(min=0),
    default=0.0005,
    show_default=True,
    help="Devices joining per hour, as a share of the fleet.",
)
@click.option(
    "--hostile-devices",
    type=click.IntRange(0, 100),
    default=0,
    show_default=True,
    help="Devices per arm that lie at the per-device caps in the worst direction every hour.",
)
@click.option(
    "--label-free",
    is_flag=True,
    help="Devices report health sketches, so the label-free gates judge (implied by a label-free "
    "regression or --shadow-stage).",
)
@click.option("--no-feedback", is_flag=True, help="No ground-truth feedback at all (feedback share 0).")
@click.option(
    "--shadow-stage",
    "shadow_stages",
    type=click.IntRange(1, 99),
    multiple=True,
    help="A stage percent in which the treatment runs the target in shadow instead of serving it "
    "(repeatable).",
)
@click.option(
    "--shadow-sample",
    type=click.FloatRange(0, 1, min_open=True),
    default=0.1,
    show_default=True,
    help="Share of inferences also run in shadow.",
)
@click.option(
    "--classes", type=click.IntRange(2, 1000), default=10, show_default=True, help="Classes of the output."
)
@click.option(
    "--class-skew",
    type=click.FloatRange(min=0),
    default=1.0,
    show_default=True,
    help="Zipf exponent of the fleet's class mix (0: equally frequent classes).",
)
@click.option(
    "--stop-at-stage",
    type=click.IntRange(1, 100),
    help="Stop each run when it reaches this stage percent (quick figures about the earlier stages).",
)
@click.option(
    "--max-days", type=click.FloatRange(min=1 / 24), default=10.0, show_default=True, help="Simulated days."
)
@click.option(
    "--plot", "plot_path", type=click.Path(dir_okay=False, path_type=Path), help="Write a PNG of the runs."
)
@json_flag("the figures")
@click.option("--quiet", is_flag=True, help="No progress on stderr.")
def simulate(
    devices: int,
    regression: Any,
    runs: int,
    seed: int,
    hazard: float,
    telemetry_loss: float,
    offline: float,
    clock_skew: float,
    join_rate: float,
    hostile_devices: int,
    label_free: bool,
    no_feedback: bool,
    shadow_stages: tuple[int, ...],
    shadow_sample: float,
    classes: int,
    class_skew: float,
    stop_at_stage: int | None,
    max_days: float,
    plot_path: Path | None,
    as_json: bool,
    quiet: bool,
) -> None:
    """Simulate phased rollouts of a fleet through the real gate engine and report how they end."""
    from edgekit.rollout.gates import GateConfig
    from edgekit.rollout.simulate import LABEL_FREE_KINDS, FleetModel, SimulationError
    from edgekit.rollout.simulate import plot as write_plot
    from edgekit.rollout.simulate import simulate as run_simulation

    health = (
        label_free or bool(shadow_stages) or (regression is not None and regression.kind in LABEL_FREE_KINDS)
    )
    try:
        model = FleetModel(
            devices=devices,
            crash_hazard_per_hour=hazard,
            telemetry_loss=telemetry_loss,
            offline_share=offline,
            clock_skew_hours=clock_skew,
            join_rate=join_rate,
            hostile_devices=hostile_devices,
            max_hours=max(1, round(max_days * 24)),
            health_telemetry=health,
            feedback_share=0.0 if no_feedback else FleetModel.feedback_share,
            shadow_sample=shadow_sample,
            classes=classes,
            class_skew=class_skew,
        )
        summary, results = run_simulation(
            model,
            regression,
            runs,
            seed,
            GateConfig(),
            shadow_stages=tuple(sorted(set(shadow_stages))),
            stop_at_stage=stop_at_stage,
            progress=_Progress(quiet),
        )
    except SimulationError as e:
        raise click.ClickException(str(e)) from None
    if plot_path is not None:
        write_plot(summary, results, plot_path)
    data = summary.to_dict()
    if as_json:
        emit_result(data)
        return
    scenario = "healthy release (A/A)" if regression is None else f"regression {regression}"
    signals = [
        "label-free signals" if health else "no health telemetry",
        "no feedback" if no_feedback else "feedback",
    ]
    if shadow_stages:
        signals.append(f"shadow at {', '.join(f'{s}%' for s in summary.shadow_stages)}")
    click.echo(f"{devices:,} devices, {scenario}, {runs} runs, seed {seed} ({'; '.join(signals)})")
    rows: list[tuple[str, str]] = []
    for k in summary.halted_before_stage:
        rows.append(
            (f"halted before stage {k} ({summary.stages[k - 1]}%)", f"{data[f'halted_before_stage_{k}']:.2%}")
        )
    full = summary.hours_to_full
    rows += [
        (
            "rolled back / stuck / complete",
            f"{summary.rolled_back:.2%} / {summary.stuck:.2%} / {summary.complete:.2%}",
        ),
        ("mean devices exposed at a rollback", _num(summary.mean_exposed_devices)),
        (
            "hours to 100%: mean / p50 / p95",
            f"{_num(full['mean'])} / {_num(full['p50'])} / {_num(full['p95'])}",
        ),
        ("reached 100% within 96 h", f"{full['share_within_96h']:.2%}"),
        (
            "rollbacks by check",
            ", ".join(f"{m} {c}" for m, c in sorted(summary.rollback_metrics.items())) or "-",
        ),
        ("seconds per run", f"{summary.seconds / runs:.3f}"),
    ]
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        click.echo(f"  {name:<{width}}  {value}")
    if plot_path is not None:
        click.echo(f"plot: {plot_path}")
    if regression is not None and regression.kind not in ("crash", "label_swap"):
        return  # the targets are stated for crash regressions, label swaps and healthy releases
    scenario_key = "healthy" if regression is None else regression.kind.replace("crash", "regression")
    click.echo("targets (informational):")
    for key, what, sign, limit in _TARGETS[scenario_key]:
        value = _lookup(data, key)
        if value is None and key.startswith("halted") and stop_at_stage is not None:
            continue  # a stage the runs stopped before
        ok = value is not None and (value >= limit if sign == ">=" else value <= limit)
        shown = (
            "-"
            if value is None
            else (f"{value:.4g}" if "hours" in key and "share" not in key else f"{value:.2%}")
        )
        goal = f"{limit:g}" if "p50" in key else f"{limit:.1%}"
        click.echo(f"  {'PASS' if ok else 'MISS'}  {what}: {shown} (target {sign} {goal})")


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:,.1f}"
