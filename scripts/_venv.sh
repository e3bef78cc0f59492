# Sourced by the scripts: create .venv (Python >= 3.11) if needed, install edgekit[EXTRA] when something
# changed, put it on PATH. Prints nothing when nothing changed.
#
# "Changed" means: pyproject.toml, the extras asked for or the venv's Python differ from the last install
# (a stamp in .venv holds their hash). An editable install already sees every source edit, so only those
# three need a reinstall; delete .venv/.edgekit-install-* to force one.
extra="${1:?extra}"
python_bin="${PYTHON:-python3}"
"$python_bin" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || {
  echo "edgekit needs Python >= 3.11 (found $("$python_bin" --version)); set PYTHON=/path/to/python3.11" >&2; exit 1; }
[ -x .venv/bin/python ] || "$python_bin" -m venv .venv
stamp_file=".venv/.edgekit-install-${extra//,/+}"  # one per set of extras: demo.sh and test.sh alternate freely
stamp="$(.venv/bin/python - "$extra" <<'EOF'
import hashlib, sys
from pathlib import Path
digest = hashlib.sha256(Path("pyproject.toml").read_bytes())
digest.update(f"\0{sys.argv[1]}\0{sys.version}\0{Path(sys.executable).resolve()}".encode())
print(digest.hexdigest())
EOF
)"
if [ "$(cat "$stamp_file" 2>/dev/null)" != "$stamp" ]; then
  if [ -f "$stamp_file" ]; then echo "updating edgekit[$extra] in .venv (pyproject.toml or Python changed)"
  else echo "installing edgekit[$extra] into .venv (first run: a few minutes)"; fi
  # pip's notes about local package mirrors are noise here; real errors still reach stderr. setuptools'
  # "Editable installation" banner (a BuildBackendWarning printed by the build backend on every editable
  # install) is filtered by its message only: every other warning and error still shows.
  quiet_pip() { PYTHONWARNINGS="ignore:Editable installation" .venv/bin/python -m pip install --quiet \
    --disable-pip-version-check "$@" 2> >(grep -vE "^WARNING: Location .* is ignored|^\s*$" >&2); }
  quiet_pip --upgrade pip
  quiet_pip -e ".[$extra]"
  echo "$stamp" >"$stamp_file"
fi
export PATH="$PWD/.venv/bin:$PATH"
export TF_CPP_MIN_LOG_LEVEL=3
