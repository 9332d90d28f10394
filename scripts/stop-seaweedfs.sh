#!/usr/bin/env bash
# Stops the SeaweedFS server started by scripts/start-seaweedfs.sh (by its pid file). Keeps the
# data in $WEIR_HOME/s3 unless --wipe is given.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
WEIR_HOME="${WEIR_HOME:-$REPO/.weir}"
DATA="$WEIR_HOME/s3"
PIDFILE="$DATA/weed.pid"

if [[ -f "$PIDFILE" ]]; then
    pid="$(cat "$PIDFILE")"
    if kill -0 "$pid" 2>/dev/null && grep -q weed "/proc/$pid/cmdline" 2>/dev/null; then
        kill "$pid"
        for _ in $(seq 1 40); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.25
        done
        if kill -0 "$pid" 2>/dev/null; then
            kill -9 "$pid"
        fi
        echo "stop-seaweedfs: stopped weed (pid $pid)" >&2
    else
        echo "stop-seaweedfs: weed (pid $pid) is not running" >&2
    fi
    rm -f "$PIDFILE"
else
    echo "stop-seaweedfs: no pid file at $PIDFILE; nothing to stop" >&2
fi

if [[ "${1:-}" == "--wipe" ]]; then
    rm -rf "$DATA"
    echo "stop-seaweedfs: removed $DATA" >&2
fi
