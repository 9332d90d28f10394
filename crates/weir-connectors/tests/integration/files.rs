//! The `files` source over hostile names, continuous discovery with bounded state (local and on
//! SeaweedFS), object references, and restores at another parallelism.

#[path = "../../../weir-testkit/src/s3.rs"]
#[allow(dead_code)]
mod s3;

use arrow::array::{Array, BinaryArray, StringArray};
use futures::{StreamExt, TryStreamExt};
use object_store::{ObjectStore, ObjectStoreExt};
use std::collections::BTreeSet;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::{Duration, Instant};
use weir_connectors::FilesSourceSpec;
use weir_runtime::{ErrorPolicy, OperatorContext, Source, SourceEvent, StateSnapshot, TaskInfo};
use weir_types::{Barrier, BarrierKind};

fn info(subtask: u32, parallelism: u32) -> TaskInfo {
    TaskInfo {
        node: "files".into(),
        subtask,
        parallelism,
        max_parallelism: 128,
    }
}

struct Running {
    src: Box<dyn Source>,
    ctx: OperatorContext,
}

async fn start(
    spec: &FilesSourceSpec,
    subtask: u32,
    p: u32,
    state: Option<StateSnapshot>,
) -> Running {
    let schema = spec.schema().expect("schema");
    let mut src = spec.create(&info(subtask, p), schema).expect("create");
    let mut ctx = OperatorContext::new(
        info(subtask, p),
        ErrorPolicy::DeadLetter,
        Default::default(),
        tokio::runtime::Handle::current(),
    )
    .with_restored_state(state, true);
    src.open(&mut ctx).await.expect("open");
    Running { src, ctx }
}

/// Emits until `want` more rows came out, or (for `want == 0`) until nothing comes for a while;
/// returns (uri, bytes) of each row.
async fn drain(r: &mut Running, want: usize) -> Vec<(String, Option<Vec<u8>>)> {
    let mut out = Vec::new();
    let started = Instant::now();
    let mut quiet = Instant::now();
    loop {
        if want > 0 && out.len() >= want {
            return out;
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "drain stalled at {}",
            out.len()
        );
        match r.src.next(&mut r.ctx).await.expect("next") {
            SourceEvent::Batch(b) | SourceEvent::SplitBatch { batch: b, .. } => {
                quiet = Instant::now();
                let uri = b
                    .column(0)
                    .as_any()
                    .downcast_ref::<StringArray>()
                    .expect("uri");
                let bytes = b.column(3).as_any().downcast_ref::<BinaryArray>();
                for i in 0..b.num_rows() {
                    out.push((uri.value(i).to_string(), bytes.map(|a| a.value(i).to_vec())));
                }
            }
            SourceEvent::Finished => return out,
            SourceEvent::SplitStart(_) | SourceEvent::SplitEnd(_) => {}
            SourceEvent::Idle(d) => {
                if want == 0 && quiet.elapsed() > Duration::from_millis(400) {
                    return out;
                }
                tokio::time::sleep(d.max(Duration::from_millis(2))).await;
            }
        }
    }
}

async fn snapshot(r: &mut Running, id: u64) -> StateSnapshot {
    let b = Barrier {
        checkpoint_id: id,
        kind: BarrierKind::Aligned,
        triggered_at_ms: 0,
    };
    r.src.snapshot(&b, &mut r.ctx).await.expect("snapshot")
}

/// Every union entry of `snaps`, as a restore hands them to every new instance.
fn union_of(snaps: &[StateSnapshot]) -> StateSnapshot {
    let mut all = StateSnapshot::new();
    for s in snaps {
        for entry in s.unions::<serde_json::Value>() {
            let (k, v) = entry.expect("union entry");
            all.push_union(&k, v.to_vec()).expect("push");
        }
    }
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_names_get_lossless_uris_and_hidden_ones_are_skipped() {
    let dir = tempfile::tempdir().expect("tmp");
    let root = std::fs::canonicalize(dir.path()).expect("canon");
    let names: Vec<&[u8]> = vec![
        b"a b.jpg",
        b"a%20b.jpg",
        b"x#y.jpg",
        b"q?.jpg",
        b"slash%2Fname.jpg",
        b"tab\tname.jpg",
        b"new\nline.jpg",
        b"\xff\xfe.jpg",
        b"plain.jpg",
    ];
    for (i, n) in names.iter().enumerate() {
        std::fs::write(
            root.join(std::ffi::OsStr::from_bytes(n)),
            format!("file {i}"),
        )
        .expect("write");
    }
    for hidden in [".hidden.jpg", "x.jpg.inprogress"] {
        std::fs::write(root.join(hidden), "no").expect("write");
    }
    std::fs::create_dir(root.join(".git")).expect("mkdir");
    std::fs::write(root.join(".git/inside.jpg"), "no").expect("write");
    let spec = FilesSourceSpec::new(root.display().to_string());
    let mut r = start(&spec, 0, 1, None).await;
    let rows = drain(&mut r, 0).await;
    assert_eq!(rows.len(), names.len(), "{rows:?}");
    let mut seen = BTreeSet::new();
    for (uri, bytes) in rows {
        // The URI decodes back to the very file, whose bytes were emitted.
        let path = weir_store::file_path(&url::Url::parse(&uri).expect("url")).expect("path");
        assert_eq!(std::fs::read(&path).ok(), bytes, "{uri}");
        assert!(!uri.contains(['\t', '\n', ' ', '#', '?']), "{uri}");
        seen.insert(path.file_name().expect("name").as_bytes().to_vec());
    }
    let want: BTreeSet<Vec<u8>> = names.iter().map(|n| n.to_vec()).collect();
    assert_eq!(seen, want);
    assert_eq!(r.ctx.take_dead_letters().len(), 0);
}

fn write_files(dir: &Path, range: std::ops::Range<usize>) {
    for i in range {
        std::fs::write(dir.join(format!("f{i:06}.bin")), format!("{i}")).expect("write");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn continuous_state_stays_flat_and_restores_at_another_parallelism() {
    let dir = tempfile::tempdir().expect("tmp");
    let root = dir.path();
    let mut spec = FilesSourceSpec::new(root.display().to_string());
    spec.continuous = true;
    spec.poll_interval = Duration::from_millis(10);
    spec.lookback = 200;
    let mut r = start(&spec, 0, 1, None).await;
    let mut sizes = Vec::new();
    let mut emitted: Vec<String> = Vec::new();
    for round in 0..3 {
        write_files(root, round * 1000..(round + 1) * 1000);
        emitted.extend(drain(&mut r, 1000).await.into_iter().map(|(u, _)| u));
        sizes.push(snapshot(&mut r, round as u64 + 1).await.encode().len());
    }
    // Flat: the state after 3000 files is the size after 1000 (same key lengths).
    assert!(
        sizes.iter().all(|s| *s <= sizes[0] + 64) && sizes[0] < 200 * 40,
        "state sizes {sizes:?}"
    );
    // A late file above the position (within the lookback) is read; one below it is not.
    std::fs::write(root.join("f002900x.bin"), "late").expect("write");
    std::fs::write(root.join("a-too-late.bin"), "late").expect("write");
    let late = drain(&mut r, 0).await;
    assert_eq!(late.len(), 1, "{late:?}");
    assert!(late[0].0.ends_with("f002900x.bin"));
    emitted.push(late[0].0.clone());

    // More files; stop half-way through them and take a checkpoint.
    write_files(root, 3000..4000);
    emitted.extend(drain(&mut r, 500).await.into_iter().map(|(u, _)| u));
    let state = snapshot(&mut r, 9).await;
    drop(r);
    write_files(root, 4000..4500);
    // Restore at parallelism 2: together the new subtasks emit exactly the rest.
    let mut rest = Vec::new();
    for sub in 0..2 {
        let mut n = start(&spec, sub, 2, Some(union_of(std::slice::from_ref(&state)))).await;
        rest.extend(drain(&mut n, 0).await.into_iter().map(|(u, _)| u));
    }
    let mut all: Vec<String> = emitted.iter().chain(rest.iter()).cloned().collect();
    all.sort();
    let before = all.len();
    all.dedup();
    assert_eq!(before, all.len(), "duplicates after the restore");
    assert_eq!(
        all.len(),
        4501,
        "every file once (4500 and the late one above the position)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_prefix_discovered_continuously_with_flat_state_over_10000_objects() {
    let env = s3::s3_env();
    let prefix = s3::unique_prefix("files-continuous");
    let opts = weir_store::StorageOptions::from_pairs(env.options());
    let url = format!("s3://{}/{prefix}/", env.bucket);
    let weir_store::Location::Store(loc) = weir_store::resolve(&url, &opts).expect("resolve")
    else {
        panic!("not a store");
    };
    let put = |from: usize, to: usize| {
        let store = loc.store.clone();
        let base = loc.prefix.clone();
        async move {
            futures::future::join_all((from..to).map(|i| {
                let store = store.clone();
                let path = base.clone().join(format!("obj-{i:06}.txt"));
                async move { store.put(&path, format!("{i}").into()).await.expect("put") }
            }))
            .await;
        }
    };
    let mut spec = FilesSourceSpec::new(url.clone());
    spec.storage = opts.clone();
    spec.continuous = true;
    spec.poll_interval = Duration::from_millis(20);
    spec.batch_size = 256;
    // References only: the state is the point here, not 10,000 GETs.
    spec.include_bytes = false;
    let mut r = start(&spec, 0, 1, None).await;
    let mut sizes = Vec::new();
    let mut seen = BTreeSet::new();
    let t = Instant::now();
    for round in 0..5 {
        for chunk in 0..8 {
            let from = round * 2000 + chunk * 250;
            put(from, from + 250).await;
        }
        for (uri, bytes) in drain(&mut r, 2000).await {
            assert!(seen.insert(uri.clone()), "{uri} twice");
            assert!(uri.starts_with(&url), "{uri}");
            assert_eq!(bytes, None);
        }
        sizes.push(snapshot(&mut r, round as u64 + 1).await.encode().len());
    }
    eprintln!("10000 objects put and read in {:?}", t.elapsed());
    assert_eq!(seen.len(), 10_000);
    assert!(
        sizes.iter().all(|s| *s <= sizes[0] + 128),
        "state grew with the objects: {sizes:?}"
    );
    // Clean up (best effort, the server is shared).
    let listed = loc
        .store
        .list(Some(&loc.prefix))
        .map_ok(|m| m.location)
        .boxed();
    let _ = loc.store.delete_stream(listed).collect::<Vec<_>>().await;
}
