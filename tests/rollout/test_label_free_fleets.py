"""Label-free gates on seeded fleets: per-device heterogeneity, devices joining over hours.

The fleet model (also used by test_label_free.py):

Each device has its own class mix (Dirichlet around the fleet's mix: a kitchen camera is not a street
camera), its own inference rate (log-normal: some devices run 20x more than others), its own mean
confidence, its own input distribution (Dirichlet around the fleet's bin shares) and its own engine
nondeterminism (the share of inputs on which the served model disagrees with itself). Devices join at
random hours, and every hour each reporting device's counts grow by a Poisson number of inferences, so
every look sees more devices and more mature rows, as the server's hourly evaluations do.

`Release` describes what the treatment's model does differently; `World` what both arms see.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import pytest

from device_runtime.health import bin_counts
from edgekit.rollout._label_free_stats import ArmSample
from edgekit.rollout.gates import GateConfig
from edgekit.rollout.label_free import LABEL_FREE_METRICS, ArmEvidence, LabelFreeEvidence, label_free_records

# The fleet's class mix: unequal on purpose (class 0 is common, class 1 rare).
CLASS_MIX = np.array([0.30, 0.05, 0.10, 0.10, 0.08, 0.07, 0.10, 0.10, 0.05, 0.05])
CHANNELS = 3
_SAMPLE = np.random.default_rng(12345).beta(2.0, 5.0, 200_000)  # a skewed input, like dark photos
EDGES = np.quantile(_SAMPLE, np.linspace(0.1, 0.9, 9))  # the reference profile's decile edges


def _shares(values: np.ndarray) -> np.ndarray:
    """Shares of `values` per reference bin, with the device runtime's own binning."""
    counts = bin_counts(values[:, None], EDGES[None, :])[0].astype(np.float64)
    return counts / counts.sum()


REFERENCE = np.tile(_shares(_SAMPLE), (CHANNELS, 1))  # [channels, bins]: 0.1 each, by construction
INVERTED = np.tile(_shares(1.0 - _SAMPLE), (CHANNELS, 1))  # what inverted images fill those bins with
BRIGHTER = np.tile(_shares(np.clip(_SAMPLE + 0.12, 0.0, 1.0)), (CHANNELS, 1))  # a brighter world


@dataclass(frozen=True)
class Release:
    """What the treatment's model does differently from the baseline."""

    swap: tuple[int, int] | None = None  # two classes whose labels are swapped
    inputs: np.ndarray | None = None  # [channels, bins] the inputs its preprocessing produces
    confidence_drop: float = 0.0
    disagreement: float = 0.0  # extra share of shadowed inputs on which it disagrees with the baseline
    failures: float = 0.0  # share of shadow runs that fail


@dataclass(frozen=True)
class World:
    """What every device sees (both arms)."""

    inputs: np.ndarray = field(default_factory=lambda: REFERENCE)
    concentration: float = 3.0  # Dirichlet concentration of device class mixes: low = heterogeneous


def fleet(
    seed: int,
    *,
    devices: int = 400,
    hours: int = 10,
    release: Release = Release(),
    world: World = World(),
    shadow: bool = True,
    same_bins: bool = False,
) -> Iterator[tuple[int, LabelFreeEvidence]]:
    """Hourly `LabelFreeEvidence` of a stage with `devices` per arm (treatment runs `release`); with
    `same_bins` the evidence carries both profiles' (equal) bin edges."""
    rng = np.random.default_rng(seed)
    arms = {}
    for arm in ("treatment", "control"):
        changed = release if arm == "treatment" else Release()
        inputs = world.inputs if changed.inputs is None else changed.inputs
        mix = rng.dirichlet(world.concentration * CLASS_MIX * CLASS_MIX.size, size=devices)
        if changed.swap is not None:
            a, b = changed.swap
            mix[:, [a, b]] = mix[:, [b, a]]
        arms[arm] = {
            "mix": mix,
            "rate": np.exp(rng.normal(np.log(60.0), 1.0, devices)),  # inferences per hour
            "start": rng.integers(0, hours, devices),
            "confidence": np.clip(rng.normal(0.8 - changed.confidence_drop, 0.08, devices), 0.05, 1.0),
            "bins": np.stack([rng.dirichlet(300.0 * row, size=devices) for row in inputs], axis=1),
            "disagree": np.clip(rng.beta(1.0, 99.0, devices) + changed.disagreement, 0.0, 1.0),
            "fail": changed.failures,
            "counts": np.zeros((devices, CLASS_MIX.size)),
            "inferences": np.zeros(devices),
            "confidence_sum": np.zeros(devices),
            "compared": np.zeros(devices),
            "agreed": np.zeros(devices),
            "failures": np.zeros(devices),
        }
    for hour in range(hours):
        found = {}
        for arm, a in arms.items():
            n = rng.poisson(a["rate"]) * (a["start"] <= hour)
            a["counts"] += rng.multinomial(n, a["mix"])
            a["inferences"] += n
            noise = rng.normal(0.0, 0.1, devices) / np.sqrt(np.maximum(n, 1))
            a["confidence_sum"] += n * np.clip(a["confidence"] + noise, 0.0, 1.0)
            runs = rng.binomial(n, 0.1)  # a tenth of inferences shadowed
            failed = rng.binomial(runs, a["fail"])
            compared = runs - failed
            a["compared"] += compared
            a["agreed"] += compared - rng.binomial(compared, a["disagree"])
            a["failures"] += failed
            seen = a["inferences"] > 0
            total = np.maximum(a["inferences"], 1.0)
            classes = a["counts"] / total[:, None]
            classes[~seen] = np.nan
            confidence = np.where(seen, a["confidence_sum"] / total, np.nan)
            drift = a["bins"].copy()  # ~85 sampled values per channel and inference: near the device's shares
            drift[~seen] = np.nan
            found[arm] = ArmEvidence(
                weights=np.where(seen, a["inferences"], 0.0),
                classes=classes,
                confidence=confidence,
                drift={"image": drift},
                shadow_compared=a["compared"].copy() if shadow else None,
                shadow_agreed=a["agreed"].copy() if shadow else None,
                shadow_failures=a["failures"].copy() if shadow else None,
            )
        edges = {"image": np.tile(EDGES, (CHANNELS, 1))} if same_bins else {}
        references = {"image": REFERENCE}
        yield (
            hour,
            LabelFreeEvidence(found["treatment"], found["control"], references, references, edges, edges),
        )


def last_look(seed: int, **kwargs: object) -> LabelFreeEvidence:
    """The evidence at the fleet's last hourly look."""
    looks = list(fleet(seed, **kwargs))  # type: ignore[arg-type]
    return looks[-1][1]


# ---- tests -------------------------------------------------------------------------------------------
LOOSE = GateConfig(min_devices_per_arm=50)  # the default gates, for fleets of a few hundred devices per arm


def _rollbacks(evidence: LabelFreeEvidence, config: GateConfig, stage: int = 1) -> set[str]:
    return {r.metric for r in label_free_records(stage, evidence, config) if r.outcome == "rollback"}


@pytest.mark.slow
def test_confidence_sequences_hold_at_every_hourly_look_of_heterogeneous_aa_fleets() -> None:
    """The bounds' own guarantee, measured: thresholds at zero (every look whose bound excludes "no
    difference" counts as a rollback), K = 0, alpha = 0.05, 200 seeded A/A fleets of 400 heterogeneous
    devices per arm joining over 10 hourly looks. A confidence sequence excludes the truth at any look
    with probability <= alpha; a fixed-sample 95% interval looked at every hour does so far more often."""
    alpha, runs = 0.05, 200
    config = GateConfig(
        min_devices_per_arm=50,
        robust_devices=0,
        label_free_alpha=alpha,
        max_class_shift=1e-9,
        max_confidence_drop=1e-9,
        psi_pass=1e-9,
        psi_rollback=1e-9,
        max_shadow_disagreement_excess=1e-9,
        max_shadow_failure_share=1e-9,  # no shadow run fails in these fleets: the bound must stay at 0
    )
    ever: dict[str, int] = {}
    naive = 0
    for seed in range(runs):
        hit: set[str] = set()
        fixed_sample_miss = False
        for _, evidence in fleet(seed):
            hit |= _rollbacks(evidence, config)
            # The same confidence difference judged with a fixed-sample two-sided 95% interval.
            t = ArmSample.of(evidence.treatment.confidence, evidence.treatment.weights, share=False)
            c = ArmSample.of(evidence.control.confidence, evidence.control.weights, share=False)
            if t is not None and c is not None and min(t.devices, c.devices) >= 50:
                (mt, vt, _), (mc, vc, _) = t.moments(), c.moments()
                fixed_sample_miss |= bool(abs(mt - mc)[0, 0] > 1.96 * np.sqrt(vt + vc)[0, 0])
        naive += fixed_sample_miss
        for metric in hit:
            ever[metric] = ever.get(metric, 0) + 1
    rates = {metric: count / runs for metric, count in ever.items()}
    assert all(rate <= alpha / 2 for rate in rates.values()), rates  # the guarantee, with margin
    assert naive / runs > alpha, naive / runs  # hourly looks at a fixed-sample interval: inflated


@pytest.mark.slow
def test_aa_fleets_are_not_rolled_back_by_the_default_label_free_gates() -> None:
    """Default thresholds and K = 3: 100 seeded heterogeneous A/A fleets, 10 hourly looks each, not one
    label-free rollback (the bound: 5 gates x 2e-4 = 0.1% per fleet and stage)."""
    falsely = [seed for seed in range(100) for _, ev in fleet(seed) if _rollbacks(ev, LOOSE)]
    assert falsely == []


# ---- K devices per arm lying at the per-device caps --------------------------------------------------------
LIARS = 3
HOURS = 10


def _lie(
    arm: ArmEvidence, classes: np.ndarray, confidence: float, inputs: np.ndarray, agree: bool
) -> ArmEvidence:
    """`arm` plus LIARS devices claiming the most a device may (the inference cap for every hour of the
    window, shadow comparisons likewise, 60 failures an hour) with the given values."""
    k = LIARS
    weight = np.full(k, 360_000.0 * HOURS)
    runs = np.full(k, 36_000.0 * HOURS)

    def add(rows: np.ndarray | None, extra: np.ndarray) -> np.ndarray | None:
        return None if rows is None else np.concatenate([rows, extra])

    assert arm.classes is not None and arm.confidence is not None
    return ArmEvidence(
        weights=np.concatenate([arm.weights, weight]),
        classes=add(arm.classes, np.tile(classes, (k, 1))),
        confidence=add(arm.confidence, np.full(k, confidence)),
        drift={"image": np.concatenate([arm.drift["image"], np.tile(inputs, (k, 1, 1))])},
        shadow_compared=add(arm.shadow_compared, runs),
        shadow_agreed=add(arm.shadow_agreed, runs if agree else np.zeros(k)),
        shadow_failures=add(arm.shadow_failures, np.zeros(k) if agree else np.full(k, 60.0 * HOURS)),
    )


def _toward_rollback(evidence: LabelFreeEvidence) -> LabelFreeEvidence:
    """Treatment liars report everything a broken release would; control liars a perfect baseline."""
    rare, common = np.eye(CLASS_MIX.size)[1], np.eye(CLASS_MIX.size)[0]
    treatment = _lie(evidence.treatment, rare, 0.0, INVERTED, agree=False)
    control = _lie(evidence.control, common, 1.0, REFERENCE, agree=True)
    return dataclasses.replace(evidence, treatment=treatment, control=control)


def _toward_pass(evidence: LabelFreeEvidence) -> LabelFreeEvidence:
    """The liars of both arms report a healthy model, outweighing the honest devices of their arms."""
    treatment = _lie(evidence.treatment, CLASS_MIX, 0.8, REFERENCE, agree=True)
    control = _lie(evidence.control, CLASS_MIX, 0.8, REFERENCE, agree=True)
    return dataclasses.replace(evidence, treatment=treatment, control=control)


@pytest.mark.parametrize("seed", range(5))
def test_k_liars_per_arm_cannot_roll_back_an_aa_fleet(seed: int) -> None:
    honest = last_look(100 + seed, hours=HOURS)
    lied = _toward_rollback(honest)
    assert _rollbacks(lied, LOOSE) == set()
    # Without the protection (K = 0) the same liars roll back every gate they lie to (their failures
    # are too few against their own claimed shadow runs to sway the failure guardrail).
    trusting = dataclasses.replace(LOOSE, robust_devices=0)
    assert _rollbacks(lied, trusting) == set(LABEL_FREE_METRICS) - {"shadow_failures"}


@pytest.mark.parametrize("seed", range(5))
def test_k_liars_per_arm_cannot_pass_a_broken_release(seed: int) -> None:
    broken = Release(swap=(0, 1), inputs=INVERTED, disagreement=0.3)
    honest = last_look(200 + seed, devices=1000, hours=HOURS, release=broken, same_bins=seed % 2 == 0)
    lied = _toward_pass(honest)
    judged = ("class_shift", "input_drift", "shadow_agreement")
    outcomes = {r.metric: r.outcome for r in label_free_records(1, lied, LOOSE)}
    assert all(outcomes[m] != "pass" for m in judged), outcomes
    trusting = dataclasses.replace(LOOSE, robust_devices=0)
    naive = {r.metric: r.outcome for r in label_free_records(1, lied, trusting)}
    # What the liars get without K: the rollbacks the honest devices show are hidden, two gates pass.
    assert all(naive[m] != "rollback" for m in judged), naive
    assert naive["class_shift"] == naive["shadow_agreement"] == "pass", naive


def _random_liars(arm: ArmEvidence, rng: np.random.Generator) -> ArmEvidence:
    """`arm` plus LIARS devices with random values and random weights up to the caps."""
    k, size = LIARS, CLASS_MIX.size
    compared = rng.uniform(0.0, 1.0, k) * 36_000.0 * HOURS
    assert arm.classes is not None and arm.confidence is not None and arm.shadow_compared is not None
    assert arm.shadow_agreed is not None and arm.shadow_failures is not None
    return ArmEvidence(
        weights=np.concatenate(
            [arm.weights, rng.uniform(0.0, 1.0, k) ** rng.uniform(0.1, 3.0) * 360_000.0 * HOURS]
        ),
        classes=np.concatenate([arm.classes, rng.dirichlet(np.full(size, rng.uniform(0.05, 5.0)), size=k)]),
        confidence=np.concatenate([arm.confidence, rng.uniform(0.0, 1.0, k)]),
        drift={
            "image": np.concatenate(
                [arm.drift["image"], rng.dirichlet(np.full(10, rng.uniform(0.05, 5.0)), size=(k, CHANNELS))]
            )
        },
        shadow_compared=np.concatenate([arm.shadow_compared, compared]),
        shadow_agreed=np.concatenate(
            [arm.shadow_agreed, compared * rng.uniform(0.0, 1.0, k) * (rng.uniform() < 0.5)]
        ),
        shadow_failures=np.concatenate(
            [arm.shadow_failures, rng.uniform(0.0, 600.0, k) * (rng.uniform() < 0.5)]
        ),
    )


def test_k_liars_per_arm_with_random_claims_neither_roll_back_aa_nor_pass_a_broken_release() -> None:
    rng = np.random.default_rng(7)
    healthy = [last_look(300 + seed, hours=HOURS) for seed in range(2)]
    broken_release = Release(swap=(0, 1), inputs=INVERTED, disagreement=0.3, confidence_drop=0.3)
    broken = [
        last_look(400 + seed, devices=1000, hours=HOURS, release=broken_release, same_bins=seed == 1)
        for seed in range(2)
    ]
    judged = set(LABEL_FREE_METRICS) - {"shadow_failures"}  # the broken release's shadow runs do not fail
    for trial in range(40):
        aa = healthy[trial % 2]
        lied = dataclasses.replace(
            aa, treatment=_random_liars(aa.treatment, rng), control=_random_liars(aa.control, rng)
        )
        assert _rollbacks(lied, LOOSE) == set(), trial
        bad = broken[trial % 2]
        lied = dataclasses.replace(
            bad, treatment=_random_liars(bad.treatment, rng), control=_random_liars(bad.control, rng)
        )
        passed = {r.metric for r in label_free_records(1, lied, LOOSE) if r.outcome == "pass"}
        assert not passed & judged, (trial, passed)
