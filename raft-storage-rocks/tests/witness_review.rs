//! From the outside review of 079d0af: where the record says the newest configuration stood
//! (`DataLoss::recorded_config`) was forgotten by the store's own write-back at open, so a
//! node that restarted once more while it recovered (nothing more lost) reported it unknown
//! and named no witnesses (fixed: writes that leave the log alone keep it). The write that
//! reaches what was lost makes the position unknown; the store then reads the log, whole
//! again, back to place it, so that a second loss after the recovery names witnesses too
//! (before, it stayed unknown until a configuration entry or a snapshot was written).

mod common;

use raft_core::{Entry, EntryPayload, LogId, Membership, Snapshot, SnapshotData, SnapshotMeta, Storage};
use raft_storage_rocks::{Identity, RocksDb, RocksOptions};

fn open(dir: &std::path::Path) -> RocksDb {
    let identity = Identity { cluster_id: "review".into(), node_id: 1 };
    RocksDb::open(dir, &identity, RocksOptions::default()).expect("open")
}

fn entry(index: u64, config: bool) -> Entry {
    let payload = if config {
        EntryPayload::Membership(Box::new(Membership::with_voters([1, 2, 3])))
    } else {
        EntryPayload::Command(bytes::Bytes::from(format!("e{index}")))
    };
    Entry { term: 1, index, payload }
}

fn delete_wal(dir: &std::path::Path) {
    for wal in common::wals(dir) {
        std::fs::remove_file(wal).expect("remove the WAL");
    }
}

/// Entries 1..=20 (a configuration at 10) in table files, 21..=50 only in the WAL, which is
/// then deleted.
async fn lost_wal_tail(dir: &std::path::Path) {
    let db = open(dir);
    let log = db.log(0);
    log.initial_state().await.expect("initial state");
    let first: Vec<Entry> = (1..=20).map(|i| entry(i, i == 10)).collect();
    log.append(&first).await.expect("append");
    db.flush().expect("flush");
    for i in 21..=50 {
        log.append(&[entry(i, false)]).await.expect("append");
    }
    drop(log);
    drop(db);
    delete_wal(dir);
}

#[tokio::test]
async fn a_plain_reopen_while_recovering_keeps_the_configuration_position() {
    let dir = tempfile::tempdir().expect("tempdir");
    lost_wal_tail(dir.path()).await;
    {
        let db = open(dir.path());
        let lost = db.log(0).initial_state().await.expect("state").lost.expect("a loss");
        assert_eq!(lost.recorded_config, Some(LogId::new(1, 10)), "first start after the loss");
        // Nothing written, nothing more lost: the process just stops.
    }
    let db = open(dir.path());
    let lost = db.log(0).initial_state().await.expect("state").lost.expect("still missing");
    assert_eq!(lost.recorded_last, LogId::new(1, 50));
    assert_eq!(
        lost.recorded_config,
        Some(LogId::new(1, 10)),
        "a restart without any write or further loss reports the same position"
    );
}

#[tokio::test]
async fn after_recovering_a_later_loss_reports_where_the_configuration_stands() {
    let dir = tempfile::tempdir().expect("tempdir");
    lost_wal_tail(dir.path()).await;
    {
        let db = open(dir.path());
        let log = db.log(0);
        assert!(log.initial_state().await.expect("state").lost.is_some());
        // The node catches up past what it lost (no configuration among the entries).
        let rest: Vec<Entry> = (21..=60).map(|i| entry(i, false)).collect();
        log.append(&rest).await.expect("append");
        assert_eq!(log.initial_state().await.expect("state").lost, None, "whole again");
        db.flush().expect("flush");
        for i in 61..=70 {
            log.append(&[entry(i, false)]).await.expect("append");
        }
    }
    delete_wal(dir.path());
    let db = open(dir.path());
    let lost = db.log(0).initial_state().await.expect("state").lost.expect("a second, later loss");
    assert_eq!(lost.found_last, LogId::new(1, 60));
    // The write that reached what was lost made the place unknown; the store read the whole
    // log back (its newest configuration entry is at 10) to place it again.
    assert_eq!(lost.recorded_config, Some(LogId::new(1, 10)));
}

#[tokio::test]
async fn a_configuration_appended_by_the_write_that_ends_the_recovery_is_the_one_placed() {
    let dir = tempfile::tempdir().expect("tempdir");
    lost_wal_tail(dir.path()).await;
    {
        let db = open(dir.path());
        let log = db.log(0);
        assert!(log.initial_state().await.expect("state").lost.is_some());
        // The recovery overwrites 15.. (a new leader's log) with a configuration at 40.
        let rest: Vec<Entry> = (15..=55).map(|i| Entry { term: 2, ..entry(i, i == 40) }).collect();
        log.append(&rest).await.expect("append");
        assert_eq!(log.initial_state().await.expect("state").lost, None, "whole again");
        db.flush().expect("flush");
        log.append(&[Entry { term: 2, ..entry(56, false) }]).await.expect("append");
    }
    delete_wal(dir.path());
    let db = open(dir.path());
    let lost = db.log(0).initial_state().await.expect("state").lost.expect("a second loss");
    assert_eq!(lost.found_last, LogId::new(2, 55));
    assert_eq!(lost.recorded_config, Some(LogId::new(2, 40)));
}

/// From the review of b694cdf: a recovery that a received snapshot ends (the leader had
/// compacted past what the node had) never reached the placement, which only an append did.
/// Now the writes followed the log's own place while data was missing, whatever they were.
#[tokio::test]
async fn a_recovery_that_a_snapshot_ends_places_the_configuration_at_the_snapshot() {
    let dir = tempfile::tempdir().expect("tempdir");
    lost_wal_tail(dir.path()).await;
    {
        let db = open(dir.path());
        let log = db.log(0);
        assert!(log.initial_state().await.expect("state").lost.is_some());
        let meta =
            SnapshotMeta { last_log_id: LogId::new(2, 60), membership: Membership::with_voters([1, 2, 3]) };
        let data = SnapshotData::from_bytes(bytes::Bytes::from_static(b"state"));
        log.save_snapshot(Snapshot { meta, data }).await.expect("snapshot");
        assert_eq!(log.initial_state().await.expect("state").lost, None, "whole again");
        let next: Vec<Entry> = (61..=65).map(|i| Entry { term: 2, ..entry(i, false) }).collect();
        log.append(&next).await.expect("append");
        db.flush().expect("flush");
        log.append(&[Entry { term: 2, ..entry(66, false) }]).await.expect("append");
    }
    delete_wal(dir.path());
    let db = open(dir.path());
    let lost = db.log(0).initial_state().await.expect("state").lost.expect("a second loss");
    assert_eq!(lost.found_last, LogId::new(2, 65));
    assert_eq!(lost.recorded_config, Some(LogId::new(2, 60)));
}
