//! A node whose disk fills up: writes get 507 `no_space`, `/metrics` says
//! `raft_storage_full 1`, and once space returns the node takes writes again by itself, with
//! every acknowledged write still there. Needs root (mounts a small tmpfs); skipped, saying
//! so, without it.

#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::TestCluster;
use raft_node::config::StorageKind;

/// A tmpfs mounted on a temporary directory, unmounted on drop.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(mib: u64) -> Option<Self> {
        let dir = tempfile::tempdir().unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(dir.path())
            .status()
            .is_ok_and(|s| s.success());
        ok.then_some(Self { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(self.dir.path()).status();
    }
}

/// Writes 1 MiB pieces to `path` until the file system is full.
fn fill(path: &Path) {
    let mut file = std::fs::File::create(path).unwrap();
    let piece = vec![0xA5u8; 1 << 20];
    while file.write_all(&piece).and_then(|()| file.sync_data()).is_ok() {}
}

async fn gauge(cluster: &TestCluster, name: &str) -> i64 {
    let url = format!("http://{}/metrics", cluster.endpoint(1));
    let text = common::plain_http().build().unwrap().get(url).send().await.unwrap().text().await.unwrap();
    text.lines()
        .find(|l| l.starts_with(&format!("{name} ")))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in:\n{text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_writes_says_so_and_recovers_by_itself_when_space_returns() {
    let Some(disk) = Tmpfs::mount(192) else {
        eprintln!("skipped: mounting a tmpfs needs root");
        return;
    };
    let data: PathBuf = disk.path().join("node");
    let cluster = TestCluster::start_with(1, StorageKind::Rocks, |c| c.data_dir = data.clone()).await;
    let client = cluster.client();
    let value = "v".repeat(32 * 1024);
    client.put("before", &value).await.unwrap();
    assert_eq!(gauge(&cluster, "raft_storage_full").await, 0);

    let filler = disk.path().join("filler");
    fill(&filler);
    // Writes go on into what RocksDB holds already and the released headroom, then are refused.
    let mut acknowledged = Vec::new();
    let mut refused = None;
    for i in 0..4_000 {
        match client.put(&format!("k{i}"), &value).await {
            Ok(_) => acknowledged.push(i),
            Err(e) => {
                refused = Some(e.to_string());
                break;
            }
        }
    }
    let refused = refused.expect("a write was refused on the full disk");
    assert!(refused.contains("no_space") || refused.contains("507"), "{refused}");
    assert_eq!(gauge(&cluster, "raft_storage_full").await, 1);

    std::fs::remove_file(&filler).unwrap();
    let started = Instant::now();
    loop {
        if gauge(&cluster, "raft_storage_full").await == 0 && client.put("after", "1").await.is_ok() {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "no writes 30 s after space returned");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(client.get("before", None).await.unwrap().map(|kv| kv.value.len()), Some(value.len()));
    for i in acknowledged {
        let got = client.get(&format!("k{i}"), None).await.unwrap();
        assert_eq!(got.map(|kv| kv.value.len()), Some(value.len()), "acknowledged write k{i} is gone");
    }
    cluster.shutdown().await;
}
