//! From the outside review of 31dace5 (the store's headroom): each test failed on it. Needs
//! root: mounts small file systems;
//! each test is skipped (saying so) when it cannot mount.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use bytes::Bytes;
use raft_core::{Entry, EntryPayload, Storage, StorageError};
use raft_storage_rocks::{Identity, RocksDb, RocksOptions, HEADROOM_FILE};

fn identity() -> Identity {
    Identity { cluster_id: "headroom-review".into(), node_id: 1 }
}

fn entry(index: u64) -> Entry {
    let mut payload = format!("e{index}:").into_bytes();
    payload.resize(1_000, (index % 251) as u8);
    Entry { term: 1, index, payload: EntryPayload::Command(Bytes::from(payload)) }
}

/// A store in `<dir>/data` with entries 1..=10, opened with the default options.
async fn store_with_ten_entries(dir: &Path) -> (PathBuf, RocksDb, raft_storage_rocks::RocksStorage) {
    let data = dir.join("data");
    let db = RocksDb::open(&data, &identity(), RocksOptions::default()).expect("open");
    let log = db.log(0);
    log.initial_state().await.expect("state");
    log.append(&(1..=10).map(entry).collect::<Vec<_>>()).await.expect("append");
    (data, db, log)
}

/// A file system mounted on a temporary directory, unmounted (and its image removed) on drop.
struct Mounted {
    dir: tempfile::TempDir,
    image: Option<PathBuf>,
}

impl Mounted {
    fn tmpfs(mib: u64) -> Option<Self> {
        let dir = tempfile::tempdir().expect("tempdir");
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(dir.path())
            .status()
            .is_ok_and(|s| s.success());
        ok.then_some(Self { dir, image: None })
    }

    /// An ext4 file system without extents (as an ext3 file system mounted with the ext4
    /// driver): no fallocate (EOPNOTSUPP), as on ZFS before 2.2, NFSv3 and many FUSE file
    /// systems.
    fn ext4_without_extents(mib: u64) -> Option<Self> {
        let image = std::env::temp_dir().join(format!("headroom-review-{}.img", std::process::id()));
        let made = Command::new("truncate")
            .args(["-s", &format!("{mib}M")])
            .arg(&image)
            .status()
            .is_ok_and(|s| s.success())
            && Command::new("mkfs.ext4")
                .args(["-q", "-F", "-O", "^extents,^64bit"])
                .arg(&image)
                .status()
                .is_ok_and(|s| s.success());
        if !made {
            let _ = std::fs::remove_file(&image);
            return None;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let ok = Command::new("mount")
            .args(["-o", "loop"])
            .arg(&image)
            .arg(dir.path())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            let _ = std::fs::remove_file(&image);
            return None;
        }
        Some(Self { dir, image: Some(image) })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
        if let Some(image) = &self.image {
            let _ = std::fs::remove_file(image);
        }
    }
}

fn fill(path: &Path) {
    use std::io::Write;
    let mut file = std::fs::File::create(path).expect("filler");
    let chunk = vec![0x5Au8; 1 << 20];
    while file.write_all(&chunk).is_ok() {}
    let _ = file.sync_all();
}

fn free_mib(path: &Path) -> u64 {
    let s = rustix::fs::statvfs(path).expect("statvfs");
    (s.f_bavail * s.f_frsize) >> 20
}

/// Appends batches from `next` until the store answers `Full`; returns the next index.
async fn append_until_full(log: &impl Storage, mut next: u64) -> u64 {
    for _ in 0..5_000 {
        let batch: Vec<_> = (next..next + 100).map(entry).collect();
        match log.append(&batch).await {
            Ok(()) => next += 100,
            Err(StorageError::Full) => return next,
            Err(e) => panic!("a full disk reported as {e:?}"),
        }
    }
    panic!("the disk never filled up");
}

async fn wait_not_in_use(log: &impl Storage, for_: Duration) -> bool {
    let until = Instant::now() + for_;
    while Instant::now() < until {
        if !log.headroom_in_use() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    !log.headroom_in_use()
}

/// Issue 15: "the node recovers by itself when space returns (no restart)". On a disk where
/// the store's data leaves between one and two headrooms free once the full-disk episode is
/// over, the store never reserves its headroom again (it wants twice its size free), so the
/// node refuses every proposal for ever; a restart (which wants the headroom only once) ends
/// it at once.
#[tokio::test]
async fn after_a_full_disk_the_headroom_is_reserved_again_without_a_restart() {
    let Some(disk) = Mounted::tmpfs(160) else {
        eprintln!("skipped: mounting a tmpfs needs root");
        return;
    };
    let (data, db, log) = store_with_ten_entries(disk.path()).await;
    assert!(!log.headroom_in_use(), "the headroom is reserved at open");
    let free_before = free_mib(disk.path());
    let filler = disk.path().join("filler");
    fill(&filler);
    let next = append_until_full(&log, 11).await;
    assert!(log.release_headroom(), "no headroom released");
    log.append(&[entry(next)]).await.expect("the write in the freed headroom");
    // The episode ends: the filler goes; the disk is as free as before it (less one entry).
    std::fs::remove_file(&filler).expect("remove the filler");
    let free_after = free_mib(disk.path());
    let recovered = wait_not_in_use(&log, Duration::from_secs(5)).await;
    drop(log);
    drop(db);
    // A restart on the very same disk: the headroom is reserved at once.
    let db = RocksDb::open(&data, &identity(), RocksOptions::default()).expect("reopen");
    let restarted_ok = !db.log(0).headroom_in_use();
    drop(db);
    assert!(
        recovered,
        "still refusing proposals 5 s after space returned ({free_after} MiB free with the headroom \
         released; {free_before} MiB were free with it reserved before the episode); a restart \
         reserves it at once: {restarted_ok}"
    );
}

/// A data dir on a file system without fallocate (EOPNOTSUPP) and with plenty of room: the
/// headroom can never be allocated, so the store says it runs on its headroom for ever and
/// the node refuses every proposal (storage_full, 507) from its first start.
#[tokio::test]
async fn a_file_system_without_fallocate_does_not_refuse_proposals_for_ever() {
    let Some(disk) = Mounted::ext4_without_extents(300) else {
        eprintln!("skipped: mounting a loop device needs root and mkfs.ext4");
        return;
    };
    let (_, db, log) = store_with_ten_entries(disk.path()).await;
    let free = free_mib(disk.path());
    let usable = wait_not_in_use(&log, Duration::from_secs(3)).await;
    drop(log);
    drop(db);
    assert!(usable, "the headroom is 'in use' for ever with {free} MiB free (no fallocate)");
}

/// A node killed (or restarted) while its disk is full: the reserve sits in its data dir, yet
/// the store cannot open (RocksDB needs room to open), and nothing releases the reserve
/// outside the driver's write path.
#[tokio::test]
async fn a_store_opens_on_a_full_disk_while_its_headroom_is_reserved() {
    let Some(disk) = Mounted::tmpfs(128) else {
        eprintln!("skipped: mounting a tmpfs needs root");
        return;
    };
    let data = disk.path().join("data");
    {
        let db = RocksDb::open(&data, &identity(), RocksOptions::default()).expect("open");
        let log = db.log(0);
        log.initial_state().await.expect("state");
        log.append(&(1..=2_000).map(entry).collect::<Vec<_>>()).await.expect("append");
        assert!(!log.headroom_in_use());
    }
    assert!(data.join(HEADROOM_FILE).exists(), "the reserve is in the data dir");
    let filler = disk.path().join("filler");
    fill(&filler);
    let opened = RocksDb::open(&data, &identity(), RocksOptions::default());
    let error = opened.as_ref().err().map(ToString::to_string);
    drop(opened);
    // What releasing the reserve would have allowed:
    let _ = std::fs::remove_file(data.join(HEADROOM_FILE));
    let without_reserve = RocksDb::open(&data, &identity(), RocksOptions::default()).map(drop).is_ok();
    let _ = std::fs::remove_file(&filler);
    assert!(
        error.is_none(),
        "the store cannot open on the full disk with 64 MiB reserved in its own dir: {error:?}; \
         with the reserve removed by hand it opens: {without_reserve}"
    );
}

/// `headroom_in_use` runs on every proposal (and status): it reserved the headroom again
/// (allocating and syncing 64 MiB) on the calling (async) thread; now on a thread of its own.
#[tokio::test]
async fn reserving_the_headroom_again_is_cheap_on_the_proposal_path() {
    let Some(disk) = Mounted::tmpfs(512) else {
        eprintln!("skipped: mounting a tmpfs needs root");
        return;
    };
    let data = disk.path().join("data");
    let db = RocksDb::open(&data, &identity(), RocksOptions::default()).expect("open");
    let log = db.log(0);
    log.initial_state().await.expect("state");
    assert!(log.release_headroom());
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let started = Instant::now();
    let in_use = log.headroom_in_use();
    let took = started.elapsed();
    eprintln!("headroom_in_use() starting to reserve 64 MiB again took {took:?} (in use: {in_use})");
    assert!(took < Duration::from_millis(5), "one proposal's check took {took:?}");
    // The reservation runs on its own thread; the refusal ends once it is done.
    let deadline = Instant::now() + Duration::from_secs(10);
    while log.headroom_in_use() {
        assert!(Instant::now() < deadline, "the headroom was not reserved again");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(log);
    drop(db);
}
