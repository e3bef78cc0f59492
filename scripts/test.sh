#!/usr/bin/env bash
# Fresh machine -> the test suite: install edgekit with the dev extras into .venv, then lint (ruff),
# type-check (mypy) and run the tests (pytest, real TensorFlow / onnxruntime / LiteRT / torch).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/_venv.sh dev
echo "== ruff"; ruff check .
echo "== mypy"; mypy edgekit converters device_runtime
echo "== pytest"; python -m pytest "$@"
