"""Replay of stored telemetry through the stage gates, so that every stored decision can be reproduced.

The server stores each arm's telemetry deltas and each evaluation's times; `replay` totals the deltas of
each stage's window and calls the same pure `edgekit.rollout.gates.evaluate` on them. `gates` re-exports
`replay`, `TelemetryDelta` and `Evaluation` as part of its public surface.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from edgekit.rollout._types import ArmMetrics, GateConfig, GateConfigError, StageDecision

__all__ = ["Evaluation", "TelemetryDelta", "replay"]


@dataclass(frozen=True)
class TelemetryDelta:
    """Telemetry of one arm received at `time` (seconds since the epoch), as stored by the server."""

    time: float
    arm: Literal["treatment", "control"]
    delta: ArmMetrics


@dataclass(frozen=True)
class Evaluation:
    """A gate evaluation at `time` of `stage` (percent), which started at `stage_started_at` (seconds)."""

    time: float
    stage: int
    stage_started_at: float


def replay(events: Sequence[TelemetryDelta | Evaluation], config: GateConfig) -> list[StageDecision]:
    """Recompute the decisions of stored telemetry: the same pure `evaluate`, the same inputs.

    Args:
        events: telemetry deltas and evaluations in non-decreasing time order. Each evaluation sees the
            deltas listed before it whose time is at or after its stage start.
        config: the gate config in force.

    Returns:
        One decision per `Evaluation`, in order.

    Raises:
        GateConfigError: events out of time order, or an unknown arm.
    """
    # At call time: gates imports this module to re-export replay, so a module-level import would be a cycle.
    from edgekit.rollout.gates import evaluate

    seen: list[TelemetryDelta] = []
    decisions: list[StageDecision] = []
    last = -math.inf
    window: float | None = None
    totals: dict[str, ArmMetrics] = {}
    for event in events:
        if not event.time >= last:
            raise GateConfigError(f"replay events must be in time order: {event.time!r} after {last!r}")
        last = event.time
        if isinstance(event, TelemetryDelta):
            if event.arm not in ("treatment", "control"):
                raise GateConfigError(f"unknown arm {event.arm!r}; expected treatment or control")
            seen.append(event)
            if window is not None and event.time >= window:
                totals[event.arm] = totals.get(event.arm, ArmMetrics()).plus(event.delta)
            continue
        if event.stage_started_at != window:  # a new stage: total its window from the stored deltas
            window = event.stage_started_at
            totals = {}
            for d in seen:
                if d.time >= window:
                    totals[d.arm] = totals.get(d.arm, ArmMetrics()).plus(d.delta)
        decisions.append(
            evaluate(
                event.stage,
                totals.get("treatment"),
                None if event.stage == 100 else totals.get("control"),
                config,
                event.time,
                event.stage_started_at,
            )
        )
    return decisions
