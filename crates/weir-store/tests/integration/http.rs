//! The guarded http client against tiny loopback HTTP servers started here: address checks after
//! DNS and on every redirect, bounded retries, size limits and ranges. Each server counts the
//! connections it accepted, so a refusal is proved by a count of zero.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{IpAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use url::Url;
use weir_store::{AddressPolicy, HttpFetcher, HttpOptions};

/// A server on `ip`, answering every request with `answer(path)`: (status line, headers, body,
/// delay before answering).
struct Server {
    port: u16,
    hits: Arc<AtomicUsize>,
}

type Answer = (String, Vec<(String, String)>, Vec<u8>, Duration);

fn serve(ip: &str, answer: impl Fn(&str) -> Answer + Send + Sync + 'static) -> Server {
    let listener = TcpListener::bind((ip, 0)).expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let hits = Arc::new(AtomicUsize::new(0));
    let counted = hits.clone();
    let answer = Arc::new(answer);
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { return };
            counted.fetch_add(1, Ordering::SeqCst);
            let answer = answer.clone();
            std::thread::spawn(move || handle(stream, &*answer));
        }
    });
    Server { port, hits }
}

fn handle(mut s: TcpStream, answer: &dyn Fn(&str) -> Answer) {
    let mut req = Vec::new();
    let mut buf = [0u8; 1024];
    while !req.windows(4).any(|w| w == b"\r\n\r\n") {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => req.extend_from_slice(&buf[..n]),
        }
    }
    let text = String::from_utf8_lossy(&req).to_string();
    let path = text.split_whitespace().nth(1).unwrap_or("/").to_string();
    let range = text
        .lines()
        .find_map(|l| {
            l.strip_prefix("range: ")
                .or_else(|| l.strip_prefix("Range: "))
        })
        .map(str::to_string);
    let (status, mut headers, mut body, delay) = answer(&path);
    if let Some(r) = range
        && status.starts_with("200")
        && path.contains("ranged")
    {
        let spec = r.trim().trim_start_matches("bytes=");
        let (a, b) = spec.split_once('-').unwrap_or((spec, ""));
        let a: usize = a.parse().unwrap_or(0);
        let b: usize = b.parse().map(|b: usize| b + 1).unwrap_or(body.len());
        body = body[a..b.min(body.len())].to_vec();
        return write(&mut s, "206 Partial Content", &headers, &body, delay);
    }
    headers.push(("Connection".into(), "close".into()));
    write(&mut s, &status, &headers, &body, delay)
}

fn write(
    s: &mut TcpStream,
    status: &str,
    headers: &[(String, String)],
    body: &[u8],
    delay: Duration,
) {
    std::thread::sleep(delay);
    let mut out = format!("HTTP/1.1 {status}\r\nContent-Length: {}\r\n", body.len());
    for (k, v) in headers {
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    out.push_str("\r\n");
    let _ = s.write_all(out.as_bytes());
    let _ = s.write_all(body);
}

fn ok(body: &str) -> Answer {
    (
        "200 OK".into(),
        vec![],
        body.as_bytes().to_vec(),
        Duration::ZERO,
    )
}

fn redirect(to: &str) -> Answer {
    (
        "302 Found".into(),
        vec![("Location".into(), to.into())],
        vec![],
        Duration::ZERO,
    )
}

fn fetcher(allow: &[&str], resolve: &[(&str, &str)]) -> HttpFetcher {
    let opts = HttpOptions {
        addresses: AddressPolicy::new(allow).expect("policy"),
        backoff: Duration::from_millis(10),
        timeout: Duration::from_millis(700),
        resolve: resolve
            .iter()
            .map(|(h, ip)| (h.to_string(), vec![ip.parse::<IpAddr>().expect("ip")]))
            .collect::<HashMap<_, _>>(),
        ..HttpOptions::default()
    };
    HttpFetcher::new(opts).expect("client")
}

fn url(s: &str) -> Url {
    Url::parse(s).expect("url")
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

#[test]
fn loopback_is_refused_unless_allowed_also_behind_a_name() {
    let rt = rt();
    let srv = serve("127.0.0.1", |_| ok("hello"));
    let p = srv.port;
    let none = fetcher(&[], &[("evil.test", "127.0.0.1")]);
    for u in [
        format!("http://127.0.0.1:{p}/a"),
        format!("http://2130706433:{p}/a"),
        format!("http://[::ffff:127.0.0.1]:{p}/a"),
        // Names: one answered by the fixed table, one by the system resolver (/etc/hosts).
        format!("http://evil.test:{p}/a"),
        format!("http://localhost:{p}/a"),
    ] {
        let e = rt
            .block_on(none.get(&url(&u), 0, None, 1 << 20))
            .expect_err(&u);
        assert!(e.message().contains("refused"), "{u}: {e}");
        assert!(e.message().contains("loopback"), "{u}: {e}");
        assert!(
            !e.message().contains("attempts"),
            "a refusal is not retried: {e}"
        );
    }
    assert_eq!(
        srv.hits.load(Ordering::SeqCst),
        0,
        "nothing reached the server"
    );
    let e = rt
        .block_on(none.get(
            &url("http://169.254.169.254/latest/meta-data/"),
            0,
            None,
            10,
        ))
        .expect_err("metadata");
    assert!(e.message().contains("link-local"), "{e}");

    let allowed = fetcher(&["127.0.0.1/32"], &[("evil.test", "127.0.0.1")]);
    let got = rt
        .block_on(allowed.get(&url(&format!("http://evil.test:{p}/a")), 0, None, 1 << 20))
        .expect("allowed");
    assert_eq!(&got[..], b"hello");
    assert_eq!(srv.hits.load(Ordering::SeqCst), 1);
}

#[test]
fn every_redirect_is_checked() {
    let rt = rt();
    let inner = serve("127.0.0.2", |_| ok("secret"));
    let ip_port = inner.port;
    let outer = serve("127.0.0.1", move |path| match path {
        "/to-ip" => redirect(&format!("http://127.0.0.2:{ip_port}/x")),
        "/to-name" => redirect(&format!("http://inside.test:{ip_port}/x")),
        "/to-metadata" => redirect("http://169.254.169.254/latest/meta-data/"),
        "/to-file" => redirect("file:///etc/passwd"),
        "/loop" => redirect("/loop"),
        "/fine" => redirect("/final"),
        _ => ok("public"),
    });
    let f = fetcher(&["127.0.0.1/32"], &[("inside.test", "127.0.0.2")]);
    let base = format!("http://127.0.0.1:{}", outer.port);
    for (path, why) in [
        ("/to-ip", "127.0.0.2 is a loopback"),
        ("/to-name", "'inside.test' resolves to 127.0.0.2"),
        ("/to-metadata", "link-local"),
        // Not followed at all: the redirect answer is the answer, an error status.
        ("/to-file", "302"),
        ("/loop", "redirects"),
    ] {
        let e = rt
            .block_on(f.get(&url(&format!("{base}{path}")), 0, None, 1 << 20))
            .expect_err(path);
        assert!(e.message().contains(why), "{path}: {e}");
    }
    assert_eq!(
        inner.hits.load(Ordering::SeqCst),
        0,
        "no redirect reached 127.0.0.2"
    );
    let got = rt
        .block_on(f.get(&url(&format!("{base}/fine")), 0, None, 1 << 20))
        .expect("same-host redirect");
    assert_eq!(&got[..], b"public");
}

#[test]
fn retries_are_bounded_and_errors_name_the_cause() {
    let rt = rt();
    let srv = serve("127.0.0.1", |path| match path {
        "/missing" => ("404 Not Found".into(), vec![], vec![], Duration::ZERO),
        "/broken" => (
            "503 Service Unavailable".into(),
            vec![],
            vec![],
            Duration::ZERO,
        ),
        "/slow" => (
            "200 OK".into(),
            vec![],
            b"late".to_vec(),
            Duration::from_secs(3),
        ),
        "/big" => ("200 OK".into(), vec![], vec![7u8; 5000], Duration::ZERO),
        _ => ok("0123456789"),
    });
    let f = fetcher(&["127.0.0.0/8"], &[]);
    let base = format!("http://127.0.0.1:{}", srv.port);
    let get = |p: &str, off: u64, len: Option<u64>, max: u64| {
        rt.block_on(f.get(&url(&format!("{base}{p}")), off, len, max))
    };
    let before = srv.hits.load(Ordering::SeqCst);
    let e = get("/missing", 0, None, 100).expect_err("404");
    assert!(e.message().contains("404"), "{e}");
    assert_eq!(
        srv.hits.load(Ordering::SeqCst) - before,
        1,
        "a 404 is not retried"
    );
    let before = srv.hits.load(Ordering::SeqCst);
    let e = get("/broken", 0, None, 100).expect_err("503");
    assert!(
        e.message().contains("503") && e.message().contains("after 3 attempts"),
        "{e}"
    );
    assert_eq!(
        srv.hits.load(Ordering::SeqCst) - before,
        3,
        "two retries, no more"
    );
    let e = get("/big", 0, None, 100).expect_err("too large");
    assert!(e.message().contains("max_size"), "{e}");
    let e = get("/slow", 0, None, 100).expect_err("timeout");
    assert!(e.message().contains("timed out"), "{e}");
    assert_eq!(&get("/ranged", 2, Some(3), 100).expect("range")[..], b"234");
    assert_eq!(
        &get("/plain", 2, Some(3), 100).expect("cut here")[..],
        b"234"
    );
    assert_eq!(&get("/plain", 7, None, 100).expect("tail")[..], b"789");

    // A port nobody listens on: refused connection, retried, then an error naming it.
    let closed = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = closed.local_addr().expect("addr").port();
    drop(closed);
    let e = rt
        .block_on(f.get(&url(&format!("http://127.0.0.1:{port}/x")), 0, None, 100))
        .expect_err("refused");
    assert!(e.message().contains("after 3 attempts"), "{e}");
    // https to a server that speaks plain http: a TLS error, as a row error.
    let e = rt
        .block_on(f.get(
            &url(&format!("https://127.0.0.1:{}/x", srv.port)),
            0,
            None,
            100,
        ))
        .expect_err("not tls");
    assert!(
        e.message().starts_with("cannot fetch https://127.0.0.1"),
        "{e}"
    );
    assert_eq!(e.kind(), weir_types::ErrorKind::InvalidInput);
}
