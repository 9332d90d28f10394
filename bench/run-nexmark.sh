#!/usr/bin/env bash
# bench/run-nexmark.sh: Nexmark q0, q1, q2, q5 and q7 on weir and on Apache Flink (PyFlink's
# mini-cluster), same machine, same datagen bid stream (bench/nexmark/qN.yaml,
# bench/nexmark/flink_nexmark.py), to a blackhole sink. Each configuration runs weir then Flink, RUNS rounds; every run is measured by
# bench/measure.py (whole process tree: CPU user+sys, peak RSS). Prints a table of medians and
# writes it, with versions, settings and the command, to bench/results/nexmark-<date>.md.
#
# Environment:
#   RUNS=3                rounds
#   EVENTS=10000000       events per run
#   EVENTS_qN=...         events per run of query qN (default EVENTS)
#   QUERIES="q0 q1 q2 q5 q7"  queries
#   PARALLELISM="1 2"     parallelisms
#   CHECKPOINTS="off on"  checkpoints every 10 s off / on (local directory)
#   ENGINES="weir flink"  engines to run (one of them alone: run the other later with the same RAW)
#   RAW=path              raw results file, appended to (default: a temporary file); the table
#                         is made from every line in it
#   WEIR=path             the weir binary (default target/bench-fast/weir, built unless SKIP_BUILD=1)
#   OUT=path.md           the results file
# Flink comes from scripts/setup-flink.sh (PyFlink 2.3.0 in .weir/venv-flink). Run by hand.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
RUNS=${RUNS:-3}
EVENTS=${EVENTS:-10000000}
QUERIES=${QUERIES:-q0 q1 q2 q5 q7}
PARALLELISM=${PARALLELISM:-1 2}
CHECKPOINTS=${CHECKPOINTS:-off on}
WEIR=${WEIR:-target/bench-fast/weir}
OUT=${OUT:-bench/results/nexmark-$(date +%F).md}
WEIR_HOME=${WEIR_HOME:-$ROOT/.weir}
FLINK_PY=$WEIR_HOME/venv-flink/bin/python

[[ -x /usr/bin/time ]] || { echo "run-nexmark: needs GNU time" >&2; exit 1; }
if [[ ${SKIP_BUILD:-0} != 1 ]]; then
    cargo build --profile bench-fast -p weir-cli
fi
bash scripts/setup-flink.sh >&2
[[ -f .weir/env.sh ]] && source .weir/env.sh

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
ENGINES=${ENGINES:-weir flink}
if [[ -z ${RAW:-} ]]; then RAW=$WORK/raw.txt; : > "$RAW"; fi
has() { [[ " $ENGINES " == *" $1 "* ]]; }

events_of() { # query
    local v="EVENTS_$1"
    echo "${!v:-$EVENTS}"
}

run_one() { # engine query p ckpt round [events]
    local engine=$1 q=$2 p=$3 ck=$4 r=$5 tag="$1-$2-p$3-$4-$5" events=${6:-$(events_of "$2")}
    local dir=$WORK/ck-$tag
    local cmd
    if [[ $engine == weir ]]; then
        cmd=("$WEIR" run "bench/nexmark/$q.yaml" --var "EVENTS=$events" -p "$p" --threads "$p"
             --progress off)
        [[ $ck == on ]] && cmd+=(--set "checkpoint={interval: 10s, store: $dir}")
    else
        cmd=("$FLINK_PY" bench/nexmark/flink_nexmark.py "$q" "$events" "$p")
        if [[ $ck == on ]]; then mkdir -p "$dir"; cmd+=("$dir"); else cmd+=(-); fi
    fi
    if ! python3 bench/measure.py "$WORK/$tag.log" "$WORK/$tag.res" -- "${cmd[@]}"; then
        echo "run-nexmark: $tag failed:" >&2; tail -20 "$WORK/$tag.log" >&2; exit 1
    fi
    local job_s
    job_s=$(grep -o 'job_s=[0-9.]*' "$WORK/$tag.log" | cut -d= -f2 || true)
    echo "$engine $q $p $ck $r $(cat "$WORK/$tag.res") ${job_s:--} $events" | tee -a "$RAW" >&2
    rm -rf "$dir"
}

for r in $(seq 1 "$RUNS"); do
    # Flink's fixed cost: the JVM, the mini-cluster and the planner, on a job of one event.
    if has flink; then
        for p in $PARALLELISM; do
            run_one flink-startup q0 "$p" off "$r" 1
        done
    fi
    for q in $QUERIES; do
        for p in $PARALLELISM; do
            for ck in $CHECKPOINTS; do
                if has weir; then run_one weir "$q" "$p" "$ck" "$r"; fi
                if has flink; then run_one flink "$q" "$p" "$ck" "$r"; fi
            done
        done
    done
done

WEIR_VERSION=$("$WEIR" --version 2>/dev/null || echo weir)
FLINK_VERSION=$("$FLINK_PY" -c 'import pyflink.version as v; print(v.__version__)')
JAVA_VERSION=$(java -version 2>&1 | head -1)
EVENT_VARS=$(for q in $QUERIES; do
    v="EVENTS_$q"
    if [[ -n ${!v:-} ]]; then printf '%s=%s ' "$v" "${!v}"; fi
done)
python3 - "$RAW" "$OUT" "$EVENTS" "$RUNS" \
    "$WEIR_VERSION ($(git rev-parse --short HEAD)), profile $(basename "$(dirname "$WEIR")")" \
    "$FLINK_VERSION" "$JAVA_VERSION" "$(nproc)" "$(uptime | sed 's/.*load average: //')" \
    "RUNS=$RUNS EVENTS=$EVENTS ${EVENT_VARS}QUERIES='$QUERIES' PARALLELISM='$PARALLELISM' CHECKPOINTS='$CHECKPOINTS' bench/run-nexmark.sh" <<'PY'
import statistics as st, sys
raw, out, events, runs, weir, flink, java, cpus, load, command = sys.argv[1:]
events = int(events)
rows = {}
startup = {}
for line in open(raw):
    eng, q, p, ck, r, wall, user, sys_, maxrss, tree_cpu, peak, rc, job, n = line.split()
    if eng == "flink-startup":
        startup.setdefault(p, []).append(float(tree_cpu))
        continue
    rows.setdefault((q, p, ck), {}).setdefault(eng, []).append(
        (float(wall), float(tree_cpu), int(peak), float(job) if job != "-" else float(wall),
         int(n)))
def med(xs, i): return st.median(x[i] for x in xs)
lines = [
    "# Nexmark: weir vs Apache Flink (same machine, same datagen bid stream, blackhole sink)",
    "",
    f"- weir: {weir}; Flink: PyFlink {flink} local mini-cluster; {java}",
    f"- machine: {cpus} CPUs shared with other work (load average at the end: {load})",
    f"- {events:,} events per run (unless the command sets EVENTS_qN), {runs} rounds, weir and"
    " Flink alternately; medians",
    "- events/CPU-s: events / (user+sys of the whole process tree, JVM start-up included for",
    "  Flink, as sampled by bench/measure.py); events/s: events / wall time of the whole command;",
    "  RSS: peak resident memory of the process tree",
    "- checkpoints on: every 10 s to a local directory (weir `checkpoint: {interval: 10s}`, Flink",
    "  `execution.checkpointing.interval: 10s`, `execution.checkpointing.dir`)",
    f"- command: `{command}`",
    "",
    "| query | events | p | ckpt | weir M ev/CPU-s | Flink M ev/CPU-s | ratio/CPU-s | Flink w/o start-up M ev/CPU-s | ratio w/o start-up | weir M ev/s | Flink M ev/s | Flink job-only M ev/s | weir RSS MiB | Flink RSS MiB |",
    "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
]
for (q, p, ck), d in sorted(rows.items()):
    w, f = d.get("weir", []), d.get("flink", [])
    if not w or not f: continue
    events = w[0][4]
    wc, fc = events / med(w, 1) / 1e6, events / med(f, 1) / 1e6
    s0 = st.median(startup.get(p, [0.0]))
    fj = events / max(med(f, 1) - s0, 1e-9) / 1e6
    lines.append(
        f"| {q} | {events:,} | {p} | {ck} | {wc:.2f} | {fc:.2f} | {wc / fc:.1f}x | {fj:.2f} | {wc / fj:.1f}x | "
        f"{events / med(w, 0) / 1e6:.2f} | {events / med(f, 0) / 1e6:.2f} | "
        f"{events / med(f, 3) / 1e6:.2f} | {med(w, 2) / 1024:.0f} | {med(f, 2) / 1024:.0f} |")
lines += ["", "Flink start-up (one-event job), median CPU-s: " + ", ".join(
    f"p={p}: {st.median(v):.1f}" for p, v in sorted(startup.items()))]
lines += ["", "Raw runs (engine query p ckpt round wall user sys maxrss_kib tree_cpu_s tree_peak_rss_kib rc flink_job_s events):", "", "```"]
lines += [l.rstrip() for l in open(raw)]
lines += ["```", ""]
open(out, "w").write("\n".join(lines))
print("\n".join(lines))
PY
