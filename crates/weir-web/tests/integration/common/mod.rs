//! A small job to watch, and a plain HTTP/1.1 client that sends exactly the headers a test
//! names (a `Host` of its choice, no token, a wrong token).

use arrow::array::{ArrayRef, Int64Array};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use async_trait::async_trait;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;
use weir_runtime::{
    CheckpointSetup, Emitter, ErrorPolicy, JobConfig, JobGraph, JobHandle, Operator,
    OperatorContext, Partitioning, Runtime, Source, SourceEvent,
};
use weir_types::{Error, Result};

fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![Field::new("n", DataType::Int64, false)]))
}

/// Emits 10 rows every 20 ms until stopped.
struct Ticks {
    next: i64,
}

#[async_trait]
impl Source for Ticks {
    fn schema(&self) -> SchemaRef {
        schema()
    }
    async fn next(&mut self, _ctx: &mut OperatorContext) -> Result<SourceEvent> {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let col: ArrayRef = Arc::new(Int64Array::from_iter_values(self.next..self.next + 10));
        self.next += 10;
        Ok(SourceEvent::Batch(RecordBatch::try_new(
            schema(),
            vec![col],
        )?))
    }
}

/// Refuses every row divisible by 7 (a dead letter naming the row), passes the rest.
struct Picky;

#[async_trait]
impl Operator for Picky {
    async fn process_batch(
        &mut self,
        b: RecordBatch,
        ctx: &mut OperatorContext,
        out: &mut Emitter,
    ) -> Result<()> {
        let n = b
            .column(0)
            .as_any()
            .downcast_ref::<Int64Array>()
            .ok_or_else(|| Error::internal("not int64"))?;
        let mut keep = Vec::new();
        for v in n.values() {
            if v % 7 == 0 {
                ctx.bad_row(
                    Error::input("multiple of seven"),
                    Some("ticks".into()),
                    Some(format!("row {v}")),
                    Some(v.to_string().into_bytes()),
                )?;
            } else {
                keep.push(*v);
            }
        }
        let col: ArrayRef = Arc::new(Int64Array::from(keep));
        out.emit(RecordBatch::try_new(b.schema(), vec![col])?);
        Ok(())
    }
}

struct Discard;

#[async_trait]
impl Operator for Discard {
    async fn process_batch(
        &mut self,
        _b: RecordBatch,
        _ctx: &mut OperatorContext,
        _out: &mut Emitter,
    ) -> Result<()> {
        Ok(())
    }
}

/// The job: `ticks` → `picky` (parallelism 2, rebalance) → `out`, dead letters to `dead`;
/// checkpoints every 300 ms into `dir` when given.
pub fn start(rt: &Runtime, dir: Option<&std::path::Path>) -> JobHandle {
    let mut g = JobGraph::new(JobConfig {
        name: "watched".into(),
        error_policy: ErrorPolicy::DeadLetter,
        ..JobConfig::default()
    });
    let src = g.add_source("ticks", 1, |_| Ok(Box::new(Ticks { next: 0 })));
    let picky = g.add_operator("picky", 2, |_| Ok(Box::new(Picky)));
    let out = g.add_sink("out", 1, |_| Ok(Box::new(Discard)));
    let dead = g.add_sink("dead", 1, |_| Ok(Box::new(Discard)));
    g.connect(src, picky, Partitioning::Rebalance);
    g.connect(picky, out, Partitioning::Rebalance);
    g.dead_letter = Some(dead);
    let setup = dir.map(|d| CheckpointSetup {
        store: weir_checkpoint::CheckpointStore::local(d).expect("store"),
        config: weir_checkpoint::CheckpointConfig {
            interval: Duration::from_millis(300),
            ..Default::default()
        },
        restore: None,
    });
    rt.start_with(g, setup).expect("start")
}

/// An HTTP answer.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }
}

/// Sends one request with exactly `headers` (plus `Connection: close` and a body length).
pub fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Answer {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(60)))
        .expect("timeout");
    let mut req = format!("{method} {path} HTTP/1.1\r\n");
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        req.push_str(&format!("Host: {addr}\r\n"));
    }
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str(&format!(
        "Connection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    ));
    s.write_all(req.as_bytes()).expect("send");
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).expect("read");
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, rest) = text.split_once("\r\n\r\n").expect("http answer");
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|c| c.parse().ok())
        .expect("status");
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let chunked = headers
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
    let body = if chunked {
        dechunk(rest)
    } else {
        rest.to_string()
    };
    Answer {
        status,
        headers,
        body,
    }
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 {
            break;
        }
        out.push_str(&rest[..n]);
        s = &rest[n + 2..];
    }
    out
}

pub fn get(addr: SocketAddr, path: &str) -> Answer {
    request(addr, "GET", path, &[], "")
}

/// Waits until `f` holds, up to `limit`.
pub fn wait_for(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let start = std::time::Instant::now();
    while !f() {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}
