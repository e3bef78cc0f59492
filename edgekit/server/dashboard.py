"""The rollout dashboard's data: the JSON that the page (static/dashboard.html, .js, .css) draws.

The page is static and holds no data; its script fetches this JSON with the dashboard token and inserts
every value as text (DOM APIs, never HTML), so a device-controlled string such as a bundle id is shown,
never run. Each rollout shows its stage ladder, treatment vs control charts over time for every gate
metric (from the stored decision records, so the picture is exactly what the gates saw), the decision log
with statistics, thresholds and anomalies, the label-free evidence of the current stage (predicted-class
bars per arm, drift per input channel against the gate's thresholds, shadow agreement per arm), the bytes
delta updates saved, and the fleet's devices by running version.
"""

from __future__ import annotations

from typing import Any

from edgekit.server.rollouts import RolloutService
from edgekit.server.storage import Database

__all__ = ["dashboard_data", "label_free_status"]

DEVICE_WINDOW_S = 24 * 3600  # devices that reported in the last day count as "running"


# GateConfig fields of the label-free gates shown next to their evidence (edgekit.rollout.label_free).
_THRESHOLDS = {
    "psi_pass": "psi_pass",
    "psi_rollback": "psi_rollback",
    "class_shift": "max_class_shift",
    "confidence_drop": "max_confidence_drop",
    "shadow_disagreement": "max_shadow_disagreement_excess",
    "shadow_failure_share": "max_shadow_failure_share",
}


def label_free_status(
    db: Database, service: RolloutService, plan: Any, now: float, *, reference: bool = True
) -> dict[str, Any]:
    """The label-free side of a rollout's status: health per arm (`edgekit.server.model_health`: class and
    confidence shares, PSI per input channel), shadow agreement per arm, the thresholds the gates apply,
    and the bytes delta updates saved on its two releases. A part that cannot be read is None: the status
    and the dashboard stay available without it (the gates read the same rows on their own)."""
    found: dict[str, Any] = {"health": None, "shadow": None, "downloads": None}
    try:
        from edgekit.server.model_health import health_view

        found["health"] = health_view(db, plan, now, service.repo)
        if not reference:
            found["health"].pop("reference", None)  # the page shows shares and PSI, not the edges
    except Exception:  # each part on its own: one unreadable part leaves the others
        pass
    try:
        from edgekit.server.label_free_window import shadow_view

        found["shadow"] = shadow_view(db, plan, now)
    except Exception:
        pass
    try:
        from edgekit.server.delta_savings import bundle_lengths, delta_savings

        found["downloads"] = delta_savings(
            db, (plan.target.bundle_id, plan.baseline.bundle_id), bundle_lengths(service.repo)
        )
    except Exception:
        pass
    found["thresholds"] = {key: getattr(service.gates, name, None) for key, name in _THRESHOLDS.items()}
    return found


def dashboard_data(db: Database, service: RolloutService, *, now: float | None = None) -> dict[str, Any]:
    """Rollouts with their decision series, and devices by running version."""
    now = service.clock() if now is None else now
    versions: dict[str, str] = {}
    rollouts = []
    for plan in service.plans():
        versions[plan.target.bundle_id] = f"{plan.model} {plan.target.version}"
        versions[plan.baseline.bundle_id] = f"{plan.model} {plan.baseline.version}"
        decisions = service.decisions(plan.rollout_id, 500)
        series: dict[str, list[dict[str, Any]]] = {}
        for decision in decisions:
            for record in decision["records"]:
                if record.get("treatment_value") is None and record.get("control_value") is None:
                    continue
                series.setdefault(record["metric"], []).append(
                    {
                        "time": decision["time"],
                        "treatment": record.get("treatment_value"),
                        "control": record.get("control_value"),
                        "statistic": record.get("statistic"),
                        "threshold": record.get("threshold"),
                        "outcome": record.get("outcome"),
                    }
                )
        rollouts.append(
            {
                "plan": plan.to_dict(),
                "stage_percent": plan.stage_percent,
                "series": series,
                "decisions": decisions[-30:],
                **label_free_status(db, service, plan, now, reference=False),
            }
        )
    rows = db.execute(
        "SELECT bundle_id, COUNT(DISTINCT device_id) FROM events WHERE time >= ? AND bundle_id IS NOT NULL "
        "AND kind IN ('inferences', 'install') GROUP BY bundle_id",
        (now - DEVICE_WINDOW_S,),
    )
    devices = [{"bundle_id": b, "label": versions.get(b, b[:12]), "devices": int(n)} for b, n in rows]
    devices.sort(key=lambda d: -d["devices"])
    return {"generated_at": now, "rollouts": rollouts, "devices_by_version": devices}
