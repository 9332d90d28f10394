#!/usr/bin/env bash
# Creates the Python virtual environment in which the Nexmark benchmark runs Apache Flink for
# comparison (bench/nexmark/flink_nexmark.py): PyFlink from PyPI, whose wheel holds a full Flink
# and starts its local mini-cluster. Needs a Java 17 runtime (`java` on PATH). Pinned:
#
#   scripts/setup-flink.sh      create / verify ${WEIR_HOME:-$REPO/.weir}/venv-flink
#
# Idempotent: a stamp file records the installed pins, so a second run installs nothing.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
WEIR_HOME="${WEIR_HOME:-$REPO/.weir}"
VENV="$WEIR_HOME/venv-flink"
PY="${PYTHON:-python3}"
PINS=(apache-flink==2.3.0)
STAMP="$VENV/.installed-$(echo "${PINS[*]}" | tr ' ' '_')"

say() { echo "setup-flink: $*"; }
if [ -f "$STAMP" ]; then
  say "ok: $VENV has ${PINS[*]}"
  exit 0
fi
command -v "$PY" >/dev/null || { echo "setup-flink: $PY not found" >&2; exit 1; }
command -v java >/dev/null || { echo "setup-flink: java not found (PyFlink needs a Java 17 runtime)" >&2; exit 1; }
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --disable-pip-version-check --prefer-binary "${PINS[@]}"
"$VENV/bin/python" -c "import pyflink.version as v; print('pyflink', v.__version__)"
rm -f "$VENV"/.installed-*
touch "$STAMP"
say "installed ${PINS[*]} into $VENV"
