//! The simulated disk of one node. It keeps what is durable apart from what a write in progress
//! would change, so a crash can lose unsynced writes or leave a torn tail.

use crate::protocol::Ready;
use crate::storage::Snapshot;
use crate::types::{Entry, HardState, Index, LogId};

/// The durable state of one node.
#[derive(Debug, Clone, Default)]
pub(crate) struct Disk {
    pub(crate) hard_state: HardState,
    /// The latest snapshot.
    pub(crate) snapshot: Option<Snapshot>,
    /// Log entries, in order, starting at `first_index()`.
    pub(crate) entries: Vec<Entry>,
}

/// The writes of one [`Ready`], waiting to become durable.
#[derive(Debug, Clone, Default)]
pub(crate) struct PendingWrite {
    pub(crate) hard_state: Option<HardState>,
    pub(crate) snapshot: Option<Snapshot>,
    pub(crate) truncate_from: Option<Index>,
    pub(crate) entries: Vec<Entry>,
}

/// How much of a pending write survives a crash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CrashCut {
    /// Nothing of it.
    Nothing,
    /// The hard state, not the log writes.
    HardStateOnly,
    /// The hard state, the snapshot, the truncation, and the first `n` appended entries (a
    /// torn tail).
    Prefix(usize),
}

impl PendingWrite {
    pub(crate) fn from_ready(ready: &Ready) -> Self {
        Self {
            hard_state: ready.hard_state,
            snapshot: ready.snapshot.clone(),
            truncate_from: ready.truncate_from,
            entries: ready.entries.clone(),
        }
    }
}

impl Disk {
    fn snapshot_last(&self) -> LogId {
        self.snapshot.as_ref().map_or(LogId::default(), |s| s.meta.last_log_id)
    }

    /// The index of the first entry held (entries before it are compacted).
    pub(crate) fn first_index(&self) -> Index {
        self.entries.first().map_or(self.snapshot_last().index + 1, |e| e.index)
    }

    pub(crate) fn last_log_id(&self) -> LogId {
        self.entries.last().map_or(self.snapshot_last(), Entry::log_id)
    }

    pub(crate) fn get(&self, index: Index) -> Option<&Entry> {
        let first = self.first_index();
        if index < first {
            return None;
        }
        self.entries.get((index - first) as usize)
    }

    /// Whether the disk durably holds entry `index@term`, in the log or in the snapshot (a
    /// snapshot holds only committed entries, so it holds whatever committed entry it covers).
    pub(crate) fn holds(&self, index: Index, term: u64) -> bool {
        self.get(index).is_some_and(|e| e.term == term) || index <= self.snapshot_last().index
    }

    /// Stores a snapshot as storage does: the log stays if it holds the snapshot's last entry
    /// (the covered prefix is dropped), else it is discarded.
    pub(crate) fn save_snapshot(&mut self, snapshot: Snapshot) {
        let last = snapshot.meta.last_log_id;
        if last.index <= self.snapshot_last().index {
            return;
        }
        if self.get(last.index).is_some_and(|e| e.term == last.term) {
            let first = self.first_index();
            self.entries.drain(..(last.index + 1 - first) as usize);
        } else {
            self.entries.clear();
        }
        self.snapshot = Some(snapshot);
    }

    /// Stores a snapshot this node took of its own state machine and drops the log up to
    /// `up_to` (at or below the snapshot's last index), atomically.
    pub(crate) fn save_local_snapshot(&mut self, snapshot: Snapshot, up_to: Index) {
        let first = self.first_index();
        if up_to >= first {
            let drop = ((up_to + 1 - first) as usize).min(self.entries.len());
            self.entries.drain(..drop);
        }
        self.snapshot = Some(snapshot);
    }

    /// Makes `write` durable, whole or (after a crash) in part. Storage writes the hard state
    /// first, then the snapshot, then truncates, then appends in order.
    pub(crate) fn apply(&mut self, write: &PendingWrite, cut: Option<CrashCut>) {
        if cut == Some(CrashCut::Nothing) {
            return;
        }
        if let Some(hs) = write.hard_state {
            self.hard_state = hs;
        }
        if cut == Some(CrashCut::HardStateOnly) {
            return;
        }
        if let Some(s) = &write.snapshot {
            self.save_snapshot(s.clone());
        }
        if let Some(from) = write.truncate_from {
            let first = self.first_index();
            assert!(from > self.snapshot_last().index, "simulated disk: truncation into the snapshot");
            self.entries.truncate(from.saturating_sub(first) as usize);
        }
        let take = match cut {
            Some(CrashCut::Prefix(n)) => n.min(write.entries.len()),
            _ => write.entries.len(),
        };
        for e in &write.entries[..take] {
            let first = self.first_index();
            assert!(e.index > self.snapshot_last().index, "simulated disk: append into the snapshot");
            let at = (e.index - first) as usize;
            assert!(at <= self.entries.len(), "simulated disk: append leaves a hole at {}", e.index);
            self.entries.truncate(at);
            self.entries.push(e.clone());
        }
    }
}
