#!/usr/bin/env bash
# The digits example end to end with the edgekit CLI: train, export, quantize behind the parity gate, check.
# Usage: bash examples/digits/run.sh [BUILD_DIR]   (edgekit must be on PATH; scripts/demo.sh arranges that)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
build="${1:-$here/build}"
step() { printf '\n\033[1m== %s\033[0m\n$ %s\n' "$1" "${*:2}"; "${@:2}"; }

step "1. train a Keras CNN on scikit-learn's digits (images read through the preprocessing spec)" \
  python "$here/train.py" --out "$build"
step "2. export to ONNX, proving fp32 parity with Keras" \
  edgekit convert "$build/digits.keras" -o "$build/digits.onnx"
step "3. export to TFLite (float32), proving parity" \
  edgekit convert "$build/digits.keras" -o "$build/digits.tflite"
step "4. quantize to int8 (static, calibrated on the image folder), gate on held-out data, repair if needed" \
  edgekit quantize "$build/digits.onnx" -o "$build/digits.int8.onnx" \
    --calibration "$build/images/calib" --preprocess "$build/preprocess.json" \
    --eval "$build/eval.npy" --labels "$build/eval_labels.npy" \
    --report "$build/digits.int8.parity.json" --html "$build/digits.int8.parity.html"
# Full-int8 TFLite is for integer-only targets (NPUs, Edge TPU, microcontrollers). On an x86 build host
# LiteRT's float XNNPACK kernels usually beat its int8 ones: the speed check warns and writes it anyway.
step "5. full-int8 TFLite from the Keras source, same gate (slower on this host: a warning, int8-only targets)" \
  edgekit quantize "$build/digits.keras" -o "$build/digits.int8.tflite" \
    --calibration "$build/images/calib" --preprocess "$build/preprocess.json" \
    --eval "$build/eval.npy" --labels "$build/eval_labels.npy" --report "$build/digits.int8.tflite.parity.json"
step "6. cross-engine parity: float ONNX (onnxruntime) vs int8 TFLite (LiteRT)" \
  edgekit parity "$build/digits.onnx" "$build/digits.int8.tflite" --data "$build/eval.npy" \
    --labels "$build/eval_labels.npy"
[ -f "$build/keys/release.key" ] || step "7. create a release signing key (ECDSA P-256; the private key is 0600)" \
  edgekit keygen -o "$build/keys" --name release
seq 0 9 | sed 's/^/digit /' > "$build/labels.txt"
step "8. bundle and sign the int8 model with its spec, labels, golden vectors (from images) and parity report" \
  edgekit bundle "$build/digits.int8.onnx" -o "$build/digits-1.0.0.ekb" --name digits --version 1.0.0 \
    --key "$build/keys/release.key" --preprocess "$build/preprocess.json" --labels "$build/labels.txt" \
    --golden "$build/images/eval" --parity "$build/digits.int8.parity.json" --release-counter 1
step "9. verify it the way a device will (one streaming pass, pinned key)" \
  edgekit verify "$build/digits-1.0.0.ekb" --pubkey "$build/keys/release.pub"
printf '\ndone: models, parity reports (JSON, HTML) and the signed bundle are in %s\n' "$build"
# The whole loop: the signed bundle rolled out over TUF to a fleet of device runtimes behind statistical gates
# (examples/fleet/README.md). DIGITS_SKIP_FLEET=1 stops here.
[ "${DIGITS_SKIP_FLEET:-0}" = 1 ] || step "10. roll out to a fleet of real device runtimes (no feedback labels): a good release promoted, a bad one rolled back" \
  bash "$here/../fleet/rollout_demo.sh" "$build"
