"""Console-script entry point: a clear message instead of a traceback when the host extras are missing."""

from __future__ import annotations

import sys


def main() -> None:
    """Run the `edgekit` command line."""
    try:
        from edgekit.cli import cli
    except ImportError as e:  # click is a host extra; a device install does not have it
        sys.stderr.write(
            f"error: the edgekit command line needs the host extras ({e.name} is missing): "
            "pip install 'edgekit[convert]'\n"
        )
        raise SystemExit(1) from None
    cli()
