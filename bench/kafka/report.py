"""Writes the result file of bench/run-kafka.sh from its raw lines.

usage: report.py RAW LATENCY OUT RUNS WEIR FLINK JAR JAVA CPUS LOAD COMMAND

RAW: `engine p round events written wall user sys maxrss_kib tree_cpu_s tree_peak_rss_kib rc
job_s` per throughput run; LATENCY: `delivery round latency key=value...` per latency run.
"""

import statistics as st, sys
raw, lat, out, runs, weir, flink, jar, java, cpus, load, command = sys.argv[1:]
rows, startup = {}, {}
for line in open(raw):
    eng, p, r, n, written, wall, user, sys_, maxrss, cpu, peak, rc, job = line.split()
    if eng == "flink-startup":
        startup.setdefault(p, []).append(float(cpu))
        continue
    rows.setdefault(p, {}).setdefault(eng, []).append(
        (float(wall), float(cpu), int(peak), float(job) if job != "-" else float(wall), int(n), int(written)))
def med(xs, i): return st.median(x[i] for x in xs)
L = [
    "# Kafka: throughput of Kafka -> filter -> Kafka (weir vs Apache Flink) and latency of the image pipeline",
    "",
    f"- weir: {weir}; Flink: PyFlink {flink} local mini-cluster with {jar} (Maven Central); {java}",
    "- broker: Apache Kafka 4.4.0 (KRaft, one combined broker+controller, -Xmx512m) on 127.0.0.1, "
    "started by the script; its CPU is counted for neither engine",
    f"- machine: {cpus} CPUs shared with other work (load average at the end: {load})",
    f"- command: `{command}`",
    "",
]
if rows:
    L += [
        "## Throughput: Kafka -> filter (amount > 500) -> Kafka, JSON, at least once",
        "",
        f"Input: JSON events (id, user, amount, category, 20-char note; ~110 bytes) on 2 partitions, read "
        "to the end; about half pass. events/CPU-s: input events / (user+sys of the engine's whole "
        "process tree, JVM start-up included for Flink); 'Flink w/o start-up' subtracts the median CPU "
        f"of a one-event job. {runs} rounds, weir and Flink alternately; medians.",
        "",
        "| p | weir k ev/CPU-s | Flink k ev/CPU-s | ratio | Flink w/o start-up k ev/CPU-s | ratio w/o start-up | weir k ev/s | Flink k ev/s | Flink job-only k ev/s | weir RSS MiB | Flink RSS MiB |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    notes = []
    for p, d in sorted(rows.items()):
        w, f = d.get("weir", []), d.get("flink", [])
        if not w or not f: continue
        n = w[0][4]
        wc, fc = n / med(w, 1) / 1e3, n / med(f, 1) / 1e3
        s0 = st.median(startup.get(p, [0.0]))
        fj = n / max(med(f, 1) - s0, 1e-9) / 1e3
        L.append(f"| {p} | {wc:.0f} | {fc:.0f} | {wc / fc:.2f}x | {fj:.0f} | {wc / fj:.2f}x | "
                 f"{n / med(w, 0) / 1e3:.0f} | {n / med(f, 0) / 1e3:.0f} | {n / med(f, 3) / 1e3:.0f} | "
                 f"{med(w, 2) / 1024:.0f} | {med(f, 2) / 1024:.0f} |")
        outs = sorted({x[5] for x in w + f})
        notes.append(f"p={p}: messages written per run: {', '.join(map(str, outs))} (the same for every "
                     f"run: {'yes' if len(outs) == 1 else 'NO'})")
    L += [""] + notes + ["", "Flink start-up (one-event job), median CPU-s: " + ", ".join(
        f"p={p}: {st.median(v):.1f}" for p, v in sorted(startup.items())), "",
        "Raw runs (engine p round events written wall user sys maxrss_kib tree_cpu_s tree_peak_rss_kib rc flink_job_s):",
        "", "```"] + [l.rstrip() for l in open(raw)] + ["```", ""]
lat_rows = [l.split() for l in open(lat) if l.strip()]
if lat_rows:
    L += ["## Latency: images on a topic -> decode -> open-nsfw -> label on a topic (weir, p=1)", "",
          "Send time to the time a read_committed consumer receives the label, per image, after 8 warm-up "
          "images; checkpoints in both modes; median over rounds of each round's p50 / p99.", "",
          "| delivery | rounds | p50 ms | p99 ms | mean ms | images per round | missing | duplicates |",
          "|---|---|---|---|---|---|---|---|"]
    by = {}
    for parts in lat_rows:
        kv = dict(x.split("=", 1) for x in parts[3:])
        by.setdefault(parts[0], []).append(kv)
    for d, kvs in by.items():
        g = lambda k: st.median(float(x[k]) for x in kvs)
        L.append(f"| {d} | {len(kvs)} | {g('p50_ms'):.0f} | {g('p99_ms'):.0f} | {g('mean_ms'):.0f} | "
                 f"{g('n'):.0f} | {sum(int(x['missing']) for x in kvs)} | {sum(int(x['duplicates']) for x in kvs)} |")
    L += ["", "Raw runs:", "", "```"] + [l.rstrip() for l in open(lat)] + ["```", ""]
open(out, "w").write("\n".join(L))
print("\n".join(L))
