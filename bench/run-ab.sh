#!/usr/bin/env bash
# bench/run-ab.sh: two weir binaries side by side on the image, text and filter benchmarks, to
# check that a change costs no speed (issue "the plan is data": within 3 % of the previous
# commit). See bench/README.md.
#
#   bench/run-ab.sh OLD_WEIR NEW_WEIR
#
# Build the two binaries with the same profile first, e.g. for the commit before a change and
# after it (a shared target directory compiles the dependencies once):
#   git worktree add /tmp/base BASE_COMMIT
#   (cd /tmp/base && CARGO_TARGET_DIR=$PWD/../weir-ab cargo build --profile bench-fast -p weir-cli)
#   cp ../weir-ab/bench-fast/weir /tmp/weir-old   # and the same from this checkout for the new one
#
# Each round runs every workload with OLD then NEW (then NEW then OLD in the next round, so that
# neither always goes first), each under bench/measure.py; the table gives per workload the
# medians of wall seconds and CPU seconds (user+sys of the whole process) and NEW/OLD ratios
# (below 1.00 is faster). Both write the same outputs (checked). Run by hand, never in CI.
#
# Environment:
#   RUNS=5        rounds                          IMAGES=1000  generated JPEGs
#   SENTENCES=20000 generated sentences           ROWS=5000000 rows of the filter's events table
#   WORKLOADS="images text filter"                BIN=target/ci  where gen-images, gen-text and
#                                                 gen-events are (any profile: data only)
#   OUT=path.md   results file (default bench/results/ab-<date>.md)
set -euo pipefail
cd "$(dirname "$0")/.."

die() { echo "run-ab: $*" >&2; exit 1; }
[[ $# -eq 2 ]] || die "usage: bench/run-ab.sh OLD_WEIR NEW_WEIR"
OLD=$(realpath "$1")
NEW=$(realpath "$2")
[[ -x $OLD && -x $NEW ]] || die "both binaries must exist and be executable"
RUNS=${RUNS:-5}
IMAGES=${IMAGES:-1000}
SENTENCES=${SENTENCES:-20000}
ROWS=${ROWS:-5000000}
BIN=${BIN:-target/ci}
read -r -a WORKLOADS <<< "${WORKLOADS:-images text filter}"
OUT=${OUT:-bench/results/ab-$(date -u +%F).md}
[[ $RUNS =~ ^[1-9][0-9]*$ ]] || die "RUNS must be a positive integer"

bash scripts/setup-models.sh > /dev/null
# The output comparison reads Parquet: the plain-Python benchmark venv has pyarrow.
bench/python/setup.sh > /dev/null
PY=.venv-bench-py/bin/python
# shellcheck source=/dev/null
source .weir/env.sh

IMG_DIR=data/generated/images
TXT=data/generated/text/sentences.txt
EVENTS=data/generated/events-$ROWS.parquet
for w in "${WORKLOADS[@]}"; do
    case $w in
        images)
            if [[ $(find "$IMG_DIR" -name '*.jpg' 2> /dev/null | wc -l) -ne $IMAGES ]]; then
                rm -rf "$IMG_DIR"
                "$BIN/gen-images" --count "$IMAGES" --out "$IMG_DIR"
            fi
            cat "$IMG_DIR"/*.jpg > /dev/null ;;
        text)
            if [[ ! -f $TXT || $(wc -l < "$TXT") -ne $SENTENCES ]]; then
                "$BIN/gen-text" --count "$SENTENCES" --out "$(dirname "$TXT")"
            fi ;;
        filter)
            [[ -f $EVENTS ]] || "$BIN/gen-events" --rows "$ROWS" --out "$EVENTS" --seed 42
            cat "$EVENTS" > /dev/null ;;
        *) die "unknown workload '$w' (images, text, filter)" ;;
    esac
done

TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT

# command WORKLOAD BINARY OUTPUT: the benchmark's own pipeline and settings (bench/run-ai.sh,
# bench/run-filter.sh).
command() {
    case $1 in
        images) echo "$2 run bench/images/weir.yaml --set steps.images.url=$IMG_DIR --set steps.results.path=$3 --set steps.nsfw.cpus=2 --set steps.nsfw.batch.max_size=32 --progress off" ;;
        text) echo "$2 run bench/text/weir.yaml --set steps.sentences.path=$TXT --set steps.results.path=$3 --set steps.minilm.cpus=2 --set steps.minilm.batch.max_size=32 --progress off" ;;
        filter) echo "$2 run bench/filter/pipeline.yaml --set steps.read.path=$EVENTS --progress off" ;;
    esac
}

for round in $(seq 1 "$RUNS"); do
    order=(old new)
    (( round % 2 == 0 )) && order=(new old)
    for w in "${WORKLOADS[@]}"; do
        for side in "${order[@]}"; do
            bin=$OLD
            [[ $side == new ]] && bin=$NEW
            out=$TMP/out-$w-$side
            rm -rf "$out"
            # shellcheck disable=SC2046
            python3 bench/measure.py "$TMP/$w-$side-$round.log" "$TMP/m" -- $(command "$w" "$bin" "$out") \
                || die "$w with $side failed: $(tail -5 "$TMP/$w-$side-$round.log")"
            read -r wall user sys rss _ < "$TMP/m"
            echo "$w $side $round $wall $(python3 -c "print(round($user + $sys, 2))") $rss" | tee -a "$TMP/all.txt"
        done
        if [[ $w != filter ]]; then
            "$PY" - "$TMP/out-$w-old" "$TMP/out-$w-new" << 'EOF' || die "$w: the two binaries wrote different results"
import sys, pyarrow.parquet as pq
def rows(d):
    t = pq.read_table(d)
    return sorted(map(str, t.to_pylist()))
sys.exit(0 if rows(sys.argv[1]) == rows(sys.argv[2]) else 1)
EOF
        fi
    done
done

python3 - "$TMP/all.txt" "$OLD" "$NEW" "$RUNS" > "$TMP/table.md" << 'EOF'
import statistics, sys
runs = [l.split() for l in open(sys.argv[1])]
print("| workload | old wall s | new wall s | new/old wall | old CPU s | new CPU s | new/old CPU | old peak RSS | new peak RSS |")
print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
for w in dict.fromkeys(r[0] for r in runs):
    def med(side, i):
        return statistics.median(float(r[i]) for r in runs if r[0] == w and r[1] == side)
    # ratios pair by pair (same round), then the median
    rounds = sorted({r[2] for r in runs if r[0] == w})
    def ratio(i):
        by = {(r[1], r[2]): float(r[i]) for r in runs if r[0] == w}
        return statistics.median(by[("new", k)] / by[("old", k)] for k in rounds)
    print(f"| {w} | {med('old', 3):.2f} | {med('new', 3):.2f} | {ratio(3):.3f} | {med('old', 4):.2f} | "
          f"{med('new', 4):.2f} | {ratio(4):.3f} | {med('old', 5) / 1024:.0f} MiB | {med('new', 5) / 1024:.0f} MiB |")
EOF
cat "$TMP/table.md"
{
    echo "# A/B: two weir binaries on the image, text and filter benchmarks ($(date -u +%F))"
    echo
    echo "Command: \`RUNS=$RUNS IMAGES=$IMAGES SENTENCES=$SENTENCES ROWS=$ROWS bench/run-ab.sh OLD NEW\`"
    echo "(rounds alternate which binary goes first; medians; ratios are the median of the"
    echo "per-round new/old ratios). OLD: \`$(basename "$OLD")\`, NEW: \`$(basename "$NEW")\`."
    echo "Machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo);"
    echo "load average at the end: $(cut -d' ' -f1-3 /proc/loadavg). ONNX Runtime: ${ORT_DYLIB_PATH##*/}."
    echo
    cat "$TMP/table.md"
    echo
    echo "Raw runs (workload side round wall_s cpu_s peak_rss_kib):"
    echo
    echo '```'
    cat "$TMP/all.txt"
    echo '```'
} > "$OUT"
echo "wrote $OUT"
