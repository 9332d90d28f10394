#!/usr/bin/env bash
# bench/run-web-load.sh: what serving the web API costs a job running at full speed.
#
# Runs the filter benchmark's pipeline (bench/filter/pipeline.yaml) over COPIES copies of
# data/generated/events.parquet (symbolic links in one folder, so a run lasts seconds, not a
# quarter of one) in two variants, alternately, RUNS rounds:
#   off  = weir run ... --http off
#   poll = weir run ... --http 127.0.0.1:0, polled 10 times a second by bench/web/poll.py
#          (GET /api/v1/overview, /metrics, /api/v1/operators in turn)
# and reports rows/s of each (median), their ratio, and the API's answer time (p50, p99, max
# over every poll of every round). Writes bench/results/web-load-<date>.md. Run by hand.
#
# Environment:
#   RUNS=5          rounds
#   COPIES=20       links to the 10 M-row file (20: 200 M rows)
#   RATE=10         API requests per second
#   PROFILE=bench-fast   build profile of weir and gen-events (bench-fast: release, codegen-units 16)
#   SKIP_BUILD=1    use the binaries already built
#   OUT=path.md     where to write the results
set -euo pipefail
cd "$(dirname "$0")/.."

RUNS=${RUNS:-5}
COPIES=${COPIES:-20}
RATE=${RATE:-10}
PROFILE=${PROFILE:-bench-fast}
SKIP_BUILD=${SKIP_BUILD:-0}
BIN=target/$PROFILE
DATA=data/generated/events.parquet
OUT=${OUT:-bench/results/web-load-$(date +%F).md}
TIME=/usr/bin/time
die() { echo "run-web-load: $*" >&2; exit 1; }

[[ -x $TIME ]] && $TIME --version 2>&1 | grep -q GNU || die "needs GNU time at $TIME"
if [[ $SKIP_BUILD != 1 ]]; then
    echo "+ cargo build --profile $PROFILE -p weir-cli -p weir-bench" >&2
    cargo build --profile "$PROFILE" -p weir-cli -p weir-bench
fi
[[ -x $BIN/weir && -x $BIN/gen-events ]] || die "$BIN/weir or $BIN/gen-events is missing"
if [[ ! -f $DATA ]]; then
    echo "+ $BIN/gen-events --rows 10000000 --out $DATA" >&2
    "$BIN/gen-events" --rows 10000000 --out "$DATA"
fi
cat "$DATA" > /dev/null

TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
mkdir "$TMP/data"
for ((i = 0; i < COPIES; i++)); do ln -s "$(pwd)/$DATA" "$TMP/data/part-$(printf %03d "$i").parquet"; done
ROWS=$((COPIES * 10000000))
WEIR=("$BIN/weir" run bench/filter/pipeline.yaml --set "steps.read.path=$TMP/data" --progress off)

run() { # run KEY ROUND: one measured run; appends "wall user sys" to $TMP/KEY.tsv
    local key=$1 round=$2 extra=() poller=
    if [[ $key == poll ]]; then
        extra=(--http 127.0.0.1:0 --job-dir "$TMP/job-$round")
        python3 bench/web/poll.py "$TMP/job-$round/api.json" "$RATE" "$TMP/lat-$round.tsv" &
        poller=$!
    else
        extra=(--http off)
    fi
    echo "+ [round $round] $key: ${WEIR[*]} ${extra[*]}" >&2
    $TIME -f '%e %U %S' -o "$TMP/$key.$round.time" "${WEIR[@]}" "${extra[@]}" > "$TMP/$key.$round.log" 2>&1 \
        || { cat "$TMP/$key.$round.log" >&2; die "weir failed"; }
    [[ -z $poller ]] || wait "$poller"
    tail -n 1 "$TMP/$key.$round.time" >> "$TMP/$key.tsv"
    echo "  $(tail -n 1 "$TMP/$key.$round.time")" >&2
}
for ((r = 1; r <= RUNS; r++)); do
    if ((r % 2)); then run off "$r"; run poll "$r"; else run poll "$r"; run off "$r"; fi
done

median() { sort -g | awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
rps() { awk -v rows="$ROWS" '{ printf "%.0f\n", rows / $1 }' "$TMP/$1.tsv"; }
off_m=$(rps off | median); poll_m=$(rps poll | median)
ratios=$(paste <(rps poll) <(rps off) | awk '{ printf "%.4f\n", $1 / $2 }')
ratio=$(echo "$ratios" | median)
cat "$TMP"/lat-*.tsv > "$TMP/lat.tsv"
n=$(wc -l < "$TMP/lat.tsv")
bad=$(awk '$2 != 200' "$TMP/lat.tsv" | wc -l)
q() { awk '{ print $3 * 1000 }' "$TMP/lat.tsv" | sort -g | awk -v q="$1" '{ v[NR] = $1 } END { i = int((NR - 1) * q + 0.5) + 1; printf "%.1f", v[i] }'; }
p50=$(q 0.5); p99=$(q 0.99); pmax=$(q 1.0)
cost=$(awk -v r="$ratio" 'BEGIN { printf "%.1f", (1 - r) * 100 }')

mkdir -p "$(dirname "$OUT")"
{
    echo "# web API load, $(date -u '+%F %H:%M UTC')"
    echo
    echo "The filter pipeline (bench/filter/pipeline.yaml) over $COPIES links to the 10 M-row events file"
    echo "($ROWS rows), with the web API off and with it on and polled $RATE times a second"
    echo "(GET /api/v1/overview, /metrics, /api/v1/operators in turn). Rounds: $RUNS, variants alternating."
    echo
    echo "| variant | rows/s per round | rows/s (median) |"
    echo "|---|---|---:|"
    echo "| --http off | $(rps off | awk '{ printf "%.1fM ", $1 / 1e6 }') | $(awk -v x="$off_m" 'BEGIN { printf "%.1f M", x / 1e6 }') |"
    echo "| --http on, $RATE polls/s | $(rps poll | awk '{ printf "%.1fM ", $1 / 1e6 }') | $(awk -v x="$poll_m" 'BEGIN { printf "%.1f M", x / 1e6 }') |"
    echo
    echo "**Throughput with the API polled / without (median of per-round ratios): $(printf '%.3f' "$ratio")×, a cost of $cost %** (ratios: $(echo "$ratios" | paste -sd' ')); target: under 2 %."
    echo
    echo "**API answer time while the job runs: p50 $p50 ms, p99 $p99 ms, max $pmax ms** over $n requests ($bad not 200); target p99 under 100 ms."
    echo
    echo "## Versions and machine"
    echo
    echo "- commit: $(git rev-parse --short HEAD) (plus uncommitted changes, if any)"
    echo "- $(rustc -V), profile \`$PROFILE\`"
    echo "- CPU: $(lscpu | awk -F: '/^Model name/ { gsub(/^ +/, "", $2); print $2; exit }'), $(nproc) CPUs; $(uname -sr); load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
    echo
    echo "## Command"
    echo
    echo '```sh'
    echo "RUNS=$RUNS COPIES=$COPIES RATE=$RATE PROFILE=$PROFILE bench/run-web-load.sh"
    echo '```'
} > "$OUT"
cat "$OUT"
