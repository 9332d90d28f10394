#!/usr/bin/env bash
# Creates the Python virtual environment in which the Nexmark benchmark runs Apache Flink for
# comparison (bench/nexmark/flink_nexmark.py): PyFlink from PyPI, whose wheel holds a full Flink
# and starts its local mini-cluster. Needs a Java 17 runtime (`java` on PATH). Pinned:
#
#   scripts/setup-flink.sh          create / verify ${WEIR_HOME:-$REPO/.weir}/venv-flink
#   scripts/setup-flink.sh --kafka  also fetch Flink's Kafka SQL connector jar
#                                   (org.apache.flink:flink-sql-connector-kafka:$FLINK_KAFKA, Maven
#                                   Central, with mvn) into venv-flink/connectors/, for
#                                   bench/run-kafka.sh; prints the jar's path last
#
# Idempotent: a stamp file records the installed pins, so a second run installs nothing.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
WEIR_HOME="${WEIR_HOME:-$REPO/.weir}"
# The physical path: a venv's scripts name the path it was made at.
WEIR_HOME="$(mkdir -p "$WEIR_HOME" && cd -P "$WEIR_HOME" && pwd)"
VENV="$WEIR_HOME/venv-flink"
# A venv made at a path that is gone has scripts that cannot start: make it again.
if [ -d "$VENV" ] && ! "$VENV/bin/pip" --version >/dev/null 2>&1; then rm -rf "$VENV"; fi
PY="${PYTHON:-python3}"
PINS=(apache-flink==2.3.0)
STAMP="$VENV/.installed-$(echo "${PINS[*]}" | tr ' ' '_')"

# The newest Kafka connector on Maven Central when written (built for Flink 2.2; runs on 2.3).
FLINK_KAFKA="${WEIR_FLINK_KAFKA:-5.0.0-2.2}"

say() { echo "setup-flink: $*" >&2; }

kafka_connector() {
  local jar="$VENV/connectors/flink-sql-connector-kafka-$FLINK_KAFKA.jar"
  if [ ! -f "$jar" ]; then
    command -v mvn >/dev/null || { echo "setup-flink: mvn not found (the Kafka connector is fetched with Maven)" >&2; exit 1; }
    local work; work="$(mktemp -d)"
    cat >"$work/pom.xml" <<POM
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>weir</groupId><artifactId>flink-kafka-connector</artifactId><version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency>
      <groupId>org.apache.flink</groupId><artifactId>flink-sql-connector-kafka</artifactId>
      <version>$FLINK_KAFKA</version>
    </dependency>
  </dependencies>
</project>
POM
    mkdir -p "$VENV/connectors"
    if ! (cd "$work" && mvn -B -q org.apache.maven.plugins:maven-dependency-plugin:3.8.1:copy-dependencies \
          -DexcludeTransitive=true -DoutputDirectory="$VENV/connectors" >"$work/mvn.log" 2>&1); then
      tail -30 "$work/mvn.log" >&2; rm -rf "$work"
      echo "setup-flink: fetching flink-sql-connector-kafka:$FLINK_KAFKA failed (log above)" >&2; exit 1
    fi
    rm -rf "$work"
    say "fetched $(basename "$jar")"
  fi
  echo "$jar"
}

if [ -f "$STAMP" ]; then
  say "ok: $VENV has ${PINS[*]}"
  [ "${1:-}" = --kafka ] && kafka_connector
  exit 0
fi
command -v "$PY" >/dev/null || { echo "setup-flink: $PY not found" >&2; exit 1; }
command -v java >/dev/null || { echo "setup-flink: java not found (PyFlink needs a Java 17 runtime)" >&2; exit 1; }
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --disable-pip-version-check --prefer-binary "${PINS[@]}"
"$VENV/bin/python" -c "import pyflink.version as v; print('pyflink', v.__version__)"
rm -f "$VENV"/.installed-*
touch "$STAMP"
say "installed ${PINS[*]} into $VENV"
[ "${1:-}" = --kafka ] && kafka_connector
exit 0
