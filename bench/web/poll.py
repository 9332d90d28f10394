#!/usr/bin/env python3
"""Polls a running weir job's web API at a fixed rate until the job ends.

    poll.py API_FILE RATE OUT.tsv

Waits for API_FILE (the job's api.json), then sends RATE requests per second, alternating
GET /api/v1/overview, GET /metrics and GET /api/v1/operators (what the UI, Prometheus and a
script would ask), and writes one line per answered request: "path<TAB>status<TAB>seconds".
Stops when the job stops answering. Standard library only; loopback only; no proxy.
"""
import json
import os
import sys
import time
import urllib.request

api_file, rate, out = sys.argv[1], float(sys.argv[2]), sys.argv[3]
deadline = time.time() + 60
while not os.path.exists(api_file):
    if time.time() > deadline:
        sys.exit(f"poll.py: {api_file} did not appear")
    time.sleep(0.01)
for _ in range(100):
    try:
        url = json.load(open(api_file))["url"]
        break
    except (ValueError, KeyError, OSError):
        time.sleep(0.01)
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
paths = ["/api/v1/overview", "/metrics", "/api/v1/operators"]
period = 1.0 / rate
n = 0
misses = 0
with open(out, "w") as f:
    next_at = time.time()
    while misses < 3:
        path = paths[n % len(paths)]
        t0 = time.perf_counter()
        try:
            with opener.open(url + path, timeout=5) as r:
                r.read()
                status = r.status
            f.write(f"{path}\t{status}\t{time.perf_counter() - t0:.6f}\n")
            misses = 0
        except OSError:
            misses += 1
        n += 1
        next_at += period
        time.sleep(max(0.0, next_at - time.time()))
