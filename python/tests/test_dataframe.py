"""The DataFrame: a lazy pipeline over the engine, results as pyarrow, plan errors as PlanError."""

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

import weir
from weir import col, lit


def test_read_filter_select_collect(orders):
    df = (
        weir.read_parquet(orders)
        .filter(col("amount") > 50)
        .select("id", "city", (col("amount") * 2).alias("double"))
    )
    t = df.collect()
    src = pq.read_table(orders)
    want = src.filter(pc.greater(src["amount"], 50))
    assert t.num_rows == want.num_rows > 0
    assert t.column_names == ["id", "city", "double"]
    assert sorted(t["id"].to_pylist()) == sorted(want["id"].to_pylist())
    assert t["double"].to_pylist()[:3] == [a * 2 for a in want["amount"].to_pylist()[:3]]


def test_sql_strings_and_builders_make_the_same_plan(orders):
    a = weir.read_parquet(orders).filter("amount > 10").with_column("x", "amount * 2")
    b = weir.read_parquet(orders).filter(col("amount") > 10).with_column("x", col("amount") * 2)
    assert a.collect().equals(b.collect())


def test_relational_steps(orders):
    df = (
        weir.read_parquet(orders)
        .with_columns({"a2": col("amount") + 1, "tag": lit("x")})
        .rename({"city": "town"})
        .filter(col("town").isin(["paris", "nice"]) & ~col("a2").is_null())
        .limit(7)
    )
    t = df.collect()
    assert t.num_rows == 7
    assert set(t["town"].to_pylist()) <= {"paris", "nice"}
    assert t["tag"].to_pylist() == ["x"] * 7
    assert df.schema().names == ["id", "town", "amount", "a2", "tag"]


def test_iter_batches_streams_from_an_unbounded_source():
    df = weir.datagen([{"name": "n", "kind": "sequence"}], batch_size=100)
    seen = 0
    for batch in df.iter_batches():
        seen += batch.num_rows
        if seen >= 1000:
            break
    assert seen >= 1000


def test_to_pandas_and_show(orders, capsys):
    pdf = weir.read_parquet(orders).limit(5).to_pandas()
    assert list(pdf.columns) == ["id", "city", "amount"] and len(pdf) == 5
    weir.read_parquet(orders).show(3)
    assert "paris" in capsys.readouterr().out


def test_plan_errors_name_the_key(orders):
    with pytest.raises(weir.PlanError) as e:
        weir.read_parquet(orders).filter("amont > 1").collect()
    assert "amont" in str(e.value)
    with pytest.raises(weir.PlanError) as e:
        weir.read_parquet(orders).op("filtr", predicate="x").explain()
    assert "did you mean 'filter'" in str(e.value)
    assert "steps[1]" in str(e.value)


def test_write_parquet_and_run(orders, tmp_path):
    out = tmp_path / "out"
    report = weir.read_parquet(orders).filter("amount < 10").write_parquet(str(out)).run(progress=False)
    assert any(n["name"] == "parquet_2" for n in report)
    t = pq.read_table(out)
    assert t.num_rows == pq.read_table(orders).filter(pc.less(pq.read_table(orders)["amount"], 10)).num_rows


def test_run_without_a_sink_is_a_plan_error(orders):
    with pytest.raises(weir.PlanError):
        weir.read_parquet(orders).run()


def test_job_errors_carry_the_cause(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"a": 1}\n{"a": "x"}\n')
    with pytest.raises((weir.JobError, weir.PlanError)) as e:
        weir.read_jsonl(str(bad)).with_column("b", "a + 1").collect()
    assert str(e.value)


def test_collect_keeps_weir_extension_types():
    import os

    photos = os.path.join(os.environ.get("WEIR_DATA", ""), "photos")
    if not os.path.isdir(photos):
        pytest.skip("needs the photos of scripts/setup-models.sh")
    t = weir.read_files(photos, glob="*.jpg").limit(2).col("bytes").image.decode().collect()
    md = t.schema.field("image").metadata
    assert md[b"ARROW:extension:name"] == b"weir.image"
    assert t.num_rows == 2
