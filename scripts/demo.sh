#!/usr/bin/env bash
# Fresh machine -> the main job: install edgekit (conversion and server extras) into .venv, then run the
# whole loop on the embedded defaults (SQLite, local files): train the digits model, convert, quantize
# behind the parity gate, bundle and sign, then serve it over TUF to a fleet of real device runtimes and
# roll out a good release (promoted 1% -> 5% -> 25% -> 100%) and a bad one (rolled back at 1%), with no
# feedback labels from the devices: the label-free gates decide, and the summary names the one that did.
# Usage: bash scripts/demo.sh [--no-wait] [BUILD_DIR]
# At the end the server and its dashboard stay up until Ctrl-C (exit 0, everything cleaned up). Scripts
# that must not wait pass --no-wait (or set FLEET_NO_WAIT=1); without a terminal on stdin it never waits.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" = --no-wait ]; then export FLEET_NO_WAIT=1; shift; fi
source scripts/_venv.sh convert,server
bash examples/digits/run.sh "${1:-examples/digits/build}"
