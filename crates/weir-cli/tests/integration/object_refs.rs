//! `files` with `include_bytes: false` emits `weir.object_ref` values that `fetch` materialises
//! lazily: a pipeline over references holds the same memory bound as the byte pipeline. Both run
//! as the real `weir` binary over the same photos (every installed photo, three times), and the
//! peak resident memory of each process (`VmHWM`) is compared.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;
use weir_testkit::{read_rows, setup};

fn spec(d: &Path, name: &str, refs: bool) -> PathBuf {
    let (source, fetch) = if refs {
        (
            "include_bytes: false".to_string(),
            format!(
                "  - op: fetch\n    column: ref\n    roots: [{}/photos]\n    max_batch_bytes: 16MiB\n",
                d.display()
            ),
        )
    } else {
        ("include_bytes: true".to_string(), String::new())
    };
    let text = format!(
        "name: {name}
steps:
  - name: photos
    source: files
    url: {d}/photos
    {source}
    max_batch_bytes: 16MiB
{fetch}  - op: decode_image
    mode: RGB
    max_batch_bytes: 16MiB
  - op: resize
    shorter_side: 32
  - op: select
    columns: [uri]
  - name: out
    sink: parquet
    path: {d}/{name}
",
        d = d.display()
    );
    let p = d.join(format!("{name}.yaml"));
    std::fs::write(&p, text).expect("spec");
    p
}

/// Runs the spec; returns the peak resident memory of the process in bytes (`VmHWM`, polled until
/// it exits; the peak only grows, so the last reading is the peak up to a few ms before the end).
fn peak_rss(spec: &Path) -> u64 {
    let mut child = Command::new(env!("CARGO_BIN_EXE_weir"))
        .arg("run")
        .arg(spec)
        .args(["--progress", "off", "--http", "off", "--threads", "2"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let status = format!("/proc/{}/status", child.id());
    let mut peak = 0;
    while child.try_wait().expect("wait").is_none() {
        if let Ok(text) = std::fs::read_to_string(&status)
            && let Some(kb) = text
                .lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        {
            peak = peak.max(kb * 1024);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let out = child.wait_with_output().expect("output");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(peak > 0, "no VmHWM reading");
    peak
}

#[test]
fn a_pipeline_over_object_refs_holds_the_memory_bound_of_the_byte_pipeline() {
    let dir = tempfile::tempdir().expect("tmp");
    let d = dir.path();
    std::fs::create_dir_all(d.join("photos")).expect("mkdir");
    let mut n = 0;
    for e in std::fs::read_dir(setup::data_dir().join("photos"))
        .expect("photos")
        .flatten()
    {
        let name = e.file_name().to_string_lossy().into_owned();
        if !(name.ends_with(".jpg") || name.ends_with(".png")) {
            continue;
        }
        for copy in ["a", "b", "c"] {
            std::fs::copy(e.path(), d.join("photos").join(format!("{copy}-{name}"))).expect("copy");
            n += 1;
        }
    }
    assert!(n > 100, "photos: {n}");
    let bytes = peak_rss(&spec(d, "bytes", false));
    let refs = peak_rss(&spec(d, "refs", true));
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    eprintln!(
        "{n} photos: peak RSS {:.0} MiB with bytes, {:.0} MiB with references",
        mib(bytes),
        mib(refs)
    );
    // The same rows come out.
    let want = read_rows(&d.join("bytes")).expect("rows");
    assert_eq!(want.len(), n);
    assert_eq!(read_rows(&d.join("refs")).expect("rows"), want);
    // The same bound: references fetched lazily do not hold more than bytes read up front (a
    // quarter for noise between two processes, plus 48 MiB for fetch's own buffers).
    assert!(
        refs <= bytes + bytes / 4 + 48 * 1024 * 1024,
        "references peaked at {:.0} MiB, bytes at {:.0} MiB",
        mib(refs),
        mib(bytes)
    );
}
