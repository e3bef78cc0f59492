"""Label-free stage gates: notice a bad release from what devices predict and see, with no ground truth.

Devices rarely learn the truth, so these gates compare what the treatment's devices predict and see with
what the control's devices predict and see in the same stage window, and, where the plan runs the
candidate in shadow, the candidate's outputs with the served model's on the same inputs. Five gates, one
`DecisionRecord` each, in this order (the metric names are stable):

- ``class_shift``: the total variation distance (TVD) between the arms' predicted-class shares, half the
  sum over classes of |treatment share - control share|: the share of inputs that would have to change
  class to turn one arm's mix into the other's. Swapping the labels of two classes seen on 20% and 5% of
  inputs moves 15% of them: TVD 0.15. (Swapping two equally frequent classes leaves the histogram as it
  was; no histogram test can see that, the shadow gate can.)
- ``confidence_shift``: the drop of the mean top-1 confidence (detectors: mean detection score), control
  minus treatment. A model fed the wrong preprocessing or a corrupted weight file usually gets less sure.
- ``input_drift``: the population stability index per input channel, PSI = sum over the reference bins of
  (o - e) ln(o / e), o the share of the arm's input values in a bin and e the reference profile's (signed
  into the bundle, computed from its calibration or golden data). The treatment's PSI against the
  target's profile, in excess of the control's PSI against the baseline's: a release that inverts images
  drifts only the treatment; a world that changes (night falls, a new camera) drifts both arms, which
  alerts but does not blame the release.
- ``shadow_agreement``: the share of shadowed inputs on which the candidate disagrees with the served
  baseline (treatment devices), minus the share on which the baseline disagrees with itself when run again
  on the same inputs (control devices: engine nondeterminism, the disagreement that means nothing).
- ``shadow_failures``: a guardrail on the candidate alone: failed plus timed-out shadow runs per shadow
  run (the control's self-shadow share is shown for comparison).

The device is the unit of evidence. A fleet's devices differ in what they see (a kitchen camera and a
street camera predict different class mixes; one phone is used at night). Treating inferences as
independent would count 10,000 inferences of one kitchen as 10,000 pieces of evidence, and A/A rollouts
would be halted whenever the arms' busiest devices happen to differ. So each device is one row: its class
shares, mean confidence, bin shares or shadow disagreement, weighted by the inferences it may claim
(capped per device-hour of exposure like every other gate metric, `arm_evidence`; shadow statistics by
its capped shadow runs). An arm's value is the weighted mean of its rows, and its variance the
cluster-robust (sandwich) variance sum(w_i^2 (y_i - m)^2) / (sum w_i)^2 x n / (n - 1): it measures how
much devices differ from each other, not how many inferences they ran. For shares it is floored at the
binomial p (1 - p) / sum(w), so an arm whose devices all report the same share (no failures at all) is
not taken as exact.

Anytime-valid bounds. The server evaluates every hour. A fixed-sample 95% interval looked at hourly for
three days excludes the truth in far more than 5% of rollouts; a confidence sequence holds at every look
at once, however often one looks. Each bound here is Robbins' normal-mixture confidence sequence in its
asymptotic form (Waudby-Smith, Arbour, Sinha, Kennedy and Ramdas, "Time-uniform central limit theory and
asymptotic confidence sequences", 2021): for t units and variance V of the mean, the half-width is
sqrt(V x 2 (t r + 1) / (t r) x log(sqrt(t r + 1) / alpha)), the mixture precision r chosen so it is
tightest near `label_free_tuned_devices` units (`edgekit.rollout._label_free_stats.cs_radius`). The units
are devices: t is the number of devices (for a difference of two arms, the smaller arm's). In standard
errors, at alpha = 2e-4 the half-width is 5.2 (100 devices), 4.6 (1,000) and 4.8 (25,000), where a
fixed-sample two-sided interval would use 3.7; at alpha = 0.05 it is 3.9, 3.0 and 3.4 instead of 1.96.
That margin is the price of looking every hour. The assumption, plainly: devices are exchangeable units
(arms assigned at random by device), each device's row has finite variance, and enough devices report
for a central limit approximation to hold; the guarantee is asymptotic in the number of devices, so every
gate waits for `min_devices_per_arm` devices per arm beyond the K below. A device's row also matures
within the window (more inferences each hour); the tests measure the false rollback rate on seeded fleets
whose devices join over hours with heterogeneous class mixes and rates (tests/rollout/test_label_free*).

Several classes or channels: Bonferroni. For a rollback the class shift splits alpha over the C classes
(each class's difference d_c gets a radius r_c at alpha / C) and the TVD's lower bound follows from the
per-class bounds: 1/2 sum max(0, |d_c| - r_c). For a pass it uses that the TVD is also the largest
difference in the share of any set of classes: with up to 10 classes it bounds the difference of each of
the 2^(C-1) - 1 sets (a set and its complement differ alike) at alpha / (2^(C-1) - 1), the variance of a
set's share taken from the devices' full covariance of class shares, and the TVD's upper bound is the
largest |difference| + radius over the sets. Shares summing to 1 covary negatively, so this is about
half the per-class upper bound 1/2 sum (|d_c| + r_c), which is what more classes fall back to.

Input drift splits alpha over every bin of every channel of both arms; each bin share then lies in its
interval and PSI, convex in each share, is lowest at the reference share clipped into the intervals and
highest at a corner: those are the PSI bounds per channel, and the gate takes the worst channel. The
intervals also take care of PSI's small-sample bias (pure sampling noise inflates PSI by about
(bins - 1) / n for n independent values; the sum over bins of var / share in general): the lower bound
stays below the unbiased value, and the detail reports PSI both as measured and less that bias.

Decisions: rollback when the lower bound (at `label_free_alpha`) is above the threshold, pass when the
upper bound (at `label_free_pass_alpha`) is within it, hold otherwise. Input drift rolls back when the
lower bound of the excess PSI (treatment's lowest minus control's highest, on the same channel) is above
`psi_rollback`, and passes when its upper bound is within `psi_pass`. The excess of two PSIs is loose when
the world itself has drifted (each PSI's bounds widen as it grows: with both arms at PSI 0.5 against their
references, 1,000 devices per arm leave the excess's upper bound near 0.12). So when both profiles' bin
edges are known and equal (`LabelFreeEvidence.edges_*`: both arms bin alike), the gate may also pass on
the PSI between the arms' own shares, (t - c) ln(t / c) summed over bins, whose upper bound is the
largest over the corners of the bins' intervals (it is jointly convex): it stays near 0 when the release
changes nothing, however far the world moved (0.01 in that example). The pass alpha is then split
between the two ways of passing. When the control arm's own PSI is
above `psi_rollback` the decision carries an alert: the inputs changed for everybody.

Missing evidence is never a pass by accident: evidence None (no health telemetry at all) or a gate with no
data of its kind in either arm is recorded as "not judged: ..." and passes (so fleets without health
telemetry or without a shadow stage are not stuck); data present in one arm and missing in the other
holds (fail closed). At the last stage (100%) there is no control: class shift, confidence shift and
shadow agreement are not judged; input drift is judged against the target's reference alone and shadow
failures as always. Alone, drift cannot tell the release from the world, so it passes within `psi_pass`,
holds and alerts above `psi_rollback`, and never rolls back; the same holds for inputs of a baseline
whose bundle carries no reference profile.

No few devices decide. Before a rollback, each gate removes the K = `robust_devices` devices per arm whose
removal most weakens the case for it; before a pass, the K that most weaken the pass; the decision must
survive. The removal is greedy: one device at a time, arm after arm, each the single removal that moves
the bound most, tried among a shortlist per arm of the 32 devices that move the mean most and the 32 that
carry most of the variance (`edgekit.rollout._label_free_stats.robust_bound`). It is not the exact worst
set of K (a combinatorial search); the tests check that K devices per arm lying at the per-device caps
neither roll back an A/A fleet nor pass a label-swapped one.

Measured (tests/rollout/test_label_free_fleets.py; seeded fleets of 400 devices per arm joining over 10
hourly looks, class mixes Dirichlet with concentration 3 around an uneven fleet mix, log-normal rates):
with every threshold at zero, K = 0 and alpha = 0.05, 200 A/A fleets, the bounds excluded "no difference"
at some look in 0.5% of fleets for confidence and for shadow agreement and never for the other gates,
while a fixed-sample 95% interval on the same confidence difference did in 16% (hourly looks inflate it
threefold past its 5%). With the defaults and K = 3, 100 such A/A fleets saw no label-free rollback at any
look. Three devices per arm lying at the per-device caps toward a rollback (A/A) or toward a pass (a
release with swapped labels, inverted inputs and 30% shadow disagreement) made every gate they lied to
hold with K = 3; with K = 0 they rolled back the A/A fleet on four gates and passed the broken release's
class shift and shadow agreement. A fleet of heterogeneous devices needs about 1,000 devices per arm for
the class shift to pass (the A/A upper bound is about 0.07 there, 0.10 at 400).

Defaults (`GateConfig`), and why:

- ``label_free_alpha`` = 2e-4 per gate and stage: five gates over three compared stages is at most 0.3%
  by the union bound; with the SPRTs' 0.7% (`edgekit.rollout.gates`) a healthy release is falsely halted
  with probability <= 1.0%. Thresholds well away from zero make the real rate far lower.
- ``label_free_pass_alpha`` = 0.05: a pass needs the 95% time-uniform upper bound inside the threshold. A
  wrong pass is not the end (the next stage is judged again), a stalled stage is: the devices are the
  units, so at 1% of a fleet (about 1,000 per arm) the bounds stop shrinking once every device has
  reported, and a much stricter pass bound would keep a heterogeneous fleet's class shift from ever
  showing within 0.10 there.
- ``max_class_shift`` = 0.10 TVD: a tenth of inputs changing class is a broken model, not a retrained one
  (a retrained model agreeing with its predecessor on 95% of inputs moves at most 0.05).
- ``max_confidence_drop`` = 0.10: ten points of mean top-1 probability.
- ``psi_pass`` = 0.10 and ``psi_rollback`` = 0.25: the usual reading of PSI (below 0.1 no real change,
  above 0.25 a major shift), as an excess over the control's own drift.
- ``max_shadow_disagreement_excess`` = 0.05: a candidate that changes the top-1 answer on 5% more inputs
  than the engine's own nondeterminism is not the same model.
- ``max_shadow_failure_share`` = 0.02: as for installs; a shadow crash or hang is a strike against the
  candidate (the device stops shadowing it after three), never against the app.
- ``label_free_tuned_devices`` = 1,000: devices per arm at the 1% stage of a 100,000-device fleet.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np

from device_runtime.telemetry_contract import CONFIDENCE_BINS
from edgekit.rollout._label_free_drift import input_drift
from edgekit.rollout._label_free_gates import (
    Judge,
    class_shift,
    confidence_shift,
    rec,
    shadow_agreement,
    shadow_failures,
)
from edgekit.rollout._replay import (
    MAX_CRASHES_PER_DEVICE_HOUR,
    MAX_INFERENCES_PER_DEVICE_HOUR,
    exposure_hours,
)
from edgekit.rollout._types import DecisionRecord, GateConfig
from edgekit.rollout.health_sketches import DeviceHealth, device_weight

__all__ = [
    "LABEL_FREE_METRICS",
    "ArmEvidence",
    "DeviceShadow",
    "LabelFreeEvidence",
    "arm_evidence",
    "label_free_checks",
    "label_free_records",
]

LABEL_FREE_METRICS = ("class_shift", "confidence_shift", "input_drift", "shadow_agreement", "shadow_failures")
_EMPTY: Mapping[str, np.ndarray] = {}


@dataclass(frozen=True)
class ArmEvidence:
    """One arm's devices in the stage window, one row per device (the device is the unit of evidence).

    A row of NaN in a per-device array means the device did not report that signal; it is left out of
    that statistic only. Every array has the same number of rows n.

    Attributes:
        weights: [n] inferences each device may claim (capped per device-hour of exposure), >= 0; a device
            with weight 0 counts for none of the health statistics (classes, confidence, drift).
        classes: [n, C] per-device shares of predicted classes of the primary output (rows sum to 1), or
            None when no device reported any.
        confidence: [n] per-device mean top-1 confidence (classification) or mean score (detection).
        drift: input name -> [n, channels, bins] per-device shares of the input's values per reference bin.
        shadow_compared: [n] shadow comparisons per device (capped), or None without a shadow.
        shadow_agreed: [n] of those, the ones that agreed with the served model.
        shadow_failures: [n] shadow failures plus timeouts (capped).
    """

    weights: np.ndarray
    classes: np.ndarray | None = None
    confidence: np.ndarray | None = None
    drift: Mapping[str, np.ndarray] = field(default_factory=dict)
    shadow_compared: np.ndarray | None = None
    shadow_agreed: np.ndarray | None = None
    shadow_failures: np.ndarray | None = None


@dataclass(frozen=True)
class LabelFreeEvidence:
    """Both arms' evidence and the reference profiles their drift is measured against.

    Attributes:
        treatment, control: the arms (control is ignored at the last stage, 100%).
        reference_treatment: input name -> [channels, bins] expected shares (the target's ``health.json``).
        reference_control: the baseline's (may be empty: an old bundle without a profile).
        edges_treatment, edges_control: input name -> [channels, edges] the profiles' bin edges (optional).
            Where both are given and equal for an input, both arms bin its values alike, and the drift gate
            may also pass on the arms' inputs being alike (see the module docstring).
    """

    treatment: ArmEvidence
    control: ArmEvidence
    reference_treatment: Mapping[str, np.ndarray] = field(default_factory=dict)
    reference_control: Mapping[str, np.ndarray] = field(default_factory=dict)
    edges_treatment: Mapping[str, np.ndarray] = field(default_factory=dict)
    edges_control: Mapping[str, np.ndarray] = field(default_factory=dict)


@dataclass
class DeviceShadow:
    """One device's shadow runs in a stage window (summed over its ``shadow`` events; the server fills it).

    In the treatment the shadow is the candidate next to the served baseline; in the control it is the
    baseline run again next to itself (its self-agreement).
    """

    device_id: str
    arm: str  # treatment | control
    first: float = math.inf  # seconds since the epoch: its first and last shadow event in the window
    last: float = -math.inf
    compared: int = 0
    agreed: int = 0
    failures: int = 0
    timeouts: int = 0

    def add(self, time: float, compared: int, agreed: int, failures: int, timeouts: int) -> None:
        """Fold one more ``shadow`` event of this device in."""
        self.compared += compared
        self.agreed += min(agreed, compared)
        self.failures += failures
        self.timeouts += timeouts
        self.first, self.last = min(self.first, time), max(self.last, time)


# ---- from device sketches to per-device rows ------------------------------------------------------------
def _primary_output(devices: list[DeviceHealth], output: str | None) -> str | None:
    if output is not None:
        return output
    for device in devices:
        for name in device.sketch.outputs:
            return name
    return None


def _confidence(role: str, counts: np.ndarray, scores: np.ndarray, score_sum: float) -> float:
    """Mean top-1 confidence from the confidence bins (their midpoints), or the mean detection score."""
    total = scores.sum()
    if total <= 0:
        return math.nan
    if role == "detection":
        return float(score_sum / total)
    mids = (np.arange(scores.size) + 0.5) / CONFIDENCE_BINS
    return float(mids @ scores / total)


def arm_evidence(
    devices: Iterable[DeviceHealth],
    shadows: Iterable[DeviceShadow],
    stage_started_at: float,
    until: float,
    *,
    output: str | None = None,
) -> dict[str, ArmEvidence]:
    """Treatment and control `ArmEvidence` of a stage window from the devices' sketches and shadow runs.

    Each device's health counts weigh what it may claim (`edgekit.rollout.health_sketches.device_weight`
    times its inferences: capped per device-hour of exposure); its shadow comparisons are capped at
    `MAX_INFERENCES_PER_DEVICE_HOUR` and its failures plus timeouts at `MAX_CRASHES_PER_DEVICE_HOUR` per
    hour of exposure (`edgekit.rollout._replay.exposure_hours`), like the other gate metrics.

    Args:
        devices: one `DeviceHealth` per device and arm (fragments of one device are merged here).
        shadows: one `DeviceShadow` per device and arm.
        stage_started_at, until: the window (seconds since the epoch).
        output: the output whose classes and confidence are compared (default: the first output any
            device reported, in device-id order).
    """
    health: dict[tuple[str, str], DeviceHealth] = {}
    for device in devices:
        key = (device.arm, device.device_id)
        if key in health:  # fragments of one device: their sketches add, their spans join
            before = health[key]
            merged = DeviceHealth(device.device_id, device.arm)
            merged.add(before.first, before.sketch)
            merged.add(device.first, device.sketch)
            merged.first = min(before.first, device.first)
            merged.last = max(before.last, device.last)
            health[key] = merged
        else:
            health[key] = device
    shadow: dict[tuple[str, str], DeviceShadow] = {}
    for part in shadows:
        key = (part.arm, part.device_id)
        if key in shadow:
            base = shadow[key]
            joined = DeviceShadow(part.device_id, part.arm)
            joined.add(base.first, base.compared, base.agreed, base.failures, base.timeouts)
            joined.add(part.first, part.compared, part.agreed, part.failures, part.timeouts)
            joined.last = max(base.last, part.last)
            shadow[key] = joined
        else:
            shadow[key] = part
    ordered = sorted(health.values(), key=lambda d: (d.arm, d.device_id))
    name = _primary_output(ordered, output)
    width = 0
    for d in ordered:
        out = d.sketch.outputs.get(name) if name is not None else None
        if out is not None:
            width = max(width, len(out.counts))
    arms: dict[str, ArmEvidence] = {}
    for arm in ("treatment", "control"):
        # Each arm bins by its own release's profile: the shape of an input's bins is per arm.
        channels: dict[str, tuple[int, int]] = {}
        for d in ordered:
            for input_name, sketches in d.sketch.inputs.items():
                if d.arm == arm and sketches and sketches[0].bins:
                    channels.setdefault(input_name, (len(sketches), len(sketches[0].bins)))
        ids = sorted({i for a, i in health if a == arm} | {i for a, i in shadow if a == arm})
        n = len(ids)
        weights = np.zeros(n)
        classes = np.full((n, width), np.nan) if width else None
        confidence = np.full(n, np.nan)
        drift = {k: np.full((n, *shape), np.nan) for k, shape in channels.items()}
        compared, agreed, failures = np.zeros(n), np.zeros(n), np.zeros(n)
        any_shadow = False
        for row, device_id in enumerate(ids):
            dh = health.get((arm, device_id))
            if dh is not None and dh.sketch.inferences > 0:
                weights[row] = device_weight(dh, stage_started_at, until) * dh.sketch.inferences
                out = dh.sketch.outputs.get(name) if name is not None else None
                if out is not None:
                    counts = np.array(out.counts, np.float64)
                    if classes is not None and counts.sum() > 0:
                        classes[row, : counts.size] = counts / counts.sum()
                        classes[row, counts.size :] = 0.0
                    confidence[row] = _confidence(
                        out.role, counts, np.array(out.scores, np.float64), out.score_sum
                    )
                for input_name, shape in channels.items():
                    found = dh.sketch.inputs.get(input_name)
                    if found is None or len(found) != shape[0] or len(found[0].bins) != shape[1]:
                        continue
                    bins = np.array([c.bins for c in found], np.float64)
                    totals = bins.sum(axis=1, keepdims=True)
                    if np.all(totals > 0):
                        drift[input_name][row] = bins / totals
            runs = shadow.get((arm, device_id))
            if runs is not None:
                any_shadow = True
                hours = exposure_hours(True, runs.first, runs.last, stage_started_at, until)
                compared[row] = min(runs.compared, MAX_INFERENCES_PER_DEVICE_HOUR * hours)
                agreed[row] = min(runs.agreed, compared[row])
                failures[row] = min(runs.failures + runs.timeouts, MAX_CRASHES_PER_DEVICE_HOUR * hours)
        arms[arm] = ArmEvidence(
            weights=weights,
            classes=classes,
            confidence=None if np.all(np.isnan(confidence)) else confidence,
            drift={k: v for k, v in drift.items() if not np.all(np.isnan(v))},
            shadow_compared=compared if any_shadow else None,
            shadow_agreed=agreed if any_shadow else None,
            shadow_failures=failures if any_shadow else None,
        )
    return arms


def label_free_checks(
    stage: int, evidence: LabelFreeEvidence | None, config: GateConfig
) -> tuple[list[DecisionRecord], list[str]]:
    """The label-free records (in `LABEL_FREE_METRICS` order) and the alerts they raise for operators."""
    if evidence is None:
        records = [rec(m, "pass", "not judged: no health telemetry") for m in LABEL_FREE_METRICS]
        return [_with_threshold(r, config) for r in records], []
    judge = Judge(config, stage == 100)
    alerts: list[str] = []
    records = [
        class_shift(evidence, judge),
        confidence_shift(evidence, judge),
        input_drift(evidence, judge, alerts),
        shadow_agreement(evidence, judge),
        shadow_failures(evidence, judge),
    ]
    return [_with_threshold(r, config) for r in records], alerts


def _with_threshold(record: DecisionRecord, config: GateConfig) -> DecisionRecord:
    """The record with its gate's threshold filled in where the gate did not get as far as a bound."""
    if record.threshold is not None:
        return record
    threshold = {
        "class_shift": config.max_class_shift,
        "confidence_shift": config.max_confidence_drop,
        "input_drift": config.psi_pass,
        "shadow_agreement": config.max_shadow_disagreement_excess,
        "shadow_failures": config.max_shadow_failure_share,
    }[record.metric]
    return dataclasses.replace(record, threshold=threshold)


def label_free_records(
    stage: int, evidence: LabelFreeEvidence | None, config: GateConfig
) -> list[DecisionRecord]:
    """One `DecisionRecord` per label-free gate, in `LABEL_FREE_METRICS` order (see the module docstring).

    Args:
        stage: the stage percent (100: no control arm; only input drift, against the reference profile
            alone, and shadow failures apply).
        evidence: both arms' evidence, or None (every gate "not judged: no health telemetry", pass).
        config: thresholds (`GateConfig`).
    """
    return label_free_checks(stage, evidence, config)[0]
