"""Checks that the five variants of an AI benchmark computed the same results.

usage: verify_ai.py images|text REFERENCE NAME=OUTPUT ...

REFERENCE and each OUTPUT are a Parquet file or a folder of Parquet files. Rows are matched by
key: for images the file name (`path`, or the base name of weir's `uri`), for text the sentence
number (`id`, or weir's 1-based `line` minus 1). Prints one line per variant, e.g.

  weir rows=3000 missing=0 agree=0.998

and exits 1 when a variant has another row count, misses keys, or (images) agrees with the
reference's arg-max label on fewer than 99 % of the images (the mean and largest difference of the
unsafe probability are printed too: decoders and resizers differ in the last bit), or (text) has an embedding whose
cosine similarity with the reference's is below 1 - 1e-3 (all rows are compared, not a sample).
Needs pyarrow and numpy (run it with .venv-bench-py/bin/python).
"""

import os
import sys

import numpy as np
import pyarrow.parquet as pq


def read(path):
    if os.path.isdir(path):
        files = sorted(
            os.path.join(d, f)
            for d, _, fs in os.walk(path)
            for f in fs
            if f.endswith(".parquet") and not f.startswith(".")
        )
        tables = [pq.read_table(f) for f in files]
        import pyarrow as pa

        return pa.concat_tables(tables) if tables else None
    return pq.read_table(path)


def image_labels(t):
    cols = t.column_names
    if "path" in cols:
        keys = [os.path.basename(p) for p in t.column("path").to_pylist()]
    else:
        keys = [os.path.basename(u) for u in t.column("uri").to_pylist()]
    labels = [int(str(v)) for v in t.column("label").to_pylist()]
    if "nsfw" in cols:
        p = t.column("nsfw").to_pylist()
    else:  # weir's top_k: the score of the chosen label
        p = [s if lab == 1 else 1.0 - s for s, lab in zip(t.column("score").to_pylist(), labels)]
    return dict(zip(keys, labels)), dict(zip(keys, p)), len(keys)


def text_vectors(t):
    cols = t.column_names
    if "id" in cols:
        keys = t.column("id").to_numpy().astype(np.int64)
    else:
        keys = t.column("line").to_numpy().astype(np.int64) - 1
    emb = t.column("embedding").combine_chunks()
    if hasattr(emb, "storage"):  # an Arrow extension type (weir's vector / tensor)
        emb = emb.storage
    values = emb.flatten().to_numpy(zero_copy_only=False).astype(np.float32)
    vec = values.reshape(len(keys), -1)
    order = np.argsort(keys, kind="stable")
    return keys[order], vec[order]


def main():
    kind, ref_path, rest = sys.argv[1], sys.argv[2], sys.argv[3:]
    ok = True
    ref = read(ref_path)
    if kind == "images":
        ref_labels, ref_p, n_ref = image_labels(ref)
        for arg in rest:
            name, path = arg.split("=", 1)
            labels, p, n = image_labels(read(path))
            dp = np.array([abs(p[k] - v) for k, v in ref_p.items() if k in p] or [0.0])
            missing = [k for k in ref_labels if k not in labels]
            same = sum(1 for k, v in ref_labels.items() if labels.get(k) == v)
            agree = same / max(1, n_ref)
            good = n == n_ref and not missing and agree >= 0.99
            ok &= good
            print(
                f"{name} rows={n} missing={len(missing)} agree={agree:.4f} "
                f"(unsafe: {sum(labels.values())} vs {sum(ref_labels.values())}; "
                f"|p_unsafe diff| mean {dp.mean():.4f} max {dp.max():.4f}) "
                f"{'ok' if good else 'FAIL'}"
            )
    else:
        rk, rv = text_vectors(ref)
        for arg in rest:
            name, path = arg.split("=", 1)
            k, v = text_vectors(read(path))
            if len(k) != len(rk) or not np.array_equal(k, rk):
                ok = False
                print(f"{name} rows={len(k)} (reference {len(rk)}): keys differ FAIL")
                continue
            cos = (v * rv).sum(axis=1) / (
                np.linalg.norm(v, axis=1) * np.linalg.norm(rv, axis=1) + 1e-12
            )
            good = bool(cos.min() >= 1 - 1e-3)
            ok &= good
            print(
                f"{name} rows={len(k)} missing=0 min_cos={cos.min():.6f} "
                f"mean_cos={cos.mean():.6f} {'ok' if good else 'FAIL'}"
            )
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
