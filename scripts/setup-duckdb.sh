#!/usr/bin/env bash
# Creates the Python virtual environment in which the Nexmark query checks
# (tests/nexmark/check.py) compute each query's answer independently with DuckDB, from PyPI only,
# pinned:
#
#   scripts/setup-duckdb.sh      create / verify ${WEIR_HOME:-$REPO/.weir}/venv-duckdb
#
# Idempotent: a stamp file records the installed pins, so a second run installs nothing.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
WEIR_HOME="${WEIR_HOME:-$REPO/.weir}"
# The physical path: a venv's scripts name the path it was made at.
WEIR_HOME="$(mkdir -p "$WEIR_HOME" && cd -P "$WEIR_HOME" && pwd)"
VENV="$WEIR_HOME/venv-duckdb"
# A venv made at a path that is gone has scripts that cannot start: make it again.
if [ -d "$VENV" ] && ! "$VENV/bin/pip" --version >/dev/null 2>&1; then rm -rf "$VENV"; fi
PY="${PYTHON:-python3}"
PINS=(duckdb==2.0.0)
STAMP="$VENV/.installed-$(echo "${PINS[*]}" | tr ' ' '_')"

say() { echo "setup-duckdb: $*"; }
if [ -f "$STAMP" ]; then
  say "ok: $VENV has ${PINS[*]}"
  exit 0
fi
command -v "$PY" >/dev/null || { echo "setup-duckdb: $PY not found" >&2; exit 1; }
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --disable-pip-version-check --only-binary=:all: "${PINS[@]}"
"$VENV/bin/python" -c "import duckdb; print('duckdb', duckdb.__version__)"
rm -f "$VENV"/.installed-*
touch "$STAMP"
say "installed ${PINS[*]} into $VENV"
