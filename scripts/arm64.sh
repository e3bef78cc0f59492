#!/usr/bin/env bash
# The device side on ARM64, under emulation: build or reuse the arm64 Debian root (mmdebstrap, QEMU
# user-mode through binfmt_misc), stage the device distribution with its tests (scripts/device_suite.sh
# stage), and run the device and attack suites in the root on its Python (Debian bookworm's 3.11), against
# the installed edgekit-device wheel and its aarch64 lock file.
#
# Usage: bash scripts/arm64.sh [PYTEST_ARGS...]     (as root; e.g. -x -k updater to narrow a run)
# Environment: EDGEKIT_SKIP_ARM64=1 skips it (saying so); EDGEKIT_ARM64_ROOT chooses the root (default
# ~/.cache/edgekit/arm64/bookworm, reused while its recipe is unchanged); PYTHON is the host's python (3.11+).
# Exit status: pytest's; 125 when the root or the device environment cannot be set up.
# Emulated timings say nothing about a device's speed (QEMU runs about 9x slower than native).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${EDGEKIT_SKIP_ARM64:-0}" = 1 ]; then
  echo "== arm64: skipped (EDGEKIT_SKIP_ARM64=1); the device suites did not run on aarch64"
  exit 0
fi
echo "== arm64"
missing=()
command -v mmdebstrap >/dev/null 2>&1 || missing+=(mmdebstrap)
command -v qemu-aarch64-static >/dev/null 2>&1 || missing+=(qemu-user-static)
command -v update-binfmts >/dev/null 2>&1 || missing+=(binfmt-support)
if [ ${#missing[@]} -gt 0 ]; then
  echo "arm64: installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
host_python=${PYTHON:-python3}
emulation() { PYTHONPATH="$PWD" "$host_python" -m edgekit.emulation "$@"; }

stage=$(mktemp -d /tmp/edgekit-arm64.XXXXXX)
trap 'rm -rf "$stage"' EXIT

start=$SECONDS
root=$(emulation root)
root_s=$((SECONDS - start))
echo "arm64: root $root ready in ${root_s} s"

start=$SECONDS
bash scripts/device_suite.sh stage "$stage/device" >/dev/null
stage_s=$((SECONDS - start))
echo "arm64: device wheel and suites staged in ${stage_s} s"

# The suite's venv lives in the root (reused across runs while the wheel and lock file are unchanged);
# run_suite.sh prints "run_suite.sh: Python ..." once it is ready, which splits setup from test time.
start=$SECONDS
set +e
emulation run --root "$root" --bind "$stage/device:/mnt/edgekit-device" \
  --env EDGEKIT_DEVICE_VENV=/opt/edgekit-device/suite-venv \
  -- /bin/sh /mnt/edgekit-device/run_suite.sh /usr/bin/python3 "$@" 2>&1 |
  while IFS= read -r line; do
    printf '%s\n' "$line"
    case $line in "run_suite.sh: Python "*) echo $((SECONDS - start)) >"$stage/venv_s" ;; esac
  done
status=${PIPESTATUS[0]}
set -e
total_s=$((SECONDS - start))
venv_s=$(cat "$stage/venv_s" 2>/dev/null || echo "$total_s")
echo "arm64: root ${root_s} s, staging ${stage_s} s, venv ${venv_s} s, suite $((total_s - venv_s)) s" \
  "(emulated: not a device's speed); exit ${status}"
exit "$status"
