//! [`RocksStorage`]: one Raft log in a [`RocksDb`], implementing [`Storage`].
//!
//! Layout: entries in the `log` column family under `group ‖ index` (big-endian), each value a
//! checksummed frame of the postcard-encoded entry; the hard state and the snapshot's metadata
//! and file reference in the `meta` column family; the snapshot's data in a checksummed file
//! beside the database (see `snapshot_file`), written and synced before the batch that makes
//! it current. Every write is one atomic, synced batch: a truncation, a compaction, or a
//! snapshot with the log it discards is all there after a crash or not at all. Log bounds are
//! cached per log after each successful write and read again from RocksDB after a failure or a
//! reopen; a log write holds the log's lock from reading them until its batch commits.
//!
//! Stores written before snapshot files kept the data in the database (`snapshot_data`): it is
//! still read, and the next snapshot saved replaces it with a file.

use std::sync::{Arc, Mutex, PoisonError};

use async_trait::async_trait;
use bytes::Bytes;
use raft_core::{
    ConfigPosition, DataLoss, Entry, EntryPayload, HardState, Index, InitialState, LogId, Snapshot,
    SnapshotData, SnapshotMeta, SnapshotSource, StagedSnapshot, Storage, StorageError, Term,
};
use rocksdb::{Direction, IteratorMode, DB};

use crate::codec::{self, index_of, log_key, meta_key, CF_LOG, CF_META};
use crate::db::{missing_cf, reopening, scan_options, Bounds, Cf, Op, RocksDb};
use crate::durability::{ConfigWrite, Mark};
use crate::error::storage_error;
use crate::snapshot_file::{self, SnapshotFileRef};

/// One Raft log stored in a [`RocksDb`]; see the [module docs](self).
#[derive(Debug, Clone)]
pub struct RocksStorage {
    db: RocksDb,
    group: u64,
    /// Held from reading the bounds a log write starts from until the write is done, so that
    /// writes that may run concurrently (a snapshot saved in the background beside appends)
    /// each start from the bounds the other left.
    bounds_lock: Arc<tokio::sync::Mutex<()>>,
    /// Held through a snapshot's whole commit (its batch, the flush that puts its reference
    /// in a table file, the removal of older files), so that two commits never interleave
    /// (one removing the other's file before its reference is flushed); appends take only
    /// `bounds_lock`, which a commit releases before its flush.
    snapshot_lock: Arc<tokio::sync::Mutex<()>>,
    /// Snapshot files open for sending (newest first, at most `OPEN_SNAPSHOTS_MAX`).
    open_snapshots: Arc<Mutex<Vec<Arc<snapshot_file::OpenSnapshot>>>>,
    /// The snapshot being received from the leader, written to a file as its parts come.
    staging: Arc<Mutex<Option<Staging>>>,
}

/// A received snapshot being staged.
#[derive(Debug)]
struct Staging {
    /// The term of the leader sending it.
    term: Term,
    meta: SnapshotMeta,
    file: StagedFile,
}

/// Where a received snapshot's file stands.
#[derive(Debug)]
enum StagedFile {
    /// Its parts are being written.
    Writing(snapshot_file::PendingFile),
    /// It is complete under its final name, but the database does not record it yet (the
    /// commit failed, say on a full disk, and is made again).
    Written(snapshot_file::SnapshotFileRef),
}

impl StagedFile {
    /// The snapshot's bytes staged.
    fn len(&self) -> u64 {
        match self {
            Self::Writing(file) => file.len(),
            Self::Written(reference) => reference.len,
        }
    }

    /// Drops it: a temporary file is removed; a written one is left to the next save, which
    /// removes every file the database does not reference. Blocking.
    fn discard(self) {
        if let Self::Writing(file) = self {
            file.discard();
        }
    }
}

/// Snapshot files kept open for reading: the current one and one a transfer still sends.
const OPEN_SNAPSHOTS_MAX: usize = 2;

/// Runs blocking file work in tokio's blocking pool.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StorageError> + Send + 'static,
) -> Result<T, StorageError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| StorageError::Io(format!("a file task failed: {e}")))?
}

/// How much the thread that writes the node's own snapshots lowers its CPU priority: its nice
/// value is its creator's plus this, at most 19.
const SNAPSHOT_WRITER_NICE_INCREMENT: i32 = 10;

/// Runs `f` on a thread of its own at a lower CPU priority (nice +10 over the caller's; best
/// effort): encoding a large snapshot is background work that must leave the cores to the event
/// loops answering heartbeats (three nodes encoding at once on two cores starved them into an
/// election).
async fn low_priority<T: Send + 'static>(
    name: &str,
    f: impl FnOnce() -> Result<T, StorageError> + Send + 'static,
) -> Result<T, StorageError> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name(name.to_owned())
        .spawn(move || {
            lower_this_thread(SNAPSHOT_WRITER_NICE_INCREMENT);
            let _ = tx.send(f());
        })
        .map_err(|e| StorageError::Io(format!("starting the {name} thread: {e}")))?;
    rx.await.map_err(|_| StorageError::Io(format!("the {name} thread ended without an answer")))?
}

/// Raises the calling thread's nice value (on Linux, a thread's own) by `increment`, at most to
/// 19, and never lowers it: a node started at nice 15 gets a writer at 19, not one at 10 above
/// its own priority (which root could set).
fn lower_this_thread(increment: i32) {
    let own = match rustix::process::getpriority_process(None) {
        Ok(own) => own,
        Err(e) => {
            tracing::debug!(error = %e, "could not read the snapshot writer's priority");
            return;
        }
    };
    let target = own.saturating_add(increment).min(19);
    if target <= own {
        return;
    }
    if let Err(e) = rustix::process::setpriority_process(None, target) {
        tracing::debug!(error = %e, "could not lower the snapshot writer's priority");
    }
}

impl RocksStorage {
    /// The hard state, snapshot and log bounds, compared with the durability record (see
    /// [`initial_state`](Storage::initial_state)).
    async fn initial_log_state(&self) -> Result<InitialState, StorageError> {
        let at_open = self.db.recorded_at_open(self.group).is_some();
        let dropped = self.repair_log_shape(at_open).await?;
        let (mut initial, found_last) = self.with_db(|db| {
            let hard_state = match Self::get_meta(db, &meta_key(self.group, "hard_state"))? {
                None => HardState::default(),
                Some(v) => codec::decode(&v, &|| "the hard state".into())?,
            };
            let snapshot = self.stored_snapshot_meta(db)?;
            let b = self.bounds(db)?;
            let found_last = self.stored_last(db, b)?;
            let initial = InitialState {
                hard_state,
                snapshot,
                first_index: b.first,
                last_index: b.last,
                lost: None,
                staged: None,
            };
            Ok((initial, found_last))
        })?;
        let Some(recorded) = self.db.recorded_at_open(self.group) else {
            initial.lost = self.db.unrecovered_loss(self.group);
            return Ok(initial);
        };
        self.db.settle_record(self.group, found_last);
        let found = initial.hard_state;
        // Lost for sure: less than the WAL had synced when the record was written. Past that,
        // up to what the batch then in flight would add, the WAL sync may never have finished
        // (see `durability.rs`, "What a crash can hide").
        let rolled_back = recorded.is_some_and(|r| found.is_behind(&r.synced.hard_state));
        let cut = recorded.is_some_and(|r| !r.is_whole(found_last));
        let mut ops = Vec::new();
        // The recorded hard state is kept when the WAL misses it, lost or never synced: a vote
        // the node may have cast stays cast.
        if let Some(r) = recorded.filter(|r| found.is_behind(&r.possible.hard_state)) {
            ops.push(Op::Put(
                Cf::Meta,
                meta_key(self.group, "hard_state"),
                codec::encode(&r.possible.hard_state)?,
            ));
            initial.hard_state = r.possible.hard_state;
        }
        if let Some(r) = recorded
            .filter(|r| !rolled_back && !cut && (found_last < r.possible.last || found != initial.hard_state))
        {
            tracing::warn!(
                group = self.group,
                found_last = %found_last,
                possible_last = %r.possible.last,
                "the batch in flight at the last crash is missing from the log: its WAL sync did not finish (or the disk lost it); its writers were not answered unless the disk lost it"
            );
        }
        // The record is brought up to what was found before anything is answered: a crash
        // between a WAL sync and its record leaves the record behind what the node will now
        // acknowledge (entries, a vote it repeats). The record keeps a floor the log misses.
        // A new, empty log holds the initial configuration, at the empty log's id. A log found
        // whole whose record does not place its configuration (a record of an older format,
        // one made unknown by a recovery, or a batch in flight at the crash that is missing) is
        // looked through once: what it holds now is all there is to place.
        let new_log = recorded.is_none() && found_last == LogId::default() && initial.snapshot.is_none();
        let whole = !rolled_back && !cut && dropped.is_none();
        let unplaced =
            recorded.is_none_or(|r| r.possible.config.0.is_none() || found_last != r.possible.last);
        let config = if new_log {
            Some(ConfigWrite::Known(ConfigPosition::new_log()))
        } else if whole && unplaced {
            Some(ConfigWrite::Known(self.with_db(|db| self.newest_config_position(db))?))
        } else {
            None
        };
        let mark =
            Mark { group: self.group, hard_state: Some(initial.hard_state), last: Some(found_last), config };
        // Entries dropped past a hole count as recorded: the node may have acknowledged them.
        let possibly_acked = recorded.filter(|_| rolled_back || cut).map(|r| r.may_have_acked());
        let recorded_last = possibly_acked.into_iter().chain(dropped).max();
        let lost = recorded_last.filter(|&last| rolled_back || last > found_last).map(|last| DataLoss {
            recorded_last: last.max(found_last),
            found_last,
            rolled_back_hard_state: rolled_back.then_some(found),
            recorded_config: recorded.and_then(|r| r.possible.config.0),
        });
        // A failed write-back leaves the log to be compared again by the next call: the loss
        // must not hide behind a retry.
        self.db.write(ops, Some(mark)).await?;
        if self.db.misses_data(self.group) {
            // Read once here, where the log is read back anyway, and followed from now on.
            self.db.set_config_shadow(self.group, self.with_db(|db| self.newest_config_position(db))?);
        }
        if let Some(lost) = &lost {
            tracing::error!(group = self.group, %lost, "the store lost data it had made durable");
            self.db.remember_loss(self.group, lost.clone());
        }
        self.db.compared_with_record(self.group);
        initial.lost = lost;
        Ok(initial)
    }

    /// The snapshot being received: the one staged now, or at the first call since the store
    /// opened the one the last process left (its file opened again to go on writing). Never
    /// later: a temporary file is then a reception under way (one being saved is out of the
    /// slot while its file is finished).
    async fn resumed_reception(&self) -> Result<Option<StagedSnapshot>, StorageError> {
        let (staging, dir, group) = (self.staging.clone(), snapshot_file::dir_of(self.db.dir()), self.group);
        let look_for_one = self.db.claim_reception_resume(group);
        blocking(move || {
            let mut slot = staging.lock().unwrap_or_else(PoisonError::into_inner);
            if slot.is_none() && look_for_one {
                if let Some((term, meta, file)) = crate::staging::resume(&dir, group) {
                    tracing::info!(group, snapshot = %meta.last_log_id, bytes = file.len(), "resuming the reception of a snapshot");
                    *slot = Some(Staging { term, meta, file: StagedFile::Writing(file) });
                }
            }
            Ok(slot.as_ref().filter(|s| s.file.len() > 0).map(|s| StagedSnapshot {
                term: s.term,
                meta: s.meta.clone(),
                len: s.file.len(),
            }))
        })
        .await
    }

    pub(crate) fn new(db: RocksDb, group: u64) -> Self {
        Self {
            db,
            group,
            bounds_lock: Arc::default(),
            snapshot_lock: Arc::default(),
            open_snapshots: Arc::default(),
            staging: Arc::default(),
        }
    }

    /// The store this log lives in.
    pub fn db(&self) -> &RocksDb {
        &self.db
    }

    /// Records data this log lost that its store could not know of (a data dir lost whole,
    /// found out from the cluster): stores `hard_state` and keeps `recorded_last` as the last
    /// entry the node may have acknowledged, reported from now on as
    /// [`InitialState::lost`] until the log reaches it (across restarts too).
    pub async fn record_lost_data(
        &self,
        hard_state: HardState,
        recorded_last: LogId,
    ) -> Result<(), StorageError> {
        let state = self.initial_state().await?;
        let found_last = match state.lost {
            Some(lost) => lost.found_last,
            None => self.with_db(|db| {
                let b = self.bounds(db)?;
                self.stored_last(db, b)
            })?,
        };
        self.db.set_floor(self.group, recorded_last);
        self.db.set_config_shadow(self.group, self.with_db(|db| self.newest_config_position(db))?);
        // What the lost data held is unknown, its configuration included.
        let unknown = Some(ConfigWrite::Known(ConfigPosition(None)));
        // Two writes. The record's slot of a batch goes to disk before the batch's WAL write;
        // a crash between them keeps the slot's hard state (a vote the node may have cast) but
        // not its new last entry (the batch never synced). So the floor is made durable first,
        // with the hard state the log has: a crash then leaves the node as it was (a fresh term
        // 0 for a lost data dir: it asks the cluster again). Only then is the cluster's hard
        // state stored, in a batch whose slot already holds the floor as synced: a crash
        // before its WAL write leaves the raised term *and* the loss.
        let floor_first =
            Op::Put(Cf::Meta, meta_key(self.group, "hard_state"), codec::encode(&state.hard_state)?);
        let mark = Mark { group: self.group, hard_state: None, last: Some(found_last), config: unknown };
        self.db.write(vec![floor_first], Some(mark)).await?;
        let op = Op::Put(Cf::Meta, meta_key(self.group, "hard_state"), codec::encode(&hard_state)?);
        let mark =
            Mark { group: self.group, hard_state: Some(hard_state), last: Some(found_last), config: unknown };
        self.db.write(vec![op], Some(mark)).await?;
        if recorded_last > found_last {
            let lost =
                DataLoss { recorded_last, found_last, rolled_back_hard_state: None, recorded_config: None };
            tracing::error!(group = self.group, %lost, "the node lost its data (learned from its cluster)");
            self.db.remember_loss(self.group, lost);
        }
        Ok(())
    }

    /// Keeps the one run of contiguous entries that continues the snapshot and drops the rest
    /// of the log, after a lost or damaged write-ahead log left it another shape (the column
    /// families reach their table files independently, and RocksDB replays the WAL files it
    /// can read):
    /// - a log that ends before the snapshot (its newest writes lost while the snapshot's
    ///   reference had reached a table file) holds only entries the snapshot covers;
    /// - one that starts past the entry after the snapshot (found by chaos: a snapshot at 26454,
    ///   a log from 26457 after a cut WAL) has a gap no replay can fill;
    /// - one with a hole inside (found by chaos: an older WAL file cut short while a newer one
    ///   was whole; entry 2188 missing, later ones there) cannot be read past the hole.
    ///
    /// `scan`: look for holes inside the log (reads every key: done once, at open); without
    /// it only the bounds are compared. Returns the last entry dropped past the run kept: the
    /// node may have acknowledged it, so it is lost data.
    async fn repair_log_shape(&self, scan: bool) -> Result<Option<LogId>, StorageError> {
        let _bounds = self.bounds_lock.lock().await;
        let b = self.with_db(|db| self.bounds(db))?;
        if b.last < b.first {
            return Ok(None);
        }
        let target = b.snapshot.index + 1;
        let (kept, dropped_last) = self.with_db(|db| {
            let kept = if scan {
                match self.run_continuing(db, b.first, target)? {
                    Some(run) => Some(self.trim_by_terms(db, run, b.snapshot)?),
                    None => None,
                }
            } else {
                Some((b.first, b.last)).filter(|&(first, last)| first <= target && target <= last + 1)
            };
            let dropped_past = kept.map_or(b.snapshot.index, |(_, last)| last);
            let dropped_last = if b.last > dropped_past { Some(self.stored_last(db, b)?) } else { None };
            Ok((kept, dropped_last))
        })?;
        if kept == Some((b.first, b.last)) {
            return Ok(None);
        }
        let (first, last) = kept.unwrap_or((target, b.snapshot.index));
        tracing::warn!(
            log_start = b.first,
            log_end = b.last,
            kept_start = first,
            kept_end = last,
            snapshot = %b.snapshot,
            "the log does not continue the snapshot as one run of entries: keeping the run that does, the node recovers the rest from the cluster"
        );
        let mut ops = Vec::new();
        if first > b.first {
            ops.push(Op::DeleteRange(
                Cf::Log,
                log_key(self.group, b.first).to_vec(),
                log_key(self.group, first).to_vec(),
            ));
        }
        if last < b.last {
            ops.push(self.log_range(last + 1));
        }
        let after = Bounds { first, last, snapshot: b.snapshot };
        let new_last =
            if last >= first { self.with_db(|db| self.log_id_at(db, after, last))? } else { b.snapshot };
        if let Some(dropped) = dropped_last {
            // Before the write: the durability record keeps it as data the log misses.
            self.db.set_floor(self.group, dropped);
        }
        let cut = (last < b.last).then_some(ConfigWrite::Truncated(last + 1));
        self.write(ops, after, Some(new_last), cut).await?;
        Ok(dropped_last)
    }

    /// Trims a run of contiguous entries to what can continue the snapshot, after a lost
    /// deletion (found by review: a snapshot whose entry did not match deleted the log in the
    /// batch that stored it, a newer WAL file held the entries after it, and the older one was
    /// cut: the snapshot stayed, the deletion did not):
    /// - an entry at the snapshot's index of another term: the entries up to it go (the
    ///   snapshot covers them; they are another history);
    /// - terms never go down along a log, and the first entry after the snapshot is of its
    ///   term or later: the run ends before the first entry that breaks this (a lost
    ///   truncation left an older suffix after newer entries).
    ///
    /// Returns the run kept (empty when nothing continues the snapshot).
    fn trim_by_terms(
        &self,
        db: &DB,
        (first, last): (Index, Index),
        snapshot: LogId,
    ) -> Result<(Index, Index), StorageError> {
        let target = snapshot.index + 1;
        let mut first = first;
        if first <= snapshot.index
            && self.read_entry(db, snapshot.index)?.map(|e| e.term) != Some(snapshot.term)
        {
            first = target;
        }
        let cf = db.cf_handle(CF_LOG).ok_or_else(|| missing_cf(CF_LOG))?;
        let start = log_key(self.group, target);
        let (mut previous, mut end) = (snapshot.term, snapshot.index);
        for item in db.iterator_cf_opt(cf, scan_options(), IteratorMode::From(&start, Direction::Forward)) {
            let (key, value) = item.map_err(|e| storage_error(&e))?;
            let Some(index) = index_of(self.group, &key) else { break };
            if index > last {
                break;
            }
            let entry: Entry = codec::decode(&value, &|| format!("log entry {index}"))?;
            if entry.term < previous {
                break;
            }
            previous = entry.term;
            end = index;
        }
        Ok((first, end))
    }

    /// The run of contiguous entries, from `from` on, that holds entry `target` or ends just
    /// before it (`None`: no run does).
    fn run_continuing(
        &self,
        db: &DB,
        from: Index,
        target: Index,
    ) -> Result<Option<(Index, Index)>, StorageError> {
        let cf = db.cf_handle(CF_LOG).ok_or_else(|| missing_cf(CF_LOG))?;
        let start = log_key(self.group, from);
        let mut run: Option<(Index, Index)> = None;
        for item in db.iterator_cf_opt(cf, scan_options(), IteratorMode::From(&start, Direction::Forward)) {
            let (key, _) = item.map_err(|e| storage_error(&e))?;
            let Some(index) = index_of(self.group, &key) else { break };
            run = match run {
                Some((first, last)) if index == last + 1 => Some((first, index)),
                Some((first, last)) if first <= target && target <= last + 1 => {
                    return Ok(Some((first, last)))
                }
                _ => Some((index, index)),
            };
            if index > target && run.is_some_and(|(first, _)| first > target) {
                return Ok(None);
            }
        }
        Ok(run.filter(|&(first, last)| first <= target && target <= last + 1))
    }

    /// Accepts the loss of the data this log was found to miss at open (see
    /// [`InitialState::lost`]): the durability record is rewritten to what the log holds, so
    /// the node votes and campaigns with the log it has. Returns the loss accepted (`None`:
    /// nothing was missing). Only for the case no replica can repair: every node that held
    /// the lost entries lost them too (a one-node cluster, a majority damaged at once);
    /// committed writes among them are then gone for good. While any member still holds
    /// them, let the node recover from the leader instead.
    pub async fn accept_data_loss(&self) -> Result<Option<DataLoss>, StorageError> {
        let state = self.initial_state().await?;
        let Some(lost) = state.lost else { return Ok(None) };
        self.db.forget_floor(self.group);
        // The log is taken as it is now: where its configuration stood before is no guide.
        let unknown = Some(ConfigWrite::Known(ConfigPosition(None)));
        let mark = Mark { group: self.group, hard_state: None, last: Some(lost.found_last), config: unknown };
        self.db.write(Vec::new(), Some(mark)).await?;
        tracing::warn!(group = self.group, %lost, "the operator accepted the loss");
        Ok(Some(lost))
    }

    pub(crate) fn with_db<T>(
        &self,
        f: impl FnOnce(&DB) -> Result<T, StorageError>,
    ) -> Result<T, StorageError> {
        let guard = self.db.read()?;
        let db = guard.as_ref().ok_or_else(reopening)?;
        f(db)
    }

    /// A raw value of the `meta` column family (for tests).
    #[cfg(test)]
    pub(crate) fn raw_meta(db: &DB, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        Self::get_meta(db, key)
    }

    /// The current snapshot's file reference, if it has one.
    fn snapshot_file_ref(&self) -> Result<Option<SnapshotFileRef>, StorageError> {
        self.with_db(|db| {
            Self::get_meta(db, &meta_key(self.group, "snapshot_file"))?
                .map(|v| codec::decode(&v, &|| "the snapshot file reference".into()))
                .transpose()
        })
    }

    /// Deletes the snapshot value of a store written before snapshot files.
    fn delete_legacy_snapshot(&self) -> Op {
        let legacy = meta_key(self.group, "snapshot_data");
        let mut legacy_end = legacy.clone();
        legacy_end.push(0);
        Op::DeleteRange(Cf::Meta, legacy, legacy_end)
    }

    /// Moves the snapshot of a store written before snapshot files from its database value to
    /// a file (loaded whole once, here), so that its parts are then read from the file instead
    /// of loading the value for every part. The log is not touched.
    async fn migrate_legacy_snapshot(&self) -> Result<(), StorageError> {
        if self.snapshot_file_ref()?.is_some() {
            return Ok(());
        }
        let Some(snapshot) = self.load_snapshot().await? else { return Ok(()) };
        let last = snapshot.meta.last_log_id;
        let (dir, group) = (snapshot_file::dir_of(self.db.dir()), self.group);
        let reference = blocking(move || snapshot_file::write(&dir, group, last, &snapshot.data)).await?;
        let _bounds = self.bounds_lock.lock().await;
        let b = self.with_db(|db| self.bounds(db))?;
        if b.snapshot != last || self.snapshot_file_ref()?.is_some() {
            return Ok(()); // a newer snapshot was saved meanwhile (its save removes this file)
        }
        let ops = vec![
            Op::Put(Cf::Meta, meta_key(self.group, "snapshot_file"), codec::encode(&reference)?),
            self.delete_legacy_snapshot(),
        ];
        self.write(ops, b, None, None).await?;
        tracing::info!(snapshot = %last, "moved the snapshot from the database to a file");
        Ok(())
    }

    /// Commits a snapshot whose file is written: its metadata, the file reference and the log it
    /// discards in one batch (holding the bounds lock); then removes older files.
    async fn commit_snapshot(
        &self,
        meta: &SnapshotMeta,
        reference: SnapshotFileRef,
    ) -> Result<(), StorageError> {
        let last = meta.last_log_id;
        let _commit = self.snapshot_lock.lock().await;
        let bounds = self.bounds_lock.lock().await;
        let (b, matches) = self.with_db(|db| {
            let b = self.bounds(db)?;
            let matches = last.index >= b.first
                && last.index <= b.last
                && self.read_entry(db, last.index)?.is_some_and(|e| e.term == last.term);
            Ok((b, matches))
        })?;
        let mut ops = vec![
            Op::Put(Cf::Meta, meta_key(self.group, "snapshot_meta"), codec::encode(meta)?),
            Op::Put(Cf::Meta, meta_key(self.group, "snapshot_file"), codec::encode(&reference)?),
            self.delete_legacy_snapshot(),
        ];
        let (after, new_last) = if matches {
            (Bounds { snapshot: last, ..b }, None)
        } else {
            ops.push(self.log_range(0));
            (Bounds { first: last.index + 1, last: last.index, snapshot: last }, Some(last))
        };
        let config = ConfigWrite::Snapshot { last, log_kept: matches };
        self.write(ops, after, new_last, Some(config)).await?;
        // Appends go on while the flush runs (found by review: with both column families
        // flushed together, holding the bounds through the flush stalled appends behind the
        // whole log memtable's flush, past the leader's disk-stall bound on a slow disk).
        drop(bounds);
        // The reference into a table file before the older files go: if the write-ahead log
        // were lost later, the store would otherwise point at a snapshot file removed here.
        let db = self.db.clone();
        if let Err(e) = blocking(move || db.flush_meta()).await {
            tracing::warn!(error = %e, "could not flush the snapshot reference; older snapshot files are kept");
            return Ok(());
        }
        let (dir, group, keep) = (snapshot_file::dir_of(self.db.dir()), self.group, reference.name);
        let open: Vec<String> = {
            let cache = self.open_snapshots.lock().unwrap_or_else(PoisonError::into_inner);
            cache.iter().filter_map(|o| o.name()).collect()
        };
        let _ = blocking(move || {
            snapshot_file::remove_others(&dir, group, Some(&keep), &open);
            Ok(())
        })
        .await;
        Ok(())
    }

    fn get_meta(db: &DB, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        let cf = db.cf_handle(CF_META).ok_or_else(|| missing_cf(CF_META))?;
        db.get_cf(cf, key).map_err(|e| storage_error(&e))
    }

    fn stored_snapshot_meta(&self, db: &DB) -> Result<Option<SnapshotMeta>, StorageError> {
        match Self::get_meta(db, &meta_key(self.group, "snapshot_meta"))? {
            None => Ok(None),
            Some(v) => codec::decode(&v, &|| "the snapshot metadata".into()).map(Some),
        }
    }

    /// The index of the first or last stored entry of this log.
    fn edge(&self, db: &DB, first: bool) -> Result<Option<Index>, StorageError> {
        let cf = db.cf_handle(CF_LOG).ok_or_else(|| missing_cf(CF_LOG))?;
        let (start, direction) = if first {
            (log_key(self.group, 0), Direction::Forward)
        } else {
            (log_key(self.group, u64::MAX), Direction::Reverse)
        };
        let mut it = db.iterator_cf(cf, IteratorMode::From(&start, direction));
        match it.next() {
            None => Ok(None),
            Some(item) => {
                let (key, _) = item.map_err(|e| storage_error(&e))?;
                Ok(index_of(self.group, &key))
            }
        }
    }

    pub(crate) fn bounds(&self, db: &DB) -> Result<Bounds, StorageError> {
        if let Some(b) = self.db.cached_bounds(self.group) {
            return Ok(b);
        }
        let b = self.read_bounds(db)?;
        self.db.cache_bounds(self.group, b);
        Ok(b)
    }

    fn read_bounds(&self, db: &DB) -> Result<Bounds, StorageError> {
        let snapshot = self.stored_snapshot_meta(db)?.map_or(LogId::default(), |m| m.last_log_id);
        let first = self.edge(db, true)?.unwrap_or(snapshot.index + 1);
        let last = self.edge(db, false)?.unwrap_or(first - 1);
        Ok(Bounds { first, last, snapshot })
    }

    fn read_entry(&self, db: &DB, index: Index) -> Result<Option<Entry>, StorageError> {
        let cf = db.cf_handle(CF_LOG).ok_or_else(|| missing_cf(CF_LOG))?;
        let Some(v) = db.get_cf(cf, log_key(self.group, index)).map_err(|e| storage_error(&e))? else {
            return Ok(None);
        };
        let entry: Entry = codec::decode(&v, &|| format!("log entry {index}"))?;
        if entry.index != index {
            return Err(StorageError::Corrupt(format!(
                "the record of index {index} holds entry {}",
                entry.index
            )));
        }
        Ok(Some(entry))
    }

    /// Where the log's newest configuration stands, read from the log: the newest entry past
    /// the snapshot that carries one, else the snapshot's last entry (reads the log back from
    /// its end; done at open, when the record does not say or when the log misses data, and
    /// when a lost data dir is recorded).
    fn newest_config_position(&self, db: &DB) -> Result<ConfigPosition, StorageError> {
        let b = self.bounds(db)?;
        let lowest = b.first.max(b.snapshot.index + 1);
        let mut index = b.last;
        while index >= lowest && index > 0 {
            if let Some(e) = self.read_entry(db, index)? {
                if matches!(e.payload, EntryPayload::Membership(_)) {
                    return Ok(ConfigPosition(Some(e.log_id())));
                }
            }
            index -= 1;
        }
        Ok(ConfigPosition(Some(b.snapshot)))
    }

    /// The id of the entry at `index` (the snapshot's last entry included; index 0 is the
    /// empty log's).
    fn log_id_at(&self, db: &DB, b: Bounds, index: Index) -> Result<LogId, StorageError> {
        if index == b.snapshot.index {
            return Ok(b.snapshot);
        }
        if index == 0 {
            return Ok(LogId::default());
        }
        match self.read_entry(db, index)? {
            Some(e) => Ok(e.log_id()),
            None => Err(StorageError::Corrupt(format!("log entry {index} is missing"))),
        }
    }

    /// The log's last entry as stored (the snapshot's when the log is empty).
    fn stored_last(&self, db: &DB, b: Bounds) -> Result<LogId, StorageError> {
        if b.last < b.first {
            return Ok(b.snapshot);
        }
        self.log_id_at(db, b, b.last)
    }

    fn out_of_range(b: Bounds, from: Index, to: Index) -> StorageError {
        StorageError::OutOfRange { from, to, first: b.first, last: b.last }
    }

    /// Carries out a write and then records the bounds it leads to; after a failure the
    /// bounds are read again from RocksDB. `last`: the log's last entry after the write, when
    /// the write changes it, and `config` how it moves the newest configuration (for the
    /// durability record).
    pub(crate) async fn write(
        &self,
        ops: Vec<Op>,
        after: Bounds,
        last: Option<LogId>,
        config: Option<ConfigWrite>,
    ) -> Result<(), StorageError> {
        let mark = Mark { group: self.group, hard_state: None, last, config };
        match self.db.write(ops, Some(mark)).await {
            Ok(()) => {
                self.db.cache_bounds(self.group, after);
                Ok(())
            }
            Err(e) => {
                self.db.forget_bounds(self.group);
                Err(e)
            }
        }
    }

    fn log_range(&self, from: Index) -> Op {
        Op::DeleteRange(Cf::Log, log_key(self.group, from).to_vec(), log_key(self.group, u64::MAX).to_vec())
    }
}

#[async_trait]
impl Storage for RocksStorage {
    /// Also compares what it finds with the durability record: a log that ends before the
    /// recorded last entry, or a hard state older than the recorded one, is reported in
    /// `lost` (and the recorded hard state is written back and returned). A snapshot being
    /// received when the store was last closed is reported in `staged`, to resume.
    async fn initial_state(&self) -> Result<InitialState, StorageError> {
        let mut initial = self.initial_log_state().await?;
        initial.staged = self.resumed_reception().await?;
        Ok(initial)
    }

    async fn save_hard_state(&self, hard_state: HardState) -> Result<(), StorageError> {
        let op = Op::Put(Cf::Meta, meta_key(self.group, "hard_state"), codec::encode(&hard_state)?);
        let mark = Mark { group: self.group, hard_state: Some(hard_state), last: None, config: None };
        self.db.write(vec![op], Some(mark)).await
    }

    async fn append(&self, entries: &[Entry]) -> Result<(), StorageError> {
        let Some(first) = entries.first() else { return Ok(()) };
        let _bounds = self.bounds_lock.lock().await;
        let b = self.with_db(|db| self.bounds(db))?;
        let contiguous = entries.windows(2).all(|w| w[1].index == w[0].index + 1);
        let lowest = b.first.max(b.snapshot.index + 1);
        if first.index > b.last + 1 || first.index < lowest || !contiguous {
            return Err(StorageError::NotContiguous { got: first.index, last: b.last });
        }
        let mut ops = Vec::with_capacity(entries.len() + 1);
        if first.index <= b.last {
            // Replaces a suffix: in the same atomic batch as the new entries.
            ops.push(self.log_range(first.index));
        }
        let mut last = LogId::new(first.term, first.index);
        for e in entries {
            ops.push(Op::Put(Cf::Log, log_key(self.group, e.index).to_vec(), codec::encode(e)?));
            last = e.log_id();
        }
        let config =
            ConfigWrite::Appended { first: first.index, newest: ConfigPosition::newest_entry(entries) };
        self.write(ops, Bounds { last: last.index, ..b }, Some(last), Some(config)).await
    }

    async fn truncate(&self, from: Index) -> Result<(), StorageError> {
        let _bounds = self.bounds_lock.lock().await;
        let b = self.with_db(|db| self.bounds(db))?;
        if from <= b.snapshot.index || from < b.first {
            return Err(Self::out_of_range(b, from, from));
        }
        if from > b.last {
            return Ok(());
        }
        let new_last = self.with_db(|db| self.log_id_at(db, b, from - 1))?;
        let after = Bounds { last: from - 1, ..b };
        self.write(vec![self.log_range(from)], after, Some(new_last), Some(ConfigWrite::Truncated(from)))
            .await
    }

    async fn entries(&self, from: Index, to: Index) -> Result<Vec<Entry>, StorageError> {
        self.entries_within(from, to, usize::MAX).await
    }

    /// Stops the iteration once the entries read reach `max_bytes`.
    async fn entries_within(
        &self,
        from: Index,
        to: Index,
        max_bytes: usize,
    ) -> Result<Vec<Entry>, StorageError> {
        self.with_db(|db| {
            let b = self.bounds(db)?;
            if from < b.first || to > b.last + 1 || from > to {
                return Err(Self::out_of_range(b, from, to));
            }
            let cf = db.cf_handle(CF_LOG).ok_or_else(|| missing_cf(CF_LOG))?;
            let start = log_key(self.group, from);
            let mut out = Vec::with_capacity(((to - from) as usize).min(1024));
            let (mut expected, mut bytes) = (from, 0usize);
            for item in db.iterator_cf_opt(cf, scan_options(), IteratorMode::From(&start, Direction::Forward))
            {
                if expected == to || (bytes >= max_bytes && !out.is_empty()) {
                    break;
                }
                let (key, value) = item.map_err(|e| storage_error(&e))?;
                if index_of(self.group, &key) != Some(expected) {
                    return Err(StorageError::Corrupt(format!("log entry {expected} is missing")));
                }
                let entry: Entry = codec::decode(&value, &|| format!("log entry {expected}"))?;
                if entry.index != expected {
                    return Err(StorageError::Corrupt(format!(
                        "the record of index {expected} holds entry {}",
                        entry.index
                    )));
                }
                bytes = bytes.saturating_add(entry.size_bytes());
                out.push(entry);
                expected += 1;
            }
            if expected != to && (bytes < max_bytes || out.is_empty()) {
                return Err(StorageError::Corrupt(format!("log entry {expected} is missing")));
            }
            Ok(out)
        })
    }

    async fn term(&self, index: Index) -> Result<Term, StorageError> {
        self.with_db(|db| {
            let b = self.bounds(db)?;
            if index == b.snapshot.index {
                return Ok(b.snapshot.term);
            }
            if index < b.first || index > b.last {
                return Err(Self::out_of_range(b, index, index + 1));
            }
            match self.read_entry(db, index)? {
                Some(e) => Ok(e.term),
                None => Err(StorageError::Corrupt(format!("log entry {index} is missing"))),
            }
        })
    }

    /// Writes the data to a file (in a blocking task), then commits the metadata, the file
    /// reference and the log it discards in one batch, then removes older files.
    async fn save_snapshot(&self, snapshot: Snapshot) -> Result<(), StorageError> {
        let last = snapshot.meta.last_log_id;
        if last.index < self.with_db(|db| self.bounds(db))?.snapshot.index {
            return Ok(());
        }
        // The data first, with no lock held: appends go on meanwhile.
        let dir = snapshot_file::dir_of(self.db.dir());
        let (group, data) = (self.group, snapshot.data.clone());
        let reference = blocking(move || snapshot_file::write(&dir, group, last, &data)).await?;
        self.commit_snapshot(&snapshot.meta, reference).await
    }

    /// Encodes the state machine's view straight into the file, on a thread of lower CPU
    /// priority: the snapshot is never whole in memory, and neither the event loop's threads
    /// nor, under contention, its share of the cores go to the encoding.
    async fn save_snapshot_from(
        &self,
        meta: SnapshotMeta,
        mut source: Box<dyn SnapshotSource>,
        chunk_bytes: usize,
    ) -> Result<u64, StorageError> {
        let last = meta.last_log_id;
        if last.index < self.with_db(|db| self.bounds(db))?.snapshot.index {
            return Ok(0);
        }
        let dir = snapshot_file::dir_of(self.db.dir());
        let group = self.group;
        let reference = low_priority("raft-snapshot", move || {
            snapshot_file::write_from(&dir, group, last, &mut || {
                source
                    .next_chunk(chunk_bytes)
                    .map_err(|e| StorageError::Io(format!("the state machine's snapshot failed: {e}")))
            })
        })
        .await?;
        let len = reference.len;
        self.commit_snapshot(&meta, reference).await?;
        Ok(len)
    }

    /// Writes the part to the received snapshot's temporary file (in the blocking pool): a
    /// received snapshot is never whole in memory. The file and a record of what it is stay
    /// across a restart, which resumes the reception (see [`crate::staging`]).
    async fn stage_snapshot_part(
        &self,
        term: Term,
        meta: &SnapshotMeta,
        offset: u64,
        data: Bytes,
    ) -> Result<(), StorageError> {
        let (staging, meta) = (self.staging.clone(), meta.clone());
        let (dir, group) = (snapshot_file::dir_of(self.db.dir()), self.group);
        // A reception under way is never taken for one the last process left.
        let _ = self.db.claim_reception_resume(group);
        blocking(move || {
            let mut slot = staging.lock().unwrap_or_else(PoisonError::into_inner);
            let ours = |s: &Staging| s.term == term && s.meta == meta;
            let continues = slot.as_ref().is_some_and(|s| ours(s) && s.file.len() == offset);
            if offset == 0 && !continues {
                if let Some(old) = slot.take() {
                    old.file.discard();
                }
                let file = crate::staging::start(&dir, group, term, &meta)?;
                *slot = Some(Staging { term, meta: meta.clone(), file: StagedFile::Writing(file) });
            }
            match slot.as_mut() {
                // A write that fails leaves the file as it was: the part can be staged again.
                Some(s) if ours(s) && s.file.len() == offset => match &mut s.file {
                    StagedFile::Writing(file) => file.write(&data),
                    StagedFile::Written(_) => Err(StorageError::NotStaged { offset, staged: s.file.len() }),
                },
                Some(s) if s.meta == meta => Err(StorageError::NotStaged { offset, staged: s.file.len() }),
                _ => Err(StorageError::NotStaged { offset, staged: 0 }),
            }
        })
        .await
    }

    /// Removes the received snapshot's temporary file and its record.
    async fn discard_staged_snapshot(&self) -> Result<(), StorageError> {
        let staging = self.staging.clone();
        let (dir, group) = (snapshot_file::dir_of(self.db.dir()), self.group);
        let _ = self.db.claim_reception_resume(group);
        blocking(move || {
            if let Some(s) = staging.lock().unwrap_or_else(PoisonError::into_inner).take() {
                s.file.discard();
            }
            crate::staging::forget(&dir, group);
            Ok(())
        })
        .await
    }

    /// Finishes the received snapshot's file (trailer, sync, rename) and commits it as
    /// `save_snapshot` does. A failure (a full disk) leaves what was staged, so that the call
    /// can be made again.
    async fn save_staged_snapshot(&self, meta: &SnapshotMeta, len: u64) -> Result<(), StorageError> {
        let staging = self.staging.clone();
        let wanted = meta.clone();
        let staged = blocking(move || {
            let mut slot = staging.lock().unwrap_or_else(PoisonError::into_inner);
            match slot.take() {
                Some(s) if s.meta == wanted && s.file.len() == len => Ok((s.term, s.file)),
                other => {
                    let staged = other.as_ref().filter(|s| s.meta == wanted).map_or(0, |s| s.file.len());
                    *slot = other;
                    Err(StorageError::NotStaged { offset: len, staged })
                }
            }
        })
        .await?;
        let (term, staged) = staged;
        let (dir, group) = (snapshot_file::dir_of(self.db.dir()), self.group);
        if meta.last_log_id.index < self.with_db(|db| self.bounds(db))?.snapshot.index {
            blocking(move || {
                staged.discard();
                crate::staging::forget(&dir, group);
                Ok(())
            })
            .await?;
            return Ok(());
        }
        let put_back = |file: StagedFile| {
            let mut slot = self.staging.lock().unwrap_or_else(PoisonError::into_inner);
            if slot.is_none() {
                *slot = Some(Staging { term, meta: meta.clone(), file });
            }
        };
        let reference = match staged {
            StagedFile::Written(reference) => reference,
            StagedFile::Writing(mut file) => match blocking(move || Ok((file.commit(), file))).await? {
                (Ok(reference), _) => reference,
                (Err(e), file) => {
                    put_back(StagedFile::Writing(file));
                    return Err(e);
                }
            },
        };
        if let Err(e) = self.commit_snapshot(meta, reference.clone()).await {
            put_back(StagedFile::Written(reference));
            return Err(e);
        }
        blocking(move || {
            crate::staging::forget(&dir, group);
            Ok(())
        })
        .await
    }

    /// The metadata and the size the file reference records: no file is read.
    async fn snapshot_meta(&self) -> Result<Option<(SnapshotMeta, u64)>, StorageError> {
        let found = self.with_db(|db| {
            let Some(meta) = self.stored_snapshot_meta(db)? else { return Ok(None) };
            let reference = Self::get_meta(db, &meta_key(self.group, "snapshot_file"))?
                .map(|v| codec::decode::<SnapshotFileRef>(&v, &|| "the snapshot file reference".into()))
                .transpose()?;
            Ok(Some((meta, reference)))
        })?;
        match found {
            None => Ok(None),
            Some((meta, Some(reference))) if reference.last == meta.last_log_id => {
                Ok(Some((meta, reference.len)))
            }
            Some((meta, Some(reference))) => Err(StorageError::Corrupt(format!(
                "the snapshot file is of {}, its metadata of {}",
                reference.last, meta.last_log_id
            ))),
            // A store written before snapshot files: its snapshot goes to a file first.
            Some((meta, None)) => {
                self.migrate_legacy_snapshot().await?;
                match self.snapshot_file_ref()? {
                    Some(reference) if reference.last == meta.last_log_id => Ok(Some((meta, reference.len))),
                    _ => Ok(self.load_snapshot().await?.map(|s| {
                        let len = s.data.len();
                        (s.meta, len)
                    })),
                }
            }
        }
    }

    /// Reads the part from the file, kept open (with its frame index) for the next parts.
    async fn read_snapshot_chunk(
        &self,
        last: LogId,
        offset: u64,
        max: usize,
    ) -> Result<Option<Bytes>, StorageError> {
        let cached = {
            let open = self.open_snapshots.lock().unwrap_or_else(PoisonError::into_inner);
            open.iter().find(|o| o.last == last).cloned()
        };
        let open = match cached {
            Some(open) => open,
            None => {
                let mut reference = self.snapshot_file_ref()?;
                if reference.is_none() {
                    // A store written before snapshot files: its snapshot goes to a file first.
                    self.migrate_legacy_snapshot().await?;
                    reference = self.snapshot_file_ref()?;
                }
                let Some(reference) = reference else { return Ok(None) };
                if reference.last != last {
                    return Ok(None);
                }
                let dir = snapshot_file::dir_of(self.db.dir());
                let open =
                    Arc::new(blocking(move || snapshot_file::OpenSnapshot::open(&dir, &reference)).await?);
                let mut cache = self.open_snapshots.lock().unwrap_or_else(PoisonError::into_inner);
                // The newest two: the current snapshot and one a transfer may still be sending.
                cache.retain(|o| o.last != last);
                cache.push(open.clone());
                cache.sort_by_key(|o| std::cmp::Reverse(o.last.index));
                cache.truncate(OPEN_SNAPSHOTS_MAX);
                open
            }
        };
        blocking(move || open.read(offset, max)).await.map(Some)
    }

    async fn load_snapshot(&self) -> Result<Option<Snapshot>, StorageError> {
        let found = self.with_db(|db| {
            let Some(meta) = self.stored_snapshot_meta(db)? else { return Ok(None) };
            if let Some(v) = Self::get_meta(db, &meta_key(self.group, "snapshot_file"))? {
                let reference: SnapshotFileRef = codec::decode(&v, &|| "the snapshot file reference".into())?;
                return Ok(Some((meta, Ok(reference))));
            }
            // A store written before snapshot files.
            let Some(v) = Self::get_meta(db, &meta_key(self.group, "snapshot_data"))? else {
                return Err(StorageError::Corrupt("the snapshot data is missing".into()));
            };
            let (last, data): (LogId, Bytes) = codec::decode(&v, &|| "the snapshot data".into())?;
            Ok(Some((meta, Err((last, data)))))
        })?;
        let Some((meta, found)) = found else { return Ok(None) };
        let (last, data) = match found {
            Ok(reference) => {
                let dir = snapshot_file::dir_of(self.db.dir());
                let last = reference.last;
                let data = blocking(move || snapshot_file::read(&dir, &reference)).await?;
                (last, data)
            }
            Err((last, data)) => (last, SnapshotData::from_bytes(data)),
        };
        if last != meta.last_log_id {
            return Err(StorageError::Corrupt(format!(
                "the snapshot data is of {last}, its metadata of {}",
                meta.last_log_id
            )));
        }
        Ok(Some(Snapshot { meta, data }))
    }

    fn release_headroom(&self) -> bool {
        self.db.release_headroom()
    }

    fn headroom_in_use(&self) -> bool {
        self.db.headroom_in_use()
    }

    async fn compact(&self, up_to: Index) -> Result<(), StorageError> {
        let _bounds = self.bounds_lock.lock().await;
        let b = self.with_db(|db| self.bounds(db))?;
        if up_to > b.snapshot.index {
            return Err(Self::out_of_range(b, b.first, up_to + 1));
        }
        if up_to < b.first {
            return Ok(());
        }
        let op = Op::DeleteRange(
            Cf::Log,
            log_key(self.group, b.first).to_vec(),
            log_key(self.group, up_to + 1).to_vec(),
        );
        let after = Bounds { first: up_to + 1, last: b.last.max(up_to), snapshot: b.snapshot };
        self.write(vec![op], after, None, None).await
    }
}

#[cfg(test)]
mod priority_tests {
    use super::*;

    fn nice() -> i32 {
        rustix::process::getpriority_process(None).expect("this thread's nice value")
    }

    #[tokio::test]
    async fn the_snapshot_writer_is_lowered_relative_to_its_creator_never_raised() {
        // A node started at nice 15 (raising one's own nice value needs no privilege).
        rustix::process::setpriority_process(None, 15).expect("lower this thread");
        let writer = low_priority("test-writer", || Ok(nice())).await.expect("the writer runs");
        assert_eq!(writer, 19, "15 + 10, capped at 19; an absolute 10 would run above the node");
        assert_eq!(nice(), 15, "the creating thread keeps its own value");
    }

    #[tokio::test]
    async fn the_snapshot_writer_of_a_node_at_nice_zero_runs_at_ten() {
        let own = nice();
        let writer = low_priority("test-writer", || Ok(nice())).await.expect("the writer runs");
        assert_eq!(writer, (own + SNAPSHOT_WRITER_NICE_INCREMENT).min(19));
    }
}
