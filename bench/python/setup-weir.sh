#!/usr/bin/env bash
# bench/python/setup-weir.sh: the venv of the weir Python-API variant of the AI benchmarks,
# .venv-bench-weir: pinned pyarrow/numpy/cloudpickle, and the `weir` package built from this
# checkout as a wheel with the optimised `bench-fast` profile (the profile of the `weir` binary the
# YAML variant runs), installed into the venv (a copy, so the test suite's `ci` build of
# python/weir, made in place by scripts/setup-python.sh, is not touched).
#
#   bench/python/setup-weir.sh            make / update the venv, rebuild and reinstall the wheel
#   SKIP_BUILD=1 bench/python/setup-weir.sh   only the venv (keep the installed wheel)
#
# The wheel build is a cargo build of crates/weir-python with that profile (quick when nothing
# changed). Needs a Rust toolchain and python3 >= 3.10 with venv and pip.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$(pwd -P)
source bench/python/venv.sh
VENV=.venv-bench-weir
make_venv "$VENV" maturin==1.16.0 pyarrow==23.0.1 numpy==2.4.6 cloudpickle==3.1.3
if [[ ${SKIP_BUILD:-0} != 1 || ! -f $VENV/.weir-wheel ]]; then
    WHEELS=$ROOT/target/bench-fast-wheels
    rm -rf "$WHEELS"
    echo "+ (cd python && maturin build --profile bench-fast --out target/bench-fast-wheels)" >&2
    (cd python && "$ROOT/$VENV/bin/maturin" build --quiet --profile bench-fast \
        --interpreter "$ROOT/$VENV/bin/python" --out "$WHEELS")
    wheel=$(ls "$WHEELS"/weir-*.whl)
    "$VENV/bin/python" -m pip install --quiet --force-reinstall --no-deps "$wheel"
    basename "$wheel" > "$VENV/.weir-wheel"
fi
# from outside the checkout, so the installed copy is what imports
(cd / && "$ROOT/$VENV/bin/python" -c "import weir, pyarrow; print('bench setup: weir', weir.__version__, 'from', weir.__file__, 'pyarrow', pyarrow.__version__)" >&2)
