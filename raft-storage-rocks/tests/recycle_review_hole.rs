//! Outside review of the WAL recycling change (PointInTime + `recycle_log_file_num`). The
//! two tests that reopen with other settings failed before the fix (PointInTime whenever the
//! store keeps, or kept, its record).
//!
//! Two WAL files are live at once while a flush is pending (the memtable was switched, the
//! flush has not finished: a crash during a flush, or a flush that cannot run). The older one
//! is damaged in the middle. Reopened with the default settings (PointInTime) replay stops at
//! the damage and the newer file is dropped: the durability record reports the loss. Reopened
//! with `recycle_wal_files: 0` (TolerateCorruptedTailRecords), the files written in the
//! recyclable format make RocksDB take a checksum mismatch for the end of the older file and
//! replay the newer one whole: a hole in RocksDB's sequence.

use std::path::{Path, PathBuf};

mod common;

use common::{copy_dir, wals};
use raft_core::{Entry, EntryPayload, HardState, Storage};
use raft_storage_rocks::{Identity, RocksDb, RocksOptions};

fn identity() -> Identity {
    Identity { cluster_id: "review".into(), node_id: 1 }
}

fn small_budget() -> RocksOptions {
    // 1 MiB per column family's memtable.
    RocksOptions { memtable_budget_bytes: 2 << 20, ..RocksOptions::default() }
}

fn entry(term: u64, index: u64, bytes: usize) -> Entry {
    let mut data = format!("t{term}-i{index}-").into_bytes();
    data.resize(bytes.max(data.len()), b'x');
    Entry { term, index, payload: EntryPayload::Command(bytes::Bytes::from(data)) }
}

/// Log 1..=10 (term 1); then, with background work stopped, a leader of term 2 replaces 5..=7
/// (one big batch that fills the memtable, in WAL N) and a leader of term 3 appends 8..=9
/// (after the memtable switch: WAL N+1). Every write was acknowledged.
async fn two_live_wals(dir: &Path) {
    two_live_wals_with(dir, small_budget()).await;
}

async fn two_live_wals_with(dir: &Path, options: RocksOptions) {
    let db = RocksDb::open(dir, &identity(), options).expect("open");
    let log = db.log(0);
    log.initial_state().await.expect("initial state");
    log.save_hard_state(HardState { current_term: 1, voted_for: Some(1) }).await.expect("hard state");
    let first: Vec<Entry> = (1..=10).map(|i| entry(1, i, 100)).collect();
    log.append(&first).await.expect("append 1..=10");
    db.flush().expect("flush");
    db.stop_background_work();
    log.save_hard_state(HardState { current_term: 2, voted_for: Some(2) }).await.expect("hard state");
    let replaced: Vec<Entry> = (5..=7).map(|i| entry(2, i, 450_000)).collect();
    log.append(&replaced).await.expect("replace 5..=7 with term 2");
    log.save_hard_state(HardState { current_term: 3, voted_for: Some(3) }).await.expect("hard state");
    let next: Vec<Entry> = (8..=9).map(|i| entry(3, i, 100)).collect();
    log.append(&next).await.expect("append 8..=9 term 3");
    drop(log);
    drop(db);
}

/// Flips bytes inside the big batch of the older live WAL.
fn damage_older(dir: &Path) -> PathBuf {
    let files = wals(dir);
    let sizes: Vec<(PathBuf, u64)> =
        files.iter().map(|p| (p.clone(), std::fs::metadata(p).map(|m| m.len()).unwrap_or(0))).collect();
    assert!(files.len() >= 2, "two WAL files expected: {sizes:?}");
    // The big one (the batch that filled the memtable).
    let (older, len) = sizes.iter().max_by_key(|(_, l)| *l).cloned().expect("a WAL");
    assert!(len > 1_000_000, "{sizes:?}");
    assert!(sizes.iter().any(|(p, l)| p > &older && *l > 0), "a newer WAL with data: {sizes:?}");
    let mut bytes = std::fs::read(&older).expect("read");
    let at = (len / 2) as usize;
    for b in &mut bytes[at..at + 16] {
        *b ^= 0xA5;
    }
    std::fs::write(&older, bytes).expect("write");
    older
}

async fn check(dir: &Path, options: RocksOptions) -> Result<String, String> {
    let db = match RocksDb::open(dir, &identity(), options) {
        Ok(db) => db,
        Err(e) => return Ok(format!("refused: {e:?}")),
    };
    let log = db.log(0);
    let state = log.initial_state().await.expect("state");
    if let Some(lost) = &state.lost {
        return Ok(format!("lost reported: {lost:?}"));
    }
    let entries = log.entries(state.first_index, state.last_index + 1).await.expect("entries");
    let terms: Vec<(u64, u64)> = entries.iter().map(|e| (e.index, e.term)).collect();
    let expected: Vec<(u64, u64)> = (1..=9)
        .map(|i| {
            (
                i,
                if i <= 4 {
                    1
                } else if i <= 7 {
                    2
                } else {
                    3
                },
            )
        })
        .collect();
    if terms == expected {
        Ok("whole".into())
    } else {
        Err(format!(
            "opened with no loss reported, hard state {:?}, log (index, term) {terms:?}, acknowledged {expected:?}",
            state.hard_state
        ))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damage_in_an_older_live_wal_with_the_default_settings_is_reported() {
    let dir = tempfile::tempdir().expect("tempdir");
    two_live_wals(dir.path()).await;
    damage_older(dir.path());
    let outcome = check(dir.path(), RocksOptions::default()).await;
    eprintln!("default settings: {outcome:?}");
    outcome.expect("no silent loss");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damage_in_an_older_live_wal_reopened_without_recycling_is_not_silent() {
    let dir = tempfile::tempdir().expect("tempdir");
    two_live_wals(dir.path()).await;
    damage_older(dir.path());
    let copy = tempfile::tempdir().expect("tempdir");
    copy_dir(dir.path(), copy.path());
    let outcome = check(dir.path(), RocksOptions { recycle_wal_files: 0, ..RocksOptions::default() }).await;
    eprintln!("recycle_wal_files 0: {outcome:?}");
    outcome.expect("no silent loss");
}

/// With the record turned off, losses go unnoticed (what that option documents), but the
/// store is still a consistent earlier point in time, never a log with a hole: here the state
/// before the term-2 replacement (1..=10 of term 1). Before the fix: the hole of the test
/// above.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damage_in_an_older_live_wal_reopened_without_the_record_leaves_an_earlier_state_not_a_hole() {
    let dir = tempfile::tempdir().expect("tempdir");
    two_live_wals(dir.path()).await;
    damage_older(dir.path());
    let off = RocksOptions { durability_record: false, ..RocksOptions::default() };
    let db = RocksDb::open(dir.path(), &identity(), off).expect("opens");
    let log = db.log(0);
    let state = log.initial_state().await.expect("state");
    let entries = log.entries(state.first_index, state.last_index + 1).await.expect("entries");
    let terms: Vec<(u64, u64)> = entries.iter().map(|e| (e.index, e.term)).collect();
    let before_the_replacement: Vec<(u64, u64)> = (1..=10).map(|i| (i, 1)).collect();
    assert_eq!(terms, before_the_replacement, "hard state {:?}", state.hard_state);
    assert!(state.hard_state.current_term <= 2, "{:?}", state.hard_state);
}

/// Control: the same store written without recycling (as before the change) and reopened so
/// is refused as corrupt (TolerateCorruptedTailRecords on a non-recyclable WAL).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_written_and_reopened_without_recycling_is_not_silent() {
    let dir = tempfile::tempdir().expect("tempdir");
    let no_recycling = RocksOptions { recycle_wal_files: 0, ..small_budget() };
    two_live_wals_with(dir.path(), no_recycling).await;
    damage_older(dir.path());
    let outcome = check(dir.path(), RocksOptions { recycle_wal_files: 0, ..RocksOptions::default() }).await;
    eprintln!("control, no recycling at all: {outcome:?}");
    outcome.expect("no silent loss");
}

/// Control: written without recycling, reopened with the default (PointInTime + recycling).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_written_without_recycling_reopened_with_defaults_is_not_silent() {
    let dir = tempfile::tempdir().expect("tempdir");
    let no_recycling = RocksOptions { recycle_wal_files: 0, ..small_budget() };
    two_live_wals_with(dir.path(), no_recycling).await;
    damage_older(dir.path());
    let outcome = check(dir.path(), RocksOptions::default()).await;
    eprintln!("control, written without recycling, reopened with defaults: {outcome:?}");
    outcome.expect("no silent loss");
}
