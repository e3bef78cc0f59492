"""What every benchmark reports about the host: CPU model, CPU flags and core count."""

from __future__ import annotations

import os
import platform

__all__ = ["cpu"]


def cpu() -> tuple[str, set[str], int | None]:
    """(model name, flags from /proc/cpuinfo, logical cores); flags are empty where /proc is absent."""
    flags: set[str] = set()
    model_name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as handle:
            for line in handle:
                if line.startswith("flags") and not flags:
                    flags = set(line.split(":", 1)[1].split())
                elif line.startswith("model name"):
                    model_name = line.split(":", 1)[1].strip()
    except OSError:
        pass
    return model_name, flags, os.cpu_count()
