"""A rollout's salt, drawn so that its first stages put enough registered devices in each arm.

A device's arm follows from the plan's salt and its own id (`device_runtime.rollout_plan.cohort_u` and
`stage_arm`, the devices' own rule; that contract does not change here). On a small fleet a 1% stage
draws a handful of devices per arm, fewer than the gates need (`GateConfig.min_devices_per_arm`), and such
a stage can only hold until its deadline. With `min_arm_devices` N > 0, `draw_cohorts` draws salts until
every stage before the last has at least N registered devices in the treatment and (with a control
group) in the control arm.

The work is bounded. The chance that one draw succeeds comes first, from the binomial distribution of an
arm's size (R registered devices, share p): each arm has N or more with its tail P(X >= N), and a draw
must give every arm that, with about the product of the tails (the arms taken as independent; the two arms
of a stage are disjoint, so if anything a little less). Below `HOPELESS` the start is refused at once, with
the figures and what to change. Otherwise it tries up to the number of draws that leaves about
`FAILURE_ODDS` of failing, at most `MAX_DRAWS` and at most `MAX_HASHES` device hashes in all, and refuses
alike if none succeeds. Each draw hashes every registered device once and counts every stage from those
values; on a fleet large enough for its stages the first draw succeeds.

Choosing a salt on the arm *counts* does not bias the comparison. Whether a draw is kept depends only on
how many registered devices fall in each arm, never on which ones, nor on anything the devices did or
reported; the salt is still random, so among the draws with the same counts every way of sorting the
devices into the arms is equally likely, and the treatment and the control stay two random samples of the
same fleet.
"""

from __future__ import annotations

import math
import secrets
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from device_runtime.rollout_plan import cohort_u, stage_arm
from edgekit.errors import RolloutConflictError
from edgekit.rollout.gates import GateConfig

__all__ = [
    "FAILURE_ODDS",
    "HOPELESS",
    "MAX_DRAWS",
    "MAX_HASHES",
    "CohortDraw",
    "StageCohort",
    "arm_words",
    "binomial_tail",
    "draw_cohorts",
]

HOPELESS = 1e-4  # probability: a draw this unlikely to succeed is refused at once
FAILURE_ODDS = 1e-6  # probability of refusing a start that could succeed: sets the number of draws
MAX_DRAWS = 2000  # draws per start, whatever the odds
MAX_HASHES = 1_000_000  # device hashes per start (one to a few seconds of SHA-256 in Python)
SUGGEST = 0.1  # probability per draw of the fixes a refusal suggests (about 130 draws for FAILURE_ODDS)


@dataclass(frozen=True)
class StageCohort:
    """How many registered devices a stage puts in each arm (`control` None: the plan keeps none)."""

    percent: int
    treatment: int
    control: int | None

    def smallest(self) -> int:
        """The smaller arm (the treatment alone without a control group)."""
        return self.treatment if self.control is None else min(self.treatment, self.control)

    def to_dict(self) -> dict[str, Any]:
        return {"percent": self.percent, "treatment": self.treatment, "control": self.control}


@dataclass(frozen=True)
class CohortDraw:
    """The salt a start drew and what it gives: arm sizes of every stage before the last among the
    `registered` devices, after `draws` draws, for at least `min_arm_devices` per arm (0: any draw)."""

    salt: str
    registered: int
    draws: int
    min_arm_devices: int
    stages: tuple[StageCohort, ...]

    def warning(self, gates: GateConfig) -> str | None:
        """Why a stage can never be decided (an arm below what the gates need), or None.

        The gates' exposure check needs `min_devices_per_arm` devices per arm once its `robust_devices`
        most influential ones are left out (`edgekit.rollout.gates`), so a smaller arm only holds.
        """
        need = gates.min_devices_per_arm + gates.robust_devices
        short = next((s for s in self.stages if s.smallest() < need), None)
        if short is None:
            return None
        why = f"min_devices_per_arm {gates.min_devices_per_arm}" + (
            f" + robust_devices {gates.robust_devices}" if gates.robust_devices else ""
        )
        return (
            f"stage {short.percent}% drew {arm_words(short)}, of {self.registered} registered, and the "
            f"gates need {need} in each group ({why}): the stage will hold until its deadline "
            f"({gates.stage_deadline_hours:g} h) and then alert; to draw bigger groups, abort this rollout "
            f"and start it again with --min-arm-devices {need}, or with a larger first stage (--stages)"
        )

    def to_dict(self, gates: GateConfig) -> dict[str, Any]:
        """The `cohorts` of the start's response (docs/scripting.md shows it)."""
        return {
            "registered": self.registered,
            "draws": self.draws,
            "min_arm_devices": self.min_arm_devices,
            "gate_min_devices": gates.min_devices_per_arm + gates.robust_devices,
            "stages": [s.to_dict() for s in self.stages],
            "warning": self.warning(gates),
        }


def arm_words(stage: StageCohort) -> str:
    """'2 devices for the update group and 3 for the control group' (or the update group alone)."""
    update = f"{stage.treatment} device{'' if stage.treatment == 1 else 's'} for the update group"
    return update if stage.control is None else f"{update} and {stage.control} for the control group"


def binomial_tail(n: int, q: float, k: int) -> float:
    """P(X >= k) for X ~ Binomial(n, q), summed in log space from the side that is small."""
    if k <= 0 or q >= 1:
        return 1.0
    if k > n or q <= 0:
        return 0.0
    log_q, log_r, log_n = math.log(q), math.log1p(-q), math.lgamma(n + 1)

    def pmf(i: int) -> float:
        return math.exp(log_n - math.lgamma(i + 1) - math.lgamma(n - i + 1) + i * log_q + (n - i) * log_r)

    # Past the mean the terms only shrink (upward from k, or downward from k - 1 below it): stop once
    # they no longer change the sum.
    upper = k > n * q
    total, i = 0.0, k if upper else k - 1
    while 0 <= i <= n:
        term = pmf(i)
        total += term
        if term == 0.0 or term < total * 1e-17:
            break
        i += 1 if upper else -1
    return min(1.0, total) if upper else max(0.0, 1.0 - total)


def _shares(stages: Sequence[int], control: bool) -> list[int]:
    """The percent of the fleet each checked arm draws from: both arms of every stage before the last."""
    return [p for p in stages[:-1] for _ in range(2 if control else 1)]


def _chances(registered: int, stages: Sequence[int], control: bool, n: int) -> tuple[float, int]:
    """(the estimated chance that one draw succeeds, the stage least likely to), for N = `n`."""
    tails = [(binomial_tail(registered, p / 100, n), p) for p in _shares(stages, control)]
    if not tails:
        return 1.0, stages[-1]
    return math.prod(t for t, _ in tails), min(tails)[1]


def _fixes(registered: int, stages: Sequence[int], control: bool, n: int, stage: int) -> str:
    """How to fix a refused start, naming only options that exist, with figures that would work."""
    fixes = []
    top = 50 if control else 99
    ladders = ([p, *(s for s in stages if s > p)] for p in range(stages[0] + 1, top + 1))
    ladder = next((ld for ld in ladders if _chances(registered, ld, control, n)[0] >= SUGGEST), None)
    if ladder is not None:
        fixes.append(f"a larger first stage (--stages {','.join(map(str, ladder))})")
    else:
        fixes.append("a larger first stage (--stages)")
    low, high = 0, n - 1  # the largest N a draw gives with a fair chance: chance falls as N grows
    while low < high:
        middle = (low + high + 1) // 2
        if _chances(registered, stages, control, middle)[0] >= SUGGEST:
            low = middle
        else:
            high = middle - 1
    fixes.append(f"a smaller --min-arm-devices ({low} or less)" if low > 0 else "a smaller --min-arm-devices")
    fixes.append(f"register more devices ({math.ceil(n * 100 / stage)} expect {n} per {stage}% group)")
    return f"start with {', '.join(fixes[:-1])}, or {fixes[-1]}"


def _count(us: Sequence[float], stages: Sequence[int], control: bool) -> tuple[StageCohort, ...]:
    counted = []
    for percent in stages[:-1]:
        arms = Counter(stage_arm(u, percent, control) for u in us)
        counted.append(StageCohort(percent, arms["treatment"], arms["control"] if control else None))
    return tuple(counted)


def draw_cohorts(
    device_ids: Sequence[str],
    stages: Sequence[int],
    control: bool,
    min_arm_devices: int = 0,
    new_salt: Callable[[], str] = lambda: secrets.token_hex(16),
) -> CohortDraw:
    """A salt whose stages before the last have at least `min_arm_devices` of `device_ids` per arm.

    `stages` as in a valid plan (increasing, ending at 100). With `min_arm_devices` 0 the first salt is
    kept and only counted.

    Raises:
        RolloutConflictError: the draw is hopeless or no salt within the bounded draws gave the sizes;
            the message says the registered devices, the stage and its expected arm size, and what to
            change.
    """
    registered, n = len(device_ids), min_arm_devices
    estimate, stage = _chances(registered, stages, control, n) if n > 0 else (1.0, stages[-1])
    expected, limit = registered * stage / 100, 1
    if n > 0:
        if estimate < HOPELESS:
            raise RolloutConflictError(
                f"cannot draw groups of at least {n} devices (--min-arm-devices {n}): of the {registered} "
                f"registered devices, stage {stage}% expects {expected:.1f} per group, and one draw gives "
                f"every group {n} or more with a chance of about {estimate:.1g} (below {HOPELESS:g}); "
                + _fixes(registered, stages, control, n, stage)
            )
        wanted = 1 if estimate >= 1 else math.ceil(math.log(FAILURE_ODDS) / math.log1p(-estimate))
        limit = max(1, min(wanted, MAX_DRAWS, MAX_HASHES // max(registered, 1)))
    for draw in range(1, limit + 1):
        salt = new_salt()
        counted = _count([cohort_u(salt, device) for device in device_ids], stages, control)
        if all(s.smallest() >= n for s in counted):
            return CohortDraw(salt, registered, draw, n, counted)
    raise RolloutConflictError(
        f"no salt of {limit} drawn gave every stage before the last at least {n} devices per group "
        f"(--min-arm-devices {n}): of the {registered} registered devices, stage {stage}% expects "
        f"{expected:.1f} per group, and one draw succeeds with a chance of about {estimate:.1g}; "
        + _fixes(registered, stages, control, n, stage)
    )
