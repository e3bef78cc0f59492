"""Stored ``health`` and ``shadow`` events -> the label-free evidence of a rollout's current stage window.

The gates that need no feedback labels (`edgekit.rollout.label_free`) read, per arm and per device, the
predicted-class and confidence shares, the input bins against the releases' signed reference profiles, and
the shadow runs' agreement. This module collects them from the same window as every other gate metric
(events timed since the stage started, received by ``until - SETTLE_S``, each device's arm from the plan):

- ``health`` events: `edgekit.server.model_health.health_devices` (treatment devices' sketches of the
  target, control devices' of the baseline);
- ``shadow`` events, in the plan's shadow stages only: a treatment device counts its shadow runs of the
  target next to the served baseline, a control device its self-shadow runs of the baseline; any other
  pairing is not evidence for this rollout and is left out;
- reference profiles: `edgekit.server.model_health.reference_profile` of the target and the baseline.

Every row is parsed with the telemetry contract before it counts; a row it refuses is skipped and counted
(the decision records the count), never raised. The per-device caps are applied where the arms are built
(`edgekit.rollout.label_free.arm_evidence`), so the live evaluation and a replay from the stored rows compute
the same evidence. `label_free_view` is the JSON of the same rows for the rollout status and the dashboard.
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np

from device_runtime.errors import ContractError
from device_runtime.health import HealthProfile
from device_runtime.telemetry_contract import ShadowPayload, parse_payload
from edgekit.rollout.label_free import ArmEvidence, DeviceShadow, LabelFreeEvidence, arm_evidence
from edgekit.rollout.plan import RolloutPlan, arm
from edgekit.server.aggregate import SETTLE_S
from edgekit.server.model_health import health_devices, reference_profile
from edgekit.server.storage import Database

__all__ = ["label_free_evidence", "shadow_devices", "shadow_view"]


def shadow_devices(db: Database, plan: RolloutPlan, until: float) -> tuple[list[DeviceShadow], int]:
    """Each device's summed shadow runs in the current stage window; and the rows skipped (refused by the
    contract on reading back, or a non-finite time)."""
    if not plan.is_shadow_stage:
        # Shadow runs are evidence only in the plan's shadow stages: a device still shadowing after the
        # stage moved on (until its next update stops it) reports a last window that belongs to none.
        return [], 0
    target, baseline = plan.target.bundle_id, plan.baseline.bundle_id
    rows = db.execute(
        "SELECT device_id, time, bundle_id, payload FROM events WHERE bundle_id IN (?, ?) "
        "AND kind = 'shadow' AND time >= ? AND received_at <= ?",
        (target, baseline, plan.stage_started_at, until - SETTLE_S),
    )
    # The pairing each arm's shadow runs must have: treatment shadows the target next to the baseline it
    # serves; control shadows the baseline next to itself (its self-agreement is the yardstick).
    wanted = {"treatment": (target, baseline), "control": (baseline, baseline)}
    devices: dict[str, DeviceShadow] = {}
    skipped = 0
    for device_id, time, bundle_id, text in rows:
        side = arm(plan, device_id)
        if side not in wanted or bundle_id != wanted[side][0]:
            continue
        try:
            if not isinstance(time, int | float) or not math.isfinite(time):
                raise ValueError("time")
            payload = parse_payload("shadow", json.loads(text))
            if not isinstance(payload, ShadowPayload):
                raise ValueError("not a shadow payload")
        except (ValueError, ContractError, RecursionError):
            skipped += 1
            continue
        if payload.served_bundle_id != wanted[side][1]:
            continue  # a shadow run next to another served release: not this rollout's comparison
        device = devices.get(device_id)
        if device is None:
            device = devices[device_id] = DeviceShadow(device_id, side)
        device.add(float(time), payload.compared, payload.agreed, payload.failures, payload.timeouts)
    return list(devices.values()), skipped


def _expected(profile: HealthProfile | None) -> dict[str, np.ndarray]:
    """input name -> [channels, bins] expected shares of a reference profile ({} without one)."""
    if profile is None:
        return {}
    return {name: np.asarray(ref.expected, np.float64) for name, ref in profile.inputs.items()}


def _edges(profile: HealthProfile | None) -> dict[str, np.ndarray]:
    """input name -> [channels, edges] bin edges of a reference profile ({} without one)."""
    if profile is None:
        return {}
    return {name: np.asarray(ref.edges, np.float64) for name, ref in profile.inputs.items()}


def _or_nothing(arm: ArmEvidence) -> ArmEvidence:
    """An arm without a single device as "nothing reported" (every signal None), never as arrays of zero
    rows: the last stage has no control arm, and an arm's first reports may lag the other's."""
    return arm if arm.weights.size else ArmEvidence(weights=np.zeros(0))


def label_free_evidence(
    db: Database, plan: RolloutPlan, until: float, repo: Any
) -> tuple[LabelFreeEvidence, int]:
    """The label-free evidence of the plan's current stage window at `until`, and the stored rows skipped.

    Deterministic in the stored rows and the published bundles, so a replay at a stored decision's time
    rebuilds exactly the evidence the live evaluation saw.
    """
    health, skipped_health = health_devices(db, plan, until)
    if plan.is_shadow_stage:
        # Both arms serve the baseline in a shadow stage: their served predictions and inputs compare a
        # release with itself, so only the shadow runs judge the target (health gates: "not judged").
        health = []
    shadows, skipped_shadow = shadow_devices(db, plan, until)
    arms = arm_evidence(health, shadows, plan.stage_started_at, until)
    target = reference_profile(repo, plan.target.bundle_id)
    baseline = reference_profile(repo, plan.baseline.bundle_id)
    evidence = LabelFreeEvidence(
        treatment=_or_nothing(arms["treatment"]),
        control=_or_nothing(arms["control"]),
        reference_treatment=_expected(target),
        reference_control=_expected(baseline),
        edges_treatment=_edges(target),  # both arms bin alike where the edges are equal
        edges_control=_edges(baseline),
    )
    return evidence, skipped_health + skipped_shadow


def shadow_view(db: Database, plan: RolloutPlan, until: float) -> dict[str, Any]:
    """JSON for the status and the dashboard: each arm's shadow runs in the stage window (devices, runs
    compared and agreeing on the primary output, agreement, failures, timeouts) and the rows skipped."""
    devices, skipped = shadow_devices(db, plan, until)
    view: dict[str, Any] = {}
    for side in ("treatment", "control"):
        mine = [d for d in devices if d.arm == side]
        compared = sum(d.compared for d in mine)
        agreed = sum(d.agreed for d in mine)
        view[side] = {
            "devices": len(mine),
            "compared": compared,
            "agreed": agreed,
            "agreement": agreed / compared if compared else None,
            "failures": sum(d.failures for d in mine),
            "timeouts": sum(d.timeouts for d in mine),
        }
    view["skipped_rows"] = skipped
    return view
