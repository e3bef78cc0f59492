#!/usr/bin/env bash
# The device distribution's test suite, run against the built wheel in a device-only environment.
#
#   bash scripts/device_suite.sh stage DIR   build the edgekit-device wheel into DIR/dist, copy the test
#                                            suites and the host tooling their fixtures import into DIR/src
#                                            (without device_runtime/ and signing/: the wheel is what gets
#                                            tested), the lock files into DIR/requirements and the runner
#                                            device/run_suite.sh to DIR/run_suite.sh. Then, anywhere (e.g.
#                                            inside the arm64 root): sh DIR/run_suite.sh PYTHON [PYTEST_ARGS]
#   bash scripts/device_suite.sh py310 [PYTEST_ARGS...]
#                                            stage into $EDGEKIT_DEVICE_STAGE (default
#                                            ~/.cache/edgekit/device-suite) and run the suites on Python 3.10:
#                                            $EDGEKIT_PY310 (default python3.10 on PATH, else pyenv's 3.10.13)
#   bash scripts/device_suite.sh lock        regenerate device/requirements/py310.txt and py311.txt from
#                                            lock.in with $EDGEKIT_PY310 / $EDGEKIT_PY311, and check that
#                                            every pin has wheels for x86_64 and aarch64
# Exit status: the runner's (pytest's), 125 when the environment could not be set up, 2 on usage errors.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
# A Python 3.10: $EDGEKIT_PY310, else the first that runs as 3.10 of pyenv's (this machine image has 3.10.13)
# and `python3.10` on PATH (a pyenv shim there may exist and still refuse to run, hence the check).
find_py310() {
    local candidate
    for candidate in "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.10.*/bin/python "$(command -v python3.10 || true)"; do
        if [ -n "$candidate" ] && [ -x "$candidate" ] &&
            "$candidate" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 10))' 2>/dev/null; then
            echo "$candidate"
            return
        fi
    done
    echo "python3.10 (none found)"
}
py310=${EDGEKIT_PY310:-$(find_py310)}
py311=${EDGEKIT_PY311:-/root/.pyenv/versions/3.11.7/bin/python}
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT

usage() {
    sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

build_python() { # any Python with pip builds the wheel (pure Python); the project's venv when present
    if [ -n "${EDGEKIT_BUILD_PYTHON:-}" ]; then echo "$EDGEKIT_BUILD_PYTHON"
    elif [ -x "$repo/.venv/bin/python" ]; then echo "$repo/.venv/bin/python"
    else echo python3; fi
}

stage() {
    local dir=$1 work=$scratch/stage
    mkdir -p "$dir"
    dir=$(cd "$dir" && pwd)
    # Build from a copy so the build's scratch files (build/, *.egg-info) never land in the source tree.
    # SOURCE_DATE_EPOCH fixes the zip timestamps: the same sources give the same wheel (the runner's venv
    # stamp includes the wheel's hash).
    mkdir -p "$work/tree"
    cp -R "$repo/device" "$repo/device_runtime" "$repo/signing" "$work/tree/"
    # an in-tree build elsewhere may have left build/ or egg-info folders: never let them into the wheel
    rm -rf "$work/tree/device/build" "$work/tree"/*.egg-info "$work/tree/device"/*.egg-info
    find "$work/tree" -name __pycache__ -prune -exec rm -rf {} +
    rm -rf "$dir/dist.tmp" && mkdir -p "$dir/dist.tmp"
    SOURCE_DATE_EPOCH=315532800 "$(build_python)" -m pip wheel --quiet --no-deps --wheel-dir "$dir/dist.tmp" \
        "$work/tree/device" || { echo "device_suite.sh: building the edgekit-device wheel failed" >&2; exit 125; }
    rm -rf "$dir/dist" && mv "$dir/dist.tmp" "$dir/dist"

    rm -rf "$dir/src.tmp" && mkdir -p "$dir/src.tmp"
    # The host tooling the fixtures import (bundle building, the TUF repository, the zoo) and the tests;
    # pyproject.toml for pytest's settings (markers, warnings filters).
    tar -C "$repo" --exclude=__pycache__ --exclude='*.pyc' -cf - pyproject.toml edgekit converters zoo tests |
        tar -C "$dir/src.tmp" -xf -
    rm -rf "$dir/src" && mv "$dir/src.tmp" "$dir/src"

    rm -rf "$dir/requirements" && mkdir -p "$dir/requirements"
    cp "$repo"/device/requirements/py3*.txt "$dir/requirements/"
    cp "$repo/device/run_suite.sh" "$dir/run_suite.sh.tmp" && mv "$dir/run_suite.sh.tmp" "$dir/run_suite.sh"
    echo "device_suite.sh: staged $(basename "$dir"/dist/*.whl) and the device + attack suites in $dir"
}

lock_one() { # PYTHON -> device/requirements/pyXY.txt, resolved natively, then checked for both architectures
    local python=$1 work minor out
    [ -x "$python" ] || { echo "device_suite.sh: no interpreter at $python (set EDGEKIT_PY310/EDGEKIT_PY311)" >&2
        exit 125; }
    minor=$("$python" -c 'import sys; print("%d%d" % sys.version_info[:2])')
    work=$scratch/lock-py$minor
    out="$repo/device/requirements/py$minor.txt"
    "$python" -m venv "$work/venv"
    export PIP_CONFIG_FILE=/dev/null PIP_DISABLE_PIP_VERSION_CHECK=1
    unset PIP_FIND_LINKS PIP_CONSTRAINT
    "$work/venv/bin/python" -m pip install --quiet --upgrade pip
    "$work/venv/bin/python" -m pip install --quiet --dry-run --ignore-installed --only-binary=:all: \
        --report "$work/native.json" -r "$repo/device/requirements/lock.in"
    "$work/venv/bin/python" - "$work/native.json" "$out" "$minor" <<'EOF'
import json, sys
report, out, minor = sys.argv[1:]
pins = sorted((i["metadata"]["name"], i["metadata"]["version"]) for i in json.load(open(report))["install"])
lines = [
    f"# Python 3.{minor[1:]}: the device suite's exact environment (edgekit-device with all extras, and the",
    "# test dependencies), wheels for x86_64 and aarch64. Generated from lock.in by",
    "# `bash scripts/device_suite.sh lock`; do not edit by hand.",
] + [f"{name}=={version}" for name, version in sorted(pins, key=lambda p: p[0].lower())]
open(out + ".tmp", "w").write("\n".join(lines) + "\n")
EOF
    mv "$out.tmp" "$out"
    for arch in x86_64 aarch64; do
        # Up to manylinux_2_35: glibc 2.35 of Ubuntu 22.04, the oldest device image supported (bookworm has
        # 2.36). pip does not expand a manylinux_2_Y platform to the older ones: list them all.
        local platforms=() y
        for y in 5 12 17 {18..35}; do platforms+=(--platform "manylinux_2_${y}_$arch"); done
        "$work/venv/bin/python" -m pip install --quiet --dry-run --ignore-installed --only-binary=:all: \
            "${platforms[@]}" --python-version "3.${minor:1}" --implementation cp \
            --target "$work/target-$arch" --report "$work/$arch.json" -r "$out"
        "$work/venv/bin/python" - "$work/$arch.json" "$out" "$arch" <<'EOF'
import json, re, sys
report, lock, arch = sys.argv[1:]
canon = lambda name: re.sub(r"[-_.]+", "-", name).lower()  # noqa: E731
got = {(canon(i["metadata"]["name"]), i["metadata"]["version"]) for i in json.load(open(report))["install"]}
pins = [line.strip().split("==") for line in open(lock) if line.strip() and not line.startswith("#")]
want = {(canon(name), version) for name, version in pins}
if got != want:
    sys.exit(f"{lock} on {arch}: resolves to {sorted(got ^ want)} beyond the pins")
print(f"device_suite.sh: {lock.rsplit('/', 1)[-1]}: {len(want)} pins, wheels for {arch}")
EOF
    done
}

case "${1:-}" in
stage)
    [ $# -eq 2 ] || usage
    stage "$2"
    ;;
py310)
    shift
    dir=${EDGEKIT_DEVICE_STAGE:-$HOME/.cache/edgekit/device-suite}
    [ -x "$py310" ] || { echo "device_suite.sh: no Python 3.10 at $py310; set EDGEKIT_PY310=/path/to/python3.10" >&2
        exit 125; }
    start=$SECONDS
    stage "$dir"
    status=0
    sh "$dir/run_suite.sh" "$py310" "$@" || status=$?
    echo "device_suite.sh: Python 3.10 device suite finished in $((SECONDS - start)) s (exit $status)"
    exit "$status"
    ;;
lock)
    [ $# -eq 1 ] || usage
    lock_one "$py310"
    lock_one "$py311"
    ;;
*) usage ;;
esac
