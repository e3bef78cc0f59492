#!/bin/sh
# Run edgekit's device and attack test suites against the installed device wheel (edgekit-device).
#
# Usage:   sh DIR/run_suite.sh PYTHON [PYTEST_ARGS...]
#   DIR     a directory made by `bash scripts/device_suite.sh stage DIR` on the build host:
#             DIR/dist/edgekit_device-*.whl   the device distribution under test
#             DIR/requirements/pyXY.txt       exact pins (runtime + test) per Python minor version
#             DIR/src/                        the test suites and the host tooling their fixtures import,
#                                             WITHOUT device_runtime/ and signing/ (the wheel provides them)
#   PYTHON  the interpreter to test (3.10 or newer, with the venv module), e.g. /usr/bin/python3
#   PYTEST_ARGS are appended to `pytest tests/device_runtime tests/attacks tests/delta` (e.g. -x -q -k updater).
# Environment (all optional; nothing else from the caller's environment is relied on):
#   EDGEKIT_DEVICE_VENV        the venv to create or reuse (default DIR/venv-<python version>-<machine>)
#   EDGEKIT_DEVICE_CA_BUNDLE   CA certificates for pip (default: the system bundle
#                              /etc/ssl/certs/ca-certificates.crt when present, else pip's own)
#   EDGEKIT_DEVICE_WHEELHOUSE  install offline from this directory of wheels instead of the index
#   HTTPS_PROXY, NO_PROXY      passed to pip as usual
# Exit status: pytest's (0 all passed, 1 some failed, ...), or 125 when the environment could not be set up.
#
# POSIX sh, paths relative to this script: it runs natively or inside an emulated root with DIR bind-mounted
# anywhere. The venv is reused while its stamp (wheel + lock file + interpreter + venv path) matches. pip
# reads no configuration file and no PIP_* variable of the caller, so host settings never leak in.
set -eu

fail() {
    echo "run_suite.sh: $*" >&2
    exit 125
}

[ $# -ge 1 ] || fail "usage: sh run_suite.sh PYTHON [PYTEST_ARGS...] (PYTHON: the interpreter to test)"
python=$1
shift
here=$(cd "$(dirname "$0")" && pwd)

command -v "$python" >/dev/null 2>&1 || fail "interpreter '$python' not found; pass the path of a Python >= 3.10"
"$python" -c 'import sys; sys.exit(sys.version_info < (3, 10))' ||
    fail "'$python' is Python $("$python" -c 'import platform; print(platform.python_version())'); the device \
distribution needs 3.10 or newer"
minor=$("$python" -c 'import sys; print("%d%d" % sys.version_info[:2])')
tag=$("$python" -c 'import platform, sys; print("%d.%d-%s" % (sys.version_info[:2] + (platform.machine(),)))')

lock="$here/requirements/py$minor.txt"
[ -f "$lock" ] || fail "no lock file for Python ${tag%%-*}: expected $lock (have: $(ls "$here/requirements" \
2>/dev/null | tr '\n' ' ')); add one with scripts/device_suite.sh lock"
wheel=
for candidate in "$here"/dist/edgekit_device-*.whl; do
    [ -f "$candidate" ] || continue
    [ -z "$wheel" ] || fail "several wheels in $here/dist; stage again (scripts/device_suite.sh stage DIR)"
    wheel=$candidate
done
[ -n "$wheel" ] || fail "no edgekit_device wheel in $here/dist; stage first: bash scripts/device_suite.sh stage DIR"
[ -d "$here/src/tests/device_runtime" ] || fail "no test suites in $here/src; stage first"

# A clean pip: no config files, no inherited PIP_* settings (e.g. a host's find-links or constraints).
for name in $(env | sed -n 's/^\(PIP_[A-Za-z0-9_]*\)=.*/\1/p'); do
    unset "$name"
done
unset PYTHONPATH PYTHONHOME PYTHONSTARTUP PYTHONUSERBASE || true
export PIP_CONFIG_FILE=/dev/null PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1
ca=${EDGEKIT_DEVICE_CA_BUNDLE:-}
[ -n "$ca" ] || [ ! -f /etc/ssl/certs/ca-certificates.crt ] || ca=/etc/ssl/certs/ca-certificates.crt
[ -z "$ca" ] || export PIP_CERT="$ca"
# --no-compile: byte-compiling every installed file costs minutes under emulation; imports compile what
# they use.
source_args="--only-binary=:all: --no-compile"
if [ -n "${EDGEKIT_DEVICE_WHEELHOUSE:-}" ]; then
    source_args="$source_args --no-index --find-links=$EDGEKIT_DEVICE_WHEELHOUSE"
fi

venv=${EDGEKIT_DEVICE_VENV:-"$here/venv-$tag"}
digest() { # sha256 over the arguments: "file:PATH" stands for the file's contents, others for themselves
    "$python" -c 'import hashlib, sys
h = hashlib.sha256()
for a in sys.argv[1:]:
    h.update(open(a[5:], "rb").read() if a.startswith("file:") else a.encode())
    h.update(b"\0")
print(h.hexdigest())' "$@"
}
deps_stamp=$(digest "file:$lock" "$("$python" -c 'import sys; print(sys.executable, sys.version)')" "$venv")
wheel_stamp=$(digest "file:$wheel")

if [ "$(cat "$venv/.edgekit-deps-stamp" 2>/dev/null || true)" != "$deps_stamp" ]; then
    echo "run_suite.sh: creating $venv (Python $tag) with $(basename "$lock")"
    rm -rf "$venv"
    "$python" -m venv "$venv" || fail "'$python -m venv' failed (on Debian/Ubuntu: apt-get install python3-venv)"
    # shellcheck disable=SC2086  # source_args is a list of options
    "$venv/bin/python" -m pip install --quiet $source_args -r "$lock" ||
        fail "installing $lock failed (network? set EDGEKIT_DEVICE_CA_BUNDLE or EDGEKIT_DEVICE_WHEELHOUSE)"
    echo "$deps_stamp" >"$venv/.edgekit-deps-stamp"
    rm -f "$venv/.edgekit-wheel-stamp"
fi
if [ "$(cat "$venv/.edgekit-wheel-stamp" 2>/dev/null || true)" != "$wheel_stamp" ]; then
    # --no-deps: every dependency is pinned by the lock file; `pip check` proves they satisfy the wheel.
    "$venv/bin/python" -m pip install --quiet --no-compile --no-deps --force-reinstall "$wheel" ||
        fail "installing $(basename "$wheel") failed"
    problems=$("$venv/bin/python" -m pip check 2>&1) ||
        fail "$(basename "$lock") does not satisfy $(basename "$wheel")'s requirements: $problems"
    echo "$wheel_stamp" >"$venv/.edgekit-wheel-stamp"
fi

cd "$here/src"
# The packages under test must come from the wheel, never from a source tree.
"$venv/bin/python" -c '
import sys, device_runtime, signing
for m in (device_runtime, signing):
    if "site-packages" not in m.__file__:
        sys.exit("run_suite.sh: %s imported from %s, not from the installed wheel" % (m.__name__, m.__file__))
' || exit 125
"$venv/bin/python" -c 'import platform, sys; print("run_suite.sh: Python %s on %s, edgekit-device from %s" % (
    platform.python_version(), platform.machine(), sys.argv[1]))' "$(basename "$wheel")"
status=0
# Tests that need the host toolchain (click, TensorFlow, scikit-image) skip here, naming what they need.
EDGEKIT_DEVICE_SUITE=1 "$venv/bin/python" -m pytest -p no:cacheprovider tests/device_runtime tests/attacks tests/delta "$@" || status=$?
exit "$status"
