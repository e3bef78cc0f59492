"""Prometheus text exposition of the server's counters (per process; Prometheus sums replicas)."""

from __future__ import annotations

import threading

__all__ = ["Metrics"]


class Metrics:
    """Thread-safe counters and gauges with labels, rendered in Prometheus text format 0.0.4."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counters: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
        self._gauges: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
        self._help: dict[str, tuple[str, str]] = {}

    def describe(self, name: str, kind: str, text: str) -> None:
        """Register HELP and TYPE lines for a metric."""
        self._help[name] = (kind, text)

    def inc(self, name: str, amount: float = 1.0, **labels: str) -> None:
        """Add to a counter."""
        with self._lock:
            key = (name, tuple(sorted(labels.items())))
            self._counters[key] = self._counters.get(key, 0.0) + amount

    def set(self, name: str, value: float, **labels: str) -> None:
        """Set a gauge."""
        with self._lock:
            self._gauges[(name, tuple(sorted(labels.items())))] = value

    def render(self) -> str:
        """The text format body."""
        with self._lock:
            series = [*self._counters.items(), *self._gauges.items()]
        lines: list[str] = []
        seen: set[str] = set()
        for (name, labels), value in sorted(series, key=lambda item: item[0]):
            if name not in seen and name in self._help:
                kind, text = self._help[name]
                lines += [f"# HELP {name} {text}", f"# TYPE {name} {kind}"]
                seen.add(name)
            rendered = ",".join(f'{k}="{_escape(v)}"' for k, v in labels)
            lines.append(f"{name}{{{rendered}}} {value:g}" if rendered else f"{name} {value:g}")
        return "\n".join(lines) + "\n"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
