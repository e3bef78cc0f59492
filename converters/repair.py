"""Accuracy-aware repair: the fewest top-ranked nodes to keep in float so that the gate passes.

Nodes are ranked by the damage they add (`converters.localize`). Excluding the first k ranked nodes is
tried for k = 1, 2, 4, ... until the gate passes, then the gap to the last failing k is bisected: about
2·log2(k) evaluations instead of one per node. Each evaluation quantizes, runs the parity contract and
records its figures, so the report can show every candidate that was tried.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["RepairOutcome", "search_exclusions"]


@dataclass
class RepairOutcome:
    """The result of the search: the chosen k (None if none passed) and every evaluation."""

    excluded: list[str] | None
    candidates: list[dict[str, Any]] = field(default_factory=list)
    stopped_because: str = ""


def search_exclusions(
    ranked: list[list[str]],
    evaluate: Callable[[list[str]], dict[str, Any]],
    *,
    max_excluded: int,
    max_evaluations: int,
) -> RepairOutcome:
    """Find the smallest k such that excluding the first k units passes (`evaluate(...)["passed"]`).

    Args:
        ranked: units of node names (a node and the nodes it must be excluded with), most damaging first.
        evaluate: quantizes with the given exclusions and returns summary metrics with a `passed` flag.
        max_excluded: never exclude more nodes than this (k is capped where the union would exceed it).
        max_evaluations: never call `evaluate` more often than this.
    """
    prefixes = _prefix_unions(ranked)
    limit = 0
    while limit < len(prefixes) - 1 and len(prefixes[limit + 1]) <= max_excluded:
        limit += 1
    outcome = RepairOutcome(excluded=None)
    results: dict[int, dict[str, Any]] = {}
    by_set: dict[tuple[str, ...], dict[str, Any]] = {}  # two k can give the same union: evaluate it once

    def passes(k: int) -> bool:
        if k not in results:
            key = tuple(prefixes[k])
            if key not in by_set:
                metrics = dict(evaluate(prefixes[k]))
                metrics["excluded"] = len(prefixes[k])
                metrics["excluded_nodes"] = prefixes[k]
                by_set[key] = metrics
                outcome.candidates.append(metrics)
            results[k] = by_set[key]
        return bool(results[k]["passed"])

    if limit == 0:
        outcome.stopped_because = "no quantized node may be excluded"
        return outcome
    low, high, k = 0, None, 1
    while k <= limit:  # (1) grow k geometrically until the gate passes
        if len(outcome.candidates) >= max_evaluations:
            outcome.stopped_because = f"evaluation budget ({max_evaluations}) spent"
            return outcome
        if passes(k):
            high = k
            break
        low = k
        k = limit if k < limit < 2 * k else 2 * k
    if high is None:
        tried = len(prefixes[limit])
        outcome.stopped_because = (
            f"the gate still fails with the {tried} most damaging node(s) in float; more would exceed the "
            f"limit of {max_excluded} node(s) repair may keep in float"
            if limit < len(prefixes) - 1
            else f"the gate still fails with all {tried} ranked node(s) in float"
        )
        return outcome
    while high - low > 1 and len(outcome.candidates) < max_evaluations:  # (2) bisect between fail and pass
        middle = (low + high) // 2
        if passes(middle):
            high = middle
        else:
            low = middle
    outcome.excluded = prefixes[high]
    outcome.stopped_because = "smallest passing set found" if high - low <= 1 else "evaluation budget spent"
    return outcome


def _prefix_unions(units: list[list[str]]) -> list[list[str]]:
    """prefixes[k] = ordered union of the first k units (prefixes[0] is empty)."""
    prefixes: list[list[str]] = [[]]
    seen: dict[str, None] = {}
    for unit in units:
        for name in unit:
            seen.setdefault(name, None)
        prefixes.append(list(seen))
    return prefixes
