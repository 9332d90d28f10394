#!/usr/bin/env bash
# bench/python/setup-weir.sh: the venv of the weir Python-API variant of the AI benchmarks,
# .venv-bench-weir: pinned pyarrow/numpy/cloudpickle, and the `weir` package of this checkout
# with its native module built with the optimised `bench-fast` profile, as the `weir` binary the
# YAML variant runs, installed into the venv's site-packages (a copy, so the test suite's `ci`
# build of python/weir, made in place by scripts/setup-python.sh, is not touched).
#
#   bench/python/setup-weir.sh                 make / update the venv, build, (re)install weir
#   SKIP_BUILD=1 bench/python/setup-weir.sh    install target/bench-fast/lib_weir.so as it is
#
# The native module is the cdylib of crates/weir-python from `cargo build --workspace --profile
# bench-fast`: the same build, with the same features of every dependency, as the `weir` binary
# (`maturin build --profile bench-fast` builds the one crate, whose smaller feature set makes
# cargo compile DataFusion a second time). The package is what the wheel holds: python/weir's
# files, with the module as weir/_weir.abi3.so. Needs a Rust toolchain and python3 >= 3.10.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$(pwd -P)
source bench/python/venv.sh
VENV=.venv-bench-weir
make_venv "$VENV" pyarrow==23.0.1 numpy==2.4.6 cloudpickle==3.1.3
if [[ ${SKIP_BUILD:-0} != 1 ]]; then
    echo "+ cargo build --workspace --profile bench-fast" >&2
    cargo build --workspace --profile bench-fast
fi
so=target/bench-fast/lib_weir.so
[[ -f $so ]] || { echo "setup-weir: $so is missing (build it, or drop SKIP_BUILD)" >&2; exit 1; }
site=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
rm -rf "$site/weir"
mkdir -p "$site/weir"
cp python/weir/*.py python/weir/*.pyi python/weir/py.typed "$site/weir/"
cp "$so" "$site/weir/_weir.abi3.so"
git rev-parse --short HEAD 2>/dev/null > "$VENV/.weir-build" || echo unknown > "$VENV/.weir-build"
# from outside the checkout, so the installed copy is what imports
(cd / && "$ROOT/$VENV/bin/python" -c "import weir, pyarrow; print('bench setup: weir', weir.__version__, 'from', weir.__file__, 'pyarrow', pyarrow.__version__)" >&2)
