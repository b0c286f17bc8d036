//! Outside review of the log writer (fixed in aee96a0): a shutdown on a full disk must not
//! wait for good on a lock that the log write under way holds in the store.
//!
//! The driver's log writer is a future that the driver polls: a storage call such as `append`
//! makes progress only while it is polled. The RocksDB store's `append` holds an async lock
//! while it waits for its writer thread, and its snapshot commit and `compact` take the same
//! lock. Before the fix, a shutdown while a write waited for space skipped draining the
//! writes, waited for the snapshot task, and only then polled the writer. The snapshot task
//! waited for the lock, the lock's holder (the append) was never polled again, and the
//! shutdown never ended. The fix closes the writer first (a write waiting for space then
//! gives up), and only then waits for the snapshot task.
//!
//! The store below copies that locking onto `MemStorage`, with gates the test opens, so each
//! step happens in a known order (no sleep decides the outcome).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use raft_core::testing::counter::CounterFsm;
use raft_core::testing::local_transport::LocalNetwork;
use raft_core::{
    Config, Entry, HardState, Index, InitialState, Membership, RaftNode, Snapshot, SnapshotMeta,
    SnapshotSource, Storage, StorageError, Term,
};
use raft_storage_mem::MemStorage;
use tokio::sync::{Mutex, Semaphore};

/// MemStorage locked like the RocksDB store: `append` holds `bounds_lock` while its "writer
/// thread" answers (a permit of `answers`, handed out by the test), and on a full disk it
/// answers `Full`; the snapshot commit and `compact` take the same lock.
struct LockingStore {
    inner: MemStorage,
    bounds_lock: Mutex<()>,
    /// The disk is full: appends fail with `Full` (once answered).
    full: AtomicBool,
    /// One permit per answer of the writer thread to an append on the full disk.
    answers: Semaphore,
    /// Appends tried on the full disk.
    full_appends: AtomicUsize,
    /// An append holds the lock, waiting for its answer.
    append_holds_lock: AtomicBool,
    /// The snapshot task reached the store.
    snapshot_arrived: AtomicBool,
    /// Opened by the test: the snapshot task goes on to take the lock.
    snapshot_gate: Semaphore,
    /// The snapshot task waits for the lock (or has it).
    snapshot_waits_for_lock: AtomicBool,
}

impl Default for LockingStore {
    fn default() -> Self {
        Self {
            inner: MemStorage::default(),
            bounds_lock: Mutex::new(()),
            full: AtomicBool::new(false),
            answers: Semaphore::new(0),
            full_appends: AtomicUsize::new(0),
            append_holds_lock: AtomicBool::new(false),
            snapshot_arrived: AtomicBool::new(false),
            snapshot_gate: Semaphore::new(0),
            snapshot_waits_for_lock: AtomicBool::new(false),
        }
    }
}

#[async_trait]
impl Storage for LockingStore {
    async fn initial_state(&self) -> Result<InitialState, StorageError> {
        self.inner.initial_state().await
    }
    async fn save_hard_state(&self, hard_state: HardState) -> Result<(), StorageError> {
        self.inner.save_hard_state(hard_state).await
    }
    async fn append(&self, entries: &[Entry]) -> Result<(), StorageError> {
        let _bounds = self.bounds_lock.lock().await;
        if !self.full.load(Ordering::SeqCst) {
            return self.inner.append(entries).await;
        }
        self.full_appends.fetch_add(1, Ordering::SeqCst);
        self.append_holds_lock.store(true, Ordering::SeqCst);
        // The writer thread's answer, waited for with the lock held.
        self.answers.acquire().await.expect("the semaphore is never closed").forget();
        self.append_holds_lock.store(false, Ordering::SeqCst);
        Err(StorageError::Full)
    }
    async fn truncate(&self, from: Index) -> Result<(), StorageError> {
        self.inner.truncate(from).await
    }
    async fn entries(&self, from: Index, to: Index) -> Result<Vec<Entry>, StorageError> {
        self.inner.entries(from, to).await
    }
    async fn term(&self, index: Index) -> Result<Term, StorageError> {
        self.inner.term(index).await
    }
    async fn save_snapshot(&self, snapshot: Snapshot) -> Result<(), StorageError> {
        self.snapshot_waits_for_lock.store(true, Ordering::SeqCst);
        let _bounds = self.bounds_lock.lock().await;
        self.inner.save_snapshot(snapshot).await
    }
    async fn save_snapshot_from(
        &self,
        meta: SnapshotMeta,
        source: Box<dyn SnapshotSource>,
        chunk_bytes: usize,
    ) -> Result<u64, StorageError> {
        // The snapshot task is in flight; it goes on when the test says so.
        self.snapshot_arrived.store(true, Ordering::SeqCst);
        self.snapshot_gate.acquire().await.expect("the semaphore is never closed").forget();
        self.snapshot_waits_for_lock.store(true, Ordering::SeqCst);
        let _bounds = self.bounds_lock.lock().await;
        self.inner.save_snapshot_from(meta, source, chunk_bytes).await
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
        self.inner.stage_snapshot_part(term, meta, offset, data).await
    }
    async fn save_staged_snapshot(&self, meta: &SnapshotMeta, len: u64) -> Result<(), StorageError> {
        self.inner.save_staged_snapshot(meta, len).await
    }
    async fn discard_staged_snapshot(&self) -> Result<(), StorageError> {
        self.inner.discard_staged_snapshot().await
    }
    async fn compact(&self, up_to: Index) -> Result<(), StorageError> {
        let _bounds = self.bounds_lock.lock().await;
        self.inner.compact(up_to).await
    }
}

/// Waits (polling, up to 10 s) until `done` holds.
async fn until(what: &str, done: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shutdown_on_a_full_disk_ends_while_the_snapshot_task_waits_for_the_stores_lock() {
    let config = Config { snapshot_threshold_entries: 5, snapshot_keep_entries: 1, ..Config::default() };
    let network = LocalNetwork::default();
    let store = Arc::new(LockingStore::default());
    let node = Arc::new(
        RaftNode::start(
            1,
            config,
            Membership::with_voters(1..=1),
            store.clone(),
            Arc::new(network.transport(1, 4_096)),
            Box::new(CounterFsm::default()),
            raft_core::fresh_seed(),
        )
        .await
        .expect("start"),
    );
    until("node 1 leads", || node.status().protocol.role == raft_core::Role::Leader).await;

    // Enough entries for a snapshot (5, plus up to a quarter of jitter): its task starts and
    // stops at the store's door.
    for i in 0..10 {
        node.propose(Bytes::from(format!("cmd{i}"))).await.expect("applied");
    }
    until("the snapshot task reaches the store", || store.snapshot_arrived.load(Ordering::SeqCst)).await;

    // The disk fills; one more entry is proposed. Its append takes the lock and is answered
    // `Full` once: the writer now waits for space, and tries again (holding the lock).
    store.full.store(true, Ordering::SeqCst);
    let proposal = tokio::spawn({
        let node = node.clone();
        async move { node.propose(Bytes::from_static(b"on a full disk")).await }
    });
    until("the append holds the lock", || store.append_holds_lock.load(Ordering::SeqCst)).await;
    store.answers.add_permits(1);
    until("the append, tried again, holds the lock", || {
        store.full_appends.load(Ordering::SeqCst) >= 2 && store.append_holds_lock.load(Ordering::SeqCst)
    })
    .await;

    // The snapshot task goes on to the store's snapshot commit and waits for the lock.
    store.snapshot_gate.add_permits(1);
    until("the snapshot task waits for the lock", || store.snapshot_waits_for_lock.load(Ordering::SeqCst))
        .await;
    assert!(store.append_holds_lock.load(Ordering::SeqCst), "the append still holds the lock");

    // The shutdown: once the pending proposal is failed, the driver has left its event loop
    // and polls the append again only if the shutdown does so itself. Only then does the
    // writer thread answer (the append is ready, but needs a poll to let go of the lock).
    let shutdown = tokio::spawn({
        let node = node.clone();
        async move { node.shutdown().await }
    });
    let outcome = tokio::time::timeout(Duration::from_secs(10), proposal)
        .await
        .expect("the proposal on the full disk is answered at the shutdown")
        .expect("the proposal's task");
    assert!(outcome.is_err(), "the proposal on the full disk was not carried out: {outcome:?}");
    store.answers.add_permits(1);

    let ended = tokio::time::timeout(Duration::from_secs(10), shutdown).await;
    assert!(
        ended.is_ok(),
        "the shutdown did not end in 10 s: the snapshot task waits for the store's lock, which \
         the log write holds and nothing polls any more (append still holds it: {})",
        store.append_holds_lock.load(Ordering::SeqCst)
    );
    ended.expect("ended").expect("the shutdown's task").expect("shutdown");
}
