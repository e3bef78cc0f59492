"""Telemetry → gate inputs: per-arm metrics of a rollout's current stage, from stored events.

A device's arm comes from the plan's salt and its id (the same function the device uses), so the server
keeps no assignment rows. Treatment metrics count events that treatment devices reported for the target
bundle; control metrics count what control devices reported for the baseline bundle; both only since the
stage started, so treatment and control share the same days, traffic and network. Device-hours are the
span of each device's reports in the window plus one report interval (a device reporting once has run
for about one interval).
"""

from __future__ import annotations

import json
from typing import Any

from edgekit.rollout.gates import HISTOGRAM_SIZE, ArmMetrics
from edgekit.rollout.plan import RolloutPlan, arm
from edgekit.server.storage import Database

__all__ = ["REPORT_INTERVAL_HOURS", "arm_metrics"]

REPORT_INTERVAL_HOURS = 1.0 / 6.0  # hours: devices upload about every ten minutes


def arm_metrics(db: Database, plan: RolloutPlan, until: float) -> dict[str, ArmMetrics]:
    """Treatment and control metrics of the plan's current stage, from `stage_started_at` to `until`.

    Only events the server had received by `until` count, so a stored decision can be recomputed later
    from the same rows (late arrivals with old timestamps do not change history).
    """
    rows = db.execute(
        "SELECT device_id, kind, time, bundle_id, payload FROM events WHERE time >= ? AND time <= ? "
        "AND received_at <= ? AND (bundle_id IN (?, ?) OR kind = 'install') ORDER BY event_id",
        (plan.stage_started_at, until, until, plan.target.bundle_id, plan.baseline.bundle_id),
    )
    sums: dict[str, dict[str, Any]] = {
        side: {
            "devices": set(),
            "spans": {},
            "crashes": 0,
            "inferences": 0,
            "inference_errors": 0,
            "installs": 0,
            "install_failures": 0,
            "histogram": [0.0] * HISTOGRAM_SIZE,
            "feedback_total": 0,
            "feedback_correct": 0,
        }
        for side in ("treatment", "control")
    }
    arms: dict[str, str] = {}
    for device_id, kind, time, bundle_id, payload_text in rows:
        side = arms.get(device_id)
        if side is None:
            side = arms[device_id] = arm(plan, device_id)
        if side not in sums:
            continue
        wanted = plan.target.bundle_id if side == "treatment" else plan.baseline.bundle_id
        payload = json.loads(payload_text)
        bucket = sums[side]
        if kind == "install":
            if side == "treatment":
                bucket["installs"] += 1
                bucket["install_failures"] += 0 if payload.get("outcome") == "activated" else 1
            continue
        if bundle_id != wanted:
            continue
        bucket["devices"].add(device_id)
        first, last = bucket["spans"].get(device_id, (time, time))
        bucket["spans"][device_id] = (min(first, time), max(last, time))
        if kind == "crash":
            bucket["crashes"] += 1
        elif kind == "inferences":
            bucket["inferences"] += int(payload.get("inferences", 0))
            bucket["inference_errors"] += int(payload.get("errors", 0))
            for index, count in enumerate(payload.get("latency_ms_buckets", [])[:HISTOGRAM_SIZE]):
                bucket["histogram"][index] += float(count)
        elif kind == "feedback":
            bucket["feedback_total"] += 1
            bucket["feedback_correct"] += 1 if payload.get("correct") else 0
    result = {}
    for side, bucket in sums.items():
        hours = sum(
            (last - first) / 3600.0 + REPORT_INTERVAL_HOURS for first, last in bucket["spans"].values()
        )
        result[side] = ArmMetrics(
            devices=len(bucket["devices"]),
            device_hours=hours,
            crashes=bucket["crashes"],
            inferences=bucket["inferences"],
            inference_errors=bucket["inference_errors"],
            installs=bucket["installs"],
            install_failures=bucket["install_failures"],
            latency_histogram=tuple(bucket["histogram"]),
            feedback_total=bucket["feedback_total"],
            feedback_correct=bucket["feedback_correct"],
        )
    return result
