"""Shared by the Python peers of the AI benchmarks (plain loop, Daft, Ray Data).

The same preprocessing, model calls and pooling as weir's pipelines and the hand-written Rust
loops: open-nsfw (RGB -> bilinear resize of the shorter side to 256, centre crop 224, BGR, minus
the mean (104, 117, 123), NHWC float32; output [N, 2], arg-max) and MiniLM int8 (tokenizer.json
with its fixed padding off, truncation at 128, batch padded to its longest row; mean-pool
last_hidden_state with the mask, L2-normalise). Only numpy, Pillow, tokenizers and onnxruntime.
"""

import os

import numpy as np
import onnxruntime as ort
from PIL import Image

from post import postprocess_scores  # noqa: F401 (the udf benchmark's step, numpy only)
from settings import THREADS, models_dir  # noqa: F401

CROP = 224
SHORTER_SIDE = 256
MEAN_BGR = np.array([104.0, 117.0, 123.0], dtype=np.float32)
BATCH_SIZE = 32


def nsfw_model_path():
    return os.path.join(models_dir(), "opennsfw", "open-nsfw.onnx")


def minilm_paths():
    d = models_dir()
    return (
        os.path.join(d, "minilm-int8", "model.onnx"),
        os.path.join(d, "minilm-tokenizer", "tokenizer.json"),
    )


def session(path, threads=None):
    """An onnxruntime session with `threads` intra-op threads (default BENCH_ORT_THREADS or 2)
    and every other option at its default, as weir's infer with `cpus: N`."""
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads or THREADS
    return ort.InferenceSession(path, sess_options=so, providers=["CPUExecutionProvider"])


def shorter_side_size(w, h, side=SHORTER_SIDE):
    """weir's rounding: (len * side + den / 2) // den."""
    if w <= h:
        return side, max(1, (h * side + w // 2) // w)
    return max(1, (w * side + h // 2) // h), side


def preprocess_pil(img):
    """open-nsfw's input for one PIL image (any mode) as a [224, 224, 3] float32 array."""
    if img.mode != "RGB":
        img = img.convert("RGB")
    tw, th = shorter_side_size(img.width, img.height)
    img = img.resize((tw, th), Image.BILINEAR)
    left, top = (tw - CROP) // 2, (th - CROP) // 2
    img = img.crop((left, top, left + CROP, top + CROP))
    a = np.asarray(img, dtype=np.float32)[:, :, ::-1]
    return a - MEAN_BGR


def preprocess_array(rgb):
    """The same for a decoded RGB uint8 array [H, W, 3] (Daft and Ray hand these over)."""
    rgb = np.asarray(rgb)
    if rgb.ndim == 2:
        rgb = np.stack([rgb] * 3, axis=-1)
    return preprocess_pil(Image.fromarray(rgb[:, :, :3].astype(np.uint8, copy=False)))


def classify(sess, batch):
    """Runs open-nsfw on a [n, 224, 224, 3] batch; returns (labels int64, nsfw float32)."""
    scores = sess.run(["outputs"], {"input:0": np.ascontiguousarray(batch, dtype=np.float32)})[0]
    return np.argmax(scores, axis=1).astype(np.int64), scores[:, 1].astype(np.float32)


def tokenizer(path, max_length=128):
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(path)
    tok.no_padding()
    tok.enable_truncation(max_length)
    tok.enable_padding(pad_id=0, pad_token="[PAD]")  # to the longest row of each batch
    return tok


def embed(sess, tok, texts):
    """Embeddings [n, 384] float32 of `texts` (one model run, padded to the batch's longest)."""
    enc = tok.encode_batch_fast(list(texts))
    ids = np.array([e.ids for e in enc], dtype=np.int64)
    mask = np.array([e.attention_mask for e in enc], dtype=np.int64)
    types = np.array([e.type_ids for e in enc], dtype=np.int64)
    hidden = sess.run(
        ["last_hidden_state"],
        {"input_ids": ids, "attention_mask": mask, "token_type_ids": types},
    )[0]
    m = mask[:, :, None].astype(np.float32)
    pooled = (hidden * m).sum(axis=1) / np.maximum(m.sum(axis=1), 1.0)
    norm = np.linalg.norm(pooled, axis=1, keepdims=True)
    return (pooled / np.where(norm > 0, norm, 1.0)).astype(np.float32)

