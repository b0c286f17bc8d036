//! The simulated disk of one node. It keeps what is durable apart from what a write in progress
//! would change, so a crash can lose unsynced writes or leave a torn tail.

use crate::protocol::Ready;
use crate::types::{Entry, HardState, Index, LogId};

/// The durable state of one node.
#[derive(Debug, Clone, Default)]
pub(crate) struct Disk {
    pub(crate) hard_state: HardState,
    /// Entries from index 1.
    pub(crate) entries: Vec<Entry>,
}

/// The writes of one [`Ready`], waiting to become durable.
#[derive(Debug, Clone, Default)]
pub(crate) struct PendingWrite {
    pub(crate) hard_state: Option<HardState>,
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
    /// The hard state, the truncation, and the first `n` appended entries (a torn tail).
    Prefix(usize),
}

impl PendingWrite {
    pub(crate) fn from_ready(ready: &Ready) -> Self {
        Self {
            hard_state: ready.hard_state,
            truncate_from: ready.truncate_from,
            entries: ready.entries.clone(),
        }
    }
}

impl Disk {
    pub(crate) fn last_log_id(&self) -> LogId {
        self.entries.last().map_or(LogId::default(), Entry::log_id)
    }

    pub(crate) fn get(&self, index: Index) -> Option<&Entry> {
        if index == 0 {
            return None;
        }
        self.entries.get(index as usize - 1)
    }

    /// Makes `write` durable, whole or (after a crash) in part. Storage writes the hard state
    /// first, then truncates, then appends in order.
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
        if let Some(from) = write.truncate_from {
            self.entries.truncate(from.saturating_sub(1) as usize);
        }
        let take = match cut {
            Some(CrashCut::Prefix(n)) => n.min(write.entries.len()),
            _ => write.entries.len(),
        };
        for e in &write.entries[..take] {
            let at = e.index as usize - 1;
            assert!(at <= self.entries.len(), "simulated disk: append leaves a hole at {}", e.index);
            self.entries.truncate(at);
            self.entries.push(e.clone());
        }
    }
}
