#!/usr/bin/env python3
"""Tabulates the runs of bench/run-ai.sh (standard library only).

usage: ai_table.py RUNS.tsv

RUNS.tsv has one line per run: workload variant round items load wall user sys maxrss_kib
tree_cpu_s tree_peak_rss_kib. Prints, per workload, a markdown table of every run, the medians
per variant, and the ratios L/X for each lead L that ran (weir, the `weir` binary on YAML; weir-py,
the same pipeline through the Python API) against every other variant X (items/s: the median over
rounds of L's items/s divided by X's in the same round; CPU: X's CPU-s per item over L's, same
pairing), with the target where the issues set one.
"""

import statistics
import sys
from collections import defaultdict

LABELS = {
    "weir": "weir",
    "weir-py": "weir, Python API",
    "loop": "hand-written Rust loop",
    "loop-nospin": "Rust loop, spinning off",
    "python": "plain Python loop",
    "daft": "Daft 0.7.26",
    "ray": "Ray Data 2.60.0",
}
# (workload, lead, variant) -> the least lead ÷ variant items/s asked for
TARGETS = {
    ("images", "weir", "loop"): 0.95,
    ("images", "weir", "daft"): 1.5,
    ("images", "weir", "ray"): 1.5,
    ("text", "weir", "loop"): 0.95,
    ("text", "weir", "python"): 1.3,
    # issue 15: the Python API within 5 % of the YAML pipeline, the image pipeline >= 1.5x Daft
    ("images", "weir-py", "weir"): 0.95,
    ("text", "weir-py", "weir"): 0.95,
    ("images", "weir-py", "daft"): 1.5,
}
LEADS = ("weir", "weir-py")


def main():
    runs = defaultdict(lambda: defaultdict(dict))  # workload -> variant -> round -> row
    order = defaultdict(list)
    with open(sys.argv[1]) as f:
        for line in f:
            w, v, r, items, load, wall, user, sys_, rss, tcpu, trss = line.split()
            row = {
                "items": int(items),
                "load": float(load),
                "wall": float(wall),
                "cpu_time": float(user) + float(sys_),
                "tree_cpu": float(tcpu),
                "rss": int(rss) / 1024,
                "tree_rss": int(trss) / 1024,
            }
            # CPU-seconds: the larger of GNU time's user+sys and the sampled process tree (they
            # agree for one process; Ray's workers are only seen by the sampler)
            row["cpu"] = max(row["cpu_time"], row["tree_cpu"])
            row["ips"] = row["items"] / row["wall"]
            row["cpu_per_item"] = row["cpu"] / row["items"]
            runs[w][v][int(r)] = row
            if v not in order[w]:
                order[w].append(v)
    for w, variants in runs.items():
        print(f"### {w}\n")
        print(
            "| variant | run | load before | wall (s) | items/s | CPU-s (user+sys) | CPU-ms/item "
            "| peak RSS (MiB, largest process) | peak RSS (MiB, process tree) |"
        )
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        med = {}
        for v in order[w]:
            rs = variants[v]
            for r in sorted(rs):
                x = rs[r]
                print(
                    f"| {LABELS.get(v, v)} | {r} | {x['load']:.2f} | {x['wall']:.2f} | {x['ips']:.1f} "
                    f"| {x['cpu']:.1f} | {1000 * x['cpu_per_item']:.2f} | {x['rss']:.0f} | {x['tree_rss']:.0f} |"
                )
            m = {k: statistics.median(x[k] for x in rs.values()) for k in next(iter(rs.values()))}
            med[v] = m
            print(
                f"| **{LABELS.get(v, v)}** | **median** | | **{m['wall']:.2f}** | **{m['ips']:.1f}** "
                f"| **{m['cpu']:.1f}** | **{1000 * m['cpu_per_item']:.2f}** | **{m['rss']:.0f}** "
                f"| **{m['tree_rss']:.0f}** |"
            )
        print()
        for lead in LEADS:
            if lead in variants and len(variants) > 1:
                ratios(w, lead, variants, med, order[w])


def ratios(w, lead, variants, med, order):
    name = LABELS[lead]
    print(f"#### {w}: medians and ratios, {name} against the others\n")
    print(
        f"| variant | items/s | CPU-ms/item | peak RSS (MiB, tree) | {name} ÷ variant, items/s "
        f"(pairs) | variant ÷ {name}, CPU per item | target | |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---|")
    base = variants[lead]
    for v in order:
        m = med[v]
        if v == lead:
            print(
                f"| **{name}** | **{m['ips']:.1f}** | **{1000 * m['cpu_per_item']:.2f}** "
                f"| **{m['tree_rss']:.0f}** | 1 | 1 | | |"
            )
            continue
        rounds = sorted(set(base) & set(variants[v]))
        pairs = [base[r]["ips"] / variants[v][r]["ips"] for r in rounds]
        cpairs = [variants[v][r]["cpu_per_item"] / base[r]["cpu_per_item"] for r in rounds]
        ratio = statistics.median(pairs) if pairs else float("nan")
        cratio = statistics.median(cpairs) if cpairs else float("nan")
        target = TARGETS.get((w, lead, v))
        verdict = ""
        if target is not None:
            verdict = "meets" if ratio >= target else "**MISSES**"
        print(
            f"| {LABELS.get(v, v)} | {m['ips']:.1f} | {1000 * m['cpu_per_item']:.2f} | {m['tree_rss']:.0f} "
            f"| **{ratio:.2f}×** ({' '.join(f'{p:.2f}' for p in pairs)}) | {cratio:.2f}× "
            f"| {'≥ %.2f×' % target if target else ''} | {verdict} |"
        )
    print()


if __name__ == "__main__":
    main()
