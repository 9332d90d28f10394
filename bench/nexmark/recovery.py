#!/usr/bin/env python3
"""Nexmark q5's checkpointed state after N events, and the recovery time from `kill -9` to the
first checkpoint completed after `weir run --resume`.

usage: recovery.py WEIR [--events-at N] [--interval 1s] [-p P] [--rounds R]

Runs bench/nexmark/q5.yaml (the datagen bid stream of bench/run-nexmark.sh, made unbounded in
practice: 10^12 rows) with checkpoints every INTERVAL to a fresh local directory, and each round:

1. waits until the source has emitted N events (`--metrics-json`, refreshed every 0.1 s) and the
   next checkpoint after that completes (its `chk-<n>/_MANIFEST` exists, written last), and
   records that checkpoint's size on disk (the state of every step: q5's panes and top-N
   buffers, the source's position);
2. kills the job with SIGKILL, and at once starts `weir run --resume` on the same store;
3. records the time from the kill to the first checkpoint the resumed job completes (start-up,
   restore of the newest checkpoint, replay from its position, one checkpoint interval at most),
   and weir's own log line `recovered: checkpoint N ... completed T ms after the start`;
4. ends the resumed job (SIGKILL) and removes the store.

Prints one line per round and the medians; standard library only.
"""

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import shutil


def manifests(store):
    """Ids of the complete checkpoints in `store`."""
    done = set()
    for name in os.listdir(store):
        if name.startswith("chk-") and os.path.exists(os.path.join(store, name, "_MANIFEST")):
            done.add(int(name[4:]))
    return done


def size_of(path):
    return sum(
        os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files
    )


def source_rows(metrics):
    try:
        with open(metrics) as f:
            m = json.load(f)
    except (OSError, ValueError):
        return 0
    return sum(n["rows_out"] for n in m["nodes"] if n["role"] == "source")


def start(args, store, metrics, log, resume):
    cmd = [
        args.weir, "run", "bench/nexmark/q5.yaml", "--var", "EVENTS=1000000000000",
        "-p", str(args.p), "--threads", str(args.p), "--progress", "off", "--http", "off",
        "--set", f"checkpoint={{interval: {args.interval}, store: {store}}}",
        "--metrics-json", metrics, "--metrics-json-interval", "0.1",
    ]
    if resume:
        cmd.append("--resume")
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)


def wait_for(what, cond, proc, timeout):
    """Polls `cond` every 10 ms; ends `proc` and exits when it exits or `timeout` s pass."""
    deadline = time.monotonic() + timeout
    while not cond():
        if proc.poll() is not None:
            sys.exit(f"recovery: weir exited ({proc.returncode}) while waiting for {what}")
        if time.monotonic() > deadline:
            sys.exit(f"recovery: timed out waiting for {what}")
        time.sleep(0.01)


def round_(args, r):
    work = tempfile.mkdtemp(prefix="weir-recovery-")
    store = os.path.join(work, "store")
    metrics = os.path.join(work, "metrics.json")
    log = open(os.path.join(work, "weir.log"), "w")
    procs = []
    try:
        job = start(args, store, metrics, log, resume=False)
        procs.append(job)
        wait_for(f"{args.events_at} events", lambda: source_rows(metrics) >= args.events_at,
                 job, 600)
        before = max(manifests(store), default=0) if os.path.isdir(store) else 0
        wait_for("a checkpoint after them", lambda: max(manifests(store), default=0) > before,
                 job, 120)
        ck = max(manifests(store))
        state = size_of(os.path.join(store, f"chk-{ck:010d}"))
        events = source_rows(metrics)
        os.kill(job.pid, signal.SIGKILL)
        killed = time.monotonic()
        job.wait()
        resumed = start(args, store, metrics, log, resume=True)
        procs.append(resumed)
        wait_for("a checkpoint after the resume", lambda: max(manifests(store)) > ck, resumed,
                 120)
        recovered = time.monotonic() - killed
        resumed.kill()
        resumed.wait()
        log.flush()
        said = [ln.split("INFO ", 1)[-1].strip() for ln in open(log.name) if "recovered:" in ln]
        print(
            f"round {r}: checkpoint {ck} after >= {args.events_at} events ({events} at the "
            f"kill): {state} bytes; kill -9 -> checkpoint {ck + 1}+ complete {recovered:.2f} s"
            f" (weir: {said[-1] if said else 'no recovered line'})",
            flush=True,
        )
        return state, recovered
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        log.close()
        shutil.rmtree(work, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("weir")
    ap.add_argument("--events-at", type=int, default=10_000_000)
    ap.add_argument("--interval", default="1s")
    ap.add_argument("-p", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    # A timeout's SIGTERM ends the round through its `finally` (which kills the weir it started).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("recovery: terminated"))
    os.chdir(os.path.join(os.path.dirname(os.path.abspath(__file__)), "../.."))
    runs = [round_(args, r) for r in range(1, args.rounds + 1)]
    print(
        f"median over {len(runs)} rounds (p={args.p}, checkpoints every {args.interval}): "
        f"state {statistics.median(x[0] for x in runs) / 1024:.0f} KiB after "
        f"{args.events_at} events; kill -9 -> first checkpoint complete "
        f"{statistics.median(x[1] for x in runs):.2f} s"
    )


if __name__ == "__main__":
    main()
