//! The simulated disk of one node. It keeps what is durable apart from what a write in progress
//! would change, so a crash can lose unsynced writes or leave a torn tail.

use crate::protocol::Ready;
use crate::storage::{ConfigPosition, Snapshot};
use crate::types::{Entry, HardState, Index, LogId};

/// The durable state of one node.
#[derive(Debug, Clone, Default)]
pub(crate) struct Disk {
    pub(crate) hard_state: HardState,
    /// The latest snapshot.
    pub(crate) snapshot: Option<Snapshot>,
    /// Log entries, in order, starting at `first_index()`.
    pub(crate) entries: Vec<Entry>,
    /// The durability record a real store keeps apart from its log (a separately synced
    /// file): the hard state and the last log id after the latest write that completed.
    /// Written before anything the write promises leaves the node; data-loss faults leave it
    /// alone.
    pub(crate) record: Option<(HardState, LogId)>,
    /// The last log id recorded before data went missing, until the log reaches it again:
    /// the record keeps it meanwhile (the node may have acknowledged up to it).
    pub(crate) lost_floor: Option<LogId>,
    /// The entries the latest data-loss fault took, while the record still covers them.
    lost_entries: Vec<LogId>,
    /// Where the newest configuration stands, followed from the writes as the RocksDB store
    /// follows it (`None`, unknown, from a start that found data missing until a write names
    /// it again), and as the record holds it.
    config: ConfigPosition,
    pub(crate) recorded_config: ConfigPosition,
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
    /// Where the newest configuration stands in the log as it is.
    fn newest_config_position(&self) -> ConfigPosition {
        ConfigPosition::of_log(&self.entries, self.snapshot_last())
    }

    /// A new node's empty disk.
    pub(crate) fn fresh() -> Self {
        Self { config: ConfigPosition::new_log(), ..Self::default() }
    }

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

    /// Whether the disk holds entry `index@term` or held it before a data-loss fault and its
    /// record still says so (the node then votes as if it held it, which is what keeps a
    /// committed entry safe).
    pub(crate) fn holds_or_recorded(&self, index: Index, term: u64) -> bool {
        let missing = self.record.is_some_and(|(_, last)| last > self.last_log_id());
        self.holds(index, term) || (missing && self.lost_entries.contains(&LogId::new(term, index)))
    }

    /// Stores a snapshot as storage does: the log stays if it holds the snapshot's last entry
    /// (the covered prefix is dropped), else it is discarded.
    pub(crate) fn save_snapshot(&mut self, snapshot: Snapshot) {
        let last = snapshot.meta.last_log_id;
        if last.index <= self.snapshot_last().index {
            return;
        }
        let kept = self.get(last.index).is_some_and(|e| e.term == last.term);
        if kept {
            let first = self.first_index();
            self.entries.drain(..(last.index + 1 - first) as usize);
        } else {
            self.entries.clear();
        }
        self.config = self.config.after_snapshot(last, kept);
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
        self.config = self.config.after_snapshot(snapshot.meta.last_log_id, true);
        self.snapshot = Some(snapshot);
        self.write_record(true);
    }

    /// Updates the durability record after a completed write (`log_changed`: it appended,
    /// truncated or stored a snapshot): the floor of lost data stays in it until the log
    /// reaches the floor, and so does the place of the configuration until a write changes
    /// the log (as the RocksDB store keeps it).
    /// The write that reaches the floor places it again by reading the log back.
    fn write_record(&mut self, log_changed: bool) {
        let missing_data = self.lost_floor.is_some();
        let last = self.last_log_id();
        if self.lost_floor.is_some_and(|floor| last >= floor) {
            self.lost_floor = None;
            self.lost_entries.clear();
        }
        self.record = Some((self.hard_state, last.max(self.lost_floor.unwrap_or_default())));
        if missing_data && log_changed {
            // Unknown while data is still missing; read back from the log, whole again, once
            // the write reached the floor.
            self.config = match self.lost_floor {
                Some(_) => ConfigPosition(None),
                None => self.newest_config_position(),
            };
        }
        self.recorded_config = self.config;
    }

    /// A data-loss fault: the last `n` log entries (never the snapshot) vanish, and with
    /// `forget_hard_state` the term and vote go back to nothing, as a truncated or deleted
    /// write-ahead log leaves a store. The record is kept.
    pub(crate) fn lose_tail(&mut self, n: usize, forget_hard_state: bool) {
        let covered = self.entries.iter().take_while(|e| e.index <= self.snapshot_last().index).count();
        let keep = self.entries.len().saturating_sub(n).max(covered);
        self.lost_entries.extend(self.entries[keep..].iter().map(Entry::log_id));
        self.entries.truncate(keep);
        if forget_hard_state {
            self.hard_state = HardState::default();
        }
    }

    /// What a store with a durability record reports when it opens: the hard state (the
    /// recorded one, written back, if the one found is older) and, when the log ends before
    /// the recorded last entry, that entry (see `RestoredState::recorded_last`). Without
    /// `use_record` the loss goes unnoticed, as it did before stores kept a record.
    /// The third value is where the record says the newest configuration stood (see
    /// `DataLoss::recorded_config`), with a loss only.
    pub(crate) fn open(&mut self, use_record: bool) -> (HardState, Option<LogId>, Option<LogId>) {
        let Some((recorded_hs, recorded_last)) = self.record.filter(|_| use_record) else {
            return (self.hard_state, None, None);
        };
        let found = self.hard_state;
        let rolled_back = found.is_behind(&recorded_hs);
        if rolled_back {
            self.hard_state = recorded_hs;
        }
        let lost = (recorded_last > self.last_log_id()).then_some(recorded_last);
        self.lost_floor = lost;
        let recorded_config = lost.and(self.recorded_config.0);
        if lost.is_none() {
            // As the RocksDB store does when its record does not place it: the log, whole, is
            // looked through.
            self.config = self.newest_config_position();
        }
        (self.hard_state, lost, recorded_config)
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
            self.config = self.config.after_truncate(from);
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
        self.config = self.config.after_append(&write.entries[..take]);
        if cut.is_none() {
            let log_changed =
                write.snapshot.is_some() || write.truncate_from.is_some() || !write.entries.is_empty();
            self.write_record(log_changed);
        }
    }
}
