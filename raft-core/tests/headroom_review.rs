//! Outside review of 31dace5 (the store's headroom): a follower that fell behind the leader's
//! compacted log catches up by snapshot. Its disk is full, but its store keeps headroom that
//! would let the snapshot through (issue 15: "enough headroom reserved that catch-up after a
//! full disk succeeds"). The driver frees the headroom for log writes and a snapshot's
//! install, but did not for the reception (staging) of the snapshot's parts, which is where
//! a catch-up by snapshot writes its bytes (fixed: it does now).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use raft_core::testing::counter::CounterFsm;
use raft_core::testing::local_transport::LocalNetwork;
use raft_core::{
    Config, Entry, HardState, Index, InitialState, Membership, NodeId, RaftNode, Snapshot, SnapshotMeta,
    Storage, StorageError, Term,
};
use raft_storage_mem::MemStorage;

/// MemStorage on a full disk with headroom: every write fails with `Full` until the headroom
/// is released (which frees enough room for everything after).
#[derive(Default)]
struct FullWithHeadroom {
    inner: MemStorage,
    full: AtomicBool,
    held: AtomicBool,
    in_use: AtomicBool,
    /// A staged part was refused with `Full`.
    staging_refused: AtomicBool,
    /// Only snapshot files are refused (log writes land in RocksDB's preallocated WAL).
    only_snapshots: AtomicBool,
}

impl FullWithHeadroom {
    fn check(&self) -> Result<(), StorageError> {
        if self.full.load(Ordering::SeqCst) && !self.only_snapshots.load(Ordering::SeqCst) {
            Err(StorageError::Full)
        } else {
            Ok(())
        }
    }
}

#[async_trait]
impl Storage for FullWithHeadroom {
    async fn initial_state(&self) -> Result<InitialState, StorageError> {
        self.inner.initial_state().await
    }
    async fn save_hard_state(&self, hard_state: HardState) -> Result<(), StorageError> {
        self.check()?;
        self.inner.save_hard_state(hard_state).await
    }
    async fn append(&self, entries: &[Entry]) -> Result<(), StorageError> {
        self.check()?;
        self.inner.append(entries).await
    }
    async fn truncate(&self, from: Index) -> Result<(), StorageError> {
        self.check()?;
        self.inner.truncate(from).await
    }
    async fn entries(&self, from: Index, to: Index) -> Result<Vec<Entry>, StorageError> {
        self.inner.entries(from, to).await
    }
    async fn term(&self, index: Index) -> Result<Term, StorageError> {
        self.inner.term(index).await
    }
    async fn save_snapshot(&self, snapshot: Snapshot) -> Result<(), StorageError> {
        if self.full.load(Ordering::SeqCst) {
            return Err(StorageError::Full);
        }
        self.inner.save_snapshot(snapshot).await
    }
    async fn load_snapshot(&self) -> Result<Option<Snapshot>, StorageError> {
        self.inner.load_snapshot().await
    }
    async fn stage_snapshot_part(
        &self,
        term: Term,
        meta: &SnapshotMeta,
        offset: u64,
        data: Bytes,
    ) -> Result<(), StorageError> {
        if self.full.load(Ordering::SeqCst) {
            self.staging_refused.store(true, Ordering::SeqCst);
            return Err(StorageError::Full);
        }
        self.inner.stage_snapshot_part(term, meta, offset, data).await
    }
    async fn save_staged_snapshot(&self, meta: &SnapshotMeta, len: u64) -> Result<(), StorageError> {
        if self.full.load(Ordering::SeqCst) {
            return Err(StorageError::Full);
        }
        self.inner.save_staged_snapshot(meta, len).await
    }
    async fn discard_staged_snapshot(&self) -> Result<(), StorageError> {
        self.inner.discard_staged_snapshot().await
    }
    async fn compact(&self, up_to: Index) -> Result<(), StorageError> {
        self.check()?;
        self.inner.compact(up_to).await
    }
    fn release_headroom(&self) -> bool {
        if !self.held.swap(false, Ordering::SeqCst) {
            return false;
        }
        self.in_use.store(true, Ordering::SeqCst);
        self.full.store(false, Ordering::SeqCst);
        true
    }
    fn headroom_in_use(&self) -> bool {
        self.in_use.load(Ordering::SeqCst)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_behind_a_compacted_log_catches_up_by_snapshot_in_its_headroom() {
    catch_up_by_snapshot(false).await;
}

/// As on the RocksDB store: small log and hard-state writes still fit in the write-ahead log
/// RocksDB preallocated, a snapshot file being received does not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_catches_up_by_snapshot_in_its_headroom_when_only_snapshot_files_hit_the_full_disk() {
    catch_up_by_snapshot(true).await;
}

async fn catch_up_by_snapshot(only_snapshots: bool) {
    // Parts smaller than the snapshot (as a real state machine's is, in 512 KiB parts).
    let config = Config {
        snapshot_threshold_entries: 50,
        snapshot_keep_entries: 10,
        snapshot_chunk_bytes: 2,
        ..Config::default()
    };
    let network = LocalNetwork::default();
    let initial = Membership::with_voters(1..=3);
    let storages: BTreeMap<NodeId, Arc<FullWithHeadroom>> =
        (1..=3).map(|id| (id, Arc::new(FullWithHeadroom::default()))).collect();
    let start = |id: NodeId, fsm: CounterFsm| {
        RaftNode::start(
            id,
            config.clone(),
            initial.clone(),
            storages[&id].clone(),
            Arc::new(network.transport(id, 4_096)),
            Box::new(fsm),
            raft_core::fresh_seed(),
        )
    };
    let mut nodes = BTreeMap::new();
    for id in 1..=3 {
        nodes.insert(id, start(id, CounterFsm::default()).await.expect("start"));
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let leader = loop {
        if let Some(l) = nodes.values().find(|n| n.status().protocol.role == raft_core::Role::Leader) {
            break l.status().protocol.id;
        }
        assert!(tokio::time::Instant::now() < deadline, "no leader");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let follower = (1..=3).find(|id| *id != leader).expect("a follower");
    nodes[&leader].propose(Bytes::from_static(b"first")).await.expect("applied");
    nodes.remove(&follower).expect("running").shutdown().await.expect("shutdown");
    let mut last = 0;
    for i in 0..120 {
        last = nodes[&leader].propose(Bytes::from(format!("cmd{i}"))).await.expect("applied").log_id.index;
    }
    let first = storages[&leader].initial_state().await.expect("state").first_index;
    assert!(first > 2, "the leader compacted its log");
    // The follower comes back on a full disk, its store holding headroom.
    storages[&follower].held.store(true, Ordering::SeqCst);
    storages[&follower].full.store(true, Ordering::SeqCst);
    storages[&follower].only_snapshots.store(only_snapshots, Ordering::SeqCst);
    let fsm = CounterFsm::default();
    let node = start(follower, fsm.clone()).await.expect("restart");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while node.status().protocol.applied_index < last && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let applied = node.status().protocol.applied_index;
    let s = &storages[&follower];
    let (refused, held) = (s.staging_refused.load(Ordering::SeqCst), s.held.load(Ordering::SeqCst));
    node.shutdown().await.expect("shutdown");
    for (_, n) in nodes {
        n.shutdown().await.expect("shutdown");
    }
    assert!(
        applied >= last,
        "the follower did not catch up in 15 s (applied {applied} of {last}); staging refused on the \
         full disk: {refused}; headroom still held (never released): {held}"
    );
}
