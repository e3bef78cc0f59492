// The rollout dashboard. Every value from the server is inserted as text (textContent, attributes set one
// by one, CSSOM for sizes): nothing here parses HTML, so a device-controlled string is shown, never run.
//
// The read-only token comes from the address's fragment (/dashboard#token=...): browsers never send a
// fragment to a server, so it stays out of access logs, proxies and Referer headers. It is kept in this
// tab's sessionStorage, removed from the address bar, and sent as `Authorization: Bearer` to /v1/dashboard.
"use strict";

const TOKEN_KEY = "edgekit.dashboard.token";
const SVG = "http://www.w3.org/2000/svg";
const STATES = new Set(["running", "paused", "halted", "rolled_back", "complete"]);
const OUTCOMES = new Set(["promote", "pass", "rollback", "hold"]);
let timer = null;

function takeToken() {
  const match = /(?:^#|&)token=([^&]*)/.exec(location.hash);
  if (match) {
    let token = match[1];
    try { token = decodeURIComponent(token); } catch (e) { /* not %-encoded: use it as it is */ }
    try { sessionStorage.setItem(TOKEN_KEY, token); } catch (e) { /* storage off: this page view only */ }
    history.replaceState(null, "", location.pathname + location.search);  // out of the address bar
    return token;
  }
  try { return sessionStorage.getItem(TOKEN_KEY); } catch (e) { return null; }
}

// el("td", {class: "x"}, "text", child, ...): strings become text nodes, never markup.
function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  return fill(node, attrs, children);
}
function svg(tag, attrs, ...children) {
  return fill(document.createElementNS(SVG, tag), attrs, children);
}
function fill(node, attrs, children) {
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value !== undefined && value !== null) node.setAttribute(name, String(value));
  }
  for (const child of children) {
    if (child === undefined || child === null || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

const num = v => typeof v === "number" && Number.isFinite(v);
function fmt(v) {
  if (v === null || v === undefined) return "-";
  if (typeof v !== "number") return String(v);
  if (!Number.isFinite(v)) return String(v);
  return Math.abs(v) >= 100 ? v.toFixed(0) : v.toPrecision(3);
}
function when(seconds) {
  const date = new Date(Number(seconds) * 1000);
  return Number.isNaN(date.getTime()) ? String(seconds) : date.toISOString();
}
// `anomalies` (a count, a list or an object of counts) and `alert`: shown as text when present.
function anomalies(value) {
  if (value === undefined || value === null || value === 0 || value === "") return "";
  if (typeof value === "number") return `${value} anomal${value === 1 ? "y" : "ies"}`;
  if (typeof value === "string") return value;
  try { return JSON.stringify(value); } catch (e) { return String(value); }
}

function chart(name, points) {
  const w = 300, h = 130, pad = 28;
  const usable = points.filter(p => num(p.time));
  const xs = usable.map(p => p.time);
  const vals = usable.flatMap(p => [p.treatment, p.control]).filter(num);
  if (!vals.length) return null;
  const x0 = Math.min(...xs), x1 = Math.max(...xs), y1 = Math.max(...vals) || 1;
  const X = t => x1 === x0 ? w / 2 : pad + (w - 2 * pad) * ((t - x0) / (x1 - x0));
  const Y = v => h - pad - (h - 2 * pad) * (v / y1);
  const picture = svg("svg", {width: w, height: h, role: "img", "aria-label": name},
    svg("line", {x1: pad, y1: h - pad, x2: w - pad, y2: h - pad, stroke: "#a0aec0"}),
    svg("line", {x1: pad, y1: pad, x2: pad, y2: h - pad, stroke: "#a0aec0"}),
    svg("text", {x: 2, y: pad + 4, "font-size": 10}, fmt(y1)),
    svg("text", {x: 2, y: h - pad + 4, "font-size": 10}, "0"));
  for (const [key, color] of [["control", "#3182ce"], ["treatment", "#dd6b20"]]) {
    const pts = usable.filter(p => num(p[key]));
    picture.append(svg("polyline", {fill: "none", stroke: color, "stroke-width": 2,
      points: pts.map(p => X(p.time) + "," + Y(p[key])).join(" ")}));
    for (const p of pts) {
      picture.append(svg("circle", {cx: X(p.time), cy: Y(p[key]), r: 3.5, fill: color},
        svg("title", {}, `${key} ${fmt(p[key])}`)));
    }
  }
  const last = usable[usable.length - 1] || {};
  return el("div", {class: "chart"}, el("b", {}, name), " ",
    el("small", {}, el("span", {class: "t"}, fmt(last.treatment)), " vs ", el("span", {class: "c"}, fmt(last.control))),
    picture);
}

function rolloutCard(r) {
  const p = r.plan || {}, stages = Array.isArray(p.stages) ? p.stages : [];
  const state = STATES.has(p.state) ? p.state : "unknown";
  const ladder = el("div", {class: "ladder"});
  stages.forEach((s, i) => {
    const done = i < p.stage_index || p.state === "complete", now = i === p.stage_index;
    ladder.append(el("div", {class: done ? "step done" : now ? "step now" : "step"}, `${s}%`));
  });
  const charts = el("div", {class: "charts"});
  for (const [metric, pts] of Object.entries(r.series || {})) {
    const drawn = Array.isArray(pts) ? chart(metric, pts) : null;
    if (drawn) charts.append(drawn);
  }
  if (!charts.childNodes.length) charts.append(el("i", {}, "no gate evaluations yet"));
  const log = el("table", {},
    el("tr", {}, ...["time", "stage", "outcome", "metric", "treatment", "control", "statistic", "threshold",
      "why", "anomalies"].map(t => el("th", {}, t))));
  for (const d of (r.decisions || []).slice().reverse()) {
    const records = Array.isArray(d.records) ? d.records : [];
    // the record that decided (a rollback's rollback record), else the first one holding
    const worst = records.find(x => x.outcome === d.outcome && x.outcome !== "pass")
      || records.filter(x => x.outcome !== "pass")[0] || records[0] || {};
    const noted = [anomalies(d.anomalies), ...records.map(x => anomalies(x.anomalies))].filter(Boolean);
    log.append(el("tr", {},
      el("td", {}, when(d.time)), el("td", {}, `${stages[d.stage_index] ?? "?"}%`),
      el("td", {class: OUTCOMES.has(d.outcome) ? d.outcome : null}, d.outcome),
      el("td", {}, worst.metric || ""), el("td", {}, fmt(worst.treatment_value)),
      el("td", {}, fmt(worst.control_value)), el("td", {}, fmt(worst.statistic)),
      el("td", {}, fmt(worst.threshold)), el("td", {}, worst.detail || d.alert || ""),
      el("td", {class: noted.length ? "anomaly" : null}, noted.join("; "))));
  }
  const target = p.target || {}, baseline = p.baseline || {};
  const health = healthTable(r.health);
  return el("section", {class: "card rollout"},
    el("h2", {}, `${p.model} ${target.version} over ${baseline.version}`, el("span", {class: `badge ${state}`}, p.state)),
    el("div", {}, `channel ${p.channel}, rollout ${p.rollout_id}`, p.reason ? ` - ${p.reason}` : ""),
    ladder,
    el("div", {class: "legend"}, el("span", {class: "t"}, "treatment"), el("span", {class: "c"}, "control")),
    charts, el("h3", {}, "decision log"), log,
    el("h3", {}, "label-free health (treatment vs control, this stage)"),
    el("div", {class: "charts"}, ...classCharts(r.health), ...driftCharts(r.health, r.thresholds)),
    shadowTable(r.shadow, r.thresholds), health,
    el("h3", {}, "bytes saved by delta updates"), downloadsTable(r.downloads, target, baseline));
}

// Bars per class, treatment and control side by side: the predicted-class histogram of each arm's release.
function bars(name, groups, opts) {
  // groups: [{label, t, c}] with values in [0, max]; opts: {max, lines: [{value, label}], unit}
  const w = Math.max(300, 24 + groups.length * 26), h = 150, pad = 26;
  const vals = groups.flatMap(g => [g.t, g.c]).filter(num);
  if (!vals.length) return null;
  const lines = (opts.lines || []).filter(l => num(l.value));
  const top = Math.max(opts.max || 0, ...vals, ...lines.map(l => l.value)) || 1;
  const Y = v => h - pad - (h - 2 * pad) * (Math.max(0, v) / top);
  const step = (w - 2 * pad) / groups.length, bw = Math.max(3, step / 2 - 2);
  const picture = svg("svg", {width: w, height: h, role: "img", "aria-label": name},
    svg("line", {x1: pad, y1: h - pad, x2: w - pad, y2: h - pad, stroke: "#a0aec0"}),
    svg("text", {x: 2, y: pad + 4, "font-size": 10}, fmt(top)), svg("text", {x: 2, y: h - pad + 4, "font-size": 10}, "0"));
  groups.forEach((g, i) => {
    const x = pad + i * step + 1;
    for (const [key, dx, color] of [["t", 0, "#dd6b20"], ["c", bw + 1, "#3182ce"]]) {
      if (!num(g[key])) continue;
      picture.append(svg("rect", {x: x + dx, y: Y(g[key]), width: bw, height: Math.max(0, h - pad - Y(g[key])), fill: color},
        svg("title", {}, `${key === "t" ? "treatment" : "control"} ${g.label}: ${fmt(g[key])}${opts.unit || ""}`)));
    }
    picture.append(svg("text", {x: x + bw / 2, y: h - pad + 12, "font-size": 10}, g.label));
  });
  for (const l of lines) {
    picture.append(svg("line", {x1: pad, y1: Y(l.value), x2: w - pad, y2: Y(l.value), stroke: "#c53030", "stroke-dasharray": "4 3"}));
    picture.append(svg("text", {x: w - pad - 70, y: Y(l.value) - 2, "font-size": 9, fill: "#c53030"}, `${l.label} ${fmt(l.value)}`));
  }
  return el("div", {class: "chart"}, el("b", {}, name), picture);
}

function arms(h) {
  return h && typeof h.treatment === "object" && h.treatment && typeof h.control === "object" && h.control
    ? [h.treatment, h.control] : null;
}

function classCharts(h) {
  const both = arms(h);
  if (!both) return [];
  const [t, c] = both, drawn = [];
  for (const name of Object.keys(t.outputs || {})) {
    const to = t.outputs[name] || {}, co = (c.outputs || {})[name] || {};
    const detection = to.role === "detection";
    const key = detection ? "detections_shares" : "class_shares";
    const ts = Array.isArray(to[key]) ? to[key] : [], cs = Array.isArray(co[key]) ? co[key] : [];
    const n = Math.min(64, Math.max(ts.length, cs.length));
    const groups = Array.from({length: n}, (_, i) => ({label: String(i), t: ts[i], c: cs[i]}));
    const chart = bars(`${name}: ${detection ? "detections per input" : "predicted class"} shares`, groups, {max: 0});
    if (chart) drawn.push(chart);
  }
  return drawn;
}

// PSI per input channel against the release's signed reference profile, with the gate's thresholds.
function driftCharts(h, thresholds) {
  const both = arms(h);
  if (!both) return [];
  const [t, c] = both, th = thresholds || {}, drawn = [];
  for (const name of Object.keys(t.inputs || {})) {
    const tp = Array.isArray((t.inputs[name] || {}).psi) ? t.inputs[name].psi : [];
    const cp = Array.isArray(((c.inputs || {})[name] || {}).psi) ? c.inputs[name].psi : [];
    const n = Math.min(64, Math.max(tp.length, cp.length));
    const groups = Array.from({length: n}, (_, i) => ({label: `ch${i}`, t: tp[i], c: cp[i]}));
    const chart = bars(`input ${name}: drift (PSI) per channel`, groups,
      {lines: [{value: th.psi_pass, label: "pass below"}, {value: th.psi_rollback, label: "roll back above"}]});
    if (chart) drawn.push(chart);
  }
  return drawn;
}

function pct(v) { return num(v) ? `${(100 * v).toFixed(1)}%` : "-"; }

function shadowTable(s, thresholds) {
  const both = arms(s);
  if (!both || !both.some(a => num(a.devices) && a.devices > 0)) {
    return el("div", {}, el("i", {}, "shadow: no shadow runs in this stage (shadow stages only)"));
  }
  const th = thresholds || {};
  const row = (label, f) => el("tr", {}, el("td", {}, label), el("td", {}, f(both[0])), el("td", {}, f(both[1])));
  return el("table", {class: "health"},
    el("tr", {}, ...["shadow run (candidate next to the served model)", "treatment", "control (self-shadow)"].map(x => el("th", {}, x))),
    row("devices", a => fmt(a.devices)),
    row("agreement (primary output)", a => `${pct(a.agreement)} of ${fmt(a.compared)}`),
    row("failures + timeouts", a => `${fmt(a.failures)} + ${fmt(a.timeouts)}`),
    el("tr", {}, el("td", {}, "gate"), el("td", {colspan: 2},
      num(th.shadow_disagreement) ? `rolls back when treatment disagrees more than control by over ${pct(th.shadow_disagreement)}` : "")));
}

function downloadsTable(d, target, baseline) {
  const bundles = d && typeof d.bundles === "object" && d.bundles ? d.bundles : {};
  const names = {[target.bundle_id]: `target ${target.version}`, [baseline.bundle_id]: `baseline ${baseline.version}`};
  const table = el("table", {class: "health"}, el("tr", {}, ...["bundle", "devices", "by delta", "in full",
    "bytes moved", "full bytes", "saved", "fallbacks"].map(x => el("th", {}, x))));
  let rows = 0;
  for (const [id, b] of Object.entries(bundles)) {
    if (!b || !num(b.devices) || b.devices === 0) continue;
    rows += 1;
    const fallbacks = b.fallbacks && typeof b.fallbacks === "object"
      ? Object.entries(b.fallbacks).map(([k, v]) => `${k}: ${fmt(v)}`).join(", ") : "";
    table.append(el("tr", {}, el("td", {}, names[id] || String(id).slice(0, 12)), el("td", {}, fmt(b.devices)),
      el("td", {}, fmt(b.delta)), el("td", {}, fmt(b.full)), el("td", {}, fmt(b.bytes)), el("td", {}, fmt(b.full_bytes)),
      el("td", {}, `${fmt(b.saved_bytes)} (${pct(b.saved_share)})`), el("td", {}, fallbacks)));
  }
  return rows ? table : el("i", {}, "no downloads reported yet");
}

// Label-free health per arm: input drift (PSI per channel against the release's reference profile) and
// predicted-class / confidence shares. Every value goes in as text.
function shares(values) {
  return Array.isArray(values) ? values.map(v => num(v) ? v.toFixed(2) : "?").join(" ") : "";
}

function healthTable(h) {
  if (!h || !h.treatment || !h.control) return el("i", {}, "no health sketches yet");
  const t = h.treatment, c = h.control;
  const table = el("table", {class: "health"},
    el("tr", {}, ...["signal", "treatment", "control"].map(x => el("th", {}, x))),
    el("tr", {}, el("td", {}, "devices / inferences"), el("td", {}, `${t.devices} / ${fmt(t.inferences)}`),
      el("td", {}, `${c.devices} / ${fmt(c.inferences)}`)));
  for (const name of Object.keys(t.inputs || {})) {
    const ti = t.inputs[name] || {}, ci = (c.inputs || {})[name] || {};
    table.append(el("tr", {}, el("td", {}, `input ${name}: PSI per channel`),
      el("td", {}, shares(ti.psi)), el("td", {}, shares(ci.psi))));
  }
  for (const name of Object.keys(t.outputs || {})) {
    const to = t.outputs[name] || {}, co = (c.outputs || {})[name] || {};
    const classes = to.role === "detection" ? "detections_shares" : "class_shares";
    const scores = to.role === "detection" ? "score_shares" : "confidence_shares";
    table.append(el("tr", {}, el("td", {}, `${name}: ${classes.replace("_", " ")}`),
      el("td", {}, shares(to[classes])), el("td", {}, shares(co[classes]))));
    table.append(el("tr", {}, el("td", {}, `${name}: ${scores.replace("_", " ")}`),
      el("td", {}, shares(to[scores])), el("td", {}, shares(co[scores]))));
  }
  return table;
}

function fleetCard(devices) {
  const rows = Array.isArray(devices) ? devices : [];
  const total = rows.reduce((a, d) => a + (num(d.devices) ? d.devices : 0), 0) || 1;
  const table = el("table", {id: "fleet"});
  for (const d of rows) {
    const bar = el("div", {class: "bar"});
    bar.style.width = `${Math.max(0, Math.round(300 * (num(d.devices) ? d.devices : 0) / total))}px`;  // CSSOM
    table.append(el("tr", {}, el("td", {}, d.label), el("td", {}, Number.isInteger(d.devices) ? String(d.devices) : fmt(d.devices)), el("td", {}, bar)));
  }
  return el("section", {class: "card"}, el("h2", {}, "devices by running version (last 24 h)"), table);
}

function render(data) {
  document.getElementById("updated").textContent = "updated " + when(data.generated_at);
  const cards = (data.rollouts || []).map(rolloutCard);
  const main = document.getElementById("main");
  main.replaceChildren(...(cards.length ? cards : [el("div", {class: "card"}, "no rollouts yet")]),
    fleetCard(data.devices_by_version));
}

function askForToken(message) {
  const input = el("input", {type: "password", autocomplete: "off", placeholder: "dashboard token"});
  const button = el("button", {type: "button"}, "show");
  const use = () => {
    try { sessionStorage.setItem(TOKEN_KEY, input.value.trim()); } catch (e) { /* storage off */ }
    refresh(input.value.trim());
  };
  button.addEventListener("click", use);
  input.addEventListener("keydown", e => { if (e.key === "Enter") use(); });
  document.getElementById("main").replaceChildren(el("div", {class: "card login"},
    el("p", {}, message),
    el("p", {}, "Open the address `edgekit serve` printed (…/dashboard#token=…), or paste the read-only " +
      "dashboard token (DATA/keys/dashboard.token):"), input, button));
}

async function refresh(token) {
  const headers = token ? {Authorization: `Bearer ${token}`} : {};
  try {
    const answer = await fetch("/v1/dashboard", {headers, cache: "no-store", credentials: "omit"});
    if (answer.status === 401) {
      if (timer !== null) { clearInterval(timer); timer = null; }
      askForToken(token ? "The server refused this token." : "This dashboard needs its read-only token.");
      return;
    }
    if (!answer.ok) throw new Error(`the server answered ${answer.status}`);
    render(await answer.json());
    if (timer === null) timer = setInterval(() => refresh(token), 10000);
  } catch (e) {
    document.getElementById("updated").textContent = "cannot reach the server: " + e;
  }
}

refresh(takeToken());
