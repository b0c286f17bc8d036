//! The durability record keeps where the log's newest configuration stands
//! (`raft_core::ConfigPosition`), so that a node that lost entries can tell whether a
//! configuration was lost with them (`DataLoss::recorded_config`).

use std::path::Path;

use raft_core::{
    ConfigPosition, Entry, EntryPayload, LogId, Membership, Snapshot, SnapshotData, SnapshotMeta, Storage,
};

use super::{expected_entry, open};
use crate::durability::RecordFile;

fn config_entry(term: u64, index: u64) -> Entry {
    Entry { term, index, payload: EntryPayload::Membership(Box::new(Membership::with_voters([1, 2, 3]))) }
}

/// Entries 1..=50 of term 1, with `configs` (indexes) carrying a configuration.
fn entries(range: std::ops::RangeInclusive<u64>, configs: &[u64]) -> Vec<Entry> {
    range.map(|i| if configs.contains(&i) { config_entry(1, i) } else { expected_entry(i) }).collect()
}

/// Where the record says log 0's newest configuration stands (its `possible` state).
fn recorded_position(dir: &Path) -> ConfigPosition {
    let record = RecordFile::open(dir, true).expect("record").record.expect("a record");
    record[&0].possible.config
}

/// A closed store with entries 1..=20 in table files and 21..=50 only in the write-ahead log,
/// configurations at `configs`; then the WAL is deleted.
async fn store_that_lost_its_wal_tail(configs: &[u64]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let db = open(dir.path());
        let log = db.log(0);
        log.initial_state().await.expect("initial state");
        log.append(&entries(1..=20, configs)).await.expect("append");
        db.flush().expect("flush");
        for e in entries(21..=50, configs) {
            log.append(&[e]).await.expect("append");
        }
    }
    for wal in super::wals(dir.path()) {
        std::fs::remove_file(wal).expect("remove the WAL");
    }
    dir
}

#[tokio::test]
async fn a_loss_reports_where_the_newest_configuration_stood() {
    // In the part that survived: the restored log has it at the same place.
    let dir = store_that_lost_its_wal_tail(&[10]).await;
    let state = open(dir.path()).log(0).initial_state().await.expect("state");
    let lost = state.lost.expect("a loss");
    assert_eq!((lost.found_last, lost.recorded_last), (LogId::new(1, 20), LogId::new(1, 50)));
    assert_eq!(lost.recorded_config, Some(LogId::new(1, 10)));
    // In the part that was lost: the record names it, the restored log ends before it.
    let dir = store_that_lost_its_wal_tail(&[10, 35]).await;
    let lost = open(dir.path()).log(0).initial_state().await.expect("state").lost.expect("a loss");
    assert_eq!(lost.recorded_config, Some(LogId::new(1, 35)));
    // None ever written: the initial configuration, at the empty log's id.
    let dir = store_that_lost_its_wal_tail(&[]).await;
    let lost = open(dir.path()).log(0).initial_state().await.expect("state").lost.expect("a loss");
    assert_eq!(lost.recorded_config, Some(LogId::default()));
}

#[tokio::test]
async fn while_the_log_misses_lost_data_the_position_is_unknown_until_a_write_names_one() {
    let dir = store_that_lost_its_wal_tail(&[10]).await;
    {
        let db = open(dir.path());
        let log = db.log(0);
        assert!(log.initial_state().await.expect("state").lost.is_some());
        log.append(&entries(21..=25, &[])).await.expect("append");
    }
    assert_eq!(recorded_position(dir.path()), ConfigPosition(None), "a write while missing data");
    // A second start still missing the data: the first loss's configuration is not reported.
    {
        let db = open(dir.path());
        let log = db.log(0);
        let lost = log.initial_state().await.expect("state").lost.expect("still missing");
        assert_eq!(lost.recorded_config, None);
        // A configuration written while missing data stays unknown too.
        log.append(&[config_entry(1, 26)]).await.expect("append");
    }
    assert_eq!(recorded_position(dir.path()), ConfigPosition(None));
    // Once the log reaches what it lost, a configuration written is recorded again.
    {
        let db = open(dir.path());
        let log = db.log(0);
        log.initial_state().await.expect("state");
        log.append(&entries(27..=50, &[])).await.expect("append");
        assert_eq!(log.initial_state().await.expect("state").lost, None, "whole again");
        log.append(&[config_entry(2, 51)]).await.expect("append");
    }
    assert_eq!(recorded_position(dir.path()), ConfigPosition(Some(LogId::new(2, 51))));
}

#[tokio::test]
async fn truncations_overwrites_and_snapshots_move_the_position() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = open(dir.path());
    let log = db.log(0);
    log.initial_state().await.expect("state");
    let position = || recorded_position_of(&db);
    assert_eq!(position(), ConfigPosition::new_log());
    log.append(&entries(1..=10, &[8])).await.expect("append");
    assert_eq!(position(), ConfigPosition(Some(LogId::new(1, 8))));
    // A truncation above it keeps it; one that removes it makes it unknown.
    log.truncate(9).await.expect("truncate");
    assert_eq!(position(), ConfigPosition(Some(LogId::new(1, 8))));
    log.truncate(8).await.expect("truncate");
    assert_eq!(position(), ConfigPosition(None));
    log.append(&[config_entry(2, 8)]).await.expect("append");
    assert_eq!(position(), ConfigPosition(Some(LogId::new(2, 8))));
    // An append that replaces it without a configuration of its own: unknown.
    log.append(&[expected_entry(8)]).await.expect("append");
    assert_eq!(position(), ConfigPosition(None));
    log.append(&[config_entry(3, 9)]).await.expect("append");
    // A snapshot past it, the log kept: the snapshot's last entry.
    let meta = SnapshotMeta { last_log_id: LogId::new(3, 9), membership: Membership::with_voters([1, 2, 3]) };
    let snapshot = Snapshot { meta, data: SnapshotData::from_bytes(bytes::Bytes::from_static(b"state")) };
    log.save_snapshot(snapshot).await.expect("snapshot");
    assert_eq!(position(), ConfigPosition(Some(LogId::new(3, 9))));
    // A snapshot the log does not hold: the log is discarded, the snapshot's is the newest.
    let meta = SnapshotMeta { last_log_id: LogId::new(5, 40), membership: Membership::with_voters([1, 2]) };
    let snapshot = Snapshot { meta, data: SnapshotData::from_bytes(bytes::Bytes::from_static(b"state")) };
    log.save_snapshot(snapshot).await.expect("snapshot");
    assert_eq!(position(), ConfigPosition(Some(LogId::new(5, 40))));
}

/// The position the writer keeps for log 0 (what the next slot will hold).
fn recorded_position_of(db: &crate::RocksDb) -> ConfigPosition {
    db.recorded_position(0)
}

#[tokio::test]
async fn a_hard_state_write_while_missing_data_keeps_the_position_and_an_accepted_loss_forgets_it() {
    let dir = store_that_lost_its_wal_tail(&[10]).await;
    {
        let db = open(dir.path());
        let log = db.log(0);
        assert!(log.initial_state().await.expect("state").lost.is_some());
        let vote = raft_core::HardState { current_term: 9, voted_for: Some(2) };
        log.save_hard_state(vote).await.expect("hard state");
    }
    let db = open(dir.path());
    let log = db.log(0);
    let lost = log.initial_state().await.expect("state").lost.expect("still missing");
    assert_eq!(lost.recorded_config, Some(LogId::new(1, 10)), "a vote does not change the log");
    // The operator accepts the loss: the log is taken as it is, the old place is no guide.
    assert!(log.accept_data_loss().await.expect("accept").is_some());
    assert_eq!(db.recorded_position(0), ConfigPosition(None));
}

#[tokio::test]
async fn data_lost_whole_has_no_known_configuration_position() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = open(dir.path());
    let log = db.log(0);
    log.initial_state().await.expect("state");
    assert_eq!(db.recorded_position(0), ConfigPosition::new_log());
    // The cluster says this node had entries up to 40 (its data dir was lost whole).
    let hs = raft_core::HardState { current_term: 3, voted_for: None };
    log.record_lost_data(hs, LogId::new(3, 40)).await.expect("record");
    assert_eq!(db.recorded_position(0), ConfigPosition(None));
    drop(log);
    drop(db);
    let lost = open(dir.path()).log(0).initial_state().await.expect("state").lost.expect("a loss");
    assert_eq!(lost.recorded_config, None);
}

#[tokio::test]
async fn a_start_that_finds_the_log_whole_places_an_unknown_configuration_by_reading_the_log() {
    let dir = store_that_lost_its_wal_tail(&[10]).await;
    {
        let db = open(dir.path());
        let log = db.log(0);
        assert!(log.initial_state().await.expect("state").lost.is_some());
        // Caught up past what was lost: the append that did it made the place unknown, then
        // read the log back to place it again.
        log.append(&entries(21..=60, &[])).await.expect("append");
        assert_eq!(db.recorded_position(0), ConfigPosition(Some(LogId::new(1, 10))));
        // A crash between that append and the placement leaves the place unknown.
        let config = Some(crate::durability::ConfigWrite::Known(ConfigPosition(None)));
        let mark = crate::durability::Mark { group: 0, hard_state: None, last: None, config };
        db.write(Vec::new(), Some(mark)).await.expect("write");
        assert_eq!(db.recorded_position(0), ConfigPosition(None));
    }
    // The next start finds the log whole and reads where its newest configuration stands.
    let db = open(dir.path());
    let log = db.log(0);
    assert_eq!(log.initial_state().await.expect("state").lost, None);
    assert_eq!(db.recorded_position(0), ConfigPosition(Some(LogId::new(1, 10))));
}
