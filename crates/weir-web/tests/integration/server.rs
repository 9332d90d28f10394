//! The API, Prometheus text and UI of a running job, and their security rules, over loopback.

use crate::common::{self, Answer, get, request, wait_for};
use std::sync::Arc;
use std::time::Duration;
use weir_runtime::Runtime;
use weir_web::{Attempt, JobInfo, Watch, WebOptions, WebServer};

struct Served {
    watch: Arc<Watch>,
    server: WebServer,
    token: String,
}

fn serve(always_token: bool) -> Served {
    let watch = Watch::new(
        JobInfo {
            name: "watched".into(),
            spec: None,
            pid: std::process::id(),
        },
        Vec::new(),
    );
    let token = weir_web::new_token().expect("token");
    let server = WebServer::start(
        watch.clone(),
        WebOptions {
            bind: "127.0.0.1:0".parse().expect("addr"),
            token: token.clone(),
            always_token,
        },
    )
    .expect("serve");
    Served {
        watch,
        server,
        token,
    }
}

/// Samples the watch every 100 ms on a thread until `stop` is set.
fn sampler(
    watch: Arc<Watch>,
) -> (
    Arc<std::sync::atomic::AtomicBool>,
    std::thread::JoinHandle<()>,
) {
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let s = stop.clone();
    let t = std::thread::spawn(move || {
        while !s.load(std::sync::atomic::Ordering::Relaxed) {
            watch.sample();
            std::thread::sleep(Duration::from_millis(100));
        }
    });
    (stop, t)
}

fn assert_security_headers(a: &Answer) {
    assert_eq!(a.header("x-content-type-options"), Some("nosniff"));
    assert_eq!(a.header("x-frame-options"), Some("DENY"));
    assert!(
        a.header("content-security-policy").is_some_and(
            |c| c.contains("default-src 'none'") && c.contains("frame-ancestors 'none'")
        ),
        "{:?}",
        a.headers
    );
    assert_eq!(a.header("referrer-policy"), Some("no-referrer"));
    assert!(
        a.headers
            .iter()
            .all(|(k, _)| !k.to_ascii_lowercase().starts_with("access-control-")),
        "no CORS header: {:?}",
        a.headers
    );
}

#[test]
fn the_api_shows_a_running_job_and_control_needs_the_token() {
    let dir = tempfile::tempdir().expect("tmp");
    let rt = Runtime::new(2).expect("runtime");
    let s = serve(false);
    let addr = s.server.addr();
    // Before the job starts: the job is "starting", lists are empty, nothing fails.
    let j = get(addr, "/api/v1/job");
    assert_eq!(j.status, 200, "{}", j.body);
    assert_eq!(j.json()["state"], "starting");
    assert_eq!(get(addr, "/api/v1/overview").status, 200);

    let handle = common::start(&rt, Some(dir.path()));
    s.watch.attach(Attempt::of(&handle));
    let (stop_sampling, sampling) = sampler(s.watch.clone());

    // The graph: steps, edges with their routing, chains.
    let g = get(addr, "/api/v1/graph").json();
    let names: Vec<&str> = g["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .filter_map(|n| n["name"].as_str())
        .collect();
    assert_eq!(names, ["ticks", "picky", "out", "dead"]);
    assert!(
        g["edges"]
            .as_array()
            .expect("edges")
            .iter()
            .any(|e| e["from"] == "ticks"
                && e["to"] == "picky"
                && e["partitioning"] == "rebalance")
    );
    assert_eq!(g["nodes"][1]["parallelism"], 2);

    // Counters grow; rates appear once two samples were taken; subtasks are listed.
    let rows = |name: &str| -> u64 {
        get(addr, "/api/v1/operators")
            .json()
            .as_array()
            .expect("ops")
            .iter()
            .find(|o| o["name"] == name)
            .and_then(|o| o["counters"]["rows_in"].as_u64())
            .unwrap_or(0)
    };
    wait_for("rows at the sink", Duration::from_secs(20), || {
        rows("out") > 50
    });
    let before = rows("out");
    wait_for("more rows", Duration::from_secs(20), || {
        rows("out") > before
    });
    wait_for("a rate", Duration::from_secs(20), || {
        get(addr, "/api/v1/operators/picky").json()["rates"]["rows_out_per_s"]
            .as_f64()
            .is_some_and(|r| r > 0.0)
    });
    let picky = get(addr, "/api/v1/operators/picky").json();
    assert_eq!(picky["subtasks"].as_array().map(Vec::len), Some(2));
    assert!(
        picky["subtasks"][0]["input_queues"]
            .as_array()
            .is_some_and(|q| !q.is_empty() && q[0]["capacity_bytes"].as_u64() > Some(0)),
        "{picky}"
    );
    assert!(
        picky["rates"]["busy"]
            .as_f64()
            .is_some_and(|b| (0.0..=1.0).contains(&b))
    );
    assert_eq!(get(addr, "/api/v1/operators/nope").status, 404);

    // Dead letters: counted by reason, samples name their row.
    wait_for("dead letters", Duration::from_secs(20), || {
        get(addr, "/api/v1/dead-letters").json()["total"].as_u64() > Some(3)
    });
    let d = get(addr, "/api/v1/dead-letters?limit=2").json();
    assert_eq!(d["counts"][0]["reason"], "multiple of seven");
    assert_eq!(d["counts"][0]["operator"], "picky");
    assert_eq!(d["samples"].as_array().map(Vec::len), Some(2));
    assert!(
        d["samples"][0]["position"]
            .as_str()
            .is_some_and(|p| p.starts_with("row "))
    );
    assert_eq!(d["samples"][0]["input"], "ticks");
    assert_eq!(get(addr, "/api/v1/dead-letters?limit=x").status, 400);

    // Checkpoints: completed ones with every task's ack and a size.
    wait_for("a checkpoint", Duration::from_secs(20), || {
        get(addr, "/api/v1/checkpoints").json()["totals"]["completed"].as_u64() >= Some(1)
    });
    let c = get(addr, "/api/v1/checkpoints").json();
    let done = c["history"]
        .as_array()
        .expect("history")
        .iter()
        .find(|r| r["status"] == "completed")
        .cloned()
        .expect("a completed checkpoint");
    assert_eq!(
        done["acks"].as_array().map(Vec::len),
        done["expected_tasks"].as_u64().map(|n| n as usize)
    );
    let id = done["id"].as_u64().expect("id");
    assert_eq!(
        get(addr, &format!("/api/v1/checkpoints/{id}")).json()["id"],
        id
    );
    assert_eq!(get(addr, "/api/v1/checkpoints/999999").status, 404);

    // Prometheus text: the row counter of a step, per subtask, with the conventions' names.
    let m = get(addr, "/metrics");
    assert_eq!(m.status, 200);
    assert!(
        m.header("content-type")
            .is_some_and(|t| t.starts_with("text/plain; version=0.0.4"))
    );
    assert!(
        m.body.contains(
            r#"weir_operator_rows_total{job="watched",step="picky",subtask="1",direction="in"}"#
        ),
        "{}",
        m.body
    );
    assert!(
        m.body
            .contains("# TYPE weir_checkpoint_duration_seconds histogram"),
        "{}",
        m.body
    );
    assert!(
        m.body
            .contains(r#"weir_checkpoint_duration_seconds_bucket{job="watched",le="+Inf"}"#),
        "{}",
        m.body
    );
    assert!(m.body.contains(r#"weir_dead_letter_reasons_total{job="watched",step="picky",reason="multiple of seven"}"#), "{}", m.body);

    // The UI: every step drawn, names escaped, the script and style compiled in.
    let ui = get(addr, "/");
    assert_eq!(ui.status, 200);
    for n in ["ticks", "picky", "out", "dead"] {
        assert!(ui.body.contains(&format!(r#"data-step="{n}""#)), "{n}");
    }
    assert_security_headers(&ui);
    assert!(get(addr, "/ui/app.js").body.contains("/api/v1/overview"));
    assert_eq!(get(addr, "/api/v1/openapi.yaml").status, 200);

    // No file is ever served by name.
    for path in [
        "/ui/../../../../etc/passwd",
        "/ui/%2e%2e/%2e%2e/etc/passwd",
        "/api/v1/operators/..%2F..%2Fetc%2Fpasswd",
        "/Cargo.toml",
    ] {
        let a = get(addr, path);
        assert_eq!(a.status, 404, "{path}: {}", a.body);
        assert!(!a.body.contains("root:"), "{path}");
    }

    // Control without the token (or with a wrong one): 401 and nothing happens.
    let wrong = format!("Bearer {}", "0".repeat(32));
    for auth in [None, Some(wrong.as_str()), Some("Basic d2Vpcjpub3Bl")] {
        let headers: Vec<(&str, &str)> = auth.map(|a| ("Authorization", a)).into_iter().collect();
        for (path, body) in [
            ("/api/v1/job/stop", ""),
            ("/api/v1/checkpoints", ""),
            ("/api/v1/services/x/scale", r#"{"instances": 2}"#),
        ] {
            let a = request(addr, "POST", path, &headers, body);
            assert_eq!(a.status, 401, "{path} {auth:?}: {}", a.body);
            assert_security_headers(&a);
        }
    }
    let completed_before = get(addr, "/api/v1/checkpoints").json()["history"]
        .as_array()
        .map(|h| h.iter().filter(|r| r["requested"] == true).count());
    assert_eq!(
        completed_before,
        Some(0),
        "no requested checkpoint happened"
    );
    assert_eq!(get(addr, "/api/v1/job").json()["state"], "running");

    // With the token: checkpoint now answers with the completed checkpoint.
    let bearer = format!("Bearer {}", s.token);
    let auth = [("Authorization", bearer.as_str())];
    let a = request(addr, "POST", "/api/v1/checkpoints", &auth, "");
    assert_eq!(a.status, 200, "{}", a.body);
    let r = a.json();
    assert_eq!(r["status"], "completed");
    assert_eq!(r["requested"], true);
    let json_auth = [auth[0], ("Content-Type", "application/json")];
    let a = request(
        addr,
        "POST",
        "/api/v1/services/nope/scale",
        &json_auth,
        r#"{"instances": 2}"#,
    );
    assert_eq!(a.status, 404, "{}", a.body);
    let a = request(
        addr,
        "POST",
        "/api/v1/services/nope/scale",
        &json_auth,
        "not json",
    );
    assert!(a.status >= 400 && a.status < 500, "{}", a.body);

    // A request addressed to another host name is refused (DNS rebinding).
    let a = request(
        addr,
        "GET",
        "/api/v1/job",
        &[("Host", "attacker.example:8642")],
        "",
    );
    assert_eq!(a.status, 403);

    // Stop: the job drains, takes its final checkpoint and ends.
    let a = request(addr, "POST", "/api/v1/job/stop", &auth, "");
    assert_eq!(a.status, 202, "{}", a.body);
    let report = rt.block_on(handle.wait()).expect("job ends");
    assert!(report.stopped_early);
    s.watch.ended(Ok(()));
    stop_sampling.store(true, std::sync::atomic::Ordering::Relaxed);
    sampling.join().expect("sampler");
    let c = get(addr, "/api/v1/checkpoints").json();
    assert_eq!(c["history"][0]["is_final"], true, "{c}");
    assert_eq!(c["history"][0]["status"], "completed");
    assert_eq!(get(addr, "/api/v1/job").json()["state"], "finished");
}

#[test]
fn off_loopback_every_request_needs_the_token() {
    let s = serve(true);
    let addr = s.server.addr();
    for path in [
        "/",
        "/api/v1/job",
        "/metrics",
        "/api/v1/openapi.yaml",
        "/nope",
    ] {
        let a = get(addr, path);
        assert_eq!(a.status, 401, "{path}");
        assert!(
            a.header("www-authenticate")
                .is_some_and(|w| w.starts_with("Basic"))
        );
        assert_security_headers(&a);
    }
    let bearer = format!("Bearer {}", s.token);
    let a = request(
        addr,
        "GET",
        "/api/v1/job",
        &[("Authorization", &bearer)],
        "",
    );
    assert_eq!(a.status, 200);
    // The browser's way: Basic auth with the token as the password.
    use base64::Engine;
    let basic = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("me:{}", s.token))
    );
    let a = request(addr, "GET", "/", &[("Authorization", &basic)], "");
    assert_eq!(a.status, 200);
    // The job has not started: control answers 409, not 5xx.
    let a = request(
        addr,
        "POST",
        "/api/v1/job/stop",
        &[("Authorization", &bearer)],
        "",
    );
    assert_eq!(a.status, 409);
}
