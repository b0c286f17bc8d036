//! Review of the durability record written beside the WAL (two states per log): sequences
//! after which the record reports a loss that did not happen, or misses one that did.

use std::collections::BTreeMap;
use std::path::Path;

use raft_core::{HardState, LogId, Storage};

use super::{expected_entry, identity};
use crate::durability::{LogRecord, RecordFile, RecordedLog};
use crate::{RocksDb, RocksOptions};

/// Opens the store with the durability record on, whatever the default says.
pub(super) fn open(dir: &Path) -> RocksDb {
    RocksDb::open(dir, &identity(), RocksOptions { durability_record: true, ..RocksOptions::default() })
        .expect("open")
}

pub(super) const SAVED: HardState = HardState { current_term: 2, voted_for: Some(1) };
pub(super) const IN_FLIGHT: HardState = HardState { current_term: 3, voted_for: Some(2) };

pub(super) fn log(hard_state: HardState, last: u64) -> LogRecord {
    LogRecord { hard_state, last: LogId::new(1, last), config: raft_core::ConfigPosition::new_log() }
}

fn record(dir: &Path) -> BTreeMap<u64, RecordedLog> {
    RecordFile::open(dir, true).expect("record").record.expect("a record")
}

/// A closed store whose logs `groups` each hold entries 1..=10 and `SAVED`; its record is
/// then replaced by `slot`.
pub(super) async fn store_with_record(
    groups: &[u64],
    slot: &BTreeMap<u64, RecordedLog>,
) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let db = open(dir.path());
        for group in groups {
            let log = db.log(*group);
            log.initial_state().await.expect("state");
            log.append(&(1..=10).map(expected_entry).collect::<Vec<_>>()).await.expect("append");
            log.save_hard_state(SAVED).await.expect("hard state");
        }
    }
    let mut file = RecordFile::open(dir.path(), true).expect("record").file;
    file.write(slot).expect("write the record");
    dir
}

/// False alarm. Log 1's batch (vote of term 3, entries 11..=12) was in flight at a crash and
/// never synced. After the restart only log 0 writes before the store closes (or crashes
/// again): every slot written meanwhile takes log 1's unsettled `possible` as its `synced`.
/// The next open then reports log 1 as having lost data and rolled back its vote, though
/// nothing it synced was ever lost.
#[tokio::test]
async fn an_unread_log_keeps_its_in_flight_batch_ambiguous_across_restarts() {
    let slot = BTreeMap::from([
        (0, RecordedLog::exact(log(SAVED, 10))),
        (1, RecordedLog { possible: log(IN_FLIGHT, 12), synced: log(SAVED, 10) }),
    ]);
    let dir = store_with_record(&[0, 1], &slot).await;
    {
        let db = open(dir.path());
        let log0 = db.log(0);
        assert_eq!(log0.initial_state().await.expect("state").lost, None);
        log0.append(&[expected_entry(11)]).await.expect("append");
        // Already on disk, before any close: log 1's in-flight batch is now claimed synced.
        eprintln!("log 1 in the record on disk: {:?}", record(dir.path())[&1]);
    }
    let state = open(dir.path()).log(1).initial_state().await.expect("state");
    assert_eq!(state.lost, None, "false alarm: a batch that never synced is reported lost");
}

/// Missed loss. Entries 11..=12 were synced and acknowledged; the batch in flight at the crash
/// was a truncation from 6 (`possible` ends at 5, below `synced`). The log is found at 10: the
/// truncation never synced, and entries 11..=12 that had been synced are gone. Nothing is
/// reported, because the loss is measured against `possible` (5) only.
#[tokio::test]
async fn a_loss_below_synced_under_a_truncation_in_flight_is_reported() {
    let slot = BTreeMap::from([(0, RecordedLog { possible: log(SAVED, 5), synced: log(SAVED, 12) })]);
    let dir = store_with_record(&[0], &slot).await;
    let state = open(dir.path()).log(0).initial_state().await.expect("state");
    assert_eq!(state.last_index, 10);
    let lost = state.lost.expect("synced entries 11..=12 are gone and nothing was reported");
    assert!(lost.recorded_last >= LogId::new(1, 12), "{lost}");
}
