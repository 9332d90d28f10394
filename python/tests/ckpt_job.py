"""A checkpointed job with a stateful Python UDF, run as a script by test_exactly_once.py:
``python ckpt_job.py OUT CHECKPOINTS fresh|resume ROWS_PER_SECOND``."""

import sys

import pyarrow as pa

import udfs
import weir

out, store, mode, rate = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
schema = pa.schema([("n", pa.int64()), ("seen", pa.int64())])
df = (
    weir.datagen(
        [{"name": "n", "kind": "sequence"}],
        rows=20000,
        batch_size=250,
        rows_per_second=rate if rate > 0 else None,
        job=weir.pipeline("exactly-once-py"),
    )
    .map_batches(udfs.Counter, processes=True, schema=schema)
    .with_column("n2", "n * 2")
    .write_parquet(out)
)
df.run(checkpoint={"store": store, "interval": "200ms"}, resume=(mode == "resume"), progress=False)
