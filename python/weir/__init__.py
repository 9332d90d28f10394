"""weir: a streaming dataflow engine for AI workloads, from Python.

A :class:`DataFrame` is a lazy pipeline planned into the same logical graph as a YAML spec and
run by the same engine (batches, backpressure, dead letters, exactly-once checkpoints)::

    import weir
    df = (weir.read_files("photos", glob="*.jpg")
            .col("bytes").image.decode()
            .col("image").image.resize(shorter_side=256))
    table = df.select("uri", "size").collect()

See ``docs/python.md`` for every method and its YAML equivalent.
"""

from __future__ import annotations

import json
import os
from typing import Any, Dict, List, Mapping, Optional, Sequence

from . import _weir
from ._dataframe import AudioOps, Column, DataFrame, ImageOps, TextOps
from ._expr import Expr, col, func, lit
from ._weir import JobError, PlanError

__all__ = [
    "DataFrame",
    "Column",
    "ImageOps",
    "TextOps",
    "AudioOps",
    "Expr",
    "col",
    "lit",
    "func",
    "PlanError",
    "JobError",
    "read_parquet",
    "read_jsonl",
    "read_csv",
    "read_text",
    "read_files",
    "read_kafka",
    "from_rows",
    "datagen",
    "nexmark",
    "from_yaml",
    "pipeline",
]

__version__ = "0.1.0"


def _find_onnxruntime() -> None:
    """ONNX Runtime as the CLI finds it (``ORT_DYLIB_PATH``, set by ``.weir/env.sh``), else the
    library of the ``onnxruntime`` wheel when it is installed."""
    if os.environ.get("ORT_DYLIB_PATH"):
        return
    try:
        import importlib.util

        spec = importlib.util.find_spec("onnxruntime")
    except (ImportError, ValueError):
        return
    if spec is None or not spec.submodule_search_locations:
        return
    capi = os.path.join(list(spec.submodule_search_locations)[0], "capi")
    try:
        libs = sorted(f for f in os.listdir(capi) if f.startswith("libonnxruntime.so"))
    except OSError:
        return
    if libs:
        os.environ["ORT_DYLIB_PATH"] = os.path.join(capi, libs[-1])


_find_onnxruntime()


def pipeline(name: str = "pipeline", **options: Any) -> Dict[str, Any]:
    """Job options (``name``, ``parallelism``, ``on_error``, ``dead_letter``, ``checkpoint``,
    ...) as a spec without steps, for the ``job=`` argument of the sources."""
    return {"name": name, **{k: v for k, v in options.items() if v is not None}}


def _source(kind: str, name: Optional[str], job: Optional[Mapping[str, Any]], options: Dict[str, Any]) -> DataFrame:
    spec: Dict[str, Any] = dict(job or {})
    step: Dict[str, Any] = {}
    if name is not None:
        step["name"] = name
    step["source"] = kind
    step.update({k: v for k, v in options.items() if v is not None})
    spec["steps"] = [step]
    return DataFrame(spec)


def read_parquet(path: str, name: Optional[str] = None, job: Optional[Mapping[str, Any]] = None, **options: Any) -> DataFrame:
    """Parquet files: one file, a glob or a directory (``source: parquet``)."""
    return _source("parquet", name, job, {"path": path, **options})


def read_jsonl(path: str, name: Optional[str] = None, job: Optional[Mapping[str, Any]] = None, **options: Any) -> DataFrame:
    """JSON lines files (``source: jsonl``)."""
    return _source("jsonl", name, job, {"path": path, **options})


def read_csv(path: str, name: Optional[str] = None, job: Optional[Mapping[str, Any]] = None, **options: Any) -> DataFrame:
    """CSV files (``source: csv``)."""
    return _source("csv", name, job, {"path": path, **options})


def read_text(path: str, name: Optional[str] = None, job: Optional[Mapping[str, Any]] = None, **options: Any) -> DataFrame:
    """Plain text as lines or separated records (``source: text``)."""
    return _source("text", name, job, {"path": path, **options})


def read_files(url: str, glob: Optional[str] = None, name: Optional[str] = None, job: Optional[Mapping[str, Any]] = None, **options: Any) -> DataFrame:
    """Raw objects under a directory or ``s3://`` prefix, one row each (``source: files``)."""
    return _source("files", name, job, {"url": url, "glob": glob, **options})


def read_kafka(bootstrap_servers: str, topics: Optional[Sequence[str]] = None, name: Optional[str] = None, job: Optional[Mapping[str, Any]] = None, **options: Any) -> DataFrame:
    """Messages of Kafka topics (``source: kafka``)."""
    return _source(
        "kafka", name, job,
        {"bootstrap_servers": bootstrap_servers, "topics": list(topics) if topics else None, **options},
    )


def from_rows(rows: List[Mapping[str, Any]], name: Optional[str] = None, job: Optional[Mapping[str, Any]] = None, **options: Any) -> DataFrame:
    """Rows written out in the spec (``source: values``)."""
    return _source("values", name, job, {"rows": [dict(r) for r in rows], **options})


def datagen(columns: List[Mapping[str, Any]], name: Optional[str] = None, job: Optional[Mapping[str, Any]] = None, **options: Any) -> DataFrame:
    """Generated columns (``source: datagen``); unbounded unless ``rows`` is given."""
    return _source("datagen", name, job, {"columns": [dict(c) for c in columns], **options})


def nexmark(table: str, name: Optional[str] = None, job: Optional[Mapping[str, Any]] = None, **options: Any) -> DataFrame:
    """One table of the Nexmark benchmark's events (``source: nexmark``)."""
    return _source("nexmark", name, job, {"table": table, **options})


def from_yaml(path: str, vars: Optional[Mapping[str, str]] = None) -> DataFrame:
    """The pipeline of a YAML spec (``${NAME}`` from ``vars``, then the environment), as a
    DataFrame: run it, explain it, or add steps after its last one."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    spec = json.loads(_weir.yaml_to_json(text, path, dict(vars or {})))
    return DataFrame(spec, origin=path)
