"""Pictures of simulated rollouts: exposure over time and the crash-rate SPRT statistic with its bounds."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from edgekit.rollout._sim_types import RunResult, Summary
from edgekit.rollout.gates import sprt_bounds

__all__ = ["plot"]


def plot(summary: Summary, results: Sequence[RunResult], path: str | Path, *, max_runs: int = 20) -> Path:
    """Write a PNG: treatment devices over time, the crash-rate SPRT statistic with its A/B boundaries, and
    where runs ended. Written to a temporary file and renamed, so `path` is never left half-written.

    Args:
        summary: the simulation's summary (titles and figures).
        results: its runs; the first `max_runs` are drawn as lines.
        path: the PNG to write.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    shown = list(results[:max_runs])
    scenario = "A/A (healthy)" if summary.regression is None else f"regression {summary.regression}"
    fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(16, 4.8))
    fig.suptitle(f"{summary.model.devices:,} devices, {scenario}, {summary.runs} runs (seed {summary.seed})")
    colours = {"rolled_back": "tab:red", "complete": "tab:green", "stuck": "tab:orange"}
    for r in shown:
        hours = [e.hour for e in r.evaluations]
        ax1.step(
            hours,
            [e.treatment_devices for e in r.evaluations],
            where="post",
            color=colours[r.outcome],
            alpha=0.5,
        )
        stat = [e.statistics.get("crash_rate", ("", None))[1] for e in r.evaluations if e.stage < 100]
        ax2.plot(
            [e.hour for e in r.evaluations if e.stage < 100],
            [math.nan if s is None else s for s in stat],
            color=colours[r.outcome],
            alpha=0.5,
        )
    ax1.set_yscale("symlog", linthresh=100)
    ax1.set(
        xlabel="hours",
        ylabel="devices running the target",
        title="exposure (green complete, red rolled back)",
    )
    big_a, big_b = sprt_bounds(summary.gates.alpha, summary.gates.beta)
    ax2.axhline(big_a, color="black", linestyle="--", label=f"A = {big_a:.2f} (roll back)")
    ax2.axhline(big_b, color="grey", linestyle="--", label=f"B = {big_b:.2f} (pass)")
    ax2.set(xlabel="hours", ylabel="crash-rate LLR", title="crash SPRT statistic (resets per stage)")
    ax2.legend(loc="best", fontsize="small")
    labels = [f"back at\n{s}%" for s in summary.stages] + ["stuck", "complete"]
    values = [
        sum(r.outcome == "rolled_back" and r.last_stage == s for r in results) / summary.runs
        for s in summary.stages
    ] + [summary.stuck, summary.complete]
    ax3.bar(labels, values, color=["tab:red"] * len(summary.stages) + ["tab:orange", "tab:green"])
    ax3.set(ylabel="share of runs", ylim=(0, 1), title="where runs ended")
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        fig.savefig(tmp, format="png", dpi=100)
        tmp.replace(path)
    finally:
        plt.close(fig)
        tmp.unlink(missing_ok=True)
    return path
