# Sourced by the scripts: create .venv (Python >= 3.11) if needed, install edgekit[EXTRA], put it on PATH.
extra="${1:?extra}"
python_bin="${PYTHON:-python3}"
"$python_bin" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || {
  echo "edgekit needs Python >= 3.11 (found $("$python_bin" --version)); set PYTHON=/path/to/python3.11" >&2; exit 1; }
[ -x .venv/bin/python ] || "$python_bin" -m venv .venv
# pip's notes about local package mirrors are noise here; real errors still reach stderr.
quiet_pip() { .venv/bin/python -m pip install --quiet --disable-pip-version-check "$@" \
  2> >(grep -vE "^WARNING: Location .* is ignored|^\s*$" >&2); }
quiet_pip --upgrade pip
quiet_pip -e ".[$extra]"
export PATH="$PWD/.venv/bin:$PATH"
export TF_CPP_MIN_LOG_LEVEL=3
