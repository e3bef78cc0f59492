"""The rollout dashboard: one self-contained page (no external scripts) and the JSON it draws.

Each rollout shows its stage ladder, treatment vs control charts over time for every gate metric (from
the stored decision records, so the picture is exactly what the gates saw), the decision log with
statistics and thresholds, and the fleet's devices by running version.
"""

from __future__ import annotations

from typing import Any

from edgekit.server.rollouts import RolloutService
from edgekit.server.storage import Database

__all__ = ["PAGE", "dashboard_data"]

DEVICE_WINDOW_S = 24 * 3600  # devices that reported in the last day count as "running"


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


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>edgekit rollouts</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body{font:14px/1.4 system-ui,sans-serif;margin:0;background:#f5f6f8;color:#1d2330}
header{background:#1d2330;color:#fff;padding:12px 20px}h1{font-size:18px;margin:0}
main{padding:16px 20px;display:grid;gap:16px}.card{background:#fff;border-radius:8px;padding:14px 16px;
box-shadow:0 1px 3px #0002}.badge{display:inline-block;padding:2px 8px;border-radius:10px;color:#fff;
font-size:12px;margin-left:8px}.running{background:#2b6cb0}.complete{background:#2f855a}
.rolled_back,.halted{background:#c53030}.paused{background:#718096}.ladder{display:flex;gap:6px;margin:10px 0}
.step{flex:1;text-align:center;padding:6px;border-radius:4px;background:#e2e8f0}.step.done{background:#9ae6b4}
.step.now{background:#90cdf4;font-weight:600}.charts{display:grid;grid-template-columns:repeat(auto-fill,
minmax(300px,1fr));gap:12px}table{border-collapse:collapse;width:100%;font-size:12px}td,th{border-bottom:
1px solid #e2e8f0;padding:3px 6px;text-align:left}.promote,.pass{color:#2f855a}.rollback{color:#c53030}
.hold{color:#b7791f}.chart svg{display:block;margin-top:4px}.legend span{margin-right:12px}.t{color:#dd6b20}.c{color:#3182ce}
</style></head><body><header><h1>edgekit rollouts</h1><div id="updated"></div></header>
<main id="main"><div class="card">loading...</div></main>
<script>
const fmt = v => v === null || v === undefined ? "-" : (Math.abs(v) >= 100 ? v.toFixed(0) : v.toPrecision(3));
function chart(name, points) {
  const w = 300, h = 130, pad = 28;
  const xs = points.map(p => p.time), vals = points.flatMap(p => [p.treatment, p.control]).filter(v => v !== null);
  if (!vals.length) return "";
  const x0 = Math.min(...xs), x1 = Math.max(...xs), y1 = Math.max(...vals) || 1;
  const X = t => x1 === x0 ? w / 2 : pad + (w - 2 * pad) * ((t - x0) / (x1 - x0));
  const Y = v => h - pad - (h - 2 * pad) * (v / y1);
  const series = (key, color) => {
    const pts = points.filter(p => p[key] !== null);
    return `<polyline fill="none" stroke="${color}" stroke-width="2" points="${pts.map(p => X(p.time) + "," + Y(p[key])).join(" ")}"/>` +
      pts.map(p => `<circle cx="${X(p.time)}" cy="${Y(p[key])}" r="3.5" fill="${color}"><title>${key} ${fmt(p[key])}</title></circle>`).join("");
  };
  const last = points[points.length - 1];
  return `<div class="chart"><b>${name}</b> <small><span class="t">${fmt(last.treatment)}</span> vs
    <span class="c">${fmt(last.control)}</span></small><svg width="${w}" height="${h}" role="img" aria-label="${name}">
    <line x1="${pad}" y1="${h - pad}" x2="${w - pad}" y2="${h - pad}" stroke="#a0aec0"/>
    <line x1="${pad}" y1="${pad}" x2="${pad}" y2="${h - pad}" stroke="#a0aec0"/>
    <text x="2" y="${pad + 4}" font-size="10">${fmt(y1)}</text><text x="2" y="${h - pad + 4}" font-size="10">0</text>
    ${series("control", "#3182ce")}${series("treatment", "#dd6b20")}</svg></div>`;
}
function render(data) {
  document.getElementById("updated").textContent = "updated " + new Date(data.generated_at * 1000).toISOString();
  const cards = data.rollouts.map(r => {
    const p = r.plan, stages = p.stages.map((s, i) =>
      `<div class="step ${i < p.stage_index || p.state === "complete" ? "done" : i === p.stage_index ? "now" : ""}">${s}%</div>`).join("");
    const charts = Object.entries(r.series).map(([m, pts]) => chart(m, pts)).join("");
    const log = r.decisions.slice().reverse().map(d => {
      const worst = (d.records || []).filter(x => x.outcome !== "pass")[0] || (d.records || [])[0] || {};
      return `<tr><td>${new Date(d.time * 1000).toISOString()}</td><td>${p.stages[d.stage_index]}%</td>
        <td class="${d.outcome}">${d.outcome}</td><td>${worst.metric || ""}</td><td>${fmt(worst.treatment_value)}</td>
        <td>${fmt(worst.control_value)}</td><td>${fmt(worst.statistic)}</td><td>${fmt(worst.threshold)}</td>
        <td>${worst.detail || d.alert || ""}</td></tr>`;
    }).join("");
    return `<section class="card rollout"><h2>${p.model} ${p.target.version} over ${p.baseline.version}
      <span class="badge ${p.state}">${p.state}</span></h2><div>channel ${p.channel}, rollout ${p.rollout_id}
      ${p.reason ? " - " + p.reason : ""}</div><div class="ladder">${stages}</div>
      <div class="legend"><span class="t">treatment</span><span class="c">control</span></div>
      <div class="charts">${charts || "<i>no gate evaluations yet</i>"}</div>
      <h3>decision log</h3><table><tr><th>time</th><th>stage</th><th>outcome</th><th>metric</th>
      <th>treatment</th><th>control</th><th>statistic</th><th>threshold</th><th>why</th></tr>${log}</table></section>`;
  }).join("");
  const total = data.devices_by_version.reduce((a, d) => a + d.devices, 0) || 1;
  const fleet = data.devices_by_version.map(d => `<tr><td>${d.label}</td><td>${d.devices}</td><td>
    <div style="background:#90cdf4;height:10px;width:${(300 * d.devices / total).toFixed(0)}px"></div></td></tr>`).join("");
  document.getElementById("main").innerHTML = (cards || '<div class="card">no rollouts yet</div>') +
    `<section class="card"><h2>devices by running version (last 24 h)</h2><table id="fleet">${fleet}</table></section>`;
}
async function refresh() {
  try { render(await (await fetch("/v1/dashboard")).json()); }
  catch (e) { document.getElementById("updated").textContent = "cannot reach the server: " + e; }
}
refresh(); setInterval(refresh, 10000);
</script></body></html>
"""
