#!/usr/bin/env bash
# Creates the Python virtual environment that runs weir's Python model instance
# (python/weir_instance.py: a pyarrow.flight server running the model with onnxruntime),
# from PyPI only, pinned:
#
#   scripts/setup-python-instance.sh      create / verify ${WEIR_HOME:-$REPO/.weir}/venv-instance
#
# Idempotent: a stamp file records the installed pins, so a second run installs nothing.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
WEIR_HOME="${WEIR_HOME:-$REPO/.weir}"
# The physical path: a venv's scripts name the path it was made at.
WEIR_HOME="$(mkdir -p "$WEIR_HOME" && cd -P "$WEIR_HOME" && pwd)"
VENV="$WEIR_HOME/venv-instance"
# A venv made at a path that is gone has scripts that cannot start: make it again.
if [ -d "$VENV" ] && ! "$VENV/bin/pip" --version >/dev/null 2>&1; then rm -rf "$VENV"; fi
PY="${PYTHON:-python3}"
PINS=(pyarrow==26.0.1 numpy==2.4.6 onnxruntime==1.32.0)
STAMP="$VENV/.installed-$(echo "${PINS[*]}" | tr ' ' '_')"

say() { echo "setup-python-instance: $*"; }
if [ -f "$STAMP" ]; then
  say "ok: $VENV has ${PINS[*]}"
  exit 0
fi
command -v "$PY" >/dev/null || { echo "setup-python-instance: $PY not found" >&2; exit 1; }
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --disable-pip-version-check --only-binary=:all: "${PINS[@]}"
"$VENV/bin/python" -c "import pyarrow.flight, onnxruntime, numpy; print('pyarrow', pyarrow.__version__, 'onnxruntime', onnxruntime.__version__)"
rm -f "$VENV"/.installed-*
touch "$STAMP"
say "installed ${PINS[*]} into $VENV"
