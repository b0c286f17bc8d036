//! # raft-storage-mem
//!
//! [`MemStorage`]: an in-memory [`Storage`] for tests, simulations and nodes that need no
//! durability. "Durable" here means "until the process exits"; it passes the same conformance
//! suite as every other store.
//!
//! ```
//! use raft_core::{Entry, EntryPayload, Storage};
//! use raft_storage_mem::MemStorage;
//!
//! # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
//! let store = MemStorage::default();
//! store.append(&[Entry { term: 1, index: 1, payload: EntryPayload::Blank }]).await.unwrap();
//! assert_eq!(store.initial_state().await.unwrap().last_index, 1);
//! # });
//! ```

use std::collections::VecDeque;
use std::sync::{Mutex, MutexGuard};

use async_trait::async_trait;
use bytes::Bytes;
use raft_core::{
    Entry, HardState, Index, InitialState, LogId, Snapshot, SnapshotMeta, SnapshotStage, Storage,
    StorageError, Term,
};

/// A [`Storage`] kept in memory.
#[derive(Debug, Default)]
pub struct MemStorage {
    inner: Mutex<Inner>,
}

#[derive(Debug, Clone)]
struct Inner {
    hard_state: HardState,
    snapshot: Option<Snapshot>,
    /// The index of `entries[0]`.
    first: Index,
    /// A ring: compaction drops the front without moving what stays.
    entries: VecDeque<Entry>,
    /// The parts of a snapshot being received, kept as they came.
    staged: SnapshotStage,
}

impl Default for Inner {
    fn default() -> Self {
        Self {
            hard_state: HardState::default(),
            snapshot: None,
            first: 1,
            entries: VecDeque::new(),
            staged: SnapshotStage::default(),
        }
    }
}

impl Inner {
    fn snapshot_last(&self) -> LogId {
        self.snapshot.as_ref().map_or(LogId::default(), |s| s.meta.last_log_id)
    }

    fn last_index(&self) -> Index {
        self.first + self.entries.len() as Index - 1
    }

    fn offset(&self, index: Index) -> usize {
        (index - self.first) as usize
    }

    fn out_of_range(&self, from: Index, to: Index) -> StorageError {
        StorageError::OutOfRange { from, to, first: self.first, last: self.last_index() }
    }
}

impl MemStorage {
    fn lock(&self) -> Result<MutexGuard<'_, Inner>, StorageError> {
        self.inner.lock().map_err(|_| StorageError::Poisoned)
    }
}

#[async_trait]
impl Storage for MemStorage {
    async fn initial_state(&self) -> Result<InitialState, StorageError> {
        let inner = self.lock()?;
        Ok(InitialState {
            hard_state: inner.hard_state,
            snapshot: inner.snapshot.as_ref().map(|s| s.meta.clone()),
            first_index: inner.first,
            last_index: inner.last_index(),
            lost: None,
            // A node restarted on the same store resumes a reception where it stopped.
            staged: inner.staged.staged(),
        })
    }

    async fn save_hard_state(&self, hard_state: HardState) -> Result<(), StorageError> {
        self.lock()?.hard_state = hard_state;
        Ok(())
    }

    async fn append(&self, entries: &[Entry]) -> Result<(), StorageError> {
        let Some(first) = entries.first() else { return Ok(()) };
        let mut inner = self.lock()?;
        let last = inner.last_index();
        let lowest = inner.first.max(inner.snapshot_last().index + 1);
        let contiguous = entries.windows(2).all(|w| w[1].index == w[0].index + 1);
        if first.index > last + 1 || first.index < lowest || !contiguous {
            return Err(StorageError::NotContiguous { got: first.index, last });
        }
        let keep = inner.offset(first.index);
        inner.entries.truncate(keep);
        inner.entries.extend(entries.iter().cloned());
        Ok(())
    }

    async fn truncate(&self, from: Index) -> Result<(), StorageError> {
        let mut inner = self.lock()?;
        if from <= inner.snapshot_last().index || from < inner.first {
            return Err(inner.out_of_range(from, from));
        }
        if from <= inner.last_index() {
            let keep = inner.offset(from);
            inner.entries.truncate(keep);
        }
        Ok(())
    }

    async fn entries(&self, from: Index, to: Index) -> Result<Vec<Entry>, StorageError> {
        let inner = self.lock()?;
        if from < inner.first || to > inner.last_index() + 1 || from > to {
            return Err(inner.out_of_range(from, to));
        }
        Ok(inner.entries.range(inner.offset(from)..inner.offset(to)).cloned().collect())
    }

    async fn entries_within(
        &self,
        from: Index,
        to: Index,
        max_bytes: usize,
    ) -> Result<Vec<Entry>, StorageError> {
        let inner = self.lock()?;
        if from < inner.first || to > inner.last_index() + 1 || from > to {
            return Err(inner.out_of_range(from, to));
        }
        let mut bytes = 0usize;
        let held = inner.entries.range(inner.offset(from)..inner.offset(to));
        Ok(held
            .take_while(|e| {
                let under = bytes < max_bytes || bytes == 0;
                bytes = bytes.saturating_add(e.size_bytes());
                under
            })
            .cloned()
            .collect())
    }

    async fn term(&self, index: Index) -> Result<Term, StorageError> {
        let inner = self.lock()?;
        let snap = inner.snapshot_last();
        if index == snap.index {
            return Ok(snap.term);
        }
        if index < inner.first || index > inner.last_index() {
            return Err(inner.out_of_range(index, index + 1));
        }
        Ok(inner.entries[inner.offset(index)].term)
    }

    async fn save_snapshot(&self, snapshot: Snapshot) -> Result<(), StorageError> {
        let mut inner = self.lock()?;
        let last = snapshot.meta.last_log_id;
        if last.index < inner.snapshot_last().index {
            // Older than the snapshot we have: keep ours.
            return Ok(());
        }
        let matches = last.index >= inner.first
            && last.index <= inner.last_index()
            && inner.entries[inner.offset(last.index)].term == last.term;
        if !matches {
            inner.entries.clear();
            inner.first = last.index + 1;
        }
        inner.snapshot = Some(snapshot);
        Ok(())
    }

    async fn stage_snapshot_part(
        &self,
        term: Term,
        meta: &SnapshotMeta,
        offset: u64,
        data: Bytes,
    ) -> Result<(), StorageError> {
        self.lock()?.staged.stage(term, meta, offset, data)
    }

    async fn save_staged_snapshot(&self, meta: &SnapshotMeta, len: u64) -> Result<(), StorageError> {
        let data = self.lock()?.staged.take(meta, len)?;
        self.save_snapshot(Snapshot { meta: meta.clone(), data }).await
    }

    async fn discard_staged_snapshot(&self) -> Result<(), StorageError> {
        self.lock()?.staged.clear();
        Ok(())
    }

    async fn load_snapshot(&self) -> Result<Option<Snapshot>, StorageError> {
        Ok(self.lock()?.snapshot.clone())
    }

    async fn compact(&self, up_to: Index) -> Result<(), StorageError> {
        let mut inner = self.lock()?;
        if up_to > inner.snapshot_last().index {
            return Err(inner.out_of_range(inner.first, up_to + 1));
        }
        if up_to >= inner.first {
            let drop = (inner.offset(up_to) + 1).min(inner.entries.len());
            inner.entries.drain(..drop);
            inner.first = up_to + 1;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn passes_the_storage_conformance_suite() {
        raft_core::testing::storage_suite::run_all(|| async { MemStorage::default() }).await;
    }
}
