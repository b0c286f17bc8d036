//! Snapshot files: where they live, what survives a reopen, what a damaged or half-written
//! file does, and stores written before snapshot files.

use std::io::Write;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use raft_core::{LogId, Membership, Snapshot, SnapshotData, SnapshotMeta, Storage, StorageError};

use super::{expected_entry, open};
use crate::codec::{self, meta_key};
use crate::db::{Cf, Op};
use crate::snapshot_file::SNAPSHOT_DIR;

fn snapshot(index: u64, chunks: &[&'static [u8]]) -> Snapshot {
    let meta = SnapshotMeta { last_log_id: LogId::new(1, index), membership: Membership::with_voters([1]) };
    Snapshot { meta, data: SnapshotData::from_chunks(chunks.iter().map(|c| Bytes::from_static(c))) }
}

fn files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir.join(SNAPSHOT_DIR))
        .map(|d| d.flatten().filter_map(|e| e.file_name().to_str().map(str::to_owned)).collect())
        .unwrap_or_default();
    names.sort();
    names
}

fn only_file(dir: &Path) -> PathBuf {
    let names = files(dir);
    assert_eq!(names.len(), 1, "one snapshot file: {names:?}");
    dir.join(SNAPSHOT_DIR).join(&names[0])
}

async fn store_with_snapshot(dir: &Path) {
    let log = open(dir).log(0);
    log.append(&(1..=20).map(expected_entry).collect::<Vec<_>>()).await.expect("append");
    log.save_snapshot(snapshot(10, &[b"first ", b"snapshot"])).await.expect("save");
}

#[tokio::test]
async fn a_snapshot_is_a_file_that_survives_a_reopen_and_replaces_the_older_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    store_with_snapshot(dir.path()).await;
    assert_eq!(files(dir.path()), vec!["g0-10-1.snap".to_owned()]);
    let log = open(dir.path()).log(0);
    let loaded = log.load_snapshot().await.expect("load").expect("a snapshot");
    assert_eq!(loaded, snapshot(10, &[b"first snapshot"]), "the same bytes");
    log.save_snapshot(snapshot(15, &[b"second"])).await.expect("save");
    assert_eq!(files(dir.path()), vec!["g0-15-1.snap".to_owned()], "the older file is removed");
    drop(log);
    let log = open(dir.path()).log(0);
    assert_eq!(log.load_snapshot().await.expect("load"), Some(snapshot(15, &[b"second"])));
    let state = log.initial_state().await.expect("state");
    assert_eq!((state.first_index, state.last_index), (1, 20), "the log holds the snapshot's entry: kept");
}

#[tokio::test]
async fn a_damaged_snapshot_file_is_refused_never_taken_as_valid() {
    type Damage = fn(&Path);
    let damages: [(&str, Damage); 5] = [
        ("cut short by one byte", |f| {
            let len = std::fs::metadata(f).expect("meta").len();
            std::fs::OpenOptions::new().write(true).open(f).expect("open").set_len(len - 1).expect("cut");
        }),
        ("cut after the first frame", |f| {
            std::fs::OpenOptions::new().write(true).open(f).expect("open").set_len(8 + 8 + 6).expect("cut");
        }),
        ("one flipped bit in the data", |f| {
            let mut bytes = std::fs::read(f).expect("read");
            bytes[8 + 8 + 2] ^= 0x10;
            std::fs::write(f, bytes).expect("write");
        }),
        ("bytes after the trailer", |f| {
            let mut bytes = std::fs::read(f).expect("read");
            bytes.push(0);
            std::fs::write(f, bytes).expect("write");
        }),
        ("missing", |f| std::fs::remove_file(f).expect("remove")),
    ];
    for (what, damage) in damages {
        let dir = tempfile::tempdir().expect("tempdir");
        store_with_snapshot(dir.path()).await;
        // Damaged while the store is open: loading it fails.
        let db = crate::RocksDb::open(dir.path(), &super::identity(), crate::RocksOptions::default())
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        damage(&only_file(dir.path()).clone());
        let loaded = db.log(0).load_snapshot().await;
        assert!(matches!(loaded, Err(StorageError::Corrupt(_))), "{what}: {loaded:?}");
        drop(db);
        // And found at open (the node then repairs its dir from the cluster).
        match crate::RocksDb::open(dir.path(), &super::identity(), crate::RocksOptions::default()) {
            Err(crate::OpenError::Corrupt(m)) => assert!(m.contains("snapshot file"), "{what}: {m}"),
            Err(e) => panic!("{what}: {e}"),
            Ok(_) => panic!("{what}: opened"),
        }
    }
}

#[tokio::test]
async fn a_crash_before_the_database_records_a_new_file_keeps_the_old_snapshot() {
    let dir = tempfile::tempdir().expect("tempdir");
    store_with_snapshot(dir.path()).await;
    let snapshots = dir.path().join(SNAPSHOT_DIR);
    // What a crash leaves: a complete file the database never recorded, and a half-written
    // temporary one.
    std::fs::copy(only_file(dir.path()), snapshots.join("g0-18-1.snap")).expect("copy");
    std::fs::write(snapshots.join(".tmp-g0-19-1.snap"), b"RAFTSNP1\x05").expect("write");
    let log = open(dir.path()).log(0);
    let loaded = log.load_snapshot().await.expect("load").expect("a snapshot");
    assert_eq!(loaded.meta.last_log_id, LogId::new(1, 10), "the recorded snapshot is in force");
    log.save_snapshot(snapshot(12, &[b"third"])).await.expect("save");
    assert_eq!(files(dir.path()), vec!["g0-12-1.snap".to_owned()], "orphans are removed by the next save");
}

#[tokio::test]
async fn a_store_with_its_snapshot_in_the_database_reads_it_and_moves_it_to_a_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = open(dir.path()).log(0);
    log.append(&(1..=20).map(expected_entry).collect::<Vec<_>>()).await.expect("append");
    // What a store written before snapshot files holds.
    let old = snapshot(10, &[b"in the database"]);
    let bounds = log.with_db(|db| log.bounds(db)).expect("bounds");
    let ops = vec![
        Op::Put(Cf::Meta, meta_key(0, "snapshot_meta"), codec::encode(&old.meta).expect("encode")),
        Op::Put(
            Cf::Meta,
            meta_key(0, "snapshot_data"),
            codec::encode(&(old.meta.last_log_id, old.data.to_bytes())).expect("encode"),
        ),
    ];
    log.write(ops, crate::db::Bounds { snapshot: old.meta.last_log_id, ..bounds }, None, None)
        .await
        .expect("write");
    drop(log);
    let log = open(dir.path()).log(0);
    assert_eq!(log.load_snapshot().await.expect("load"), Some(old.clone()));
    assert!(files(dir.path()).is_empty());
    // A leader restarted on such a store sends it in parts like any other: moved to a file
    // once (never loaded whole for each part), the log untouched.
    assert_eq!(
        log.snapshot_meta().await.expect("meta").map(|(m, len)| (m.last_log_id, len)),
        Some((LogId::new(1, 10), 15))
    );
    assert_eq!(files(dir.path()), vec!["g0-10-1.snap".to_owned()], "moved to a file");
    let legacy_value =
        log.with_db(|db| super::super::storage::RocksStorage::raw_meta(db, &meta_key(0, "snapshot_data")));
    assert_eq!(legacy_value.expect("read"), None, "the database value is gone");
    assert_eq!(log.initial_state().await.map(|s| (s.first_index, s.last_index)), Ok((1, 20)));
    let part = log.read_snapshot_chunk(LogId::new(1, 10), 3, 4).await.expect("read");
    assert_eq!(part.as_deref(), Some(&b"the "[..]));
    assert_eq!(log.read_snapshot_chunk(LogId::new(1, 11), 0, 4).await.expect("read"), None);
    assert_eq!(log.load_snapshot().await.expect("load"), Some(old.clone()));
    log.save_snapshot(snapshot(14, &[b"a file"])).await.expect("save");
    let legacy =
        log.with_db(|db| super::super::storage::RocksStorage::raw_meta(db, &meta_key(0, "snapshot_data")));
    assert_eq!(legacy.expect("read"), None, "the old value is deleted with the batch that records the file");
    assert_eq!(log.load_snapshot().await.expect("load"), Some(snapshot(14, &[b"a file"])));
}

#[tokio::test]
async fn parts_are_read_from_the_file_checked_and_a_replaced_snapshot_being_sent_stays_readable() {
    let dir = tempfile::tempdir().expect("tempdir");
    store_with_snapshot(dir.path()).await;
    let log = open(dir.path()).log(0);
    let first = LogId::new(1, 10);
    let part = log.read_snapshot_chunk(first, 2, 100).await.expect("read").expect("held");
    assert_eq!(&part[..], b"rst ", "parts end at the end of a stored chunk");
    log.save_snapshot(snapshot(15, &[b"second"])).await.expect("save");
    assert_eq!(files(dir.path()), vec!["g0-15-1.snap".to_owned()], "the old file is unlinked");
    let part = log.read_snapshot_chunk(first, 6, 100).await.expect("read").expect("still open");
    assert_eq!(&part[..], b"snapshot", "a transfer of the replaced snapshot finishes");
    // A flipped bit in the current file's data is caught when the part is read.
    let file = only_file(dir.path());
    let mut bytes = std::fs::read(&file).expect("read");
    bytes[8 + 8 + 1] ^= 0x01;
    std::fs::write(&file, bytes).expect("write");
    let damaged = log.read_snapshot_chunk(LogId::new(1, 15), 0, 100).await;
    assert!(matches!(damaged, Err(StorageError::Corrupt(_))), "{damaged:?}");
}

#[tokio::test]
async fn files_left_by_interrupted_writes_are_removed_when_the_store_opens() {
    let dir = tempfile::tempdir().expect("tempdir");
    store_with_snapshot(dir.path()).await;
    let snapshots = dir.path().join(SNAPSHOT_DIR);
    // A crash during a write (a temporary file), one after a rename but before the database
    // recorded the file (an unreferenced file), of this log and of another; and a stranger.
    for name in [".tmp-g0-30-2.snap", "g0-25-2.snap", ".tmp-g7-3-1.snap", "g7-3-1.snap", "notes.txt"] {
        std::fs::write(snapshots.join(name), b"left over").expect("write");
    }
    let log = open(dir.path()).log(0);
    assert_eq!(files(dir.path()), vec!["g0-10-1.snap".to_owned(), "notes.txt".to_owned()]);
    assert_eq!(log.load_snapshot().await.expect("load"), Some(snapshot(10, &[b"first snapshot"])));
}

/// The name of log 0's file of a received snapshot ending at 20 (its nonce varies).
fn received_file(dir: &Path) -> PathBuf {
    let names = files(dir);
    let name = names.iter().find(|n| n.starts_with(".tmp-recv-n") && n.ends_with("-g0-20-2.snap"));
    dir.join(SNAPSHOT_DIR).join(name.unwrap_or_else(|| panic!("a received file among {names:?}")))
}

#[tokio::test]
async fn a_received_snapshot_is_written_to_a_file_as_its_parts_come_and_a_restart_resumes_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let meta = SnapshotMeta { last_log_id: LogId::new(2, 20), membership: Membership::with_voters([1]) };
    let big = 3u64 << 20;
    {
        let log = open(dir.path()).log(0);
        log.stage_snapshot_part(3, &meta, 0, Bytes::from_static(b"first part ")).await.expect("stage");
        assert_eq!(
            files(dir.path()).len(),
            2,
            "the parts go to a file, beside its record: {:?}",
            files(dir.path())
        );
        let before = std::fs::metadata(received_file(dir.path())).expect("stat");
        log.stage_snapshot_part(3, &meta, 11, Bytes::from(vec![7u8; big as usize])).await.expect("stage");
        let after = std::fs::metadata(received_file(dir.path())).expect("stat");
        assert!(
            after.len() >= before.len() + big,
            "written as it comes: {} -> {}",
            before.len(),
            after.len()
        );
        // The process dies here, with half a frame written after the last whole one.
    }
    let mut torn = std::fs::OpenOptions::new().append(true).open(received_file(dir.path())).expect("open");
    torn.write_all(&[5, 0, 0, 0, 1, 2, 3, 4, 9]).expect("a torn frame");
    drop(torn);
    let log = open(dir.path()).log(0);
    let staged = log.initial_state().await.expect("initial state").staged;
    assert_eq!(
        staged,
        Some(raft_core::StagedSnapshot { term: 3, meta: meta.clone(), len: 11 + big }),
        "the reception resumes after the last whole part (the torn one is cut off)"
    );
    assert_eq!(log.load_snapshot().await.expect("load"), None, "staged parts are not a snapshot");
    let other_leader = log.stage_snapshot_part(4, &meta, 11 + big, Bytes::from_static(b"x")).await;
    assert!(matches!(other_leader, Err(StorageError::NotStaged { .. })), "{other_leader:?}");
    log.stage_snapshot_part(3, &meta, 11 + big, Bytes::from_static(b" last part")).await.expect("resumed");
    log.save_staged_snapshot(&meta, 11 + big + 10).await.expect("save");
    let loaded = log.load_snapshot().await.expect("load").expect("a snapshot");
    let mut expected = b"first part ".to_vec();
    expected.extend(std::iter::repeat_n(7u8, big as usize));
    expected.extend_from_slice(b" last part");
    assert!(loaded.data.to_bytes() == expected, "the resumed snapshot is whole and in order");
    assert_eq!(files(dir.path()), vec!["g0-20-2.snap".to_owned()], "no staging left after the save");
    drop(log);
    // A damaged record: the reception starts over, nothing of it is left.
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let log = open(dir.path()).log(0);
        log.stage_snapshot_part(3, &meta, 0, Bytes::from_static(b"first part ")).await.expect("stage");
    }
    let record = dir.path().join(SNAPSHOT_DIR).join(".tmp-recv-g0.stage");
    let mut bytes = std::fs::read(&record).expect("the record");
    bytes[0] ^= 0xFF;
    std::fs::write(&record, bytes).expect("damage it");
    let log = open(dir.path()).log(0);
    assert_eq!(log.initial_state().await.expect("initial state").staged, None);
    assert!(files(dir.path()).is_empty(), "nothing left of it: {:?}", files(dir.path()));
    let more = log.stage_snapshot_part(3, &meta, 11, Bytes::from_static(b"x")).await;
    assert!(matches!(more, Err(StorageError::NotStaged { staged: 0, .. })), "{more:?}");
    // Received again, whole: a checked file like any snapshot.
    log.stage_snapshot_part(3, &meta, 0, Bytes::from_static(b"first part ")).await.expect("stage");
    log.stage_snapshot_part(3, &meta, 11, Bytes::from_static(b"second part")).await.expect("stage");
    log.save_staged_snapshot(&meta, 22).await.expect("save");
    assert_eq!(files(dir.path()), vec!["g0-20-2.snap".to_owned()]);
    drop(log);
    let log = open(dir.path()).log(0);
    let loaded = log.load_snapshot().await.expect("load").expect("a snapshot");
    assert_eq!(
        (loaded.meta, loaded.data.to_bytes()),
        (meta.clone(), Bytes::from_static(b"first part second part"))
    );
    assert_eq!(log.snapshot_meta().await.expect("meta").map(|(_, len)| len), Some(22));
}
