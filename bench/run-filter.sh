#!/usr/bin/env bash
# bench/run-filter.sh: the `filter` benchmark (see bench/README.md).
#
# Builds weir and the hand-written arrow-rs baseline with the bench-fast
# profile, generates data/generated/events.parquet (10 M rows) once, then runs
#   A = weir run bench/filter/pipeline.yaml --parallelism 1
#   B = arrow-loop (single thread, projection pushdown)
#   C = weir ... --parallelism 2                      (extra row)
#   D = arrow-loop --all-columns (no pushdown)       (extra row)
# alternately (A B C D, RUNS times) under GNU time, prints a table and writes
# it to bench/results/filter-<date>.md. Run by hand, not in CI.
#
# Environment:
#   RUNS=3          rounds (each round runs A B C D once)
#   ROWS=10000000   rows in the generated file (other sizes use events-<ROWS>.parquet)
#   SKIP_BUILD=1    use the binaries already in target/bench-fast
#   LOOP_ONLY=1     run only the baseline (B, D): for checking the harness without weir
#   WEIR=path       the weir binary to measure (default target/bench-fast/weir)
#   OUT=path.md     where to write the results (default bench/results/filter-<date>.md)
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$(pwd)

RUNS=${RUNS:-3}
ROWS=${ROWS:-10000000}
SKIP_BUILD=${SKIP_BUILD:-0}
LOOP_ONLY=${LOOP_ONLY:-0}
PROFILE=bench-fast
BIN=target/$PROFILE
PIPELINE=bench/filter/pipeline.yaml
if [[ $ROWS == 10000000 ]]; then
    DATA=data/generated/events.parquet
else
    DATA=data/generated/events-$ROWS.parquet
fi
WEIR=${WEIR:-$BIN/weir}
OUT=${OUT:-bench/results/filter-$(date +%F).md}
TIME=/usr/bin/time

die() { echo "run-filter: $*" >&2; exit 1; }

# --- preconditions ----------------------------------------------------------
if [[ ! -x $TIME ]] || ! $TIME --version 2>&1 | grep -q GNU; then
    die "needs GNU time at $TIME (Debian/Ubuntu: apt-get install time)"
fi
[[ $RUNS =~ ^[1-9][0-9]*$ ]] || die "RUNS must be a positive integer, got '$RUNS'"
[[ $ROWS =~ ^[1-9][0-9]*$ ]] || die "ROWS must be a positive integer, got '$ROWS'"
if [[ $LOOP_ONLY != 1 && $SKIP_BUILD != 1 && ! -f crates/weir-cli/Cargo.toml ]]; then
    die "crates/weir-cli does not exist yet; LOOP_ONLY=1 runs only the baseline"
fi

# --- build ------------------------------------------------------------------
if [[ $SKIP_BUILD != 1 ]]; then
    packages=(-p weir-bench)
    [[ $LOOP_ONLY == 1 ]] || packages+=(-p weir-cli)
    echo "+ cargo build --profile $PROFILE ${packages[*]}" >&2
    cargo build --profile "$PROFILE" "${packages[@]}"
fi
for b in gen-events arrow-loop; do
    [[ -x $BIN/$b ]] || die "$BIN/$b is missing (build it, or drop SKIP_BUILD)"
done
[[ $LOOP_ONLY == 1 || -x $WEIR ]] || die "$WEIR is missing"

# --- data -------------------------------------------------------------------
if [[ ! -f $DATA ]]; then
    echo "+ $BIN/gen-events --rows $ROWS --out $DATA" >&2
    "$BIN/gen-events" --rows "$ROWS" --out "$DATA"
fi
# Read the file once so every run finds it in the page cache (no run pays
# for the disk; the cache cannot be dropped without root).
cat "$DATA" > /dev/null

# --- the runs ---------------------------------------------------------------
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT

WEIR_CMD=("$WEIR" run "$PIPELINE" --set "steps.read.path=$DATA")
LOOP_CMD=("$BIN/arrow-loop" --file "$DATA" --batch-size 8192)

# Variants: key, label, command (as one string, only our own fixed words).
declare -a KEYS LABELS CMDS
add_variant() { KEYS+=("$1"); LABELS+=("$2"); CMDS+=("$3"); }
if [[ $LOOP_ONLY != 1 ]]; then
    add_variant weir1 "weir, parallelism 1" "${WEIR_CMD[*]} --parallelism 1"
fi
add_variant loop "arrow-loop (4 of 7 columns decoded)" "${LOOP_CMD[*]}"
if [[ $LOOP_ONLY != 1 ]]; then
    add_variant weir2 "weir, parallelism 2" "${WEIR_CMD[*]} --parallelism 2"
fi
add_variant loopall "arrow-loop --all-columns" "${LOOP_CMD[*]} --all-columns"

# run KEY ROUND CMD: one measured run; appends "round wall user sys rss_kib" to $TMP/KEY.tsv
run() {
    local key=$1 round=$2 cmd=$3
    local log=$TMP/$key.$round.log tf=$TMP/$key.$round.time
    echo "+ [round $round] $cmd" >&2
    # shellcheck disable=SC2086 # the command is our own words, split on purpose
    if ! $TIME -f '%e %U %S %M' -o "$tf" $cmd > "$log" 2>&1; then
        cat "$log" >&2
        die "'$cmd' failed (log above)"
    fi
    local wall user sys rss
    read -r wall user sys rss < <(tail -n 1 "$tf")
    echo "$round $wall $user $sys $rss" >> "$TMP/$key.tsv"
    printf '  wall %ss  cpu %ss  rss %s MiB\n' "$wall" \
        "$(awk -v u="$user" -v s="$sys" 'BEGIN { printf "%.2f", u + s }')" \
        "$((rss / 1024))" >&2
}

for ((r = 1; r <= RUNS; r++)); do
    for i in "${!KEYS[@]}"; do
        run "${KEYS[$i]}" "$r" "${CMDS[$i]}"
    done
done

# --- the table --------------------------------------------------------------
median() { sort -g | awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

# rows/s, cpu-s and RSS (MiB) of one run line
per_run() { awk -v rows="$ROWS" '{ printf "%.0f %.2f %.0f %s\n", rows / $2, $3 + $4, $5 / 1024, $2 }'; }

table=$TMP/table.md
{
    echo "| variant | run | wall (s) | rows/s | CPU-seconds (user+sys) | peak RSS (MiB) |"
    echo "|---|---|---:|---:|---:|---:|"
    for i in "${!KEYS[@]}"; do
        key=${KEYS[$i]} label=${LABELS[$i]}
        per_run < "$TMP/$key.tsv" > "$TMP/$key.calc"
        n=0
        while read -r rps cpu rss wall; do
            n=$((n + 1))
            printf '| %s | %d | %.2f | %s | %s | %s |\n' "$label" "$n" "$wall" \
                "$(awk -v x="$rps" 'BEGIN { printf "%.1f M", x / 1e6 }')" "$cpu" "$rss"
        done < "$TMP/$key.calc"
        m_wall=$(awk '{ print $4 }' "$TMP/$key.calc" | median)
        m_rps=$(awk '{ print $1 }' "$TMP/$key.calc" | median)
        m_cpu=$(awk '{ print $2 }' "$TMP/$key.calc" | median)
        m_rss=$(awk '{ print $3 }' "$TMP/$key.calc" | median)
        printf '| **%s** | **median** | **%.2f** | **%s** | **%.2f** | **%.0f** |\n' "$label" "$m_wall" \
            "$(awk -v x="$m_rps" 'BEGIN { printf "%.1f M", x / 1e6 }')" "$m_cpu" "$m_rss"
    done
} > "$table"

ratio_line=""
if [[ $LOOP_ONLY != 1 ]]; then
    # Pairwise ratios weir1/loop of rows/s over the same round, then their median.
    ratios=$(paste -d' ' "$TMP/weir1.calc" "$TMP/loop.calc" | awk '{ printf "%.3f\n", $1 / $5 }')
    ratio=$(echo "$ratios" | median)
    ratios2=$(paste -d' ' "$TMP/weir2.calc" "$TMP/loop.calc" | awk '{ printf "%.3f\n", $1 / $5 }')
    ratio2=$(echo "$ratios2" | median)
    # The same in CPU time (loop CPU-s / weir CPU-s per round): steadier than wall time on a busy machine.
    cpu_ratios=$(paste -d' ' "$TMP/weir1.calc" "$TMP/loop.calc" | awk '{ printf "%.3f\n", ($2 > 0 ? $6 / $2 : 0) }')
    cpu_ratio=$(echo "$cpu_ratios" | median)
    verdict=$(awk -v r="$ratio" 'BEGIN { print (r >= 0.8 ? "meets" : "MISSES") }')
    ratio_line="**Ratio weir/arrow-loop (rows/s, median of $RUNS pairwise ratios): $(printf '%.2f' "$ratio")×** \
(pairs: $(echo "$ratios" | paste -sd' ')); target ≥ 0.80×: $verdict. \
With --parallelism 2: $(printf '%.2f' "$ratio2")× (pairs: $(echo "$ratios2" | paste -sd' ')). \
CPU-time ratio arrow-loop/weir (parallelism 1, median): $(printf '%.2f' "$cpu_ratio")× (pairs: $(echo "$cpu_ratios" | paste -sd' '))."
fi

# --- versions and machine ----------------------------------------------------
lock_version() {
    awk -v n="$1" '$0 == "name = \"" n "\"" { getline; gsub(/version = |"/, ""); print; exit }' Cargo.lock
}
ver() { local v; v=$(lock_version "$1"); echo "${v:-not in Cargo.lock}"; }
cpu_model=$(lscpu 2>/dev/null | awk -F: '/^Model name/ { gsub(/^ +/, "", $2); print $2; exit }')
rows_out=$(grep -ho 'rows_out=[0-9]*' "$TMP"/loop.1.log | cut -d= -f2 || true)
data_mib=$(( $(stat -c %s "$DATA") / 1024 / 1024 ))

mkdir -p "$(dirname "$OUT")"
{
    echo "# filter benchmark, $(date -u '+%F %H:%M UTC')"
    echo
    echo "Filter \`amount > 500 AND category = 'books'\` + project \`id, amount * 1.2 AS gross, upper(category) AS category, quantity\`"
    echo "over $ROWS generated rows ($DATA, $data_mib MiB, snappy, 1 M-row row groups) into a blackhole;"
    echo "rows/s = input rows / wall time. Rounds: $RUNS, the variants run alternately within each round."
    echo "Rows out (arrow-loop): ${rows_out:-?}."
    echo
    cat "$table"
    echo
    [[ -z $ratio_line ]] || { echo "$ratio_line"; echo; }
    echo "## Versions and machine"
    echo
    echo "- commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown) (plus any uncommitted changes in the working tree)"
    echo "- $(rustc -V), profile \`$PROFILE\` (release, codegen-units 16, no LTO)"
    echo "- arrow $(ver arrow), parquet $(ver parquet), datafusion $(ver datafusion) (from Cargo.lock)"
    echo "- CPU: ${cpu_model:-unknown}, $(nproc) CPUs online; $(uname -sr)"
    echo "- memory: $(free -g 2>/dev/null | awk '/^Mem:/ { print $2 " GiB" }')"
    echo
    echo "## Command"
    echo
    echo '```sh'
    echo "RUNS=$RUNS ROWS=$ROWS bench/run-filter.sh"
    for i in "${!KEYS[@]}"; do echo "# ${LABELS[$i]}: ${CMDS[$i]}"; done
    echo '```'
    if [[ $LOOP_ONLY != 1 ]]; then
        echo
        echo "## weir's output (round 1, parallelism 1, last 20 lines)"
        echo
        echo '```'
        tail -n 20 "$TMP/weir1.1.log" | sed 's/\x1b\[[0-9;]*m//g' # without colour codes
        echo '```'
    fi
} > "$OUT"

echo
cat "$table"
echo
[[ -z $ratio_line ]] || echo "$ratio_line"
echo "results written to $OUT"
