//! The durability record is written beside the WAL write it covers (not after it): what it
//! claims at every answered write, and how a log that ends inside the batch in flight at a
//! crash, or before it, is read at open.

use std::collections::BTreeMap;
use std::path::Path;

use raft_core::{HardState, LogId, Storage};

use super::{expected_entry, open};
use crate::durability::{LogRecord, RecordFile, RecordedLog};

const SAVED: HardState = HardState { current_term: 2, voted_for: Some(1) };
const IN_FLIGHT: HardState = HardState { current_term: 3, voted_for: Some(2) };

fn log(hard_state: HardState, last: u64) -> LogRecord {
    LogRecord { hard_state, last: LogId::new(1, last), config: raft_core::ConfigPosition::new_log() }
}

/// A closed store holding entries 1..=10 and `SAVED`, whose record is then replaced by `slot`
/// (as a crash during the WAL write of the batch `slot.possible` describes leaves it).
async fn store_with_record(slot: RecordedLog) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let db = open(dir.path());
        let log = db.log(0);
        log.initial_state().await.expect("state");
        log.append(&(1..=10).map(expected_entry).collect::<Vec<_>>()).await.expect("append");
        log.save_hard_state(SAVED).await.expect("hard state");
    }
    let recorded = record(dir.path());
    assert_eq!(recorded[&0], RecordedLog::exact(log(SAVED, 10)), "a closed store's record is exact");
    let mut file = RecordFile::open(dir.path(), true).expect("record").file;
    file.write(&BTreeMap::from([(0, slot)])).expect("write the record");
    dir
}

fn record(dir: &Path) -> BTreeMap<u64, RecordedLog> {
    RecordFile::open(dir, true).expect("record").record.expect("a record")
}

#[tokio::test]
async fn a_log_ending_inside_the_batch_in_flight_is_not_lost_and_keeps_its_vote() {
    // The batch in flight held the vote of term 3 and entries 11..=12; its WAL sync never
    // finished.
    let dir = store_with_record(RecordedLog { possible: log(IN_FLIGHT, 12), synced: log(SAVED, 10) }).await;
    for round in 0..2 {
        let log = open(dir.path()).log(0);
        let state = log.initial_state().await.expect("state");
        assert_eq!(state.lost, None, "round {round}: a batch that never synced was reported lost");
        assert_eq!(state.last_index, 10);
        assert_eq!(state.hard_state, IN_FLIGHT, "round {round}: the vote the node may have cast is kept");
    }
    assert_eq!(record(dir.path())[&0], RecordedLog::exact(log(IN_FLIGHT, 10)));
}

#[tokio::test]
async fn a_log_ending_before_what_was_synced_is_lost_up_to_the_batch_in_flight() {
    // Entry 11 had been synced and the batch in flight ends at 12: the log ends at 10.
    let dir = store_with_record(RecordedLog { possible: log(SAVED, 12), synced: log(SAVED, 11) }).await;
    let state = open(dir.path()).log(0).initial_state().await.expect("state");
    let lost = state.lost.expect("lost entries were not reported");
    assert_eq!((lost.recorded_last, lost.found_last), (LogId::new(1, 12), LogId::new(1, 10)));
    assert_eq!(lost.rolled_back_hard_state, None);
    // Still lost after a restart, until the log reaches 12.
    let state = open(dir.path()).log(0).initial_state().await.expect("state");
    assert_eq!(state.lost.map(|l| l.recorded_last), Some(LogId::new(1, 12)));
}

#[tokio::test]
async fn a_hard_state_older_than_the_synced_one_is_reported_rolled_back() {
    let dir =
        store_with_record(RecordedLog { possible: log(IN_FLIGHT, 10), synced: log(IN_FLIGHT, 10) }).await;
    let state = open(dir.path()).log(0).initial_state().await.expect("state");
    let lost = state.lost.expect("a forgotten vote was not reported");
    assert_eq!(lost.rolled_back_hard_state, Some(SAVED));
    assert_eq!(state.hard_state, IN_FLIGHT);
}

/// Every answered write is covered by the record on disk at that moment (`possible`, and
/// `synced`: the confirmation written before the answer), while
/// eight logs write concurrently (their batches are shared, and each batch's slot is written
/// beside its WAL write); the record never claims as synced more than was written.
#[tokio::test]
async fn every_answered_write_is_covered_by_the_record_on_disk() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = open(dir.path());
    let mut tasks = Vec::new();
    for group in 0..8u64 {
        let log = db.log(group);
        let dir = dir.path().to_path_buf();
        tasks.push(tokio::spawn(async move {
            log.initial_state().await.expect("state");
            for index in 1..=60 {
                log.append(&[expected_entry(index)]).await.expect("append");
                // A read that races the writer (the slots read before it wrote one, the
                // confirmation after it wrote the next) falls back to the older slot, whose
                // `synced` may be one batch behind: read again, a few times.
                let mut on_disk = record(&dir)[&group];
                for _ in 0..10 {
                    if on_disk.synced.last.index >= index {
                        break;
                    }
                    on_disk = record(&dir)[&group];
                }
                assert!(
                    on_disk.possible.last.index >= index,
                    "log {group}: entry {index} answered, record {on_disk:?}"
                );
                // Nothing answered is left looking in flight (the confirmation says it synced).
                assert!(
                    on_disk.synced.last.index >= index,
                    "log {group}: entry {index} answered, not recorded as synced: {on_disk:?}"
                );
                assert!(
                    on_disk.synced.last.index <= index,
                    "log {group}: synced past what was written: {on_disk:?}"
                );
            }
        }));
    }
    for task in tasks {
        task.await.expect("writer");
    }
    drop(db);
    let at_rest = record(dir.path());
    for group in 0..8 {
        assert_eq!(at_rest[&group].synced.last.index, 60, "a closed store's record is exact");
        assert_eq!(at_rest[&group].possible, at_rest[&group].synced);
    }
}

/// A store that keeps a record refuses to open without it (deleted, emptied or zeroed: the
/// outside review's case, where a deleted WAL then went unreported); a store whose record was
/// turned off, or one written before records existed, starts a record instead.
#[tokio::test]
async fn a_store_that_keeps_a_record_refuses_to_open_without_it() {
    let path = |dir: &Path| dir.join(crate::durability::FILE_NAME);
    type Damage = (&'static str, fn(&Path));
    let damages: [Damage; 3] = [
        ("deleted", |p| std::fs::remove_file(p).expect("remove")),
        ("emptied", |p| std::fs::write(p, b"").expect("empty")),
        ("zeroed", |p| {
            let len = std::fs::metadata(p).expect("metadata").len() as usize;
            std::fs::write(p, vec![0u8; len]).expect("zero");
        }),
    ];
    let confirmation = |dir: &Path| dir.join(crate::durability::CONFIRMATION_FILE_NAME);
    for (what, damage) in damages {
        let dir = store_with_record(RecordedLog::exact(log(SAVED, 10))).await;
        damage(&path(dir.path()));
        let confirmed = std::fs::read(confirmation(dir.path())).expect("the confirmation");
        // Refused every time (found by review: the first refusal created an empty record,
        // which the second open took for the store's own).
        for attempt in 0..2 {
            match crate::RocksDb::open(dir.path(), &super::identity(), crate::RocksOptions::default()) {
                Err(crate::OpenError::Corrupt(message)) => {
                    assert!(message.contains("durability record"), "{what}, open {attempt}: {message}")
                }
                other => panic!(
                    "{what}, open {attempt}: a store without its record opened: {:?}",
                    other.map(|_| ())
                ),
            }
        }
        assert_eq!(
            std::fs::read(confirmation(dir.path())).ok(),
            Some(confirmed),
            "{what}: a refused open leaves the confirmation as it was"
        );
    }
    // Turned off, then on again: recording starts over, nothing is refused.
    let dir = store_with_record(RecordedLog::exact(log(SAVED, 10))).await;
    assert!(confirmation(dir.path()).exists(), "the writes were confirmed");
    let off = crate::RocksOptions { durability_record: false, ..crate::RocksOptions::default() };
    drop(crate::RocksDb::open(dir.path(), &super::identity(), off).expect("open without a record"));
    assert!(!path(dir.path()).exists(), "a record left behind would go stale");
    assert!(!confirmation(dir.path()).exists(), "its confirmation too");
    let state = open(dir.path()).log(0).initial_state().await.expect("state");
    assert_eq!((state.last_index, state.lost), (10, None));
    assert!(path(dir.path()).exists());
    // A confirmation left alone (its directory emptied by hand) does not make the directory
    // look like another program's: a new store starts there.
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(confirmation(dir.path()), vec![7u8; 4096]).expect("write");
    let state = open(dir.path()).log(0).initial_state().await.expect("state");
    assert_eq!((state.last_index, state.lost), (0, None));
}

/// Found by review: a record that cannot be looked at (here a symbolic link to itself: ELOOP,
/// standing in for EIO) was taken for a missing one, and the store for damaged (which
/// raft-node repairs by moving the data dir aside). It is an IO error, which a supervisor
/// retries.
#[tokio::test]
async fn a_record_that_cannot_be_looked_at_is_an_io_error_not_damage() {
    let dir = store_with_record(RecordedLog::exact(log(SAVED, 10))).await;
    let path = dir.path().join(crate::durability::FILE_NAME);
    std::fs::remove_file(&path).expect("remove");
    std::os::unix::fs::symlink(&path, &path).expect("symlink");
    match crate::RocksDb::open(dir.path(), &super::identity(), crate::RocksOptions::default()) {
        Err(crate::OpenError::Io(message)) => assert!(message.contains("durability.rec"), "{message}"),
        other => panic!("expected an IO error, got {:?}", other.map(|_| ())),
    }
}
