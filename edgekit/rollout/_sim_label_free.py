"""Label-free signals of a simulated fleet, one row per device, built into the gates' `ArmEvidence`.

What a device reports without labels (`device_runtime.health` sketches, `shadow` results) is modelled per
device, because the label-free gates treat each device as one unit of evidence and the spread between
devices is what their bounds must absorb:

- classes: a fleet-wide mix over `classes` classes, Zipf-shaped (share of class k proportional to
  1 / k ** class_skew; 0 = equally frequent), fixed for the fleet; each device's own mix is drawn from
  Dirichlet(class_concentration x fleet mix), so devices see different scenes;
- inferences: each device has its own rate (gamma-distributed around `inferences_per_device_hour` with
  coefficient of variation `inference_rate_spread`), and its class counts in an hour are Poisson around
  rate x its mix (Poisson splitting: the total is the device's Poisson inference count);
- confidence: each device's mean top-1 confidence is normal around `confidence_mean` with between-device
  spread `confidence_spread`, and the mean over n of its inferences adds `confidence_noise / sqrt(n)`;
- inputs: values of each input channel follow Beta(2, 5) (darkish images) in the reference data and in
  the fleet; the reference profile's bins are that distribution's deciles (as `edgekit bundle --golden`
  makes them, so the reference shares are 0.1 each); each device's bin mix is drawn from
  Dirichlet(input_concentration x fleet shares), and its bin counts are Poisson (normal approximation:
  hundreds of elements per bin and hour) around the elements it samples (`device_runtime.health.SAMPLED`
  a call over all channels);
- shadow (in shadow stages only): a share `shadow_sample` of a device's inferences is run twice, and a
  comparison disagrees with probability `engine_nondeterminism` in the control arm (self-shadow), plus
  `target_disagreement` in the treatment for a healthy target (another model, not the same one), plus
  what the regression flips; shadow failures are Poisson at the release's crash hazard x sample.

Regressions (each moves its own signal only, a conservative model: real bugs move several at once):
`label_swap` swaps two classes' labels (every prediction of one class becomes the other; the class
histogram moves by |p_a - p_b| in total variation and the shadow disagrees on a share p_a + p_b of the
device's inputs); `input_shift` inverts a share `amount` of the inputs (values v -> 1 - v: the bins see
Beta(5, 2) in the reference's decile bins); `confidence_drop` lowers every device's mean top-1 confidence
by `amount`. In a shadow stage the treatment serves the baseline, so its served histograms are the
baseline's and only the shadow comparisons see the target. At 100% (no control arm) classes and
confidence are not drawn: the gates compare them only against a control.

Telemetry path per device-hour (floats, like the server's capped counts): lost with `telemetry_loss`,
thinned in a stage's first hours by clock skew, then held in the device's queue while it is offline (each
hour with `offline_share`); an online device uploads its queue and the hour's data except the last
report interval's half, which waits for the next upload. A stage's window starts empty.

Each arm is built as the server builds it: one row per device with data, weight = its inferences capped
at `MAX_INFERENCES_PER_DEVICE_HOUR` x its exposure hours (span in the window plus one report interval),
shadow comparisons capped alike; `FleetModel.hostile_devices` liars per arm report at those caps in the
worst direction (see `_liars`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from device_runtime.health import SAMPLED
from edgekit.rollout._replay import MAX_CRASHES_PER_DEVICE_HOUR, MAX_INFERENCES_PER_DEVICE_HOUR

if TYPE_CHECKING:
    from edgekit.rollout._sim_types import FleetModel, Regression
    from edgekit.rollout.label_free import ArmEvidence, LabelFreeEvidence

__all__ = ["BINS", "INPUT_NAME", "LabelFreeFleet", "zipf_mix"]

INPUT_NAME = "input"  # the simulated model's one input
BINS = 10  # the reference profile's bins per channel (deciles, device_runtime.health.QUANTILES)
_GRID = 4001  # points of the grid the Beta CDFs are integrated on


def _beta_cdf(a: float, b: float, x: np.ndarray) -> np.ndarray:
    """CDF of Beta(a, b) at x (trapezoid rule on a fine grid; smooth densities with a, b >= 1)."""
    grid = np.linspace(0.0, 1.0, _GRID)
    pdf = grid ** (a - 1) * (1 - grid) ** (b - 1)
    cdf = np.concatenate([[0.0], np.cumsum((pdf[1:] + pdf[:-1]) / 2)])
    return np.interp(x, grid, cdf / cdf[-1])


def _reference_bins() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(reference shares, shares of inverted inputs, the decile edges) per bin of Beta(2, 5)."""
    grid = np.linspace(0.0, 1.0, _GRID)
    cdf = _beta_cdf(2.0, 5.0, grid)
    edges = np.interp(np.arange(1, BINS) / BINS, cdf, grid)  # the reference's deciles
    bounds = np.concatenate([[0.0], edges, [1.0]])
    reference = np.diff(_beta_cdf(2.0, 5.0, bounds))
    inverted = np.diff(_beta_cdf(5.0, 2.0, bounds))  # 1 - v for v ~ Beta(2, 5)
    return reference / reference.sum(), inverted / inverted.sum(), edges


def zipf_mix(classes: int, skew: float) -> np.ndarray:
    """The fleet's class mix: share of class k (1-based) proportional to 1 / k ** skew."""
    weights = 1.0 / np.arange(1, classes + 1) ** skew
    return weights / weights.sum()


@dataclass(frozen=True)
class _Traits:
    """Per-device traits, rows in cohort order (device i of the fleet is row i)."""

    rate: np.ndarray  # [n] inferences per hour
    mix: np.ndarray  # [n, C] class shares
    confidence: np.ndarray  # [n] mean top-1 confidence
    bins: np.ndarray  # [n, channels, BINS] input bin shares


def _concat(a: _Traits | None, b: _Traits) -> _Traits:
    if a is None:
        return b
    return _Traits(*(np.concatenate([x, y]) for x, y in zip(_fields(a), _fields(b), strict=True)))


def _fields(t: _Traits) -> tuple[np.ndarray, ...]:
    return t.rate, t.mix, t.confidence, t.bins


class LabelFreeFleet:
    """The label-free signals of one simulated run: traits per device, a window per stage and arm.

    Args:
        model: the fleet (`FleetModel`; its label-free fields).
        regression: how the target is worse (only the label-free kinds act here), or None.
        rng: this run's generator for the label-free signals.
    """

    def __init__(self, model: FleetModel, regression: Regression | None, rng: np.random.Generator) -> None:
        self.model = model
        self.rng = rng
        self.mix = zipf_mix(model.classes, model.class_skew)
        reference, inverted, edges = _reference_bins()
        channels = model.input_channels
        self.reference = np.tile(reference, (channels, 1))  # [channels, BINS]
        self.edges = np.tile(edges, (channels, 1))  # [channels, BINS - 1]: both releases' profiles
        self.inverted_ratio = np.tile(inverted / reference, (channels, 1))
        self.kind = regression.kind if regression is not None else None
        self.amount = regression.amount if regression is not None else 0.0
        self.swap: tuple[int, int] | None = None
        if self.kind == "label_swap":
            assert regression is not None
            if regression.pair == "extreme":  # the most and the least frequent class
                self.swap = (0, model.classes - 1)
            else:  # a pair drawn uniformly from all C (C - 1) / 2
                a, b = rng.choice(model.classes, 2, replace=False)
                self.swap = (int(min(a, b)), int(max(a, b)))
        self.traits: _Traits | None = None
        self.shadow, self.start, self.final = False, 0, False
        self.arms: dict[str, _Window] = {}

    # ---- devices -------------------------------------------------------------------------------------
    def _ensure(self, n: int) -> _Traits:
        """Traits of devices [0, n), drawn the first time a stage reaches them (same order every time)."""
        have = 0 if self.traits is None else self.traits.rate.size
        if n > have:
            m, rng, k = self.model, self.rng, n - have
            cv = m.inference_rate_spread
            rate = (
                rng.gamma(1 / cv**2, m.inferences_per_device_hour * cv**2, k)
                if cv > 0
                else np.full(k, m.inferences_per_device_hour)
            )
            g = rng.standard_gamma(np.broadcast_to(m.class_concentration * self.mix, (k, self.mix.size)))
            mix = g / np.maximum(g.sum(axis=1, keepdims=True), 1e-300)
            confidence = np.clip(rng.normal(m.confidence_mean, m.confidence_spread, k), 0.01, 1.0)
            alpha = m.input_concentration * self.reference
            h = rng.standard_gamma(np.broadcast_to(alpha, (k, *alpha.shape)))
            bins = h / np.maximum(h.sum(axis=2, keepdims=True), 1e-300)
            self.traits = _concat(self.traits, _Traits(rate, mix, confidence, bins))
        assert self.traits is not None
        return self.traits

    def start_stage(self, t_hi: int, c_hi: int, start: int, *, shadow: bool) -> None:
        """A new stage at hour `start`: treatment devices [0, t_hi), control [t_hi, c_hi) (none at 100%);
        empty windows."""
        traits = self._ensure(c_hi)
        self.shadow, self.start, self.final = shadow, start, c_hi <= t_hi
        self.arms = {
            "t": _Window(self, _slice(traits, 0, t_hi), treatment=True),
            "c": _Window(self, _slice(traits, t_hi, c_hi), treatment=False),
        }

    def hour(
        self, hour: int, since_t: np.ndarray, since_c: np.ndarray, keep: float, hazards: tuple[float, float]
    ) -> None:
        """One hour of both arms. `since_*`: hour each device started running its arm's release in this
        stage (inf = not yet); `keep`: share surviving clock skew; hazards: (target, baseline) crashes per
        device-hour."""
        self.arms["t"].hour(hour, since_t, keep, hazards[0])
        self.arms["c"].hour(hour, since_c, keep, hazards[1])

    def evidence(self, hour: int, lies: tuple[str, str] | None) -> LabelFreeEvidence:
        """The stage window's `LabelFreeEvidence` at `hour` (liars per arm when `lies` = (treatment's,
        control's) direction, each "bad" or "good")."""
        from edgekit.rollout.label_free import LabelFreeEvidence

        reference = {INPUT_NAME: self.reference}
        return LabelFreeEvidence(
            treatment=self.arms["t"].evidence(hour, None if lies is None else lies[0]),
            control=self.arms["c"].evidence(hour, None if lies is None else lies[1]),
            reference_treatment=reference,
            reference_control=reference,
            edges_treatment={INPUT_NAME: self.edges},
            edges_control={INPUT_NAME: self.edges},
        )


def _slice(t: _Traits, lo: int, hi: int) -> _Traits:
    return _Traits(*(x[lo:hi] for x in _fields(t)))


class _Window:
    """One arm's devices in one stage window: what each has delivered, what still waits in its queue."""

    def __init__(self, fleet: LabelFreeFleet, traits: _Traits, *, treatment: bool) -> None:
        m = fleet.model
        self.fleet, self.traits = fleet, traits
        n, c = traits.rate.size, m.classes
        # Columns: inferences, classes (c), confidence sum, input bins (channels x BINS), shadow compared,
        # agreed, failures.
        self.cls = slice(1, 1 + c)
        self.conf = 1 + c
        self.bins = slice(2 + c, 2 + c + m.input_channels * BINS)
        self.sh = 2 + c + m.input_channels * BINS
        width = self.sh + 3
        self.delivered = np.zeros((n, width))
        self.pending = np.zeros((n, width))
        self.since = np.full(n, np.inf)  # hour each device started running this arm's release here
        # What this arm's devices serve and, in a shadow stage, what they run in shadow.
        serving_target = treatment and not fleet.shadow
        kind, amount = fleet.kind, fleet.amount
        self.mix = traits.mix
        if serving_target and kind == "label_swap" and fleet.swap is not None:
            a, b = fleet.swap
            swapped = traits.mix.copy()
            swapped[:, [a, b]] = swapped[:, [b, a]]
            self.mix = (1 - amount) * traits.mix + amount * swapped
        self.confidence = traits.confidence
        if serving_target and kind == "confidence_drop":
            self.confidence = np.clip(traits.confidence - amount, 0.0, 1.0)
        self.bin_shares = traits.bins
        if serving_target and kind == "input_shift":
            # A device's inverted inputs: its own mix tilted by the fleet's inverted / reference ratio.
            tilted = traits.bins * fleet.inverted_ratio
            tilted /= tilted.sum(axis=2, keepdims=True)
            self.bin_shares = (1 - amount) * traits.bins + amount * tilted
        self.disagree: np.ndarray | None = None
        if fleet.shadow:
            self.disagree = np.full(n, m.engine_nondeterminism)
            if treatment:
                self.disagree = self.disagree + m.target_disagreement
                if kind == "label_swap" and fleet.swap is not None:
                    self.disagree = self.disagree + amount * traits.mix[:, list(fleet.swap)].sum(axis=1)
            self.disagree = np.clip(self.disagree, 0.0, 1.0)

    def hour(self, hour: int, since: np.ndarray, keep: float, hazard: float) -> None:
        m, rng = self.fleet.model, self.fleet.rng
        self.since = np.minimum(self.since, since)
        active = since <= hour - 0.5  # running for the larger part of the hour
        size = active.size
        if size == 0 or not active.any():
            return
        # Whole-arm arrays (an inactive device draws zero events): cheaper than gathering the active rows.
        lam = self.traits.rate * active
        inc = np.zeros_like(self.delivered)
        if self.fleet.final:
            # The last stage compares no classes or confidence (no control arm): only the count is drawn.
            n = rng.poisson(lam).astype(np.float64)
        else:
            counts = rng.poisson(lam[:, None] * self.mix)
            n = counts.sum(axis=1).astype(np.float64)
            inc[:, self.cls] = counts
            noise = rng.standard_normal(size) * m.confidence_noise * np.sqrt(n)
            inc[:, self.conf] = np.clip(n * self.confidence + noise, 0.0, n)
        inc[:, 0] = n
        per_channel = SAMPLED / m.input_channels  # elements of each channel sampled per inference
        mean = ((n * per_channel)[:, None, None] * self.bin_shares).reshape(size, -1)
        # Poisson counts in the normal approximation: a bin holds hundreds of elements an hour, where the
        # two agree, and normal draws cost a third of Poisson ones.
        noise = rng.standard_normal(mean.shape) * np.sqrt(mean)
        inc[:, self.bins] = np.maximum(mean + noise, 0.0)
        if self.disagree is not None:
            compared = rng.binomial(n.astype(np.int64), m.shadow_sample)
            inc[:, self.sh] = compared
            inc[:, self.sh + 1] = compared - rng.binomial(compared, self.disagree)
            inc[:, self.sh + 2] = rng.poisson(hazard * m.shadow_sample * active)
        # Lost reports, then the share stamped before the stage start (clock skew).
        inc *= ((rng.random(size) >= m.telemetry_loss) * keep)[:, None]
        online = (rng.random(size) >= m.offline_share)[:, None]
        late = m.report_interval_hours / 2  # the last half report interval waits for the next upload
        self.delivered += np.where(online, self.pending + (1 - late) * inc, 0.0)
        self.pending = np.where(online, late * inc, self.pending + inc)

    def evidence(self, hour: int, lie: str | None) -> ArmEvidence:
        from edgekit.rollout.label_free import ArmEvidence

        m = self.fleet.model
        if self.since.size == 0:  # no arm (the control at 100%): evidence of nothing, as the server has
            return ArmEvidence(weights=np.zeros(0))
        rows = np.flatnonzero(self.delivered[:, 0] > 0)
        d = self.delivered[rows]
        n = d[:, 0]
        # Exposure as the server counts it: the span of the device's reports in the window plus one
        # report interval (here: since it started running the release in this stage).
        hours = np.maximum(hour - self.since[rows], 0.0) + m.report_interval_hours
        cap = MAX_INFERENCES_PER_DEVICE_HOUR * hours
        weights = np.minimum(n, cap)
        final = self.fleet.final  # classes and confidence were not drawn (see `hour`)
        classes = None if final else d[:, self.cls] / n[:, None]
        confidence = None if final else d[:, self.conf] / n
        bins = d[:, self.bins].reshape(rows.size, m.input_channels, BINS)
        drift = bins / np.maximum(bins.sum(axis=2, keepdims=True), 1e-300)
        compared = agreed = failures = None
        if self.fleet.shadow:
            raw = d[:, self.sh]
            compared = np.minimum(raw, cap)
            agreed = d[:, self.sh + 1] * np.divide(compared, raw, out=np.zeros_like(raw), where=raw > 0)
            failures = d[:, self.sh + 2]
        if lie is not None and m.hostile_devices and self.since.size:  # (no liars in an arm that is absent)
            liars = self._liars(lie, float(hour - self.fleet.start))
            weights = np.concatenate([weights, liars["weights"]])
            if classes is not None and confidence is not None:
                classes = np.concatenate([classes, liars["classes"]])
                confidence = np.concatenate([confidence, liars["confidence"]])
            drift = np.concatenate([drift, liars["drift"]])
            if compared is not None and agreed is not None and failures is not None:
                compared = np.concatenate([compared, liars["compared"]])
                agreed = np.concatenate([agreed, liars["agreed"]])
                failures = np.concatenate([failures, liars["failures"]])
        return ArmEvidence(
            weights=weights,
            classes=classes,
            confidence=confidence,
            drift={INPUT_NAME: drift},
            shadow_compared=compared,
            shadow_agreed=agreed,
            shadow_failures=failures,
        )

    def _liars(self, lie: str, elapsed: float) -> dict[str, np.ndarray]:
        """`hostile_devices` rows at the per-device caps: `bad` looks as regressed as a device can (all
        predictions on the rarest class, confidence 0, every input value in the top bin, no shadow
        agreement, shadow failures at the crash cap), `good` looks exactly like the healthy baseline
        fleet (the fleet mix, mean confidence, reference bins, full agreement)."""
        m, fleet = self.fleet.model, self.fleet
        k = m.hostile_devices
        exposure = max(elapsed, 0.0) + m.report_interval_hours
        weight = MAX_INFERENCES_PER_DEVICE_HOUR * exposure
        compared = weight * m.shadow_sample
        c, ch = m.classes, m.input_channels
        if lie == "bad":
            classes = np.zeros((k, c))
            classes[:, -1] = 1.0
            confidence = np.zeros(k)
            drift = np.zeros((k, ch, BINS))
            drift[:, :, -1] = 1.0
            agreed, failures = 0.0, exposure * MAX_CRASHES_PER_DEVICE_HOUR
        else:
            classes = np.tile(fleet.mix, (k, 1))
            confidence = np.full(k, m.confidence_mean)
            drift = np.tile(fleet.reference, (k, 1, 1))
            agreed, failures = compared, 0.0
        return {
            "weights": np.full(k, weight),
            "classes": classes,
            "confidence": confidence,
            "drift": drift,
            "compared": np.full(k, compared),
            "agreed": np.full(k, agreed),
            "failures": np.full(k, failures),
        }
