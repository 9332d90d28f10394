"""The Python post-processing step of the `udf` AI benchmark (bench/run-ai.sh udf), the same
function in weir's map_batches, Daft's batch UDF and Ray Data's map_batches. numpy only, so the
weir variant does not import onnxruntime (common.py re-exports it for the Daft and Ray scripts)."""

import numpy as np


def postprocess_scores(scores):
    """open-nsfw's scores [n, 2] -> a softmax over their logarithms (temperature 1, so the
    probabilities come back renormalised and the results stay comparable with the `images`
    workload), the arg-max label (int64) and the unsafe probability (float32), on the whole
    batch at once."""
    logits = np.log(np.maximum(np.asarray(scores, dtype=np.float32), 1e-30))
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    p = e / e.sum(axis=1, keepdims=True)
    return np.argmax(p, axis=1).astype(np.int64), p[:, 1].astype(np.float32)
