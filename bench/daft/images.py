"""Daft 0.7 running the image benchmark: the same pipeline, with the same model, through Python
onnxruntime.

  from_glob_path(DIR/*.jpg) -> download (Daft's native IO) -> decode_image (Daft's native Rust
  decoder, mode RGB) -> preprocess (a row-wise @daft.func: Pillow bilinear resize of the shorter
  side to 256, centre crop 224, BGR minus mean, as common.preprocess_array) -> NsfwModel (a class
  UDF, @daft.cls(max_concurrency=1), one onnxruntime session with BENCH_ORT_THREADS (2) intra-op
  threads, @daft.method.batch(batch_size=32)) -> write_parquet(path, label, nsfw).

With --udf (the map_batches benchmark, `udf` in bench/run-ai.sh) the model UDF returns the raw
scores (an embedding column, float32 x 2) and a batch UDF (@daft.func.batch(batch_size=32),
unnested struct) does the post-processing in numpy (post.postprocess_scores: softmax over the
log-scores, arg-max, unsafe probability), the step weir's map_batches and Ray's map_batches run.

Daft's own `resize` takes a fixed width and height, so "shorter side to 256, aspect kept" has to
be a Python function. Daft runs locally with its native runner (all cores).

usage: images.py [--udf] [DIR] [OUT_DIR]
"""

import os
import shutil
import sys
import time

import daft
import numpy as np
import pyarrow as pa
from daft import DataType, col
from daft.functions import decode_image, download

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "python"))
import common  # noqa: E402

TENSOR = DataType.tensor(DataType.float32(), (common.CROP, common.CROP, 3))
SCORES = DataType.embedding(DataType.float32(), 2)
POST = DataType.struct({"label": DataType.int64(), "nsfw": DataType.float32()})


@daft.func(return_dtype=TENSOR)
def preprocess(image: np.ndarray) -> np.ndarray:
    return common.preprocess_array(image)


@daft.cls(max_concurrency=1)
class NsfwModel:
    def __init__(self):
        self.sess = common.session(common.nsfw_model_path())

    @daft.method.batch(return_dtype=DataType.float32(), batch_size=common.BATCH_SIZE)
    def __call__(self, tensors):
        batch = np.stack(tensors.to_pylist())
        _, nsfw = common.classify(self.sess, batch)
        return nsfw


@daft.cls(max_concurrency=1)
class NsfwScores:
    """As NsfwModel, returning the model's raw scores [n, 2] (--udf)."""

    def __init__(self):
        self.sess = common.session(common.nsfw_model_path())

    @daft.method.batch(return_dtype=SCORES, batch_size=common.BATCH_SIZE)
    def __call__(self, tensors):
        batch = np.ascontiguousarray(np.stack(tensors.to_pylist()), dtype=np.float32)
        scores = self.sess.run(["outputs"], {"input:0": batch})[0].astype(np.float32)
        return pa.FixedSizeListArray.from_arrays(pa.array(scores.reshape(-1)), 2)


@daft.func.batch(return_dtype=POST, unnest=True, batch_size=common.BATCH_SIZE)
def postprocess(scores):
    a = scores.to_arrow()
    if isinstance(a, pa.ExtensionArray):
        a = a.storage
    labels, nsfw = common.postprocess_scores(a.flatten().to_numpy().reshape(len(a), 2))
    return pa.StructArray.from_arrays([pa.array(labels), pa.array(nsfw)], names=["label", "nsfw"])


def main():
    args = sys.argv[1:]
    udf = "--udf" in args
    args = [a for a in args if a != "--udf"]
    src = args[0] if args else "data/generated/images"
    out = args[1] if len(args) > 1 else f"out/bench/images-{'udf-' if udf else ''}daft"
    t0 = time.time()
    shutil.rmtree(out, ignore_errors=True)
    df = daft.from_glob_path(os.path.join(os.path.abspath(src), "*.jpg"))
    df = df.with_column("image", decode_image(download(col("path")), mode="RGB"))
    df = df.with_column("tensor", preprocess(col("image")))
    if udf:
        df = df.with_column("scores", NsfwScores()(col("tensor")))
        df = df.select(col("path"), postprocess(col("scores")))
    else:
        model = NsfwModel()
        df = df.with_column("nsfw", model(col("tensor")))
        df = df.select(
            col("path"), (col("nsfw") > 0.5).cast(DataType.int64()).alias("label"), col("nsfw")
        )
    result = df.write_parquet(out)
    n = sum(pq_rows(p) for p in result.to_pydict()["path"])
    dt = time.time() - t0
    print(f"daft images.py{' --udf' if udf else ''}: rows_out={n} in {dt:.2f} s ({n / dt:.1f} images/s)")


def pq_rows(path):
    import pyarrow.parquet as pq

    return pq.ParquetFile(path.removeprefix("file://")).metadata.num_rows


if __name__ == "__main__":
    main()
