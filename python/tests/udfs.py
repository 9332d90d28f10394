"""Importable UDFs for the tests (workers import them by name)."""

import os

import pyarrow as pa
import pyarrow.compute as pc


def double(batch):
    return batch.append_column("double", pc.multiply(batch["amount"], 2.0))


def with_pid(batch):
    return batch.append_column("pid", pa.array([os.getpid()] * batch.num_rows, pa.int64()))


def fail_on_seven(batch):
    if 7 in batch["id"].to_pylist():
        raise ValueError("seven is not allowed")
    return batch


def drop_a_row(batch):
    return batch.slice(0, max(batch.num_rows - 1, 0))


class Counter:
    """Counts the rows it saw (its state joins checkpoints); made once per instance."""

    made = 0

    def __init__(self):
        Counter.made += 1
        self.seen = 0

    def __call__(self, batch):
        # Rows seen before each row and it: the same however the rows are cut into batches.
        seen = pa.array(range(self.seen + 1, self.seen + batch.num_rows + 1), pa.int64())
        self.seen += batch.num_rows
        return batch.append_column("seen", seen)

    def snapshot(self):
        return self.seen

    def restore(self, state):
        self.seen = state
