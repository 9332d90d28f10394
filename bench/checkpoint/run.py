#!/usr/bin/env python3
"""The checkpoint benchmarks (see bench/README.md), driven by bench/run-checkpoint.sh.

1. cost:         throughput.yaml (1 s checkpoints) against throughput-none.yaml, alternating,
                 RUNS rounds; median wall time of each and the ratio.
2. backpressure: backpressure.yaml with aligned and with unaligned checkpoints, alternating;
                 checkpoint durations (trigger to manifest) from --metrics-json, p50 / p99.
3. recovery:     backpressure.yaml is killed with SIGKILL KILL_AFTER seconds in, then resumed;
                 the recovery time is the time from the resumed process's start to its first
                 completed checkpoint (`first_completed_ms`), next to the time a run over one image
                 takes without checkpoints (start-up + model load + one inference).

Writes a Markdown report to the path given as the first argument. Standard library only.
"""

import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

WEIR = os.environ.get("WEIR", "target/bench-fast/weir")
RUNS = int(os.environ.get("RUNS", "3"))
KILL_AFTER = float(os.environ.get("KILL_AFTER", "6"))
IMAGES = os.environ["IMAGES"]


def run(args, env=None, timeout=1800):
    """Runs weir; returns (wall seconds, metrics JSON)."""
    with tempfile.TemporaryDirectory() as t:
        metrics = os.path.join(t, "metrics.json")
        cmd = [WEIR, "run", *args, "--progress", "off", "--metrics-json", metrics]
        print("+", " ".join(cmd), file=sys.stderr, flush=True)
        start = time.monotonic()
        p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
        wall = time.monotonic() - start
        if p.returncode != 0:
            sys.exit(f"failed: {' '.join(cmd)}\n{p.stderr[-4000:]}")
        with open(metrics) as f:
            return wall, json.load(f)


def pct(values, q):
    if not values:
        return float("nan")
    v = sorted(values)
    return v[min(len(v) - 1, int(round(q * (len(v) - 1))))]


def cost(out):
    walls = {"none": [], "1s": []}
    for r in range(RUNS):
        for key, spec in [("none", "throughput-none.yaml"), ("1s", "throughput.yaml")]:
            d = tempfile.mkdtemp(prefix="weir-ckpt-")
            try:
                wall, m = run([f"bench/checkpoint/{spec}", "--var", f"OUT={d}"])
            finally:
                shutil.rmtree(d, ignore_errors=True)
            n = (m.get("checkpoints") or {}).get("completed", 0)
            print(f"  round {r + 1} {key}: {wall:.2f} s, {n} checkpoints", file=sys.stderr)
            walls[key].append((wall, n))
    none = statistics.median(w for w, _ in walls["none"])
    ck = statistics.median(w for w, _ in walls["1s"])
    out.append("### Cost of 1 s checkpoints (10 M events, filter, key_by, Parquet sink, parallelism 2)\n")
    out.append("| variant | runs (wall s, checkpoints) | median wall (s) |")
    out.append("|---|---|---:|")
    for key, label in [("none", "no checkpoints"), ("1s", "checkpoint every 1 s")]:
        runs = ", ".join(f"{w:.2f} ({n})" for w, n in walls[key])
        out.append(f"| {label} | {runs} | {statistics.median(w for w, _ in walls[key]):.2f} |")
    out.append(f"\nCost: **{(ck / none - 1) * 100:+.1f} %** wall time (target: at most 5 %).\n")


def backpressure(out):
    res = {"aligned": [], "unaligned": []}
    walls = {"aligned": [], "unaligned": []}
    for r in range(RUNS):
        for mode in ["aligned", "unaligned"]:
            d = tempfile.mkdtemp(prefix="weir-ckpt-")
            try:
                wall, m = run(["bench/checkpoint/backpressure.yaml", "--var", f"OUT={d}",
                               "--var", f"MODE={mode}", "--var", f"IMAGES={IMAGES}"])
            finally:
                shutil.rmtree(d, ignore_errors=True)
            ds = m["checkpoints"]["durations_ms"]
            print(f"  round {r + 1} {mode}: {wall:.1f} s, {len(ds)} checkpoints, "
                  f"p50 {pct(ds, 0.5)} ms, p99 {pct(ds, 0.99)} ms", file=sys.stderr)
            res[mode].extend(ds)
            walls[mode].append(wall)
    out.append("### Checkpoint duration under inference backpressure (photos -> tensors x2 -> "
               "rebalance -> open-nsfw x1, 1 s interval)\n")
    out.append("| mode | checkpoints | p50 (ms) | p99 (ms) | max (ms) | median job wall (s) |")
    out.append("|---|---:|---:|---:|---:|---:|")
    for mode in ["aligned", "unaligned"]:
        ds = res[mode]
        out.append(f"| {mode} | {len(ds)} | {pct(ds, 0.5)} | {pct(ds, 0.99)} | "
                   f"{max(ds) if ds else 'n/a'} | {statistics.median(walls[mode]):.1f} |")
    out.append("")


def recovery(out):
    one = tempfile.mkdtemp(prefix="weir-one-")
    imgs = sorted(f for f in os.listdir(IMAGES) if f.endswith(".jpg"))
    os.symlink(os.path.join(os.path.abspath(IMAGES), imgs[0]), os.path.join(one, imgs[0]))
    rows = []
    try:
        for r in range(RUNS):
            d = tempfile.mkdtemp(prefix="weir-none-")
            spec = "bench/checkpoint/backpressure.yaml"
            load, _ = run([spec, "--var", f"OUT={d}", "--var", f"IMAGES={one}"])
            shutil.rmtree(d, ignore_errors=True)
            d = tempfile.mkdtemp(prefix="weir-rec-")
            args = [spec, "--var", f"OUT={d}", "--var", f"IMAGES={IMAGES}"]
            cmd = [WEIR, "run", *args, "--progress", "off"]
            print("+", " ".join(cmd), f"(SIGKILL after {KILL_AFTER} s)", file=sys.stderr)
            p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(KILL_AFTER)
            p.send_signal(signal.SIGKILL)
            p.wait()
            wall, m = run([*args, "--resume"])
            c = m["checkpoints"]
            rec = c.get("first_completed_ms")
            rows.append((load, rec, c.get("restored_from"), wall))
            print(f"  round {r + 1}: one-image run {load:.2f} s, recovery {rec} ms "
                  f"(restored from {c.get('restored_from')})", file=sys.stderr)
            shutil.rmtree(d, ignore_errors=True)
    finally:
        shutil.rmtree(one, ignore_errors=True)
    out.append(f"### Recovery after kill -9 ({KILL_AFTER:g} s into the backpressure job, aligned)\n")
    out.append("| round | one-image run without checkpoints (s): start-up + model load + 1 image "
               "| restored from | recovery: resumed start to first checkpoint (s) |")
    out.append("|---:|---:|---:|---:|")
    for i, (load, rec, frm, _) in enumerate(rows):
        out.append(f"| {i + 1} | {load:.2f} | {frm} | {rec / 1000 if rec else float('nan'):.2f} |")
    load = statistics.median(x[0] for x in rows)
    rec = statistics.median((x[1] or 0) / 1000 for x in rows)
    out.append(f"\nMedian recovery {rec:.2f} s against the target of model load + 2 s = "
               f"{load + 2:.2f} s (the one-image run is an upper bound of the model load).\n")


def main():
    report = sys.argv[1]
    which = sys.argv[2:] or ["cost", "backpressure", "recovery"]
    out = []
    for w in which:
        {"cost": cost, "backpressure": backpressure, "recovery": recovery}[w](out)
    with open(report, "a") as f:
        f.write("\n".join(out) + "\n")
    print("\n".join(out))


if __name__ == "__main__":
    main()
