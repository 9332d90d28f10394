"""The plain Python baseline of the text benchmark: what a user writes without an engine.

Reads the sentences (one per line), then for each batch of 32 in input order: tokenizers
(MiniLM's tokenizer.json, padding to the batch's longest row, truncation at 128), onnxruntime
(intra-op threads = BENCH_ORT_THREADS, default 2), mean-pool with the mask and L2-normalise in
numpy. Writes id, embedding (fixed_size_list<float32, 384>) to one Parquet file.

usage: text_loop.py [SENTENCES.txt] [OUT.parquet]
"""

import os
import sys
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402


def main():
    src = sys.argv[1] if len(sys.argv) > 1 else "data/generated/text/sentences.txt"
    out = sys.argv[2] if len(sys.argv) > 2 else "out/bench/text-python.parquet"
    t0 = time.time()
    with open(src, encoding="utf-8") as f:
        lines = f.read().splitlines()
    model, tok_path = common.minilm_paths()
    sess = common.session(model)
    tok = common.tokenizer(tok_path)
    parts = []
    for i in range(0, len(lines), common.BATCH_SIZE):
        parts.append(common.embed(sess, tok, lines[i : i + common.BATCH_SIZE]))
    emb = np.concatenate(parts)
    table = pa.table(
        {
            "id": np.arange(len(lines), dtype=np.int64),
            "embedding": pa.FixedSizeListArray.from_arrays(pa.array(emb.reshape(-1)), emb.shape[1]),
        }
    )
    os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
    pq.write_table(table, out)
    dt = time.time() - t0
    print(f"text_loop.py: rows_out={len(lines)} in {dt:.2f} s ({len(lines) / dt:.1f} sentences/s)")


if __name__ == "__main__":
    main()
