#!/usr/bin/env bash
# Creates the Python virtual environment of weir's Python package (python/: the `weir` package,
# whose native module is the crate crates/weir-python, built by maturin) and installs the package
# into it, from PyPI only, pinned:
#
#   scripts/setup-python.sh      create / verify ${WEIR_HOME:-$REPO/.weir}/venv-python, build and
#                                install `weir` into it (`ci` profile, as the rest of the suite)
#
# Then `.weir/venv-python/bin/python -m pytest python/tests` runs the Python tests (scripts/test.sh
# does). The pinned packages install once (a stamp file records them); the package is rebuilt
# every time (cargo's build cache makes that quick when nothing changed).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
WEIR_HOME="${WEIR_HOME:-$REPO/.weir}"
# The physical path: a venv's scripts name the path it was made at.
WEIR_HOME="$(mkdir -p "$WEIR_HOME" && cd -P "$WEIR_HOME" && pwd)"
VENV="$WEIR_HOME/venv-python"
# A venv made at a path that is gone has scripts that cannot start: make it again.
if [ -d "$VENV" ] && ! "$VENV/bin/pip" --version >/dev/null 2>&1; then rm -rf "$VENV"; fi
PY="${PYTHON:-python3}"
PINS=(maturin==1.16.0 pyarrow==26.0.1 numpy==2.4.6 pandas==3.1.1 pytest==9.2.0 cloudpickle==3.1.3)
STAMP="$VENV/.installed-$(echo "${PINS[*]}" | tr ' ' '_')"

say() { echo "setup-python: $*"; }
command -v "$PY" >/dev/null || { echo "setup-python: $PY not found" >&2; exit 1; }
if [ ! -f "$STAMP" ]; then
  [ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check --only-binary=:all: "${PINS[@]}"
  rm -f "$VENV"/.installed-*
  touch "$STAMP"
  say "installed ${PINS[*]} into $VENV"
fi
# The package, built from this checkout with the `ci` profile (the suite's one build profile)
# into the venv: `maturin develop` installs the native module beside python/weir in place.
cd "$REPO/python"
VIRTUAL_ENV="$VENV" PATH="$VENV/bin:$PATH" "$VENV/bin/maturin" develop --profile ci -q
"$VENV/bin/python" -c "import weir, pyarrow; print('weir', weir.__version__, 'pyarrow', pyarrow.__version__)"
say "ok: weir installed into $VENV"
