//! The conformance suite every [`Storage`] implementation runs with one call:
//! `raft_core::testing::storage_suite::run_all(|| async { MyStorage::new() }).await`.
//!
//! Each case gets a fresh store from the builder. A failing case panics with the case's name
//! and what was wrong.

use std::future::Future;

use bytes::Bytes;

use crate::membership::Membership;
use crate::storage::{Snapshot, SnapshotMeta, StagedSnapshot, Storage, StorageError};
use crate::types::{Entry, EntryPayload, HardState, Index, LogId, Term};

/// Runs every case of the suite against stores made by `build`.
pub async fn run_all<S, F, Fut>(build: F)
where
    S: Storage,
    F: Fn() -> Fut,
    Fut: Future<Output = S>,
{
    empty_store(&build().await).await;
    hard_state_round_trip(&build().await).await;
    append_and_read(&build().await).await;
    reads_within_a_byte_bound(&build().await).await;
    append_refuses_holes(&build().await).await;
    append_replaces_suffix(&build().await).await;
    truncate_removes_suffix(&build().await).await;
    reads_out_of_range(&build().await).await;
    snapshot_with_matching_log_keeps_it(&build().await).await;
    snapshot_past_the_log_discards_it(&build().await).await;
    snapshot_with_conflicting_log_discards_it(&build().await).await;
    older_snapshot_is_ignored(&build().await).await;
    compact_removes_prefix(&build().await).await;
    compact_past_snapshot_is_refused(&build().await).await;
    large_entries_round_trip(&build().await).await;
    snapshot_saved_beside_appends(&build().await).await;
    snapshot_written_from_a_source_and_read_in_parts(&build().await).await;
    staged_parts_become_the_snapshot_only_when_saved(&build().await).await;
}

fn entry(term: Term, index: Index) -> Entry {
    Entry { term, index, payload: EntryPayload::Command(Bytes::from(format!("cmd-{index}-{term}"))) }
}

fn entries(term: Term, from: Index, to: Index) -> Vec<Entry> {
    (from..=to).map(|i| entry(term, i)).collect()
}

fn snapshot(term: Term, index: Index) -> Snapshot {
    Snapshot {
        meta: SnapshotMeta {
            last_log_id: LogId::new(term, index),
            membership: Membership::with_voters([1, 2, 3]),
        },
        data: Bytes::from(format!("state@{index}")).into(),
    }
}

async fn bounds(s: &impl Storage) -> (Index, Index) {
    let st = s.initial_state().await.expect("initial_state");
    (st.first_index, st.last_index)
}

async fn empty_store(s: &impl Storage) {
    let st = s.initial_state().await.expect("empty_store: initial_state");
    assert_eq!(st.hard_state, HardState::default(), "empty_store: hard state");
    assert_eq!(st.snapshot, None, "empty_store: snapshot");
    assert_eq!((st.first_index, st.last_index), (1, 0), "empty_store: bounds");
    assert_eq!(s.term(0).await, Ok(0), "empty_store: term(0) is 0");
    assert_eq!(s.entries(1, 1).await, Ok(vec![]), "empty_store: empty range");
    assert!(s.load_snapshot().await.expect("empty_store: load_snapshot").is_none());
}

async fn hard_state_round_trip(s: &impl Storage) {
    for hs in [
        HardState { current_term: 1, voted_for: Some(2) },
        HardState { current_term: 5, voted_for: None },
        HardState { current_term: u64::MAX, voted_for: Some(u64::MAX) },
    ] {
        s.save_hard_state(hs).await.expect("hard_state_round_trip: save");
        let got = s.initial_state().await.expect("hard_state_round_trip: load").hard_state;
        assert_eq!(got, hs, "hard_state_round_trip");
    }
}

/// `entries_within` stops after the entry with which the bytes read reach the bound (at least
/// one entry), and reads like `entries` otherwise.
async fn reads_within_a_byte_bound(s: &impl Storage) {
    let mut log = entries(1, 1, 4);
    log.push(Entry { term: 1, index: 5, payload: EntryPayload::Command(Bytes::from(vec![9u8; 10_000])) });
    log.extend(entries(1, 6, 8));
    s.append(&log).await.expect("within: append");
    let sizes: Vec<usize> = log.iter().map(Entry::size_bytes).collect();
    let read = |from: Index, to: Index, max: usize| async move {
        s.entries_within(from, to, max)
            .await
            .expect("within: read")
            .iter()
            .map(|e| e.index)
            .collect::<Vec<_>>()
    };
    assert_eq!(read(1, 9, usize::MAX).await, (1..=8).collect::<Vec<_>>(), "within: everything");
    assert_eq!(read(1, 9, 1).await, vec![1], "within: at least one entry");
    assert_eq!(read(1, 9, 0).await, vec![1], "within: at least one entry, even for a bound of 0");
    assert_eq!(read(1, 9, sizes[0] + 1).await, vec![1, 2], "within: up to the entry that reaches the bound");
    assert_eq!(read(4, 9, sizes[3] + 1).await, vec![4, 5], "within: a large entry ends the read");
    assert_eq!(read(6, 8, usize::MAX).await, vec![6, 7], "within: half-open");
    let r = s.entries_within(7, 10, usize::MAX).await;
    assert!(matches!(r, Err(StorageError::OutOfRange { .. })), "within: past the end: {r:?}");
}

async fn append_and_read(s: &impl Storage) {
    s.append(&entries(1, 1, 3)).await.expect("append_and_read: append 1..=3");
    s.append(&entries(2, 4, 10)).await.expect("append_and_read: append 4..=10");
    assert_eq!(bounds(s).await, (1, 10), "append_and_read: bounds");
    assert_eq!(s.entries(1, 11).await.expect("append_and_read: read all").len(), 10);
    assert_eq!(s.entries(3, 5).await, Ok(vec![entry(1, 3), entry(2, 4)]), "append_and_read: range");
    assert_eq!(s.term(3).await, Ok(1), "append_and_read: term(3)");
    assert_eq!(s.term(10).await, Ok(2), "append_and_read: term(10)");
    s.append(&[]).await.expect("append_and_read: empty append is a no-op");
    assert_eq!(bounds(s).await, (1, 10), "append_and_read: bounds after empty append");
}

async fn append_refuses_holes(s: &impl Storage) {
    s.append(&entries(1, 1, 3)).await.expect("append_refuses_holes: append");
    let err = s.append(&entries(1, 5, 6)).await;
    assert!(matches!(err, Err(StorageError::NotContiguous { .. })), "append_refuses_holes: got {err:?}");
    let mut gappy = entries(1, 4, 4);
    gappy.push(entry(1, 6));
    let err = s.append(&gappy).await;
    assert!(
        matches!(err, Err(StorageError::NotContiguous { .. })),
        "append_refuses_holes: inner gap {err:?}"
    );
    assert_eq!(bounds(s).await, (1, 3), "append_refuses_holes: nothing written");
}

async fn append_replaces_suffix(s: &impl Storage) {
    s.append(&entries(1, 1, 5)).await.expect("append_replaces_suffix: append");
    s.append(&entries(2, 3, 4)).await.expect("append_replaces_suffix: overwrite");
    assert_eq!(bounds(s).await, (1, 4), "append_replaces_suffix: old tail removed");
    assert_eq!(s.term(2).await, Ok(1));
    assert_eq!(s.term(3).await, Ok(2));
    assert_eq!(s.entries(3, 5).await, Ok(entries(2, 3, 4)));
}

async fn truncate_removes_suffix(s: &impl Storage) {
    s.append(&entries(1, 1, 5)).await.expect("truncate_removes_suffix: append");
    s.truncate(4).await.expect("truncate_removes_suffix: truncate");
    assert_eq!(bounds(s).await, (1, 3), "truncate_removes_suffix: bounds");
    s.truncate(10).await.expect("truncate_removes_suffix: past the end is a no-op");
    assert_eq!(bounds(s).await, (1, 3));
    s.append(&entries(3, 4, 4)).await.expect("truncate_removes_suffix: append after truncate");
    assert_eq!(s.term(4).await, Ok(3));
}

async fn reads_out_of_range(s: &impl Storage) {
    s.append(&entries(1, 1, 3)).await.expect("reads_out_of_range: append");
    for (from, to) in [(0, 2), (2, 5), (4, 5), (3, 2)] {
        let r = s.entries(from, to).await;
        assert!(
            matches!(r, Err(StorageError::OutOfRange { .. })),
            "reads_out_of_range: {from}..{to} gave {r:?}"
        );
    }
    let r = s.term(4).await;
    assert!(matches!(r, Err(StorageError::OutOfRange { .. })), "reads_out_of_range: term(4) gave {r:?}");
}

async fn snapshot_with_matching_log_keeps_it(s: &impl Storage) {
    s.append(&entries(1, 1, 10)).await.expect("snapshot_keeps: append");
    s.save_snapshot(snapshot(1, 5)).await.expect("snapshot_keeps: save");
    assert_eq!(s.load_snapshot().await, Ok(Some(snapshot(1, 5))), "snapshot_keeps: load");
    let st = s.initial_state().await.expect("snapshot_keeps: initial_state");
    assert_eq!(st.snapshot, Some(snapshot(1, 5).meta));
    assert_eq!(st.last_index, 10, "snapshot_keeps: matching log kept");
    assert_eq!(s.entries(6, 11).await, Ok(entries(1, 6, 10)));
    assert_eq!(s.term(5).await, Ok(1));
}

async fn snapshot_past_the_log_discards_it(s: &impl Storage) {
    s.append(&entries(1, 1, 3)).await.expect("snapshot_past: append");
    s.save_snapshot(snapshot(2, 20)).await.expect("snapshot_past: save");
    let st = s.initial_state().await.expect("snapshot_past: initial_state");
    assert_eq!((st.first_index, st.last_index), (21, 20), "snapshot_past: log restarts after it");
    assert_eq!(s.term(20).await, Ok(2), "snapshot_past: term at the snapshot index");
    s.append(&entries(2, 21, 22)).await.expect("snapshot_past: append after snapshot");
    let err = s.append(&entries(2, 20, 20)).await;
    assert!(matches!(err, Err(StorageError::NotContiguous { .. })), "snapshot_past: covered index {err:?}");
}

async fn snapshot_with_conflicting_log_discards_it(s: &impl Storage) {
    s.append(&entries(1, 1, 10)).await.expect("snapshot_conflict: append");
    s.save_snapshot(snapshot(3, 5)).await.expect("snapshot_conflict: save");
    let st = s.initial_state().await.expect("snapshot_conflict: initial_state");
    assert_eq!((st.first_index, st.last_index), (6, 5), "snapshot_conflict: log discarded");
    assert_eq!(s.term(5).await, Ok(3));
}

/// The driver saves its own snapshot in the background while it goes on appending: both writes
/// must land, each seeing the other's effect, and compaction behind the snapshot must work.
async fn snapshot_saved_beside_appends(s: &impl Storage) {
    s.append(&entries(1, 1, 10)).await.expect("snapshot_beside_appends: append");
    // Large enough to take a while to write, in many chunks.
    let chunks = (0..64).map(|i| Bytes::from(vec![i as u8; 64 * 1024]));
    let big = Snapshot {
        meta: SnapshotMeta { last_log_id: LogId::new(1, 8), membership: Membership::with_voters([1, 2, 3]) },
        data: crate::storage::SnapshotData::from_chunks(chunks),
    };
    let appends = async {
        for i in 11..=60 {
            s.append(&entries(1, i, i)).await.expect("snapshot_beside_appends: append beside the save");
            tokio::task::yield_now().await;
        }
    };
    let save = async { s.save_snapshot(big.clone()).await.expect("snapshot_beside_appends: save") };
    tokio::join!(appends, save);
    let st = s.initial_state().await.expect("snapshot_beside_appends: initial_state");
    assert_eq!(st.snapshot, Some(big.meta.clone()), "snapshot_beside_appends: the snapshot is recorded");
    assert_eq!((st.first_index, st.last_index), (1, 60), "snapshot_beside_appends: no append is lost");
    s.compact(8).await.expect("snapshot_beside_appends: compact behind the snapshot");
    assert_eq!(bounds(s).await, (9, 60), "snapshot_beside_appends: bounds after compaction");
    s.append(&entries(1, 61, 61)).await.expect("snapshot_beside_appends: append after");
    assert_eq!(s.load_snapshot().await, Ok(Some(big)), "snapshot_beside_appends: the data is intact");
    assert_eq!(s.entries(9, 62).await.map(|e| e.len()), Ok(53));
}

/// The driver saves its own snapshot from the state machine's source and later sends it by
/// reading parts of it.
async fn snapshot_written_from_a_source_and_read_in_parts(s: &impl Storage) {
    s.append(&entries(1, 1, 10)).await.expect("snapshot_parts: append");
    let bytes: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let meta = SnapshotMeta { last_log_id: LogId::new(1, 6), membership: Membership::with_voters([1, 2, 3]) };
    let source = Box::new(crate::fsm::BufferSource::new(bytes.clone()));
    let len = s.save_snapshot_from(meta.clone(), source, 64 * 1024).await.expect("snapshot_parts: save");
    assert_eq!(len, bytes.len() as u64, "snapshot_parts: the size saved");
    let loaded = s.load_snapshot().await.expect("snapshot_parts: load").expect("snapshot_parts: a snapshot");
    assert_eq!((loaded.meta.clone(), loaded.data.to_bytes().to_vec()), (meta.clone(), bytes.clone()));
    assert_eq!(bounds(s).await, (1, 10), "snapshot_parts: the log holding its entry is kept");
    // Read back in parts of odd sizes, as a transfer does, from wherever the last part ended.
    let mut read = Vec::new();
    while read.len() < bytes.len() {
        let part = s.read_snapshot_chunk(meta.last_log_id, read.len() as u64, 40_000).await;
        let part = part.expect("snapshot_parts: read").expect("snapshot_parts: the snapshot is held");
        assert!(!part.is_empty() && part.len() <= 40_000, "snapshot_parts: a part of {} bytes", part.len());
        read.extend_from_slice(&part);
    }
    assert_eq!(read, bytes, "snapshot_parts: the parts make the snapshot");
    let end = s.read_snapshot_chunk(meta.last_log_id, bytes.len() as u64, 10).await;
    assert_eq!(end.expect("snapshot_parts: read at the end").map(|b| b.len()), Some(0));
    let other = s.read_snapshot_chunk(LogId::new(1, 5), 0, 10).await.expect("snapshot_parts: read");
    assert_eq!(other, None, "snapshot_parts: a snapshot never stored is not served");
    // Replaced, the old one is served intact for a while or not at all, never wrongly.
    s.save_snapshot(snapshot(1, 8)).await.expect("snapshot_parts: save a newer one");
    if let Some(part) =
        s.read_snapshot_chunk(meta.last_log_id, 1_000, 100).await.expect("snapshot_parts: read")
    {
        assert_eq!(&part[..], &bytes[1_000..1_000 + part.len()], "snapshot_parts: the replaced one, intact");
    }
}

/// A snapshot received from the leader is staged part by part and becomes the snapshot only
/// when saved (a store without staging answers `Unsupported`, and the case ends there).
async fn staged_parts_become_the_snapshot_only_when_saved(s: &impl Storage) {
    s.append(&entries(1, 1, 10)).await.expect("staged: append");
    let meta = SnapshotMeta { last_log_id: LogId::new(2, 20), membership: Membership::with_voters([1, 2]) };
    let other = SnapshotMeta { last_log_id: LogId::new(2, 21), ..meta.clone() };
    let part = |b: &'static [u8]| Bytes::from_static(b);
    match s.stage_snapshot_part(3, &meta, 0, part(b"abc")).await {
        Err(StorageError::Unsupported(_)) => return,
        started => started.expect("staged: the first part"),
    }
    s.stage_snapshot_part(3, &meta, 3, part(b"defg")).await.expect("staged: the second part");
    assert_eq!(s.load_snapshot().await, Ok(None), "staged: parts are not a snapshot");
    assert_eq!(bounds(s).await, (1, 10), "staged: the log is untouched");
    let staged = s.initial_state().await.expect("staged: initial state").staged;
    assert!(
        staged.is_none() || staged == Some(StagedSnapshot { term: 3, meta: meta.clone(), len: 7 }),
        "staged: what a restart would resume from, if the store keeps it: {staged:?}"
    );
    let gap = s.stage_snapshot_part(3, &meta, 9, part(b"x")).await;
    assert!(
        matches!(gap, Err(StorageError::NotStaged { offset: 9, .. })),
        "staged: a gap is refused: {gap:?}"
    );
    let foreign = s.stage_snapshot_part(3, &other, 7, part(b"x")).await;
    assert!(
        matches!(foreign, Err(StorageError::NotStaged { .. })),
        "staged: another snapshot's part: {foreign:?}"
    );
    let other_leader = s.stage_snapshot_part(4, &meta, 7, part(b"x")).await;
    assert!(
        matches!(other_leader, Err(StorageError::NotStaged { .. })),
        "staged: a part of the same snapshot from another term's leader (its bytes may differ): {other_leader:?}"
    );
    // The transfer starts over (a new leader): offset 0 drops what was staged.
    s.stage_snapshot_part(4, &meta, 0, part(b"xyz")).await.expect("staged: start over");
    s.stage_snapshot_part(4, &meta, 3, part(b"uvw")).await.expect("staged: continue");
    let short = s.save_staged_snapshot(&meta, 5).await;
    assert!(
        matches!(short, Err(StorageError::NotStaged { .. })),
        "staged: a wrong length is refused: {short:?}"
    );
    assert_eq!(s.load_snapshot().await, Ok(None), "staged: a refused save stores nothing");
    s.save_staged_snapshot(&meta, 6).await.expect("staged: save");
    let loaded = s.load_snapshot().await.expect("staged: load").expect("staged: the snapshot");
    assert_eq!((loaded.meta.clone(), loaded.data.to_bytes()), (meta.clone(), Bytes::from_static(b"xyzuvw")));
    assert_eq!(s.snapshot_meta().await, Ok(Some((meta.clone(), 6))), "staged: its metadata and size");
    assert_eq!(bounds(s).await, (21, 20), "staged: the log it does not continue is dropped");
    let part = s.read_snapshot_chunk(meta.last_log_id, 2, 3).await.expect("staged: read").unwrap_or_default();
    assert!(
        !part.is_empty() && b"zuv".starts_with(&part),
        "staged: served in parts like any snapshot: {part:?}"
    );
    let staged = s.initial_state().await.expect("staged: initial state").staged;
    assert_eq!(staged, None, "staged: nothing to resume after the save");
    let again = s.save_staged_snapshot(&meta, 6).await;
    assert!(
        matches!(again, Err(StorageError::NotStaged { .. })),
        "staged: nothing is staged after a save: {again:?}"
    );
}

async fn older_snapshot_is_ignored(s: &impl Storage) {
    s.save_snapshot(snapshot(2, 20)).await.expect("older_snapshot: save new");
    s.save_snapshot(snapshot(1, 10)).await.expect("older_snapshot: save old");
    assert_eq!(s.load_snapshot().await, Ok(Some(snapshot(2, 20))), "older_snapshot: newest kept");
}

async fn compact_removes_prefix(s: &impl Storage) {
    s.append(&entries(1, 1, 10)).await.expect("compact: append");
    s.save_snapshot(snapshot(1, 6)).await.expect("compact: snapshot");
    s.compact(4).await.expect("compact: compact");
    assert_eq!(bounds(s).await, (5, 10), "compact: bounds");
    let r = s.entries(4, 6).await;
    assert!(matches!(r, Err(StorageError::OutOfRange { .. })), "compact: compacted read gave {r:?}");
    assert_eq!(s.entries(5, 11).await.map(|e| e.len()), Ok(6));
    s.compact(6).await.expect("compact: up to the snapshot");
    assert_eq!(bounds(s).await, (7, 10));
    assert_eq!(s.term(6).await, Ok(1), "compact: term at the snapshot index stays known");
}

async fn compact_past_snapshot_is_refused(s: &impl Storage) {
    s.append(&entries(1, 1, 10)).await.expect("compact_past: append");
    s.save_snapshot(snapshot(1, 3)).await.expect("compact_past: snapshot");
    let r = s.compact(5).await;
    assert!(matches!(r, Err(StorageError::OutOfRange { .. })), "compact_past: gave {r:?}");
    assert_eq!(bounds(s).await, (1, 10), "compact_past: nothing removed");
}

async fn large_entries_round_trip(s: &impl Storage) {
    let big = Entry { term: 1, index: 1, payload: EntryPayload::Command(Bytes::from(vec![0xAB; 4 << 20])) };
    s.append(std::slice::from_ref(&big)).await.expect("large_entries: append");
    assert_eq!(s.entries(1, 2).await, Ok(vec![big]), "large_entries: read back");
}
