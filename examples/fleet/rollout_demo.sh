#!/usr/bin/env bash
# The rollout demo: a fleet of real device runtimes (processes) updates through TUF while the server's gates
# promote a good release 1% -> 5% -> 25% -> 100% and roll a bad one back at 1%, with no feedback labels (the
# label-free gates decide; FLEET_FEEDBACK=1 sends labels too). See README.md here.
# Usage: bash examples/fleet/rollout_demo.sh [--no-wait] [BUILD_DIR]   (BUILD_DIR as left by
# examples/digits/run.sh; edgekit must be on PATH). Writes BUILD_DIR/fleet/ (server data, logs); device
# stores go to /dev/shm.
# At the end the server and its dashboard stay up until Ctrl-C (which exits 0 and cleans up). Scripts that
# must not wait pass --no-wait or set FLEET_NO_WAIT=1; when stdin is not a terminal it does not wait either.
# Environment: FLEET_DEVICES (400), FLEET_PROCESSES (3), FLEET_SPEEDUP (simulated seconds per real second,
# 600), FLEET_PERIOD (simulated minutes between a device's wake-ups, 120), FLEET_TIMEOUT (real seconds per
# rollout, 300), FLEET_NO_WAIT=1 (stop everything after the summary instead of waiting for Ctrl-C).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
no_wait="${FLEET_NO_WAIT:-0}"
if [ "${1:-}" = --no-wait ]; then no_wait=1; shift; fi
build="$(cd "${1:-$here/../digits/build}" && pwd)"
devices="${FLEET_DEVICES:-400}"
processes="${FLEET_PROCESSES:-3}"
speedup="${FLEET_SPEEDUP:-600}"
period="${FLEET_PERIOD:-120}"
timeout="${FLEET_TIMEOUT:-300}"
demo="$build/fleet"
fleet=(python "$here/fleet.py")
# Real devices rarely learn the truth: by default the fleet sends no feedback labels at all, so only the
# label-free gates (class histograms, confidence, input drift, shadow runs) can judge what a release predicts.
# FLEET_FEEDBACK=1 has every device report the true digit of each image too (the accuracy gate then judges).
feedback=(--no-feedback); [ "${FLEET_FEEDBACK:-0}" = 1 ] && feedback=()
step() { printf '\n\033[1m== %s\033[0m\n' "$1"; }
for needed in digits.int8.onnx digits.int8.parity.json preprocess.json labels.txt digits-1.0.0.ekb \
  keys/release.key keys/release.pub images/eval; do
  [ -e "$build/$needed" ] || { echo "$build/$needed is missing: run examples/digits/run.sh $build first" >&2; exit 1; }
done

pids=()
stores=""
current=""
run() { "$@" & current=$!; wait "$current"; }  # a foreground step that Ctrl-C / kill can interrupt
cleanup() {
  local status=$?
  [ -n "$current" ] && kill "$current" 2>/dev/null || true
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  [ -n "$stores" ] && rm -rf "$stores"
  [ $status -eq 0 ] || echo "rollout demo failed (exit $status); logs in $demo" >&2
}
trap cleanup EXIT
trap 'exit 130' INT TERM
started=$(date +%s)

rm -rf "$demo"
mkdir -p "$demo/releases" "$demo/status"
if [ -d /dev/shm ] && [ -w /dev/shm ]; then stores="$(mktemp -d /dev/shm/edgekit-fleet.XXXXXX)"
else stores="$demo/stores"; fi

step "1. two more releases of digits, signed with the release key"
echo "1.1.0: the same int8 model in a new bundle (release counter 2): a healthy release"
edgekit bundle "$build/digits.int8.onnx" -o "$demo/releases/digits-1.1.0.ekb" --name digits --version 1.1.0 \
  --key "$build/keys/release.key" --preprocess "$build/preprocess.json" --labels "$build/labels.txt" \
  --golden "$build/images/eval" --parity "$build/digits.int8.parity.json" --release-counter 2 | sed -n 1p
echo "1.2.0: a label-order bug (classes 3<->8 and 4<->9 swapped; loads, self-tests, looks healthy): a bad release"
"${fleet[@]}" bad-model "$build/digits.int8.onnx" "$demo/releases/digits-bad.int8.onnx" --swap 3:8 --swap 4:9
edgekit bundle "$demo/releases/digits-bad.int8.onnx" -o "$demo/releases/digits-1.2.0.ekb" --name digits \
  --version 1.2.0 --key "$build/keys/release.key" --preprocess "$build/preprocess.json" \
  --labels "$build/labels.txt" --golden "$build/images/eval" --release-counter 3 | sed -n 1p

step "2. TUF repository (root and targets keys offline), publish 1.0.0, 1.1.0, 1.2.0 (each verified first)"
edgekit repo init --data "$demo/data" --offline-keys "$demo/offline-keys" --release-key "$build/keys/release.pub" \
  | sed -n 1p
for bundle in "$build/digits-1.0.0.ekb" "$demo/releases/digits-1.1.0.ekb" "$demo/releases/digits-1.2.0.ekb"; do
  edgekit publish "$bundle" --data "$demo/data" --offline-keys "$demo/offline-keys"
done

step "3. the rollout server (SQLite), demo gates, a simulated clock $speedup times faster than real time (1 real second = $((speedup / 60)) simulated minutes; every time below is simulated)"
port="$(python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
EDGEKIT_ADMIN_TOKEN="$(python -c 'import secrets; print(secrets.token_urlsafe(24))')"
export EDGEKIT_ADMIN_TOKEN EDGEKIT_SERVER="http://127.0.0.1:$port"
t0="$(python -c 'import time; print(time.time())')"
"${fleet[@]}" serve --data "$demo/data" --port "$port" --gates "$here/demo_gates.json" --t0 "$t0" \
  --speedup "$speedup" >"$demo/server.log" 2>&1 &
pids+=($!)
python - "$EDGEKIT_SERVER" <<'EOF'
import sys, time, urllib.request
for _ in range(150):
    try:
        urllib.request.urlopen(sys.argv[1] + "/healthz", timeout=2).read()
        break
    except OSError:
        time.sleep(0.2)
else:
    sys.exit("the server did not start; see server.log")
EOF
echo "server on $EDGEKIT_SERVER (SQLite in $demo/data, gates from $(basename "$here")/demo_gates.json)"

step "4. $devices devices in $processes processes: flashed with 1.0.0, registered, on TUF, reporting telemetry ($([ ${#feedback[@]} -gt 0 ] && echo "no feedback labels" || echo "with feedback labels"); each device sees its own mix of digits)"
"${fleet[@]}" factory --bundle "$build/digits-1.0.0.ekb" --key "$build/keys/release.pub" --out "$stores/factory" \
  --image "$(printf '%s\n' "$build"/images/eval/*.png | sed -n 1p)"
per=$(( (devices + processes - 1) / processes ))
for ((i = 0; i < processes; i++)); do
  first=$((i * per)); count=$(( devices - first < per ? devices - first : per ))
  "${fleet[@]}" devices --server "$EDGEKIT_SERVER" --root "$demo/data/repo/metadata/1.root.json" \
    --key "$build/keys/release.pub" --factory "$stores/factory" --images "$build/images/eval" \
    --stores "$stores" --status "$demo/status/fleet-$i.json" --first "$first" --count "$count" --seed "$i" \
    --period-minutes "$period" --t0 "$t0" --speedup "$speedup" --trial-hours 4 "${feedback[@]}" \
    >"$demo/fleet-$i.log" 2>&1 &
  pids+=($!)
done
run "${fleet[@]}" wait-fleet --fleet "$demo/status" --devices "$devices" --version 1.0.0 --timeout 180

rollout() {  # TARGET BASELINE EXPECTED [START OPTIONS]: start, watch until EXPECTED, wait for the fleet
  local id
  echo "starting $1 over $2: stages 1% -> 5% -> 25% -> 100%, each next to a control group of the same size;" \
    "below 100% the devices run $1 in shadow next to $2 on half of their inputs"
  # A fleet this small often draws a 1% group with fewer devices than the gates need (min_devices_per_arm,
  # 4): that stage could only hold until its deadline (two or three devices per group cannot show a shadow
  # disagreement beyond doubt when they differ from each other). --min-arm-devices 4 has the server draw
  # the rollout's salt until both 1% groups (and every later one) hold 4 or more registered devices.
  edgekit rollout start --model digits --target "$1" --baseline "$2" --min-arm-devices 4 "${@:4}" --json \
    >"$demo/started.json" || { cat "$demo/started.json" >&2; return 1; }
  id="$(python -c 'import json, sys; print(json.load(open(sys.argv[1]))["plan"]["rollout_id"])' \
    "$demo/started.json")"
  python -c 'import json, sys; from edgekit.commands.rollout import cohort_line
print("  " + cohort_line(json.load(open(sys.argv[1]))["cohorts"]))' "$demo/started.json"
  echo "$id" >>"$demo/rollouts.txt"
  run "${fleet[@]}" watch --server "$EDGEKIT_SERVER" --rollout "$id" --until "$3" --fleet "$demo/status" \
    --timeout "$timeout"
  local want="$1"; [ "$3" = complete ] || want="$2"
  run "${fleet[@]}" wait-fleet --fleet "$demo/status" --devices "$devices" --version "$want" --timeout 120
}

# Shadow stages: a 1% arm of this fleet holds about 4 devices, a 25% arm about 100, each device a few dozen
# predictions per stage: too few for the predicted-class histograms of two arms to be told apart or shown
# alike with a statistic that stays valid while the server looks every few minutes. A shadow run compares
# both models on the SAME inputs, device by device, which a few devices settle within hours. So every stage
# below 100% shadows the release (the treatment keeps serving the baseline and runs the release next to it
# on half of its inputs; the control runs the baseline next to itself), and at 100% the release serves everyone and
# the input-drift gate checks its inputs against the bundle's signed reference profile.
# Half of the inputs, within the served model's own CPU time: at sample 1.0 a shadow as costly as the served
# model is skipped by its CPU budget on most inputs (counted `skipped_cpu`), and the stage learns little.
shadow=(--shadow-stage 1 --shadow-stage 5 --shadow-stage 25 --shadow-sample 0.5 --shadow-max-cpu 1.0)
step "5. roll out 1.1.0 over 1.0.0 (healthy): the gates should promote it stage by stage (in shadow below 100%)"
rollout 1.1.0 1.0.0 complete "${shadow[@]}"

step "6. roll out 1.2.0 over 1.1.0 (label bug): a gate should roll it back at 1%$([ ${#feedback[@]} -gt 0 ] && echo ", with no feedback labels: a label-free one")"
rollout 1.2.0 1.1.0 rolled_back "${shadow[@]}"

mapfile -t ids <"$demo/rollouts.txt"
"${fleet[@]}" summary --server "$EDGEKIT_SERVER" --build "$build" --data "$demo/data" --fleet "$demo/status" \
  --rollouts "${ids[@]}" --note "1.0.0=baseline, factory image" --note "1.1.0=healthy re-release" \
  --note "1.2.0=label-order bug"
cpu() { local total=0 pid; for pid in "$@"; do total=$((total + $(ps -o times= -p "$pid" 2>/dev/null || echo 0))); done; echo "$total"; }
echo "the rollout demo took $(( $(date +%s) - started )) s of real time (CPU: server $(cpu "${pids[0]}") s," \
  "device processes $(cpu "${pids[@]:1}") s); logs and server data in $demo"
# Keep the server (and so the dashboard) up for a look, unless told not to or nobody can press Ctrl-C.
if [ "$no_wait" = 1 ] || [ ! -t 0 ]; then
  reason="--no-wait"; [ "$no_wait" = 1 ] || reason="stdin is not a terminal"
  echo "done: the server is stopped ($reason); run it from a terminal without --no-wait to keep the" \
    "dashboard up until Ctrl-C"
  exit 0
fi
for ((i = 1; i < ${#pids[@]}; i++)); do kill "${pids[$i]}" 2>/dev/null || true; done  # the devices: done
echo "dashboard: $EDGEKIT_SERVER/dashboard#token=$EDGEKIT_ADMIN_TOKEN"
echo "  (the token stays in the address's fragment, which the browser never sends; the devices are stopped," \
  "the server keeps running until Ctrl-C, which stops it and removes the device stores)"
trap 'exit 0' INT TERM
wait "${pids[0]}" || true
