#!/usr/bin/env python3
"""Runs one benchmark command under GNU time and samples its whole process tree.

usage: measure.py LOG RESULT -- COMMAND [ARGS...]

Runs `/usr/bin/time -f '%e %U %S %M' COMMAND`, stdout and stderr to LOG, and meanwhile every
0.2 s walks /proc for every descendant of the command (Ray starts a raylet, a GCS and worker
processes; GNU time only counts children that are reaped, and its %M is the largest single
process). Writes one line to RESULT:

  wall user sys maxrss_kib tree_cpu_s tree_peak_rss_kib exit_status

- wall, user, sys, maxrss_kib: GNU time's %e %U %S %M (user/sys include reaped children);
- tree_cpu_s: the sum over every process seen in the tree of its own utime + stime, as last
  sampled (a process that dies between samples loses at most 0.2 s of its time), or GNU time's
  user + sys where that is larger (exact for a command whose work is done by itself and the
  children it reaps, such as weir: the last 0.2 s are not lost);
- tree_peak_rss_kib: the largest sum of resident memory (VmRSS) over the tree at one sample.
Standard library only; the sampler itself uses ~1 % of a core.
"""

import os
import subprocess
import sys
import time

TICK = os.sysconf("SC_CLK_TCK")
PAGE_KIB = os.sysconf("SC_PAGE_SIZE") // 1024


def snapshot():
    """{pid: (ppid, starttime, cpu_ticks, rss_kib)} for every process."""
    procs = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                stat = f.read().decode("latin-1")
        except OSError:
            continue
        # the command name is in parentheses and may hold spaces
        rest = stat[stat.rfind(")") + 2 :].split()
        # rest[0] = state (field 3), so field n is rest[n - 3]
        ppid = int(rest[1])
        utime, stime = int(rest[11]), int(rest[12])
        start = int(rest[19])
        rss_pages = int(rest[21])
        procs[int(name)] = (ppid, start, utime + stime, rss_pages * PAGE_KIB)
    return procs


def tree(procs, root):
    children = {}
    for pid, (ppid, *_rest) in procs.items():
        children.setdefault(ppid, []).append(pid)
    out, todo = [], [root]
    while todo:
        p = todo.pop()
        if p in procs:
            out.append(p)
        todo.extend(children.get(p, []))
    return out


def main():
    if len(sys.argv) < 5 or sys.argv[3] != "--":
        sys.exit(__doc__)
    log, result, cmd = sys.argv[1], sys.argv[2], sys.argv[4:]
    timef = result + ".time"
    with open(log, "wb") as out:
        p = subprocess.Popen(
            ["/usr/bin/time", "-f", "%e %U %S %M", "-o", timef, *cmd],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        seen = {}  # (pid, starttime) -> cpu ticks
        members = set()  # (pid, starttime) known to be in the tree
        peak = 0
        while p.poll() is None:
            procs = snapshot()
            rss = 0
            in_tree = set(tree(procs, p.pid))
            for pid, (_pp, start, cpu, r) in procs.items():
                key = (pid, start)
                # a process stays ours after its parent died and it was re-parented
                if pid in in_tree or key in members:
                    members.add(key)
                    seen[key] = cpu
                    rss += r
            peak = max(peak, rss)
            time.sleep(0.2)
    with open(timef) as f:
        wall, user, sys_, maxrss = f.read().split()[-4:]
    tree_cpu = max(sum(seen.values()) / TICK, float(user) + float(sys_))
    with open(result, "w") as f:
        f.write(f"{wall} {user} {sys_} {maxrss} {tree_cpu:.2f} {max(peak, int(maxrss))} {p.returncode}\n")
    sys.exit(p.returncode)


if __name__ == "__main__":
    main()
