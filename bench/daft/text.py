"""Daft 0.7 running the text benchmark: the same pipeline, with the same model, through Python
onnxruntime.

  read_json(sentences.jsonl) -> Embedder (a class UDF, @daft.cls(max_concurrency=1), tokenizers +
  one onnxruntime session with BENCH_ORT_THREADS (2) intra-op threads;
  @daft.method.batch(batch_size=32): tokenize, pad to the batch's longest row, run MiniLM,
  mean-pool with the mask, L2-normalise, as common.embed) -> write_parquet(id, embedding).

Batches are formed in input order (Daft has no length bucketing). usage: text.py [JSONL] [OUT_DIR]
"""

import os
import shutil
import sys
import time

import daft
from daft import DataType, col

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "python"))
import common  # noqa: E402

DIM = 384


@daft.cls(max_concurrency=1)
class Embedder:
    def __init__(self):
        model, tok = common.minilm_paths()
        self.sess = common.session(model)
        self.tok = common.tokenizer(tok)

    @daft.method.batch(
        return_dtype=DataType.embedding(DataType.float32(), DIM), batch_size=common.BATCH_SIZE
    )
    def __call__(self, texts):
        return common.embed(self.sess, self.tok, texts.to_pylist())


def main():
    src = sys.argv[1] if len(sys.argv) > 1 else "data/generated/text/sentences.jsonl"
    out = sys.argv[2] if len(sys.argv) > 2 else "out/bench/text-daft"
    t0 = time.time()
    shutil.rmtree(out, ignore_errors=True)
    df = daft.read_json(src)
    embedder = Embedder()
    df = df.select(col("id"), embedder(col("text")).alias("embedding"))
    result = df.write_parquet(out)
    import pyarrow.parquet as pq

    n = sum(
        pq.ParquetFile(p.removeprefix("file://")).metadata.num_rows
        for p in result.to_pydict()["path"]
    )
    dt = time.time() - t0
    print(f"daft text.py: rows_out={n} in {dt:.2f} s ({n / dt:.1f} sentences/s)")


if __name__ == "__main__":
    main()
