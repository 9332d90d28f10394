#!/usr/bin/env bash
# bench/run-services.sh: the inference-service benchmarks (issue 6, point 9); see
# bench/services/run.py. Run by hand, not in CI. A few minutes in all.
#
#   bench/run-services.sh [scale] [compare]     (default: both)
#
#   scale    throughput and p99 call latency while the service is scaled 1 -> 3 -> 1 instances
#            under load (weir scale through the job's control endpoint)
#   compare  the image-classification pipeline with the model inline, as a service with a
#            thread instance, and as a service with a `weir serve-model` process instance
#
# Environment:
#   WEIR=path       the weir binary (default: target/bench-fast/weir when it has `weir scale`,
#                   else target/ci/weir)
#   IMAGES_N=300    images for `compare` (from data/generated/images); `scale` uses 3000
#   PHASE=12        seconds per scaling phase
#   RUNS=2          interleaved rounds of `compare` (medians reported)
#   OUT=path.md     where to write the results (default bench/results/services-<date>.md)
set -euo pipefail
cd "$(dirname "$0")/.."

IMAGES_N=${IMAGES_N:-300}
OUT=${OUT:-bench/results/services-$(date +%F).md}

[[ -f .weir/env.sh ]] || scripts/setup-models.sh
# shellcheck source=/dev/null
source .weir/env.sh
if [[ -z ${WEIR:-} ]]; then
    if [[ -x target/bench-fast/weir ]] && target/bench-fast/weir scale --help >/dev/null 2>&1; then
        WEIR=target/bench-fast/weir
    else
        cargo build --profile ci -p weir-cli --bin weir
        WEIR=target/ci/weir
    fi
fi
if [[ ! -d data/generated/images ]]; then
    cargo build --profile bench-fast -p weir-bench
    target/bench-fast/gen-images --count 3000 --out data/generated/images
fi

link_images() { # N DIR
    if [[ ! -d $2 ]]; then
        mkdir -p "$2"
        local files
        mapfile -t files < <(find "$PWD/data/generated/images" -name '*.jpg' | sort)
        for f in "${files[@]:0:$1}"; do ln -s "$f" "$2/"; done
    fi
}
COMPARE_IMAGES=data/generated/services-images-$IMAGES_N
link_images "$IMAGES_N" "$COMPARE_IMAGES"

mkdir -p "$(dirname "$OUT")"
profile=$(basename "$(dirname "$WEIR")")
{
    echo "## Inference-service benchmarks, $(date -u +%FT%TZ)"
    echo
    echo "- weir $(git rev-parse --short HEAD), binary $WEIR (profile $profile); $(nproc) cores;" \
        "ONNX Runtime $(basename "$ORT_DYLIB_PATH"); load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "- settings: PHASE=${PHASE:-12} RUNS=${RUNS:-2} IMAGES_N=$IMAGES_N"
    echo "- command: bench/run-services.sh $*"
    echo
} >> "$OUT"
which=("$@")
[[ ${#which[@]} -gt 0 ]] || which=(scale compare)
for w in "${which[@]}"; do
    case $w in
        scale) WEIR=$WEIR IMAGES=data/generated/images python3 bench/services/run.py "$OUT" scale ;;
        compare) WEIR=$WEIR IMAGES=$COMPARE_IMAGES python3 bench/services/run.py "$OUT" compare ;;
        *) echo "unknown benchmark: $w (scale, compare)" >&2; exit 2 ;;
    esac
done
echo "results appended to $OUT" >&2
cat "$OUT" >&2
