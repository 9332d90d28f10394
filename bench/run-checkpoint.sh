#!/usr/bin/env bash
# bench/run-checkpoint.sh: the checkpoint benchmarks (cost of 1 s checkpoints, checkpoint duration
# under inference backpressure aligned vs unaligned, recovery time after kill -9); see
# bench/README.md and bench/checkpoint/run.py. Run by hand, not in CI.
#
#   bench/run-checkpoint.sh [cost] [backpressure] [recovery]     (default: all three)
#
# Environment:
#   RUNS=3          rounds of each comparison (report medians)
#   IMAGES_N=300    photos for the backpressure and recovery jobs (from data/generated/images)
#   KILL_AFTER=6    seconds into the job at which the recovery benchmark kills it
#   SKIP_BUILD=1    use the binaries already in target/bench-fast
#   OUT=path.md     where to write the results (default bench/results/checkpoint-<date>.md)
set -euo pipefail
cd "$(dirname "$0")/.."

IMAGES_N=${IMAGES_N:-300}
OUT=${OUT:-bench/results/checkpoint-$(date +%F).md}
BIN=target/bench-fast

[[ -f .weir/env.sh ]] || scripts/setup-models.sh
# shellcheck source=/dev/null
source .weir/env.sh
if [[ ${SKIP_BUILD:-0} != 1 ]]; then
    cargo build --profile bench-fast -p weir-cli -p weir-bench
fi
[[ -f data/generated/events.parquet ]] || "$BIN/gen-events" --rows 10000000 --out data/generated/events.parquet
[[ -d data/generated/images ]] || "$BIN/gen-images" --count 3000 --out data/generated/images
cat data/generated/events.parquet > /dev/null

IMAGES=data/generated/checkpoint-images-$IMAGES_N
if [[ ! -d $IMAGES ]]; then
    mkdir -p "$IMAGES"
    find data/generated/images -name '*.jpg' | sort | sed -n "1,${IMAGES_N}p" |
        while read -r f; do ln -s "$(realpath "$f")" "$IMAGES/"; done
fi

mkdir -p "$(dirname "$OUT")"
{
    echo "## Checkpoint benchmarks, $(date -u +%FT%TZ)"
    echo
    echo "- weir $(git rev-parse --short HEAD), profile bench-fast; $(nproc) cores; RUNS=${RUNS:-3}, IMAGES_N=$IMAGES_N"
    echo "- command: bench/run-checkpoint.sh $*"
    echo
} >> "$OUT"
IMAGES=$IMAGES WEIR=$BIN/weir python3 bench/checkpoint/run.py "$OUT" "$@"
echo "results appended to $OUT" >&2
