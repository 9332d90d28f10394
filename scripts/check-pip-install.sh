#!/usr/bin/env bash
# Installs the Python package as a user does, `pip install ./python`, into a fresh virtual
# environment that has the `onnxruntime` wheel and no ORT_DYLIB_PATH, and runs
# python/smoke/pip_installed.py there: the engine and the stubs are in the install, ONNX Runtime
# is found in the wheel, and a model classifies photos. scripts/test.sh runs it.
#
#   scripts/check-pip-install.sh
#
# A user's `pip install ./python` builds with maturin's default (release) profile; this check
# builds with the suite's `ci` profile (MATURIN_PEP517_ARGS), which reuses the suite's build.
# Needs scripts/setup-models.sh first (models, photos, .weir/env.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck disable=SC1091
source .weir/env.sh
PY="${PYTHON:-python3}"
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
"$PY" -m venv "$TMP/venv"
PIP=("$TMP/venv/bin/python" -m pip install -q --disable-pip-version-check)
# The runtime dependencies and the onnxruntime wheel, from PyPI; maturin to build with.
"${PIP[@]}" --only-binary=:all: onnxruntime==1.32.0 pyarrow==26.0.1 cloudpickle==3.1.3 maturin==1.16.0
# The package itself, built in place from this checkout (no build isolation: maturin is there).
PATH="$TMP/venv/bin:$PATH" MATURIN_PEP517_ARGS="--profile ${WEIR_PIP_PROFILE:-ci}" \
    "${PIP[@]}" --no-build-isolation ./python
(cd "$TMP" && env -u ORT_DYLIB_PATH "$TMP/venv/bin/python" "$OLDPWD/python/smoke/pip_installed.py")
