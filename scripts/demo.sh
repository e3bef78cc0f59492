#!/usr/bin/env bash
# Fresh machine -> the main job: install edgekit with its conversion extras into .venv, then run the digits
# example end to end (train, convert, quantize behind the parity gate, cross-engine parity).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/_venv.sh convert
bash examples/digits/run.sh "${1:-examples/digits/build}"
