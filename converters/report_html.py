"""Render an ``edgekit.parity/v1`` report dict as a self-contained HTML page.

The page has no external CSS, JS or network references; plots are embedded as
base64 PNG images drawn with matplotlib's Agg backend.  Every string taken from
the report is HTML-escaped.  Optional sections (histograms, per-layer SQNR,
repair, latency) are omitted when absent, and missing numbers render as "—".
"""

from __future__ import annotations

import base64
import html
import io
import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["render_html", "write_html"]

_CSS = """
body{font-family:system-ui,sans-serif;margin:2em;color:#222;max-width:1100px}
h1{display:flex;align-items:center;gap:.6em}
.badge{padding:.15em .6em;border-radius:.3em;color:#fff;font-size:.8em}
.pass{background:#2e7d32}.fail{background:#c62828}
table{border-collapse:collapse;margin:.6em 0}
th,td{border:1px solid #ccc;padding:.3em .7em;text-align:left}
th{background:#f3f3f3} td.bad{background:#ffcdd2;font-weight:bold}
.warn{background:#fff3cd;border:1px solid #e0c060;padding:.5em;margin:.5em 0}
img{max-width:100%;display:block;margin:.5em 0}
code{background:#f5f5f5;padding:0 .2em}
"""


def _e(value: Any) -> str:
    """Escape any value for HTML (None becomes an em dash)."""
    return "—" if value is None else html.escape(str(value), quote=True)


def _num(value: Any) -> float | None:
    """Return value as a finite-or-inf float, or None when not numeric."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    f = float(value)
    return None if math.isnan(f) else f


def _fmt(value: Any, digits: int = 2, suffix: str = "") -> str:
    """Format a number with fixed digits, escaping anything non-numeric."""
    f = _num(value)
    if f is None:
        return _e(value)
    return f"{f:.{digits}f}{suffix}"


def _pct(value: Any) -> str:
    """Format a fraction in [0, 1] as a percentage."""
    f = _num(value)
    return _e(value) if f is None else f"{100.0 * f:.2f}%"


def _map(value: Any) -> Mapping[str, Any]:
    """Return value if it is a mapping, else an empty dict."""
    return value if isinstance(value, Mapping) else {}


def _seq(value: Any) -> Sequence[Any]:
    """Return value if it is a list/tuple, else an empty list."""
    return value if isinstance(value, (list, tuple)) else []


def _td(text: str, bad: bool = False) -> str:
    """A table cell with pre-escaped content, highlighted when ``bad``."""
    return f'<td class="bad">{text}</td>' if bad else f"<td>{text}</td>"


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Build a table; headers are escaped, rows must be pre-rendered ``<td>``s."""
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _plot(draw: Callable[[Any], None], size: tuple[float, float], alt: str) -> str:
    """Draw on a fresh Agg figure and return an ``<img>`` tag with inline PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=size)
    try:
        draw(ax)
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=90)
    finally:
        plt.close(fig)
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    return f'<img alt="{_e(alt)}" src="data:image/png;base64,{data}">'


def _mpl(text: str) -> str:
    """Escape ``$`` so matplotlib never interprets a label as mathtext."""
    return text.replace("$", r"\$")


def _below(value: Any, limit: Any) -> bool:
    """True when both are numbers and value < limit."""
    v, lim = _num(value), _num(limit)
    return v is not None and lim is not None and v < lim


def _header(report: Mapping[str, Any]) -> str:
    """Title, badge, what was compared, gate and failures."""
    passed = report.get("passed") is True
    badge = '<span class="badge pass">PASS</span>' if passed else '<span class="badge fail">FAIL</span>'
    parts = [
        f"<h1>edgekit parity report {badge}</h1>",
        f"<p>Schema: <code>{_e(report.get('schema'))}</code></p>",
        "<h2>What was compared</h2>",
    ]
    rows = []
    for role in ("reference", "candidate"):
        m = _map(report.get(role))
        sha = m.get("sha256")
        sha_txt = _e(str(sha)[:12]) if sha else "—"
        rows.append(
            [_td(_e(role)), _td(_e(m.get("path"))), _td(f"<code>{sha_txt}</code>"), _td(_e(m.get("engine")))]
        )
    parts.append(_table(["Role", "Path", "sha256", "Engine"], rows))
    parts.append(f"<p>Samples: {_e(report.get('samples'))}</p>")
    gate = _map(report.get("gate"))
    parts.append("<h2>Gate</h2>")
    gate_rows = [
        [_td("min agreement"), _td(_pct(gate.get("min_agreement")))],
        [_td("max accuracy drop"), _td(_fmt(gate.get("max_drop_pp"), 2, " pp"))],
        [_td("min SQNR"), _td(_fmt(gate.get("min_sqnr_db"), 2, " dB"))],
        [_td("min cosine"), _td(_fmt(gate.get("min_cosine"), 4))],
    ]
    parts.append(_table(["Threshold", "Value"], gate_rows))
    role_rows = [
        [_td(_e(kind)), _td(", ".join(f"{_e(k)} {_fmt(v, 2)}" for k, v in _map(limits).items()) or "—")]
        for kind, limits in _map(report.get("role_thresholds")).items()
    ]
    if role_rows:
        parts.append(
            "<h3>Role thresholds</h3>" + _table(["Role", "Thresholds (on top of the gate)"], role_rows)
        )
    failures = [f for f in _seq(report.get("failures")) if f is not None]
    if failures:
        items = "".join(f"<li>{_e(f)}</li>" for f in failures)
        parts.append(f"<h3>Failures</h3><ul>{items}</ul>")
    else:
        parts.append("<p>No failures.</p>")
    return "\n".join(parts)


def _outputs(report: Mapping[str, Any]) -> str:
    """Per-output metrics table and error histograms."""
    outputs = [_map(o) for o in _seq(report.get("outputs"))]
    if not outputs:
        return "<h2>Outputs</h2><p>No outputs.</p>"
    gate = _map(report.get("gate"))
    rows, plots = [], []
    for o in outputs:
        drop = _num(o.get("accuracy_drop_pp"))
        max_drop = _num(gate.get("max_drop_pp"))
        # A scores output judged with its detection output: its raw figures are shown, not gated.
        paired = o.get("judged_with")
        floor = {} if paired else gate
        role = (
            f"scores of {_e(paired)}: judged with its detection output"
            if paired
            else _e(o.get("role", "tensor"))
        )
        rows.append(
            [
                _td(_e(o.get("name"))),
                _td(role),
                _td(_pct(o.get("agreement")), _below(o.get("agreement"), gate.get("min_agreement"))),
                _td(_pct(o.get("accuracy_reference"))),
                _td(_pct(o.get("accuracy_candidate"))),
                _td(_fmt(drop, 2, " pp"), drop is not None and max_drop is not None and drop > max_drop),
                _td(_fmt(o.get("sqnr_db"), 2), _below(o.get("sqnr_db"), floor.get("min_sqnr_db"))),
                _td(_fmt(o.get("cosine"), 5), _below(o.get("cosine"), floor.get("min_cosine"))),
                _td(_fmt(o.get("max_abs_error_norm"), 4)),
            ]
        )
        hist = _map(o.get("error_histogram"))
        edges = [_num(x) for x in _seq(hist.get("bin_edges"))]
        counts = [_num(x) for x in _seq(hist.get("counts"))]
        if counts and len(edges) == len(counts) + 1 and None not in edges and None not in counts:
            e_, c_ = [float(x or 0) for x in edges], [float(x or 0) for x in counts]
            name = str(o.get("name"))

            def draw(ax: Any, e_: list[float] = e_, c_: list[float] = c_, name: str = name) -> None:
                widths = [b - a for a, b in itertools.pairwise(e_)]
                ax.bar(e_[:-1], c_, width=widths, align="edge", color="#1565c0", edgecolor="white")
                if any(c > 0 for c in c_):
                    ax.set_yscale("log")
                ax.set_xlabel("absolute error")
                ax.set_ylabel("count (log)")
                ax.set_title(_mpl(f"Error histogram: {name}"))

            plots.append(f"<h3>Error histogram: {_e(name)}</h3>" + _plot(draw, (6, 3), f"histogram {name}"))
    headers = [
        "Output",
        "Role",
        "Agreement",
        "Acc. ref",
        "Acc. cand",
        "Drop",
        "SQNR dB",
        "Cosine",
        "Max abs err (norm)",
    ]
    return "<h2>Outputs</h2>" + _table(headers, rows) + "\n".join(plots)


def _per_tensor(report: Mapping[str, Any]) -> str:
    """Per-layer SQNR horizontal bar chart, in the order given."""
    entries = [_map(e) for e in _seq(report.get("per_tensor_sqnr"))]
    entries = [e for e in entries if _num(e.get("sqnr_db")) is not None]
    if not entries:
        return ""
    gate_sqnr = _num(_map(report.get("gate")).get("min_sqnr_db"))
    labels = [_mpl(str(e.get("node") or e.get("tensor") or "?")) for e in entries]
    vals = [_num(e.get("sqnr_db")) or 0.0 for e in entries]
    finite = [v for v in vals if math.isfinite(v)]
    cap = (max(finite) if finite else 0.0) + 5.0
    vals = [v if math.isfinite(v) else (cap if v > 0 else 0.0) for v in vals]
    colors = ["#c62828" if gate_sqnr is not None and v < gate_sqnr else "#2e7d32" for v in vals]

    def draw(ax: Any) -> None:
        ys = list(range(len(vals)))
        ax.barh(ys, vals, color=colors)
        ax.set_yticks(ys)
        ax.set_yticklabels(labels, fontsize=7)
        ax.invert_yaxis()
        if gate_sqnr is not None:
            ax.axvline(gate_sqnr, color="black", linestyle="--", label=f"gate {gate_sqnr:g} dB")
            ax.legend(loc="best")
        ax.set_xlabel("SQNR (dB)")
        ax.set_title("Per-layer SQNR (graph order)")

    height = min(max(2.5, 0.25 * len(vals) + 1.0), 40.0)
    rows = [
        [
            _td(_e(e.get("node"))),
            _td(_e(e.get("tensor"))),
            _td(_e(e.get("op_type"))),
            _td(_fmt(e.get("sqnr_db"), 2), _below(e.get("sqnr_db"), gate_sqnr)),
        ]
        for e in entries
    ]
    return (
        "<h2>Per-layer SQNR</h2>"
        + _plot(draw, (7, height), "per-layer SQNR")
        + "<details><summary>Table</summary>"
        + _table(["Node", "Tensor", "Op", "SQNR dB"], rows)
        + "</details>"
    )


def _metric_row(label: str, m: Mapping[str, Any]) -> list[str]:
    """One before/after row of repair metrics."""
    p = m.get("passed")
    return [
        _td(_e(label)),
        _td("—" if p is None else ("PASS" if p else "FAIL"), p is False),
        _td(_pct(m.get("agreement"))),
        _td(_fmt(m.get("sqnr_db"), 2)),
        _td(_fmt(m.get("accuracy_drop_pp"), 2, " pp")),
    ]


def _repair(report: Mapping[str, Any]) -> str:
    """Repair section: excluded nodes, before/after, candidates and a chart."""
    rep = report.get("repair")
    if not isinstance(rep, Mapping):
        return ""
    parts = [
        "<h2>Repair</h2>",
        f"<p>Quantizable nodes: {_e(rep.get('quantizable_nodes'))}; kept int8: "
        f"{_e(rep.get('kept_int8'))}; evaluations: {_e(rep.get('evaluations'))}</p>",
    ]
    excluded = _seq(rep.get("excluded_nodes"))
    if excluded:
        parts.append(
            "<h3>Excluded nodes (kept in float)</h3>"
            + _table(["#", "Node"], [[_td(str(i)), _td(_e(n))] for i, n in enumerate(excluded, 1)])
        )
    else:
        parts.append("<p>No nodes excluded.</p>")
    before, after = rep.get("before"), rep.get("after")
    mrows = [
        _metric_row(lbl, m) for lbl, m in (("before", before), ("after", after)) if isinstance(m, Mapping)
    ]
    if mrows:
        parts.append("<h3>Before / after</h3>" + _table(["", "Gate", "Agreement", "SQNR dB", "Drop"], mrows))
    cands = [_map(c) for c in _seq(rep.get("candidates"))]
    if cands:
        crow = []
        for c in cands:
            p = c.get("passed")
            crow.append(
                [
                    _td(_e(c.get("excluded"))),
                    _td("—" if p is None else ("PASS" if p else "FAIL"), p is False),
                    _td(_fmt(c.get("sqnr_db"), 2)),
                    _td(_pct(c.get("agreement"))),
                ]
            )
        parts.append(
            "<h3>Candidates evaluated</h3>" + _table(["Excluded", "Gate", "SQNR dB", "Agreement"], crow)
        )
        pts = [(_num(c.get("excluded")), _num(c.get("sqnr_db")), c.get("passed")) for c in cands]
        pts2 = [(x, y, p) for x, y, p in pts if x is not None and y is not None and math.isfinite(y)]
        if pts2:
            gate_sqnr = _num(_map(report.get("gate")).get("min_sqnr_db"))

            def draw(ax: Any) -> None:
                ax.plot([x for x, _, _ in pts2], [y for _, y, _ in pts2], "-", color="#1565c0")
                for x, y, p in pts2:
                    ax.plot(x, y, "o", color="#2e7d32" if p else "#c62828")
                if gate_sqnr is not None:
                    ax.axhline(gate_sqnr, color="black", linestyle="--", label=f"gate {gate_sqnr:g} dB")
                    ax.legend(loc="lower right")
                ax.set_xlabel("number of excluded nodes")
                ax.set_ylabel("SQNR (dB)")
                ax.set_title("SQNR vs excluded nodes")

            parts.append(_plot(draw, (6, 3), "SQNR vs excluded nodes"))
    return "\n".join(parts)


def _latency(report: Mapping[str, Any]) -> str:
    """Latency table with ratio and slowdown warning."""
    lat = report.get("latency")
    if not isinstance(lat, Mapping):
        return ""
    ref, cand, ratio = _map(lat.get("reference_ms")), _map(lat.get("candidate_ms")), _map(lat.get("ratio"))
    sizes = [str(b) for b in _seq(lat.get("batch_sizes"))] or [str(k) for k in ref]
    rows = []
    for b in sizes:
        r = _num(ratio.get(b))
        rows.append(
            [
                _td(_e(b)),
                _td(_fmt(ref.get(b), 3)),
                _td(_fmt(cand.get(b), 3)),
                _td(_fmt(r, 2, "×"), r is not None and r < 1.0),
            ]
        )
    parts = [
        "<h2>Latency</h2>",
        _table(["Batch", "Reference ms", "Candidate ms", "Ratio (ref/cand)"], rows),
        "<p>Ratio &gt; 1 means the candidate is faster.</p>",
    ]
    if lat.get("slower") is True:
        note = " (allowed)" if lat.get("allowed_slower") is True else ""
        parts.append(
            f'<div class="warn">Warning: the int8 candidate is slower than the reference{note}.</div>'
        )
    return "\n".join(parts)


def _role_value(value: Any) -> str:
    f = _num(value)
    if f is None:
        return _e(value)
    return str(int(f)) if isinstance(value, int) else f"{f:.4f}"


def _roles(report: Mapping[str, Any]) -> str:
    """Per output: its role, decoding, role metrics and the thresholds it was judged by."""
    parts = []
    for o in (_map(x) for x in _seq(report.get("outputs"))):
        metrics, thresholds = _map(o.get("role_metrics")), _map(o.get("thresholds"))
        if not metrics:
            continue
        rows = []
        for key, value in metrics.items():
            if isinstance(value, (Mapping, list, tuple)):
                continue
            limit = thresholds.get(f"min_{key}", thresholds.get(f"max_{key}"))
            bad = (f"min_{key}" in thresholds and _below(value, limit)) or (
                f"max_{key}" in thresholds and _below(limit, value)
            )
            shown = "—" if limit is None else ("≥ " if f"min_{key}" in thresholds else "≤ ") + _fmt(limit, 4)
            rows.append([_td(_e(key.replace("_", " "))), _td(_role_value(value), bad), _td(shown)])
        decoding = _map(metrics.get("decoding")) or {
            k: v for k, v in _map(o.get("role_config")).items() if k not in ("name", "kind")
        }
        config = ", ".join(f"{_e(k)}={_e(v)}" for k, v in decoding.items())
        parts.append(
            f"<h3>{_e(o.get('name'))}: {_e(o.get('role'))}</h3>"
            + (f"<p>Decoding: {config}</p>" if config else "")
            + _table(["Metric", "Value", "Threshold"], rows)
        )
    if not parts:
        return ""
    return "<h2>Output roles</h2><p>Each output judged as its role (reference = truth).</p>" + "\n".join(
        parts
    )


def render_html(report: Mapping[str, Any]) -> str:
    """Render a parity/quantize report dict as a self-contained HTML page."""
    passed = report.get("passed") is True
    title = f"edgekit parity: {'PASS' if passed else 'FAIL'}"
    body = "\n".join(
        s
        for s in (
            _header(report),
            _outputs(report),
            _roles(report),
            _per_tensor(report),
            _repair(report),
            _latency(report),
        )
        if s
    )
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{_e(title)}</title><style>{_CSS}</style></head>\n<body>\n{body}\n</body></html>\n"
    )


def write_html(report: Mapping[str, Any], path: str | Path) -> None:
    """Render ``report`` and write it to ``path`` atomically (`signing.atomic`), keeping an existing mode."""
    from signing.atomic import atomic_write

    target = Path(path)
    content = render_html(report)
    try:
        mode: int | None = target.stat().st_mode & 0o777
    except FileNotFoundError:
        mode = None
    atomic_write(target, content.encode("utf-8"), mode=mode)
