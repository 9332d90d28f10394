"""weir's Python DataFrame API running the text benchmark: bench/text/weir.yaml written as a
DataFrame, run in this process by the `weir` package (the engine is its native module).

  read_text(sentences.txt) (one row per line) -> .text.tokenize(MiniLM tokenizer.json, no
  padding, truncation at 128) -> .infer(MiniLM int8, cpus=BENCH_ORT_THREADS, batch max
  BENCH_BATCH) -> .mean_pool(hidden, mask=attention_mask) -> .l2_normalize
  -> .select(line, embedding) -> .write_parquet(OUT).run()

--check runs nothing: it exits 1 unless the DataFrame plans to the same logical graph as
bench/text/weir.yaml with the same overrides (`weir explain --json` text).

usage: text.py [--check] [SENTENCES.txt] [OUT_DIR]
"""

import os
import sys
import time

import weir

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from settings import BATCH, ROOT, THREADS, models_dir  # noqa: E402


def pipeline(src: str, out: str) -> weir.DataFrame:
    m = models_dir()
    return (
        weir.read_text(src, name="sentences", job=weir.pipeline("bench-text", parallelism=1))
        .col("text").text.tokenize(
            os.path.join(m, "minilm-tokenizer", "tokenizer.json"),
            max_length=128,
            padding="none",
            name="tokenize",
        )
        .infer(
            os.path.join(m, "minilm-int8", "model.onnx"),
            outputs={"last_hidden_state": "hidden"},
            cpus=THREADS,
            batch={"max_size": BATCH},
            name="minilm",
        )
        .mean_pool("hidden", mask="attention_mask", output="embedding", name="pool")
        .l2_normalize("embedding", name="normalize")
        .select("line", "embedding", name="keep")
        .write_parquet(out, name="results")
    )


def check(src: str, out: str) -> None:
    """The DataFrame and bench/text/weir.yaml (with run-ai.sh's overrides) plan the same."""
    yaml = weir.from_yaml(os.path.join(ROOT, "bench", "text", "weir.yaml"))
    steps = {s["name"]: s for s in yaml.spec["steps"]}
    steps["sentences"]["path"] = src
    steps["results"]["path"] = out
    steps["minilm"]["cpus"] = THREADS
    steps["minilm"]["batch"]["max_size"] = BATCH
    mine = pipeline(src, out).explain(json=True)
    theirs = yaml.explain(json=True)
    if mine != theirs:
        sys.exit(
            "text.py --check: the DataFrame plans differently from bench/text/weir.yaml\n"
            f"--- DataFrame\n{mine}\n--- YAML\n{theirs}"
        )


def main():
    args = sys.argv[1:]
    checking = "--check" in args
    args = [a for a in args if a != "--check"]
    src = args[0] if args else "data/generated/text/sentences.txt"
    out = args[1] if len(args) > 1 else "out/bench/text-weir-py"
    if checking:
        check(src, out)
        return
    t0 = time.time()
    report = pipeline(src, out).run(overwrite=True, progress=False)
    n = next(s["rows_in"] for s in report if s["name"] == "results")
    dt = time.time() - t0
    print(f"weir python text.py: rows_out={n} in {dt:.2f} s ({n / dt:.1f} sentences/s)")


if __name__ == "__main__":
    main()
