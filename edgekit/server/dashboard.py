"""The rollout dashboard's data: the JSON that the page (static/dashboard.html, .js, .css) draws.

The page is static and holds no data; its script fetches this JSON with the dashboard token and inserts
every value as text (DOM APIs, never HTML), so a device-controlled string such as a bundle id is shown,
never run. Each rollout shows its stage ladder, treatment vs control charts over time for every gate
metric (from the stored decision records, so the picture is exactly what the gates saw), the decision log
with statistics, thresholds and anomalies, and the fleet's devices by running version.
"""

from __future__ import annotations

from typing import Any

from edgekit.server.rollouts import RolloutService
from edgekit.server.storage import Database

__all__ = ["dashboard_data"]

DEVICE_WINDOW_S = 24 * 3600  # devices that reported in the last day count as "running"


def _health(db: Database, service: RolloutService, plan: Any, now: float) -> dict[str, Any] | None:
    """Label-free health per arm (`edgekit.server.model_health`); None when it cannot be read."""
    from edgekit.server.model_health import health_view

    try:
        view = health_view(db, plan, now, service.repo)
    except Exception:  # the dashboard stays available without it
        return None
    view.pop("reference", None)  # the page shows shares and PSI, not the reference's edges
    return view


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
                "health": _health(db, service, plan, now),
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
