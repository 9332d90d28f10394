//! End-to-end tests of the connectors: small pipelines over temporary files, run by the runtime at
//! parallelism 1 and 4, with outputs compared exactly (ignoring order).

use arrow::array::{Array, ArrayRef, BinaryArray, Int64Array, StringArray, UInt64Array};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use arrow::util::display::{ArrayFormatter, FormatOptions};
use async_trait::async_trait;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use weir_connectors::*;
use weir_runtime::*;
use weir_types::{Error, Result, dead_letter_schema};

type Shared = Arc<Mutex<Vec<RecordBatch>>>;

/// A sink that keeps every batch.
struct Collect(Shared);

#[async_trait]
impl Operator for Collect {
    async fn process_batch(
        &mut self,
        batch: RecordBatch,
        _ctx: &mut OperatorContext,
        _out: &mut Emitter,
    ) -> Result<()> {
        self.0
            .lock()
            .map_err(|_| Error::internal("poisoned"))?
            .push(batch);
        Ok(())
    }
}

fn io<T>(r: std::io::Result<T>) -> Result<T> {
    r.map_err(|e| Error::io("test io").with_source(e))
}

fn tmp() -> Result<tempfile::TempDir> {
    io(tempfile::tempdir())
}

fn s(p: &Path) -> String {
    p.display().to_string()
}

/// Every row of `batches` rendered as text, sorted.
fn rows(batches: &[RecordBatch]) -> Vec<String> {
    let opts = FormatOptions::default().with_null("null");
    let mut out = Vec::new();
    for b in batches {
        let fmts: Vec<ArrayFormatter> = b
            .columns()
            .iter()
            .filter_map(|c| ArrayFormatter::try_new(c.as_ref(), &opts).ok())
            .collect();
        for i in 0..b.num_rows() {
            out.push(
                fmts.iter()
                    .map(|f| f.value(i).to_string())
                    .collect::<Vec<_>>()
                    .join("|"),
            );
        }
    }
    out.sort();
    out
}

fn taken(shared: &Shared) -> Vec<RecordBatch> {
    shared.lock().map(|v| v.clone()).unwrap_or_default()
}

/// A graph: `source` (at `p`) -> `sink` (at `p`), with a collecting dead-letter sink when `dead`.
fn graph(
    p: u32,
    policy: ErrorPolicy,
    source: impl Fn(&TaskInfo) -> Result<Box<dyn Source>> + Send + Sync + 'static,
    sink: impl Fn(&TaskInfo) -> Result<Box<dyn Operator>> + Send + Sync + 'static,
    dead: Option<Shared>,
) -> JobGraph {
    let mut g = JobGraph::new(JobConfig {
        error_policy: policy,
        ..JobConfig::default()
    });
    let src = g.add_source("read", p, source);
    let out = g.add_sink("write", p, sink);
    g.connect(src, out, Partitioning::Forward);
    if let Some(d) = dead {
        let dl = g.add_sink("dead", 1, move |_| Ok(Box::new(Collect(d.clone()))));
        g.dead_letter = Some(dl);
    }
    g
}

fn collect_sink(
    shared: &Shared,
) -> impl Fn(&TaskInfo) -> Result<Box<dyn Operator>> + Send + Sync + 'static {
    let shared = shared.clone();
    move |_| Ok(Box::new(Collect(shared.clone())))
}

fn write_parquet(path: &Path, batch: &RecordBatch) -> Result<()> {
    let f = io(std::fs::File::create(path))?;
    let mut w = ::parquet::arrow::ArrowWriter::try_new(f, batch.schema(), None)
        .map_err(|e| Error::io("writer").with_source(e))?;
    w.write(batch)
        .map_err(|e| Error::io("write").with_source(e))?;
    w.close().map_err(|e| Error::io("close").with_source(e))?;
    Ok(())
}

fn ids(schema: &SchemaRef, from: i64, n: i64) -> Result<RecordBatch> {
    let id: ArrayRef = Arc::new(Int64Array::from_iter_values(from..from + n));
    let name: ArrayRef = Arc::new(StringArray::from_iter_values(
        (from..from + n).map(|i| format!("name-{i}")),
    ));
    Ok(RecordBatch::try_new(schema.clone(), vec![id, name])?)
}

fn id_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("name", DataType::Utf8, false),
    ]))
}

#[test]
fn csv_to_parquet_and_back() -> Result<()> {
    for p in [1, 4] {
        let dir = tmp()?;
        let input = dir.path().join("in");
        io(std::fs::create_dir(&input))?;
        let mut expected = Vec::new();
        for f in 0..6 {
            let mut text = String::from("id,name,score,ok\n");
            for r in 0..50 {
                let id = f * 100 + r;
                text.push_str(&format!("{id},\"n, {id}\",{}.5,{}\n", r, r % 2 == 0));
                expected.push(format!("{id}|n, {id}|{r}.5|{}", r % 2 == 0));
            }
            io(std::fs::write(input.join(format!("f{f}.csv")), text))?;
        }
        // A file of another extension is not read.
        io(std::fs::write(input.join("notes.txt"), "x\n"))?;
        let mut spec = CsvSourceSpec::new(s(&input));
        spec.batch_size = 16;
        let schema = spec.schema()?;
        assert_eq!(schema.field(0).data_type(), &DataType::Int64);
        assert_eq!(schema.field(2).data_type(), &DataType::Float64);
        assert_eq!(schema.field(3).data_type(), &DataType::Boolean);
        let out = dir.path().join("out");
        let sink = ParquetSinkSpec::new(s(&out));
        let sc = schema.clone();
        let g = graph(
            p,
            ErrorPolicy::Fail,
            move |info| spec.create(info, sc.clone()),
            move |info| sink.create(info, schema.clone()),
            None,
        );
        let report = Runtime::new(2)?.run(g)?;
        assert_eq!(report.nodes[0].totals.rows_out, 300);
        let back = weir_connectors::parquet::read_all(&s(&out))?;
        expected.sort();
        assert_eq!(rows(&back), expected, "parallelism {p}");
        let mut names: Vec<String> = io(std::fs::read_dir(&out))?
            .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().to_string()))
            .collect();
        names.sort();
        let want: Vec<String> = (0..p)
            .map(|i| format!("part-{i:03}-00000.parquet"))
            .collect();
        assert_eq!(names, want);
    }
    Ok(())
}

#[test]
fn csv_bad_rows_name_line_and_column() -> Result<()> {
    let dir = tmp()?;
    let path = dir.path().join("a.csv");
    io(std::fs::write(
        &path,
        "id,amount\n1,1.5\n2,2.5,extra\n3,abc\n4,4.5\n",
    ))?;
    let mut spec = CsvSourceSpec::new(s(&path));
    spec.schema = Some(vec![
        ColumnSpec {
            name: "id".into(),
            data_type: "int64".into(),
            nullable: true,
        },
        ColumnSpec {
            name: "amount".into(),
            data_type: "float64".into(),
            nullable: true,
        },
    ]);
    let schema = spec.schema()?;
    let out: Shared = Shared::default();
    let dead: Shared = Shared::default();
    let sc = schema.clone();
    let sp = spec.clone();
    let g = graph(
        1,
        ErrorPolicy::DeadLetter,
        move |info| sp.create(info, sc.clone()),
        collect_sink(&out),
        Some(dead.clone()),
    );
    Runtime::new(2)?.run(g)?;
    assert_eq!(rows(&taken(&out)), ["1|1.5", "4|4.5"]);
    let dl = taken(&dead);
    assert!(dl.iter().all(|b| b.schema() == dead_letter_schema()));
    let dl = rows(&dl);
    assert_eq!(dl.len(), 2, "{dl:?}");
    assert!(
        dl[0].contains("line 3") && dl[0].contains("expected 2 fields, found 3"),
        "{dl:?}"
    );
    let raw: Vec<String> = taken(&dead)
        .iter()
        .filter_map(|b| {
            b.column(4).as_any().downcast_ref::<BinaryArray>().map(|a| {
                a.iter()
                    .map(|v| String::from_utf8_lossy(v.unwrap_or_default()).to_string())
                    .collect::<Vec<_>>()
            })
        })
        .flatten()
        .collect();
    assert_eq!(raw, ["2,2.5,extra", "3,abc"]);
    assert!(
        dl[1].contains("line 4") && dl[1].contains("'abc'") && dl[1].contains("column 'amount'"),
        "{dl:?}"
    );

    // Under the fail policy the job fails naming the file, line and column.
    let g = graph(
        1,
        ErrorPolicy::Fail,
        move |info| spec.create(info, schema.clone()),
        collect_sink(&Shared::default()),
        None,
    );
    let err = Runtime::new(2)?
        .run(g)
        .err()
        .map(|e| e.report())
        .unwrap_or_default();
    assert!(err.contains("a.csv") && err.contains("line 3"), "{err}");
    Ok(())
}

fn write_jsonl_inputs(dir: &Path) -> Result<Vec<String>> {
    let mut expected = Vec::new();
    for f in 0..5 {
        let mut text = String::new();
        for r in 0..20 {
            let id = f * 100 + r;
            if f == 2 && r == 2 {
                text.push_str("{\"id\": 7, \"name\": oops}\n");
            }
            text.push_str(&format!("{{\"id\": {id}, \"name\": \"n{id}\"}}\n"));
            expected.push(format!("{id}|n{id}"));
        }
        io(std::fs::write(dir.join(format!("f{f}.jsonl")), text))?;
    }
    expected.sort();
    Ok(expected)
}

#[test]
fn jsonl_bad_line_goes_to_dead_letter() -> Result<()> {
    for p in [1, 4] {
        let dir = tmp()?;
        let input = dir.path().join("in");
        io(std::fs::create_dir(&input))?;
        let expected = write_jsonl_inputs(&input)?;
        let spec = JsonlSourceSpec::new(s(&input));
        let schema = spec.schema()?;
        let out = dir.path().join("out");
        let sink = JsonlSinkSpec::new(s(&out));
        let dead: Shared = Shared::default();
        let sc = schema.clone();
        let g = graph(
            p,
            ErrorPolicy::DeadLetter,
            move |info| spec.create(info, sc.clone()),
            move |info| sink.create(info, schema.clone()),
            Some(dead.clone()),
        );
        Runtime::new(2)?.run(g)?;
        // Read the JSON Lines output back through the JSON Lines source.
        let back = JsonlSourceSpec::new(s(&out));
        let back_schema = back.schema()?;
        let got: Shared = Shared::default();
        let g = graph(
            1,
            ErrorPolicy::Fail,
            move |info| back.create(info, back_schema.clone()),
            collect_sink(&got),
            None,
        );
        Runtime::new(2)?.run(g)?;
        assert_eq!(rows(&taken(&got)), expected, "parallelism {p}");
        let dl = taken(&dead);
        let n: usize = dl.iter().map(|b| b.num_rows()).sum();
        assert_eq!(n, 1);
        let b = &dl[0];
        let col = |i: usize| {
            b.column(i)
                .as_any()
                .downcast_ref::<StringArray>()
                .map(|a| a.value(0).to_string())
        };
        assert!(col(1).unwrap_or_default().ends_with("f2.jsonl"));
        assert_eq!(col(2).as_deref(), Some("line 3"));
        assert!(col(3).unwrap_or_default().contains("invalid json"));
        let raw = b
            .column(4)
            .as_any()
            .downcast_ref::<BinaryArray>()
            .map(|a| a.value(0).to_vec());
        assert_eq!(
            raw.as_deref(),
            Some(b"{\"id\": 7, \"name\": oops}".as_ref())
        );
        let leftovers = io(std::fs::read_dir(&out))?
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().ends_with(".inprogress"))
            .count();
        assert_eq!(leftovers, 0);
    }
    Ok(())
}

#[test]
fn jsonl_line_that_is_not_utf8_is_a_dead_letter_with_file_and_line() -> Result<()> {
    let dir = tmp()?;
    let file = dir.path().join("in.jsonl");
    let mut text = Vec::new();
    text.extend_from_slice(b"{\"id\": 1, \"msg\": \"a\"}\n");
    text.extend_from_slice(b"{\"id\": 2, \"msg\": \"\xff\xfe\"}\n");
    text.extend_from_slice(b"{\"id\": 3, \"msg\": \"c\"}\n");
    io(std::fs::write(&file, text))?;
    // Inference skips the bad line; the job reads the others and dead-letters it alone.
    let spec = JsonlSourceSpec::new(s(&file));
    let schema = spec.schema()?;
    let got: Shared = Shared::default();
    let dead: Shared = Shared::default();
    let g = graph(
        1,
        ErrorPolicy::DeadLetter,
        move |info| spec.create(info, schema.clone()),
        collect_sink(&got),
        Some(dead.clone()),
    );
    Runtime::new(2)?.run(g)?;
    assert_eq!(rows(&taken(&got)), ["1|a", "3|c"]);
    let dl = rows(&taken(&dead));
    assert_eq!(dl.len(), 1, "{dl:?}");
    assert!(
        dl[0].contains("in.jsonl") && dl[0].contains("line 2") && dl[0].contains("not valid UTF-8"),
        "{dl:?}"
    );
    Ok(())
}

#[test]
fn jsonl_inference_refuses_conflicting_types_naming_column_types_and_lines() -> Result<()> {
    let dir = tmp()?;
    let file = dir.path().join("in.jsonl");
    let mut text = String::new();
    for i in 0..999 {
        if i == 56 {
            text.push_str("{\"id\": \"x-56\", \"v\": 1.5}\n");
        } else {
            text.push_str(&format!("{{\"id\": {i}, \"v\": {i}}}\n"));
        }
    }
    io(std::fs::write(&file, text))?;
    let e = JsonlSourceSpec::new(s(&file))
        .schema()
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        e.contains("column 'id' has conflicting types")
            && e.contains("integer (lines 1, 2, 3)")
            && e.contains("string (line 57)")
            && e.contains("schema:"),
        "{e}"
    );
    // Integers and floats together are no conflict (v widens to a float).
    let ok = dir.path().join("ok.jsonl");
    io(std::fs::write(
        &ok,
        "{\"v\": 1}\n{\"v\": 2.5}\n{\"v\": null}\n",
    ))?;
    let schema = JsonlSourceSpec::new(s(&ok)).schema()?;
    assert_eq!(schema.field(0).data_type(), &DataType::Float64);
    Ok(())
}

#[test]
fn jsonl_bad_line_fails_the_job_by_default() -> Result<()> {
    let dir = tmp()?;
    write_jsonl_inputs(dir.path())?;
    let spec = JsonlSourceSpec::new(s(dir.path()));
    let schema = spec.schema()?;
    let g = graph(
        1,
        ErrorPolicy::Fail,
        move |info| spec.create(info, schema.clone()),
        collect_sink(&Shared::default()),
        None,
    );
    let err = Runtime::new(2)?
        .run(g)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        err.contains("invalid json") && err.contains("f2.jsonl, line 3"),
        "{err}"
    );
    Ok(())
}

#[test]
fn jsonl_sink_writes_one_file_and_binary_as_text() -> Result<()> {
    let dir = tmp()?;
    let path = dir.path().join("sub").join("out.jsonl");
    let spec = JsonlSinkSpec::new(s(&path));
    let schema = Arc::new(Schema::new(vec![
        Field::new("n", DataType::Int64, false),
        Field::new("raw", DataType::Binary, true),
    ]));
    let info = TaskInfo {
        node: "w".into(),
        subtask: 0,
        parallelism: 1,
        max_parallelism: 128,
    };
    let rt = Runtime::new(1)?;
    rt.block_on(async {
        let mut sink = spec.create(&info, schema.clone())?;
        let mut ctx = OperatorContext::for_test("w", ErrorPolicy::Fail);
        let mut out = Emitter::default();
        let raw = BinaryArray::from(vec![Some(b"hi".as_ref()), None]);
        let b = RecordBatch::try_new(
            schema.clone(),
            vec![Arc::new(Int64Array::from(vec![1, 2])), Arc::new(raw)],
        )?;
        sink.process_batch(b, &mut ctx, &mut out).await?;
        assert!(!path.exists(), "published before the end");
        sink.finish(&mut ctx, &mut out).await
    })?;
    let text = io(std::fs::read_to_string(&path))?;
    assert_eq!(text, "{\"n\":1,\"raw\":\"hi\"}\n{\"n\":2,\"raw\":null}\n");
    Ok(())
}

#[test]
fn continuous_source_picks_up_new_files() -> Result<()> {
    let dir = tmp()?;
    io(std::fs::write(dir.path().join("a.csv"), "id,v\n1,a\n2,b\n"))?;
    let mut spec = CsvSourceSpec::new(s(dir.path()));
    spec.continuous = true;
    spec.poll_interval = Duration::from_millis(50);
    let schema = spec.schema()?;
    let got: Shared = Shared::default();
    let g = graph(
        2,
        ErrorPolicy::Fail,
        move |info| spec.create(info, schema.clone()),
        collect_sink(&got),
        None,
    );
    let rt = Runtime::new(2)?;
    let handle = rt.start(g)?;
    let wait_rows = |n: usize| {
        let t = Instant::now();
        while rows(&taken(&got)).len() < n && t.elapsed() < Duration::from_secs(20) {
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    wait_rows(2);
    // Write the new file under a hidden name first, then rename it: the source never sees half a file.
    let hidden = dir.path().join(".b.csv.tmp");
    io(std::fs::write(&hidden, "id,v\n3,c\n"))?;
    io(std::fs::rename(&hidden, dir.path().join("b.csv")))?;
    wait_rows(3);
    assert!(!handle.is_finished());
    handle.stop();
    let report = rt.block_on(handle.wait())?;
    assert!(report.stopped_early);
    assert_eq!(rows(&taken(&got)), ["1|a", "2|b", "3|c"]);
    Ok(())
}

#[test]
fn files_source_lists_a_directory() -> Result<()> {
    let dir = tmp()?;
    for (name, body) in [
        ("a.jpg", "AAAA"),
        ("b.jpg", "BB"),
        ("c.txt", "C"),
        ("big.jpg", "0123456789"),
    ] {
        io(std::fs::write(dir.path().join(name), body))?;
    }
    io(std::fs::create_dir(dir.path().join("sub")))?;
    io(std::fs::write(dir.path().join("sub").join("d.jpg"), "D"))?;
    let root = io(std::fs::canonicalize(dir.path()))?;
    let uri = |n: &str| format!("file://{}", root.join(n).display());
    for p in [1, 4] {
        let mut spec = FilesSourceSpec::new(s(dir.path()));
        spec.glob = Some("*.jpg".into());
        spec.max_file_size = 8;
        spec.batch_size = 2;
        let schema = spec.schema()?;
        let got: Shared = Shared::default();
        let dead: Shared = Shared::default();
        let sp = spec.clone();
        let sc = schema.clone();
        let g = graph(
            p,
            ErrorPolicy::DeadLetter,
            move |info| sp.create(info, sc.clone()),
            collect_sink(&got),
            Some(dead.clone()),
        );
        Runtime::new(2)?.run(g)?;
        let mut want = vec![
            format!("{}|4|AAAA", uri("a.jpg")),
            format!("{}|2|BB", uri("b.jpg")),
            format!("{}|1|D", uri("sub/d.jpg")),
        ];
        want.sort();
        // Drop the modification time from the comparison.
        let got_rows: Vec<RecordBatch> = taken(&got)
            .into_iter()
            .map(|b| b.project(&[0, 1, 3]))
            .collect::<std::result::Result<_, _>>()?;
        let got_rows: Vec<String> = rows(&got_rows)
            .into_iter()
            .map(|r| {
                // bytes render as hex; compare with the text
                let mut parts: Vec<String> = r.split('|').map(str::to_string).collect();
                if let Some(hex) = parts.get(2) {
                    let bytes: Vec<u8> = (0..hex.len() / 2)
                        .filter_map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok())
                        .collect();
                    parts[2] = String::from_utf8_lossy(&bytes).to_string();
                }
                parts.join("|")
            })
            .collect();
        assert_eq!(got_rows, want, "parallelism {p}");
        let dl = rows(&taken(&dead));
        assert_eq!(dl.len(), 1);
        assert!(
            dl[0].contains("big.jpg") && dl[0].contains("max_file_size"),
            "{dl:?}"
        );
    }

    // References only: no bytes, no size limit.
    let mut spec = FilesSourceSpec::new(format!("file://{}", root.display()));
    spec.include_bytes = false;
    spec.max_file_size = 1;
    let schema = spec.schema()?;
    let got: Shared = Shared::default();
    let g = graph(
        1,
        ErrorPolicy::Fail,
        move |info| spec.create(info, schema.clone()),
        collect_sink(&got),
        None,
    );
    Runtime::new(2)?.run(g)?;
    let batches = taken(&got);
    let n: usize = batches.iter().map(|b| b.num_rows()).sum();
    assert_eq!(n, 5);
    // ... but object references: uri, offset 0, length = size, a version.
    for b in &batches {
        assert_eq!(b.schema().field(3).name(), "ref");
        let refs = b
            .column(3)
            .as_any()
            .downcast_ref::<arrow::array::StructArray>()
            .expect("struct");
        assert_eq!(
            refs.column_by_name("uri").map(|c| c.len()),
            Some(b.num_rows())
        );
        let length = refs
            .column_by_name("length")
            .and_then(|c| c.as_any().downcast_ref::<UInt64Array>().cloned())
            .expect("length");
        let size = b
            .column(1)
            .as_any()
            .downcast_ref::<UInt64Array>()
            .expect("size");
        assert_eq!(&length, size);
        assert_eq!(
            refs.column_by_name("version").map(|c| c.null_count()),
            Some(0)
        );
    }
    let sizes: u64 = batches
        .iter()
        .filter_map(|b| {
            b.column(1)
                .as_any()
                .downcast_ref::<UInt64Array>()
                .map(|a| a.values().iter().sum::<u64>())
        })
        .sum();
    assert_eq!(sizes, 4 + 2 + 1 + 10 + 1);
    Ok(())
}

/// A source of `batches` batches of `rows` ids each.
struct Numbers {
    schema: SchemaRef,
    next: i64,
    batches: i64,
    rows: i64,
}

#[async_trait]
impl Source for Numbers {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }
    async fn next(&mut self, _ctx: &mut OperatorContext) -> Result<SourceEvent> {
        if self.next >= self.batches {
            return Ok(SourceEvent::Finished);
        }
        let b = ids(&self.schema, self.next * self.rows, self.rows)?;
        self.next += 1;
        Ok(SourceEvent::Batch(b))
    }
}

#[test]
fn parquet_sink_rolls_files_by_size() -> Result<()> {
    let dir = tmp()?;
    let out = dir.path().join("out");
    let spec: ParquetSinkSpec = serde_norway::from_str(&format!(
        "{{path: '{}', max_file_size: 16KiB, compression: none}}",
        s(&out)
    ))
    .map_err(|e| Error::config("yaml").with_source(e))?;
    assert_eq!(spec.compression, Compression::None);
    let schema = id_schema();
    let sc = schema.clone();
    let g = graph(
        1,
        ErrorPolicy::Fail,
        move |_| {
            Ok(Box::new(Numbers {
                schema: sc.clone(),
                next: 0,
                batches: 20,
                rows: 1000,
            }))
        },
        move |info| spec.create(info, schema.clone()),
        None,
    );
    Runtime::new(2)?.run(g)?;
    let mut names: Vec<String> = io(std::fs::read_dir(&out))?
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().to_string()))
        .collect();
    names.sort();
    assert!(names.len() > 2, "{names:?}");
    for (i, n) in names.iter().enumerate() {
        assert_eq!(n, &format!("part-000-{i:05}.parquet"));
    }
    let back = weir_connectors::parquet::read_all(&s(&out))?;
    let mut want: Vec<String> = (0..20_000).map(|i| format!("{i}|name-{i}")).collect();
    want.sort();
    assert_eq!(rows(&back), want);
    Ok(())
}

#[test]
fn parquet_source_reads_by_file_at_any_parallelism() -> Result<()> {
    let dir = tmp()?;
    let schema = id_schema();
    for f in 0..5 {
        write_parquet(
            &dir.path().join(format!("f{f}.parquet")),
            &ids(&schema, f * 10, 10)?,
        )?;
    }
    for p in [1, 4] {
        let mut spec = ParquetSourceSpec::new(format!("{}/*.parquet", s(dir.path())));
        spec.batch_size = 3;
        let planned = spec.schema()?;
        assert_eq!(planned.fields(), schema.fields());
        let got: Shared = Shared::default();
        let g = graph(
            p,
            ErrorPolicy::Fail,
            move |info| spec.create(info, planned.clone()),
            collect_sink(&got),
            None,
        );
        let report = Runtime::new(2)?.run(g)?;
        let mut want: Vec<String> = (0..50).map(|i| format!("{i}|name-{i}")).collect();
        want.sort();
        assert_eq!(rows(&taken(&got)), want);
        let totals = report.nodes[0].totals;
        assert!(
            totals.total > 0 && totals.progress == totals.total,
            "{totals:?}"
        );
    }
    Ok(())
}

#[test]
fn truncated_parquet_fails_or_becomes_a_dead_letter() -> Result<()> {
    let dir = tmp()?;
    let schema = id_schema();
    write_parquet(&dir.path().join("a.parquet"), &ids(&schema, 0, 10)?)?;
    write_parquet(&dir.path().join("b.parquet"), &ids(&schema, 10, 10)?)?;
    let b = dir.path().join("b.parquet");
    let bytes = io(std::fs::read(&b))?;
    io(std::fs::write(&b, &bytes[..bytes.len() / 2]))?;
    let spec = ParquetSourceSpec::new(s(dir.path()));
    let planned = spec.schema()?;

    let sp = spec.clone();
    let pl = planned.clone();
    let g = graph(
        1,
        ErrorPolicy::Fail,
        move |info| sp.create(info, pl.clone()),
        collect_sink(&Shared::default()),
        None,
    );
    let err = Runtime::new(2)?
        .run(g)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(err.contains("b.parquet"), "{err}");

    let got: Shared = Shared::default();
    let dead: Shared = Shared::default();
    let g = graph(
        1,
        ErrorPolicy::DeadLetter,
        move |info| spec.create(info, planned.clone()),
        collect_sink(&got),
        Some(dead.clone()),
    );
    Runtime::new(2)?.run(g)?;
    assert_eq!(rows(&taken(&got)).len(), 10);
    let dl = rows(&taken(&dead));
    assert_eq!(dl.len(), 1);
    assert!(dl[0].contains("b.parquet"), "{dl:?}");
    Ok(())
}

#[test]
fn parquet_schema_mismatch_names_file_column_and_types() -> Result<()> {
    let dir = tmp()?;
    let schema = id_schema();
    write_parquet(&dir.path().join("a.parquet"), &ids(&schema, 0, 5)?)?;
    let other = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Utf8, false),
        Field::new("name", DataType::Utf8, false),
    ]));
    let b = RecordBatch::try_new(
        other,
        vec![
            Arc::new(StringArray::from(vec!["x"])),
            Arc::new(StringArray::from(vec!["y"])),
        ],
    )?;
    write_parquet(&dir.path().join("b.parquet"), &b)?;
    let spec = ParquetSourceSpec::new(s(dir.path()));
    let planned = spec.schema()?;
    let g = graph(
        1,
        ErrorPolicy::Fail,
        move |info| spec.create(info, planned.clone()),
        collect_sink(&Shared::default()),
        None,
    );
    let err = Runtime::new(2)?
        .run(g)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        err.contains("b.parquet")
            && err.contains("'id'")
            && err.contains("Utf8")
            && err.contains("Int64"),
        "{err}"
    );
    Ok(())
}

#[test]
fn missing_paths_fail_at_plan_time() -> Result<()> {
    let dir = tmp()?;
    let missing = s(&dir.path().join("nothing-here"));
    let errors = [
        ParquetSourceSpec::new(&missing).schema().err(),
        JsonlSourceSpec::new(&missing).schema().err(),
        CsvSourceSpec::new(&missing).schema().err(),
        FilesSourceSpec::new(&missing).schema().err(),
    ];
    for e in errors {
        let e = e.map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains(&missing) && e.contains("does not exist"), "{e}");
    }
    Ok(())
}

#[test]
fn specs_parse_from_yaml_with_defaults() -> Result<()> {
    let yaml = |t: &str| -> Result<_> { Ok(t.to_string()) };
    let csv: CsvSourceSpec = serde_norway::from_str(&yaml("path: data/*.csv\ndelimiter: ';'\n")?)
        .map_err(|e| Error::config("yaml").with_source(e))?;
    assert_eq!(csv.delimiter, b';');
    assert!(csv.has_header && !csv.continuous);
    assert_eq!(csv.batch_size, 8192);
    assert_eq!(csv.poll_interval, Duration::from_secs(1));
    let pq: ParquetSinkSpec = serde_norway::from_str("path: out\nrollover_interval: 60s\n")
        .map_err(|e| Error::config("yaml").with_source(e))?;
    assert_eq!(pq.max_file_size, 128 << 20);
    assert_eq!(pq.rollover_interval, Some(Duration::from_secs(60)));
    assert_eq!(pq.compression, Compression::Zstd);
    let files: FilesSourceSpec = serde_norway::from_str("url: s3://bucket/prefix\nglob: '*.jpg'\n")
        .map_err(|e| Error::config("yaml").with_source(e))?;
    assert!(files.include_bytes);
    assert_eq!(files.max_file_size, 64 << 20);
    assert_eq!(files.batch_size, 64);
    let console: ConsoleSinkSpec =
        serde_norway::from_str("{}").map_err(|e| Error::config("yaml").with_source(e))?;
    assert_eq!(console.max_rows, 20);
    let bad = serde_norway::from_str::<JsonlSourceSpec>("path: x\nbatchsize: 3\n");
    assert!(bad.is_err());
    let _: BlackholeSinkSpec =
        serde_norway::from_str("{}").map_err(|e| Error::config("yaml").with_source(e))?;
    for d in [
        csv.describe(),
        pq.describe(),
        files.describe(),
        console.describe(),
        ParquetSourceSpec::new("x").describe(),
        JsonlSourceSpec::new("x").describe(),
        JsonlSinkSpec::new("x.jsonl").describe(),
    ] {
        assert!(!d.is_empty());
    }
    Ok(())
}

#[test]
fn parquet_sink_rolls_over_by_time() -> Result<()> {
    let dir = tmp()?;
    let out = dir.path().join("out");
    let mut spec = ParquetSinkSpec::new(s(&out));
    spec.rollover_interval = Some(Duration::from_millis(100));
    let schema = id_schema();
    let info = TaskInfo {
        node: "w".into(),
        subtask: 2,
        parallelism: 4,
        max_parallelism: 128,
    };
    let rt = Runtime::new(1)?;
    rt.block_on(async {
        let mut sink = spec.create(&info, schema.clone())?;
        let mut ctx = OperatorContext::for_test("w", ErrorPolicy::Fail);
        let mut em = Emitter::default();
        sink.process_batch(ids(&schema, 0, 5)?, &mut ctx, &mut em)
            .await?;
        assert!(sink.has_pending());
        // No input arrives: the pending timer closes and publishes the file.
        tokio::time::timeout(Duration::from_secs(5), sink.poll_pending(&mut ctx, &mut em))
            .await
            .map_err(|e| Error::internal("rollover timed out").with_source(e))??;
        assert!(out.join("part-002-00000.parquet").exists());
        sink.process_batch(ids(&schema, 5, 5)?, &mut ctx, &mut em)
            .await?;
        sink.finish(&mut ctx, &mut em).await
    })?;
    assert!(out.join("part-002-00001.parquet").exists());
    let back = weir_connectors::parquet::read_all(&s(&out))?;
    assert_eq!(rows(&back).len(), 10);
    Ok(())
}
