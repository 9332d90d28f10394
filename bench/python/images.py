"""weir's Python DataFrame API running the image benchmark: bench/images/weir.yaml written as a
DataFrame, run in this process by the `weir` package (the engine is its native module).

  read_files(DIR, glob="*.jpg", batch_size=32) -> .image.decode(mode="RGB") -> .image.resize
  (shorter side 256, bilinear) -> .image.center_crop(224, 224) -> .image.to_tensor(NHWC, BGR,
  minus 104/117/123) -> .infer(open-nsfw, cpus=BENCH_ORT_THREADS, batch max BENCH_BATCH)
  -> .top_k (arg-max) -> .select(uri, label, score) -> .write_parquet(OUT).run()

With --udf the arg-max is a Python step instead (the map_batches benchmark, `udf` in
bench/run-ai.sh): .infer -> .map_batches(postprocess) (numpy: softmax over the log of the model's
scores, arg-max, the unsafe probability; `post.postprocess_scores`, the function Daft and Ray run
too) -> .select(uri, label, nsfw) -> Parquet. The function runs in a thread of this process (the
default for concurrency 1).

--check prints nothing and runs nothing: it exits 1 unless the DataFrame plans to the same
logical graph as bench/images/weir.yaml with the same overrides (`weir explain --json` text),
so the two weir variants of bench/run-ai.sh run the same pipeline.

usage: images.py [--udf | --check] [DIR] [OUT_DIR]
"""

import os
import sys
import time

import pyarrow as pa

import weir

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from post import postprocess_scores  # noqa: E402
from settings import BATCH, ROOT, THREADS, models_dir  # noqa: E402


def postprocess(batch: pa.RecordBatch) -> pa.RecordBatch:
    """uri, nsfw_scores ([n, 2] float32) -> uri, label (int64), nsfw (float32)."""
    scores = batch.column("nsfw_scores")
    if isinstance(scores, pa.ExtensionArray):  # arrow.fixed_shape_tensor over FixedSizeList
        scores = scores.storage
    scores = scores.flatten().to_numpy().reshape(batch.num_rows, 2)
    labels, nsfw = postprocess_scores(scores)
    return pa.RecordBatch.from_arrays(
        [batch.column("uri"), pa.array(labels), pa.array(nsfw)], names=["uri", "label", "nsfw"]
    )


def pipeline(src: str, out: str, udf: bool) -> weir.DataFrame:
    df = (
        weir.read_files(
            src, glob="*.jpg", batch_size=32, name="images", job=weir.pipeline("bench-images", parallelism=1)
        )
        .col("bytes").image.decode(mode="RGB", name="decode")
        .col("image").image.resize(shorter_side=256, filter="bilinear", name="resize")
        .col("image").image.center_crop(224, 224, name="crop")
        .col("image").image.to_tensor(
            output="nsfw_input", layout="NHWC", channel_order="BGR", mean=[104, 117, 123], name="tensor"
        )
        .infer(
            os.path.join(models_dir(), "opennsfw", "open-nsfw.onnx"),
            inputs={"input:0": "nsfw_input"},
            outputs={"outputs": "nsfw_scores"},
            cpus=THREADS,
            batch={"max_size": BATCH, "latency_budget": "2s"},
            name="nsfw",
        )
    )
    if udf:
        df = df.select("uri", "nsfw_scores", name="scores").map_batches(postprocess, name="post")
        df = df.select("uri", "label", "nsfw", name="keep")
    else:
        df = df.top_k("nsfw_scores", output_label="label", output_score="score", name="label")
        df = df.select("uri", "label", "score", name="keep")
    return df.write_parquet(out, name="results")


def check(src: str, out: str) -> None:
    """The DataFrame and bench/images/weir.yaml (with run-ai.sh's overrides) plan the same."""
    yaml = weir.from_yaml(os.path.join(ROOT, "bench", "images", "weir.yaml"))
    steps = {s["name"]: s for s in yaml.spec["steps"]}
    steps["images"]["url"] = src
    steps["results"]["path"] = out
    steps["nsfw"]["cpus"] = THREADS
    steps["nsfw"]["batch"]["max_size"] = BATCH
    mine = pipeline(src, out, udf=False).explain(json=True)
    theirs = yaml.explain(json=True)
    if mine != theirs:
        sys.exit(
            "images.py --check: the DataFrame plans differently from bench/images/weir.yaml\n"
            f"--- DataFrame\n{mine}\n--- YAML\n{theirs}"
        )


def main():
    args = sys.argv[1:]
    udf = "--udf" in args
    checking = "--check" in args
    args = [a for a in args if a not in ("--udf", "--check")]
    src = args[0] if args else "data/generated/images"
    out = args[1] if len(args) > 1 else f"out/bench/images-{'udf-' if udf else ''}weir-py"
    if checking:
        check(src, out)
        return
    t0 = time.time()
    report = pipeline(src, out, udf).run(overwrite=True, progress=False)
    n = next(s["rows_in"] for s in report if s["name"] == "results")
    dt = time.time() - t0
    print(f"weir python images.py{' --udf' if udf else ''}: rows_out={n} in {dt:.2f} s ({n / dt:.1f} images/s)")


if __name__ == "__main__":
    main()
