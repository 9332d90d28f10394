"""Ray Data 2.60 running the text benchmark: the same pipeline, with the same model, through
Python onnxruntime.

  ray.init(num_cpus=2) -> read_json(sentences.jsonl) -> map_batches(Embedder, batch_size=32,
  compute=ActorPoolStrategy(size=1), num_cpus=0.5) (one actor: tokenizers + one onnxruntime
  session with BENCH_ORT_THREADS (2) intra-op threads; tokenize, pad to the batch's longest row,
  MiniLM, mean-pool, L2-normalise, as common.embed) -> write_parquet(id, embedding).

Batches are formed in input order. usage: text.py [JSONL] [OUT_DIR]
"""

import os
import shutil
import sys
import time

import ray

PYDIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "python")
sys.path.insert(0, PYDIR)
import common  # noqa: E402


class Embedder:
    def __init__(self):
        model, tok = common.minilm_paths()
        self.sess = common.session(model)
        self.tok = common.tokenizer(tok)

    def __call__(self, batch):
        return {"id": batch["id"], "embedding": common.embed(self.sess, self.tok, batch["text"])}


def main():
    src = sys.argv[1] if len(sys.argv) > 1 else "data/generated/text/sentences.jsonl"
    out = sys.argv[2] if len(sys.argv) > 2 else "out/bench/text-ray"
    t0 = time.time()
    shutil.rmtree(out, ignore_errors=True)
    # workers import common.py too
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [PYDIR, os.environ.get("PYTHONPATH")]))
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    ds = ray.data.read_json(os.path.abspath(src))
    ds = ds.map_batches(
        Embedder,
        batch_size=common.BATCH_SIZE,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=1),
        num_cpus=0.5,
    )
    ds.write_parquet(os.path.abspath(out))
    import pyarrow.parquet as pq

    n = pq.ParquetDataset(out).read(columns=["id"]).num_rows
    dt = time.time() - t0
    print(f"ray text.py: rows_out={n} in {dt:.2f} s ({n / dt:.1f} sentences/s)")
    ray.shutdown()


if __name__ == "__main__":
    main()
