"""Shared fixtures of the Python package's tests: small real files written per test."""

import os
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture
def orders(tmp_path):
    """A Parquet file of 1000 orders: id, city, amount."""
    n = 1000
    table = pa.table(
        {
            "id": pa.array(range(n), pa.int64()),
            "city": pa.array([["paris", "lyon", "nice", "lille"][i % 4] for i in range(n)]),
            "amount": pa.array([float(i % 97) for i in range(n)]),
        }
    )
    path = tmp_path / "orders.parquet"
    pq.write_table(table, path, row_group_size=100)
    return str(path)


@pytest.fixture(autouse=True)
def in_tmp(tmp_path, monkeypatch):
    """Each test runs in its own directory (weir writes .weir/ state beside it)."""
    monkeypatch.chdir(tmp_path)
    sys.path.insert(0, os.path.dirname(__file__))
    yield
    sys.path.remove(os.path.dirname(__file__))
