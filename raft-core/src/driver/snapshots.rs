//! Snapshots in the driver: taking one automatically once enough entries or bytes were applied
//! since the last (thresholds jittered per snapshot so that the nodes of a cluster do not all
//! snapshot at once), writing it out in a background task, compacting storage behind it once
//! it is durable, and staging, storing and restoring a snapshot received from the leader
//! (its parts go to storage as they come; the state machine reads it back part by part).
//!
//! Taking a snapshot costs the event loop one call to [`Fsm::snapshot`](crate::Fsm::snapshot),
//! which returns a point-in-time view (O(1) for a persistent state). A spawned task pulls the
//! view's chunks (yielding between them) and saves the snapshot; the event loop keeps stepping
//! the protocol meanwhile and learns of the outcome through [`SnapshotTask`]. At most one such
//! task runs at a time.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::oneshot;
use tokio::task::AbortHandle;

use super::event_loop::Driver;
use super::persist::{FULL_RETRY_FIRST, FULL_RETRY_MAX};
use super::RaftError;
use crate::fsm::{FsmError, SnapshotReader, SnapshotSource};
use crate::protocol::SnapshotPart;
use crate::rng::SeededRng;
use crate::storage::{Snapshot, SnapshotData, SnapshotMeta, SnapshotStage, Storage, StorageError};
use crate::types::{Index, LogId};

/// How long parts of a received snapshot are refused after one could not be staged on a full
/// disk.
pub(super) const STAGING_RETRY_MS: u64 = 5_000;

/// Thresholds are raised by a random part of up to `1 / JITTER_DIVISOR` of themselves.
const JITTER_DIVISOR: u64 = 4;
/// How long no snapshot is started after one failed on a full disk (ms).
const SNAPSHOT_PAUSE_ON_FULL_MS: u64 = 5_000;

/// The compaction of the log behind a snapshot, running beside the event loop (at most one):
/// its outcome.
pub(super) type Compaction = oneshot::Receiver<Result<(), StorageError>>;

/// A snapshot being written out in the background.
pub(super) struct SnapshotTask {
    /// The snapshot saved, or the error that stopped it.
    pub(super) done: oneshot::Receiver<Result<Snapshot, RaftError>>,
    abort: AbortHandle,
    /// When it started (the driver's clock).
    started_ms: crate::types::Millis,
}

impl Drop for SnapshotTask {
    /// A driver that stops without waiting for its snapshot (a panic) does not leave it
    /// writing.
    fn drop(&mut self) {
        self.abort.abort();
    }
}

/// The abort handles of a driver's background tasks, shared with the [`RaftNode`] handle so
/// that [`RaftNode::abort`] ends them at once, as a process crash would.
///
/// [`RaftNode`]: super::RaftNode
/// [`RaftNode::abort`]: super::RaftNode::abort
#[derive(Debug, Clone, Default)]
pub(super) struct Background {
    handles: Arc<Mutex<Vec<AbortHandle>>>,
}

impl Background {
    pub(super) fn register(&self, handle: AbortHandle) {
        let mut handles = self.handles.lock().unwrap_or_else(PoisonError::into_inner);
        handles.retain(|h| !h.is_finished());
        handles.push(handle);
    }

    pub(super) fn abort_all(&self) {
        for h in self.handles.lock().unwrap_or_else(PoisonError::into_inner).drain(..) {
            h.abort();
        }
    }
}

/// When the next automatic snapshot is due: the configured thresholds plus a random part, drawn
/// again after every snapshot.
#[derive(Debug)]
pub(super) struct SnapshotSchedule {
    rng: SeededRng,
    entries: u64,
    bytes: u64,
    /// The log a snapshot waits for, in 1/1024ths of `last_bytes / SNAPSHOT_LOG_FRACTION`
    /// (1024 to 1280: jittered like the thresholds, since with a large state this rule, not
    /// the thresholds, decides when the next snapshot starts).
    fraction_1024ths: u64,
}

impl SnapshotSchedule {
    pub(super) fn new(seed: u64, entries: u64, bytes: u64) -> Self {
        let mut s = Self {
            rng: SeededRng::new(seed ^ 0x5A5A_0F0F_C3C3_9696),
            entries: 0,
            bytes: 0,
            fraction_1024ths: 1024,
        };
        s.draw(entries, bytes);
        s
    }

    /// Whether a snapshot is due after `entries` entries and `bytes` payload bytes were applied
    /// since the last one, of `last_bytes` bytes: a threshold is crossed, and (so that a large
    /// state is not copied again and again) the log since is a proportionate part of it.
    pub(super) fn due(&self, entries: u64, bytes: u64, last_bytes: u64) -> bool {
        let crossed =
            (self.entries > 0 && entries >= self.entries) || (self.bytes > 0 && bytes >= self.bytes);
        let log_wanted =
            (last_bytes / crate::config::SNAPSHOT_LOG_FRACTION).saturating_mul(self.fraction_1024ths) / 1024;
        crossed && entries > 0 && bytes >= log_wanted
    }

    /// Draws the thresholds of the next snapshot (0 stays off).
    fn draw(&mut self, entries: u64, bytes: u64) {
        let mut jittered = |t: u64| {
            let extra = t / JITTER_DIVISOR;
            t.saturating_add(if extra == 0 { 0 } else { self.rng.range(0, extra + 1) })
        };
        self.entries = jittered(entries);
        self.bytes = jittered(bytes);
        self.fraction_1024ths = jittered(1024);
    }
}

/// Resolves with the background snapshot's outcome; pending forever when none runs (for a
/// `select!` branch).
pub(super) async fn snapshot_done(task: &mut Option<SnapshotTask>) -> Result<Snapshot, RaftError> {
    match task.as_mut() {
        Some(t) => (&mut t.done).await.unwrap_or(Err(RaftError::AlreadyShutdown)),
        None => std::future::pending().await,
    }
}

/// The background task: has storage write the view out and returns the snapshot saved (its
/// bytes left in storage).
async fn write_out(
    source: Box<dyn SnapshotSource>,
    meta: SnapshotMeta,
    chunk_bytes: usize,
    storage: Arc<dyn Storage>,
) -> Result<Snapshot, RaftError> {
    let len = storage.save_snapshot_from(meta.clone(), source, chunk_bytes).await?;
    Ok(Snapshot { meta, data: SnapshotData::stored(len) })
}

impl Driver {
    /// Asks the applier for a view of the state when enough was applied since the latest
    /// snapshot and none is being taken or written. Called between readies only.
    pub(super) async fn maybe_snapshot(&mut self) -> Result<(), RaftError> {
        if self.snapshot_task.is_some()
            || self.applier.view_pending()
            || self.clock.now_ms() < self.snapshots_paused_until_ms
        {
            return Ok(());
        }
        let since = self.applied.index.saturating_sub(self.raft.snapshot_last().index);
        if self.refresh_snapshot {
            if since > 0 {
                return self.applier.request_view();
            }
            // Nothing applied since the damaged snapshot: a leader appends a blank entry, whose
            // application lets the new snapshot be taken (a follower sends no snapshot; it
            // takes the new one with the next entry applied).
            if self.raft.last_log_id().index == self.applied.index {
                if let Some(blank) = self.raft.append_blank() {
                    tracing::info!(%blank, "a blank entry appended: the snapshot is taken again once it is applied");
                }
            }
            return Ok(());
        }
        let last_bytes = self.raft.snapshot().map_or(0, |s| s.data.len());
        if !self.snapshot_schedule.due(since, self.applied_bytes_since_snapshot, last_bytes) {
            return Ok(());
        }
        self.applier.request_view()
    }

    /// The applier handed back a view of the state up to `last`: it is written out in the
    /// background. A view no newer than the latest snapshot (one received from the leader
    /// while the view was asked for) is dropped.
    pub(super) fn write_view_out(
        &mut self,
        last: LogId,
        source: Box<dyn crate::fsm::SnapshotSource>,
    ) -> Result<(), RaftError> {
        if last.index <= self.raft.snapshot_last().index {
            tracing::debug!(view = %last, snapshot = %self.raft.snapshot_last(), "a view older than the latest snapshot is dropped");
            return Ok(());
        }
        self.refresh_snapshot = false;
        let meta = SnapshotMeta { last_log_id: last, membership: self.raft.membership_at(last.index) };
        let (tx, done) = oneshot::channel();
        let task = write_out(source, meta, self.config.snapshot_chunk_bytes, self.storage.clone());
        let handle = tokio::spawn(async move {
            let _ = tx.send(task.await);
        });
        let abort = handle.abort_handle();
        self.background.register(abort.clone());
        tracing::debug!(snapshot = %last, "snapshot started");
        self.snapshot_task = Some(SnapshotTask { done, abort, started_ms: self.clock.now_ms() });
        self.applied_bytes_since_snapshot = 0;
        self.snapshot_schedule
            .draw(self.config.snapshot_threshold_entries, self.config.snapshot_threshold_bytes);
        Ok(())
    }

    /// A read found this node's own copy of something others need damaged. When it is the
    /// latest snapshot, or committed entries after it that the state machine holds, a new
    /// snapshot is taken at once (and the entries after it are sent from the log, the rest as
    /// the new snapshot): a follower is never left waiting on a copy that cannot be read. The
    /// damaged files stay until the store replaces them (a snapshot) or a restart's checks
    /// find them.
    pub(super) fn note_own_damage(&mut self, damage: super::event_loop::OwnDamage) {
        use super::event_loop::OwnDamage;
        let snapshot = self.raft.snapshot_last();
        let covered_by_a_new_snapshot = match damage {
            OwnDamage::Snapshot(id) => id == snapshot,
            OwnDamage::Entries { from } => from > snapshot.index && from <= self.applied.index,
        };
        if covered_by_a_new_snapshot && !self.refresh_snapshot {
            tracing::error!(
                ?damage,
                %snapshot,
                applied = %self.applied,
                "this node's stored copy cannot be read: taking a new snapshot of the state machine to send instead"
            );
            self.refresh_snapshot = true;
        }
    }

    /// The background snapshot ended: on success compacts storage behind it (keeping
    /// `snapshot_keep_entries`, and whatever a follower being sent an older snapshot needs) and
    /// hands it to the protocol. An error is fatal, as every storage error is, but a full disk:
    /// then the snapshot is given up and tried again later (the log keeps everything).
    pub(super) async fn on_snapshot_written(
        &mut self,
        outcome: Result<Snapshot, RaftError>,
    ) -> Result<(), RaftError> {
        let started_ms = self.snapshot_task.take().map_or(0, |t| t.started_ms);
        if let Err(RaftError::Storage(StorageError::Full)) = outcome {
            // A snapshot lets the log be compacted, which frees room: storage's headroom, if
            // it could free it, lets the next try go at once.
            if self.storage.release_headroom() {
                tracing::warn!("the disk is full: snapshot not saved; trying again in the freed headroom");
            } else {
                tracing::warn!("the disk is full: snapshot not saved; trying again later");
                self.snapshots_paused_until_ms = self.clock.now_ms() + SNAPSHOT_PAUSE_ON_FULL_MS;
            }
            return Ok(());
        }
        let snapshot = outcome?;
        let last = snapshot.meta.last_log_id;
        if last.index <= self.raft.snapshot_last().index {
            // A newer snapshot from the leader was installed meanwhile.
            return Ok(());
        }
        // A follower being sent an older snapshot continues from the log after that snapshot
        // once it holds it: keep those entries, or it would need the new snapshot as well.
        let up_to =
            last.index.saturating_sub(self.config.snapshot_keep_entries).min(self.raft.compaction_floor());
        let compacted_to = self.start_compaction(up_to)?;
        let took_ms = self.clock.now_ms().saturating_sub(started_ms);
        tracing::info!(snapshot = %last, bytes = snapshot.data.len(), took_ms, compacted_to, "snapshot taken");
        // The protocol reads the bytes from storage when it sends them.
        self.raft.on_snapshot_saved(snapshot, compacted_to);
        Ok(())
    }

    /// Waits for the background snapshot, if one runs, and drops it unless it failed: for when
    /// a newer snapshot supersedes it.
    async fn wait_snapshot_task(&mut self) -> Result<(), RaftError> {
        if self.snapshot_task.is_none() {
            return Ok(());
        }
        let outcome = snapshot_done(&mut self.snapshot_task).await;
        self.snapshot_task = None;
        outcome.map(drop)
    }

    /// Starts compacting storage up to `up_to` (covered by the stored snapshot) beside the
    /// event loop: a slow compaction holds no heartbeat, and log writes go on meanwhile (they
    /// touch only entries past the commit index). Returns the index it compacts to: 0 while an
    /// earlier compaction is not done (the next snapshot's covers this one's entries).
    fn start_compaction(&mut self, up_to: Index) -> Result<Index, RaftError> {
        self.check_compaction()?;
        if up_to == 0 || self.compaction.is_some() {
            return Ok(0);
        }
        let (tx, done) = oneshot::channel();
        let storage = self.storage.clone();
        let handle = tokio::spawn(async move {
            let _ = tx.send(storage.compact(up_to).await);
        });
        self.background.register(handle.abort_handle());
        self.compaction = Some(done);
        Ok(up_to)
    }

    /// Takes the outcome of a compaction that ended: an error is fatal, as every storage
    /// error is, but a full disk (compaction only frees space; the next one does it).
    pub(super) fn check_compaction(&mut self) -> Result<(), RaftError> {
        let Some(done) = self.compaction.as_mut() else { return Ok(()) };
        let outcome = match done.try_recv() {
            Err(oneshot::error::TryRecvError::Empty) => return Ok(()),
            Err(oneshot::error::TryRecvError::Closed) => {
                Err(StorageError::Io("the log compaction ended without an answer".into()))
            }
            Ok(outcome) => outcome,
        };
        self.compaction = None;
        compaction_outcome(outcome, self.storage.as_ref())
    }

    /// Waits for the compaction under way, if any (see [`check_compaction`](Self::check_compaction)).
    pub(super) async fn wait_compaction(&mut self) -> Result<(), RaftError> {
        let Some(done) = self.compaction.take() else { return Ok(()) };
        let outcome = done
            .await
            .unwrap_or_else(|_| Err(StorageError::Io("the log compaction ended without an answer".into())));
        compaction_outcome(outcome, self.storage.as_ref())
    }

    /// Compacts stored entries up to `up_to` (covered by the stored snapshot) if storage still
    /// holds any of them, here (for a received snapshot, stored with no write under way).
    /// Returns the index compacted to, 0 when nothing was.
    async fn compact_storage(&self, up_to: Index) -> Result<Index, RaftError> {
        let initial = self.storage.initial_state().await?;
        let holds_some = initial.last_index >= initial.first_index && up_to >= initial.first_index;
        if up_to == 0 || !holds_some {
            return Ok(0);
        }
        self.storage.compact(up_to).await?;
        Ok(up_to)
    }

    /// Drops the parts staged of a snapshot the protocol gave up.
    pub(super) async fn discard_staged_snapshot(&mut self) -> Result<(), RaftError> {
        if matches!(std::mem::replace(&mut self.staged, Staged::Nothing), Staged::InStorage) {
            self.storage.discard_staged_snapshot().await?;
        }
        Ok(())
    }

    /// Stages the parts of a snapshot the leader is sending: in storage, or (a store without
    /// staging) in memory. On a full disk, a ready that installs the snapshot (`installs`: the
    /// protocol has taken it already) waits for space; any other gives the reception up (what
    /// was staged is discarded) and returns the event that tells the protocol, to step after
    /// this ready (it then refuses parts for [`STAGING_RETRY_MS`]): the leader sends the
    /// snapshot again later.
    pub(super) async fn stage_snapshot_parts(
        &mut self,
        parts: Vec<SnapshotPart>,
        installs: bool,
    ) -> Result<Option<crate::protocol::Event>, RaftError> {
        let mut wait = FULL_RETRY_FIRST;
        for part in parts {
            loop {
                match self.stage_snapshot_part(&part).await {
                    Err(RaftError::Storage(StorageError::Full)) if installs => {
                        self.wait_for_space(&mut wait).await?;
                    }
                    // Catching up by snapshot is what the store's headroom is for (found by
                    // the outside review: a reception of several parts gave up with the
                    // headroom unused, and the follower stayed behind).
                    Err(RaftError::Storage(StorageError::Full)) if self.storage.release_headroom() => {}
                    Err(RaftError::Storage(StorageError::Full)) => {
                        tracing::warn!(
                            snapshot = %part.meta.last_log_id,
                            offset = part.offset,
                            "the disk is full: the snapshot being received is given up for now"
                        );
                        if matches!(std::mem::replace(&mut self.staged, Staged::Nothing), Staged::InStorage) {
                            if let Err(e) = self.storage.discard_staged_snapshot().await {
                                tracing::warn!(error = %e, "discarding the staged snapshot failed");
                            }
                        }
                        return Ok(Some(crate::protocol::Event::SnapshotStagingFailed {
                            retry_in_ms: STAGING_RETRY_MS,
                        }));
                    }
                    outcome => {
                        outcome?;
                        break;
                    }
                }
            }
        }
        self.space_returned();
        Ok(None)
    }

    /// Stages one part (see [`stage_snapshot_parts`](Self::stage_snapshot_parts)); a part that
    /// failed left nothing staged, so it can be staged again.
    async fn stage_snapshot_part(&mut self, part: &SnapshotPart) -> Result<(), RaftError> {
        if part.offset == 0 {
            self.staged = Staged::Nothing;
        }
        match &mut self.staged {
            Staged::Nothing => {
                match self
                    .storage
                    .stage_snapshot_part(part.term, &part.meta, part.offset, part.data.clone())
                    .await
                {
                    Ok(()) => self.staged = Staged::InStorage,
                    Err(StorageError::Unsupported(_)) => {
                        let mut stage = SnapshotStage::default();
                        stage.stage(part.term, &part.meta, part.offset, part.data.clone())?;
                        self.staged = Staged::InMemory(stage);
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            Staged::InStorage => {
                self.storage
                    .stage_snapshot_part(part.term, &part.meta, part.offset, part.data.clone())
                    .await?
            }
            Staged::InMemory(stage) => stage.stage(part.term, &part.meta, part.offset, part.data.clone())?,
            Staged::Received(_) => {
                return Err(StorageError::NotStaged { offset: part.offset, staged: 0 }.into())
            }
        }
        Ok(())
    }

    /// Waits before a write that failed on a full disk is tried again (`wait` grows up to
    /// [`FULL_RETRY_MAX`]), with the full-disk state set. Fails with `AlreadyShutdown` once
    /// the node is being shut down: the write is given up.
    pub(super) async fn wait_for_space(&mut self, wait: &mut Duration) -> Result<(), RaftError> {
        if self.stopping.load(Ordering::SeqCst) {
            return Err(RaftError::AlreadyShutdown);
        }
        if self.storage.release_headroom() {
            // Freed room: the write is tried again at once.
            return Ok(());
        }
        if !self.install_waits_for_space {
            self.install_waits_for_space = true;
            self.storage_full_flag().begin();
            tracing::warn!(
                "the disk is full: the received snapshot waits for space (new proposals are refused)"
            );
        }
        tokio::time::sleep(*wait).await;
        *wait = (*wait * 2).min(FULL_RETRY_MAX);
        Ok(())
    }

    /// Ends the wait for space [`wait_for_space`](Self::wait_for_space) began, if any.
    pub(super) fn space_returned(&mut self) {
        if self.install_waits_for_space {
            self.install_waits_for_space = false;
            self.storage_full_flag().end();
            tracing::info!("space returned: the received snapshot is stored");
        }
    }

    /// Runs `write` on storage until it does not fail on a full disk (see
    /// [`wait_for_space`](Self::wait_for_space)). A failed write left nothing visible (the
    /// `Storage` contract), so running it again is safe.
    pub(super) async fn until_space<F, Fut>(&mut self, write: F) -> Result<(), RaftError>
    where
        F: Fn(Arc<dyn Storage>) -> Fut,
        Fut: std::future::Future<Output = Result<(), StorageError>>,
    {
        let mut wait = FULL_RETRY_FIRST;
        loop {
            match write(self.storage.clone()).await {
                Err(StorageError::Full) => self.wait_for_space(&mut wait).await?,
                outcome => {
                    outcome?;
                    self.space_returned();
                    return Ok(());
                }
            }
        }
    }

    /// Stores a snapshot received from the leader (persist step, after the hard state): the
    /// staged parts. Drops the stored entries it covers. A snapshot of its own being written
    /// is finished first: storage takes one snapshot write at a time. On a full disk it waits
    /// for space: the protocol has installed the snapshot already.
    pub(super) async fn store_received_snapshot(&mut self, snapshot: &Snapshot) -> Result<(), RaftError> {
        // A received snapshot lies past the commit index, so past any snapshot of this node's.
        self.wait_snapshot_task().await?;
        // It replaces the log: no compaction runs meanwhile.
        self.wait_compaction().await?;
        // The state machine may still be reading the previous received snapshot, which this
        // one replaces in storage: its restore ends first. Not expected: the protocol takes
        // no snapshot while a restore runs (`hold_snapshot_install`).
        debug_assert!(!self.applier.restoring(), "a snapshot installed while a restore runs");
        while self.applier.restoring() {
            let done = self.applier.next_done().await?;
            self.on_apply_done(done)?;
        }
        // A view the applier handed back meanwhile started a write, which ends first too.
        self.wait_snapshot_task().await?;
        let (meta, len) = (snapshot.meta.clone(), snapshot.data.len());
        let last = meta.last_log_id;
        match std::mem::replace(&mut self.staged, Staged::Nothing) {
            Staged::InStorage => {
                self.until_space(|storage| {
                    let meta = meta.clone();
                    async move { storage.save_staged_snapshot(&meta, len).await }
                })
                .await?
            }
            Staged::InMemory(mut stage) => {
                let data = stage.take(&meta, len)?;
                let whole = Snapshot { meta: meta.clone(), data: data.clone() };
                self.until_space(|storage| {
                    let whole = whole.clone();
                    async move { storage.save_snapshot(whole).await }
                })
                .await?;
                self.staged = Staged::Received(data);
            }
            _ => return Err(StorageError::NotStaged { offset: len, staged: 0 }.into()),
        }
        let mut wait = FULL_RETRY_FIRST;
        loop {
            match self.compact_storage(last.index).await {
                Err(RaftError::Storage(StorageError::Full)) => self.wait_for_space(&mut wait).await?,
                outcome => {
                    outcome?;
                    self.space_returned();
                    return Ok(());
                }
            }
        }
    }

    /// Queues the state machine's restore from a snapshot received from the leader (apply
    /// step), after the batches queued before it; the applier reads the bytes from storage
    /// part by part (or from memory, for a store without staging) while the event loop goes
    /// on. Once it is done, entries at or below its index will not be applied here, so their
    /// waiters learn that the outcome is unknown (see [`Driver::on_apply_done`]).
    pub(super) fn restore_received_snapshot(&mut self, snapshot: Snapshot) -> Result<(), RaftError> {
        let last = snapshot.meta.last_log_id;
        let reader: Box<dyn crate::fsm::SnapshotReader> =
            match std::mem::replace(&mut self.staged, Staged::Nothing) {
                Staged::Received(data) => Box::new(data.reader()),
                _ => {
                    let (len, chunk) = (snapshot.data.len(), self.config.snapshot_chunk_bytes);
                    Box::new(StoredSnapshotReader::new(self.storage.clone(), last, len, chunk))
                }
            };
        self.applier.restore(snapshot.meta, reader)?;
        // The next received snapshot would replace this one in storage while it is read.
        self.raft.hold_snapshot_install(true);
        Ok(())
    }
}

/// Where the parts of a snapshot being received are.
pub(super) enum Staged {
    /// None are.
    Nothing,
    /// Staged in storage (which checks that they belong together).
    InStorage,
    /// Held here (the store has no staging).
    InMemory(SnapshotStage),
    /// Stored whole from memory, its bytes kept for the restore that follows.
    Received(SnapshotData),
}

/// Reads a stored snapshot part by part (for a restore): a state machine restored from it
/// never has the whole snapshot in memory.
pub(super) struct StoredSnapshotReader {
    storage: Arc<dyn Storage>,
    last: LogId,
    len: u64,
    offset: u64,
    part_bytes: usize,
}

impl StoredSnapshotReader {
    pub(super) fn new(storage: Arc<dyn Storage>, last: LogId, len: u64, part_bytes: usize) -> Self {
        Self { storage, last, len, offset: 0, part_bytes: part_bytes.max(1) }
    }
}

#[async_trait]
impl SnapshotReader for StoredSnapshotReader {
    async fn next_chunk(&mut self) -> Result<Option<Bytes>, FsmError> {
        if self.offset >= self.len {
            return Ok(None);
        }
        let part = self
            .storage
            .read_snapshot_chunk(self.last, self.offset, self.part_bytes)
            .await
            .map_err(|e| FsmError::BadSnapshot(format!("reading the stored snapshot of {}: {e}", self.last)))?
            .filter(|p| !p.is_empty())
            .ok_or_else(|| {
                FsmError::BadSnapshot(format!(
                    "the stored snapshot of {} ends at byte {}",
                    self.last, self.offset
                ))
            })?;
        self.offset = self.offset.saturating_add(part.len() as u64);
        Ok(Some(part))
    }
}

/// What a compaction's outcome means for the node (see [`Driver::check_compaction`]).
fn compaction_outcome(outcome: Result<(), StorageError>, storage: &dyn Storage) -> Result<(), RaftError> {
    match outcome {
        Err(StorageError::Full) => {
            // A compaction frees room: the next one gets the store's headroom, if it has some.
            let released = storage.release_headroom();
            tracing::warn!(released, "the disk is full: the log is compacted at the next snapshot");
            Ok(())
        }
        other => other.map_err(RaftError::from),
    }
}

#[cfg(test)]
mod tests {
    use super::SnapshotSchedule;

    #[test]
    fn thresholds_are_jittered_per_node_by_up_to_a_quarter_and_zero_stays_off() {
        let drawn: Vec<(u64, u64)> = (0..50)
            .map(|seed| {
                let s = SnapshotSchedule::new(seed, 10_000, 0);
                (s.entries, s.bytes)
            })
            .collect();
        assert!(drawn.iter().all(|&(e, b)| (10_000..=12_500).contains(&e) && b == 0), "{drawn:?}");
        let distinct: std::collections::BTreeSet<u64> = drawn.iter().map(|d| d.0).collect();
        assert!(distinct.len() > 25, "nodes differ: {distinct:?}");
        let mut s = SnapshotSchedule::new(7, 10_000, 1 << 20);
        let first = (s.entries, s.bytes);
        let redrawn: Vec<(u64, u64)> = (0..10)
            .map(|_| {
                s.draw(10_000, 1 << 20);
                (s.entries, s.bytes)
            })
            .collect();
        assert!(redrawn.iter().any(|d| *d != first), "drawn again after each snapshot");
    }

    #[test]
    fn a_large_state_waits_for_a_log_a_quarter_of_its_size() {
        let s = SnapshotSchedule {
            rng: crate::rng::SeededRng::new(1),
            entries: 100,
            bytes: 0,
            fraction_1024ths: 1024,
        };
        assert!(!s.due(99, 1_000_000, 0), "under the entry threshold");
        assert!(s.due(100, 1_000, 0), "no snapshot yet: due at the threshold");
        assert!(s.due(100, 1_000, 4_000), "a small state: due at the threshold");
        assert!(!s.due(100, 1_000, 1_000_000_000), "a 1 GB state: 1 kB of log is not enough");
        assert!(!s.due(100_000, 249_999_999, 1_000_000_000));
        assert!(s.due(100_000, 250_000_000, 1_000_000_000), "a quarter of the state in log: due");
        assert!(!s.due(0, 0, 0), "nothing applied: never");
        let off = SnapshotSchedule {
            rng: crate::rng::SeededRng::new(1),
            entries: 0,
            bytes: 0,
            fraction_1024ths: 1024,
        };
        assert!(!off.due(u64::MAX, u64::MAX, 0), "both thresholds off: never");
        // The quarter is jittered per node and per snapshot like the thresholds (up to +25 %):
        // nodes with the same state do not start their snapshots at the same moment.
        let wanted: std::collections::BTreeSet<u64> = (0..50)
            .map(|seed| {
                let s = SnapshotSchedule::new(seed, 100, 0);
                (200_000_000..=400_000_000u64)
                    .step_by(1_000_000)
                    .find(|&log| s.due(100_000, log, 1_000_000_000))
                    .expect("due by 400 MB of log")
            })
            .collect();
        assert!(wanted.iter().all(|w| (250_000_000..=313_000_000).contains(w)), "{wanted:?}");
        assert!(wanted.len() > 20, "nodes differ: {wanted:?}");
    }
}
