#!/usr/bin/env bash
# bench/ray/setup.sh: Ray Data's venv, .venv-bench-ray (pinned versions). Idempotent.
set -euo pipefail
cd "$(dirname "$0")/../.."
source bench/python/venv.sh
make_venv .venv-bench-ray \
    "ray[data]==2.60.0" onnxruntime==1.32.0 numpy==2.4.6 pillow==12.3.0 tokenizers==0.23.3 \
    pyarrow==23.0.1 pandas==2.3.3
