#!/usr/bin/env bash
# bench/run-ai.sh: the AI benchmarks (image classification, text embedding), weir (the `weir`
# binary on a YAML spec, and the same pipeline written with weir's Python DataFrame API) against
# a hand-written Rust loop, a plain Python loop, Daft and Ray Data. See bench/README.md.
#
#   bench/run-ai.sh [images|text|udf|all]...   (default all = images text udf; several: in turn)
#
# `udf` is the image pipeline with a Python step after the model (numpy post-processing of the
# scores, bench/python/post.py) in weir's map_batches (Python API), Daft and Ray Data; the other
# variants have no Python step to run and are skipped there.
#
# Sets up what is missing (ONNX Runtime and models via scripts/setup-models.sh, the Python venvs
# via bench/*/setup.sh and bench/python/setup-weir.sh, the bench-fast binaries, the generated
# data), then for each round runs the variants one after another (odd rounds in the order of
# VARIANTS, even rounds reversed), each under bench/measure.py (GNU time + a sampler of the
# whole process tree), waiting before each run until the 1-minute load average is below
# LOAD_MAX. Afterwards it checks that all produced the same results as the Rust loop (or, without
# it, the first variant) (bench/verify_ai.py), prints the table (bench/ai_table.py) and writes
# bench/results/ai-<date>.md. Run by hand, never in CI.
#
# Environment:
#   RUNS=3            rounds (each round runs every variant once, in the order below)
#   IMAGES=3000       generated JPEGs          SENTENCES=20000  generated sentences
#   VARIANTS="weir weir-py loop python daft ray"   which variants, in run order (weir-py: the
#                                              Python DataFrame API, bench/python/{images,text}.py;
#                                              also: loop-nospin, the Rust loop with ONNX
#                                              Runtime's spinning off)
#   ALTERNATE=1       reverse the order in even rounds (0: the same order every round)
#   BATCH=32          batch size of every variant (weir: batch.max_size)
#   THREADS=2         ONNX Runtime intra-op threads of every variant (weir: cpus)
#   LOAD_MAX=1.0      wait until the 1-minute load average is below this before each run
#   LOAD_WAIT=900     ... but at most this many seconds (then run anyway and say so)
#   SKIP_BUILD=1      use the binaries already in target/bench-fast (and the installed weir wheel)
#   SKIP_SETUP=1      do not run the venv setup scripts (they are no-ops when up to date anyway)
#   WEIR=path         the weir binary (default target/bench-fast/weir)
#   OUT=path.md       results file (default bench/results/ai-<date>.md)
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$(pwd)

WHAT="${*:-all}"
WORKLOADS=()
for w in $WHAT; do
    case $w in images | text | udf) WORKLOADS+=("$w") ;; all) WORKLOADS+=(images text udf) ;;
        *) echo "usage: bench/run-ai.sh [images|text|udf|all]..." >&2; exit 2 ;; esac
done
RUNS=${RUNS:-3}
IMAGES=${IMAGES:-3000}
SENTENCES=${SENTENCES:-20000}
read -r -a VARIANTS <<< "${VARIANTS:-weir weir-py loop python daft ray}"
ALTERNATE=${ALTERNATE:-1}
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
export BENCH_ORT_THREADS=$THREADS BENCH_BATCH=$BATCH
if [[ $SKIP_SETUP != 1 ]]; then
    has python && bench/python/setup.sh
    has weir-py && SKIP_BUILD=$SKIP_BUILD bench/python/setup-weir.sh
    has daft && bench/daft/setup.sh
    has ray && bench/ray/setup.sh
    # the verifier runs in the plain-Python venv
    has python || bench/python/setup.sh
fi
if [[ $SKIP_BUILD != 1 ]]; then
    echo "+ cargo build --workspace --profile $PROFILE --bins" >&2
    cargo build --workspace --profile "$PROFILE" --bins
fi
for b in gen-images gen-text images-loop text-loop; do
    [[ -x $BIN/$b ]] || die "$BIN/$b is missing (build it, or drop SKIP_BUILD)"
done
! has weir || [[ -x $WEIR ]] || die "$WEIR is missing"
! has weir-py || [[ -x .venv-bench-weir/bin/python ]] ||
    die ".venv-bench-weir is missing (run bench/python/setup-weir.sh, or drop SKIP_SETUP)"

# --- data ---------------------------------------------------------------------------------
for w in "${WORKLOADS[@]}"; do
    if [[ $w == images || $w == udf ]]; then
        "$BIN/gen-images" --count "$IMAGES" --out "$IMG_DIR"
        cat "$IMG_DIR"/*.jpg > /dev/null # into the page cache
    else
        if [[ ! -f $TXT || $(wc -l < "$TXT") -ne $SENTENCES ]]; then
            "$BIN/gen-text" --count "$SENTENCES" --out "$(dirname "$TXT")"
        fi
    fi
done

# --- the variants ---------------------------------------------------------------------------
# command WORKLOAD VARIANT: prints the command (our own words, split on spaces); nothing when
# the variant has no such workload (udf: only the Python API, Daft and Ray Data)
command_of() {
    local o=$RES/$1-$2
    case $1/$2 in
    images/weir) echo "$WEIR run bench/images/weir.yaml --set steps.images.url=$IMG_DIR --set steps.results.path=$o --set steps.nsfw.cpus=$THREADS --set steps.nsfw.batch.max_size=$BATCH --metrics-json $o.metrics.json" ;;
    images/loop) echo "$BIN/images-loop --dir $IMG_DIR --batch-size $BATCH --threads $THREADS --out $o.parquet" ;;
    images/loop-nospin) echo "$BIN/images-loop --dir $IMG_DIR --batch-size $BATCH --threads $THREADS --no-spin --out $o.parquet" ;;
    images/weir-py) echo ".venv-bench-weir/bin/python bench/python/images.py $IMG_DIR $o" ;;
    images/python) echo ".venv-bench-py/bin/python bench/python/images_loop.py $IMG_DIR $o.parquet" ;;
    images/daft) echo ".venv-bench-daft/bin/python bench/daft/images.py $IMG_DIR $o" ;;
    images/ray) echo ".venv-bench-ray/bin/python bench/ray/images.py $IMG_DIR $o" ;;
    text/weir) echo "$WEIR run bench/text/weir.yaml --set steps.sentences.path=$TXT --set steps.results.path=$o --set steps.minilm.cpus=$THREADS --set steps.minilm.batch.max_size=$BATCH --metrics-json $o.metrics.json" ;;
    text/loop) echo "$BIN/text-loop --input $TXT --batch-size $BATCH --threads $THREADS --out $o.parquet" ;;
    text/loop-nospin) echo "$BIN/text-loop --input $TXT --batch-size $BATCH --threads $THREADS --no-spin --out $o.parquet" ;;
    text/weir-py) echo ".venv-bench-weir/bin/python bench/python/text.py $TXT $o" ;;
    text/python) echo ".venv-bench-py/bin/python bench/python/text_loop.py $TXT $o.parquet" ;;
    text/daft) echo ".venv-bench-daft/bin/python bench/daft/text.py $JSONL $o" ;;
    text/ray) echo ".venv-bench-ray/bin/python bench/ray/text.py $JSONL $o" ;;
    udf/weir-py) echo ".venv-bench-weir/bin/python bench/python/images.py --udf $IMG_DIR $o" ;;
    udf/daft) echo ".venv-bench-daft/bin/python bench/daft/images.py --udf $IMG_DIR $o" ;;
    udf/ray) echo ".venv-bench-ray/bin/python bench/ray/images.py --udf $IMG_DIR $o" ;;
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

# The Python-API variant must run the same pipeline as the YAML one: its DataFrame plans to the
# same graph as bench/{images,text}/weir.yaml with the same overrides (untimed, once).
if has weir-py; then
    for w in "${WORKLOADS[@]}"; do
        [[ $w == udf ]] && continue
        if [[ $w == images ]]; then in=$IMG_DIR; else in=$TXT; fi
        .venv-bench-weir/bin/python "bench/python/$w.py" --check "$in" "$RES/$w-weir" ||
            die "bench/python/$w.py does not plan as bench/$w/weir.yaml"
    done
fi

for w in "${WORKLOADS[@]}"; do
    if [[ $w == text ]]; then items=$SENTENCES; else items=$IMAGES; fi
    for ((r = 1; r <= RUNS; r++)); do
        order=("${VARIANTS[@]}")
        if [[ $ALTERNATE == 1 ]] && ((r % 2 == 0)); then
            order=()
            for ((i = ${#VARIANTS[@]} - 1; i >= 0; i--)); do order+=("${VARIANTS[i]}"); done
        fi
        for v in "${order[@]}"; do
            cmd=$(command_of "$w" "$v")
            [[ -n $cmd ]] || continue
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
    # the reference: the Rust loop's output; for udf the Rust loop's image output when there is
    # one, else the first variant's
    kind=$w ref="" refname=""
    [[ $w == udf ]] && kind=images
    ran=()
    for v in "${VARIANTS[@]}"; do [[ -n $(command_of "$w" "$v") ]] && ran+=("$v"); done
    if has loop && [[ $w != udf ]]; then
        ref=$(output_of "$w" loop) refname="the Rust loop's output"
    elif [[ $w == udf ]] && has loop && printf '%s\n' "${WORKLOADS[@]}" | grep -qx images; then
        ref=$(output_of images loop) refname="the Rust loop's output of the images workload"
    elif ((${#ran[@]} > 1)); then
        ref=$(output_of "$w" "${ran[0]}") refname="${ran[0]}'s output"
    else
        echo "$w: not verified (nothing to compare with)" >> "$verify"
        continue
    fi
    args=()
    for v in "${ran[@]}"; do
        out=$(output_of "$w" "$v")
        [[ $out == "$ref" ]] || args+=("$v=$out")
    done
    echo "$w (reference: $refname, last round):" >> "$verify"
    if ! .venv-bench-py/bin/python bench/verify_ai.py "$kind" "$ref" "${args[@]}" >> "$verify"; then
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
    echo "text: $SENTENCES sentences of data/generated/text, MiniLM int8; udf: the images pipeline with a Python"
    echo "post-processing step after the model, bench/python/post.py). Batch $BATCH, ONNX Runtime intra-op"
    echo "threads $THREADS in every variant; $RUNS rounds, variants in the order $(printf '%s ' "${VARIANTS[@]}")$( ((ALTERNATE == 1)) && echo "(reversed in even rounds)" || echo "in each round");"
    echo "each run waited for a 1-minute load average < $LOAD_MAX (column *load before*)."
    echo
    cat "$table"
    echo "Results checked against a reference (bench/verify_ai.py):"
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
    has weir-py && echo "- .venv-bench-weir: weir $(cat .venv-bench-weir/.weir-build 2>/dev/null) (the native module of \`cargo build --workspace --profile $PROFILE\`, bench/python/setup-weir.sh); $(pyver .venv-bench-weir 'pyarrow|numpy|cloudpickle')"
    has daft && echo "- .venv-bench-daft: $(pyver .venv-bench-daft 'daft|onnxruntime|numpy|pillow|tokenizers|pyarrow')"
    has ray && echo "- .venv-bench-ray: $(pyver .venv-bench-ray 'ray|onnxruntime|numpy|pillow|tokenizers|pyarrow|pandas')"
    echo
    echo "## Commands"
    echo
    echo '```'
    echo "bench/run-ai.sh $WHAT   # RUNS=$RUNS IMAGES=$IMAGES SENTENCES=$SENTENCES BATCH=$BATCH THREADS=$THREADS VARIANTS=\"${VARIANTS[*]}\" ALTERNATE=$ALTERNATE LOAD_MAX=$LOAD_MAX"
    for w in "${WORKLOADS[@]}"; do
        for v in "${VARIANTS[@]}"; do cmd=$(command_of "$w" "$v"); [[ -z $cmd ]] || echo "$cmd"; done
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
