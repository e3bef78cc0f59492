"""`python -m zoo list [--json]` and `python -m zoo fetch [KEY ...]` (all models when no key is given)."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict

from zoo.catalog import CATALOG
from zoo.fetch import ZooError, cache_dir, fetch


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m zoo", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    listing = commands.add_parser("list", help="list the catalog")
    listing.add_argument("--json", action="store_true", help="the full catalog as JSON")
    warm = commands.add_parser("fetch", help="download, verify and extract models into the cache")
    warm.add_argument("keys", nargs="*", help="model keys (default: all)")
    args = parser.parse_args(argv)

    if args.command == "list":
        if args.json:
            print(json.dumps({k: asdict(m) for k, m in CATALOG.items()}, indent=2))
        else:
            for key, model in CATALOG.items():
                roles = ", ".join(f"{name}={role}" for name, role in model.outputs)
                print(f"{key:34} {model.format:17} {model.project}=={model.version}  [{roles}]")
        return 0

    unknown = [k for k in args.keys if k not in CATALOG]
    if unknown:
        print(f"unknown model(s) {unknown}; known: {', '.join(CATALOG)}", file=sys.stderr)
        return 2
    failed = 0
    for key in args.keys or list(CATALOG):
        try:
            path = fetch(key)
        except ZooError as e:
            failed += 1
            print(f"{key}: FAILED: {e}", file=sys.stderr)
            continue
        print(f"{key}: {path}")
    print(f"cache: {cache_dir()}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
