#!/usr/bin/env bash
# Starts and stops a local Apache Kafka broker (one combined broker and controller, KRaft mode) on
# 127.0.0.1, from the jars scripts/setup-kafka.sh installs from Maven Central.
#
#   scripts/kafka.sh start [PORT]     # install if missing, format, start; prints the bootstrap address
#   scripts/kafka.sh topic NAME [PARTITIONS]   # create a topic on the running broker
#   scripts/kafka.sh stop             # stop it (SIGTERM, then SIGKILL after 20 s)
#
# PORT defaults to 9092 (the controller listens on PORT+1). Data, logs and the pid live in
# $WEIR_KAFKA_RUN, default $WEIR_HOME/kafka/run (WEIR_HOME defaults to $REPO/.weir); `start`
# formats a fresh data directory every time. The broker gets -Xmx512m. Tests do not use this
# script: they start their own brokers on free ports (crates/weir-testkit/src/kafka_broker.rs).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
WEIR_HOME="${WEIR_HOME:-$REPO/.weir}"
KAFKA_VERSION="${WEIR_KAFKA_VERSION:-4.4.0}"
LIBS="$WEIR_HOME/kafka/$KAFKA_VERSION/libs"
RUN="${WEIR_KAFKA_RUN:-$WEIR_HOME/kafka/run}"
JAVA=(java -Xmx512m -Xms128m -XX:+UseSerialGC -cp "$LIBS/*")
TOOLS_LOG=("-Dlog4j.configuration=file:$RUN/log4j-tools.properties")

say() { echo "kafka: $*" >&2; }
port_answers() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

start() {
    local port="${1:-9092}" controller=$(( ${1:-9092} + 1 ))
    [ -f "$LIBS/kafka_2.13-$KAFKA_VERSION.jar" ] || bash "$REPO/scripts/setup-kafka.sh" --broker
    if port_answers "$port"; then
        say "something already answers on 127.0.0.1:$port"; echo "127.0.0.1:$port"; return 0
    fi
    rm -rf "$RUN"; mkdir -p "$RUN"
    printf 'log4j.rootLogger=WARN, stderr\nlog4j.appender.stderr=org.apache.log4j.ConsoleAppender\nlog4j.appender.stderr.Target=System.err\nlog4j.appender.stderr.layout=org.apache.log4j.PatternLayout\nlog4j.appender.stderr.layout.ConversionPattern=%%p %%m%%n\n' >"$RUN/log4j-tools.properties"
    cat >"$RUN/server.properties" <<PROPS
process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers=127.0.0.1:$controller
listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$controller
advertised.listeners=PLAINTEXT://127.0.0.1:$port
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs=$RUN/data
num.partitions=1
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
message.max.bytes=20000000
PROPS
    cat >"$RUN/log4j.properties" <<'L4J'
log4j.rootLogger=INFO, stdout
log4j.appender.stdout=org.apache.log4j.ConsoleAppender
log4j.appender.stdout.layout=org.apache.log4j.PatternLayout
log4j.appender.stdout.layout.ConversionPattern=[%d] %p %m (%c)%n
L4J
    local id
    id="$("${JAVA[@]}" "${TOOLS_LOG[@]}" kafka.tools.StorageTool random-uuid)"
    "${JAVA[@]}" "${TOOLS_LOG[@]}" kafka.tools.StorageTool format --standalone -t "$id" -c "$RUN/server.properties" >&2
    setsid nohup "${JAVA[@]}" "-Dlog4j.configuration=file:$RUN/log4j.properties" kafka.Kafka \
        "$RUN/server.properties" </dev/null >"$RUN/broker.log" 2>&1 &
    echo $! >"$RUN/broker.pid"
    for _ in $(seq 1 600); do
        if grep -q "Kafka Server started" "$RUN/broker.log" 2>/dev/null; then
            say "broker ready on 127.0.0.1:$port (pid $(cat "$RUN/broker.pid"), log $RUN/broker.log)"
            echo "127.0.0.1:$port"; return 0
        fi
        kill -0 "$(cat "$RUN/broker.pid")" 2>/dev/null || { tail -30 "$RUN/broker.log" >&2; say "the broker exited"; exit 1; }
        sleep 0.2
    done
    say "the broker did not start within 120 s; see $RUN/broker.log"; exit 1
}

stop() {
    [ -f "$RUN/broker.pid" ] || { say "no broker pid file in $RUN"; return 0; }
    local pid; pid="$(cat "$RUN/broker.pid")"
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -9 "$pid" 2>/dev/null || true
    rm -f "$RUN/broker.pid"; say "stopped"
}

topic() {
    local name="$1" partitions="${2:-1}" port
    port="$(sed -n 's/^advertised.listeners=PLAINTEXT:\/\/127.0.0.1://p' "$RUN/server.properties")"
    "${JAVA[@]}" "${TOOLS_LOG[@]}" org.apache.kafka.tools.TopicCommand --bootstrap-server "127.0.0.1:$port" \
        --create --if-not-exists --topic "$name" --partitions "$partitions" --replication-factor 1
}

case "${1:-}" in
    start) start "${2:-}" ;;
    stop) stop ;;
    topic) shift; topic "$@" ;;
    *) sed -n '2,12p' "$0"; exit 2 ;;
esac
