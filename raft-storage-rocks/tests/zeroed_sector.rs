//! A zeroed sector inside synced WAL data (a device that returns zeros for a lost write): the
//! outside review of the recycled WAL suspected that RocksDB's reader skips the rest of a
//! 32 KiB block whose record header reads as zeros, and goes on with the next block, leaving
//! a stretch of acknowledged writes out with nothing said. Whatever RocksDB does, the store
//! must not open silently on less than it acknowledged: it reports the loss, or refuses.

mod common;

use raft_core::{Entry, EntryPayload, HardState, Storage};
use raft_storage_rocks::{Identity, RocksDb, RocksOptions};

const ENTRIES: u64 = 300;

fn open(dir: &std::path::Path) -> Result<RocksDb, raft_storage_rocks::OpenError> {
    let identity = Identity { cluster_id: "zeroed".into(), node_id: 1 };
    RocksDb::open(dir, &identity, RocksOptions::default())
}

fn entry(index: u64) -> Entry {
    let mut data = format!("entry-{index}-").into_bytes();
    data.resize(1_000, b'z');
    Entry { term: 1, index, payload: EntryPayload::Command(bytes::Bytes::from(data)) }
}

/// The newest WAL file of the store.
fn newest_wal(dir: &std::path::Path) -> std::path::PathBuf {
    common::wals(dir).pop().expect("a WAL")
}

/// Entries 1..=300 of 1 KB, each acknowledged on its own (about 300 KB of WAL, ten 32 KiB
/// blocks), then 4 KiB of zeros at `offset` in the WAL; returns what the reopened store says.
async fn zeroed_at(offset: u64) -> String {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let db = open(dir.path()).expect("open");
        let log = db.log(0);
        log.initial_state().await.expect("initial state");
        log.save_hard_state(HardState { current_term: 1, voted_for: Some(1) }).await.expect("hard state");
        for index in 1..=ENTRIES {
            log.append(&[entry(index)]).await.expect("append");
        }
    }
    let wal = newest_wal(dir.path());
    let len = std::fs::metadata(&wal).expect("metadata").len();
    assert!(len > offset + 4_096, "the WAL holds {len} bytes");
    {
        use std::os::unix::fs::FileExt;
        let file = std::fs::OpenOptions::new().write(true).open(&wal).expect("open the WAL");
        file.write_all_at(&[0u8; 4_096], offset).expect("zero a sector");
    }
    let db = match open(dir.path()) {
        Ok(db) => db,
        Err(e) => return format!("refused: {e}"),
    };
    let log = db.log(0);
    let state = log.initial_state().await.expect("initial state");
    if let Some(lost) = &state.lost {
        return format!("reported lost: {lost:?}");
    }
    // Not reported: then nothing acknowledged may be missing or changed.
    assert_eq!(
        (state.first_index, state.last_index),
        (1, ENTRIES),
        "a zeroed sector at {offset} lost acknowledged entries with nothing said"
    );
    let entries = log.entries(1, ENTRIES + 1).await.expect("every entry reads");
    for (e, index) in entries.iter().zip(1..) {
        assert_eq!(e, &entry(index), "entry {index} after a zeroed sector at {offset}");
    }
    "whole".into()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zeroed_sector_at_the_start_of_a_wal_block_is_never_taken_silently() {
    let outcome = zeroed_at(2 * 32_768).await;
    eprintln!("zeroed at a block start: {outcome}");
    assert_ne!(outcome, "whole", "4 KiB of acknowledged records were zeroed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zeroed_sector_in_the_middle_of_a_wal_block_is_never_taken_silently() {
    let outcome = zeroed_at(2 * 32_768 + 12_288).await;
    eprintln!("zeroed inside a block: {outcome}");
    assert_ne!(outcome, "whole", "4 KiB of acknowledged records were zeroed");
}
