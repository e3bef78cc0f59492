"""A progress seam: converters report long work through it and never print.

The CLI passes a tqdm-backed implementation; library callers get silence by default.
"""

from __future__ import annotations

from typing import Protocol

__all__ = ["NullProgress", "Progress", "ProgressTask"]


class ProgressTask(Protocol):
    """One unit of long work with a known number of steps."""

    def advance(self, steps: int = 1) -> None:
        """Mark `steps` more steps done."""

    def close(self) -> None:
        """Finish the task."""


class Progress(Protocol):
    """Starts tasks and carries one-line notes (warnings, decisions) to the user."""

    def task(self, description: str, total: int) -> ProgressTask:
        """Start a task of `total` steps."""
        ...

    def note(self, message: str) -> None:
        """Tell the user something worth knowing (a warning, a fallback that was taken)."""


class _NullTask:
    def advance(self, steps: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


class NullProgress:
    """Progress that shows nothing and records notes (so library callers can read them)."""

    def __init__(self) -> None:
        self.notes: list[str] = []

    def task(self, description: str, total: int) -> ProgressTask:
        return _NullTask()

    def note(self, message: str) -> None:
        self.notes.append(message)
