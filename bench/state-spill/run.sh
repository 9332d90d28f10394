#!/usr/bin/env bash
# Keyed state several times a memory budget: the same keyed aggregation over four stores
# (in memory without a budget; Arrow IPC spill of whole key groups; sorted Arrow IPC runs of
# partial aggregates merged at the read; redb), at uniform-random and Zipf-skewed keys.
# Prints one JSON line per run (rows/s, peak RSS, spill bytes) and a Markdown table.
#
#   bench/state-spill/run.sh [KEYS] [ROWS] [BUDGET_MIB] [MAX_SECONDS]
#
# Defaults: 2 M keys drawn (about 1.9 M distinct under uniform, ~140 MiB of state), 4 M rows,
# a 32 MiB budget, at most 45 s of input per run (a store too slow to finish reports the rows
# it took in that time).
set -euo pipefail
cd "$(dirname "$0")/../.."
KEYS="${1:-2000000}"
ROWS="${2:-4000000}"
BUDGET="${3:-32}"
MAX_SECONDS="${4:-45}"
cargo build --workspace --profile bench-fast --bin state-spill >&2
BIN="${CARGO_TARGET_DIR:-target}/bench-fast/state-spill"
SPILL="$(mktemp -d)"
trap 'rm -rf "$SPILL"' EXIT
for dist in uniform zipf; do
  for store in memory arrow-spill arrow-runs redb; do
    rm -rf "${SPILL:?}"/*
    "$BIN" --store "$store" --keys "$KEYS" --rows "$ROWS" --dist "$dist" \
      --budget-mib "$BUDGET" --dir "$SPILL" --max-seconds "$MAX_SECONDS"
  done
done
