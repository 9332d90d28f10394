//! Exactly-once through checkpoints: file sources (CSV, JSON Lines, Parquet) into file sinks
//! (Parquet, JSON Lines) run with checkpoints, are killed mid-stream (the job handle is dropped,
//! which aborts every task) or fail between a sink's pre-commit and commit, are restored from the
//! newest complete checkpoint — at the same and at another parallelism — and run to the end. The
//! published output then holds every input row exactly once, every dead letter appears exactly
//! once, and no staged or in-progress file is left behind.

use arrow::array::{ArrayRef, Int64Array, StringArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use async_trait::async_trait;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use weir_checkpoint::{CheckpointConfig, CheckpointStore};
use weir_connectors::*;
use weir_runtime::*;
use weir_types::{CheckpointId, Error, Result, dead_letter_schema};

const FILES: i64 = 4;
const PER_FILE: i64 = 300;
const TOTAL: i64 = FILES * PER_FILE;
/// Every this many rows of the JSON Lines input, a bad line follows.
const BAD_EVERY: i64 = 50;

fn io<T>(r: std::io::Result<T>) -> Result<T> {
    r.map_err(|e| Error::io("test io").with_source(e))
}

/// Passes batches on after a pause (so the job can be killed mid-stream), and fails the job on
/// the completion of checkpoint `fail_on` (a crash after the checkpoint completed, before the
/// sink chained after it commits).
struct Throttle {
    delay: Duration,
    fail_on: Option<CheckpointId>,
}

#[async_trait]
impl Operator for Throttle {
    async fn process_batch(
        &mut self,
        batch: RecordBatch,
        _ctx: &mut OperatorContext,
        out: &mut Emitter,
    ) -> Result<()> {
        if !self.delay.is_zero() {
            tokio::time::sleep(self.delay).await;
        }
        out.emit(batch);
        Ok(())
    }

    async fn notify_checkpoint_complete(
        &mut self,
        id: CheckpointId,
        _ctx: &mut OperatorContext,
    ) -> Result<()> {
        if self.fail_on == Some(id) {
            return Err(Error::internal(format!(
                "injected crash after checkpoint {id} completed, before the sink commits"
            )));
        }
        Ok(())
    }
}

#[derive(Clone, Copy, Debug)]
enum Input {
    Csv,
    Jsonl,
    Parquet,
}

#[derive(Clone, Copy, Debug)]
enum Output {
    Parquet,
    Jsonl,
}

fn name_of(id: i64) -> String {
    format!("row-{id}")
}

/// Writes the input files into `dir`: `FILES` files of `PER_FILE` rows, ids `0..TOTAL`. The JSON
/// Lines input also has a bad line after every `BAD_EVERY` rows.
fn write_input(dir: &Path, input: Input) -> Result<usize> {
    let mut bad = 0;
    for f in 0..FILES {
        let ids = f * PER_FILE..(f + 1) * PER_FILE;
        match input {
            Input::Csv => {
                let mut text = String::from("id,name\n");
                for id in ids {
                    text.push_str(&format!("{id},{}\n", name_of(id)));
                }
                io(std::fs::write(dir.join(format!("in-{f}.csv")), text))?;
            }
            Input::Jsonl => {
                let mut text = String::new();
                for id in ids {
                    text.push_str(&format!(
                        "{{\"id\": {id}, \"name\": \"{}\"}}\n",
                        name_of(id)
                    ));
                    if id % BAD_EVERY == BAD_EVERY - 1 {
                        text.push_str(&format!("{{\"id\": {id}, broken\n"));
                        bad += 1;
                    }
                }
                io(std::fs::write(dir.join(format!("in-{f}.jsonl")), text))?;
            }
            Input::Parquet => {
                let batch = RecordBatch::try_new(
                    schema(),
                    vec![
                        Arc::new(Int64Array::from_iter_values(ids.clone())) as ArrayRef,
                        Arc::new(StringArray::from_iter_values(ids.map(name_of))),
                    ],
                )?;
                let file = io(std::fs::File::create(dir.join(format!("in-{f}.parquet"))))?;
                // Small row groups, so that resuming skips whole groups and then rows.
                let props = ::parquet::file::properties::WriterProperties::builder()
                    .set_max_row_group_row_count(Some(64))
                    .build();
                let mut w = ::parquet::arrow::ArrowWriter::try_new(file, schema(), Some(props))
                    .map_err(|e| Error::io("parquet").with_source(e))?;
                w.write(&batch)
                    .map_err(|e| Error::io("parquet").with_source(e))?;
                w.close().map_err(|e| Error::io("parquet").with_source(e))?;
            }
        }
    }
    Ok(bad)
}

fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, true),
        Field::new("name", DataType::Utf8, true),
    ]))
}

type SourceFactory = Arc<dyn Fn(&TaskInfo) -> Result<Box<dyn Source>> + Send + Sync>;

fn source(input: Input, dir: &Path) -> Result<(SourceFactory, SchemaRef)> {
    let path = dir.display().to_string();
    let declared =
        serde_json::json!([{"name": "id", "type": "int64"}, {"name": "name", "type": "utf8"}]);
    let de = |e: serde_json::Error| Error::config("spec").with_source(e);
    Ok(match input {
        Input::Csv => {
            let spec: CsvSourceSpec = serde_json::from_value(
                serde_json::json!({"path": path, "batch_size": 10, "schema": declared}),
            )
            .map_err(de)?;
            let schema = spec.schema()?;
            let s = schema.clone();
            (Arc::new(move |info| spec.create(info, s.clone())), schema)
        }
        Input::Jsonl => {
            let spec: JsonlSourceSpec = serde_json::from_value(
                serde_json::json!({"path": path, "batch_size": 10, "schema": declared}),
            )
            .map_err(de)?;
            let schema = spec.schema()?;
            let s = schema.clone();
            (Arc::new(move |info| spec.create(info, s.clone())), schema)
        }
        Input::Parquet => {
            let mut spec = ParquetSourceSpec::new(path);
            spec.batch_size = 10;
            let schema = spec.schema()?;
            let s = schema.clone();
            (Arc::new(move |info| spec.create(info, s.clone())), schema)
        }
    })
}

struct Job<'a> {
    input: Input,
    output: Output,
    input_dir: &'a Path,
    out: &'a Path,
    dead: &'a Path,
    parallelism: u32,
    delay: Duration,
    fail_on: Option<CheckpointId>,
}

fn graph(job: &Job) -> Result<JobGraph> {
    let dead_letters = matches!(job.input, Input::Jsonl);
    let mut g = JobGraph::new(JobConfig {
        name: "exactly-once".into(),
        error_policy: if dead_letters {
            ErrorPolicy::DeadLetter
        } else {
            ErrorPolicy::Fail
        },
        ..JobConfig::default()
    });
    let (src, schema) = source(job.input, job.input_dir)?;
    let s = g.add_source("read", job.parallelism, move |info| src(info));
    let (delay, fail_on) = (job.delay, job.fail_on);
    let t = g.add_operator("throttle", job.parallelism, move |_| {
        Ok(Box::new(Throttle { delay, fail_on }))
    });
    let out = job.out.display().to_string();
    let k = match job.output {
        Output::Parquet => {
            let spec = ParquetSinkSpec::new(out);
            g.add_sink("write", job.parallelism, move |info| {
                spec.create(info, schema.clone())
            })
        }
        Output::Jsonl => {
            let spec = JsonlSinkSpec::new(out);
            g.add_sink("write", job.parallelism, move |info| {
                spec.create(info, schema.clone())
            })
        }
    };
    g.connect(s, t, Partitioning::Forward);
    g.connect(t, k, Partitioning::Forward);
    if dead_letters {
        let spec = JsonlSinkSpec::new(job.dead.display().to_string());
        let d = g.add_sink("dead_letters", 1, move |info| {
            spec.create(info, dead_letter_schema())
        });
        g.dead_letter = Some(d);
    }
    Ok(g)
}

fn setup(dir: &Path, restore: bool, rt: &Runtime) -> Result<CheckpointSetup> {
    let store = CheckpointStore::local(dir)?;
    let config = CheckpointConfig {
        interval: Duration::from_millis(30),
        ..CheckpointConfig::default()
    };
    let restore = if restore {
        let latest = rt.io_handle().block_on(store.latest_complete())?;
        Some(
            latest
                .manifest
                .ok_or_else(|| Error::internal("no complete checkpoint to restore from"))?,
        )
    } else {
        None
    };
    Ok(CheckpointSetup {
        store,
        config,
        restore,
    })
}

/// The published files of the sink's directory, and the hidden ones.
fn listing(dir: &Path) -> Result<(Vec<PathBuf>, Vec<String>)> {
    let mut published = Vec::new();
    let mut hidden = Vec::new();
    if !dir.exists() {
        return Ok((published, hidden));
    }
    for e in io(std::fs::read_dir(dir))? {
        let e = io(e)?;
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') {
            hidden.push(name);
        } else {
            published.push(e.path());
        }
    }
    published.sort();
    Ok((published, hidden))
}

/// The ids in the published output, sorted.
fn output_ids(out: &Path, output: Output) -> Result<Vec<i64>> {
    let mut ids = Vec::new();
    match output {
        Output::Parquet => {
            for b in parquet::read_all(&out.display().to_string())? {
                let col = b
                    .column(0)
                    .as_any()
                    .downcast_ref::<Int64Array>()
                    .ok_or_else(|| Error::internal("id column"))?;
                ids.extend(col.iter().flatten());
            }
        }
        Output::Jsonl => {
            for f in listing(out)?.0 {
                for line in io(std::fs::read_to_string(&f))?.lines() {
                    let v: serde_json::Value = serde_json::from_str(line)
                        .map_err(|e| Error::input("output line").with_source(e))?;
                    ids.push(
                        v["id"]
                            .as_i64()
                            .ok_or_else(|| Error::internal("id in output"))?,
                    );
                }
            }
        }
    }
    ids.sort_unstable();
    Ok(ids)
}

/// Runs `job` with checkpoints until its sink has published some output, then kills it.
fn run_and_kill(rt: &Runtime, ckpt: &Path, job: &Job) -> Result<()> {
    let handle = rt.start_with(graph(job)?, Some(setup(ckpt, false, rt)?))?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while listing(job.out)?.0.is_empty() {
        if Instant::now() > deadline {
            return Err(Error::internal("no checkpoint completed within 30 s"));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    std::thread::sleep(Duration::from_millis(60));
    drop(handle);
    Ok(())
}

/// Restores `job` from the newest complete checkpoint and runs it to the end.
fn restore_and_finish(rt: &Runtime, ckpt: &Path, job: &Job) -> Result<CheckpointId> {
    let s = setup(ckpt, true, rt)?;
    let from = s.restore.as_ref().map_or(0, |m| m.checkpoint_id);
    let report = rt.run_with(graph(job)?, Some(s))?;
    let stats = report
        .checkpoints
        .ok_or_else(|| Error::internal("no checkpoint stats"))?;
    assert_eq!(stats.restored_from, Some(from));
    Ok(from)
}

fn check_output(job: &Job, label: &str) -> Result<()> {
    let got = output_ids(job.out, job.output)?;
    let want: Vec<i64> = (0..TOTAL).collect();
    assert_eq!(
        got.len(),
        want.len(),
        "{label}: {} rows published, {} expected (rows lost or duplicated)",
        got.len(),
        want.len()
    );
    assert_eq!(got, want, "{label}: rows lost or duplicated");
    let hidden = listing(job.out)?.1;
    assert!(
        hidden.is_empty(),
        "{label}: staged or in-progress files left: {hidden:?}"
    );
    Ok(())
}

/// Kills a job mid-stream at parallelism `first`, restores it at `second`, and checks the output.
fn kill_and_restore(input: Input, output: Output, first: u32, second: u32) -> Result<()> {
    let label = format!("{input:?} -> {output:?}, parallelism {first} -> {second}");
    let dir = io(tempfile::tempdir())?;
    let (input_dir, out, ckpt) = (
        dir.path().join("in"),
        dir.path().join("out"),
        dir.path().join("ckpt"),
    );
    let dead = dir.path().join("dead.jsonl");
    io(std::fs::create_dir_all(&input_dir))?;
    let bad = write_input(&input_dir, input)?;
    let rt = Runtime::new(2)?;
    let mut job = Job {
        input,
        output,
        input_dir: &input_dir,
        out: &out,
        dead: &dead,
        parallelism: first,
        delay: Duration::from_millis(8),
        fail_on: None,
    };
    run_and_kill(&rt, &ckpt, &job)?;
    let before = output_ids(&out, output)?.len();
    assert!(
        before > 0 && before < TOTAL as usize,
        "{label}: the kill should land mid-stream ({before} rows published)"
    );
    job.parallelism = second;
    job.delay = Duration::ZERO;
    restore_and_finish(&rt, &ckpt, &job)?;
    check_output(&job, &label)?;
    if bad > 0 {
        check_dead_letters(&dead, bad, &label)?;
    }
    Ok(())
}

/// Every bad input line appears exactly once in the dead-letter file.
fn check_dead_letters(dead: &Path, bad: usize, label: &str) -> Result<()> {
    let text = io(std::fs::read_to_string(dead))?;
    let mut seen: BTreeMap<(String, String), usize> = BTreeMap::new();
    for line in text.lines() {
        let v: serde_json::Value = serde_json::from_str(line)
            .map_err(|e| Error::input("dead letter line").with_source(e))?;
        let key = (
            v["input"].as_str().unwrap_or_default().to_string(),
            v["position"].as_str().unwrap_or_default().to_string(),
        );
        *seen.entry(key).or_default() += 1;
    }
    let dups: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        dups.is_empty(),
        "{label}: duplicated dead letters: {dups:?}"
    );
    assert_eq!(seen.len(), bad, "{label}: dead letters lost");
    let parent = dead
        .parent()
        .ok_or_else(|| Error::internal("dead-letter dir"))?;
    let hidden = listing(parent)?.1;
    assert!(
        hidden.is_empty(),
        "{label}: staged dead-letter files left: {hidden:?}"
    );
    Ok(())
}

#[test]
fn csv_to_parquet_killed_and_restored_at_a_higher_parallelism() -> Result<()> {
    kill_and_restore(Input::Csv, Output::Parquet, 2, 3)
}

#[test]
fn jsonl_with_bad_lines_to_jsonl_killed_and_restored_at_a_lower_parallelism() -> Result<()> {
    kill_and_restore(Input::Jsonl, Output::Jsonl, 2, 1)
}

#[test]
fn parquet_to_parquet_killed_and_restored_at_the_same_parallelism() -> Result<()> {
    kill_and_restore(Input::Parquet, Output::Parquet, 2, 2)
}

#[test]
fn parquet_to_jsonl_killed_and_restored_at_a_higher_parallelism() -> Result<()> {
    kill_and_restore(Input::Parquet, Output::Jsonl, 1, 2)
}

#[test]
fn a_crash_between_pre_commit_and_commit_publishes_exactly_once() -> Result<()> {
    let dir = io(tempfile::tempdir())?;
    let (input_dir, out, ckpt) = (
        dir.path().join("in"),
        dir.path().join("out"),
        dir.path().join("ckpt"),
    );
    let dead = dir.path().join("dead.jsonl");
    io(std::fs::create_dir_all(&input_dir))?;
    let bad = write_input(&input_dir, Input::Jsonl)?;
    let rt = Runtime::new(2)?;
    let mut job = Job {
        input: Input::Jsonl,
        output: Output::Parquet,
        input_dir: &input_dir,
        out: &out,
        dead: &dead,
        parallelism: 2,
        delay: Duration::from_millis(8),
        fail_on: Some(2),
    };
    // Run 1 fails when checkpoint 2 completes: its sinks staged checkpoint 2 but never commit it.
    let err = rt.run_with(graph(&job)?, Some(setup(&ckpt, false, &rt)?));
    assert!(err.is_err(), "the injected crash should fail run 1");
    let (published, hidden) = listing(&out)?;
    assert!(
        published.iter().all(|p| !p
            .file_name()
            .is_some_and(|n| n.to_string_lossy().contains("-000002-"))),
        "checkpoint 2 must not be published by run 1: {published:?}"
    );
    assert!(
        hidden
            .iter()
            .any(|n| n.contains("-000002-") && n.ends_with(".staged")),
        "checkpoint 2 should be staged when run 1 dies: {hidden:?}"
    );
    job.fail_on = None;
    job.delay = Duration::ZERO;
    let from = restore_and_finish(&rt, &ckpt, &job)?;
    assert!(from >= 2, "restored from checkpoint {from}");
    check_output(&job, "crash before commit")?;
    check_dead_letters(&dead, bad, "crash before commit")?;
    Ok(())
}

#[test]
fn without_checkpoints_the_sinks_publish_as_before() -> Result<()> {
    let dir = io(tempfile::tempdir())?;
    let (input_dir, out) = (dir.path().join("in"), dir.path().join("out"));
    io(std::fs::create_dir_all(&input_dir))?;
    write_input(&input_dir, Input::Csv)?;
    let job = Job {
        input: Input::Csv,
        output: Output::Parquet,
        input_dir: &input_dir,
        out: &out,
        dead: &dir.path().join("dead.jsonl"),
        parallelism: 2,
        delay: Duration::ZERO,
        fail_on: None,
    };
    Runtime::new(2)?.run(graph(&job)?)?;
    check_output(&job, "no checkpoints")?;
    let names: Vec<String> = listing(&out)?
        .0
        .iter()
        .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .collect();
    assert_eq!(names, ["part-000-00000.parquet", "part-001-00000.parquet"]);
    Ok(())
}
