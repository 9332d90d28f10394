#!/usr/bin/env bash
# bench/python/setup.sh: the plain-Python baseline's venv, .venv-bench-py (pinned versions).
# Idempotent: a second run with the same pins does nothing.
set -euo pipefail
cd "$(dirname "$0")/../.."
source bench/python/venv.sh
make_venv .venv-bench-py \
    onnxruntime==1.32.0 numpy==2.4.6 pillow==12.3.0 tokenizers==0.23.3 pyarrow==23.0.1
