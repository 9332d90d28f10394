//! A real Apache Kafka broker for tests: one combined broker and controller (KRaft) on loopback,
//! run from the jars that `scripts/setup-kafka.sh` fetched from Maven Central, on ports the OS
//! chose, with its data in a temporary directory.
//!
//! The broker runs under a small shell watchdog whose standard input is a pipe this process holds:
//! when the test process ends — even killed with `kill -9` — the pipe closes and the watchdog kills
//! the broker, so no broker outlives its tests. [`Broker::kill`] and [`Broker::restart`] are the
//! fault injection of the broker-fault tests (the process is killed with SIGKILL and started again
//! on the same ports and data).
//!
//! Uses only `std`, so that the Kafka connector's tests can include this file by path (a dependency
//! on `weir-testkit` would link the whole engine into them).

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The Kafka version `scripts/setup-kafka.sh` installs.
pub const KAFKA_VERSION: &str = "4.4.0";

/// How a test broker is configured.
#[derive(Debug, Clone)]
pub struct BrokerOptions {
    /// The broker's `transaction.max.timeout.ms` (Kafka's default is 15 minutes).
    pub transaction_max_timeout_ms: u64,
}

impl Default for BrokerOptions {
    fn default() -> Self {
        BrokerOptions {
            transaction_max_timeout_ms: 900_000,
        }
    }
}

/// A running test broker. Dropping it kills the broker and deletes its data.
#[derive(Debug)]
pub struct Broker {
    dir: PathBuf,
    port: u16,
    child: Option<(Child, ChildStdin)>,
    starts: u32,
}

/// The directory of the broker's jars: `$WEIR_KAFKA_LIBS`, or `kafka/<version>/libs` under the
/// set-up's home (`$WEIR_HOME` or the repository's `.weir`). Panics with the fix when missing.
pub fn kafka_libs() -> PathBuf {
    let libs = std::env::var_os("WEIR_KAFKA_LIBS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            std::env::var_os("WEIR_HOME")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.weir"))
                .join("kafka")
                .join(KAFKA_VERSION)
                .join("libs")
        });
    assert!(
        libs.join(format!("kafka_2.13-{KAFKA_VERSION}.jar"))
            .is_file(),
        "Apache Kafka {KAFKA_VERSION} is not installed in {}: run scripts/setup-kafka.sh",
        libs.display()
    );
    libs
}

/// A port on 127.0.0.1 that was free a moment ago.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free port on 127.0.0.1")
}

/// A random Kafka cluster id: 16 bytes, base64url without padding.
fn cluster_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut bytes = Vec::with_capacity(16);
    for i in 0..2u64 {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(i);
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0),
        );
        bytes.extend_from_slice(&h.finish().to_le_bytes());
    }
    const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    let mut acc = 0u32;
    let mut bits = 0;
    for b in bytes {
        acc = (acc << 8) | b as u32;
        bits += 8;
        while bits >= 6 {
            bits -= 6;
            out.push(A[((acc >> bits) & 63) as usize] as char);
        }
    }
    if bits > 0 {
        out.push(A[((acc << (6 - bits)) & 63) as usize] as char);
    }
    out
}

fn java(libs: &Path) -> Command {
    let mut c = Command::new("java");
    c.args(["-Xmx512m", "-Xms128m", "-XX:+UseSerialGC"])
        .arg("-cp")
        .arg(format!("{}/*", libs.display()));
    c
}

impl Broker {
    /// Starts a broker with the default options; waits until it serves requests.
    pub fn start() -> Broker {
        Self::start_with(BrokerOptions::default())
    }

    /// Starts a broker with `options`; waits until it serves requests.
    pub fn start_with(options: BrokerOptions) -> Broker {
        let libs = kafka_libs();
        let dir = std::env::temp_dir().join(format!(
            "weir-kafka-{}-{}",
            std::process::id(),
            cluster_id()
        ));
        std::fs::create_dir_all(&dir).expect("broker dir");
        let port = free_port();
        let controller = free_port();
        let props = format!(
            "process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers=127.0.0.1:{controller}
listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller}
advertised.listeners=PLAINTEXT://127.0.0.1:{port}
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs={data}
num.partitions=1
auto.create.topics.enable=false
offsets.topic.replication.factor=1
offsets.topic.num.partitions=4
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=4
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
message.max.bytes=20000000
transaction.max.timeout.ms={txn}
",
            data = dir.join("data").display(),
            txn = options.transaction_max_timeout_ms,
        );
        std::fs::write(dir.join("server.properties"), props).expect("server.properties");
        std::fs::write(
            dir.join("log4j.properties"),
            "log4j.rootLogger=INFO, stdout\n\
             log4j.appender.stdout=org.apache.log4j.ConsoleAppender\n\
             log4j.appender.stdout.layout=org.apache.log4j.PatternLayout\n\
             log4j.appender.stdout.layout.ConversionPattern=[%d] %p %m (%c)%n\n\
             log4j.logger.kafka=INFO\n\
             log4j.logger.org.apache.kafka=INFO\n",
        )
        .expect("log4j.properties");
        let out = java(&libs)
            .arg("kafka.tools.StorageTool")
            // `--cluster-id=ID` in one argument: an id may start with '-', which the tool's
            // argument parser would take for an option.
            .args([
                "format",
                "--standalone",
                &format!("--cluster-id={}", cluster_id()),
                "-c",
            ])
            .arg(dir.join("server.properties"))
            .output()
            .expect("java (Kafka's StorageTool) could not be started; is Java 17+ installed?");
        assert!(
            out.status.success(),
            "formatting the broker's storage failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let mut broker = Broker {
            dir,
            port,
            child: None,
            starts: 0,
        };
        broker.launch();
        broker
    }

    /// The one broker shared by the tests of this test binary (started on first use; killed when
    /// the test process exits).
    pub fn shared() -> &'static Broker {
        static SHARED: OnceLock<Broker> = OnceLock::new();
        SHARED.get_or_init(Broker::start)
    }

    /// `127.0.0.1:<port>`, for `bootstrap_servers`.
    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The broker's log of its current (or last) run.
    pub fn log(&self) -> PathBuf {
        self.dir.join(format!("broker-{}.log", self.starts))
    }

    fn launch(&mut self) {
        let libs = kafka_libs();
        self.starts += 1;
        let log = self.log();
        let java_line = [
            "java".to_string(),
            "-Xmx512m".into(),
            "-Xms128m".into(),
            "-XX:+UseSerialGC".into(),
            "-cp".into(),
            format!("{}/*", libs.display()),
            format!(
                "-Dlog4j.configuration=file:{}",
                self.dir.join("log4j.properties").display()
            ),
            "kafka.Kafka".into(),
            self.dir.join("server.properties").display().to_string(),
        ]
        .iter()
        .map(|a| shell_quote(a))
        .collect::<Vec<_>>()
        .join(" ");
        // The watchdog: starts the broker, then waits for a line on its standard input (`kill`)
        // or for the input to close (this process dying: then it also deletes the broker's
        // directory) and kills the broker with SIGKILL.
        let script = format!(
            "{java_line} >{log} 2>&1 & pid=$!; echo $pid; \
             if read -r _; then kill -9 $pid; wait $pid; else kill -9 $pid; wait $pid; rm -rf {dir}; fi 2>/dev/null; exit 0",
            log = shell_quote(&log.display().to_string()),
            dir = shell_quote(&self.dir.display().to_string()),
        );
        let mut child = Command::new("bash")
            .arg("-c")
            .arg(script)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("bash");
        let stdin = child.stdin.take().expect("stdin");
        let mut first = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut first)
            .expect("broker pid");
        self.child = Some((child, stdin));
        let started = Instant::now();
        loop {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if text.contains("Kafka Server started") {
                return;
            }
            if let Some((c, _)) = &mut self.child
                && c.try_wait().ok().flatten().is_some()
            {
                panic!(
                    "the Kafka broker exited while starting; its log {}:\n{}",
                    log.display(),
                    tail(&text, 40)
                );
            }
            assert!(
                started.elapsed() < Duration::from_secs(120),
                "the Kafka broker did not start within 120 s; its log {}:\n{}",
                log.display(),
                tail(&text, 40)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Kills the broker with SIGKILL (no clean shutdown) and waits until it is gone.
    pub fn kill(&mut self) {
        if let Some((mut child, mut stdin)) = self.child.take() {
            let _ = stdin.write_all(b"stop\n");
            drop(stdin);
            let _ = child.wait();
        }
    }

    /// Starts the broker again on the same ports and data (after [`kill`](Self::kill)).
    pub fn restart(&mut self) {
        self.kill();
        self.launch();
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
