"""The lazy DataFrame: a pipeline held as the very structure of a YAML spec (job options and
``steps``), planned by weir's planner only when it is explained or run."""

from __future__ import annotations

import copy
import inspect
import json
import os
import sys
import threading
import time
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Union

import pyarrow as pa

from . import _weir
from ._expr import ExprLike, to_sql
from ._udf import importable, name_of

_ROLES = ("source", "op", "sink")
_ROUTING = ("key_by", "rebalance", "broadcast")


def _kind(step: Mapping[str, Any]) -> str:
    for r in _ROLES:
        if r in step:
            return str(step[r])
    return "?"


def _clean(options: Mapping[str, Any]) -> Dict[str, Any]:
    """Options without the ones left at None (the kind's default applies)."""
    return {k: v for k, v in options.items() if v is not None}


class DataFrame:
    """A pipeline, built lazily step by step; nothing runs until :meth:`collect`, :meth:`run`,
    :meth:`iter_batches`, :meth:`to_pandas` or :meth:`show`.

    Every method returns a new DataFrame with one more step (the YAML step it stands for is in
    ``docs/python.md``); the spec (:attr:`spec`, :meth:`to_yaml`) is what ``weir run`` reads.
    """

    def __init__(
        self,
        spec: Dict[str, Any],
        udfs: Optional[Dict[str, Any]] = None,
        origin: str = "<DataFrame>",
        parallelism: Optional[int] = None,
    ) -> None:
        self.spec: Dict[str, Any] = spec
        self._udfs: Dict[str, Any] = dict(udfs or {})
        self._origin = origin
        self._parallelism = parallelism

    # --- building -------------------------------------------------------------------------

    def _with(self, step: Dict[str, Any], name: Optional[str] = None) -> "DataFrame":
        spec = copy.deepcopy(self.spec)
        step = dict(step)
        if name is not None:
            step = {"name": name, **step}
        if self._parallelism is not None and "parallelism" not in step and _kind(step) not in _ROUTING:
            step["parallelism"] = self._parallelism
        spec.setdefault("steps", []).append(step)
        return DataFrame(spec, self._udfs, self._origin, self._parallelism)

    def _last_node(self) -> str:
        """The name of the last step that is a node (not a routing step), as planning names it."""
        steps = self.spec.get("steps", [])
        for i in range(len(steps) - 1, -1, -1):
            if _kind(steps[i]) in _ROUTING and "op" in steps[i]:
                continue
            return str(steps[i].get("name", f"{_kind(steps[i])}_{i}"))
        raise _weir.PlanError("the DataFrame has no steps")

    def _named(self) -> List[Dict[str, Any]]:
        """The steps with every node named as planning names it (``<kind>_<index>``), so that
        they keep their names when they move to another position."""
        steps = copy.deepcopy(self.spec.get("steps", []))
        for i, st in enumerate(steps):
            if "name" not in st and not (_kind(st) in _ROUTING and "op" in st):
                st["name"] = f"{_kind(st)}_{i}"
        return steps

    def _combine(self, others: Sequence["DataFrame"], step: Dict[str, Any], name: Optional[str]) -> "DataFrame":
        """A step reading this DataFrame and ``others`` (``inputs:`` their last steps): the
        steps of all of them in one spec. Steps they share (one built from another, as
        ``bids.aggregate(...).interval_join(bids, ...)``) appear once; other steps of the same
        name are an error, naming it."""
        if self._ends_in_sink() or any(o._ends_in_sink() for o in others):
            raise _weir.PlanError(f"op: {step.get('op')}: an input ends in a sink; join or union before writing")
        steps = self._named()
        inputs = [self._last_node()]
        udfs = dict(self._udfs)
        for other in others:
            theirs = other._named()
            # The steps both already hold, from the first: kept once.
            shared = 0
            while shared < min(len(steps), len(theirs)) and steps[shared] == theirs[shared]:
                shared += 1
            rest = theirs[shared:]
            names = {st.get("name") for st in steps}
            for st in rest:
                if st.get("name") in names:
                    raise _weir.PlanError(
                        f"two different steps are named '{st['name']}'; give the inputs' steps distinct "
                        "names (name=...)"
                    )
            if rest and "source" not in rest[0] and "input" not in rest[0] and "inputs" not in rest[0]:
                if shared == 0:
                    raise _weir.PlanError("a DataFrame must start with a source")
                if _kind(rest[0]) in _ROUTING:
                    raise _weir.PlanError(
                        f"op: {_kind(rest[0])} right after the steps two inputs share cannot be placed; "
                        "add a step between them"
                    )
                rest[0]["input"] = theirs[shared - 1]["name"]
            steps.extend(rest)
            inputs.append(other._last_node())
            udfs.update(other._udfs)
        node = dict(step)
        node["inputs"] = inputs
        if name is not None:
            node = {"name": name, **node}
        if self._parallelism is not None and "parallelism" not in node:
            node["parallelism"] = self._parallelism
        spec = copy.deepcopy(self.spec)
        spec["steps"] = steps + [node]
        return DataFrame(spec, udfs, self._origin, self._parallelism)

    def _ends_in_sink(self) -> bool:
        steps = self.spec.get("steps", [])
        return bool(steps) and "sink" in steps[-1]

    def op(self, kind: str, name: Optional[str] = None, **options: Any) -> "DataFrame":
        """Any operator kind with its YAML options (``op: KIND``)."""
        return self._with({"op": kind, **_clean(options)}, name)

    def sink(self, kind: str, name: Optional[str] = None, **options: Any) -> "DataFrame":
        """Any sink kind with its YAML options (``sink: KIND``); run it with :meth:`run`."""
        return self._with({"sink": kind, **_clean(options)}, name)

    # relational
    def filter(self, predicate: ExprLike, name: Optional[str] = None) -> "DataFrame":
        """Keeps the rows where ``predicate`` is true (``op: filter``)."""
        return self._with({"op": "filter", "predicate": to_sql(predicate)}, name)

    def where(self, predicate: ExprLike, name: Optional[str] = None) -> "DataFrame":
        """Same as :meth:`filter`."""
        return self.filter(predicate, name)

    def select(self, *exprs: ExprLike, name: Optional[str] = None) -> "DataFrame":
        """The output columns, in order: names or expressions with ``AS`` (``op: select``)."""
        cols: List[str] = []
        for e in exprs:
            if isinstance(e, (list, tuple)):
                cols.extend(to_sql(x) for x in e)
            else:
                cols.append(to_sql(e))
        return self._with({"op": "select", "columns": cols}, name)

    def with_column(self, column: str, expr: ExprLike, name: Optional[str] = None) -> "DataFrame":
        """Adds a column, or replaces one of that name in place (``op: with_column``)."""
        return self._with({"op": "with_column", "column": column, "expr": to_sql(expr)}, name)

    def with_columns(self, columns: Mapping[str, ExprLike]) -> "DataFrame":
        """One :meth:`with_column` per entry, in order."""
        df = self
        for c, e in columns.items():
            df = df.with_column(c, e)
        return df

    def rename(
        self, columns: Optional[Mapping[str, str]] = None, name: Optional[str] = None, **more: str
    ) -> "DataFrame":
        """Renames columns old → new (``op: rename``)."""
        mapping = dict(columns or {})
        mapping.update(more)
        return self._with({"op": "rename", "columns": mapping}, name)

    def limit(self, n: int, name: Optional[str] = None) -> "DataFrame":
        """The first ``n`` rows (``op: limit``)."""
        return self._with({"op": "limit", "n": int(n)}, name)

    def throttle(self, rows_per_second: float, name: Optional[str] = None) -> "DataFrame":
        """At most this many rows per second per instance (``op: throttle``)."""
        return self._with({"op": "throttle", "rows_per_second": rows_per_second}, name)

    # routing
    def key_by(self, *keys: str) -> "DataFrame":
        """Rows with equal keys go to the same instance of the next step (``op: key_by``)."""
        return self._with({"op": "key_by", "keys": list(keys)})

    def rebalance(self) -> "DataFrame":
        """Batches round robin to the instances of the next step (``op: rebalance``)."""
        return self._with({"op": "rebalance"})

    def broadcast(self) -> "DataFrame":
        """Every batch to every instance of the next step (``op: broadcast``)."""
        return self._with({"op": "broadcast"})

    def repartition(self, n: int) -> "DataFrame":
        """Rebalances, and runs the steps after it with ``n`` instances each (``op: rebalance``
        then ``parallelism: n`` on each later step)."""
        df = self.rebalance()
        df._parallelism = int(n)
        return df

    # event time
    def aggregate(
        self,
        aggregates: Sequence[ExprLike],
        window: Mapping[str, Any],
        keys: Optional[Sequence[str]] = None,
        time: Optional[str] = None,
        name: Optional[str] = None,
        **options: Any,
    ) -> "DataFrame":
        """Windowed aggregation (``op: aggregate``): SQL aggregates per window and key."""
        return self._with(
            {
                "op": "aggregate",
                **_clean({"keys": list(keys) if keys else None, "time": time}),
                "window": dict(window),
                "aggregates": [to_sql(a) for a in aggregates],
                **_clean(options),
            },
            name,
        )

    def top_n(
        self,
        n: int,
        order_by: Sequence[str],
        window: Mapping[str, Any],
        keys: Optional[Sequence[str]] = None,
        time: Optional[str] = None,
        name: Optional[str] = None,
        **options: Any,
    ) -> "DataFrame":
        """The first ``n`` rows per window and key in ``order_by`` (``op: top_n``; options
        ``with_ties``, ``rank_column``, ``on_late``, ``memory_budget``...)."""
        return self._with(
            {
                "op": "top_n",
                **_clean({"keys": list(keys) if keys else None, "time": time}),
                "window": dict(window),
                "order_by": list(order_by),
                "n": int(n),
                **_clean(options),
            },
            name,
        )

    # several inputs
    def union(self, *others: "DataFrame", name: Optional[str] = None) -> "DataFrame":
        """The rows of this DataFrame and of ``others`` (``op: union``); names and types of the
        columns must match."""
        return self._combine(others, {"op": "union"}, name)

    def _join(
        self,
        kind: str,
        other: "DataFrame",
        left_keys: Union[str, Sequence[str]],
        right_keys: Union[str, Sequence[str], None],
        name: Optional[str],
        options: Mapping[str, Any],
    ) -> "DataFrame":
        lk = [left_keys] if isinstance(left_keys, str) else list(left_keys)
        rk = lk if right_keys is None else ([right_keys] if isinstance(right_keys, str) else list(right_keys))
        step = {"op": kind, "left_keys": lk, "right_keys": rk, **_clean(options)}
        return self._combine([other], step, name)

    def join(
        self,
        other: "DataFrame",
        left_keys: Union[str, Sequence[str]],
        right_keys: Union[str, Sequence[str], None] = None,
        name: Optional[str] = None,
        **options: Any,
    ) -> "DataFrame":
        """Inner join with ``other`` on equal keys (``op: join``; options ``ttl``,
        ``left_time``, ``right_time``, ``left_prefix``, ``right_prefix``, ``memory_budget``...);
        ``right_keys`` default to ``left_keys``."""
        return self._join("join", other, left_keys, right_keys, name, options)

    def interval_join(
        self,
        other: "DataFrame",
        left_keys: Union[str, Sequence[str]],
        right_keys: Union[str, Sequence[str], None] = None,
        *,
        left_time: str,
        right_time: str,
        lower: str,
        upper: str,
        name: Optional[str] = None,
        **options: Any,
    ) -> "DataFrame":
        """Rows of ``other`` with equal keys and ``right_time`` between ``left_time + lower``
        and ``left_time + upper`` (``op: interval_join``)."""
        opts = {"left_time": left_time, "right_time": right_time, "lower": lower, "upper": upper, **options}
        return self._join("interval_join", other, left_keys, right_keys, name, opts)

    def window_join(
        self,
        other: "DataFrame",
        left_keys: Union[str, Sequence[str]],
        right_keys: Union[str, Sequence[str], None] = None,
        *,
        window: Mapping[str, Any],
        name: Optional[str] = None,
        **options: Any,
    ) -> "DataFrame":
        """Rows of ``other`` with equal keys in the same window, joined when it completes
        (``op: window_join``; ``left_time`` / ``right_time`` for time windows)."""
        opts = {"window": dict(window), **options}
        return self._join("window_join", other, left_keys, right_keys, name, opts)

    # multimodal
    def col(self, column: str) -> "Column":
        """The column ``column``, for its media and text steps: ``df.col("bytes").image.decode()``."""
        return Column(self, column)

    def fetch(self, column: str = "uri", name: Optional[str] = None, **options: Any) -> "DataFrame":
        """Reads the objects the URIs of ``column`` name (``op: fetch``)."""
        return self._with({"op": "fetch", "column": column, **_clean(options)}, name)

    # inference
    def infer(
        self,
        model: Optional[str] = None,
        inputs: Optional[Mapping[str, str]] = None,
        outputs: Optional[Mapping[str, str]] = None,
        batch: Optional[Mapping[str, Any]] = None,
        service: Optional[str] = None,
        name: Optional[str] = None,
        **options: Any,
    ) -> "DataFrame":
        """Runs an ONNX model on columns (``op: infer``): ``inputs`` model input → column,
        ``outputs`` model output → new column."""
        return self._with(
            {
                "op": "infer",
                **_clean(
                    {
                        "model": model,
                        "service": service,
                        "inputs": dict(inputs) if inputs else None,
                        "outputs": dict(outputs) if outputs else None,
                        "batch": dict(batch) if batch else None,
                    }
                ),
                **_clean(options),
            },
            name,
        )

    def top_k(self, column: str, name: Optional[str] = None, **options: Any) -> "DataFrame":
        """The best label(s) and score(s) of a score vector column (``op: top_k``)."""
        return self._with({"op": "top_k", "column": column, **_clean(options)}, name)

    def mean_pool(self, column: str, name: Optional[str] = None, **options: Any) -> "DataFrame":
        """Token embeddings → one vector per row, masked mean (``op: mean_pool``)."""
        return self._with({"op": "mean_pool", "column": column, **_clean(options)}, name)

    def l2_normalize(self, column: str, name: Optional[str] = None, **options: Any) -> "DataFrame":
        """Vectors scaled to unit length (``op: l2_normalize``)."""
        return self._with({"op": "l2_normalize", "column": column, **_clean(options)}, name)

    def vector_search(
        self, column: str, index: str, name: Optional[str] = None, **options: Any
    ) -> "DataFrame":
        """The ``k`` nearest rows of a Parquet index per vector (``op: vector_search``)."""
        return self._with(
            {"op": "vector_search", "column": column, "index": index, **_clean(options)}, name
        )

    # python
    def map_batches(
        self,
        fn: Any,
        batch_size: Optional[int] = None,
        concurrency: int = 1,
        processes: Optional[bool] = None,
        on_error: str = "batch",
        schema: Optional[pa.Schema] = None,
        name: Optional[str] = None,
    ) -> "DataFrame":
        """Applies Python code to batches (``op: map_batches``).

        ``fn`` is a function ``RecordBatch -> RecordBatch`` (or Table, dict of columns, pandas
        DataFrame) returning one row per input row, or a class constructed once per instance
        whose instances are such functions (load a model in ``__init__``); a class may have
        ``snapshot()`` / ``restore(state)`` to keep state in checkpoints. ``concurrency``
        instances run it; ``processes`` runs each in a worker process of its own (default:
        when ``concurrency > 1``, since threads share the GIL). ``on_error``: ``"batch"`` (an
        exception makes every row of the batch a bad row) or ``"row"`` (the batch is retried row
        by row). ``schema``: the output schema; default: inferred by calling a function on an
        empty batch, or the input's schema for a class.
        """
        if concurrency < 1:
            raise ValueError("concurrency: expected at least 1")
        if processes is None:
            processes = concurrency > 1
        fname = name_of(fn)
        if not importable(fn):
            base, n = fname, 2
            while fname in self._udfs and self._udfs[fname] is not fn:
                fname = f"{base}#{n}"
                n += 1
        if schema is None and not inspect.isclass(fn):
            schema = self._infer_schema(fn)
        step: Dict[str, Any] = {"op": "map_batches", "function": fname}
        if concurrency != 1:
            step["parallelism"] = concurrency
        step.update(
            _clean(
                {
                    "batch_size": batch_size,
                    "processes": bool(processes) or None,
                    "on_error": on_error if on_error != "batch" else None,
                }
            )
        )
        if schema is not None:
            step["schema"] = json.loads(_weir.schema_json(schema))
        df = self._with(step, name)
        if not importable(fn):
            df._udfs[fname] = fn
        return df

    def _infer_schema(self, fn: Callable[..., Any]) -> Optional[pa.Schema]:
        from ._udf import to_batch

        try:
            input_schema = self.schema()
        except Exception:
            return None
        empty = pa.RecordBatch.from_pylist([], schema=input_schema)
        try:
            out = to_batch(fn(empty)).schema
        except Exception:
            return None
        untyped = [f.name for f in out if pa.types.is_null(f.type)]
        if untyped:
            raise _weir.PlanError(
                f"map_batches {name_of(fn)}: the type of column(s) {', '.join(untyped)} cannot be "
                "told from an empty batch; pass schema= (a pyarrow.Schema of the output)"
            )
        return out

    # sinks
    def write_parquet(self, path: str, name: Optional[str] = None, **options: Any) -> "DataFrame":
        """Writes Parquet files under ``path`` (``sink: parquet``); run it with :meth:`run`."""
        return self._with({"sink": "parquet", "path": path, **_clean(options)}, name)

    def write_jsonl(self, path: str, name: Optional[str] = None, **options: Any) -> "DataFrame":
        """Writes JSON lines to ``path`` (``sink: jsonl``); run it with :meth:`run`."""
        return self._with({"sink": "jsonl", "path": path, **_clean(options)}, name)

    def write_kafka(
        self, bootstrap_servers: str, topic: str, name: Optional[str] = None, **options: Any
    ) -> "DataFrame":
        """Writes rows to a Kafka topic (``sink: kafka``); run it with :meth:`run`."""
        return self._with(
            {"sink": "kafka", "bootstrap_servers": bootstrap_servers, "topic": topic, **_clean(options)},
            name,
        )

    # --- plans ----------------------------------------------------------------------------

    def _json(self, spec: Optional[Dict[str, Any]] = None) -> str:
        return json.dumps(spec if spec is not None else self.spec)

    def _planned_spec(self) -> Dict[str, Any]:
        """The spec, with a sink when it has none (planning needs every path to end)."""
        if self._ends_in_sink():
            return self.spec
        spec = copy.deepcopy(self.spec)
        spec.setdefault("steps", []).append({"name": "__end", "sink": "blackhole"})
        return spec

    def logical_graph(self) -> Dict[str, Any]:
        """The logical graph (``docs/logical-graph.md``) this pipeline plans from."""
        return json.loads(_weir.logical_graph(self._json(), self._origin))

    def explain(self, json: bool = False) -> str:
        """The plan as ``weir explain`` prints it (``json=True``: ``weir explain --json``)."""
        return _weir.explain(self._json(self._planned_spec()), self._origin, json)

    def schema(self) -> pa.Schema:
        """The planned output schema of the last step."""
        return _weir.node_schema(self._json(self._planned_spec()), self._last_node(), self._origin)

    def to_yaml(self) -> str:
        """The pipeline as a YAML spec ``weir run`` reads (Python functions of ``map_batches``
        that cannot be imported by name are listed by a name only this process knows)."""
        return _weir.json_to_yaml(self._json())

    def __repr__(self) -> str:
        steps = " -> ".join(
            str(s.get("name", f"{_kind(s)}_{i}")) for i, s in enumerate(self.spec.get("steps", []))
        )
        return f"weir.DataFrame({steps})"

    # --- running --------------------------------------------------------------------------

    def _start(self, spec: Dict[str, Any], collect: bool, **kw: Any) -> Any:
        return _weir.start(self._json(spec), self._origin, udfs=self._udfs, collect=collect, **kw)

    def iter_batches(self) -> Iterator[pa.RecordBatch]:
        """Runs the pipeline and yields its output batches as they come (also from an
        unbounded source). Leaving the loop early stops the job."""
        if self._ends_in_sink():
            raise _weir.PlanError("the DataFrame ends in a sink: use run()")
        spec = copy.deepcopy(self.spec)
        spec.setdefault("steps", []).append({"name": "__collect", "sink": "collect"})
        job = self._start(spec, True)
        try:
            while True:
                b = job.next_batch()
                if b is None:
                    return
                yield b
        finally:
            _stop_and_wait(job)

    def collect(self) -> pa.Table:
        """Runs the pipeline and returns its output as a ``pyarrow.Table`` (weir's extension
        types as field metadata, as in Parquet)."""
        schema = self.schema()
        batches = list(self.iter_batches())
        if not batches:
            return pa.Table.from_batches([], schema=schema)
        return pa.Table.from_batches(batches)

    def to_pandas(self) -> Any:
        """:meth:`collect` as a pandas DataFrame."""
        return self.collect().to_pandas()

    def to_pylist(self) -> List[Dict[str, Any]]:
        """:meth:`collect` as a list of row dicts."""
        return self.collect().to_pylist()

    def show(self, n: int = 20) -> None:
        """Prints the first ``n`` rows."""
        print(self.limit(n).collect().to_pandas().to_string() if _has_pandas() else self.limit(n).collect())

    def run(
        self,
        checkpoint: Union[None, str, Mapping[str, Any]] = None,
        resume: bool = False,
        overwrite: bool = False,
        parallelism: Optional[int] = None,
        progress: Union[bool, str] = "auto",
        threads: Optional[int] = None,
    ) -> List[Dict[str, Any]]:
        """Runs a pipeline that ends in a sink until its input ends, and returns the per-step
        counters. ``checkpoint``: a directory or URL (or a ``checkpoint:`` mapping) to take
        checkpoints in; ``resume``: continue from the newest complete one (``weir run
        --resume``); ``overwrite``: delete an earlier run's output and checkpoints first.
        ``progress``: a live display (a tqdm bar in Jupyter, a status line in a terminal).
        Ctrl-C stops the job cleanly: what was read is written, with a final checkpoint."""
        if not self._ends_in_sink():
            raise _weir.PlanError("the DataFrame has no sink: add write_parquet(...) or use collect()")
        spec = copy.deepcopy(self.spec)
        if checkpoint is not None:
            spec["checkpoint"] = {"store": checkpoint} if isinstance(checkpoint, str) else dict(checkpoint)
        job = self._start(
            spec, False, parallelism=parallelism, resume=resume, overwrite=overwrite, threads=threads
        )
        display = None
        try:
            display = _Progress(job, progress)
            report = job.wait()
        except BaseException:
            # Whatever interrupted us (Ctrl-C before the wait began, an error in the display),
            # the job must not keep running behind the caller's back.
            _stop_and_wait(job)
            raise
        finally:
            if display is not None:
                display.close()
        return json.loads(report)


def _stop_and_wait(job: Any) -> None:
    """Stops a job that still runs and lets it end cleanly (what was read is written); its own
    failure, if any, is not raised here."""
    if not job.finished():
        job.stop()
        try:
            job.wait()
        except Exception:
            pass


def _has_pandas() -> bool:
    try:
        import pandas  # noqa: F401

        return True
    except ImportError:
        return False


class _Progress:
    """Rows per step while a job runs: a tqdm bar in Jupyter (when tqdm is installed), a status
    line on a terminal, nothing otherwise."""

    def __init__(self, job: Any, mode: Union[bool, str]) -> None:
        self.job = job
        self.stop = threading.Event()
        self.thread: Optional[threading.Thread] = None
        self.bar: Any = None
        if mode is False or mode == "off":
            return
        jupyter = "ipykernel" in sys.modules
        if jupyter:
            try:
                from tqdm.auto import tqdm

                self.bar = tqdm(unit=" rows", desc="weir")
            except ImportError:
                self.bar = None
        if not jupyter and not (mode is True or sys.stderr.isatty()):
            return
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _line(self) -> str:
        parts = []
        nodes = json.loads(self.job.progress())
        for n in nodes:
            rows = n.get("rows_out", 0) if n.get("role") != "sink" else n.get("rows_in", 0)
            waiting = f" ({n['waiting']})" if n.get("waiting") else ""
            parts.append(f"{n['name']} {rows}{waiting}")
        return " | ".join(parts)

    def _loop(self) -> None:
        last = 0
        while not self.stop.wait(0.5):
            try:
                nodes = json.loads(self.job.progress())
            except Exception:
                return
            if self.bar is not None:
                sinks = [n.get("rows_in", 0) for n in nodes if n.get("role") == "sink"]
                done = max(sinks) if sinks else 0
                self.bar.update(done - last)
                last = done
                self.bar.set_postfix_str(self._line()[:120])
            else:
                sys.stderr.write("\r" + self._line()[: os.get_terminal_size(2).columns - 1 if sys.stderr.isatty() else 200])
                sys.stderr.flush()

    def close(self) -> None:
        self.stop.set()
        if self.thread is not None:
            self.thread.join()
            if self.bar is not None:
                self.bar.close()
            else:
                sys.stderr.write("\n")


class Column:
    """A column of a DataFrame, for the steps that read one column: ``.image``, ``.text``,
    ``.audio``."""

    def __init__(self, df: DataFrame, column: str) -> None:
        self.df = df
        self.column = column

    @property
    def image(self) -> "ImageOps":
        """Image steps on this column."""
        return ImageOps(self.df, self.column)

    @property
    def text(self) -> "TextOps":
        """Text steps on this column."""
        return TextOps(self.df, self.column)

    @property
    def audio(self) -> "AudioOps":
        """Audio steps on this column."""
        return AudioOps(self.df, self.column)


class _Ops:
    def __init__(self, df: DataFrame, column: str) -> None:
        self.df = df
        self.column = column

    def _op(self, kind: str, name: Optional[str], options: Dict[str, Any]) -> DataFrame:
        return self.df._with({"op": kind, "column": self.column, **_clean(options)}, name)


class ImageOps(_Ops):
    """``decode``, ``resize``, ``center_crop``, ``to_tensor`` on an image column."""

    def decode(self, output: Optional[str] = None, mode: Optional[str] = None, name: Optional[str] = None, **options: Any) -> DataFrame:
        """Encoded JPEG/PNG/WebP bytes → pixels (``op: decode_image``)."""
        return self._op("decode_image", name, {"output": output, "mode": mode, **options})

    def resize(self, shorter_side: Optional[int] = None, width: Optional[int] = None, height: Optional[int] = None, filter: Optional[str] = None, name: Optional[str] = None) -> DataFrame:
        """Resizes decoded images (``op: resize``)."""
        return self._op("resize", name, {"shorter_side": shorter_side, "width": width, "height": height, "filter": filter})

    def center_crop(self, width: int, height: int, name: Optional[str] = None) -> DataFrame:
        """Crops the centre of decoded images (``op: center_crop``)."""
        return self._op("center_crop", name, {"width": width, "height": height})

    def to_tensor(self, output: Optional[str] = None, name: Optional[str] = None, **options: Any) -> DataFrame:
        """Pixels → a model's input tensor: ``layout``, ``channel_order``, ``dtype``, ``scale``,
        ``mean``, ``std`` (``op: to_tensor``)."""
        return self._op("to_tensor", name, {"output": output, **options})


class TextOps(_Ops):
    """``tokenize`` on a text column."""

    def tokenize(self, tokenizer: str, name: Optional[str] = None, **options: Any) -> DataFrame:
        """Text → token ids with a Hugging Face ``tokenizer.json`` (``op: tokenize``)."""
        return self._op("tokenize", name, {"tokenizer": tokenizer, **options})


class AudioOps(_Ops):
    """``decode`` on an audio column."""

    def decode(self, output: Optional[str] = None, sample_rate: Optional[int] = None, mono: Optional[bool] = None, name: Optional[str] = None) -> DataFrame:
        """Encoded audio → samples (``op: decode_audio``)."""
        return self._op("decode_audio", name, {"output": output, "sample_rate": sample_rate, "mono": mono})
