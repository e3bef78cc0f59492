"""Fleet simulation: many seeded rollouts of a statistical device fleet through the real gate engine.

Each simulated rollout drives a `RolloutPlan` through its stages with the same `evaluate` the server runs,
fed with telemetry drawn from a statistical model of the fleet (`FleetModel`): a crash hazard per
device-hour, an error rate per inference, a latency distribution, feedback accuracy, telemetry loss,
devices offline (their telemetry queues and arrives later), device clock skew, devices that pick up a new
stage after a delay and devices that join mid-rollout. A `Regression` makes the target release worse in
one way; without one the run is an A/A test and any rollback is a false halt.

Why it is fast enough for 100,000 devices: devices are kept only as arrays (cohort position u, join hour,
update delay), sorted by u so that every arm is a contiguous slice, and the exact number of devices
running each arm's release in an hour comes from `searchsorted` on those arrays. Telemetry is drawn per
arm and hour as a whole (Poisson crashes over the arm's device-hours, binomial errors and feedback,
multinomial latency buckets), which is exact for independent devices and costs the same for 1,000 devices
as for 1,000,000. Cohorts u come from SHA-256 of the device id on real devices (`cohort_u`); uniform draws
have the same distribution.

Telemetry path, per arm and hour: generated -> thinned by telemetry loss and, in the first hours of a
stage, by clock skew (reports stamped before the stage start fall outside its window) -> delayed by the
report interval and by offline hours (a geometric number of extra hours) -> added to the stage's
cumulative `ArmMetrics`. Data still in flight when a stage changes belongs to the old stage's window.

Each arm is built as the server builds it: with its K most influential devices' share
(`ArmMetrics.removable`, approximated from the per-device Poisson counts), and with
`FleetModel.hostile_devices` liars per arm that report at the per-device caps every hour in the worst
direction: toward a rollback of a healthy release (treatment devices as broken as a device can be,
control devices flawless and busy), toward the promotion of a regressed one (the reverse).

Label-free signals (`FleetModel.health_telemetry`, `edgekit.rollout._sim_label_free`): each device of an
arm is one row of the gates' `ArmEvidence`, with its own class mix (Dirichlet around a Zipf fleet mix),
inference rate, mean confidence and input bins, and in shadow stages (`shadow_stages`) its shadow
comparisons; the rows go through `evaluate(..., label_free=...)` like the server's. Regressions no label
reveals: `label_swap` (two classes swapped), `input_shift` (inputs inverted), `confidence_drop`; with
`feedback_share=0` no feedback label is sent. These signals draw from a generator spawned from the run's,
so switching them on leaves every other draw of a run as it was.

Label-free figures (100,000 devices, default `GateConfig`, K = 3, seed 1, hourly evaluation; CPU: Intel
Xeon @ 2.80 GHz, 2 cores, shared with other jobs; the command after each figure reproduces it):

- label swap of the most and the least frequent class (`label_swap:extreme`, Zipf mix over 10 classes:
  shares 0.34 ... 0.034, a class-histogram shift of 0.31), no feedback, no shadow: 200 of 200 runs rolled
  back in the 1% stage by `class_shift`, all in the first hour (`edgekit simulate --regression
  label_swap:extreme --no-feedback --max-days 4 --stop-at-stage 5 --runs 200 --seed 1`).
- label swap of a random pair (uniform over the 45 pairs, drawn per run), no feedback, no shadow: 32 of
  116 runs (27.6%) rolled back in the 1% stage, all by `class_shift` (median 1 h, at most 9 h); 60 (51.7%)
  never left it within 96 h (28 held: 25 whose swap moves the histogram by 0.05 to 0.12, where
  `class_shift` can neither pass nor blame the release on 1,000 devices per arm, and 3 below 0.05 held by
  other gates, the crash SPRT in the one inspected). Target (>= 95% halted) MISSED without a shadow: a
  swap moves the class histogram by |p_a - p_b| only, and only 15 of the 45 pairs differ by >= 0.10
  (`... --regression label_swap:random ... --runs 116`). With a 1% shadow stage (`--shadow-stage 1`,
  10% of inferences shadowed): 300 of 300 rolled back in the 1% stage by `shadow_agreement`, median 1 h,
  at most 3 h (the shadow disagrees on p_a + p_b >= 0.072 of inputs, whatever the frequencies;
  `... --shadow-stage 1 --runs 300`).
- label swap of two equally frequent classes (`--class-skew 0`, the digits demo's case): the class
  histogram does not move at all; with a 1% shadow stage 100 of 100 runs rolled back by
  `shadow_agreement` within 2 h (`... --class-skew 0 --shadow-stage 1 --runs 100`); without a shadow 0
  of 20 rolled back (18 left the 1% stage, 2 held there by other gates; `... --class-skew 0 --runs 20`).
- inverted inputs (`input_shift:1`): 100 of 100 rolled back at 1% by `input_drift` in the first hour;
  a 0.15 drop of mean top-1 confidence (`confidence_drop:0.15`): 100 of 100 by `confidence_shift`, first
  hour (same options, `--runs 100`).
- healthy release (A/A), every gate on (feedback at the default 5% share, health telemetry), whole
  rollouts: 0 of 300 rolled back (false halts 0%; 3/300 = 1% is the 95% upper bound), 300 complete,
  hours to 100% median 54, p95 114, 92.3% within 96 h (`edgekit simulate --label-free --runs 300 --seed
  1`; measured with the gates before `LabelFreeEvidence` took the profiles' bin edges, which only add a
  way for input drift to pass). With a 1% shadow stage, the 1% stage only: 0 of 284 rolled back, every
  one promoted to 5%, at a median 36 h, the stage's minimum (`edgekit simulate --label-free --shadow-stage
  1 --stop-at-stage 5 --runs 284 --seed 1`).

Cost: a run that halts at 1% takes 0.1 to 0.5 s here; a whole A/A rollout about 20 s (the 25% and 100%
stages evaluate 25,000 to 100,000 device rows an hour), a 1% stage with a shadow about 6 s.

Everything is pure: randomness comes only from the `np.random.Generator` passed in (`simulate` spawns one
per run from the seed, so run i is the same whatever the number of runs), time is simulated.

Errors::

    RolloutError            (edgekit.errors)
    └── SimulationError     an invalid fleet model, regression or run count
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from edgekit.rollout._sim_arms import N_COUNTS, arm_metrics, delay_kernel, draw_hour, releases
from edgekit.rollout._sim_label_free import LabelFreeFleet
from edgekit.rollout._sim_types import (
    LABEL_FREE_KINDS,
    REGRESSION_KINDS,
    EvaluationRow,
    FleetModel,
    Outcome,
    Regression,
    RunResult,
    SimulationError,
    Summary,
)
from edgekit.rollout.gates import GateConfig, evaluate
from edgekit.rollout.plan import Release, RolloutPlan

__all__ = [
    "LABEL_FREE_KINDS",
    "REGRESSION_KINDS",
    "EvaluationRow",
    "FleetModel",
    "Regression",
    "RunResult",
    "SimulationError",
    "Summary",
    "plot",
    "simulate",
    "simulate_run",
]


def _plan() -> RolloutPlan:
    def release(version: str, counter: int) -> Release:
        bundle_id = hashlib.sha256(f"simulated {version}".encode()).hexdigest()  # a stand-in bundle id
        return Release(version, counter, f"bundles/simulated/simulated-{version}.ekb", bundle_id)

    return RolloutPlan("simulated", "stable", "simulation", "salt", release("2", 2), release("1", 1))


def _check_label_free(
    model: FleetModel, regression: Regression | None, stages: Sequence[int], shadow_stages: Sequence[int]
) -> None:
    for s in shadow_stages:
        if s not in stages or s == 100:
            raise SimulationError(
                f"shadow stage {s!r} must be one of the plan's stages below 100 "
                f"({', '.join(map(str, stages))})"
            )
    if shadow_stages and not model.health_telemetry:
        raise SimulationError(
            "shadow stages need FleetModel(health_telemetry=True): shadow results are health telemetry"
        )
    if regression is not None and regression.kind in LABEL_FREE_KINDS and not model.health_telemetry:
        raise SimulationError(
            f"a {regression.kind} regression shows only in health telemetry: "
            "use FleetModel(health_telemetry=True)"
        )


def simulate_run(
    model: FleetModel,
    regression: Regression | None,
    gates: GateConfig,
    rng: np.random.Generator,
    *,
    stages: Sequence[int] = (1, 5, 25, 100),
    shadow_stages: Sequence[int] = (),
    stop_at_stage: int | None = None,
) -> RunResult:
    """Simulate one rollout of the fleet through `stages`, evaluating the gates every `eval_every_hours`.

    Args:
        model: the fleet.
        regression: how the target is worse, or None for a healthy release (A/A).
        gates: the gate configuration the server would use.
        rng: the only source of randomness.
        stages: stage percentages, as in a rollout plan.
        shadow_stages: stage percents in which the treatment runs the target in shadow instead of
            serving it (and the control shadows its own baseline), as a plan's `shadow` key asks.
        stop_at_stage: stop the run (outcome `stopped`) when it reaches this stage percent: figures about
            the earlier stages (a regression halted in the first stage) without simulating the rest.

    Raises:
        PlanError: invalid stages (as `RolloutPlan` checks them).
        SimulationError: a shadow stage that is not one of `stages` below 100, or a label-free regression
            on a fleet without `health_telemetry`.
    """
    plan = dataclasses.replace(_plan(), stages=tuple(stages), stage_deadline_hours=gates.stage_deadline_hours)
    _check_label_free(model, regression, stages, shadow_stages)
    target, baseline = releases(model, regression)
    # The label-free signals draw from their own stream (spawned, so the other draws stay as they were).
    health = LabelFreeFleet(model, regression, rng.spawn(1)[0]) if model.health_telemetry else None
    kernel = delay_kernel(model)
    # Devices as arrays sorted by cohort position u, so every arm is a slice [lo, hi). Sorted uniforms are
    # drawn directly (normalised sums of exponential spacings), which is O(n) where sorting is not.
    joiners = int(rng.poisson(model.join_rate * model.devices * model.max_hours))
    n = model.devices + joiners
    spacings = np.cumsum(rng.standard_exponential(n + 1))
    u = spacings[:-1] / spacings[-1]
    join = np.zeros(n)
    if joiners:  # which cohort positions belong to devices that join later, and when they join
        late = rng.random(n) < joiners / n
        join[late] = rng.uniform(0, model.max_hours, int(np.count_nonzero(late)))
    delay = rng.exponential(model.update_delay_hours, n) if model.update_delay_hours > 0 else np.zeros(n)
    active_at = np.full(n, np.inf)  # hour each device starts running the target

    evaluations: list[EvaluationRow] = []
    starts: list[tuple[int, int]] = []
    hour, hours_to_full = 0, None
    outcome: Outcome = "stuck"
    rollback_metrics: tuple[str, ...] = ()
    while True:
        stage, start = plan.stage_percent, hour
        starts.append((stage, start))
        if stop_at_stage is not None and stage >= stop_at_stage:
            outcome = "stopped"
            break
        if stage == 100:
            hours_to_full = start
        p = stage / 100
        t_hi = int(np.searchsorted(u, p)) if stage < 100 else n
        c_hi = int(np.searchsorted(u, 2 * p)) if plan.control and stage < 100 else t_hi
        # Devices newly in the treatment pick up the stage after their update delay (or join later).
        fresh = slice(0, t_hi)
        active_at[fresh] = np.minimum(active_at[fresh], np.maximum(join[fresh], start) + delay[fresh])
        t_active = np.sort(active_at[:t_hi])
        c_joined = np.sort(join[t_hi:c_hi])
        running_before = int(np.searchsorted(t_active, start, "right"))
        shadow = stage in shadow_stages
        if health is not None:  # at 100% the control arm is empty (input drift and shadow failures apply)
            health.start_stage(t_hi, c_hi, start, shadow=shadow)
        # In-flight telemetry per arm as ring buffers: slot (hour + d) % size arrives d hours from now.
        size = len(kernel)
        pending = {a: (np.zeros(size), np.zeros((size, N_COUNTS), dtype=np.int64)) for a in "tc"}
        totals = {a: (0.0, np.zeros(N_COUNTS, dtype=np.int64)) for a in "tc"}
        installed = running_before
        decided = False
        while hour < model.max_hours:
            hour += 1
            k = hour - start - 1  # hours into the stage, 0 for the first
            skew_keep = 1.0
            if model.clock_skew_hours > 0:  # share stamped before the stage start falls outside its window
                skew_keep = 1 - 0.5 * math.erfc((k + 0.5) / (model.clock_skew_hours * math.sqrt(2)))
            keep = (1 - model.telemetry_loss) * skew_keep
            running = int(np.searchsorted(t_active, hour, "right"))
            mid_t = int(np.searchsorted(t_active, hour - 0.5, "right"))
            mid_c = int(np.searchsorted(c_joined, hour - 0.5, "right"))
            # In a shadow stage the treatment serves the baseline and runs the target only in shadow.
            arms = {"t": (baseline if shadow else target, float(mid_t), running - installed)}
            if stage < 100:
                arms["c"] = (baseline, float(mid_c), 0)
            installed = running
            for a, (release, device_hours, installs) in arms.items():
                dh, counts = draw_hour(rng, release, device_hours, installs, model, keep * kernel)
                hours_q, counts_q = pending[a]
                ring = (hour + np.arange(size)) % size
                hours_q[ring] += dh
                counts_q[ring] += counts
                now = hour % size
                total_h, total_c = totals[a]
                totals[a] = (total_h + hours_q[now], total_c + counts_q[now])
                hours_q[now] = 0
                counts_q[now] = 0
            if health is not None:
                health.hour(
                    hour,
                    np.maximum(active_at[:t_hi], start),
                    np.maximum(join[t_hi:c_hi], start),
                    skew_keep,
                    (target.crash_hazard, baseline.crash_hazard),
                )
            if (hour - start) % model.eval_every_hours:
                continue
            # Hostile devices lie toward the wrong decision: a rollback of a healthy release, the
            # promotion of a regressed one.
            elapsed, k = float(hour - start), gates.robust_devices
            t_lie, c_lie = ("bad", "good") if regression is None else ("good", "bad")
            treatment = arm_metrics(
                running, *totals["t"], elapsed=elapsed, model=model, k=k, lie=t_lie, control=False
            )
            control = (
                None
                if stage == 100
                else arm_metrics(
                    int(np.searchsorted(c_joined, hour, "right")),
                    *totals["c"],
                    elapsed=elapsed,
                    model=model,
                    k=k,
                    lie=c_lie,
                    control=True,
                )
            )
            label_free = (
                health.evidence(hour, (t_lie, c_lie) if model.hostile_devices else None)
                if health is not None
                else None
            )
            decision = evaluate(
                stage, treatment, control, gates, hour * 3600.0, start * 3600.0, label_free=label_free
            )
            evaluations.append(
                EvaluationRow(
                    hour,
                    stage,
                    decision.outcome,
                    running,
                    {r.metric: (r.outcome, r.statistic) for r in decision.records},
                )
            )
            if decision.outcome == "rollback":
                rollback_metrics = tuple(r.metric for r in decision.records if r.outcome == "rollback")
                plan = plan.roll_back("; ".join(rollback_metrics))
                outcome, decided = "rolled_back", True
            elif decision.outcome == "promote":
                plan = plan.complete() if plan.at_last_stage else plan.promote(hour * 3600.0)
                outcome, decided = ("complete" if plan.state == "complete" else outcome), True
            if decided:
                break
        if not decided or plan.state != "running":
            break
    return RunResult(
        outcome=outcome,
        last_stage=plan.stage_percent,
        end_hour=hour,
        stage_starts=tuple(starts),
        hours_to_full=hours_to_full,
        exposed_devices=int(np.count_nonzero(active_at <= hour)),
        rollback_metrics=rollback_metrics,
        evaluations=tuple(evaluations),
    )


# -- many runs ---------------------------------------------------------------------------------------------


def simulate(
    model: FleetModel,
    regression: Regression | None,
    runs: int,
    seed: int,
    gates: GateConfig | None = None,
    *,
    stages: Sequence[int] = (1, 5, 25, 100),
    shadow_stages: Sequence[int] = (),
    stop_at_stage: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[Summary, list[RunResult]]:
    """Simulate `runs` independent rollouts and summarise them.

    Run i uses its own generator spawned from `seed`, so results do not depend on `runs` or order.

    Args:
        model: the fleet.
        regression: how the target is worse, or None (A/A).
        runs: number of rollouts (>= 1).
        seed: the seed (an integer >= 0).
        gates: the gate configuration (default `GateConfig()`).
        stages: stage percentages.
        shadow_stages: stage percents run in shadow (see `simulate_run`).
        stop_at_stage: stop every run when it reaches this stage (see `simulate_run`); the summary then
            gives only the figures of the stages before it.
        progress: called as progress(done, runs) after each run.

    Raises:
        SimulationError: runs < 1, a negative seed, or shadow stages / a label-free regression the fleet
            model cannot show (see `simulate_run`).
    """
    if not isinstance(runs, int) or runs < 1:
        raise SimulationError(f"runs must be an integer >= 1, got {runs!r}")
    if not isinstance(seed, int) or seed < 0:
        raise SimulationError(f"seed must be an integer >= 0, got {seed!r}")
    _check_label_free(model, regression, stages, shadow_stages)
    gates = gates or GateConfig()
    began = time.perf_counter()
    results = []
    for i, child in enumerate(np.random.SeedSequence(seed).spawn(runs)):
        rng = np.random.default_rng(child)
        results.append(
            simulate_run(
                model,
                regression,
                gates,
                rng,
                stages=stages,
                shadow_stages=shadow_stages,
                stop_at_stage=stop_at_stage,
            )
        )
        if progress is not None:
            progress(i + 1, runs)
    seconds = time.perf_counter() - began
    summary = summarise(model, regression, gates, results, seed, stages, seconds, stop_at_stage)
    return dataclasses.replace(summary, shadow_stages=tuple(shadow_stages)), results


def summarise(
    model: FleetModel,
    regression: Regression | None,
    gates: GateConfig,
    results: Sequence[RunResult],
    seed: int,
    stages: Sequence[int],
    seconds: float,
    stop_at_stage: int | None = None,
) -> Summary:
    """The `Summary` of finished runs (of stages below `stop_at_stage` only, when runs stopped there)."""
    runs = len(results)
    halted: dict[int, float] = {}
    rolled: dict[int, float] = {}
    for k in range(2, len(stages) + 1):  # never left stages[0 .. k-2]
        if stop_at_stage is not None and stages[k - 1] > stop_at_stage:
            break  # unknown: runs stopped before they could leave it
        earlier = set(stages[: k - 1])
        never_left = [r for r in results if r.outcome != "complete" and r.last_stage in earlier]
        halted[k] = len(never_left) / runs
        rolled[k] = sum(r.outcome == "rolled_back" for r in never_left) / runs
    back = [r for r in results if r.outcome == "rolled_back"]
    full = np.array([r.hours_to_full for r in results if r.hours_to_full is not None], dtype=float)
    metrics: dict[str, int] = {}
    for r in back:
        for m in r.rollback_metrics:
            metrics[m] = metrics.get(m, 0) + 1
    return Summary(
        model=model,
        regression=regression,
        gates=gates,
        runs=runs,
        seed=seed,
        stages=tuple(stages),
        halted_before_stage=halted,
        rolled_back_before_stage=rolled,
        rolled_back=len(back) / runs,
        stuck=sum(r.outcome == "stuck" for r in results) / runs,
        complete=sum(r.outcome == "complete" for r in results) / runs,
        mean_exposed_devices=float(np.mean([r.exposed_devices for r in back])) if back else None,
        mean_exposed_devices_all=float(np.mean([r.exposed_devices for r in results])),
        hours_to_full={
            "mean": float(full.mean()) if full.size else None,
            "p50": float(np.percentile(full, 50)) if full.size else None,
            "p95": float(np.percentile(full, 95)) if full.size else None,
            "max": float(full.max()) if full.size else None,
            "share_within_96h": float(np.count_nonzero(full <= 96) / runs),
        },
        rollback_metrics=metrics,
        seconds=seconds,
        runs_per_second=runs / seconds if seconds > 0 else math.inf,
        stop_at_stage=stop_at_stage,
    )


# -- plots -------------------------------------------------------------------------------------------------


def plot(summary: Summary, results: Sequence[RunResult], path: str | Path, *, max_runs: int = 20) -> Path:
    """See `edgekit.rollout.simulate_plot.plot` (matplotlib loads only when a picture is asked for)."""
    from edgekit.rollout.simulate_plot import plot as _plot

    return _plot(summary, results, path, max_runs=max_runs)
