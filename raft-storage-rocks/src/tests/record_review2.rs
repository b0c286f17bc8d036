//! Second outside review of the durability record: the slots written between a log's
//! comparison with the record at open (`settle`) and its write-back, and the two-slot rule
//! after a record file grew.

use std::collections::BTreeMap;
use std::path::Path;

use raft_core::{HardState, LogId, Storage};

use super::expected_entry;
use super::record_review::{log, open, store_with_record, IN_FLIGHT, SAVED};
use crate::durability::{Mark, Marks, RecordFile, RecordedLog};

/// What a SIGKILL leaves of a live store: every file as it is now (the WAL is synced after
/// each answered write, the record's slots were written with direct IO or to the page cache).
fn crash_image(from: &Path) -> tempfile::TempDir {
    fn copy(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).expect("mkdir");
        for entry in std::fs::read_dir(from).expect("read dir") {
            let entry = entry.expect("entry");
            let target = to.join(entry.file_name());
            if entry.file_type().expect("type").is_dir() {
                copy(&entry.path(), &target);
            } else {
                std::fs::copy(entry.path(), &target).expect("copy");
            }
        }
    }
    let image = tempfile::tempdir().expect("tempdir");
    copy(from, image.path());
    image
}

/// Log 0's state at open after the window: a two-log store whose record gives log 0 `log0`
/// (log 1 exact at 10) is opened; log 1 is read and writes; log 0 is settled as found at 10
/// (the first step of its `initial_log_state`) and, before its write-back, log 1 writes again;
/// the process is killed then. Returns log 0's state at the next open, and at an open of the
/// crash taken while log 0 was still unread (the control).
async fn log0_after_a_crash_between_settle_and_write_back(
    log0: RecordedLog,
) -> (raft_core::InitialState, raft_core::InitialState) {
    let slot = BTreeMap::from([(0, log0), (1, RecordedLog::exact(log(SAVED, 10)))]);
    let dir = store_with_record(&[0, 1], &slot).await;
    let db = open(dir.path());
    let log1 = db.log(1);
    assert_eq!(log1.initial_state().await.expect("log 1").lost, None);
    log1.append(&[expected_entry(11)]).await.expect("log 1 writes");
    let before = crash_image(dir.path());
    let control = open(before.path()).log(0).initial_state().await.expect("state");
    db.settle_record(0, LogId::new(1, 10));
    log1.append(&[expected_entry(12)]).await.expect("log 1 writes");
    let image = crash_image(dir.path());
    drop(db);
    (open(image.path()).log(0).initial_state().await.expect("state"), control)
}

/// A restart of a two-log store whose log 0 ends inside the batch in flight at the last crash
/// (its vote of term 3 never synced). Opening log 0 settles it (`settle_record`, the first step
/// of `initial_log_state`) and, before its write-back of the vote is written, log 1 writes: the
/// slot that batch writes claims log 0's vote of term 3 as *synced*, though the WAL holds term 2.
/// A crash now, and the next open reports the hard state rolled back: a node that lost nothing
/// refuses to vote. (With one log the write-back's own intent slot claims it the same way, see
/// the next test.)
#[tokio::test]
async fn a_crash_before_the_write_back_of_an_in_flight_vote_is_no_false_alarm() {
    let log0 = RecordedLog { possible: log(IN_FLIGHT, 12), synced: log(SAVED, 10) };
    let (state, control) = log0_after_a_crash_between_settle_and_write_back(log0).await;
    assert_eq!(control.lost, None, "control: a crash while log 0 is still unread is no alarm");
    assert_eq!(
        state.lost, None,
        "false alarm: a vote that never synced is reported as a rolled-back hard state"
    );
}

/// The missed loss of the same window. Log 0's record: entries up to 12 synced, a truncation
/// from 6 in flight (`possible` ends at 5); the log is found at 10, so 11..=12 are lost (the
/// first review's case, reported at this open). Between `settle` and the write-back, any slot
/// written records log 0 as `synced` = `possible` = 5: `synced` (12) is forgotten. A crash
/// before the write-back lands, and the next open finds 10 >= 5: whole, nothing reported.
#[tokio::test]
async fn a_crash_before_the_write_back_of_a_found_loss_keeps_the_loss() {
    let log0 = RecordedLog { possible: log(SAVED, 5), synced: log(SAVED, 12) };
    let (state, control) = log0_after_a_crash_between_settle_and_write_back(log0).await;
    assert!(control.lost.is_some(), "control: a crash while log 0 is still unread keeps the loss");
    assert_eq!(state.last_index, 10);
    let lost = state.lost.expect("synced, acknowledged entries 11..=12 are gone and nothing was reported");
    assert!(lost.recorded_last >= LogId::new(1, 12), "{lost}");
}

/// One log, no other writer: the write-back batch's own intent slot, computed as `write_intent`
/// does after `settle`, claims as `synced` what the WAL does not hold. A crash during that
/// batch's WAL write leaves exactly this slot as the newest.
#[tokio::test]
async fn the_write_back_intent_slot_claims_only_what_the_wal_holds() {
    let found = LogId::new(1, 10);
    let cases = [
        ("vote in flight", RecordedLog { possible: log(IN_FLIGHT, 12), synced: log(SAVED, 10) }, IN_FLIGHT),
        ("truncation in flight, cut", RecordedLog { possible: log(SAVED, 5), synced: log(SAVED, 12) }, SAVED),
    ];
    let mut failures = Vec::new();
    for (what, recorded, write_back) in cases {
        let record = BTreeMap::from([(0, recorded)]);
        let mut marks = Marks::from_record(&record);
        marks.settle(0, found);
        // `initial_log_state`'s mark, and the slot `write_intent` writes before its WAL write.
        let mark = Mark { group: 0, hard_state: Some(write_back), last: Some(found), config: None };
        let slot = marks.slot(&marks.preview([&mark]));
        let dir = store_with_record(&[0], &slot).await;
        let state = open(dir.path()).log(0).initial_state().await.expect("state");
        let expected_loss = what.contains("cut");
        if state.lost.is_some() != expected_loss {
            failures.push(format!("{what}: slot {:?}, reported {:?}", slot[&0], state.lost));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

/// The two-slot rule after a grow: the grown file holds one slot (the other is zeros), and
/// with nothing queued the writer rewrites that one slot in place, unsynced. A power loss that
/// tears that rewrite leaves no slot: the store refuses to open ("both slots are damaged"),
/// though the record's own design says a torn write falls back to the other slot.
#[tokio::test]
async fn a_torn_rewrite_right_after_a_grow_falls_back_to_another_slot() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = open(dir.path());
    let path = dir.path().join(crate::durability::FILE_NAME);
    let initial = std::fs::metadata(&path).expect("record").len();
    let mut grown = false;
    for group in 0..2_000u64 {
        let hs = HardState { current_term: u64::MAX - group, voted_for: Some(u64::MAX - group) };
        db.log(group).save_hard_state(hs).await.expect("hard state");
        if std::fs::metadata(&path).expect("record").len() > initial {
            grown = true;
            break;
        }
    }
    assert!(grown, "the record never grew");
    // The writer is idle: the batch that grew the record was answered.
    let bytes = std::fs::read(&path).expect("read");
    let half = bytes.len() / 2;
    let (a, b) = bytes.split_at(half);
    let zero = |s: &[u8]| s.iter().all(|x| *x == 0);
    eprintln!("after the grow: slot 0 zero: {}, slot 1 zero: {}", zero(a), zero(b));
    // Tear the slot that was just rewritten in place (the non-zero one): a power loss before
    // the next WAL sync may leave it so.
    let torn = tempfile::tempdir().expect("tempdir");
    let mut torn_bytes = bytes.clone();
    let latest = if zero(a) { half } else { 0 };
    torn_bytes[latest + 30] ^= 0xFF;
    std::fs::write(torn.path().join(crate::durability::FILE_NAME), &torn_bytes).expect("write");
    drop(db);
    let opened = RecordFile::open(torn.path(), true).map(|o| o.record.map(|r| r.len()));
    assert!(
        opened.is_ok(),
        "a torn in-place rewrite after a grow left no slot to fall back to: {:?}",
        opened.map(|_| ())
    );
}
