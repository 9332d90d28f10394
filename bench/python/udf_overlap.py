"""map_batches instances overlap: a UDF that waits 0.1 s per batch of 100 rows (40 batches),
at concurrency 1 and 2, in processes and threads. Prints concurrency, processes, rows, seconds.

    .weir/venv-python/bin/python bench/python/udf_overlap.py
"""
import time, weir, pyarrow as pa
def slow(b):
    time.sleep(0.1); return b
for conc, proc in [(1, True), (2, True), (2, False)]:
    df = weir.datagen([{"name": "n", "kind": "sequence"}], rows=4000, batch_size=100).map_batches(slow, concurrency=conc, processes=proc, schema=pa.schema([("n", pa.int64())]))
    t = time.perf_counter(); n = sum(b.num_rows for b in df.iter_batches()); print(conc, proc, n, round(time.perf_counter() - t, 2))
