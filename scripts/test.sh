#!/usr/bin/env bash
# The whole test suite: unit, integration and golden-pipeline tests of every crate.
# Uses the `ci` cargo profile (no debug info) so a cold build stays short.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --workspace --profile ci "$@"
