#!/usr/bin/env bash
# Installs what weir's Kafka connector needs to build and to be tested against a real broker:
#
#   scripts/setup-kafka.sh            # both parts below (idempotent; fast when installed)
#   scripts/setup-kafka.sh --build    # only the Debian packages that librdkafka's build needs
#   scripts/setup-kafka.sh --broker   # only the broker jars
#
# 1. The Debian packages that rdkafka's `cmake-build` feature compiles librdkafka with (cmake and a
#    C/C++ toolchain, zlib), installed with apt-get when `dpkg -s` says one is missing.
# 2. Apache Kafka $KAFKA_VERSION (the `org.apache.kafka:kafka_2.13` artifact and its runtime
#    dependencies) from Maven Central, fetched with Maven into $WEIR_HOME/kafka/$KAFKA_VERSION/libs.
#    scripts/kafka.sh starts and stops a broker from those jars; tests start their own.
#
# WEIR_HOME defaults to $REPO/.weir (gitignored). Needs java (17+) and mvn for part 2.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
WEIR_HOME="${WEIR_HOME:-$REPO/.weir}"
KAFKA_VERSION="${WEIR_KAFKA_VERSION:-4.4.0}"
DEST="$WEIR_HOME/kafka/$KAFKA_VERSION"
# libcurl4-openssl-dev: librdkafka 2.12 includes <curl/curl.h> under `#ifdef WITH_OAUTHBEARER_OIDC`, which
# its cmake build always defines (to 0 or 1), so the header is needed even without the `curl` feature.
DEBIAN_PACKAGES=(cmake build-essential zlib1g-dev libcurl4-openssl-dev)

say() { echo "setup-kafka: $*" >&2; }
die() { echo "setup-kafka: ERROR: $*" >&2; exit 1; }

build_deps() {
    local missing=()
    for p in "${DEBIAN_PACKAGES[@]}"; do
        dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
    done
    [ "${#missing[@]}" -eq 0 ] && return 0
    local sudo=()
    if [ "$(id -u)" != 0 ]; then
        command -v sudo >/dev/null && sudo -n true 2>/dev/null || \
            die "missing Debian packages ${missing[*]}; run: apt-get install -y ${missing[*]}"
        sudo=(sudo -n)
    fi
    say "installing ${missing[*]} (Debian)"
    "${sudo[@]}" apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends \
        "${missing[@]}" >&2
}

broker() {
    if [ -f "$DEST/.installed-2" ]; then
        return 0
    fi
    command -v java >/dev/null || die "java not found (Kafka $KAFKA_VERSION needs Java 17+)"
    command -v mvn >/dev/null || die "mvn not found (the broker's jars are fetched with Maven)"
    local work
    work="$(mktemp -d)"
    trap 'rm -rf "$work"' RETURN
    cat >"$work/pom.xml" <<POM
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>weir</groupId>
  <artifactId>weir-kafka-broker</artifactId>
  <version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency>
      <groupId>org.apache.kafka</groupId>
      <artifactId>kafka_2.13</artifactId>
      <version>$KAFKA_VERSION</version>
    </dependency>
    <!-- kafka-topics, kafka-console-consumer and friends, for starting and inspecting a broker by hand. -->
    <dependency>
      <groupId>org.apache.kafka</groupId>
      <artifactId>kafka-tools</artifactId>
      <version>$KAFKA_VERSION</version>
    </dependency>
    <!-- The broker logs through slf4j; without a binding it prints nothing but a warning. -->
    <dependency>
      <groupId>org.slf4j</groupId>
      <artifactId>slf4j-reload4j</artifactId>
      <version>1.7.36</version>
    </dependency>
  </dependencies>
</project>
POM
    say "fetching org.apache.kafka:kafka_2.13:$KAFKA_VERSION and its dependencies with Maven"
    rm -rf "$DEST.tmp"
    mkdir -p "$DEST.tmp/libs"
    if ! (cd "$work" && mvn -B -q org.apache.maven.plugins:maven-dependency-plugin:3.8.1:copy-dependencies \
            -DincludeScope=runtime -DoutputDirectory="$DEST.tmp/libs" >"$work/mvn.log" 2>&1); then
        tail -40 "$work/mvn.log" >&2
        die "mvn copy-dependencies for kafka_2.13:$KAFKA_VERSION failed (log above)"
    fi
    ls "$DEST.tmp/libs"/kafka_2.13-"$KAFKA_VERSION".jar >/dev/null || die "kafka_2.13-$KAFKA_VERSION.jar was not fetched"
    touch "$DEST.tmp/.installed-2"
    rm -rf "$DEST"
    mv "$DEST.tmp" "$DEST"
    say "Kafka $KAFKA_VERSION in $DEST/libs ($(ls "$DEST/libs" | wc -l) jars)"
}

case "${1:-}" in
    --build) build_deps ;;
    --broker) broker ;;
    "") build_deps; broker ;;
    -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
    *) die "unknown argument: $1" ;;
esac
