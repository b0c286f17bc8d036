//! The simulated disk of one node, and the [`Storage`] a node's driver writes it through.
//!
//! A write is recorded as in progress, takes a random simulated time, then becomes durable.
//! A crash while it is in progress keeps a random part of it: nothing or all of an atomic
//! write (hard state, snapshot, truncation, compaction), a prefix of an append (a torn tail).
//! An injected fault makes the next write fail without changing anything; an injected read
//! fault makes the next reads of log entries fail as unreadable.
//!
//! Snapshot writes have a slot of their own: the driver writes its own snapshots in the
//! background, concurrently with appends and hard-state writes.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use raft_core::{
    ConfigPosition, Entry, HardState, Index, InitialState, LogId, SeededRng, Snapshot, SnapshotMeta,
    SnapshotStage, Storage, StorageError, Term,
};

use crate::checks::Checks;

/// A write in progress.
#[derive(Debug, Clone)]
enum Write {
    HardState(HardState),
    Append(Vec<Entry>),
    Truncate(Index),
    Snapshot(Snapshot),
    Compact(Index),
}

/// What a node's disk durably holds, plus the write in progress.
#[derive(Debug)]
pub(crate) struct Disk {
    node: u64,
    pub(crate) hard_state: HardState,
    pub(crate) snapshot: Option<Snapshot>,
    /// Entries from `first_index()`, contiguous.
    entries: Vec<Entry>,
    in_progress: Option<Write>,
    /// A snapshot write in progress (concurrent with `in_progress`).
    snapshot_in_progress: Option<Write>,
    /// A compaction in progress (concurrent with both).
    compaction_in_progress: Option<Write>,
    /// The next write fails with this error (and changes nothing).
    pub(crate) fault: Option<StorageError>,
    /// This many next reads of log entries (`Storage::entries`: for a follower, or to apply
    /// again) fail as unreadable (`Corrupt`), as a rotted block would; the data stays.
    pub(crate) read_faults: u32,
    /// Reads that failed so.
    pub(crate) reads_failed: u64,
    rng: SeededRng,
    /// Upper bound of a write's simulated duration.
    pub(crate) latency_max_ms: u64,
    /// Snapshots saved (taken here or received).
    pub(crate) snapshots_saved: u64,
    /// The parts of a snapshot being received (a staging file): they survive a crash but for
    /// the last few, which the crash may cut (or all of them).
    staged: SnapshotStage,
    /// Restarts that resumed a staged reception.
    pub(crate) staged_resumes: u64,
    /// Set at a start with parts staged, until the next part is staged.
    resuming: bool,
    /// A snapshot was saved and no compaction has completed since.
    uncompacted_snapshot: bool,
    /// Crashes that came after a snapshot was saved and before the log was compacted.
    pub(crate) crashes_before_compaction: u64,
    /// Crashes while a snapshot was being written.
    pub(crate) crashes_saving_snapshot: u64,
    /// The durability record a real store keeps beside its log (see `raft-storage-rocks`):
    /// the hard state and last log id after the latest completed write, or the floor of data
    /// found missing until the log reaches it. Data-loss faults leave it alone.
    record: Option<(HardState, LogId)>,
    /// The floor of data found missing at the latest start, until the log reaches it.
    lost_floor: Option<LogId>,
    /// Where the newest configuration stands, followed from the writes as the RocksDB store
    /// follows it (unknown from a start that found data missing until a write names it
    /// again), and as the record holds it.
    config: ConfigPosition,
    recorded_config: ConfigPosition,
}

impl Disk {
    pub(crate) fn new(node: u64, seed: u64, latency_max_ms: u64) -> Self {
        Self {
            node,
            hard_state: HardState::default(),
            snapshot: None,
            entries: Vec::new(),
            in_progress: None,
            snapshot_in_progress: None,
            fault: None,
            read_faults: 0,
            reads_failed: 0,
            rng: SeededRng::new(seed),
            latency_max_ms,
            snapshots_saved: 0,
            compaction_in_progress: None,
            staged: SnapshotStage::default(),
            staged_resumes: 0,
            resuming: false,
            uncompacted_snapshot: false,
            crashes_before_compaction: 0,
            crashes_saving_snapshot: 0,
            record: None,
            lost_floor: None,
            config: ConfigPosition::new_log(),
            recorded_config: ConfigPosition::new_log(),
        }
    }

    /// Where the newest configuration stands in the log as it is.
    fn newest_config_position(&self) -> ConfigPosition {
        ConfigPosition::of_log(&self.entries, self.snapshot_last())
    }

    fn last_log_id(&self) -> LogId {
        self.entries.last().map_or(self.snapshot_last(), Entry::log_id)
    }

    /// Updates the durability record after a completed write (`log_changed`: not a hard state
    /// alone). While data is missing the place of the configuration stays as recorded until a
    /// write changes the log, as in the RocksDB store.
    /// The write that reaches the floor places it again by reading the log back.
    fn write_record(&mut self, log_changed: bool) {
        let missing_data = self.lost_floor.is_some();
        let last = self.last_log_id();
        if self.lost_floor.is_some_and(|floor| last >= floor) {
            self.lost_floor = None;
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

    /// A data-loss fault (a write-ahead log cut short or deleted): the last `n` log entries
    /// (never what the snapshot covers) vanish and, with `forget_hard_state`, the term and
    /// vote. The durability record is kept.
    pub(crate) fn lose_tail(&mut self, n: usize, forget_hard_state: bool) {
        let snapshot = self.snapshot_last().index;
        let covered = self.entries.iter().take_while(|e| e.index <= snapshot).count();
        let keep = self.entries.len().saturating_sub(n).max(covered);
        self.entries.truncate(keep);
        if forget_hard_state {
            self.hard_state = HardState::default();
        }
    }

    /// Whether the log misses entries its durability record says it had.
    pub(crate) fn missing_data(&self) -> bool {
        self.record.is_some_and(|(_, last)| last > self.last_log_id())
    }

    fn snapshot_last(&self) -> LogId {
        self.snapshot.as_ref().map_or(LogId::default(), |s| s.meta.last_log_id)
    }

    fn first_index(&self) -> Index {
        self.entries.first().map_or(self.snapshot_last().index + 1, |e| e.index)
    }

    fn last_index(&self) -> Index {
        self.entries.last().map_or(self.snapshot_last().index, |e| e.index)
    }

    fn get(&self, index: Index) -> Option<&Entry> {
        let first = self.first_index();
        if index < first {
            return None;
        }
        self.entries.get((index - first) as usize)
    }

    /// Whether entry `index@term` is durable here, in the log or covered by the snapshot.
    pub(crate) fn holds(&self, index: Index, term: Term) -> bool {
        self.get(index).is_some_and(|e| e.term == term) || index <= self.snapshot_last().index
    }

    fn apply(&mut self, write: Write) {
        match write {
            Write::HardState(hs) => self.hard_state = hs,
            Write::Append(entries) => {
                self.config = self.config.after_append(&entries);
                for e in entries {
                    let at = (e.index - self.first_index()) as usize;
                    self.entries.truncate(at);
                    self.entries.push(e);
                }
            }
            Write::Truncate(from) => {
                if from <= self.last_index() {
                    self.entries.truncate((from - self.first_index()) as usize);
                }
                self.config = self.config.after_truncate(from);
            }
            Write::Snapshot(s) => {
                let last = s.meta.last_log_id;
                if last.index <= self.snapshot_last().index {
                    return;
                }
                let kept = self.get(last.index).is_some_and(|e| e.term == last.term);
                if !kept {
                    self.entries.clear();
                }
                self.config = self.config.after_snapshot(last, kept);
                self.snapshot = Some(s);
                self.snapshots_saved += 1;
                self.uncompacted_snapshot = true;
            }
            Write::Compact(up_to) => {
                self.uncompacted_snapshot = false;
                let first = self.first_index();
                if up_to >= first {
                    let n = ((up_to + 1 - first) as usize).min(self.entries.len());
                    self.entries.drain(..n);
                }
            }
        }
    }

    /// The process crashed: the write in progress survives in part or not at all. Returns
    /// whether an append was torn (kept in part).
    pub(crate) fn crash(&mut self) -> bool {
        let saving_snapshot = self.snapshot_in_progress.is_some();
        self.crashes_saving_snapshot += u64::from(saving_snapshot);
        if let Some(write) = self.snapshot_in_progress.take() {
            if self.rng.chance(1, 2) {
                self.apply(write);
            }
        }
        if let Some(write) = self.compaction_in_progress.take() {
            if self.rng.chance(1, 2) {
                self.apply(write);
            }
        }
        let torn = self.crash_write();
        let staged_cut = match self.rng.range(0, 4) {
            0 => usize::MAX,
            n => n as usize - 1,
        };
        self.staged.drop_last_parts(staged_cut);
        self.crashes_before_compaction += u64::from(self.uncompacted_snapshot);
        self.uncompacted_snapshot = false;
        torn
    }

    fn crash_write(&mut self) -> bool {
        let Some(write) = self.in_progress.take() else { return false };
        match write {
            Write::Append(mut entries) => {
                let keep = self.rng.range(0, entries.len() as u64 + 1) as usize;
                let torn = keep > 0 && keep < entries.len();
                entries.truncate(keep);
                self.apply(Write::Append(entries));
                torn
            }
            other => {
                if self.rng.chance(1, 2) {
                    self.apply(other);
                }
                false
            }
        }
    }
}

/// The [`Storage`] of one incarnation of a node, on its [`Disk`].
pub(crate) struct SimStorage {
    disk: Arc<Mutex<Disk>>,
    checks: Arc<Mutex<Checks>>,
}

impl SimStorage {
    pub(crate) fn new(disk: Arc<Mutex<Disk>>, checks: Arc<Mutex<Checks>>) -> Self {
        Self { disk, checks }
    }

    fn disk(&self) -> MutexGuard<'_, Disk> {
        lock(&self.disk)
    }

    /// Carries out `write` as a real disk would: in progress for a while, then durable.
    async fn write(&self, write: Write) -> Result<(), StorageError> {
        let snapshot = matches!(write, Write::Snapshot(_));
        let compaction = matches!(write, Write::Compact(_));
        let latency = {
            let mut disk = self.disk();
            if let Some(e) = disk.fault.take() {
                return Err(e);
            }
            let node = disk.node;
            let slot = match (snapshot, compaction) {
                (true, _) => &mut disk.snapshot_in_progress,
                (_, true) => &mut disk.compaction_in_progress,
                _ => &mut disk.in_progress,
            };
            if slot.is_some() {
                let what = match (snapshot, compaction) {
                    (true, _) => "two snapshot writes",
                    (_, true) => "two compactions",
                    _ => "two log or hard-state writes",
                };
                lock(&self.checks).violation(format!("node {node}: {what} at once"));
            }
            *slot = Some(write);
            let max = disk.latency_max_ms;
            // A snapshot is larger than a log write: it takes longer.
            let max = if snapshot { max * 4 } else { max };
            disk.rng.range(0, max + 1)
        };
        if latency > 0 {
            tokio::time::sleep(Duration::from_millis(latency)).await;
        }
        let mut disk = self.disk();
        let slot = match (snapshot, compaction) {
            (true, _) => &mut disk.snapshot_in_progress,
            (_, true) => &mut disk.compaction_in_progress,
            _ => &mut disk.in_progress,
        };
        if let Some(write) = slot.take() {
            let log_changed = !matches!(write, Write::HardState(_));
            disk.apply(write);
            // Recorded before the write is reported done, as the RocksDB store does.
            disk.write_record(log_changed);
        }
        Ok(())
    }
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[async_trait]
impl Storage for SimStorage {
    /// Compares the disk with its durability record as the RocksDB store does: a log that
    /// ends before the recorded entry, or an older hard state, is reported (and the recorded
    /// hard state restored).
    async fn initial_state(&self) -> Result<InitialState, StorageError> {
        let mut disk = self.disk();
        let found_last = disk.last_log_id();
        let found = disk.hard_state;
        let mut lost = None;
        if let Some((recorded_hs, recorded_last)) = disk.record {
            let rolled_back = found.is_behind(&recorded_hs);
            if rolled_back {
                disk.hard_state = recorded_hs;
            }
            disk.lost_floor = (recorded_last > found_last).then_some(recorded_last);
            if disk.lost_floor.is_none() {
                // As the RocksDB store does when its record does not place it: the log, whole,
                // is looked through.
                disk.config = disk.newest_config_position();
            }
            if rolled_back || recorded_last > found_last {
                lost = Some(raft_core::DataLoss {
                    recorded_last: recorded_last.max(found_last),
                    found_last,
                    recorded_config: disk.recorded_config.0,
                    rolled_back_hard_state: rolled_back.then_some(found),
                });
            }
        }
        Ok(InitialState {
            hard_state: disk.hard_state,
            snapshot: disk.snapshot.as_ref().map(|s| s.meta.clone()),
            first_index: disk.first_index(),
            last_index: disk.last_index(),
            lost,
            staged: {
                let staged = disk.staged.staged();
                disk.resuming = staged.is_some();
                staged
            },
        })
    }

    async fn save_hard_state(&self, hard_state: HardState) -> Result<(), StorageError> {
        {
            let disk = self.disk();
            let old = disk.hard_state;
            let forgets_vote = hard_state.current_term == old.current_term
                && old.voted_for.is_some()
                && hard_state.voted_for != old.voted_for;
            if hard_state.current_term < old.current_term || forgets_vote {
                lock(&self.checks).violation(format!(
                    "node {}: hard state {old:?} overwritten by {hard_state:?} (a term went back or a vote changed)",
                    disk.node
                ));
            }
        }
        self.write(Write::HardState(hard_state)).await
    }

    async fn append(&self, entries: &[Entry]) -> Result<(), StorageError> {
        let Some(first) = entries.first() else { return Ok(()) };
        {
            let disk = self.disk();
            let (lo, hi) = (disk.first_index().max(disk.snapshot_last().index + 1), disk.last_index() + 1);
            if first.index < lo || first.index > hi {
                return Err(StorageError::NotContiguous { got: first.index, last: disk.last_index() });
            }
            if entries.windows(2).any(|w| w[1].index != w[0].index + 1) {
                return Err(StorageError::NotContiguous { got: first.index, last: disk.last_index() });
            }
        }
        self.write(Write::Append(entries.to_vec())).await
    }

    async fn truncate(&self, from: Index) -> Result<(), StorageError> {
        {
            let disk = self.disk();
            if from <= disk.snapshot_last().index || from < disk.first_index() {
                return Err(StorageError::OutOfRange {
                    from,
                    to: from,
                    first: disk.first_index(),
                    last: disk.last_index(),
                });
            }
        }
        self.write(Write::Truncate(from)).await
    }

    async fn entries(&self, from: Index, to: Index) -> Result<Vec<Entry>, StorageError> {
        let mut disk = self.disk();
        if disk.read_faults > 0 {
            disk.read_faults -= 1;
            disk.reads_failed += 1;
            return Err(StorageError::Corrupt(format!("injected: entries {from}..{to} cannot be read")));
        }
        let (first, last) = (disk.first_index(), disk.last_index());
        if from < first || to > last + 1 || from > to {
            return Err(StorageError::OutOfRange { from, to, first, last });
        }
        Ok((from..to).filter_map(|i| disk.get(i).cloned()).collect())
    }

    async fn entries_within(
        &self,
        from: Index,
        to: Index,
        max_bytes: usize,
    ) -> Result<Vec<Entry>, StorageError> {
        let disk = self.disk();
        let (first, last) = (disk.first_index(), disk.last_index());
        if from < first || to > last + 1 || from > to {
            return Err(StorageError::OutOfRange { from, to, first, last });
        }
        let mut bytes = 0usize;
        Ok((from..to)
            .map_while(|i| {
                let e = disk.get(i).filter(|_| bytes < max_bytes || bytes == 0)?;
                bytes = bytes.saturating_add(e.size_bytes());
                Some(e.clone())
            })
            .collect())
    }

    async fn term(&self, index: Index) -> Result<Term, StorageError> {
        let disk = self.disk();
        if index == disk.snapshot_last().index {
            return Ok(disk.snapshot_last().term);
        }
        disk.get(index).map(|e| e.term).ok_or(StorageError::OutOfRange {
            from: index,
            to: index + 1,
            first: disk.first_index(),
            last: disk.last_index(),
        })
    }

    async fn save_snapshot(&self, snapshot: Snapshot) -> Result<(), StorageError> {
        self.write(Write::Snapshot(snapshot)).await
    }

    async fn load_snapshot(&self) -> Result<Option<Snapshot>, StorageError> {
        Ok(self.disk().snapshot.clone())
    }

    async fn stage_snapshot_part(
        &self,
        term: Term,
        meta: &SnapshotMeta,
        offset: u64,
        data: Bytes,
    ) -> Result<(), StorageError> {
        let mut disk = self.disk();
        if let Some(e) = disk.fault.take() {
            return Err(e);
        }
        if offset > 0 && disk.staged.staged().is_some_and(|s| s.len == offset && s.meta == *meta) {
            // Counted at the first part staged after a restart.
            if std::mem::take(&mut disk.resuming) {
                disk.staged_resumes += 1;
            }
        }
        disk.staged.stage(term, meta, offset, data)
    }

    async fn discard_staged_snapshot(&self) -> Result<(), StorageError> {
        self.disk().staged.clear();
        Ok(())
    }

    async fn save_staged_snapshot(&self, meta: &SnapshotMeta, len: u64) -> Result<(), StorageError> {
        let data = self.disk().staged.take(meta, len)?;
        self.save_snapshot(Snapshot { meta: meta.clone(), data }).await
    }

    async fn compact(&self, up_to: Index) -> Result<(), StorageError> {
        {
            let disk = self.disk();
            if up_to > disk.snapshot_last().index {
                return Err(StorageError::OutOfRange {
                    from: up_to,
                    to: up_to,
                    first: disk.first_index(),
                    last: disk.last_index(),
                });
            }
        }
        self.write(Write::Compact(up_to)).await
    }
}
