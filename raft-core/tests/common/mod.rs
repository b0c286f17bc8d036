//! Test kit shared by the driver's integration tests.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use raft_core::{
    Entry, HardState, Index, InitialState, LogId, Snapshot, SnapshotMeta, Storage, StorageError, Term,
};
use raft_storage_mem::MemStorage;

/// A memory store whose reads can be made slow or failing, and which counts them.
#[derive(Default)]
pub struct SlowReads {
    pub inner: MemStorage,
    /// Delay of each `entries` call, in ms (0: none).
    pub delay_ms: AtomicU64,
    /// The most payload bytes returned by one `entries` call.
    pub largest_read: AtomicU64,
    /// `entries` fails (a damaged log record) while set.
    pub fail_reads: std::sync::atomic::AtomicBool,
    /// Delay of each `read_snapshot_chunk` call, in ms (0: none).
    pub chunk_delay_ms: AtomicU64,
    /// Delay of each `compact` call, in ms (0: none), and the calls.
    pub compact_delay_ms: AtomicU64,
    pub compact_calls: AtomicU64,
    /// Calls of `entries` and of `read_snapshot_chunk`.
    pub entries_calls: AtomicU64,
    pub chunk_calls: AtomicU64,
}

#[async_trait]
impl Storage for SlowReads {
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
        self.entries_calls.fetch_add(1, Ordering::Relaxed);
        if self.fail_reads.load(Ordering::Relaxed) {
            return Err(StorageError::Corrupt(format!("log entry {from} is damaged")));
        }
        let delay = self.delay_ms.load(Ordering::Relaxed);
        if delay > 0 {
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
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
    async fn load_snapshot(&self) -> Result<Option<Snapshot>, StorageError> {
        self.inner.load_snapshot().await
    }
    async fn read_snapshot_chunk(
        &self,
        last: LogId,
        offset: u64,
        max: usize,
    ) -> Result<Option<Bytes>, StorageError> {
        self.chunk_calls.fetch_add(1, Ordering::Relaxed);
        let delay = self.chunk_delay_ms.load(Ordering::Relaxed);
        if delay > 0 {
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
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
