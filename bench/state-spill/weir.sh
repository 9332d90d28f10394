#!/usr/bin/env bash
# bench/state-spill/weir.sh: weir's own `op: aggregate` with window state several times its
# `memory_budget`, against the same job without a budget, side by side (rounds alternate which
# goes first). The job (bench/state-spill/pipeline.yaml): a `datagen` stream of ROWS rows with
# a random key out of KEYS, event time at 1 M rows per second in 10 s tumbling windows, so each
# window holds millions of distinct keys (count, sum, max per key) until the watermark passes
# it; results to a blackhole sink. JOB=join runs bench/state-spill/join.yaml instead: an
# interval join of two datagen streams of ROWS rows each (KEYS keys, 200-byte payloads), whose
# buffered rows are several times the budget; JOB=window_join bench/state-spill/window-join.yaml,
# the same streams joined per 10 s tumbling window; JOB=session bench/state-spill/session.yaml,
# session windows (5 s gap) over one such stream.
#
#   bench/state-spill/weir.sh [WEIR]
#
# Prints one line per run (variant, wall s, CPU s, peak RSS KiB, peak spill bytes on disk) and a
# Markdown table of medians. Environment: RUNS=3, ROWS=20000000, KEYS=4000000, BUDGET=64MiB
# (JOB=join and JOB=window_join: ROWS=2000000, KEYS=1000000, BUDGET=64MiB; JOB=session: the
# same with BUDGET=32MiB).
# WEIR defaults to target/bench-fast/weir (build it with
# `cargo build --profile bench-fast -p weir-cli`). Run by hand, never in CI.
set -euo pipefail
cd "$(dirname "$0")/../.."
WEIR=$(realpath "${1:-target/bench-fast/weir}")
[[ -x $WEIR ]] || { echo "weir.sh: no weir binary at $WEIR" >&2; exit 1; }
RUNS=${RUNS:-3}
JOB=${JOB:-aggregate}
case $JOB in
    aggregate) SPEC=bench/state-spill/pipeline.yaml SOURCES=(events)
        ROWS=${ROWS:-20000000} KEYS=${KEYS:-4000000} BUDGET=${BUDGET:-64MiB} ;;
    join) SPEC=bench/state-spill/join.yaml SOURCES=(orders payments)
        ROWS=${ROWS:-2000000} KEYS=${KEYS:-1000000} BUDGET=${BUDGET:-64MiB} ;;
    window_join) SPEC=bench/state-spill/window-join.yaml SOURCES=(orders payments)
        ROWS=${ROWS:-2000000} KEYS=${KEYS:-1000000} BUDGET=${BUDGET:-64MiB} ;;
    session) SPEC=bench/state-spill/session.yaml SOURCES=(events)
        ROWS=${ROWS:-2000000} KEYS=${KEYS:-1000000} BUDGET=${BUDGET:-32MiB} ;;
    *) echo "weir.sh: JOB is aggregate, join, window_join or session, not $JOB" >&2; exit 1 ;;
esac
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT

# run VARIANT: one run under /usr/bin/time, sampling the spill directory's size meanwhile.
run() {
    local variant=$1 args=() src
    for src in "${SOURCES[@]}"; do
        args+=(--set "steps.$src.rows=$ROWS" --set "steps.$src.columns.0.max=$KEYS")
    done
    rm -rf "$TMP/spill" && mkdir -p "$TMP/spill"
    if [[ $variant == budget ]]; then
        args+=(--set "steps.per_key.memory_budget=$BUDGET" --set "steps.per_key.spill_dir=$TMP/spill")
    fi
    ( peak=0; while sleep 0.2; do
        s=$(du -sb "$TMP/spill" 2> /dev/null | cut -f1 || true); s=${s:-0}
        (( s > peak )) && peak=$s && echo "$peak" > "$TMP/peak"
      done ) &
    local sampler=$!
    echo 0 > "$TMP/peak"
    /usr/bin/time -f '%e %U %S %M' -o "$TMP/time" \
        "$WEIR" run "$SPEC" "${args[@]}" --progress off --http off \
        > /dev/null 2> "$TMP/log" || { cat "$TMP/log" >&2; kill "$sampler"; exit 1; }
    kill "$sampler" 2> /dev/null || true; wait "$sampler" 2> /dev/null || true
    read -r wall user sys rss < "$TMP/time"
    echo "$variant $wall $(echo "$user + $sys" | bc) $rss $(cat "$TMP/peak")"
}

echo "# weir $($WEIR --version 2> /dev/null || echo '?'), job $JOB, rows $ROWS, keys $KEYS, budget $BUDGET, $(nproc) CPUs"
for ((r = 1; r <= RUNS; r++)); do
    if (( r % 2 )); then order=(none budget); else order=(budget none); fi
    for v in "${order[@]}"; do run "$v" | tee -a "$TMP/runs"; done
done
python3 - "$TMP/runs" "$ROWS" <<'EOF'
import statistics, sys
runs = [l.split() for l in open(sys.argv[1])]
rows = int(sys.argv[2])
med = lambda v, i: statistics.median(float(r[i]) for r in runs if r[0] == v)
print("\n| variant | wall s | CPU s | rows/s | peak RSS | peak spill on disk |")
print("|---|---:|---:|---:|---:|---:|")
for v in ("none", "budget"):
    print(f"| {v} | {med(v,1):.2f} | {med(v,2):.2f} | {rows/med(v,1)/1e6:.2f} M | "
          f"{med(v,3)/1024:.0f} MiB | {med(v,4)/2**20:.0f} MiB |")
print(f"\nbudget/none: wall {med('budget',1)/med('none',1):.2f}x, CPU {med('budget',2)/med('none',2):.2f}x, "
      f"peak RSS {med('budget',3)/med('none',3):.2f}x")
EOF
