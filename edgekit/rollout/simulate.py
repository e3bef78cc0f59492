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
import heapq
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from statistics import NormalDist

import numpy as np

from device_runtime.telemetry import LATENCY_BUCKETS_MS
from edgekit.rollout._replay import (
    MAX_CRASHES_PER_DEVICE_HOUR,
    MAX_FEEDBACK_PER_DEVICE_HOUR,
    MAX_INFERENCES_PER_DEVICE_HOUR,
    MAX_INSTALLS_PER_DEVICE_HOUR,
)
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
from edgekit.rollout.gates import ArmMetrics, GateConfig, evaluate
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


# Integer telemetry fields carried per arm and hour, in this order, then the latency histogram.
_COUNTS = ("crashes", "inferences", "inference_errors", "installs", "install_failures")
_FEEDBACK = ("feedback_total", "feedback_correct")
_N_HIST = len(LATENCY_BUCKETS_MS) + 1
_N_INT = len(_COUNTS) + len(_FEEDBACK) + _N_HIST
_MAX_DELAY_HOURS = 8  # hours; offline queues still waiting after this arrive in the last slot


def _delay_kernel(model: FleetModel) -> np.ndarray:
    """Share of an hour's telemetry that arrives 0, 1, ... hours later (sums to 1)."""
    # A report leaves at the device's next upload, a uniform wait of up to one interval: the data of the
    # last interval/2 of an hour on average misses that hour's evaluation.
    late = model.report_interval_hours / 2
    kernel = np.zeros(_MAX_DELAY_HOURS + 1)
    kernel[0], kernel[1] = 1 - late, late
    # Offline hours add a geometric number of hours (a device is offline each hour with offline_share).
    o = model.offline_share
    offline = np.array([(1 - o) * o**k for k in range(_MAX_DELAY_HOURS + 1)])
    offline[-1] += 1 - offline.sum()
    combined = np.convolve(kernel, offline)[: _MAX_DELAY_HOURS + 1]
    combined[-1] += 1 - combined.sum()
    return np.clip(combined, 0, 1) / np.clip(combined, 0, 1).sum()


def _latency_probs(median_ms: float, sigma: float) -> np.ndarray:
    """Probability of each latency bucket (then the overflow) for a lognormal latency."""
    cdf = [
        0.5 * (1 + math.erf((math.log(b) - math.log(median_ms)) / (sigma * math.sqrt(2))))
        for b in LATENCY_BUCKETS_MS
    ]
    probs = np.diff(np.array([0.0, *cdf, 1.0]))
    return np.clip(probs, 0, 1) / np.clip(probs, 0, 1).sum()


@dataclass(frozen=True)
class _Release:
    crash_hazard: float
    error_rate: float
    accuracy: float
    latency_probs: np.ndarray


def _releases(model: FleetModel, regression: Regression | None) -> tuple[_Release, _Release]:
    base = _Release(
        model.crash_hazard_per_hour,
        model.error_rate,
        model.accuracy,
        _latency_probs(model.latency_median_ms, model.latency_sigma),
    )
    if regression is None:
        return base, base
    r = regression
    target = _Release(
        base.crash_hazard * (r.amount if r.kind == "crash" else 1),
        min(1.0, base.error_rate * (r.amount if r.kind == "errors" else 1)),
        min(1.0, max(0.0, base.accuracy + (r.amount / 100 if r.kind == "accuracy" else 0))),
        _latency_probs(
            model.latency_median_ms * (r.amount if r.kind == "latency" else 1), model.latency_sigma
        )
        if r.kind == "latency"
        else base.latency_probs,
    )
    return target, base


def _draw_hour(
    rng: np.random.Generator,
    release: _Release,
    device_hours: float,
    installs: int,
    model: FleetModel,
    shares: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """One arm-hour of telemetry split by arrival: (device-hours, counts) per slot of `shares`.

    `shares` are the shares of the hour's reports that arrive 0, 1, ... hours later (their sum is below 1
    by the share lost). Each report carries its exposure and its events together, so every slot is drawn
    as its own thinned Poisson process, nested counts (errors of inferences, correct of feedback) within
    it: a slot's accuracy or error rate is exactly as noisy as its size makes it, no more.
    """
    hours = device_hours * shares
    counts = np.zeros((len(shares), _N_INT), dtype=np.int64)
    if device_hours > 0:
        inferences = rng.poisson(hours * model.inferences_per_device_hour)
        feedback = rng.binomial(inferences, model.feedback_share)
        counts[:, 0] = rng.poisson(hours * release.crash_hazard)
        counts[:, 1] = inferences
        counts[:, 2] = rng.binomial(inferences, release.error_rate)
        counts[:, 5] = feedback
        counts[:, 6] = rng.binomial(feedback, release.accuracy)
        counts[:, 7:] = rng.multinomial(inferences, release.latency_probs)
    if installs > 0:
        arrived = rng.multinomial(installs, [*shares, max(0.0, 1 - float(shares.sum()))])[:-1]
        counts[:, 3] = arrived
        counts[:, 4] = rng.binomial(arrived, model.install_failure_share)
    return hours, counts


def _metrics(devices: int, device_hours: float, counts: np.ndarray) -> ArmMetrics:
    c = counts.tolist()
    return ArmMetrics(
        devices=float(devices),
        device_hours=float(device_hours),
        crashes=float(c[0]),
        inferences=float(c[1]),
        inference_errors=float(c[2]),
        installs=float(c[3]),
        install_failures=float(c[4]),
        feedback_total=float(c[5]),
        feedback_correct=float(c[6]),
        latency_histogram=tuple(float(x) for x in c[7:]),
    )


_NORMAL = NormalDist()


def _top_counts(total: float, devices: int, k: int) -> list[float]:
    """The k largest per-device counts, approximately, when `total` Poisson events spread over `devices`
    alike: the Poisson quantiles at 1 - (j - 1/2) / devices, j = 1..k (exact sums for small means, the
    normal approximation above a mean of 30)."""
    if devices <= 0 or total <= 0:
        return [0.0] * k
    mu = total / devices
    found = []
    for j in range(1, k + 1):
        if j > devices:
            found.append(0.0)
            continue
        p = 1 - (j - 0.5) / devices
        if mu > 30:
            value = mu + _NORMAL.inv_cdf(p) * math.sqrt(mu)
        else:
            term = cdf = math.exp(-mu)
            value = 0.0
            while cdf < p and value < 10 * mu + 50:
                value += 1
                term *= mu / value
                cdf += term
        found.append(min(float(value), total))
    return found


def _hostile(lie: str, exposure: float, window: float) -> dict[str, float]:
    """One hostile device's window at the per-device caps: `bad` looks as broken as a device can, `good`
    as healthy (and as busy) as one can."""
    inferences = MAX_INFERENCES_PER_DEVICE_HOUR * exposure
    installs = MAX_INSTALLS_PER_DEVICE_HOUR * window + 1
    feedback = MAX_FEEDBACK_PER_DEVICE_HOUR * exposure
    bad = lie == "bad"
    return {
        "devices": 1.0,
        "device_hours": exposure,
        "crashes": MAX_CRASHES_PER_DEVICE_HOUR * exposure if bad else 0.0,
        "inferences": inferences,
        "inference_errors": inferences if bad else 0.0,
        "installs": installs,
        "install_failures": installs if bad else 0.0,
        "feedback_total": feedback,
        "feedback_correct": 0.0 if bad else feedback,
        "bucket": float(_N_HIST - 1 if bad else 0),
    }


def _arm_metrics(
    devices: int,
    device_hours: float,
    counts: np.ndarray,
    *,
    elapsed: float,
    model: FleetModel,
    k: int,
    lie: str | None,
    control: bool,
) -> ArmMetrics:
    """An arm's metrics as the server would build them from its devices: with what its k most
    influential devices contributed, and with `model.hostile_devices` lying devices (`lie`) mixed in."""
    honest = _metrics(devices, device_hours, counts)
    if k <= 0 and not model.hostile_devices:
        return honest  # the plain gates on an honest fleet: arm totals are all they use
    exposure = elapsed + model.report_interval_hours  # the most one device can have in this window
    liars = [_hostile(lie, exposure, elapsed) for _ in range(model.hostile_devices)] if lie else []
    if control:
        for liar in liars:
            liar["installs"] = liar["install_failures"] = 0.0  # control devices install nothing
    values: dict[str, float] = {}
    top: dict[str, float] = {}
    for name in ("crashes", "inferences", "inference_errors", "feedback_total", "feedback_correct"):
        total = float(getattr(honest, name))
        lies = [liar[name] for liar in liars]
        values[name] = total + sum(lies)
        top[name] = sum(heapq.nlargest(k, [*_top_counts(total, devices, k), *lies]))
    for name in ("installs", "install_failures"):  # one install per device
        total = float(getattr(honest, name))
        lies = [liar[name] for liar in liars]
        values[name] = total + sum(lies)
        top[name] = sum(heapq.nlargest(k, [*([1.0] * int(min(k, total))), *lies]))
    values["devices"] = devices + len(liars)
    top["devices"] = float(min(k, values["devices"]))
    values["device_hours"] = device_hours + exposure * len(liars)
    top["device_hours"] = min(values["device_hours"], k * exposure)
    # Latency: every device weighs the same (the arm's samples spread evenly); a liar's sits in one bucket.
    hist = np.array(honest.latency_histogram, dtype=float)
    samples = float(hist.sum())
    timed = devices if samples > 0 else 0
    weighed = timed + len(liars)
    caps = np.zeros(_N_HIST)
    if weighed:
        weight = (samples + sum(liar["inferences"] for liar in liars)) / weighed
        if timed:
            shape = hist / samples
            # The k heaviest devices in a bucket: k devices' weight at the bucket's share plus 3 sigma of
            # one device's multinomial noise (its samples are samples / timed).
            spread = np.sqrt(shape * (1 - shape) / max(samples / timed, 1.0))
            hist = shape * weight * timed
            caps = np.minimum(hist, k * weight * np.minimum(1.0, shape + 3 * spread))
        for liar in liars:
            bucket = int(liar["bucket"])
            hist[bucket] += weight
            caps[bucket] += weight  # top-k of the union <= the honest top-k plus every liar
        caps = np.minimum(caps, hist)
    removable = ArmMetrics(
        **top,  # type: ignore[arg-type]
        latency_histogram=tuple(caps.tolist()),
        latency_devices=float(min(k, weighed)),
    )
    return ArmMetrics(
        **values,  # type: ignore[arg-type]
        latency_histogram=tuple(hist.tolist()),
        latency_devices=float(weighed),
        removable=removable if k > 0 else None,
    )


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
    target, baseline = _releases(model, regression)
    # The label-free signals draw from their own stream (spawned, so the other draws stay as they were).
    health = LabelFreeFleet(model, regression, rng.spawn(1)[0]) if model.health_telemetry else None
    kernel = _delay_kernel(model)
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
        pending = {a: (np.zeros(size), np.zeros((size, _N_INT), dtype=np.int64)) for a in "tc"}
        totals = {a: (0.0, np.zeros(_N_INT, dtype=np.int64)) for a in "tc"}
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
                dh, counts = _draw_hour(rng, release, device_hours, installs, model, keep * kernel)
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
            treatment = _arm_metrics(
                running, *totals["t"], elapsed=elapsed, model=model, k=k, lie=t_lie, control=False
            )
            control = (
                None
                if stage == 100
                else _arm_metrics(
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
