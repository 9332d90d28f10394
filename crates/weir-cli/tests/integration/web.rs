//! `weir run --http` with the real parts around it: headless Chromium (Debian) driven by
//! playwright-core (npm) loads the UI, Prometheus (Debian) scrapes `/metrics` and answers a
//! PromQL query, schemathesis (PyPI) fuzzes every endpoint from the OpenAPI document, `weir
//! status` / `weir services` read the API, and the control endpoints refuse a missing or wrong
//! token. `scripts/setup-web-tests.sh` installs the three tools; every server here is started
//! by the test on an OS-chosen loopback port and stopped by it.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn weir() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_weir"));
    c.current_dir(root());
    c
}

fn home() -> PathBuf {
    std::env::var_os("WEIR_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join(".weir"))
}

fn need(p: PathBuf) -> PathBuf {
    assert!(
        p.exists(),
        "{} is missing: run scripts/setup-web-tests.sh",
        p.display()
    );
    p
}

/// Kills and reaps a child process when dropped (a failing test leaves nothing running).
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        if self.0.try_wait().ok().flatten().is_none() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

fn wait_for(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A plain HTTP/1.1 request to `url` (`http://HOST:PORT/path`); returns status and body.
fn http(method: &str, url: &str, auth: Option<&str>) -> (u16, String) {
    let rest = url.strip_prefix("http://").expect("http url");
    let (host, path) = rest
        .split_once('/')
        .map_or((rest, "/".to_string()), |(h, p)| (h, format!("/{p}")));
    let Ok(mut s) = TcpStream::connect(host) else {
        return (0, String::new());
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(60)));
    let auth = auth
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\n{auth}Connection: close\r\nContent-Length: 0\r\n\r\n"
    );
    if s.write_all(req.as_bytes()).is_err() {
        return (0, String::new());
    }
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let text = String::from_utf8_lossy(&raw).into_owned();
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        return (0, String::new());
    };
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        let mut out = String::new();
        let mut s = body;
        while let Some((size, rest)) = s.split_once("\r\n") {
            let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
            if n == 0 || rest.len() < n {
                break;
            }
            out.push_str(&rest[..n]);
            s = rest.get(n + 2..).unwrap_or("");
        }
        out
    } else {
        body.to_string()
    };
    (status, body)
}

fn json(url: &str) -> serde_json::Value {
    let (status, body) = http("GET", url, None);
    assert_eq!(status, 200, "GET {url}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {url}: {e}: {body}"))
}

/// A free loopback port (for Prometheus, which takes its address on the command line).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Rows the `orders` step emitted, as the API says.
fn rows_out(api: &str, step: &str) -> u64 {
    json(&format!("{api}/api/v1/operators"))
        .as_array()
        .and_then(|ops| ops.iter().find(|o| o["name"] == step).cloned())
        .and_then(|o| o["counters"]["rows_out"].as_u64())
        .unwrap_or(0)
}

#[test]
fn a_running_job_seen_by_a_browser_prometheus_and_a_fuzzer() {
    let chromium = need(PathBuf::from(
        std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into()),
    ));
    let web_tests = need(root().join("tests/web/node_modules/playwright-core")).join("../..");
    let schemathesis = need(home().join("venv-web/bin/schemathesis"));
    let prometheus = need(PathBuf::from("/usr/bin/prometheus"));

    let dir = tempfile::tempdir().expect("tmp");
    let d = dir.path();
    let input = d.join("in");
    std::fs::create_dir(&input).expect("mkdir");
    // Each input file appears whole (written aside, then renamed into the watched folder).
    let put = |input: &Path, i: usize| {
        let tmp = input.with_extension(format!("tmp-{i}"));
        std::fs::copy(root().join("examples/orders/returns.jsonl"), &tmp)
            .and_then(|_| std::fs::rename(&tmp, input.join(format!("part-{i:03}.jsonl"))))
            .expect("put an input file");
    };
    put(&input, 0);
    // 202 lines per file, two of them malformed (dead letters); the throttle keeps the job busy
    // long enough to watch it.
    let spec = format!(
        "name: web-test\non_error: dead_letter\ndead_letter:\n  sink: jsonl\n  path: {dead}\ncheckpoint:\n  store: {store}\n  interval: 1s\nsteps:\n  - name: orders\n    source: jsonl\n    path: {input}\n    continuous: true\n    poll_interval: 200ms\n    batch_size: 10\n  - name: slow\n    op: throttle\n    rows_per_second: 100\n  - name: damaged\n    op: filter\n    predicate: \"reason = 'damaged' OR refund > 50\"\n    parallelism: 2\n  - name: out\n    sink: jsonl\n    path: {out}\n",
        dead = d.join("dead.jsonl").display(),
        store = d.join("ckpt").display(),
        input = input.display(),
        out = d.join("out").display(),
    );
    let spec_path = d.join("spec.yaml");
    std::fs::write(&spec_path, spec).expect("spec");
    let job_dir = d.join("job");
    let metrics_json = d.join("metrics.json");
    let log = std::fs::File::create(d.join("job.log")).expect("log");
    let mut job = Reaped(
        weir()
            .args([
                "run",
                "--progress",
                "log",
                "--http",
                "127.0.0.1:0",
                "--metrics-json-interval",
                "1",
            ])
            .arg(&spec_path)
            .arg("--job-dir")
            .arg(&job_dir)
            .arg("--metrics-json")
            .arg(&metrics_json)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start weir run"),
    );
    let job_log = || std::fs::read_to_string(d.join("job.log")).unwrap_or_default();
    let api_file = job_dir.join("api.json");
    wait_for("the API file", Duration::from_secs(60), || {
        api_file.is_file()
    });
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&api_file)
        .expect("api.json")
        .permissions()
        .mode();
    assert_eq!(mode & 0o077, 0, "api.json mode {mode:o}");
    let f: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&api_file).expect("read")).expect("json");
    let api = f["url"].as_str().expect("url").to_string();
    let token = f["token"].as_str().expect("token").to_string();
    wait_for("rows flowing", Duration::from_secs(60), || {
        rows_out(&api, "orders") > 0
    });

    // More input keeps arriving while the browser looks (a file every 2.5 s: about what the
    // throttle lets through).
    let stop_feeding = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let feeder = {
        let stop = stop_feeding.clone();
        let input = input.clone();
        std::thread::spawn(move || {
            let mut i = 1;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) && i < 60 {
                put(&input, i);
                i += 1;
                std::thread::sleep(Duration::from_millis(2500));
            }
            i
        })
    };

    // The browser: every step drawn, a row count rising, the checkpoint table, a screenshot.
    let artifacts = root().join("target/test-artifacts");
    std::fs::create_dir_all(&artifacts).expect("artifacts dir");
    let shot = artifacts.join("weir-ui.png");
    let _ = std::fs::remove_file(&shot);
    let profile = d.join("chromium-profile");
    let out = Command::new("node")
        .arg(web_tests.join("ui-test.mjs"))
        .arg(format!("{api}/"))
        .arg(&shot)
        .args(["orders", "slow", "damaged", "out"])
        .env("CHROMIUM", &chromium)
        .env("CHROMIUM_PROFILE", &profile)
        .output()
        .expect("run node");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "browser test failed:\n{said}\njob log:\n{}",
        job_log()
    );
    assert!(said.contains("ok: checkpoint table opened"), "{said}");
    let png = std::fs::read(&shot).expect("screenshot");
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "a real screenshot"
    );

    stop_feeding.store(true, std::sync::atomic::Ordering::Relaxed);
    let files = feeder.join().expect("feeder");
    // Every file read: 200 good rows each.
    let expected = 200 * files as u64;
    wait_for("every row read", Duration::from_secs(120), || {
        rows_out(&api, "orders") == expected
    });

    // Prometheus scrapes the job; PromQL through its HTTP API gives the step's row counter.
    let prom_port = free_port();
    let prom_dir = d.join("prometheus");
    std::fs::create_dir(&prom_dir).expect("mkdir");
    let target = api.trim_start_matches("http://");
    std::fs::write(
        prom_dir.join("prometheus.yml"),
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: weir\n    honor_labels: true\n    static_configs:\n      - targets: ['{target}']\n"
        ),
    )
    .expect("prometheus config");
    let prom = Reaped(
        Command::new(&prometheus)
            .arg(format!(
                "--config.file={}",
                prom_dir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                prom_dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{prom_port}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(d.join("prometheus.log")).expect("log"))
            .spawn()
            .expect("start prometheus"),
    );
    let query = format!(
        "http://127.0.0.1:{prom_port}/api/v1/query?query=sum(weir_operator_rows_total%7Bjob%3D%22web-test%22%2Cstep%3D%22orders%22%2Cdirection%3D%22out%22%7D)"
    );
    let mut got = None;
    wait_for(
        "Prometheus to scrape the job",
        Duration::from_secs(60),
        || {
            let (status, body) = http("GET", &query, None);
            let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
            got = v["data"]["result"][0]["value"][1]
                .as_str()
                .and_then(|s| s.parse::<f64>().ok());
            status == 200 && got.is_some()
        },
    );
    assert_eq!(
        got,
        Some(expected as f64),
        "PromQL sum of weir_operator_rows_total for step orders\nprometheus log:\n{}",
        std::fs::read_to_string(d.join("prometheus.log")).unwrap_or_default()
    );
    drop(prom);

    // The fuzzer: every endpoint from the OpenAPI document, no 5xx, answers as documented.
    let report = artifacts.join("schemathesis");
    let fuzz = Command::new(&schemathesis)
        // Its cache (`.schemathesis/`) goes to the test's temporary folder, not the repository.
        .current_dir(d)
        .args(["run", &format!("{api}/api/v1/openapi.yaml")])
        .args(["--url", &api])
        .args([
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance,ignored_auth",
        ])
        .args(["--max-examples", "40", "--seed", "1", "--workers", "2", "--no-color"])
        .args(["--phases", "examples,coverage,fuzzing"])
        .arg("--report-dir")
        .arg(&report)
        .env("NO_PROXY", "127.0.0.1,localhost")
        .output()
        .expect("run schemathesis");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&fuzz.stdout),
        String::from_utf8_lossy(&fuzz.stderr)
    );
    assert!(
        fuzz.status.success(),
        "schemathesis found problems:\n{said}"
    );
    assert!(
        said.contains("passed") && said.contains("generated") && !said.contains(" 0 generated"),
        "schemathesis ran no test case:\n{said}"
    );
    // And the one control endpoint that is safe to fuzz with the token (there is no service,
    // so nothing scales): its body and path handling.
    let fuzz = Command::new(&schemathesis)
        // Its cache (`.schemathesis/`) goes to the test's temporary folder, not the repository.
        .current_dir(d)
        .args(["run", &format!("{api}/api/v1/openapi.yaml")])
        .args(["--url", &api])
        .args(["-H", &format!("Authorization: Bearer {token}")])
        .args(["--include-path-regex", "scale$"])
        .args([
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance",
        ])
        .args(["--max-examples", "40", "--seed", "1", "--workers", "2", "--no-color"])
        .args(["--phases", "examples,coverage,fuzzing"])
        .arg("--report-dir")
        .arg(&report)
        .env("NO_PROXY", "127.0.0.1,localhost")
        .output()
        .expect("run schemathesis");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&fuzz.stdout),
        String::from_utf8_lossy(&fuzz.stderr)
    );
    assert!(
        fuzz.status.success(),
        "schemathesis (with the token) found problems:\n{said}"
    );

    // The job is still there and still answers (no crash under the fuzzer).
    assert_eq!(
        json(&format!("{api}/api/v1/job"))["state"],
        "running",
        "{}",
        job_log()
    );

    // weir status and weir services read the API.
    let st = weir()
        .args(["status", "--api-file"])
        .arg(&api_file)
        .output()
        .expect("weir status");
    let text = String::from_utf8_lossy(&st.stdout);
    assert!(
        st.status.success(),
        "{}",
        String::from_utf8_lossy(&st.stderr)
    );
    assert!(text.contains("job 'web-test' running"), "{text}");
    assert!(text.contains("damaged"), "{text}");
    let sv = weir()
        .args(["services", "--json", "--api-file"])
        .arg(&api_file)
        .output()
        .expect("weir services");
    assert!(
        sv.status.success(),
        "{}",
        String::from_utf8_lossy(&sv.stderr)
    );

    // --metrics-json is refreshed while the job runs.
    let m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&metrics_json).expect("metrics json"))
            .expect("json");
    assert_eq!(m["state"], "running");

    // Control without a token (or with a wrong one): 401 and the job goes on.
    for auth in [None, Some("0".repeat(32))] {
        for path in ["/api/v1/job/stop", "/api/v1/checkpoints"] {
            let (status, body) = http("POST", &format!("{api}{path}"), auth.as_deref());
            assert_eq!(status, 401, "{path}: {body}");
        }
    }
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        job.0.try_wait().expect("try_wait").is_none(),
        "the job still runs"
    );
    assert_eq!(json(&format!("{api}/api/v1/job"))["state"], "running");

    // With the token: a checkpoint now, then stop (drain and final checkpoint).
    let (status, body) = http("POST", &format!("{api}/api/v1/checkpoints"), Some(&token));
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"requested\":true"), "{body}");
    let (status, body) = http("POST", &format!("{api}/api/v1/job/stop"), Some(&token));
    assert_eq!(status, 202, "{body}");
    let start = Instant::now();
    let code = loop {
        if let Some(s) = job.0.try_wait().expect("try_wait") {
            break s.code();
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the job did not stop:\n{}",
            job_log()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    // Stopped before its input ended: the documented status 143, not completion's 0.
    assert_eq!(code, Some(143), "{}", job_log());
    let log = job_log();
    assert!(log.contains("stop requested through the web API"), "{log}");
    assert!(!api_file.exists(), "the API file is removed at the end");
    let m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&metrics_json).expect("metrics json"))
            .expect("json");
    assert_eq!(m["state"], "finished");
}
