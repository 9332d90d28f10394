"""The plain Python baseline of the image benchmark: what a user writes without an engine.

One process, one thread of Python: for each batch of 32 files (sorted by name), Pillow decodes
each JPEG, common.preprocess_pil resizes / crops / normalises it, numpy stacks the batch and
onnxruntime (intra-op threads = BENCH_ORT_THREADS, default 2) runs open-nsfw. Decoding and the
model do not overlap. Writes path, label, nsfw to one Parquet file.

usage: images_loop.py [DIR] [OUT.parquet]
"""

import os
import sys
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402


def main():
    src = sys.argv[1] if len(sys.argv) > 1 else "data/generated/images"
    out = sys.argv[2] if len(sys.argv) > 2 else "out/bench/images-python.parquet"
    t0 = time.time()
    names = sorted(n for n in os.listdir(src) if n.endswith(".jpg"))
    sess = common.session(common.nsfw_model_path())
    labels, nsfw = [], []
    for i in range(0, len(names), common.BATCH_SIZE):
        chunk = names[i : i + common.BATCH_SIZE]
        batch = np.stack(
            [common.preprocess_pil(Image.open(os.path.join(src, n))) for n in chunk]
        )
        l, p = common.classify(sess, batch)
        labels.append(l)
        nsfw.append(p)
    table = pa.table(
        {
            "path": names,
            "label": np.concatenate(labels),
            "nsfw": np.concatenate(nsfw),
        }
    )
    os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
    pq.write_table(table, out)
    dt = time.time() - t0
    print(f"images_loop.py: rows_out={len(names)} in {dt:.2f} s ({len(names) / dt:.1f} images/s)")


if __name__ == "__main__":
    main()
