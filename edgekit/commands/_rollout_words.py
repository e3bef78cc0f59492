"""A rollout's gate decisions in plain words: the one place that turns a decision record into a sentence.

`edgekit rollout status`, `edgekit rollout watch` and the fleet demo (examples/fleet/fleet.py) all speak
through this module, so one check reads the same everywhere. It reads the status document of
`GET /v1/admin/rollouts/{id}` (plan, stage, decision log) and nothing else: the words say only what the
server reported. Each record (`edgekit.rollout.gates.DecisionRecord` as JSON: metric, outcome,
treatment_value, control_value, n, statistic, threshold, detail) becomes one clause that names what was
measured, the bound the gate used and the limit it was held against; numbers are rounded for people (2-3
significant digits, shares in percent); the raw values stay in `--json`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Any

__all__ = [
    "NAMES",
    "decision_lines",
    "evaluation_line",
    "exposure_record",
    "not_judged",
    "number",
    "percent",
    "record_words",
]

# A hold's line names at most this many of the checks it waits on (then how many more).
MAX_WAITING_SHOWN = 3

# What each check is called in a sentence.
NAMES = {
    "telemetry": "telemetry",
    "exposure": "exposure",
    "crash_guardrail": "crashes",
    "error_guardrail": "inference errors",
    "install_failures": "failed installs",
    "crash_rate": "crash rate",
    "error_rate": "error rate",
    "latency_p95": "p95 latency",
    "accuracy": "accuracy",
    "class_shift": "predicted classes",
    "confidence_shift": "confidence",
    "input_drift": "input drift",
    "shadow_agreement": "shadow runs",
    "shadow_failures": "shadow failures",
    "duration": "time at this stage",
    "deadline": "deadline",
}


# ---- numbers -----------------------------------------------------------------------------------------
def number(value: Any) -> str:
    """A measured value for people: 2-3 significant digits, no exponent, `?` when unknown or infinite."""
    if value is None or not isinstance(value, int | float) or not math.isfinite(value):
        return "?"
    x = float(value)
    if x == 0:
        return "0"
    if abs(x) >= 100:
        return f"{x:,.0f}"
    if abs(x) >= 1:
        return f"{x:.3g}"
    text = f"{x:.2g}"
    if "e" in text:  # below 1e-4: fixed point with two significant digits
        digits = 1 - math.floor(math.log10(abs(x)))
        text = f"{x:.{digits}f}"
    return text


def percent(share: Any) -> str:
    """A share (0..1) as a percentage for people: `44%`, `2.5%`, `0.4%`, `0%`."""
    if share is None or not isinstance(share, int | float) or not math.isfinite(share):
        return "?%"
    v = 100 * float(share)
    if v == 0:
        return "0%"
    if abs(v) >= 10:
        return f"{v:.0f}%"
    if abs(v) >= 1:
        return f"{v:.2g}%"
    return f"{number(v)}%"


def beside(show: Callable[[Any], str], bound: Any, limit: Any) -> str:
    """`show(bound)`, with more digits when it would read the same as `show(limit)` but is not equal (a
    bound of 0.1017 said next to a limit of 0.1 reads "0.102", not "0.1")."""
    text = show(bound)
    if not all(isinstance(v, int | float) and math.isfinite(v) for v in (bound, limit)) or bound == limit:
        return text
    scale, suffix = (100.0, "%") if show is percent else (1.0, "")
    for digits in range(3, 7):
        if text != show(limit):
            break
        text = f"{scale * float(bound):.{digits}g}{suffix}"
    return text


def _need(detail: str) -> str | None:
    """The minimum a holding check quoted in its detail (`need 4`, `need 60 each`), if any."""
    found = re.search(r"need (\d+(?:\.\d+)?)", detail)
    return found.group(1) if found else None


# ---- one record ----------------------------------------------------------------------------------------
def not_judged(record: dict[str, Any]) -> str | None:
    """Why a check passed without judging anything (no data of its kind), else None."""
    detail = record.get("detail") or ""
    if record.get("outcome") != "pass":
        return None
    if detail.startswith("not judged: "):
        return detail.removeprefix("not judged: ")
    if record.get("metric") == "accuracy" and detail.startswith("no feedback"):
        return "no feedback labels"
    return None


def _exposure_gap(exposure: dict[str, Any] | None) -> str:
    """`, about 1.8 more device-hours needed` from the exposure record of the same evaluation."""
    if not exposure or exposure.get("statistic") is None or exposure.get("threshold") is None:
        return ""
    more = exposure["threshold"] - exposure["statistic"]
    unit = "device-hour" if number(more) == "1" else "device-hours"
    return f", about {number(more)} more {unit} needed" if more > 0 else ""


def _guardrail(record: dict[str, Any], name: str) -> str:
    metric, outcome = record["metric"], record["outcome"]
    value, bound, limit = record.get("treatment_value"), record.get("statistic"), record.get("threshold")
    if metric == "crash_guardrail":
        show: Callable[[Any], str] = number
        unit = "per device-hour"
        so_far = "none" if value == 0 else f"{number(value)} per device-hour"
    else:
        show, unit = percent, "of inferences" if metric == "error_guardrail" else "of installs"
        so_far = "none" if value == 0 else f"{percent(value)} {unit}"
    if bound is None:
        return f"{name}: nothing reported yet"
    if outcome == "rollback":
        return (
            f"{name}: {so_far} on the update; at least {beside(show, bound, limit)} even at its lower bound, "
            f"above the {show(limit)} limit -> roll back"
        )
    if outcome == "pass":
        return f"{name}: {so_far} on the update, at most {beside(show, bound, limit)} (limit {show(limit)})"
    rule_out = f"{beside(show, bound, limit)} {unit} (limit {show(limit)})"
    return f"{name}: {so_far} so far, but it could still be up to {rule_out}"


def _sprt(record: dict[str, Any], name: str, exposure: dict[str, Any] | None) -> str:
    detail, outcome = record.get("detail") or "", record["outcome"]
    crashes = record["metric"] == "crash_rate"
    noun = "crashes" if crashes else "errors"

    def rate(value: Any) -> str:
        return f"{number(value)} per device-hour" if crashes else f"{percent(value)} of inferences"

    t, c = record.get("treatment_value"), record.get("control_value")
    if detail.startswith("no "):
        return f"{name}: nothing reported by one of the groups yet"
    if "minimum exposure not reached" in detail:
        return f"{name}: not enough exposure yet to compare with the control{_exposure_gap(exposure)}"
    compared = (
        f"no {noun} in either group"
        if t == 0 and c == 0
        else f"{rate(t)} on the update, {rate(c)} on the control"
    )
    if outcome == "rollback":
        return (
            f"{name}: {compared}; the sequential test's evidence for a regression "
            f"({number(record.get('statistic'))}) crossed its rollback line {number(record.get('threshold'))}"
            " -> roll back"
        )
    if outcome == "pass" and detail.startswith("treatment upper bound"):
        return (
            f"{name}: {compared}; the update's rate is at most {rate(record.get('statistic'))}, "
            f"negligible below {rate(record.get('threshold'))}"
        )
    if outcome == "pass":
        return f"{name}: {compared}; no regression (the sequential test settled)"
    if "expected under H0" in detail:
        events = record.get("n") or 0
        return (
            f"{name}: "
            + (f"no {noun} in either group yet" if not events else f"only {events} {noun} so far")
            + ", too few to compare"
        )
    return f"{name}: {compared}; not settled yet"


def _latency(record: dict[str, Any], name: str) -> str:
    detail, outcome = record.get("detail") or "", record["outcome"]
    ratio, limit = record.get("statistic"), record.get("threshold")
    if ratio is None and outcome == "rollback":  # an infinite ratio: the update's p95 is off the scale
        control = record.get("control_value")
        theirs = f"the control's is {number(control)} ms" if control is not None else "the control's is not"
        return f"{name}: the update's p95 is slower than the slowest latency bucket, {theirs} -> roll back"
    if ratio is None:
        if "beyond the last bucket" in detail:
            return f"{name}: both groups slower than the slowest latency bucket"
        return _so_far(record, name, "timings")
    t, c = number(record.get("treatment_value")), number(record.get("control_value"))
    what = f"{name}: {t} ms on the update, {c} ms on the control (ratio {number(ratio)}"
    if outcome == "rollback":
        return f"{what}, above the {number(limit)} rollback limit) -> roll back"
    if outcome == "pass":
        return f"{what}, limit {number(limit)})"
    return f"{what}, not yet shown within {number(limit)})"


def _so_far(record: dict[str, Any], name: str, what: str) -> str:
    """`p95 latency: 8 timings in the smaller group, 60 needed`: a check still counting its samples."""
    need = _need(record.get("detail") or "")
    return f"{name}: {record.get('n') or 0} {what} in the smaller group" + (
        f", {need} needed" if need else ""
    )


def _accuracy(record: dict[str, Any], name: str) -> str:
    outcome = record["outcome"]
    bound, limit = record.get("statistic"), record.get("threshold")
    if bound is None:
        return _so_far(record, name, "feedback labels")
    t, c = percent(record.get("treatment_value")), percent(record.get("control_value"))
    what = f"{name}: {t} on the update, {c} on the control"
    if outcome == "rollback":
        limit_words = f"above the {number(limit)}-point limit -> roll back"
        return f"{what}; the drop is at least {number(bound)} points, {limit_words}"
    if outcome == "pass":
        return f"{what}; the drop is at most {number(bound)} points (limit {number(limit)})"
    return f"{what}; the drop could still be {number(bound)} points (limit {number(limit)})"


# metric -> (what the value is, how to show it, the clause before the treatment/control values)
_LABEL_FREE = {
    "class_shift": ("share of inputs whose predicted class differs between the groups", percent),
    "confidence_shift": ("drop in mean confidence", number),
    "input_drift": ("excess input drift (PSI)", number),
    "shadow_agreement": ("excess disagreement", number),
    "shadow_failures": ("share of failed shadow runs", percent),
}


def _label_free(record: dict[str, Any], name: str) -> str:
    metric, detail, outcome = record["metric"], record.get("detail") or "", record["outcome"]
    bound, limit = record.get("statistic"), record.get("threshold")
    t, c = record.get("treatment_value"), record.get("control_value")
    if "fail closed" in detail:
        side = "control" if detail.startswith("control") else "update"
        return f"{name}: only the {side} group reports them so far"
    if bound is None:
        need = _need(detail)
        if need:
            have = record.get("n") or 0
            who = f"{have} device per group reports" if have == 1 else f"{have} devices per group report"
            return f"{name}: {who} them, {need} needed"
        return f"{name}: not judged ({detail.removeprefix('not judged: ')})"
    what, show = _LABEL_FREE[metric]
    if metric == "shadow_agreement":
        value = None if t is None or c is None else t - c
        lead = (
            f"{name}: the new release disagrees with the current one on {percent(t)} of inputs, the current "
            f"one with itself on {percent(c)}; the {what} {number(value)}"
        )
    elif metric == "shadow_failures":
        lead = (
            f"{name}: {percent(t)} of the new release's shadow runs failed"
            + (f" (the control's own {percent(c)})" if c is not None else "")
            + "; the share"
        )
    elif metric == "confidence_shift":
        lead = f"{name}: mean confidence {number(t)} on the update, {number(c)} on the control; the drop"
    elif metric == "input_drift":
        lead = f"{name}: PSI {number(t)} against the release's reference data" + (
            f", the control's {number(c)}; the excess" if c is not None else " (no control group); the drift"
        )
    else:
        lead = f"{name}: the {what}"
    shown = beside(show, bound, limit)
    if outcome == "rollback":
        return f"{lead} is above the {show(limit)} limit even at its lower bound {shown} -> roll back"
    if outcome == "pass":
        return f"{lead} is at most {shown}, within the {show(limit)} limit"
    return f"{lead} could still be {shown}, not yet within the {show(limit)} limit"


def record_words(record: dict[str, Any], exposure: dict[str, Any] | None = None) -> str:
    """One check in words: what was measured, the bound and the limit (`exposure`: the same evaluation's
    exposure record, for how much more exposure a waiting check needs)."""
    metric, outcome = record.get("metric", "?"), record.get("outcome", "?")
    name = NAMES.get(metric, metric.replace("_", " "))
    detail = record.get("detail") or ""
    why = not_judged(record)
    if why is not None:
        return f"{name}: not judged ({why})"
    if detail.startswith("not judged: invalid telemetry"):
        fields = detail.removeprefix("not judged: ").replace("_", " ")
        return f"{name}: on hold, {fields}"
    if metric == "telemetry":
        return (
            "telemetry: present and consistent"
            if outcome == "pass"
            else f"telemetry: {detail.replace('_', ' ')}"
        )
    if metric == "exposure":
        devices, hours, minimum = record.get("n"), record.get("statistic"), record.get("threshold")
        need = _need(detail)
        treated = record.get("treatment_value")
        arms = f"{number(treated)} device{'' if treated == 1 else 's'} on the update" + (
            f", {number(record.get('control_value'))} in the control"
            if record.get("control_value") is not None
            else ""
        )
        if outcome == "pass":
            hours_words = f"{number(hours)} device-hours in the smaller group (need {number(minimum)})"
            return f"exposure: {arms}; {hours_words}"
        return (
            f"exposure: {arms}; the smaller group has {devices} of {need or '?'} devices and "
            f"{number(hours)} of {number(minimum)} device-hours"
        )
    if metric in ("crash_guardrail", "error_guardrail", "install_failures"):
        return _guardrail(record, name)
    if metric in ("crash_rate", "error_rate"):
        return _sprt(record, name, exposure)
    if metric == "latency_p95":
        return _latency(record, name)
    if metric == "accuracy":
        return _accuracy(record, name)
    if metric in _LABEL_FREE:
        return _label_free(record, name)
    if metric == "duration":
        return (
            f"{number(record.get('statistic'))} h at this stage (minimum {number(record.get('threshold'))} h)"
        )
    if metric == "deadline":
        hours, deadline = number(record.get("statistic")), number(record.get("threshold"))
        if outcome == "pass":
            return f"{hours} h at this stage (deadline {deadline} h)"
        return f"past the {deadline} h deadline without a decision after {hours} h: an operator should look"
    return f"{name}: {outcome} ({detail})"


# ---- one evaluation ------------------------------------------------------------------------------------
def exposure_record(decision: dict[str, Any]) -> dict[str, Any] | None:
    """The decision's exposure record (devices and device-hours per arm), if it has one."""
    return next((r for r in decision.get("records", []) if r.get("metric") == "exposure"), None)


def evaluation_line(decision: dict[str, Any], stages: list[int]) -> str:
    """One evaluation in one line: `stage 1%: holding - 4 devices on the update, ...; crash rate ...`.

    A hold names what it waits on; a promotion or rollback names the checks that decided (the lines of
    `decision_lines` say every check). Checks not judged for lack of data are left out.
    """
    index = decision.get("stage_index", 0)
    stage = stages[index] if 0 <= index < len(stages) else decision.get("stage", "?")
    records = decision.get("records", [])
    exposure = exposure_record(decision)
    outcome = decision.get("outcome")
    if outcome == "rollback":
        head = "rolling back"
        chosen = [r for r in records if r.get("outcome") == "rollback"]
    elif outcome == "promote":
        head = "complete" if index == len(stages) - 1 else f"promoted to {stages[index + 1]}%"
        judged = [r for r in records if not_judged(r) is None]
        head += f" - all {len(judged)} checks with data passed"
        chosen = []
    elif outcome == "start":
        return f"stage {stage}%: rollout started"
    else:
        head = "holding"
        chosen = [r for r in records if r.get("outcome") == "hold" and r.get("metric") != "exposure"]
        treatment = None if exposure is None else exposure.get("treatment_value")
        if exposure is not None and treatment is not None:  # None: the arms' telemetry is unusable
            control = exposure.get("control_value")
            verb = "device has" if treatment == 1 else "devices have"
            have = f"{number(treatment)} {verb} the update" + (
                f", {number(control)} in the control" if control is not None else ""
            )
            chosen = [{"words": have}, *chosen]
    clauses = _merged([r["words"] if "words" in r else record_words(r, exposure) for r in chosen])
    if outcome not in ("rollback", "promote"):
        # A line a person can read while it scrolls: a missed deadline first, then the checks that say
        # how much more data they need (what the wait is for), then the others in gate order; at most
        # MAX_WAITING_SHOWN of them, then how many more (`edgekit rollout status` says every one).
        first = 1 if chosen and "words" in chosen[0] else 0
        waiting = clauses[first:]
        clauses = clauses[:first] + sorted(waiting, key=_urgency)
        shown = MAX_WAITING_SHOWN + first
        if len(clauses) > shown:
            more = len(clauses) - shown
            clauses = [*clauses[:shown], f"{more} more check{'s' if more > 1 else ''} waiting"]
    return f"stage {stage}%: {head}" + (" - " + "; ".join(clauses) if clauses else "")


def _urgency(clause: str) -> int:
    """Sort key of a hold's clauses: a missed deadline, then what more data is needed, then the rest."""
    return 0 if clause.startswith("past the ") else 1 if "needed" in clause else 2


def _merged(clauses: list[str]) -> list[str]:
    """Checks that say the same thing share one clause: `crashes and inference errors: nothing reported
    yet` (the order of first appearance is kept)."""
    said: dict[str, list[str]] = {}
    for clause in clauses:
        name, _, rest = clause.partition(": ")
        key = rest if rest else clause
        said.setdefault(key, []).append(name if rest else "")
    merged = []
    for rest, names in said.items():
        named = [n for n in names if n]
        if not named:
            merged.append(rest)
            continue
        who = named[0] if len(named) == 1 else ", ".join(named[:-1]) + " and " + named[-1]
        merged.append(f"{who}: {rest}")
    return merged


def decision_lines(decision: dict[str, Any], *, skipped_line: bool = True) -> list[str]:
    """Every judged check of one evaluation, one sentence each; the not-judged ones in one closing line
    (`skipped_line` False leaves it out)."""
    exposure = exposure_record(decision)
    lines, skipped = [], []
    for record in decision.get("records", []):
        why = not_judged(record)
        if why is not None:
            skipped.append(f"{NAMES.get(record['metric'], record['metric'])} ({why})")
        elif record.get("metric") not in ("telemetry", "deadline") or record.get("outcome") != "pass":
            lines.append(record_words(record, exposure))
    if skipped and skipped_line:
        lines.append("not judged (no data of that kind): " + ", ".join(skipped))
    return lines
