#!/usr/bin/env bash
# bench/run-ai.sh: the AI benchmarks (image classification, text embedding), weir against a
# hand-written Rust loop, a plain Python loop, Daft and Ray Data. See bench/README.md.
#
#   bench/run-ai.sh [images|text|all]        (default all)
#
# Sets up what is missing (ONNX Runtime and models via scripts/setup-models.sh, the three Python
# venvs via bench/*/setup.sh, the bench-fast binaries, the generated data), then for each round
# runs the five variants one after another, each under bench/measure.py (GNU time + a sampler of
# the whole process tree), waiting before each run until the 1-minute load average is below
# LOAD_MAX. Afterwards it checks that all five produced the same results as the Rust loop
# (bench/verify_ai.py), prints the table (bench/ai_table.py) and writes bench/results/ai-<date>.md.
# Run by hand, never in CI.
#
# Environment:
#   RUNS=3            rounds (each round runs every variant once, in the order below)
#   IMAGES=3000       generated JPEGs          SENTENCES=20000  generated sentences
#   VARIANTS="weir loop python daft ray"       which variants, in run order (also: loop-nospin,
#                                              the Rust loop with ONNX Runtime's spinning off)
#   BATCH=32          batch size of every variant (weir: batch.max_size)
#   THREADS=2         ONNX Runtime intra-op threads of every variant (weir: cpus)
#   LOAD_MAX=1.0      wait until the 1-minute load average is below this before each run
#   LOAD_WAIT=900     ... but at most this many seconds (then run anyway and say so)
#   SKIP_BUILD=1      use the binaries already in target/bench-fast
#   SKIP_SETUP=1      do not run the venv setup scripts (they are no-ops when up to date anyway)
#   WEIR=path         the weir binary (default target/bench-fast/weir)
#   OUT=path.md       results file (default bench/results/ai-<date>.md)
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$(pwd)

WHAT=${1:-all}
case $WHAT in images | text) WORKLOADS=("$WHAT") ;; all) WORKLOADS=(images text) ;;
    *) echo "usage: bench/run-ai.sh [images|text|all]" >&2; exit 2 ;; esac
RUNS=${RUNS:-3}
IMAGES=${IMAGES:-3000}
SENTENCES=${SENTENCES:-20000}
read -r -a VARIANTS <<< "${VARIANTS:-weir loop python daft ray}"
BATCH=${BATCH:-32}
THREADS=${THREADS:-2}
LOAD_MAX=${LOAD_MAX:-1.0}
LOAD_WAIT=${LOAD_WAIT:-900}
SKIP_BUILD=${SKIP_BUILD:-0}
SKIP_SETUP=${SKIP_SETUP:-0}
PROFILE=bench-fast
BIN=target/$PROFILE
WEIR=${WEIR:-$BIN/weir}
OUT=${OUT:-bench/results/ai-$(date +%F).md}
IMG_DIR=data/generated/images
TXT=data/generated/text/sentences.txt
JSONL=data/generated/text/sentences.jsonl
RES=out/bench

die() { echo "run-ai: $*" >&2; exit 1; }
has() { local x; for x in "${VARIANTS[@]}"; do [[ $x == "$1" ]] && return 0; done; return 1; }

# --- preconditions and set-up -------------------------------------------------------------
[[ -x /usr/bin/time ]] && /usr/bin/time --version 2>&1 | grep -q GNU ||
    die "needs GNU time at /usr/bin/time (apt-get install time)"
[[ $RUNS =~ ^[1-9][0-9]*$ ]] || die "RUNS must be a positive integer"
scripts/setup-models.sh > /dev/null
# shellcheck source=/dev/null
source .weir/env.sh
export BENCH_ORT_THREADS=$THREADS
if [[ $SKIP_SETUP != 1 ]]; then
    has python && bench/python/setup.sh
    has daft && bench/daft/setup.sh
    has ray && bench/ray/setup.sh
    # the verifier runs in the plain-Python venv
    has python || bench/python/setup.sh
fi
if [[ $SKIP_BUILD != 1 ]]; then
    echo "+ cargo build --profile $PROFILE -p weir-bench -p weir-cli" >&2
    cargo build --profile "$PROFILE" -p weir-bench -p weir-cli
fi
for b in gen-images gen-text images-loop text-loop; do
    [[ -x $BIN/$b ]] || die "$BIN/$b is missing (build it, or drop SKIP_BUILD)"
done
! has weir || [[ -x $WEIR ]] || die "$WEIR is missing"

# --- data ---------------------------------------------------------------------------------
for w in "${WORKLOADS[@]}"; do
    if [[ $w == images ]]; then
        "$BIN/gen-images" --count "$IMAGES" --out "$IMG_DIR"
        cat "$IMG_DIR"/*.jpg > /dev/null # into the page cache
    else
        if [[ ! -f $TXT || $(wc -l < "$TXT") -ne $SENTENCES ]]; then
            "$BIN/gen-text" --count "$SENTENCES" --out "$(dirname "$TXT")"
        fi
    fi
done

# --- the variants ---------------------------------------------------------------------------
# command WORKLOAD VARIANT: prints the command (our own words, split on spaces)
command_of() {
    local o=$RES/$1-$2
    case $1/$2 in
    images/weir) echo "$WEIR run bench/images/weir.yaml --set steps.images.url=$IMG_DIR --set steps.results.path=$o --set steps.nsfw.cpus=$THREADS --set steps.nsfw.batch.max_size=$BATCH --metrics-json $o.metrics.json" ;;
    images/loop) echo "$BIN/images-loop --dir $IMG_DIR --batch-size $BATCH --threads $THREADS --out $o.parquet" ;;
    images/loop-nospin) echo "$BIN/images-loop --dir $IMG_DIR --batch-size $BATCH --threads $THREADS --no-spin --out $o.parquet" ;;
    images/python) echo ".venv-bench-py/bin/python bench/python/images_loop.py $IMG_DIR $o.parquet" ;;
    images/daft) echo ".venv-bench-daft/bin/python bench/daft/images.py $IMG_DIR $o" ;;
    images/ray) echo ".venv-bench-ray/bin/python bench/ray/images.py $IMG_DIR $o" ;;
    text/weir) echo "$WEIR run bench/text/weir.yaml --set steps.sentences.path=$TXT --set steps.results.path=$o --set steps.minilm.cpus=$THREADS --set steps.minilm.batch.max_size=$BATCH --metrics-json $o.metrics.json" ;;
    text/loop) echo "$BIN/text-loop --input $TXT --batch-size $BATCH --threads $THREADS --out $o.parquet" ;;
    text/loop-nospin) echo "$BIN/text-loop --input $TXT --batch-size $BATCH --threads $THREADS --no-spin --out $o.parquet" ;;
    text/python) echo ".venv-bench-py/bin/python bench/python/text_loop.py $TXT $o.parquet" ;;
    text/daft) echo ".venv-bench-daft/bin/python bench/daft/text.py $JSONL $o" ;;
    text/ray) echo ".venv-bench-ray/bin/python bench/ray/text.py $JSONL $o" ;;
    esac
}
output_of() {
    case $2 in loop | loop-nospin | python) echo "$RES/$1-$2.parquet" ;; *) echo "$RES/$1-$2" ;; esac
}

load1() { cut -d' ' -f1 /proc/loadavg; }
wait_quiet() {
    local waited=0
    while awk -v l="$(load1)" -v m="$LOAD_MAX" 'BEGIN { exit !(l >= m) }'; do
        if ((waited >= LOAD_WAIT)); then
            echo "run-ai: load $(load1) still >= $LOAD_MAX after ${LOAD_WAIT}s; running anyway" >&2
            return
        fi
        ((waited % 60 == 0)) && echo "  waiting for load < $LOAD_MAX (now $(load1))" >&2
        sleep 5
        waited=$((waited + 5))
    done
}

TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
mkdir -p "$RES" bench/results
RUNS_TSV=$TMP/runs.tsv
: > "$RUNS_TSV"

for w in "${WORKLOADS[@]}"; do
    if [[ $w == images ]]; then items=$IMAGES; else items=$SENTENCES; fi
    for ((r = 1; r <= RUNS; r++)); do
        for v in "${VARIANTS[@]}"; do
            cmd=$(command_of "$w" "$v")
            rm -rf "$(output_of "$w" "$v")"
            wait_quiet
            load=$(load1)
            echo "+ [$w round $r, load $load] $cmd" >&2
            log=$TMP/$w-$v-$r.log
            # shellcheck disable=SC2086 # our own words, split on purpose
            if ! python3 bench/measure.py "$log" "$TMP/m" -- $cmd; then
                tail -n 40 "$log" >&2
                die "'$cmd' failed (log above)"
            fi
            read -r wall user sys rss tcpu trss _rc < "$TMP/m"
            echo "$w $v $r $items $load $wall $user $sys $rss $tcpu $trss" >> "$RUNS_TSV"
            cp "$log" "$TMP/$w-$v.last.log"
            printf '  wall %ss  cpu %ss (tree %ss)  rss %s MiB (tree %s MiB)  %s items/s\n' "$wall" \
                "$(awk -v u="$user" -v s="$sys" 'BEGIN { printf "%.1f", u + s }')" "$tcpu" \
                "$((rss / 1024))" "$((trss / 1024))" \
                "$(awk -v n="$items" -v t="$wall" 'BEGIN { printf "%.1f", n / t }')" >&2
        done
    done
done

# --- same results? ------------------------------------------------------------------------------
verify=$TMP/verify.txt
: > "$verify"
verified=1
for w in "${WORKLOADS[@]}"; do
    has loop || { echo "$w: not verified (the Rust loop, the reference, did not run)" >> "$verify"; continue; }
    args=()
    for v in "${VARIANTS[@]}"; do
        [[ $v == loop ]] || args+=("$v=$(output_of "$w" "$v")")
    done
    echo "$w (reference: the Rust loop's output, last round):" >> "$verify"
    if ! .venv-bench-py/bin/python bench/verify_ai.py "$w" "$(output_of "$w" loop)" "${args[@]}" >> "$verify"; then
        verified=0
    fi
done
cat "$verify" >&2

# --- the report ---------------------------------------------------------------------------------
table=$TMP/table.md
python3 bench/ai_table.py "$RUNS_TSV" > "$table"
lock_version() {
    awk -v n="$1" '$0 == "name = \"" n "\"" { getline; gsub(/version = |"/, ""); print; exit }' Cargo.lock
}
pyver() { "$1/bin/python" -m pip freeze 2>/dev/null | grep -iE "^($2)==" | paste -sd' ' || true; }
cpu_model=$(lscpu 2>/dev/null | awk -F: '/^Model name/ { gsub(/^ +/, "", $2); print $2; exit }')
{
    echo "# AI benchmarks, $(date -u '+%F %H:%M UTC')"
    echo
    echo "Workloads: $(printf '%s ' "${WORKLOADS[@]}")(images: $IMAGES JPEGs of data/generated/images, open-nsfw;"
    echo "text: $SENTENCES sentences of data/generated/text, MiniLM int8). Batch $BATCH, ONNX Runtime intra-op"
    echo "threads $THREADS in every variant; $RUNS rounds, variants in the order $(printf '%s ' "${VARIANTS[@]}")in each round;"
    echo "each run waited for a 1-minute load average < $LOAD_MAX (column *load before*)."
    echo
    cat "$table"
    echo "Results checked against the Rust loop's (bench/verify_ai.py):"
    echo
    echo '```'
    cat "$verify"
    echo '```'
    echo
    echo "## Versions and machine"
    echo
    echo "- CPU: $cpu_model, $(nproc) cores; $(awk '/MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo) RAM; $(uname -sr)"
    echo "- $(rustc --version); crates (Cargo.lock): ort $(lock_version ort), image $(lock_version image), zune-jpeg $(lock_version zune-jpeg), fast_image_resize $(lock_version fast_image_resize), tokenizers $(lock_version tokenizers), arrow $(lock_version arrow), rayon $(lock_version rayon)"
    echo "- ONNX Runtime 1.32.0 everywhere (Rust: \`${ORT_DYLIB_PATH#"$PWD"/}\` from the PyPI wheel; Python: the onnxruntime wheel)"
    echo "- $(python3 --version 2>&1 | tr -d '\n'); .venv-bench-py: $(pyver .venv-bench-py 'onnxruntime|numpy|pillow|tokenizers|pyarrow')"
    has daft && echo "- .venv-bench-daft: $(pyver .venv-bench-daft 'daft|onnxruntime|numpy|pillow|tokenizers|pyarrow')"
    has ray && echo "- .venv-bench-ray: $(pyver .venv-bench-ray 'ray|onnxruntime|numpy|pillow|tokenizers|pyarrow|pandas')"
    echo
    echo "## Commands"
    echo
    echo '```'
    echo "bench/run-ai.sh $WHAT   # RUNS=$RUNS IMAGES=$IMAGES SENTENCES=$SENTENCES BATCH=$BATCH THREADS=$THREADS"
    for w in "${WORKLOADS[@]}"; do
        for v in "${VARIANTS[@]}"; do command_of "$w" "$v"; done
    done
    echo '```'
    for w in "${WORKLOADS[@]}"; do
        if has weir && [[ -f $TMP/$w-weir.last.log ]]; then
            echo
            echo "## weir's own summary ($w, last round)"
            echo
            echo '```'
            # the per-operator summary (ONNX Runtime's own INFO lines come before it)
            sed -n "/^job '/,\$p" "$TMP/$w-weir.last.log" | head -n 40
            echo '```'
        fi
    done
} > "$OUT"
cat "$table"
cat "$verify"
echo "run-ai: wrote $OUT" >&2
[[ $verified == 1 ]] || die "the variants' results differ (see above)"
