#!/usr/bin/env bash
# Memory benchmark of the image pipeline (docs/memory.md): generates N large JPEGs (1920x1080 to
# 3840x2160, made from the installed real photos by bench/rust/src/bin/gen-large-images.rs) and
# runs examples/images/classify.yaml over the first SMALL of them and over all N under
# /usr/bin/time -v, reporting wall time and peak RSS of each. Equal peaks (within noise) for SMALL
# and N mean memory is bounded by the pipeline's budgets, not by the number of images.
#
#   bench/memory/run.sh                  # N=2000, SMALL=500
#   N=400 SMALL=100 bench/memory/run.sh  # quicker
#
# Output: a table on stdout and bench/results/memory.tsv; the generated images stay in
# data/generated/large-images (gitignored; ~2.5 GB for 2000) for reruns.
set -euo pipefail
cd "$(dirname "$0")/../.."
N=${N:-2000}
SMALL=${SMALL:-500}
DATA=${DATA:-data/generated/large-images}
PROFILE=${PROFILE:-ci}
TARGET=${CARGO_TARGET_DIR:-target}

bash scripts/setup-models.sh >/dev/null
# shellcheck disable=SC1091
source .weir/env.sh
cargo build --profile "$PROFILE" --workspace --bins
WEIR="$TARGET/$PROFILE/weir"

mkdir -p "$DATA/all"
have=$(find "$DATA/all" -name 'large_*.jpg' | wc -l)
if [ "$have" -lt "$N" ]; then
  "$TARGET/$PROFILE/gen-large-images" --photos "$WEIR_DATA/photos" --out "$DATA/all" --count "$N"
fi
# The first SMALL images, as hard links in a folder of their own.
rm -rf "$DATA/first-$SMALL" && mkdir -p "$DATA/first-$SMALL"
find "$DATA/all" -name 'large_*.jpg' | sort | head -n "$SMALL" | xargs -I{} ln {} "$DATA/first-$SMALL/"
# All N (the folder may hold more from an earlier, larger run).
rm -rf "$DATA/first-$N" && mkdir -p "$DATA/first-$N"
find "$DATA/all" -name 'large_*.jpg' | sort | head -n "$N" | xargs -I{} ln {} "$DATA/first-$N/"

mkdir -p bench/results out/bench
results=bench/results/memory.tsv
printf 'images\tencoded_MB\twall_s\tpeak_rss_MB\timages_per_s\n' > "$results"
for n in "$SMALL" "$N"; do
  dir="$DATA/first-$n"
  mb=$(du -sm "$dir" | cut -f1)
  log="out/bench/memory-$n.log"
  /usr/bin/time -v "$WEIR" run examples/images/classify.yaml --progress log \
    --set "steps.photos.url=$dir" --var "OUT_DIR=out/bench/memory-$n" > "$log" 2>&1
  rss_kb=$(grep 'Maximum resident set size' "$log" | awk '{print $NF}')
  wall=$(grep 'Elapsed (wall clock)' "$log" | awk '{print $NF}')
  secs=$(python3 -c "p='$wall'.split(':'); print(round(sum(float(x)*60**i for i,x in enumerate(reversed(p))),1))")
  rate=$(python3 -c "print(round($n/$secs,1))")
  rows=$(grep -o 'written: results received [0-9]* rows' "$log" | awk '{print $4}')
  [ "$rows" = "$n" ] || { echo "expected $n result rows, got '$rows' (see $log)" >&2; exit 1; }
  printf '%s\t%s\t%s\t%s\t%s\n' "$n" "$mb" "$secs" "$((rss_kb / 1024))" "$rate" >> "$results"
done
column -t "$results"
