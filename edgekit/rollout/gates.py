"""Stage gates: promote, hold or roll back a rollout stage from treatment-vs-control telemetry.

`evaluate` is a pure, deterministic function of the stage's cumulative telemetry per arm, the config and
two times. The server turns each device's telemetry into those arms with `decide` (bounded per device,
see `edgekit.rollout._replay`), stores its `StageDecision`, and replays stored telemetry through the same
`decide`, so every decision can be reproduced.

Checks, each giving one `DecisionRecord` (pass, hold or rollback):

1. telemetry: any NaN, infinite, negative or inconsistent count holds the metrics that use it and alerts
   (fail closed: missing data never promotes).
2. exposure: minimum devices and device-hours per arm before any comparative decision.
3. guardrails on the treatment alone, with conservative bounds: crash rate per device-hour, error rate per
   inference, install/verify failure share. A guardrail rolls back when the lower bound (z_rollback) is
   above its maximum, passes when the upper bound (z_pass) is below it, and holds in between.
4. crash rate and inference error rate, treatment vs control: conditional binomial SPRTs (below).
5. latency p95 from the fixed-bucket histograms: hold above `max_latency_p95_ratio` × control, roll back
   above `rollback_latency_p95_ratio` ×.
6. accuracy from feedback: a non-inferiority bound on the drop in percentage points (skipped, and
   recorded as such, when neither arm has feedback).
6b. label-free gates, from the devices' health sketches and shadow runs (`evaluate(label_free=...)`):
   class shift, confidence shift, input drift, shadow agreement and shadow failures, each on anytime-valid
   device-level bounds (`edgekit.rollout.label_free` explains them); recorded as not judged, and passing,
   when no such evidence exists.
7. minimum stage duration; 8. stage deadline: past it, a stage without a decision holds and alerts.

Outcome: rollback if any record says rollback; promote only if every record passes; hold otherwise. At
the last stage (100%, no control) only the guardrails, exposure, duration and the label-free checks that
need no control (input drift against the reference profile, shadow failures) apply, and promote means
complete.

No few devices decide a stage. Each arm carries, per field, what its K = `robust_devices` most
influential devices contributed (`ArmMetrics.removable`: the sum of the K largest per-device values,
and per latency bucket the most K devices weigh there). Every check gives pass or rollback only if it
gives it for every way of taking up to K devices out of each arm, and each statistic is monotone in
each count, so checking it at its own worst corner is exact for that box: the LLR falls with fewer
treatment events and less control exposure and rises with the opposite; the guardrail bounds rise with
events and fall with exposure; the exposure minimum needs devices - K and hours - the K largest; the
p95 of equal-weight device histograms ranges between the mass taken from the top and from the bottom
(`latency_quantile_range`); accuracy ranges over the extreme accuracies, the smallest counts and the
largest p(1 - p) the remaining devices can have. Taking the up to K liars out of each arm leaves the
honest devices' own data, a point of that box; so for any telemetry up to K devices per arm send, every
decision is the one the same checks give on the honest devices' data, or hold (tested with hypothesis in
tests/adversarial/test_hostile_devices.py). The price: liars can always force hold (a stalled stage
alerts at its deadline), and decisions need more evidence: at least `min_devices_per_arm` + K devices
per arm, and roughly the K largest per-device counts more events; with 1,000 devices per arm, where a
device rarely has more than one crash, that is about 3 crashes of some 120 (the figures below). Small
fleets feel it most: with min 3 devices per arm a stage needs 6, and a 25-device arm loses 12% of its
latency mass to the bound. K = 0 turns it off (the plain checks, trusting every device).

The SPRT and why it stays valid under continuous monitoring. Given n = x_t + x_c events and exposures
h_t, h_c, under H0 (equal rates) each event falls in the treatment with p0 = h_t / (h_t + h_c); under H1
(treatment rate r1 times control) with p1 = r1 h_t / (r1 h_t + h_c). The log likelihood ratio of the
sequence of events is LLR = x log(p1/p0) + (n - x) log((1 - p1)/(1 - p0)); it is the same number
whether it is computed at every event, every hour or once, because it depends only on the counts. Under
H0 the likelihood ratio exp(LLR) is a non-negative martingale, so by Ville's inequality the chance that
it *ever* reaches exp(A), at any look, however often one looks and however long one waits, is at most
exp(-A) = alpha / (1 - beta). That is what lets the server evaluate every hour without inflating false
alarms (a fixed-sample test repeated hourly would). A = log((1 - beta)/alpha) rolls back; LLR <= B =
log(beta/(1 - alpha)) is Wald's acceptance of H0 and lets the metric pass; in between the test continues
(hold). Exposure ratios are near constant within a stage (same-size arms), which is when the cumulative
p0 above is exact.

Defaults, chosen for a 100,000-device fleet at a baseline crash hazard of 1e-3 per device-hour (1% stage:
1,000 devices per arm, about 1 control crash an hour):

- crash_ratio_h1 = 2: the regression we must catch; the SPRT is quickest at the ratio it is tuned for.
- alpha = 0.001, beta = 0.1: by Ville each SPRT falsely rolls back with probability <= 0.0011 however
  long it runs; with two SPRTs over three compared stages a healthy release is falsely halted with
  probability <= 0.7% (target: <= 1%). B = log(0.1/0.999) = -2.30 lets a healthy stage pass after about
  40 events; A = log(0.9/0.001) = 6.80 needs about 120 events under a 2x regression (~40 h at 1%).
- stage minimum durations 36 h (1%), 12 h (5%), 4 h (25%), 6 h (100%): rollback is never delayed by them,
  only promotion, so they buy power. A seeded simulation of that fleet through these gates (Poisson
  crashes and errors, hourly evaluation, `edgekit.rollout.simulate`), before the gates were made robust
  to a few devices (4,000 rollouts per scenario): 98.7% of 2x crash regressions rolled back within the 1%
  stage and 100% before 25% (targets >= 90% and >= 99.9%), 0.15% of A/A rollouts falsely halted (0.7% in
  a 1,000-run seed; the Ville bound is 0.67%; target <= 1%), 96.8% of healthy releases at 100% within 96 h
  (median 58 h, the sum of the minimum durations). With K = 3 (each arm carrying its 3 most influential
  devices' share, as the server builds it; 400 rollouts per scenario, seed 1, K = 0 on the same runs in
  brackets): 100% (99.5%) of 2x crash regressions rolled back within the 1% stage and 100% (100%) before
  25%, 0 (0) of 400 A/A rollouts falsely halted, 92.3% (97.3%) of healthy releases at 100% within 96 h,
  median 54 h (52 h), p95 113 h (75 h): at 1% the crash SPRT must also pass without the 3 control devices
  with the most crashes, some 25 more events. With 3 hostile devices per arm lying at the per-device caps
  toward the wrong decision every hour (`FleetModel.hostile_devices`, 200 rollouts each): K = 3 rolled
  back 0% of healthy releases and promoted 0% of 2x crash regressions, every run held at 1% (a stalled
  stage alerts at its deadline); K = 0 rolled back 100% of healthy releases and promoted 100% of the
  regressions.
- minimum exposure: 100 devices and 500 device-hours per arm, and >= 5 treatment events expected under
  H0 before an SPRT may decide; small enough not to bind at 1% of a 100k fleet, large enough that a
  handful of devices cannot decide a stage.
- error_ratio_h1 = 1.5: errors are far more plentiful than crashes, so a smaller ratio costs little time.
- negligible rates (1e-4 crashes per device-hour, 1e-4 errors per inference): when the treatment's upper
  bound is below these a count metric passes even if too few events exist for the SPRT to finish, so a
  model that almost never fails is not stuck at the deadline.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from device_runtime.telemetry import LATENCY_BUCKETS_MS
from edgekit.rollout._replay import DeviceTelemetry, Evaluation, TelemetryDelta, decide, replay
from edgekit.rollout._stats import (
    latency_quantile,
    latency_quantile_range,
    poisson_lower,
    poisson_upper,
    sprt_bounds,
    sprt_llr,
    wilson,
)
from edgekit.rollout._types import (
    _SCALARS,
    HISTOGRAM_SIZE,
    ArmMetrics,
    DecisionRecord,
    GateConfig,
    GateConfigError,
    MetricOutcome,
    Outcome,
    StageDecision,
)
from edgekit.rollout.label_free import LabelFreeEvidence, label_free_checks

__all__ = [
    "HISTOGRAM_SIZE",
    "ArmMetrics",
    "DecisionRecord",
    "DeviceTelemetry",
    "Evaluation",
    "GateConfig",
    "GateConfigError",
    "StageDecision",
    "TelemetryDelta",
    "decide",
    "evaluate",
    "latency_quantile",
    "replay",
    "sprt_bounds",
    "sprt_llr",
]


# -- checks ----------------------------------------------------------------------------------------------


_rec = DecisionRecord.of


def _guardrail(
    metric: str,
    events: tuple[float, float],
    exposure: tuple[float, float],
    maximum: float,
    config: GateConfig,
    *,
    unit: str,
    share: bool,
) -> DecisionRecord:
    """Absolute guardrail on the treatment: roll back on a breach shown by the z_rollback lower bound.

    `events` and `exposure` are (total, removable): the bounds are monotone (more events raise both, more
    exposure lowers both), so the breach must show with the most influential devices' events taken away
    and the pass with their exposure taken away.
    """
    (x, dx), (h, dh) = events, exposure
    if h <= 0:
        return _rec(metric, "hold", f"no {unit}s reported yet", threshold=maximum)
    x_low, h_low = max(0.0, x - dx), h - dh
    if share:
        low = wilson(x_low, h, config.z_rollback)[0]
        high = wilson(min(x, h_low), h_low, config.z_pass)[1] if h_low > 0 and x <= h_low else math.inf
    else:
        low = poisson_lower(x_low, config.z_rollback) / h
        high = poisson_upper(x, config.z_pass) / h_low if h_low > 0 else math.inf
    value = x / h
    what = f"treatment {value:.4g} per {unit}"
    if low > maximum:
        detail = f"{what}: lower bound {low:.4g} is above the maximum {maximum:.4g}"
        return _rec(metric, "rollback", detail, t=value, n=h, stat=low, threshold=maximum)
    if high <= maximum:
        detail = f"{what}: upper bound {high:.4g} is within the maximum {maximum:.4g}"
        return _rec(metric, "pass", detail, t=value, n=h, stat=high, threshold=maximum)
    detail = f"{what}: not yet shown within {maximum:.4g} (upper bound {high:.4g})"
    return _rec(metric, "hold", detail, t=value, n=h, stat=high, threshold=maximum)


def _sprt(
    metric: str,
    events: tuple[float, float, float, float],
    exposures: tuple[float, float, float, float],
    ratio_h1: float,
    negligible: float,
    config: GateConfig,
    *,
    unit: str,
    exposed: bool,
) -> DecisionRecord:
    """Conditional binomial SPRT of treatment vs control event rates (see the module docstring).

    `events` are (treatment, control, removable treatment, removable control), `exposures` likewise. The
    LLR rises with treatment events and control exposure and falls with control events and treatment
    exposure; the events expected under H0 rise with both counts and the treatment exposure. So each
    condition is checked at its own worst corner of what removing the most influential devices can do.
    """
    (x_t, x_c, dx_t, dx_c), (h_t, h_c, dh_t, dh_c) = events, exposures
    big_a, big_b = sprt_bounds(config.alpha, config.beta)
    n = x_t + x_c
    if h_t <= 0 or h_c <= 0:
        return _rec(metric, "hold", f"no {unit} in one arm yet", n=n, threshold=big_a)
    rates = {"t": x_t / h_t, "c": x_c / h_c, "n": n}
    llr = sprt_llr(x_t, n, h_t, h_c, ratio_h1)
    lx_t, lx_c, lh_t, lh_c = max(0.0, x_t - dx_t), max(0.0, x_c - dx_c), h_t - dh_t, h_c - dh_c
    robust = dx_t > 0 or dx_c > 0 or dh_t > 0 or dh_c > 0
    # Worst corners: the lowest LLR (for a rollback), the highest (for a pass), the fewest expected events.
    llr_low = sprt_llr(lx_t, lx_t + x_c, h_t, lh_c, ratio_h1) if lh_c > 0 else -math.inf
    llr_high = sprt_llr(x_t, x_t + lx_c, lh_t, h_c, ratio_h1) if lh_t > 0 else math.inf
    expected = (lx_t + lx_c) * lh_t / (lh_t + h_c) if lh_t > 0 else 0.0
    where = (
        f"LLR {llr:.3f} (B {big_b:.3f}, A {big_a:.3f}); "
        f"treatment {x_t:g} in {h_t:g}, control {x_c:g} in {h_c:g} {unit}"
    )
    if robust:
        where += f"; without the most influential devices LLR {llr_low:.3f} .. {llr_high:.3f}"
    upper = poisson_upper(x_t, config.z_pass) / lh_t if lh_t > 0 else math.inf
    # A negligible rate may pass only where no removal of the most influential devices leaves a
    # rollback: at the corner most in favour of one (highest LLR, most expected events) it must fail.
    # Otherwise devices that add clean exposure (or control events) drag the lowest LLR under A and turn
    # the rollback the honest devices' data shows into a pass.
    expected_high = (x_t + x_c) * h_t / (h_t + lh_c) if lh_c > 0 else math.inf
    could_roll_back = llr_high >= big_a and expected_high >= config.min_expected_events
    if not exposed:
        return _rec(
            metric, "hold", f"minimum exposure not reached; {where}", **rates, stat=llr, threshold=big_a
        )
    if llr_low >= big_a and expected >= config.min_expected_events:
        return _rec(metric, "rollback", f"regression: {where}", **rates, stat=llr, threshold=big_a)
    if llr_high <= big_b and expected >= config.min_expected_events:
        return _rec(metric, "pass", f"no regression: {where}", **rates, stat=llr, threshold=big_b)
    if upper <= negligible and not could_roll_back:
        detail = f"treatment upper bound {upper:.3g} per {unit[:-1]} is below the negligible {negligible:.3g}"
        return _rec(metric, "pass", f"{detail}; {where}", **rates, stat=upper, threshold=negligible)
    if expected < config.min_expected_events:
        detail = f"{expected:.2f} treatment events expected under H0, need {config.min_expected_events:g}"
        return _rec(metric, "hold", f"{detail}; {where}", **rates, stat=llr, threshold=big_a)
    return _rec(
        metric, "hold", f"continue: {where}", **rates, stat=llr, threshold=big_a if llr > 0 else big_b
    )


def _ratio(num: float, den: float) -> float:
    """num / den for p95s in ms: NaN when undefined (both beyond the last bucket, or 0 / 0)."""
    if (math.isinf(num) and math.isinf(den)) or (num == 0 and den == 0):
        return math.nan
    if den == 0 or math.isinf(num):
        return math.inf
    return num / den


def _p95_range(a: ArmMetrics, r: ArmMetrics) -> tuple[float, float]:
    """p95 without up to K of the arm's devices (K = r.latency_devices, each weighing the same)."""
    caps = r.latency_histogram
    if not any(caps):
        p = latency_quantile(a.latency_histogram, 0.95)
        return p, p
    k = int(r.latency_devices)
    if a.latency_devices > 0 and k > 0:
        weight = sum(a.latency_histogram) / a.latency_devices
        return latency_quantile_range(a.latency_histogram, 0.95, caps, weight, k)
    return latency_quantile_range(a.latency_histogram, 0.95, caps, sum(caps), 1)  # devices unknown: any mass


def _latency(
    t: ArmMetrics, c: ArmMetrics, rt: ArmMetrics, rc: ArmMetrics, config: GateConfig
) -> DecisionRecord:
    """Treatment p95 vs control p95 from the fixed-bucket histograms.

    With removable devices, each p95 ranges over what removing up to K of them can leave
    (`latency_quantile_range`); a rollback needs the lowest ratio above the limit, a pass the highest
    within it.
    """
    n_t, n_c = sum(t.latency_histogram), sum(c.latency_histogram)
    m_t, m_c = any(rt.latency_histogram), any(rc.latency_histogram)
    n = min(n_t - rt.inferences, n_c - rc.inferences)  # latency samples are inferences
    limit, hard = config.max_latency_p95_ratio, config.rollback_latency_p95_ratio
    if n < config.min_latency_samples:
        detail = (
            f"{n_t:g} treatment and {n_c:g} control latency samples, need {config.min_latency_samples} each"
            + (" without the most influential devices" if n != min(n_t, n_c) else "")
        )
        return _rec("latency_p95", "hold", detail, n=n, threshold=limit)
    p_t, p_c = latency_quantile(t.latency_histogram, 0.95), latency_quantile(c.latency_histogram, 0.95)
    t_low, t_high = _p95_range(t, rt)
    c_low, c_high = _p95_range(c, rc)
    ratio, low, high = _ratio(p_t, p_c), _ratio(t_low, c_high), _ratio(t_high, c_low)
    what = f"p95 treatment {p_t:.4g} ms vs control {p_c:.4g} ms, ratio {ratio:.3f}"
    if m_t or m_c:
        what += f" ({low:.3f} .. {high:.3f} without the most influential devices)"
    values = {"t": p_t, "c": p_c, "n": n}
    if low > hard:
        return _rec("latency_p95", "rollback", f"{what} > {hard:g}", **values, stat=ratio, threshold=hard)
    if high <= limit:
        return _rec("latency_p95", "pass", f"{what} <= {limit:g}", **values, stat=ratio, threshold=limit)
    if math.isinf(c_low) and math.isinf(t_low):
        detail = f"p95 of both arms beyond the last bucket ({LATENCY_BUCKETS_MS[-1]} ms)"
        return _rec("latency_p95", "hold", detail, **values, threshold=limit)
    return _rec(
        "latency_p95", "hold", f"{what}: not shown <= {limit:g}", **values, stat=ratio, threshold=limit
    )


def _accuracy_range(
    correct: float, total: float, d_correct: float, d_total: float
) -> tuple[float, float, float]:
    """(lowest, highest accuracy, fewest feedback) once the most influential devices are taken away."""
    least = total - d_total
    if least <= 0:
        return 0.0, 1.0, max(0.0, least)
    taken = min(d_correct, correct)  # remove correct answers only: the lowest accuracy
    low = (correct - taken) / (total - taken) if total - taken > 0 else 0.0
    wrong = min(d_total, total - correct)  # remove wrong answers only: the highest
    high = correct / (total - wrong) if total - wrong > 0 else 1.0
    return low, high, least


def _accuracy(
    t: ArmMetrics, c: ArmMetrics, rt: ArmMetrics, rc: ArmMetrics, config: GateConfig
) -> DecisionRecord:
    """Non-inferiority of feedback accuracy: drop = control - treatment, in percentage points.

    With removable feedback, the drop's bounds are taken over every accuracy and size the remaining
    devices can have: the lowest and highest accuracy per arm, the smallest feedback counts, and the
    largest p(1 - p) over each arm's accuracy range (it peaks at 0.5).
    """
    n_t, n_c = t.feedback_total, c.feedback_total
    limit = config.max_accuracy_drop_pp
    if n_t == 0 and n_c == 0:
        return _rec("accuracy", "pass", "no feedback in either arm; accuracy not judged", threshold=limit)
    lo_t, hi_t, least_t = _accuracy_range(t.feedback_correct, n_t, rt.feedback_correct, rt.feedback_total)
    lo_c, hi_c, least_c = _accuracy_range(c.feedback_correct, n_c, rc.feedback_correct, rc.feedback_total)
    if min(least_t, least_c) < config.min_feedback_per_arm:
        detail = f"{n_t:g} treatment and {n_c:g} control feedback, need {config.min_feedback_per_arm} each"
        if min(least_t, least_c) < min(n_t, n_c):
            detail += " without the most influential devices"
        return _rec("accuracy", "hold", detail, n=min(least_t, least_c), threshold=limit)

    def spread(low: float, high: float) -> float:
        return 0.25 if low <= 0.5 <= high else max(low * (1 - low), high * (1 - high))

    acc_t, acc_c = t.feedback_correct / n_t, c.feedback_correct / n_c
    drop = 100 * (acc_c - acc_t)
    se = math.sqrt(spread(lo_t, hi_t) / least_t + spread(lo_c, hi_c) / least_c)
    correction = 0.5 * (1 / least_t + 1 / least_c)  # continuity correction
    lower = 100 * (lo_c - hi_t) - 100 * (correction + config.z_rollback * se)
    upper = 100 * (hi_c - lo_t) + 100 * (correction + config.z_pass * se)
    what = f"accuracy treatment {100 * acc_t:.2f}% vs control {100 * acc_c:.2f}%, drop {drop:.2f} pp"
    values = {"t": acc_t, "c": acc_c, "n": n_t + n_c, "threshold": limit}
    if lower > limit:
        return _rec(
            "accuracy", "rollback", f"{what}: lower bound {lower:.2f} pp > {limit:g}", **values, stat=lower
        )
    if upper <= limit:
        return _rec(
            "accuracy", "pass", f"{what}: upper bound {upper:.2f} pp <= {limit:g}", **values, stat=upper
        )
    detail = f"{what}: not yet shown within {limit:g} pp (upper bound {upper:.2f} pp)"
    return _rec("accuracy", "hold", detail, **values, stat=upper)


def _exposure(
    t: ArmMetrics, c: ArmMetrics | None, rt: ArmMetrics, rc: ArmMetrics, config: GateConfig
) -> DecisionRecord:
    """Minimum devices and device-hours in every arm (only the treatment at the last stage), counted
    without the most influential devices."""
    arms = [(t, rt)] if c is None else [(t, rt), (c, rc)]
    devices = min(a.devices - r.devices for a, r in arms)
    hours = min(a.device_hours - r.device_hours for a, r in arms)
    ok = devices >= config.min_devices_per_arm and hours >= config.min_device_hours_per_arm
    detail = (
        f"min {devices:g} devices and {hours:g} device-hours per arm"
        + (" without the most influential devices" if any(r.devices for _, r in arms) else "")
        + f"; need {config.min_devices_per_arm} and {config.min_device_hours_per_arm:g}"
        + ("" if ok else " (minimum exposure not reached)")
    )
    c_devices = None if c is None else c.devices
    threshold = config.min_device_hours_per_arm
    return _rec(
        "exposure",
        "pass" if ok else "hold",
        detail,
        t=t.devices,
        c=c_devices,
        n=devices,
        stat=hours,
        threshold=threshold,
    )


def _skipped(metric: str, fields: Iterable[str]) -> DecisionRecord:
    return _rec(metric, "hold", f"not judged: invalid telemetry in {', '.join(sorted(fields))}")


def _telemetry(
    treatment: ArmMetrics | None, control: ArmMetrics | None, final: bool
) -> tuple[list[str], set[str], set[str]]:
    """Problems found and the untrusted fields of each arm (every field of a missing arm)."""
    every_field = {*_SCALARS, "latency_histogram"}
    problems: list[str] = []
    bad: list[set[str]] = []
    for name, metrics, needed in (("treatment", treatment, True), ("control", control, not final)):
        if not needed:
            bad.append(set())
        elif metrics is None:
            problems.append(f"{name} telemetry missing")
            bad.append(set(every_field))
        else:
            found = metrics.problems()
            problems += [f"{name} {why}" for why in found.values()]
            bad.append(set(found))
    return problems, bad[0], bad[1]


def evaluate(
    stage: int,
    treatment: ArmMetrics | None,
    control: ArmMetrics | None,
    config: GateConfig,
    now: float,
    stage_started_at: float,
    label_free: LabelFreeEvidence | None = None,
) -> StageDecision:
    """Decide whether a stage promotes, holds or rolls back.

    Args:
        stage: the stage percent (100 means the last stage: no control, guardrails only).
        treatment: the treatment arm's cumulative telemetry since the stage started (None if missing).
        control: the control arm's (None if missing; ignored at stage 100).
        config: thresholds.
        now: evaluation time (seconds since the Unix epoch).
        stage_started_at: when the stage started (seconds since the Unix epoch).
        label_free: the arms' health sketches and shadow runs for the label-free gates
            (`edgekit.rollout.label_free`); None records them as "not judged: no health telemetry" (pass).

    Returns:
        The decision with one record per check. Missing, NaN, negative or inconsistent telemetry, a
        clock going backwards and a stage past its deadline without a decision all hold and alert; they
        never promote.

    Raises:
        GateConfigError: `stage` is not a percentage in (0, 100].
    """
    if not isinstance(stage, int) or isinstance(stage, bool) or not 0 < stage <= 100:
        raise GateConfigError(f"stage must be an integer percent in (0, 100], got {stage!r}")
    final = stage == 100
    alerts: list[str] = []
    records: list[DecisionRecord] = []

    # (1) telemetry: which fields of which arm can be trusted.
    problems, bad_t, bad_c = _telemetry(treatment, control, final)
    t = treatment if treatment is not None else ArmMetrics()
    c = control if control is not None and not final else ArmMetrics()
    # What the most influential devices of each arm contributed (nothing when not known).
    rt = t.removable if t.removable is not None and not bad_t else ArmMetrics()
    rc = c.removable if c.removable is not None and not bad_c else ArmMetrics()
    if problems:
        records.append(_rec("telemetry", "hold", "; ".join(problems)))
        alerts.append("invalid or missing telemetry: " + "; ".join(problems))
    else:
        records.append(_rec("telemetry", "pass", "present, finite and consistent"))

    def broken(*fields: str, both: bool = True) -> set[str]:
        return {f for f in fields if f in bad_t or (both and f in bad_c)}

    # (2) exposure.
    bad = broken("devices", "device_hours")
    records.append(_skipped("exposure", bad) if bad else _exposure(t, None if final else c, rt, rc, config))
    exposed = records[-1].outcome == "pass"

    # (3) guardrails on the treatment alone.
    for metric, events, exposure, maximum, unit, share in (
        (
            "crash_guardrail",
            "crashes",
            "device_hours",
            config.max_crash_rate_per_device_hour,
            "device-hour",
            False,
        ),
        ("error_guardrail", "inference_errors", "inferences", config.max_error_rate, "inference", True),
        (
            "install_failures",
            "install_failures",
            "installs",
            config.max_install_failure_share,
            "install",
            True,
        ),
    ):
        bad = broken(events, exposure, both=False)
        events_t = (getattr(t, events), getattr(rt, events))
        exposure_t = (getattr(t, exposure), getattr(rt, exposure))
        records.append(
            _skipped(metric, bad)
            if bad
            else _guardrail(metric, events_t, exposure_t, maximum, config, unit=unit, share=share)
        )

    # (4)-(6) treatment vs control.
    if not final:
        for metric, events, exposure, ratio, negligible in (
            (
                "crash_rate",
                "crashes",
                "device_hours",
                config.crash_ratio_h1,
                config.negligible_crash_rate_per_device_hour,
            ),
            (
                "error_rate",
                "inference_errors",
                "inferences",
                config.error_ratio_h1,
                config.negligible_error_rate,
            ),
        ):
            bad = broken(events, exposure)
            counts = (getattr(t, events), getattr(c, events), getattr(rt, events), getattr(rc, events))
            exposures = (
                getattr(t, exposure),
                getattr(c, exposure),
                getattr(rt, exposure),
                getattr(rc, exposure),
            )
            unit = exposure.replace("_", "-")
            records.append(
                _skipped(metric, bad)
                if bad
                else _sprt(metric, counts, exposures, ratio, negligible, config, unit=unit, exposed=exposed)
            )
        bad = broken("latency_histogram")
        records.append(_skipped("latency_p95", bad) if bad else _latency(t, c, rt, rc, config))
        bad = broken("feedback_total", "feedback_correct")
        records.append(_skipped("accuracy", bad) if bad else _accuracy(t, c, rt, rc, config))

    # (6b) label-free gates (class and confidence shift, input drift, shadow agreement and failures).
    label_free_found, label_free_alerts = label_free_checks(stage, label_free, config)
    records.extend(label_free_found)
    alerts.extend(label_free_alerts)

    # (7) minimum duration.
    elapsed = (
        (now - stage_started_at) / 3600
        if math.isfinite(now) and math.isfinite(stage_started_at)
        else math.nan
    )
    min_hours = config.min_hours(stage)
    if not elapsed >= 0:  # NaN or a clock going backwards
        why = f"clock: now={now!r} is not a finite time at or after the stage start {stage_started_at!r}"
        records.append(_rec("duration", "hold", why, threshold=min_hours))
        alerts.append(why)
    else:
        detail = f"stage running {elapsed:.2f} h, minimum {min_hours:g} h"
        outcome: MetricOutcome = "pass" if elapsed >= min_hours else "hold"
        records.append(_rec("duration", outcome, detail, stat=elapsed, threshold=min_hours))

    decision: Outcome = "hold"
    if any(r.outcome == "rollback" for r in records):
        decision = "rollback"
        alerts.append(
            "rollback: " + "; ".join(f"{r.metric}: {r.detail}" for r in records if r.outcome == "rollback")
        )
    elif all(r.outcome == "pass" for r in records):
        decision = "promote"

    # (8) deadline: silence past it alerts.
    deadline = config.stage_deadline_hours
    running = elapsed if math.isfinite(elapsed) else None
    if running is not None and running > deadline and decision == "hold":
        waiting = ", ".join(r.metric for r in records if r.outcome == "hold")
        why = (
            f"stage {stage}% past its deadline ({running:.1f} h > {deadline:g} h) without promotion evidence"
        )
        records.append(
            _rec("deadline", "hold", f"{why}; waiting on {waiting}", stat=running, threshold=deadline)
        )
        alerts.append(f"{why}; waiting on {waiting}")
    else:
        detail = f"stage running {elapsed:.2f} h, deadline {deadline:g} h"
        records.append(_rec("deadline", "pass", detail, stat=running, threshold=deadline))
    alert = "\n".join(alerts) if alerts else None
    return StageDecision(outcome=decision, records=tuple(records), alert=alert, stage=stage, time=now)
