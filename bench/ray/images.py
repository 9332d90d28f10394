"""Ray Data 2.60 running the image benchmark: the same pipeline, with the same model, through
Python onnxruntime.

  ray.init(num_cpus=2) -> read_images(DIR, mode="RGB", include_paths=True) (Pillow decode in read
  tasks) -> map_batches(preprocess, batch_size=32) (tasks: Pillow bilinear resize of the shorter
  side to 256, centre crop 224, BGR minus mean, as common.preprocess_array) ->
  map_batches(NsfwModel, batch_size=32, compute=ActorPoolStrategy(size=1), num_cpus=0.5) (one
  actor, one onnxruntime session with BENCH_ORT_THREADS (2) intra-op threads) ->
  write_parquet(path, label, nsfw).

With --udf (the map_batches benchmark, `udf` in bench/run-ai.sh) the actor returns the model's
raw scores and map_batches(postprocess, batch_size=32) tasks do the post-processing in numpy
(post.postprocess_scores: softmax over the log-scores, arg-max, unsafe probability), the step
weir's map_batches and Daft's batch UDF run.

On 2 cores an actor that reserves a whole CPU starves the read tasks (see shared/STACK.md), hence
num_cpus=0.5. usage: images.py [--udf] [DIR] [OUT_DIR]
"""

import os
import shutil
import sys
import time

import numpy as np
import ray

PYDIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "python")
sys.path.insert(0, PYDIR)
import common  # noqa: E402


def preprocess(batch):
    return {
        "path": batch["path"],
        "tensor": np.stack([common.preprocess_array(img) for img in batch["image"]]),
    }


class NsfwModel:
    def __init__(self):
        self.sess = common.session(common.nsfw_model_path())

    def __call__(self, batch):
        labels, nsfw = common.classify(self.sess, batch["tensor"])
        return {
            "path": np.array([os.path.basename(p) for p in batch["path"]]),
            "label": labels,
            "nsfw": nsfw,
        }


class NsfwScores:
    """As NsfwModel, returning the model's raw scores [n, 2] (--udf)."""

    def __init__(self):
        self.sess = common.session(common.nsfw_model_path())

    def __call__(self, batch):
        x = np.ascontiguousarray(batch["tensor"], dtype=np.float32)
        scores = self.sess.run(["outputs"], {"input:0": x})[0].astype(np.float32)
        return {"path": batch["path"], "scores": scores}


def postprocess(batch):
    labels, nsfw = common.postprocess_scores(batch["scores"])
    return {
        "path": np.array([os.path.basename(p) for p in batch["path"]]),
        "label": labels,
        "nsfw": nsfw,
    }


def main():
    args = sys.argv[1:]
    udf = "--udf" in args
    args = [a for a in args if a != "--udf"]
    src = args[0] if args else "data/generated/images"
    out = args[1] if len(args) > 1 else f"out/bench/images-{'udf-' if udf else ''}ray"
    t0 = time.time()
    shutil.rmtree(out, ignore_errors=True)
    # workers import common.py too
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [PYDIR, os.environ.get("PYTHONPATH")]))
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ds = ray.data.read_images(os.path.abspath(src), mode="RGB", include_paths=True)
    ds = ds.map_batches(preprocess, batch_size=common.BATCH_SIZE, batch_format="numpy")
    ds = ds.map_batches(
        NsfwScores if udf else NsfwModel,
        batch_size=common.BATCH_SIZE,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=1),
        num_cpus=0.5,
    )
    if udf:
        ds = ds.map_batches(postprocess, batch_size=common.BATCH_SIZE, batch_format="numpy")
    ds.write_parquet(os.path.abspath(out))
    import pyarrow.parquet as pq

    n = pq.ParquetDataset(out).read(columns=["path"]).num_rows
    dt = time.time() - t0
    print(f"ray images.py{' --udf' if udf else ''}: rows_out={n} in {dt:.2f} s ({n / dt:.1f} images/s)")
    ray.shutdown()


if __name__ == "__main__":
    main()
