"""map_batches modes: a CPU-bound pure-Python UDF at concurrency 1 and 2, in threads and in
worker processes. Prints one line per mode: wall seconds and rows per second (median of 3).

    .weir/venv-python/bin/python bench/python/udf_modes.py [ROWS]
"""

import statistics
import sys
import time

import pyarrow as pa

import weir

ROWS = int(sys.argv[1]) if len(sys.argv) > 1 else 40000


def busy(batch):
    # ~50 µs of interpreted work per row: what a GIL-bound post-processing step looks like.
    out = []
    for v in batch["n"].to_pylist():
        x = v
        for _ in range(300):
            x = (x * 1103515245 + 12345) % 2147483648
        out.append(x)
    return batch.append_column("h", pa.array(out, pa.int64()))


SCHEMA = pa.schema([("n", pa.int64()), ("h", pa.int64())])


def run(concurrency, processes):
    df = weir.datagen([{"name": "n", "kind": "sequence"}], rows=ROWS, batch_size=500).map_batches(
        busy, concurrency=concurrency, processes=processes, schema=SCHEMA
    )
    t = time.perf_counter()
    n = sum(b.num_rows for b in df.iter_batches())
    assert n == ROWS
    return time.perf_counter() - t


if __name__ == "__main__":
    for conc, proc in [(1, False), (1, True), (2, False), (2, True)]:
        times = [run(conc, proc) for _ in range(3)]
        med = statistics.median(times)
        mode = "processes" if proc else "threads"
        print(f"concurrency={conc} {mode:9s}: {med:6.2f} s  {ROWS / med:8.0f} rows/s  (runs: {', '.join(f'{x:.2f}' for x in times)})")
