//! A store on a file system that fills up: its headroom lets the write that hit the full disk
//! through, and is reserved again once space returns. Needs root (it mounts a small tmpfs);
//! skipped otherwise, saying so.

use std::path::Path;
use std::process::Command;

use raft_core::{Storage, StorageError};

use super::expected_entry;
use crate::{RocksDb, RocksOptions};

/// A tmpfs of `mib` MiB mounted on a temporary directory, unmounted when dropped.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(mib: u64) -> Option<Self> {
        let dir = tempfile::tempdir().expect("tempdir");
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

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

/// Fills the file system with one file until it is full.
fn fill(path: &Path) {
    use std::io::Write;
    let mut file = std::fs::File::create(path).expect("filler");
    let chunk = vec![0x5Au8; 1 << 20];
    while file.write_all(&chunk).is_ok() {}
    let _ = file.sync_all();
}

#[tokio::test]
async fn a_full_disk_lets_the_write_through_in_the_headroom_and_reserves_it_again() {
    let Some(disk) = SmallDisk::mount(128) else {
        eprintln!("skipped: mounting a tmpfs needs root");
        return;
    };
    let data = disk.path().join("data");
    // More than RocksDB preallocates for a new write-ahead log (about 1.1 memtables).
    let options = RocksOptions { headroom_bytes: 32 << 20, ..RocksOptions::default() };
    let db = RocksDb::open(&data, &super::identity(), options).expect("open");
    let log = db.log(0);
    log.initial_state().await.expect("state");
    log.append(&(1..=10).map(expected_entry).collect::<Vec<_>>()).await.expect("append");
    assert!(!log.headroom_in_use());
    let filler = disk.path().join("filler");
    fill(&filler);
    // The disk is full: a write fails, as it would without headroom.
    let mut next = 11;
    let mut refused = false;
    // RocksDB preallocates its write-ahead log: it takes a while to reach the end.
    for _ in 0..2_000 {
        let batch: Vec<_> = (next..next + 100).map(expected_entry).collect();
        match log.append(&batch).await {
            Ok(()) => next += 100,
            Err(StorageError::Full) => {
                refused = true;
                break;
            }
            Err(e) => panic!("a full disk reported as {e:?}"),
        }
    }
    assert!(refused, "the disk never filled up");
    // The driver then frees the headroom and tries again: the write goes through.
    assert!(log.release_headroom(), "no headroom released");
    assert!(log.headroom_in_use());
    log.append(&[expected_entry(next)]).await.expect("the write in the freed headroom");
    // Space returns: the headroom is reserved again (looked at once a second).
    std::fs::remove_file(&filler).expect("remove the filler");
    let reserved_again = async {
        while log.headroom_in_use() {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(10), reserved_again)
        .await
        .expect("the headroom was not reserved again");
    log.append(&[expected_entry(next + 1)]).await.expect("writes go on");
    drop(log);
    drop(db);
}
