"""File helpers: atomic outputs and content hashes.

Outputs are written to a temporary file next to the destination and renamed on success, so a failed or
interrupted run never leaves a partial model, report or dataset behind (`atomic_output` is the shared
`signing.atomic` implementation).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from signing.atomic import atomic_output

__all__ = ["atomic_output", "sha256_file"]


def sha256_file(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
