"""Settings every Python variant of the AI benchmarks shares (plain loop, Daft, Ray Data, and
weir's Python API), with no third-party imports so that every benchmark venv can import it:
the repository root, ONNX Runtime intra-op threads, batch size, and where the models are."""

import os

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
THREADS = int(os.environ.get("BENCH_ORT_THREADS", "2"))
BATCH = int(os.environ.get("BENCH_BATCH", "32"))


def models_dir() -> str:
    d = os.environ.get("WEIR_MODELS")
    if not d:
        raise SystemExit("WEIR_MODELS is not set: source .weir/env.sh")
    return d
