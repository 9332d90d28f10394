//! The `weir` binary as a user runs it: validate, bad specs, a run with dead letters and metrics,
//! and a clean stop on SIGTERM.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn weir() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_weir"));
    c.current_dir(root());
    c
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn run(c: &mut Command) -> (i32, String, String) {
    let out = c.output().expect("run weir");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

#[test]
fn validate_prints_steps_schemas_and_tasks() {
    let (code, out, err) = run(weir().args(["validate", "examples/orders/pipeline.yaml"]));
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("total: Float64"), "{out}");
    assert!(out.contains("edge task 0 -> task 1: hash(city)"), "{out}");
    assert!(
        out.contains("ok: examples/orders/pipeline.yaml is valid"),
        "{out}"
    );
}

fn write_spec(dir: &Path, text: &str) -> PathBuf {
    let p = dir.join("spec.yaml");
    std::fs::write(&p, text).expect("write spec");
    p
}

#[test]
fn invalid_specs_name_the_key_and_exit_2() {
    let dir = tempfile::tempdir().expect("tmp");
    let cases = [
        (
            "steps:\n  - source: csv\n    path: examples/orders/orders.csv\n  - op: filter\n    predicat: x > 1\n  - sink: blackhole\n",
            "steps[1] ('filter_1', op: filter): key 'predicat': unknown field `predicat`, expected `predicate`",
        ),
        (
            "steps:\n  - source: csv\n    path: examples/orders/orders.csv\n  - op: filter\n    predicate: \"amont > 1\"\n  - sink: blackhole\n",
            "unknown column 'amont'",
        ),
        (
            "steps:\n  - source: csv\n    path: no/such/file.csv\n  - sink: blackhole\n",
            "no/such/file.csv",
        ),
        (
            "steps:\n  - source: pulsar\n  - sink: blackhole\n",
            "unknown source kind 'pulsar', expected one of: parquet, jsonl, csv, files, text, values, datagen, nexmark, kafka",
        ),
        (
            "steps:\n  - source: csv\n    path: examples/orders/orders.csv\n",
            "has no output: connect it to a sink",
        ),
        (
            "checkpoint: {mode: unaligned, max_concurrent: 2}\nsteps:\n  - source: csv\n    path: examples/orders/orders.csv\n  - sink: blackhole\n",
            "key 'checkpoint.max_concurrent': unaligned checkpoints are taken one at a time",
        ),
        (
            "checkpoint: {mode: sideways}\nsteps:\n  - source: csv\n    path: examples/orders/orders.csv\n  - sink: blackhole\n",
            "sideways",
        ),
    ];
    for (spec, want) in cases {
        let p = write_spec(dir.path(), spec);
        let (code, _, err) = run(weir().arg("validate").arg(&p));
        assert_eq!(code, 2, "{spec}\n{err}");
        assert!(err.contains(want), "expected '{want}' in:\n{err}");
    }
}

#[test]
fn a_run_with_bad_rows_writes_dead_letters_metrics_and_a_summary() {
    let dir = tempfile::tempdir().expect("tmp");
    let out = dir.path().join("out.jsonl");
    let dead = dir.path().join("dead.jsonl");
    let metrics = dir.path().join("metrics.json");
    let (code, _, err) = run(weir()
        .args(["run", "examples/orders/returns.yaml", "--progress", "log"])
        .args([
            "--set".to_string(),
            format!("steps.out.path={}", out.display()),
            "--set".to_string(),
            format!("dead_letter.path={}", dead.display()),
            "--metrics-json".to_string(),
            metrics.display().to_string(),
        ]));
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("job 'returns' finished"), "{err}");
    assert!(err.contains("dead letters: 2 row(s)"), "{err}");
    let dead_rows = std::fs::read_to_string(&dead).expect("dead letters");
    assert_eq!(dead_rows.lines().count(), 2);
    assert!(
        dead_rows.contains("line 58") && dead_rows.contains("line 122"),
        "{dead_rows}"
    );
    assert_eq!(
        std::fs::read_to_string(&out).expect("out").lines().count(),
        118
    );
    let m = std::fs::read_to_string(&metrics).expect("metrics");
    assert!(
        m.contains("\"rows_out\": 200") && m.contains("\"dead_letters\": 2"),
        "{m}"
    );
}

/// A keyed windowed aggregation reports its state size: the end-of-job summary names the step's
/// peak state, and `--metrics-json` carries `state_bytes_peak` and `state_entries`.
#[test]
fn a_stateful_step_reports_its_state_size() {
    let dir = tempfile::tempdir().expect("tmp");
    let metrics = dir.path().join("metrics.json");
    let spec = "name: stateful
steps:
  - name: bid
    source: nexmark
    table: bid
    events: 20000
    batch_size: 500
    seed: 1
    watermark: {column: date_time}
  - name: per_auction
    op: aggregate
    keys: [auction]
    time: date_time
    window: {type: tumbling, size: 10s}
    aggregates: [\"count(*) AS n\"]
  - sink: blackhole
";
    let p = write_spec(dir.path(), spec);
    let (code, _, err) = run(weir()
        .args(["run", "--progress", "log"])
        .arg(&p)
        .args(["--metrics-json".to_string(), metrics.display().to_string()]));
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("state: per_auction held at most "),
        "the summary names the state size:\n{err}"
    );
    let m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&metrics).expect("metrics")).expect("json");
    let steps = m["nodes"]
        .as_array()
        .unwrap_or_else(|| panic!("no nodes in {m}"));
    let agg = steps
        .iter()
        .find(|s| s["name"] == "per_auction")
        .unwrap_or_else(|| panic!("no per_auction in {m}"));
    assert!(
        agg["state_bytes_peak"].as_u64().unwrap_or(0) > 1_000,
        "{agg}"
    );
    // Every window fired at the end of the input: nothing is left.
    assert_eq!(agg["state_entries"].as_u64(), Some(0), "{agg}");
    let bid = steps.iter().find(|s| s["name"] == "bid").expect("bid");
    assert_eq!(bid["state_bytes_peak"].as_u64(), Some(0), "{bid}");
}

#[test]
fn sigterm_stops_cleanly_and_says_what_was_written() {
    let dir = tempfile::tempdir().expect("tmp");
    let input = dir.path().join("in");
    std::fs::create_dir(&input).expect("mkdir");
    std::fs::copy(
        root().join("examples/orders/orders.csv"),
        input.join("a.csv"),
    )
    .expect("copy");
    let spec = format!(
        "name: endless\nsteps:\n  - source: csv\n    path: {}\n    continuous: true\n    poll_interval: 100ms\n  - sink: parquet\n    path: {}\n",
        input.display(),
        dir.path().join("out").display()
    );
    let p = write_spec(dir.path(), &spec);
    let child = weir()
        .args(["run", "--progress", "log", "--log-interval", "0.2"])
        .arg(&p)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    // Wait until the file has been read (its rows appear in a progress line), then send SIGTERM.
    std::thread::sleep(Duration::from_millis(1500));
    let started = Instant::now();
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let out = child.wait_with_output().expect("wait");
    let err = String::from_utf8_lossy(&out.stderr);
    // Stopped is not finished: a documented status of its own.
    assert_eq!(out.status.code(), Some(143), "{err}");
    assert!(
        err.contains("stopped before the input ended (exit status 143)"),
        "{err}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "stop took too long"
    );
    assert!(
        err.contains("stopping: finishing and writing what was read"),
        "{err}"
    );
    assert!(err.contains("stopped early"), "{err}");
    assert!(
        err.contains("written: parquet_1 received 2000 rows"),
        "{err}"
    );
    let files: Vec<_> = std::fs::read_dir(dir.path().join("out"))
        .expect("out")
        .flatten()
        .collect();
    assert_eq!(files.len(), 1, "one finished part file");
}

/// `weir validate` and `weir explain` of a job that checkpoints, sends dead letters to a file,
/// writes Parquet and declares a shared service (whose host a run would start and register in
/// `.weir/services`): the working directory stays empty and no service host is started.
#[test]
fn validate_and_explain_register_start_and_write_nothing() {
    let specs = tempfile::tempdir().expect("tmp");
    let cwd = tempfile::tempdir().expect("tmp");
    let models = weir_testkit::setup::models_dir();
    let photos = weir_testkit::setup::data_dir().join("photos");
    let spec = format!(
        "name: side-effects
on_error: dead_letter
checkpoint: {{interval: 1s}}
services:
  - name: nsfw-side-effects
    model: {}/opennsfw/open-nsfw.onnx
    lifecycle: shared
steps:
  - source: files
    url: {}
    glob: \"*.jpg\"
  - op: decode_image
    mode: RGB
  - op: resize
    shorter_side: 256
  - op: center_crop
    width: 224
    height: 224
  - op: to_tensor
    output: nsfw_input
    layout: NHWC
    channel_order: BGR
    mean: [104, 117, 123]
  - name: nsfw
    op: infer
    service: nsfw-side-effects
    inputs: {{\"input:0\": nsfw_input}}
    outputs: {{outputs: nsfw_scores}}
  - op: select
    columns: [uri, nsfw_scores]
  - sink: parquet
    path: out
",
        models.display(),
        photos.display()
    );
    let p = write_spec(specs.path(), &spec);
    for args in [&["validate"][..], &["explain"], &["explain", "--json"]] {
        let mut c = weir();
        c.current_dir(cwd.path())
            .env_remove("WEIR_SERVICES_DIR")
            .args(args)
            .arg(&p);
        let (code, out, err) = run(&mut c);
        assert_eq!(code, 0, "weir {args:?}: {err}");
        assert!(out.contains("nsfw-side-effects"), "weir {args:?}: {out}");
        let left: Vec<_> = std::fs::read_dir(cwd.path())
            .expect("read cwd")
            .flatten()
            .map(|e| e.path())
            .collect();
        assert!(left.is_empty(), "weir {args:?} wrote {left:?}");
    }
}

#[test]
fn explain_of_the_main_job_shows_the_fused_decoder_and_the_pushdown() {
    let (code, out, err) = run(weir().args(["explain", "examples/images/classify.yaml"]));
    assert_eq!(code, 0, "{err}");
    for want in [
        "decode (op: decode_image_fused)",
        "fusion: 'decode' (decode_image_fused) does decode_image, resize, crop, nsfw_tensor in one node",
        // Nothing downstream reads `modified`: the listing's other columns are all it emits.
        "projection_pushdown: 'photos' reads only 3 of its columns: uri, size, bytes",
    ] {
        assert!(out.contains(want), "missing '{want}' in:\n{out}");
    }
}

#[test]
fn explain_shows_the_logical_graph_the_rewrites_and_the_physical_plan() {
    let (code, out, err) = run(weir().args(["explain", "examples/orders/pipeline.yaml"]));
    assert_eq!(code, 0, "{err}");
    for want in [
        "logical graph (job '",
        "  nodes:",
        "  edges:",
        ": hash(city)",
        "rewrites:",
        "physical plan:",
        "edge task 0 -> task 1: hash(city)",
    ] {
        assert!(out.contains(want), "missing '{want}' in:\n{out}");
    }
    let (code, out, err) = run(weir().args(["explain", "--json", "examples/orders/pipeline.yaml"]));
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("explain --json is JSON");
    assert!(
        v["logical"]["nodes"]
            .as_array()
            .is_some_and(|n| !n.is_empty()),
        "{v}"
    );
    assert!(
        v["physical"]["tasks"]
            .as_array()
            .is_some_and(|t| t.len() >= 2),
        "{v}"
    );
    // The logical graph it prints plans again: `weir validate` of it as a `.json` file.
    let dir = tempfile::tempdir().expect("tmp");
    let g = dir.path().join("graph.json");
    std::fs::write(&g, v["logical"].to_string()).expect("write graph");
    let (code, out, err) = run(weir().arg("validate").arg(&g));
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("edge task 0 -> task 1: hash(city)"), "{out}");
}

/// Runs a JSONL file of `good` valid and `bad` malformed lines under `budget` (a YAML line, or
/// none); returns the exit status and stderr.
fn run_with_bad_lines(dir: &Path, good: usize, bad: usize, budget: &str) -> (i32, String) {
    let input = dir.join("in.jsonl");
    let mut text = String::new();
    // The good lines first: schema inference needs one.
    for i in 0..good + bad {
        if i < good {
            text.push_str(&format!("{{\"id\": {i}}}\n"));
        } else {
            text.push_str(&format!("{{\"id\": {i}, oops\n"));
        }
    }
    std::fs::write(&input, text).expect("write input");
    let spec = format!(
        "name: budget\non_error: dead_letter\n{budget}\ndead_letter:\n  sink: jsonl\n  path: {}\nsteps:\n  - source: jsonl\n    path: {}\n  - sink: jsonl\n    path: {}\n",
        dir.join("dead.jsonl").display(),
        input.display(),
        dir.join("out.jsonl").display()
    );
    let p = write_spec(dir, &spec);
    let (code, _, err) = run(weir().args(["run", "--progress", "log"]).arg(&p));
    (code, err)
}

#[test]
fn a_run_that_dead_letters_most_rows_fails_with_the_top_reasons() {
    // F2's shape: 998 of 999 rows dead-lettered used to exit 0. With no budget set, more than
    // half fails the run with status 3 and says why.
    let dir = tempfile::tempdir().expect("tmp");
    let (code, err) = run_with_bad_lines(dir.path(), 1, 998, "");
    assert_eq!(code, 3, "{err}");
    assert!(
        err.contains("error budget exceeded: 998 of 999 rows read (99.9%)"),
        "{err}"
    );
    assert!(err.contains("998 × jsonl_0: invalid json"), "{err}");
    // Exactly half is still within the default budget.
    let dir = tempfile::tempdir().expect("tmp");
    let (code, err) = run_with_bad_lines(dir.path(), 500, 500, "");
    assert_eq!(code, 0, "{err}");
    // A budget of 1.0 never fails.
    let dir = tempfile::tempdir().expect("tmp");
    let (code, err) = run_with_bad_lines(dir.path(), 1, 998, "error_budget: {max_fraction: 1.0}");
    assert_eq!(code, 0, "{err}");
}

#[test]
fn a_declared_error_budget_fails_a_run_over_it_and_passes_one_under_it() {
    let budget = "error_budget: {max_fraction: 0.01, min_rows: 1000}";
    let dir = tempfile::tempdir().expect("tmp");
    let (code, err) = run_with_bad_lines(dir.path(), 1950, 50, budget);
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("50 of 2000 rows read (2.5%)"), "{err}");
    assert!(err.contains("more than the 1.0% allowed"), "{err}");
    let dir = tempfile::tempdir().expect("tmp");
    let (code, err) = run_with_bad_lines(dir.path(), 1990, 10, budget);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("dead letters: 10 row(s)"), "{err}");
    // A budget out of range is a spec error.
    let dir = tempfile::tempdir().expect("tmp");
    let (code, err) = run_with_bad_lines(dir.path(), 10, 1, "error_budget: {max_fraction: 2}");
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("error_budget.max_fraction"), "{err}");
}
