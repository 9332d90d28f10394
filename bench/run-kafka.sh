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
python3 bench/kafka/report.py "$RAW" "$LAT" "$OUT" "$RUNS" "$WEIR_VERSION ($(git rev-parse --short HEAD)), binary $WEIR" \
    "$FLINK_VERSION" "$(basename "$JAR")" "$JAVA_VERSION" "$(nproc)" "$(uptime | sed 's/.*load average: //')" \
    "RUNS=$RUNS EVENTS=$EVENTS PARALLELISM='$PARALLELISM' RATE=$RATE DURATION=$DURATION INTERVAL=$INTERVAL PARTS='$PARTS' bench/run-kafka.sh"
