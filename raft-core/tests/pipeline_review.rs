//! Outside review of issue 13 (on commit 208a52e): restart reads and event-loop stalls. Both
//! tests failed there: a restart read 64 MiB at once after small entries (the read's size was
//! guessed from the previous one's; it is now bounded by `Storage::entries_within`), and a
//! 600 ms compaction after a snapshot held the leader's proposals and cost an election (the
//! compaction ran on the event loop; it now runs beside it, concurrently with log writes).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use raft_core::testing::counter::CounterFsm;
use raft_core::testing::local_transport::LocalNetwork;
use raft_core::{
    Config, Entry, EntryPayload, HardState, Index, InitialState, LogId, Membership, NodeId, RaftNode, Role,
    Snapshot, SnapshotMeta, Storage, StorageError, Term,
};
use raft_storage_mem::MemStorage;

/// Memory storage that records its largest `entries` read and can make `compact` slow.
#[derive(Default)]
struct Probe {
    inner: MemStorage,
    largest_read: AtomicU64,
    compact_delay_ms: AtomicU64,
    compact_calls: AtomicU64,
}

#[async_trait]
impl Storage for Probe {
    async fn initial_state(&self) -> Result<InitialState, StorageError> {
        self.inner.initial_state().await
    }
    async fn save_hard_state(&self, hard_state: HardState) -> Result<(), StorageError> {
        self.inner.save_hard_state(hard_state).await
    }
    async fn append(&self, entries: &[Entry]) -> Result<(), StorageError> {
        self.inner.append(entries).await
    }
    async fn truncate(&self, from: Index) -> Result<(), StorageError> {
        self.inner.truncate(from).await
    }
    async fn entries(&self, from: Index, to: Index) -> Result<Vec<Entry>, StorageError> {
        let out = self.inner.entries(from, to).await?;
        let bytes = out.iter().map(|e| e.size_bytes() as u64).sum();
        self.largest_read.fetch_max(bytes, Ordering::Relaxed);
        Ok(out)
    }
    async fn term(&self, index: Index) -> Result<Term, StorageError> {
        self.inner.term(index).await
    }
    async fn save_snapshot(&self, snapshot: Snapshot) -> Result<(), StorageError> {
        self.inner.save_snapshot(snapshot).await
    }
    async fn save_snapshot_from(
        &self,
        meta: SnapshotMeta,
        source: Box<dyn raft_core::SnapshotSource>,
        chunk_bytes: usize,
    ) -> Result<u64, StorageError> {
        self.inner.save_snapshot_from(meta, source, chunk_bytes).await
    }
    async fn load_snapshot(&self) -> Result<Option<Snapshot>, StorageError> {
        self.inner.load_snapshot().await
    }
    async fn read_snapshot_chunk(
        &self,
        last: LogId,
        offset: u64,
        max: usize,
    ) -> Result<Option<Bytes>, StorageError> {
        self.inner.read_snapshot_chunk(last, offset, max).await
    }
    async fn stage_snapshot_part(
        &self,
        term: Term,
        meta: &SnapshotMeta,
        offset: u64,
        data: Bytes,
    ) -> Result<(), StorageError> {
        self.inner.stage_snapshot_part(term, meta, offset, data).await
    }
    async fn save_staged_snapshot(&self, meta: &SnapshotMeta, len: u64) -> Result<(), StorageError> {
        self.inner.save_staged_snapshot(meta, len).await
    }
    async fn discard_staged_snapshot(&self) -> Result<(), StorageError> {
        self.inner.discard_staged_snapshot().await
    }
    async fn snapshot_meta(&self) -> Result<Option<(SnapshotMeta, u64)>, StorageError> {
        self.inner.snapshot_meta().await
    }
    async fn compact(&self, up_to: Index) -> Result<(), StorageError> {
        self.compact_calls.fetch_add(1, Ordering::Relaxed);
        let delay = self.compact_delay_ms.load(Ordering::Relaxed);
        if delay > 0 {
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
        self.inner.compact(up_to).await
    }
}

fn command(term: Term, index: Index, len: usize) -> Entry {
    Entry { term, index, payload: EntryPayload::Command(Bytes::from(vec![b'x'; len])) }
}

/// The restart's `read_log` sizes each read by the *average size of the previous read*: a
/// run of small entries (deletes, no-ops, small puts) followed by large ones makes the next
/// read `max_entries_per_append` large entries at once, whatever `max_bytes_per_append` says.
/// The doc claims "At most the cache and one read [of about read_bytes] are in memory at once".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_read_after_small_entries_overshoots_the_read_bound() {
    let config = Config {
        log_cache_bytes: 1024 * 1024,
        max_bytes_per_append: 1024 * 1024,
        snapshot_threshold_entries: 0,
        snapshot_threshold_bytes: 0,
        ..Config::default()
    };
    let storage = Arc::new(Probe::default());
    storage.save_hard_state(HardState { current_term: 1, voted_for: None }).await.unwrap();
    // 16 tiny entries, then 1,024 entries of 64 KiB (64 MiB in all).
    let mut entries: Vec<Entry> = (1..=16).map(|i| command(1, i, 1)).collect();
    entries.extend((17..=16 + 1024).map(|i| command(1, i, 64 * 1024)));
    storage.append(&entries).await.unwrap();
    drop(entries);
    storage.largest_read.store(0, Ordering::Relaxed);
    let network = LocalNetwork::default();
    let node = RaftNode::start(
        1,
        config.clone(),
        Membership::with_voters([1, 2, 3]),
        storage.clone(),
        Arc::new(network.transport(1, 4_096)),
        Box::new(CounterFsm::default()),
        7,
    )
    .await
    .expect("node starts");
    let largest = storage.largest_read.load(Ordering::Relaxed);
    node.shutdown().await.expect("shutdown");
    let bound = 2 * config.max_bytes_per_append as u64 + 64 * 1024;
    assert!(
        largest <= bound,
        "one restart read returned {largest} bytes ({} MiB); reads are meant to be about \
         max_bytes_per_append = {} bytes (bound used: {bound})",
        largest / (1024 * 1024),
        config.max_bytes_per_append
    );
}

struct Cluster {
    network: LocalNetwork,
    config: Config,
    storages: BTreeMap<NodeId, Arc<Probe>>,
    nodes: BTreeMap<NodeId, Arc<RaftNode>>,
}

impl Cluster {
    async fn new(n: u64, config: Config) -> Self {
        let mut c = Self {
            network: LocalNetwork::default(),
            config,
            storages: BTreeMap::new(),
            nodes: BTreeMap::new(),
        };
        for id in 1..=n {
            c.storages.insert(id, Arc::new(Probe::default()));
            let raft = RaftNode::start(
                id,
                c.config.clone(),
                Membership::with_voters(1..=n),
                c.storages[&id].clone(),
                Arc::new(c.network.transport(id, 4_096)),
                Box::new(CounterFsm::default()),
                raft_core::fresh_seed(),
            )
            .await
            .expect("node starts");
            c.nodes.insert(id, Arc::new(raft));
        }
        c
    }

    async fn leader(&self) -> NodeId {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let statuses: Vec<_> = self.nodes.values().map(|n| n.status().protocol).collect();
            if let Some(l) = statuses.iter().filter(|s| s.role == Role::Leader).max_by_key(|s| s.term) {
                if statuses.iter().all(|s| s.leader == Some(l.id)) {
                    return l.id;
                }
            }
            assert!(Instant::now() < deadline, "no leader");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn shutdown(&mut self) {
        for (_, n) in std::mem::take(&mut self.nodes) {
            let _ = n.shutdown().await;
        }
    }
}

/// After a snapshot is written in the background, `on_snapshot_written` runs on the event
/// loop and awaits, inline: every queued log write (`drain_writes`), `Storage::initial_state`
/// and `Storage::compact`. A compaction that takes 600 ms (deleting a large range of a
/// RocksDB log; a busy disk) holds the leader's heartbeats and proposals for as long.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_compaction_after_a_snapshot_stalls_the_leader() {
    let config = Config {
        snapshot_threshold_entries: 200,
        snapshot_threshold_bytes: 0,
        snapshot_keep_entries: 10,
        ..Config::default()
    };
    let mut c = Cluster::new(3, config.clone()).await;
    let leader = c.leader().await;
    let delay: u64 =
        std::env::var("REVIEW13_COMPACT_DELAY_MS").ok().and_then(|v| v.parse().ok()).unwrap_or(600);
    c.storages[&leader].compact_delay_ms.store(delay, Ordering::Relaxed);
    let follower = *c.nodes.keys().find(|id| **id != leader).expect("a follower");
    let watcher = c.nodes[&follower].clone();
    let watching = Arc::new(AtomicBool::new(true));
    let watch = {
        let watching = watching.clone();
        tokio::spawn(async move {
            let mut lost = false;
            while watching.load(Ordering::Relaxed) {
                lost |= watcher.status().protocol.leader != Some(leader);
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            lost
        })
    };
    let node = c.nodes[&leader].clone();
    let started = Instant::now();
    let mut worst = Duration::ZERO;
    while started.elapsed() < Duration::from_secs(4)
        && c.storages[&leader].compact_calls.load(Ordering::Relaxed) < 2
    {
        let t = Instant::now();
        let _ = node.propose(Bytes::from_static(b"p")).await;
        worst = worst.max(t.elapsed());
    }
    watching.store(false, Ordering::Relaxed);
    let lost = watch.await.expect("watcher");
    let compactions = c.storages[&leader].compact_calls.load(Ordering::Relaxed);
    let term = c.nodes[&leader].status().protocol.term;
    c.shutdown().await;
    assert!(compactions > 0, "no compaction happened on the leader");
    assert!(
        worst < Duration::from_millis(config.election_timeout_min_ms) && !lost,
        "with a {delay} ms compaction on the leader ({compactions} compactions), a proposal took up \
         to {worst:?}; the follower lost its leader: {lost} (leader's term now {term})"
    );
}
