#!/usr/bin/env python3
"""The inference-service benchmarks (bench/run-services.sh runs this; see bench/README.md).

1. scale: bench/services/scale.yaml under load (more images than one instance keeps up with);
   `weir scale nsfw 3` after PHASE seconds, `weir scale nsfw 1` after 2*PHASE, SIGTERM after
   3*PHASE. `weir services --json` is read every second: rows answered and the service's
   cumulative call-latency histogram, so each phase gets its throughput (rows/s) and its p50/p99
   call latency (histogram differences; bucket bounds, at most 15% high).
2. compare: the image-classification pipeline with the model inline, as a service with a thread
   instance, and as a service with a process instance; same images, same settings, interleaved
   rounds; rows/s from the job's elapsed time in --metrics-json, and the service's p50/p99.

Usage: run.py OUT.md [scale] [compare]   (environment: WEIR, IMAGES, PHASE, RUNS, TMP)
"""

import json
import os
import statistics
import subprocess
import sys
import time

WEIR = os.environ.get("WEIR", "target/ci/weir")
IMAGES = os.environ["IMAGES"]
PHASE = float(os.environ.get("PHASE", "12"))
RUNS = int(os.environ.get("RUNS", "2"))
TMP = os.environ.get("TMP_DIR", "target/tmp/bench-services")
N_IMAGES = len([f for f in os.listdir(IMAGES) if f.endswith(".jpg")])


def bound_ms(i, n):
    return float("inf") if i + 1 >= n else 1.15**i


def quantile(buckets, q):
    total = sum(buckets)
    if total == 0:
        return None
    rank = max(1, -(-int(total * q * 1000) // 1000))
    seen = 0
    for i, c in enumerate(buckets):
        seen += c
        if seen >= rank:
            return bound_ms(i, len(buckets))
    return None


def services(ctl):
    r = subprocess.run(
        [WEIR, "services", "--json", "--control-file", ctl],
        capture_output=True,
        text=True,
    )
    if r.returncode != 0:
        return None
    lines = [json.loads(line) for line in r.stdout.splitlines() if line.strip()]
    return next((s for s in lines if s["name"] == "nsfw"), None)


def fmt(v, unit=""):
    if v is None:
        return "-"
    if v == float("inf"):
        return "> 3.5 min"
    return f"{v:.0f}{unit}"


def scale(out):
    os.makedirs(TMP, exist_ok=True)
    ctl = os.path.join(TMP, "scale-control.json")
    log = open(os.path.join(TMP, "scale.log"), "w")
    job = subprocess.Popen(
        [WEIR, "run", "bench/services/scale.yaml", "--progress", "log", "--log-interval", "2",
         "--set", f"steps.images.url={IMAGES}", "--control-file", ctl],
        stdout=subprocess.DEVNULL,
        stderr=log,
    )
    while not os.path.exists(ctl):
        time.sleep(0.05)
        if job.poll() is not None:
            sys.exit(f"weir run ended early; see {TMP}/scale.log")
    # The clock starts once the first instance answers (model loaded).
    while True:
        s = services(ctl)
        if s and s["answered"] > 0:
            break
        time.sleep(0.1)
    t0 = time.monotonic()
    samples = []  # (t, status)
    plan = [(PHASE, 3), (2 * PHASE, 1), (3 * PHASE, None)]
    phase_edges = [0.0]
    while plan:
        now = time.monotonic() - t0
        s = services(ctl)
        if s:
            samples.append((now, s))
        if now >= plan[0][0]:
            _, n = plan.pop(0)
            phase_edges.append(now)
            if n is None:
                job.terminate()
            else:
                subprocess.run([WEIR, "scale", "nsfw", str(n), "--control-file", ctl],
                               check=True, capture_output=True)
        time.sleep(max(0.0, 1.0 - ((time.monotonic() - t0) % 1.0)))
    job.wait(timeout=300)
    log.close()

    def at(t):
        return min(samples, key=lambda x: abs(x[0] - t))

    rows = []
    for i, name in enumerate(["1 instance", "scaled to 3", "back to 1"]):
        (ta, a), (tb, b) = at(phase_edges[i]), at(phase_edges[i + 1])
        hist = [y - x for x, y in zip(a["latency_buckets"], b["latency_buckets"])]
        rate = (b["answered_rows"] - a["answered_rows"]) / max(tb - ta, 1e-3)
        ready = sorted({s["ready"] for t, s in samples if ta <= t <= tb})
        rows.append((name, tb - ta, rate, quantile(hist, 0.5), quantile(hist, 0.99),
                     sum(hist), ready))
    timeline = " ".join(
        f"{t:.0f}s:{s['ready']}r{s['loading']}l/{s['answered_rows']}" for t, s in samples[:: max(1, len(samples) // 40)]
    )
    last = samples[-1][1]
    with open(out, "a") as f:
        f.write("### Scaling 1 -> 3 -> 1 under load (bench/services/scale.yaml)\n\n")
        f.write(f"{N_IMAGES} images offered; phases of {PHASE:.0f} s; instances are `weir serve-model` "
                "processes with 1 intra-op thread; requests of at most 8 rows, 6 in flight.\n\n")
        f.write("| phase | seconds | ready instances seen | rows/s | calls | call p50 | call p99 |\n|---|---|---|---|---|---|---|\n")
        for name, secs, rate, p50, p99, calls, ready in rows:
            f.write(f"| {name} | {secs:.1f} | {', '.join(map(str, ready))} | {rate:.1f} | {calls} | "
                    f"{fmt(p50, ' ms')} | {fmt(p99, ' ms')} |\n")
        f.write(f"\nDeaths {last['deaths']}, failed {last['failed']}, retries {last['retries']}. "
                f"Timeline (t: ready r, loading l / rows answered): {timeline}\n\n")
    print(f"scale: {rows}", file=sys.stderr)


def compare(out):
    os.makedirs(TMP, exist_ok=True)
    variants = [
        ("inline", "bench/services/classify-inline.yaml", []),
        ("service, thread instance", "bench/services/classify-service.yaml", []),
        ("service, process instance", "bench/services/classify-service.yaml",
         ["--set", "services.0.placement=process"]),
    ]
    results = {name: [] for name, _, _ in variants}
    for r in range(RUNS):
        for name, spec, extra in variants:
            m = os.path.join(TMP, "metrics.json")
            res = os.path.join(TMP, "out")
            subprocess.run(["rm", "-rf", res], check=True)
            t = time.monotonic()
            subprocess.run(
                [WEIR, "run", spec, "--progress", "off", "--metrics-json", m,
                 "--set", f"steps.images.url={IMAGES}", "--set", f"steps.results.path={res}", *extra],
                check=True, stdout=subprocess.DEVNULL, stderr=open(os.path.join(TMP, "compare.log"), "a"),
            )
            wall = time.monotonic() - t
            j = json.load(open(m))
            svc = j.get("services") or [{}]
            rows_out = next(n["rows_in"] for n in j["nodes"] if n["name"] == "results")
            assert rows_out == N_IMAGES, (name, rows_out)
            results[name].append((j["elapsed_s"], wall, svc[0].get("latency_p50_ms"),
                                  svc[0].get("latency_p99_ms")))
            print(f"compare round {r}: {name}: {j['elapsed_s']:.1f}s", file=sys.stderr)
    with open(out, "a") as f:
        f.write("### Model inline vs as a service (bench/services/classify-*.yaml)\n\n")
        f.write(f"{N_IMAGES} images, files -> decode -> resize 256 -> crop 224 -> to_tensor -> "
                "open-nsfw (ResNet-50; one instance, 2 intra-op threads, batches <= 32) -> top_k -> Parquet. "
                f"Median of {RUNS} interleaved rounds.\n\n")
        f.write("| model | job seconds | images/s | vs inline | call p50 | call p99 |\n|---|---|---|---|---|---|\n")
        base = statistics.median(e for e, *_ in results["inline"])
        for name, _, _ in variants:
            el = statistics.median(e for e, *_ in results[name])
            p50s = [p for _, _, p, _ in results[name] if p is not None]
            p99s = [p for *_, p in results[name] if p is not None]
            f.write(f"| {name} | {el:.1f} | {N_IMAGES / el:.1f} | {base / el:.2f}x | "
                    f"{fmt(statistics.median(p50s) if p50s else None, ' ms')} | "
                    f"{fmt(statistics.median(p99s) if p99s else None, ' ms')} |\n")
        f.write("\n")


def main():
    out = sys.argv[1]
    which = sys.argv[2:] or ["scale", "compare"]
    if "scale" in which:
        scale(out)
    if "compare" in which:
        compare(out)


if __name__ == "__main__":
    main()
