//! Runs small pipelines of the built-in operators through the weir runtime, at parallelism 1 and 4,
//! and checks the results order-insensitively.

use arrow::array::{Array, ArrayRef, AsArray, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Int64Type, Schema, SchemaRef};
use async_trait::async_trait;
use std::sync::{Arc, Mutex};
use weir_ops::{FilterSpec, LimitSpec, RenameSpec, SelectSpec, UnionSpec, WithColumnSpec};
use weir_runtime::{
    Emitter, JobConfig, JobGraph, NodeId, Operator, OperatorContext, Partitioning, Runtime, Source,
    SourceEvent,
};

const ROWS: i64 = 1000;
const BATCH: i64 = 100;

fn source_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("name", DataType::Utf8, true),
        Field::new("code", DataType::Utf8, false),
    ]))
}

/// Rows `0..ROWS` in batches of `BATCH`; subtask `i` of `p` emits the batches `b` with `b % p == i`.
/// `code` is the id as text, except `bad_id` whose code is not a number.
struct Rows {
    next_batch: i64,
    step: i64,
    bad_id: Option<i64>,
}

#[async_trait]
impl Source for Rows {
    fn schema(&self) -> SchemaRef {
        source_schema()
    }

    async fn next(&mut self, _ctx: &mut OperatorContext) -> weir_types::Result<SourceEvent> {
        let start = self.next_batch * BATCH;
        if start >= ROWS {
            return Ok(SourceEvent::Finished);
        }
        self.next_batch += self.step;
        let ids: Vec<i64> = (start..start + BATCH).collect();
        let names: Vec<Option<String>> = ids
            .iter()
            .map(|i| (i % 10 != 0).then(|| format!("n{i}")))
            .collect();
        let codes: Vec<String> = ids
            .iter()
            .map(|i| {
                if Some(*i) == self.bad_id {
                    "oops".to_string()
                } else {
                    i.to_string()
                }
            })
            .collect();
        let cols: Vec<ArrayRef> = vec![
            Arc::new(Int64Array::from(ids)),
            Arc::new(StringArray::from(names)),
            Arc::new(StringArray::from(codes)),
        ];
        Ok(SourceEvent::Batch(RecordBatch::try_new(
            source_schema(),
            cols,
        )?))
    }
}

fn add_rows(g: &mut JobGraph, name: &str, p: u32, bad_id: Option<i64>) -> NodeId {
    g.add_source(name, p, move |info| {
        Ok(Box::new(Rows {
            next_batch: i64::from(info.subtask),
            step: i64::from(info.parallelism),
            bad_id,
        }))
    })
}

/// Batches kept by a [`Collect`] sink.
type Kept = Arc<Mutex<Vec<RecordBatch>>>;

/// A sink that keeps every batch it receives.
struct Collect(Kept);

#[async_trait]
impl Operator for Collect {
    async fn process_batch(
        &mut self,
        batch: RecordBatch,
        _ctx: &mut OperatorContext,
        _out: &mut Emitter,
    ) -> weir_types::Result<()> {
        self.0
            .lock()
            .map_err(|_| weir_types::Error::internal("poisoned"))?
            .push(batch);
        Ok(())
    }
}

fn add_collect(g: &mut JobGraph, p: u32) -> (NodeId, Kept) {
    add_collect_named(g, "collect", p)
}

fn add_collect_named(g: &mut JobGraph, name: &str, p: u32) -> (NodeId, Kept) {
    let kept = Arc::new(Mutex::new(Vec::new()));
    let k = kept.clone();
    let id = g.add_sink(name, p, move |_| Ok(Box::new(Collect(k.clone()))));
    (id, kept)
}

/// Rows of the collected batches as `(int column 0, string column 1, int column 2)`, sorted.
fn rows(kept: &Mutex<Vec<RecordBatch>>) -> Vec<(i64, Option<String>, i64)> {
    let batches = kept.lock().expect("lock");
    let mut out = Vec::new();
    for b in batches.iter() {
        let a = b.column(0).as_primitive::<Int64Type>();
        let s = b.column(1).as_string::<i32>();
        let c = b.column(2).as_primitive::<Int64Type>();
        for i in 0..b.num_rows() {
            let name = (!s.is_null(i)).then(|| s.value(i).to_string());
            out.push((a.value(i), name, c.value(i)));
        }
    }
    out.sort();
    out
}

/// Adds an operator node built from a spec, checking it at plan time like the planner does.
macro_rules! add_op {
    ($g:expr, $name:expr, $p:expr, $spec:expr, $schema:expr) => {{
        let spec = $spec;
        let input: SchemaRef = $schema.clone();
        let out = spec.output_schema(&input).expect("plan");
        let id = $g.add_operator($name, $p, move |_| spec.create(&input));
        (id, out)
    }};
}

fn chain_job(
    p: u32,
    bad_id: Option<i64>,
    policy: weir_runtime::ErrorPolicy,
) -> (JobGraph, Kept, Kept) {
    let mut g = JobGraph::new(JobConfig {
        error_policy: policy,
        ..JobConfig::default()
    });
    let src = add_rows(&mut g, "rows", p, bad_id);
    let schema = source_schema();
    let (filter, schema) = add_op!(
        g,
        "filter",
        p,
        FilterSpec {
            predicate: "id % 3 = 0 AND name IS NOT NULL".into()
        },
        schema
    );
    let (with, schema) = add_op!(
        g,
        "with_column",
        p,
        WithColumnSpec {
            name: "code".into(),
            expr: "CAST(code AS BIGINT) * 2".into()
        },
        schema
    );
    let (select, schema) = add_op!(
        g,
        "select",
        p,
        SelectSpec {
            columns: vec!["id".into(), "upper(name) AS name".into(), "code".into()]
        },
        schema
    );
    let (rename, _schema) = add_op!(
        g,
        "rename",
        p,
        RenameSpec {
            columns: [("code".to_string(), "doubled".to_string())].into()
        },
        schema
    );
    let (sink, kept) = add_collect(&mut g, p);
    for (a, b) in [
        (src, filter),
        (filter, with),
        (with, select),
        (select, rename),
        (rename, sink),
    ] {
        g.connect(a, b, Partitioning::Forward);
    }
    let (dl, dead) = add_collect_named(&mut g, "dead_letters", 1);
    g.dead_letter = Some(dl);
    (g, kept, dead)
}

fn expected_chain(skip: Option<i64>) -> Vec<(i64, Option<String>, i64)> {
    (0..ROWS)
        .filter(|i| i % 3 == 0 && i % 10 != 0 && Some(*i) != skip)
        .map(|i| (i, Some(format!("N{i}")), i * 2))
        .collect()
}

#[test]
fn filter_with_column_select_rename_at_parallelism_1_and_4() {
    for p in [1, 4] {
        let (g, kept, _dead) = chain_job(p, None, weir_runtime::ErrorPolicy::Fail);
        Runtime::new(2).expect("runtime").run(g).expect("run");
        assert_eq!(rows(&kept), expected_chain(None), "parallelism {p}");
        let batches = kept.lock().expect("lock");
        assert_eq!(batches[0].schema().field(2).name(), "doubled");
    }
}

#[test]
fn bad_row_under_fail_policy_fails_the_job_naming_operator_and_row() {
    // Row 303 passes the filter (303 % 3 == 0, 303 % 10 != 0); the filter drops 300, so it is row 0 of the batch with_column sees.
    for p in [1, 4] {
        let (g, _kept, _dead) = chain_job(p, Some(303), weir_runtime::ErrorPolicy::Fail);
        let err = Runtime::new(2)
            .expect("runtime")
            .run(g)
            .expect_err("bad cast");
        let msg = err.to_string();
        assert!(msg.contains("with_column"), "{msg}");
        assert!(msg.contains("cannot evaluate expression"), "{msg}");
        assert!(msg.contains("row 0 of batch"), "{msg}");
    }
}

#[test]
fn bad_row_under_dead_letter_policy_drops_only_that_row() {
    for p in [1, 4] {
        let (g, kept, dead) = chain_job(p, Some(303), weir_runtime::ErrorPolicy::DeadLetter);
        let report = Runtime::new(2).expect("runtime").run(g).expect("run");
        assert_eq!(rows(&kept), expected_chain(Some(303)), "parallelism {p}");
        let with = report
            .nodes
            .iter()
            .find(|n| n.name == "with_column")
            .expect("with_column metrics");
        assert_eq!(with.totals.dead_letters, 1, "parallelism {p}");
        let dead = dead.lock().expect("lock");
        let total: usize = dead.iter().map(|b| b.num_rows()).sum();
        assert_eq!(total, 1, "parallelism {p}");
        let operator = dead[0].column(0).as_string::<i32>().value(0);
        assert_eq!(operator, "with_column");
    }
}

#[test]
fn union_of_two_sources_then_limit() {
    for p in [1, 4] {
        let mut g = JobGraph::new(JobConfig::default());
        let a = add_rows(&mut g, "a", p, None);
        let b = add_rows(&mut g, "b", p, None);
        let spec = UnionSpec {};
        let schema = spec
            .output_schema_union(&[source_schema(), source_schema()])
            .expect("plan");
        let union = g.add_operator("union", p, move |_| spec.create(&schema));
        let select = SelectSpec {
            columns: vec!["id".into(), "name".into(), "id * 10 AS tens".into()],
        };
        let sel_schema = source_schema();
        let sel = g.add_operator("select", p, move |_| select.create(&sel_schema));
        let (sink, kept) = add_collect(&mut g, p);
        g.connect(a, union, Partitioning::Forward);
        g.connect(b, union, Partitioning::Forward);
        g.connect(union, sel, Partitioning::Forward);
        g.connect(sel, sink, Partitioning::Forward);
        Runtime::new(2).expect("runtime").run(g).expect("run");
        let got = rows(&kept);
        let mut want: Vec<_> = (0..ROWS)
            .flat_map(|i| {
                let name = (i % 10 != 0).then(|| format!("n{i}"));
                [(i, name.clone(), i * 10), (i, name, i * 10)]
            })
            .collect();
        want.sort();
        assert_eq!(got, want, "parallelism {p}");

        // A limit at parallelism 1 after a parallel source lets exactly n rows through.
        let mut g = JobGraph::new(JobConfig::default());
        let src = add_rows(&mut g, "rows", p, None);
        let limit = LimitSpec { n: 250 };
        let lim_schema = limit.output_schema(&source_schema()).expect("plan");
        let lim = g.add_operator("limit", 1, move |_| limit.create(&lim_schema));
        let (sink, kept) = add_collect(&mut g, 1);
        g.connect(src, lim, Partitioning::Rebalance);
        g.connect(lim, sink, Partitioning::Forward);
        Runtime::new(2).expect("runtime").run(g).expect("run");
        let total: usize = kept
            .lock()
            .expect("lock")
            .iter()
            .map(|b| b.num_rows())
            .sum();
        assert_eq!(total, 250, "parallelism {p}");
    }
}
