#!/usr/bin/env bash
# bench/run-kafka.sh: weir's Kafka connector measured against a real Apache Kafka broker (4.4,
# KRaft, started here from the jars of scripts/setup-kafka.sh on a free port, stopped at the end).
#
# 1. Throughput, Kafka -> filter -> Kafka: EVENTS JSON events (bench/kafka/gen.yaml, 2 partitions)
#    are read to the end, those with amount > 500 written to a fresh topic, at least once. weir
#    (bench/kafka/filter.yaml) against Apache Flink's Kafka connector (PyFlink 2.3.0 mini-cluster,
#    org.apache.flink:flink-sql-connector-kafka from Maven Central, bench/kafka/flink_kafka.py),
#    alternately, RUNS rounds per parallelism; every run's output is counted. Measured by
#    bench/measure.py on the engine's process tree (the broker's CPU is not counted for either).
# 2. Latency of the image pipeline (bench/kafka/classify.yaml: decode -> open-nsfw -> label) at
#    RATE images/s for DURATION seconds, with the sink's delivery exactly_once and at_least_once
#    (checkpoints every INTERVAL in both), RUNS rounds each: the time from sending an image to a
#    read_committed consumer receiving its label (bench/kafka/kafkatool.py).
#
# Environment: RUNS=3 EVENTS=2000000 PARALLELISM="1 2" RATE=5 DURATION=30 INTERVAL=1s
#   PARTS="throughput latency"  WEIR=target/bench-fast/weir (built unless SKIP_BUILD=1)
#   OUT=bench/results/kafka-<date>.md
# Python: confluent-kafka==2.16.1 in $WEIR_HOME/venv-kafka-bench (made here); Flink from
# scripts/setup-flink.sh --kafka. Run by hand from the repository root.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
RUNS=${RUNS:-3}
EVENTS=${EVENTS:-2000000}
PARALLELISM=${PARALLELISM:-1 2}
RATE=${RATE:-5}
DURATION=${DURATION:-30}
INTERVAL=${INTERVAL:-1s}
PARTS=${PARTS:-throughput latency}
WEIR=${WEIR:-target/bench-fast/weir}
OUT=${OUT:-bench/results/kafka-$(date +%F).md}
export WEIR_HOME=${WEIR_HOME:-$ROOT/.weir}
FLINK_PY=$WEIR_HOME/venv-flink/bin/python
KPY=$WEIR_HOME/venv-kafka-bench/bin/python

[[ -x /usr/bin/time ]] || { echo "run-kafka: needs GNU time" >&2; exit 1; }
if [[ ${SKIP_BUILD:-0} != 1 ]]; then
    cargo build --profile bench-fast -p weir-cli
fi
bash scripts/setup-kafka.sh --broker
JAR=$(bash scripts/setup-flink.sh --kafka | tail -1)
if [[ ! -x $KPY ]] || ! "$KPY" -c 'import confluent_kafka' 2>/dev/null; then
    python3 -m venv "$WEIR_HOME/venv-kafka-bench"
    "$KPY" -m pip install -q --disable-pip-version-check --prefer-binary confluent-kafka==2.16.1
fi
source .weir/env.sh

WORK=$(mktemp -d)
export WEIR_KAFKA_RUN=$WORK/broker
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cleanup() { bash scripts/kafka.sh stop >/dev/null 2>&1 || true; rm -rf "$WORK"; }
trap cleanup EXIT
B=$(bash scripts/kafka.sh start "$PORT" | tail -1)
RAW=$WORK/raw.txt
LAT=$WORK/latency.txt
: > "$RAW"; : > "$LAT"
kt() { "$KPY" bench/kafka/kafkatool.py "$@"; }

if [[ " $PARTS " == *" throughput "* ]]; then
    kt create "$B" events 2
    "$WEIR" run bench/kafka/gen.yaml --var "KAFKA=$B" --var IN=events --var "EVENTS=$EVENTS" \
        --progress off --http off
    have=$(kt count "$B" events)
    [[ $have == "$EVENTS" ]] || { echo "run-kafka: the input has $have events, not $EVENTS" >&2; exit 1; }
    run_one() { # engine p round [in events]
        local engine=$1 p=$2 r=$3 in=${4:-events} n=${5:-$EVENTS} tag="$1-p$2-$3"
        local out=out-$tag group=g-$tag cmd
        kt create "$B" "$out" 2
        if [[ $engine == weir ]]; then
            cmd=("$WEIR" run bench/kafka/filter.yaml --var "KAFKA=$B" --var "IN=$in" --var "OUT=$out"
                 --var "GROUP=$group" -p "$p" --threads "$p" --progress off --http off)
        else
            cmd=("$FLINK_PY" bench/kafka/flink_kafka.py "$B" "$in" "$out" "$group" "$p" "$JAR")
        fi
        if ! python3 bench/measure.py "$WORK/$tag.log" "$WORK/$tag.res" -- "${cmd[@]}"; then
            echo "run-kafka: $tag failed:" >&2; tail -20 "$WORK/$tag.log" >&2; exit 1
        fi
        local written job_s
        written=$(kt count "$B" "$out")
        job_s=$(grep -o 'job_s=[0-9.]*' "$WORK/$tag.log" | cut -d= -f2 || true)
        echo "$engine $p $r $n $written $(cat "$WORK/$tag.res") ${job_s:--}" | tee -a "$RAW" >&2
    }
    # Flink's fixed cost (JVM, mini-cluster, planner, connector start) on a topic of one event.
    kt create "$B" one 1
    "$WEIR" run bench/kafka/gen.yaml --var "KAFKA=$B" --var IN=one --var EVENTS=1 --progress off --http off
    for r in $(seq 1 "$RUNS"); do
        for p in $PARALLELISM; do
            run_one flink-startup "$p" "$r" one 1
            run_one weir "$p" "$r"
            run_one flink "$p" "$r"
        done
    done
fi

if [[ " $PARTS " == *" latency "* ]]; then
    for r in $(seq 1 "$RUNS"); do
        for delivery in exactly_once at_least_once; do
            tag=lat-$delivery-$r
            kt create "$B" "in-$tag" 1
            kt create "$B" "out-$tag" 1
            mkdir -p "$WORK/$tag"
            "$WEIR" run bench/kafka/classify.yaml --var "KAFKA=$B" --var "IN=in-$tag" \
                --var "OUT=out-$tag" --var "GROUP=g-$tag" --var "DELIVERY=$delivery" \
                --var "INTERVAL=$INTERVAL" --var "WORK=$WORK/$tag" -p 1 --progress off --http off \
                >"$WORK/$tag.log" 2>&1 &
            pid=$!
            line=$(kt latency "$B" "in-$tag" "out-$tag" "$WEIR_DATA/photos" "$RATE" "$DURATION" 8) || {
                kill "$pid" 2>/dev/null; tail -20 "$WORK/$tag.log" >&2; exit 1; }
            kill -TERM "$pid"; wait "$pid" || true
            echo "$delivery $r $line" | tee -a "$LAT" >&2
        done
    done
fi

WEIR_VERSION=$("$WEIR" --version 2>/dev/null || echo weir)
FLINK_VERSION=$("$FLINK_PY" -c 'import pyflink.version as v; print(v.__version__)')
JAVA_VERSION=$(java -version 2>&1 | head -1)
python3 - "$RAW" "$LAT" "$OUT" "$RUNS" "$WEIR_VERSION ($(git rev-parse --short HEAD)), binary $WEIR" \
    "$FLINK_VERSION" "$(basename "$JAR")" "$JAVA_VERSION" "$(nproc)" "$(uptime | sed 's/.*load average: //')" \
    "RUNS=$RUNS EVENTS=$EVENTS PARALLELISM='$PARALLELISM' RATE=$RATE DURATION=$DURATION INTERVAL=$INTERVAL PARTS='$PARTS' bench/run-kafka.sh" <<'PY'
import statistics as st, sys
raw, lat, out, runs, weir, flink, jar, java, cpus, load, command = sys.argv[1:]
rows, startup = {}, {}
for line in open(raw):
    eng, p, r, n, written, wall, user, sys_, maxrss, cpu, peak, rc, job = line.split()
    if eng == "flink-startup":
        startup.setdefault(p, []).append(float(cpu))
        continue
    rows.setdefault(p, {}).setdefault(eng, []).append(
        (float(wall), float(cpu), int(peak), float(job) if job != "-" else float(wall), int(n), int(written)))
def med(xs, i): return st.median(x[i] for x in xs)
L = [
    "# Kafka: throughput of Kafka -> filter -> Kafka (weir vs Apache Flink) and latency of the image pipeline",
    "",
    f"- weir: {weir}; Flink: PyFlink {flink} local mini-cluster with {jar} (Maven Central); {java}",
    "- broker: Apache Kafka 4.4.0 (KRaft, one combined broker+controller, -Xmx512m) on 127.0.0.1, "
    "started by the script; its CPU is counted for neither engine",
    f"- machine: {cpus} CPUs shared with other work (load average at the end: {load})",
    f"- command: `{command}`",
    "",
]
if rows:
    L += [
        "## Throughput: Kafka -> filter (amount > 500) -> Kafka, JSON, at least once",
        "",
        f"Input: JSON events (id, user, amount, category, 20-char note; ~110 bytes) on 2 partitions, read "
        "to the end; about half pass. events/CPU-s: input events / (user+sys of the engine's whole "
        "process tree, JVM start-up included for Flink); 'Flink w/o start-up' subtracts the median CPU "
        f"of a one-event job. {runs} rounds, weir and Flink alternately; medians.",
        "",
        "| p | weir k ev/CPU-s | Flink k ev/CPU-s | ratio | Flink w/o start-up k ev/CPU-s | ratio w/o start-up | weir k ev/s | Flink k ev/s | Flink job-only k ev/s | weir RSS MiB | Flink RSS MiB |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for p, d in sorted(rows.items()):
        w, f = d.get("weir", []), d.get("flink", [])
        if not w or not f: continue
        n = w[0][4]
        wc, fc = n / med(w, 1) / 1e3, n / med(f, 1) / 1e3
        s0 = st.median(startup.get(p, [0.0]))
        fj = n / max(med(f, 1) - s0, 1e-9) / 1e3
        L.append(f"| {p} | {wc:.0f} | {fc:.0f} | {wc / fc:.2f}x | {fj:.0f} | {wc / fj:.2f}x | "
                 f"{n / med(w, 0) / 1e3:.0f} | {n / med(f, 0) / 1e3:.0f} | {n / med(f, 3) / 1e3:.0f} | "
                 f"{med(w, 2) / 1024:.0f} | {med(f, 2) / 1024:.0f} |")
        outs = sorted({x[5] for x in w + f})
        L.append("")
        L.append(f"p={p}: messages written per run: {', '.join(map(str, outs))} (the same for every run: "
                 f"{'yes' if len(outs) == 1 else 'NO'})")
        L.append("")
    L += ["Flink start-up (one-event job), median CPU-s: " + ", ".join(
        f"p={p}: {st.median(v):.1f}" for p, v in sorted(startup.items())), "",
        "Raw runs (engine p round events written wall user sys maxrss_kib tree_cpu_s tree_peak_rss_kib rc flink_job_s):",
        "", "```"] + [l.rstrip() for l in open(raw)] + ["```", ""]
lat_rows = [l.split() for l in open(lat) if l.strip()]
if lat_rows:
    L += ["## Latency: images on a topic -> decode -> open-nsfw -> label on a topic (weir, p=1)", "",
          "Send time to the time a read_committed consumer receives the label, per image, after 8 warm-up "
          "images; checkpoints in both modes; median over rounds of each round's p50 / p99.", "",
          "| delivery | rounds | p50 ms | p99 ms | mean ms | images per round | missing | duplicates |",
          "|---|---|---|---|---|---|---|---|"]
    by = {}
    for parts in lat_rows:
        kv = dict(x.split("=", 1) for x in parts[3:])
        by.setdefault(parts[0], []).append(kv)
    for d, kvs in by.items():
        g = lambda k: st.median(float(x[k]) for x in kvs)
        L.append(f"| {d} | {len(kvs)} | {g('p50_ms'):.0f} | {g('p99_ms'):.0f} | {g('mean_ms'):.0f} | "
                 f"{g('n'):.0f} | {sum(int(x['missing']) for x in kvs)} | {sum(int(x['duplicates']) for x in kvs)} |")
    L += ["", "Raw runs:", "", "```"] + [l.rstrip() for l in open(lat)] + ["```", ""]
open(out, "w").write("\n".join(L))
print("\n".join(L))
PY
