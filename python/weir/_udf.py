"""The side of ``map_batches`` that runs Python: the adapter between weir and the user's function
or class (in a thread of the job's process, or in a worker process, ``weir._worker``)."""

from __future__ import annotations

import importlib
import inspect
import pickle
import sys
import traceback
from typing import Any, Callable, Optional, Tuple

import pyarrow as pa


def resolve(name: str) -> Any:
    """The function or class ``module:qualname``."""
    if ":" not in name:
        raise ValueError(
            f"'{name}' is not 'module:qualname' and was not given to this job (pass the function itself)"
        )
    module, qual = name.split(":", 1)
    obj: Any = importlib.import_module(module)
    for part in qual.split("."):
        obj = getattr(obj, part)
    return obj


def to_batch(out: Any) -> pa.RecordBatch:
    """What a function returned as one RecordBatch (a RecordBatch, Table, dict of columns or
    pandas DataFrame)."""
    if isinstance(out, pa.RecordBatch):
        return out
    if isinstance(out, pa.Table):
        batches = out.combine_chunks().to_batches()
        if not batches:
            return pa.RecordBatch.from_pylist([], schema=out.schema)
        return batches[0]
    if isinstance(out, dict):
        return pa.RecordBatch.from_pydict(out)
    if type(out).__name__ == "DataFrame" and hasattr(out, "to_dict"):
        return pa.RecordBatch.from_pandas(out, preserve_index=False)
    raise TypeError(
        f"a map_batches function must return a pyarrow.RecordBatch, Table, dict of columns or "
        f"pandas DataFrame, not {type(out).__name__}"
    )


class Adapter:
    """The user's function, or an instance of the user's class made once here."""

    def __init__(self, fn: Any) -> None:
        self.obj: Callable[[pa.RecordBatch], Any] = fn() if inspect.isclass(fn) else fn

    def call(self, batch: pa.RecordBatch) -> Tuple[bool, Any]:
        """``(True, batch)``, or ``(False, traceback)`` when the code raised."""
        try:
            out = self.obj(batch)
        except Exception:
            return False, traceback.format_exc()
        return True, to_batch(out)

    def snapshot(self) -> Optional[bytes]:
        """The pickled ``snapshot()`` of a class that has one."""
        snap = getattr(self.obj, "snapshot", None)
        if snap is None:
            return None
        return pickle.dumps(snap())

    def restore(self, state: bytes) -> None:
        """Hands ``restore()`` what ``snapshot()`` returned."""
        restore = getattr(self.obj, "restore", None)
        if restore is not None:
            restore(pickle.loads(state))


def worker_payload(fn: Any) -> bytes:
    """What a worker process is started with: this process's ``sys.path`` and the function,
    pickled by value where it cannot be imported (cloudpickle)."""
    try:
        import cloudpickle

        inner = cloudpickle.dumps(fn)
    except ImportError:
        inner = pickle.dumps(fn)
    return pickle.dumps((list(sys.path), inner))


def name_of(fn: Any) -> str:
    """``module:qualname`` of a function or class."""
    return f"{getattr(fn, '__module__', '?')}:{getattr(fn, '__qualname__', type(fn).__name__)}"


def importable(fn: Any) -> bool:
    """Whether ``name_of(fn)`` imports back to ``fn`` in a fresh process."""
    module = getattr(fn, "__module__", None)
    if not module or module == "__main__" or "<" in name_of(fn):
        return False
    try:
        return resolve(name_of(fn)) is fn
    except Exception:
        return False
