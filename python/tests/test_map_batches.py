"""map_batches: Python code with the engine in charge (threads or worker processes, dead letters
with the traceback, clear errors naming the step)."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import udfs
import weir


@pytest.mark.parametrize("processes", [False, True])
def test_function_in_threads_and_processes(orders, processes):
    t = weir.read_parquet(orders).map_batches(udfs.double, processes=processes).collect()
    assert t.num_rows == 1000
    assert t["double"].to_pylist() == [a * 2 for a in t["amount"].to_pylist()]


def test_lambda_and_batch_size(orders):
    sizes = []

    def f(b):
        sizes.append(b.num_rows)
        return {"id": b["id"], "one": pa.array([1] * b.num_rows, pa.int64())}

    t = weir.read_parquet(orders).map_batches(f, batch_size=64).collect()
    assert t.column_names == ["id", "one"] and t.num_rows == 1000
    assert max(sizes[1:]) == 64  # the first call is the schema inference on an empty batch


def test_lambda_in_worker_processes(orders):
    t = (
        weir.read_parquet(orders)
        .map_batches(lambda b: b.append_column("k", pa.array([3] * b.num_rows, pa.int64())), processes=True)
        .collect()
    )
    assert set(t["k"].to_pylist()) == {3}


def test_concurrency_two_runs_in_two_processes(orders):
    schema = pq.read_schema(orders).append(pa.field("pid", pa.int64()))
    t = (
        weir.read_parquet(orders, batch_size=50)
        .map_batches(udfs.with_pid, concurrency=2, schema=schema)
        .collect()
    )
    assert t.num_rows == 1000
    assert len(set(t["pid"].to_pylist())) == 2


def test_class_made_once_per_instance(orders):
    t = weir.read_parquet(orders).map_batches(udfs.Counter, schema=pq.read_schema(orders).append(pa.field("seen", pa.int64()))).collect()
    assert t["seen"].to_pylist()[-1] == 1000


@pytest.mark.parametrize("processes", [False, True])
def test_exception_per_row_is_one_dead_letter_with_the_traceback(orders, tmp_path, processes):
    dl = tmp_path / "dead.jsonl"
    job = weir.pipeline("udf-errors", on_error="dead_letter", dead_letter={"sink": "jsonl", "path": str(dl)})
    t = (
        weir.read_parquet(orders, job=job)
        .map_batches(udfs.fail_on_seven, on_error="row", processes=processes)
        .collect()
    )
    assert t.num_rows == 999 and 7 not in t["id"].to_pylist()
    rows = [json.loads(l) for l in dl.read_text().splitlines()]
    assert len(rows) == 1
    assert "seven is not allowed" in rows[0]["error"] and "Traceback" in rows[0]["error"]
    assert rows[0]["operator"] == "map_batches_1"


def test_exception_per_batch_dead_letters_the_batch(orders, tmp_path):
    dl = tmp_path / "dead.jsonl"
    job = weir.pipeline("udf-errors", on_error="dead_letter", dead_letter={"sink": "jsonl", "path": str(dl)})
    t = weir.read_parquet(orders, job=job, batch_size=100).map_batches(udfs.fail_on_seven).collect()
    assert t.num_rows == 900
    assert len(dl.read_text().splitlines()) == 100


def test_exception_fails_the_job_by_default(orders):
    with pytest.raises(weir.JobError) as e:
        weir.read_parquet(orders).map_batches(udfs.fail_on_seven).collect()
    assert "seven is not allowed" in str(e.value) and "map_batches_1" in str(e.value)


@pytest.mark.parametrize("processes", [False, True])
def test_wrong_row_count_names_the_step(orders, processes):
    with pytest.raises(weir.JobError) as e:
        weir.read_parquet(orders).map_batches(udfs.drop_a_row, processes=processes, name="trim").collect()
    assert "'trim'" in str(e.value) and "one row per input row" in str(e.value)


def test_wrong_schema_names_the_step(orders):
    wrong = pa.schema([("id", pa.utf8())])
    with pytest.raises(weir.JobError) as e:
        weir.read_parquet(orders).map_batches(udfs.double, schema=wrong, name="dbl").collect()
    assert "'dbl'" in str(e.value) and "schema=" in str(e.value)


def test_importable_function_goes_to_yaml_by_name(orders):
    y = weir.read_parquet(orders).map_batches(udfs.double).to_yaml()
    assert "function: udfs:double" in y
