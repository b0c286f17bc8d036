//! [`RocksDb`]: one RocksDB instance holding one or more Raft logs, its identity checks, and
//! the group-commit writer.
//!
//! Every write of every log goes through one writer thread. It takes a write job, then every
//! job queued behind it (up to `max_jobs_per_batch`), puts them all in one `WriteBatch` and
//! writes it with one synced WAL write; then it answers every job. A job is answered `Ok` only
//! after the synced write that holds it returned `Ok`, so throughput grows with the number of
//! concurrent writers instead of being capped at one fsync per write.
//!
//! After a failed write (a full disk, an IO error) the writer closes RocksDB and reopens it
//! before the next write: RocksDB refuses writes after such an error until reopened, and a
//! reopen replays exactly what reached the disk. A failed write is never reported as done.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard};
use std::thread::JoinHandle;

use raft_core::StorageError;
use rocksdb::{ColumnFamilyDescriptor, DBRecoveryMode, Options, WriteBatch, WriteOptions, DB};
use tokio::sync::{mpsc, oneshot};

use crate::codec::{self, CF_LOG, CF_META, COLUMN_FAMILIES, KEY_CLUSTER_ID, KEY_FORMAT_VERSION, KEY_NODE_ID};
use crate::durability::{Mark, Marks, RecordFile, RecordedLog};
use crate::error::{open_error, storage_error, OpenError};
use crate::RocksStorage;

/// Entries of a data dir whose names start with this are damaged files a repair moved aside
/// (`raft-node` moves a damaged store into `damaged-<unix seconds>/`); the store ignores them.
pub const DAMAGED_PREFIX: &str = "damaged-";
/// The file holding the headroom the store reserves on its disk
/// ([`RocksOptions::headroom_bytes`]): not part of the store's data (a repair leaves it where
/// it is).
pub const HEADROOM_FILE: &str = crate::headroom::FILE_NAME;

/// The on-disk format this build writes and reads.
pub const FORMAT_VERSION: u32 = 1;

/// Who a data directory belongs to; checked on every open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The cluster's id.
    pub cluster_id: String,
    /// This node's id.
    pub node_id: u64,
}

/// How the store is opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RocksOptions {
    /// Sync the WAL on every write. Turning it off breaks the durability contract (an
    /// acknowledged write can be lost on power failure); it exists to measure the cost of
    /// syncing and to prove that the sync-contract test notices.
    pub sync: bool,
    /// Most write jobs the writer puts in one synced batch.
    pub max_jobs_per_batch: usize,
    /// Most write jobs queued for the writer; more writers wait (back-pressure).
    pub queue_max: usize,
    /// Read and check every record (RocksDB block checksums and this store's own) when opening,
    /// so that a damaged store is refused at start rather than found when a read needs it.
    pub verify_on_open: bool,
    /// Most memory all memtables may take together, in bytes; reaching it flushes them to
    /// disk. Each column family's memtable is at most half of it.
    pub memtable_budget_bytes: usize,
    /// Most table (SST) files RocksDB keeps open; it reopens others when a read needs them.
    /// Bounded so that a large state cannot exhaust the process's file descriptors (RocksDB's
    /// own default is unlimited); `raft-node` keeps 256 descriptors outside its client
    /// connections for storage, peers and listeners. RocksDB needs at least 20.
    pub max_open_files: u16,
    /// Keep the durability record (`durability.rec`, see the crate docs): each synced batch
    /// is answered only once a record covering it is synced too. Turning it off lets a lost
    /// or cut write-ahead log go unnoticed (a forgotten vote, acknowledged entries gone); it
    /// exists to measure the record's cost.
    pub durability_record: bool,
    /// Room kept free on the data directory's file system (a file allocated at open), given
    /// up when a write fails on a full disk so that flushes, compactions, snapshots and
    /// catch-up can finish; new proposals are refused while it is in use (see the crate
    /// docs). 0: none.
    pub headroom_bytes: u64,
    /// Write-ahead log files kept to be written over again instead of deleted (RocksDB's
    /// `recycle_log_file_num`), with the durability record on. A sync of a recycled file
    /// changes no file size and allocates no block, so the file system syncs the data and
    /// flushes the device, with no journal commit of its own (see the crate docs). 0: every
    /// WAL is a new file, and damage in the middle of one is refused as corruption.
    pub recycle_wal_files: usize,
}

impl Default for RocksOptions {
    fn default() -> Self {
        Self {
            sync: true,
            max_jobs_per_batch: 1_024,
            queue_max: 4_096,
            verify_on_open: true,
            memtable_budget_bytes: 32 << 20,
            max_open_files: 128,
            durability_record: true,
            headroom_bytes: 64 << 20,
            recycle_wal_files: 4,
        }
    }
}

/// Which column family an operation touches.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Cf {
    Log,
    Meta,
}

/// One change inside a write job.
#[derive(Debug)]
pub(crate) enum Op {
    Put(Cf, Vec<u8>, Vec<u8>),
    /// Deletes keys in `[from, to)`.
    DeleteRange(Cf, Vec<u8>, Vec<u8>),
}

struct Job {
    ops: Vec<Op>,
    /// How the job changes its log's durability record.
    mark: Option<Mark>,
    reply: oneshot::Sender<Result<(), StorageError>>,
}

/// Counters of the write path, for tests and metrics.
#[derive(Debug, Default)]
struct Counters {
    /// Batches written with a synced WAL write that returned `Ok`.
    synced_batches: AtomicU64,
    /// Jobs answered `Ok`.
    acked_jobs: AtomicU64,
    /// Jobs answered `Ok` by a batch written with `sync` on.
    acked_jobs_synced: AtomicU64,
}

/// A log's bounds as stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Bounds {
    /// The first stored index (`snapshot.index + 1` when the log is empty).
    pub(crate) first: u64,
    /// The last stored index (`first - 1` when the log is empty).
    pub(crate) last: u64,
    /// The last entry of the stored snapshot (index 0 when there is none).
    pub(crate) snapshot: raft_core::LogId,
}

/// What the writer thread and the readers share.
struct Shared {
    dir: PathBuf,
    options: RocksOptions,
    /// The RocksDB options the instance was opened with (they hold its statistics).
    db_options: Options,
    /// `None` after a failed write until the writer reopened it.
    db: RwLock<Option<DB>>,
    counters: Counters,
    /// Each log's bounds as of its last successful write (cleared when RocksDB is reopened or a
    /// write fails): saves three reads per append.
    bounds: Mutex<std::collections::HashMap<u64, Bounds>>,
    /// The durability record as found at open (`None`: there was none).
    recorded: Option<std::collections::BTreeMap<u64, RecordedLog>>,
    /// The durability record as the writer keeps it.
    marks: Mutex<Marks>,
    /// The logs already compared with the record found at open.
    checked: Mutex<std::collections::HashSet<u64>>,
    /// The data each log was found to have lost at open.
    losses: Mutex<std::collections::HashMap<u64, raft_core::DataLoss>>,
    /// The logs whose snapshot reception left by the last process was looked for (once per
    /// open: later, a temporary file is a reception under way).
    receptions_resumed: Mutex<std::collections::HashSet<u64>>,
    /// The headroom reserved on the disk.
    headroom: crate::headroom::Headroom,
    /// Every slot written before a batch's WAL write (for tests of what a crash between the
    /// two leaves).
    #[cfg(test)]
    intents: Mutex<Vec<std::collections::BTreeMap<u64, RecordedLog>>>,
}

struct Handle {
    shared: Arc<Shared>,
    jobs: Mutex<Option<mpsc::Sender<Job>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        // Closing the queue ends the writer; joining it closes RocksDB before we return, so
        // the directory can be opened again at once.
        if let Ok(mut jobs) = self.jobs.lock() {
            jobs.take();
        }
        if let Some(t) = self.thread.lock().ok().and_then(|mut t| t.take()) {
            let _ = t.join();
        }
    }
}

/// An open store: one RocksDB instance, any number of logs ([`RocksDb::log`]). Cheap to clone;
/// RocksDB is closed when the last clone (and every [`RocksStorage`] made from it) is dropped.
#[derive(Clone)]
pub struct RocksDb {
    handle: Arc<Handle>,
}

impl std::fmt::Debug for RocksDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RocksDb").field("dir", &self.handle.shared.dir).finish_non_exhaustive()
    }
}

fn db_options(dir: &Path, create: bool, options: &RocksOptions) -> Options {
    let mut o = Options::default();
    // RocksDB's default memtables (64 MiB per column family, two of them) would make most of
    // a node's memory; the log is read back from them rarely (followers catching up).
    o.set_db_write_buffer_size(options.memtable_budget_bytes);
    o.create_if_missing(create);
    o.create_missing_column_families(create);
    // Check everything RocksDB can check, and stop on damage instead of serving around it.
    o.set_paranoid_checks(true);
    // A store written with the record may hold WAL files in RocksDB's recyclable format
    // (whatever `recycle_wal_files` says now): in the tolerant mode below, RocksDB takes a
    // checksum failure in such a file for its end and replays the next file whole, a hole
    // nothing could see (found by review). So it is replayed in point-in-time mode, always.
    let recorded = options.durability_record || dir.join(crate::durability::FILE_NAME).exists();
    if recorded {
        // Replay stops at the first record that does not follow: the end of a recycled file's
        // new records (its older records carry another file's number) or damage, and skips
        // every later file; the writes before it are kept. What that drops is found by the
        // durability record, which says what the WAL had synced and answered: acknowledged
        // entries or a vote gone are reported as lost data (`InitialState::lost`), never
        // taken silently, and the node recovers them from the cluster. (Opened with the
        // record off, such a store is a consistent earlier point in time, taken silently: the
        // risk that option documents.)
        o.set_wal_recovery_mode(DBRecoveryMode::PointInTime);
        if options.durability_record {
            o.set_recycle_log_file_num(options.recycle_wal_files);
        }
    } else {
        // A record cut off at the very end of the WAL can only come from a write that never
        // returned (a crash mid-write): it was not acknowledged, so dropping it loses
        // nothing. Damage anywhere else is reported as corruption.
        o.set_wal_recovery_mode(DBRecoveryMode::TolerateCorruptedTailRecords);
    }
    // Every flush takes both column families (RocksDB picks every one with unflushed data),
    // so once a flush ends, every WAL before the newest is obsolete. With independent flushes
    // an older WAL could hold log writes that a newer one follows for good, and one cut short
    // was replayed up to the cut and then the newer one whole: a log with a hole, or with
    // entries of a replaced history under newer ones (found by chaos and by review). Between a
    // memtable switch and the end of its flush (a crash, a flush that cannot run) two WALs are
    // live; point-in-time replay, above, stops at damage in the older one and skips the newer.
    o.set_atomic_flush(true);
    o.set_compression_type(rocksdb::DBCompressionType::None);
    o.enable_statistics();
    o.set_max_open_files(i32::from(options.max_open_files.max(20)));
    o
}

fn open_db(dir: &Path, options: &Options, rocks: &RocksOptions) -> Result<DB, OpenError> {
    let shown = dir.display().to_string();
    let cfs = COLUMN_FAMILIES.iter().map(|name| {
        let mut cf = Options::default();
        cf.set_write_buffer_size((rocks.memtable_budget_bytes / 2).max(1 << 20));
        cf.set_max_write_buffer_number(2);
        ColumnFamilyDescriptor::new(*name, cf)
    });
    DB::open_cf_descriptors(options, dir, cfs).map_err(|e| open_error(&shown, &e))
}

/// Refuses a store whose snapshot reference names a file that is not there (removed by
/// hand, or lost with a damaged file system) or that fails its checksums, length or end: the
/// store is damaged, not empty, and a node repairs it from the cluster before it starts
/// (found only by the restore, the damage would stop the node instead). Each file is read
/// once through, a chunk at a time (with `verify_on_open`; otherwise only its presence is
/// checked).
fn check_snapshot_files(db: &DB, dir: &Path, read_through: bool) -> Result<(), OpenError> {
    let shown = dir.display().to_string();
    let cf = db.cf_handle(CF_META).ok_or_else(|| OpenError::MissingColumnFamily(CF_META.into()))?;
    for item in db.iterator_cf(cf, rocksdb::IteratorMode::Start) {
        let (key, value) = item.map_err(|e| open_error(&shown, &e))?;
        if key.len() != 8 + b"snapshot_file".len() || !key.ends_with(b"snapshot_file") {
            continue;
        }
        let reference: crate::snapshot_file::SnapshotFileRef =
            codec::decode(&value, &|| "the snapshot file reference".into())
                .map_err(|e| OpenError::Corrupt(e.to_string()))?;
        let snapshots = crate::snapshot_file::dir_of(dir);
        // Not `is_file` (false on any error reading the metadata: an unreadable directory
        // would read as a missing file, and a whole store be fetched again for nothing).
        let checked = if read_through {
            crate::snapshot_file::verify(&snapshots, &reference)
        } else {
            crate::snapshot_file::exists(&snapshots, &reference)
        };
        checked.map_err(|e| match e {
            StorageError::Corrupt(why) => {
                OpenError::Corrupt(format!("{why} (the snapshot of {})", reference.last))
            }
            other => OpenError::Io(other.to_string()),
        })?;
    }
    Ok(())
}

/// Removes the temporary and unreferenced snapshot files an interrupted snapshot write left
/// (a crash between the file's rename and the database commit, or during the write), so that
/// crashes cannot fill the disk.
fn remove_snapshot_leftovers(db: &DB, dir: &Path) {
    let Some(cf) = db.cf_handle(CF_META) else { return };
    // A reference that cannot be read keeps every file of its group: never remove what may
    // be the snapshot in force.
    let referenced = |group: u64| -> Result<Option<String>, ()> {
        let Some(v) = db.get_cf(cf, codec::meta_key(group, "snapshot_file")).map_err(drop)? else {
            return Ok(None);
        };
        let reference: crate::snapshot_file::SnapshotFileRef =
            codec::decode(&v, &|| "the snapshot file reference".into()).map_err(drop)?;
        Ok(Some(reference.name))
    };
    let removed = crate::snapshot_file::remove_leftovers(&crate::snapshot_file::dir_of(dir), &referenced);
    if removed > 0 {
        tracing::info!(removed, dir = %dir.display(), "removed snapshot files left by interrupted writes");
    }
}

impl RocksDb {
    /// Opens (or, in an empty or missing directory, creates) the store at `dir` for
    /// `identity`. Refuses a directory that another process holds, that is damaged, that holds
    /// a newer format, or that belongs to another cluster or node; see [`OpenError`].
    pub fn open(
        dir: impl AsRef<Path>,
        identity: &Identity,
        options: RocksOptions,
    ) -> Result<Self, OpenError> {
        let dir = dir.as_ref().to_path_buf();
        let shown = dir.display().to_string();
        // Damaged files a repair moved aside, a fresh file system's lost+found, the headroom
        // reserve and a durability confirmation left without its record (removed at the
        // record's creation) do not count: such a directory is a new store's.
        let exists_non_empty = std::fs::read_dir(&dir)
            .map(|d| {
                d.filter_map(Result::ok).any(|e| {
                    let name = e.file_name().to_string_lossy().to_string();
                    !name.starts_with(DAMAGED_PREFIX)
                        && name != "lost+found"
                        && name != HEADROOM_FILE
                        && name != format!("{HEADROOM_FILE}.tmp")
                        && name != crate::durability::CONFIRMATION_FILE_NAME
                })
            })
            .unwrap_or(false);
        if exists_non_empty && !dir.join("CURRENT").exists() {
            // This store's own record beside the files: a raft store that lost its `CURRENT`,
            // damage to repair like any other (a foreign directory has no record).
            if dir.join(crate::durability::FILE_NAME).exists() {
                return Err(OpenError::Corrupt(format!(
                    "{shown}: the RocksDB CURRENT file is missing, though the store's durability record is there"
                )));
            }
            return Err(OpenError::MissingCurrent(shown));
        }
        let create = !exists_non_empty;
        let db_opts = db_options(&dir, create, &options);
        if !create {
            // Whose store it is, read-only first: a store of another cluster or node (or no
            // raft store at all) is refused before RocksDB writes anything into it.
            let read_only = DB::open_cf_for_read_only(&db_opts, &dir, COLUMN_FAMILIES, false)
                .map_err(|e| open_error(&shown, &e))?;
            check_identity(&read_only, identity, false, &shown)?;
        }
        let db = match open_db(&dir, &db_opts, &options) {
            // Replaying the write-ahead log writes a table file: on a full disk the headroom
            // is what lets the store open (found by the outside review: a node restarted on a
            // full disk could not start although its reserve was in its own directory).
            Err(OpenError::Io(m)) if crate::error::is_no_space(&m) && dir.join(HEADROOM_FILE).exists() => {
                tracing::warn!(dir = %shown, "the disk is full: the store's headroom is given up to open it");
                std::fs::remove_file(dir.join(HEADROOM_FILE))
                    .map_err(|e| OpenError::Io(format!("{shown}: removing the headroom: {e}")))?;
                open_db(&dir, &db_opts, &options)?
            }
            other => other?,
        };
        check_identity(&db, identity, create, &shown)?;
        if options.verify_on_open {
            verify_all(&db)?;
        }
        check_snapshot_files(&db, &dir, options.verify_on_open)?;
        remove_snapshot_leftovers(&db, &dir);
        let (record_file, record) = if options.durability_record {
            // A record this store keeps and that is gone is refused before anything is
            // written: opening would create an empty record (and remove the confirmation),
            // and the next open would take that for the store's own (found by review).
            let record_path = dir.join(crate::durability::FILE_NAME);
            // A failed look (EIO, ELOOP) is not a missing record: refused as transient IO.
            let present = record_path
                .try_exists()
                .map_err(|e| OpenError::Io(format!("{}: {e}", record_path.display())))?;
            if !present && record_kept(&db, &shown)? {
                return Err(record_missing(&shown));
            }
            let opened = RecordFile::open(&dir, options.sync).map_err(|e| match e {
                StorageError::Corrupt(m) => OpenError::Corrupt(m),
                other => OpenError::Io(other.to_string()),
            })?;
            (Some(opened.file), opened.record)
        } else {
            tracing::warn!(dir = %shown, "durability record off: a lost or cut write-ahead log will go unnoticed");
            (None, None)
        };
        match (record.is_some(), record_kept(&db, &shown)?, options.durability_record) {
            // Kept, and found.
            (true, true, true) => {}
            (false, true, true) => return Err(record_missing(&shown)),
            (found, false, true) => {
                if !found && !create {
                    tracing::warn!(
                        dir = %shown,
                        "the store has no durability record (written by an older version, or by one with \
                         the record off): data lost before now cannot be detected; recording from now on"
                    );
                }
                set_record_kept(&db, &shown, true)?;
            }
            (_, kept, false) => {
                if kept {
                    set_record_kept(&db, &shown, false)?;
                }
                // A record left behind would claim what this run no longer keeps up to date
                // (removed after the mark: a crash between the two leaves a store that opens).
                // Its confirmation first: one left alone is removed when a record starts again.
                for name in [crate::durability::CONFIRMATION_FILE_NAME, crate::durability::FILE_NAME] {
                    match std::fs::remove_file(dir.join(name)) {
                        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                            return Err(OpenError::Io(format!("{shown}: removing {name}: {e}")))
                        }
                        _ => {}
                    }
                }
            }
        }
        let marks = Marks::from_record(&record.clone().unwrap_or_default());
        let (tx, mut rx) = mpsc::channel(options.queue_max.max(1));
        let headroom = crate::headroom::Headroom::open(&dir, options.headroom_bytes);
        let shared = Arc::new(Shared {
            headroom,
            dir,
            options,
            db_options: db_opts,
            db: RwLock::new(Some(db)),
            counters: Counters::default(),
            bounds: Mutex::new(std::collections::HashMap::new()),
            recorded: record,
            marks: Mutex::new(marks),
            #[cfg(test)]
            intents: Mutex::default(),
            checked: Mutex::default(),
            losses: Mutex::default(),
            receptions_resumed: Mutex::default(),
        });
        let writer_shared = shared.clone();
        let thread = std::thread::Builder::new()
            .name("raft-rocks-writer".into())
            .spawn(move || writer_loop(&writer_shared, &mut rx, record_file))
            .map_err(|e| OpenError::Io(format!("starting the writer thread: {e}")))?;
        let handle = Handle { shared, jobs: Mutex::new(Some(tx)), thread: Mutex::new(Some(thread)) };
        Ok(Self { handle: Arc::new(handle) })
    }

    /// The log numbered `group` in this store (a node uses one; several Raft groups can share
    /// one store and its group commit).
    pub fn log(&self, group: u64) -> RocksStorage {
        RocksStorage::new(self.clone(), group)
    }

    /// The data directory.
    pub fn dir(&self) -> &Path {
        &self.handle.shared.dir
    }

    /// WAL syncs RocksDB performed (its `rocksdb.wal.synced` statistic): an independent
    /// witness of the sync path.
    pub fn wal_syncs(&self) -> u64 {
        self.handle.shared.db_options.get_ticker_count(rocksdb::statistics::Ticker::WalFileSynced)
    }

    /// Write jobs answered `Ok`, and how many of them by a batch written with sync on.
    pub fn acked_writes(&self) -> (u64, u64) {
        let c = &self.handle.shared.counters;
        (c.acked_jobs.load(Ordering::SeqCst), c.acked_jobs_synced.load(Ordering::SeqCst))
    }

    /// Batches written with a synced WAL write.
    pub fn synced_batches(&self) -> u64 {
        self.handle.shared.counters.synced_batches.load(Ordering::SeqCst)
    }

    /// Flushes memtables to SST files (for tests of on-disk damage and for backups).
    pub fn flush(&self) -> Result<(), StorageError> {
        let guard = self.read()?;
        let db = guard.as_ref().ok_or_else(reopening)?;
        let cfs = COLUMN_FAMILIES
            .iter()
            .map(|name| db.cf_handle(name).ok_or_else(|| missing_cf(name)))
            .collect::<Result<Vec<_>, _>>()?;
        db.flush_cfs_opt(&cfs.iter().collect::<Vec<_>>(), &rocksdb::FlushOptions::default())
            .map_err(|e| storage_error(&e))
    }

    /// Stops RocksDB's background flushes and compactions, waiting for those running: after a
    /// node's shutdown nothing writes into the data dir any more, even while a task that still
    /// holds the store has not yet dropped it (found by a test that removed the dir at once).
    /// A store closed after a failed write is left closed (not reopened for this).
    pub fn stop_background_work(&self) {
        if let Ok(guard) = self.handle.shared.db.read() {
            if let Some(db) = guard.as_ref() {
                db.cancel_all_background_work(true);
            }
        }
    }

    /// Flushes the `meta` column family into a table file, with the `log` column family in
    /// the same atomic flush (see `set_atomic_flush` in `db_options`).
    pub(crate) fn flush_meta(&self) -> Result<(), StorageError> {
        let guard = self.read()?;
        let db = guard.as_ref().ok_or_else(reopening)?;
        let meta = db.cf_handle(CF_META).ok_or_else(|| missing_cf(CF_META))?;
        let log = db.cf_handle(CF_LOG).ok_or_else(|| missing_cf(CF_LOG))?;
        db.flush_cfs_opt(&[&meta, &log], &rocksdb::FlushOptions::default()).map_err(|e| storage_error(&e))
    }

    /// The cached bounds of log `group`, if known.
    pub(crate) fn cached_bounds(&self, group: u64) -> Option<Bounds> {
        self.handle.shared.bounds.lock().ok().and_then(|m| m.get(&group).copied())
    }

    /// Records the bounds of log `group` after a successful write (or a fresh read).
    pub(crate) fn cache_bounds(&self, group: u64, bounds: Bounds) {
        if let Ok(mut m) = self.handle.shared.bounds.lock() {
            m.insert(group, bounds);
        }
    }

    /// Forgets the bounds of log `group` (after a failed write: what reached the disk is unknown).
    pub(crate) fn forget_bounds(&self, group: u64) {
        if let Ok(mut m) = self.handle.shared.bounds.lock() {
            m.remove(&group);
        }
    }

    /// Read access to RocksDB, reopening it first if a failed write closed it (a reopen that
    /// fails, e.g. on a still-full disk, is reported and tried again by the next call).
    pub(crate) fn read(&self) -> Result<RwLockReadGuard<'_, Option<DB>>, StorageError> {
        let shared = &self.handle.shared;
        let closed = shared.db.read().map_err(|_| StorageError::Poisoned)?.is_none();
        if closed {
            reopen(shared)?;
        }
        shared.db.read().map_err(|_| StorageError::Poisoned)
    }

    /// What the durability record said of log `group` when the store was opened; `None` once
    /// the log was compared with it ([`RocksDb::compared_with_record`]): later calls would
    /// compare a log changed since with a stale record.
    pub(crate) fn recorded_at_open(&self, group: u64) -> Option<Option<RecordedLog>> {
        let shared = &self.handle.shared;
        let compared = shared.checked.lock().map(|checked| checked.contains(&group)).unwrap_or(true);
        (!compared).then(|| shared.recorded.as_ref().and_then(|r| r.get(&group).copied()))
    }

    /// Log `group` was compared with the record found at open and the outcome is durable.
    /// Whether log `group`'s reception left by the last process is still to be looked for:
    /// `true` once per open of the store, `false` afterwards.
    pub(crate) fn claim_reception_resume(&self, group: u64) -> bool {
        self.handle.shared.receptions_resumed.lock().is_ok_and(|mut claimed| claimed.insert(group))
    }

    pub(crate) fn compared_with_record(&self, group: u64) {
        if let Ok(mut checked) = self.handle.shared.checked.lock() {
            checked.insert(group);
        }
    }

    /// Keeps the data loss found in log `group` at open, for later callers of
    /// `initial_state` (the node reads it before its driver does).
    pub(crate) fn remember_loss(&self, group: u64, lost: raft_core::DataLoss) {
        if let Ok(mut losses) = self.handle.shared.losses.lock() {
            losses.insert(group, lost);
        }
    }

    /// The data loss found in log `group` at open, while the log has not yet reached what was
    /// lost.
    pub(crate) fn unrecovered_loss(&self, group: u64) -> Option<raft_core::DataLoss> {
        let shared = &self.handle.shared;
        let still_missing = shared.marks.lock().is_ok_and(|marks| marks.has_floor(group));
        let mut losses = shared.losses.lock().ok()?;
        if !still_missing {
            losses.remove(&group);
        }
        losses.get(&group).cloned()
    }

    /// Whether log `group` still misses data it lost (it has not reached its floor).
    pub(crate) fn misses_data(&self, group: u64) -> bool {
        self.handle.shared.marks.lock().is_ok_and(|marks| marks.has_floor(group))
    }

    /// Sets where the newest configuration of log `group`, which misses data, stands in the
    /// log as it is (see [`Marks::set_shadow`]).
    pub(crate) fn set_config_shadow(&self, group: u64, position: raft_core::ConfigPosition) {
        if let Ok(mut marks) = self.handle.shared.marks.lock() {
            marks.set_shadow(group, position);
        }
    }

    /// Sets a floor of data log `group` lost (see [`Marks::set_floor`]).
    pub(crate) fn set_floor(&self, group: u64, floor: raft_core::LogId) {
        if let Ok(mut marks) = self.handle.shared.marks.lock() {
            marks.set_floor(group, floor);
        }
    }

    /// Drops the floor of data log `group` lost (the operator accepted the loss).
    pub(crate) fn forget_floor(&self, group: u64) {
        if let Ok(mut marks) = self.handle.shared.marks.lock() {
            marks.forget_floor(group);
        }
        if let Ok(mut losses) = self.handle.shared.losses.lock() {
            losses.remove(&group);
        }
    }

    /// Every slot written so far before a batch's WAL write (for tests).
    #[cfg(test)]
    pub(crate) fn intents(&self) -> Vec<std::collections::BTreeMap<u64, RecordedLog>> {
        self.handle.shared.intents.lock().expect("intents").clone()
    }

    /// Where the record now places log `group`'s newest configuration (for tests).
    #[cfg(test)]
    pub(crate) fn recorded_position(&self, group: u64) -> raft_core::ConfigPosition {
        let marks = self.handle.shared.marks.lock().expect("marks");
        marks.logs().get(&group).map(|r| r.config).unwrap_or_default()
    }

    /// Frees the headroom reserved on the disk (see `headroom.rs`); whether it freed any.
    pub(crate) fn release_headroom(&self) -> bool {
        self.handle.shared.headroom.release()
    }

    /// Whether the headroom reserved on the disk is in use (see `headroom.rs`).
    pub(crate) fn headroom_in_use(&self) -> bool {
        self.handle.shared.headroom.in_use()
    }

    /// Log `group` was found to end at `found` (see [`Marks::settle`]).
    pub(crate) fn settle_record(&self, group: u64, found: raft_core::LogId) {
        if let Ok(mut marks) = self.handle.shared.marks.lock() {
            marks.settle(group, found);
        }
    }

    /// Queues a write job and waits until it is durable (or failed), with the durability
    /// record that covers it.
    pub(crate) async fn write(&self, ops: Vec<Op>, mark: Option<Mark>) -> Result<(), StorageError> {
        let (reply, rx) = oneshot::channel();
        let tx = self.handle.jobs.lock().map_err(|_| StorageError::Poisoned)?.clone();
        let tx = tx.ok_or(StorageError::Poisoned)?;
        // A full queue makes this writer wait (bounded back-pressure); the writer thread drains
        // it in batches.
        tx.send(Job { ops, mark, reply })
            .await
            .map_err(|_| StorageError::Io("the writer thread stopped".into()))?;
        rx.await.map_err(|_| StorageError::Io("the writer thread stopped".into()))?
    }
}

pub(crate) fn reopening() -> StorageError {
    StorageError::Io("the store is being reopened after a failed write".into())
}

pub(crate) fn missing_cf(name: &str) -> StorageError {
    StorageError::Corrupt(format!("column family {name:?} is missing"))
}

/// The error for a store that keeps a durability record and has none (missing, empty or
/// zeroed).
fn record_missing(dir: &str) -> OpenError {
    OpenError::Corrupt(format!(
        "{dir}: the durability record ({}) is missing or empty although this store keeps one: \
         what the store had made durable cannot be checked",
        crate::durability::FILE_NAME
    ))
}

/// Whether the store says it keeps a durability record.
fn record_kept(db: &DB, dir: &str) -> Result<bool, OpenError> {
    let cf = db.cf_handle(CF_META).ok_or_else(|| OpenError::MissingColumnFamily(CF_META.into()))?;
    Ok(db.get_cf(cf, codec::KEY_RECORD_KEPT).map_err(|e| open_error(dir, &e))?.is_some())
}

/// Marks the store as keeping a durability record (or not), synced and flushed to a table
/// file at once: a lost write-ahead log must not take the mark with it.
fn set_record_kept(db: &DB, dir: &str, kept: bool) -> Result<(), OpenError> {
    let cf = db.cf_handle(CF_META).ok_or_else(|| OpenError::MissingColumnFamily(CF_META.into()))?;
    let mut batch = WriteBatch::default();
    if kept {
        let value = codec::encode(&true).map_err(|e| OpenError::Corrupt(e.to_string()))?;
        batch.put_cf(cf, codec::KEY_RECORD_KEPT, value);
    } else {
        batch.delete_cf(cf, codec::KEY_RECORD_KEPT);
    }
    let mut wo = WriteOptions::default();
    wo.set_sync(true);
    db.write_opt(batch, &wo).map_err(|e| open_error(dir, &e))?;
    db.flush_cf(cf).map_err(|e| open_error(dir, &e))
}

fn check_identity(db: &DB, identity: &Identity, created: bool, dir: &str) -> Result<(), OpenError> {
    let cf = db.cf_handle(CF_META).ok_or_else(|| OpenError::MissingColumnFamily(CF_META.into()))?;
    if db.cf_handle(CF_LOG).is_none() {
        return Err(OpenError::MissingColumnFamily(CF_LOG.into()));
    }
    let read = |key: &[u8]| -> Result<Option<Vec<u8>>, OpenError> {
        db.get_cf(cf, key).map_err(|e| open_error(dir, &e))
    };
    let corrupt = |e: StorageError| OpenError::Corrupt(e.to_string());
    match read(KEY_FORMAT_VERSION)? {
        None if created => {
            let mut batch = WriteBatch::default();
            let put =
                |b: &mut WriteBatch, k: &[u8], v: Result<Vec<u8>, StorageError>| -> Result<(), OpenError> {
                    b.put_cf(cf, k, v.map_err(corrupt)?);
                    Ok(())
                };
            put(&mut batch, KEY_FORMAT_VERSION, codec::encode(&FORMAT_VERSION))?;
            put(&mut batch, KEY_CLUSTER_ID, codec::encode(&identity.cluster_id))?;
            put(&mut batch, KEY_NODE_ID, codec::encode(&identity.node_id))?;
            let mut wo = WriteOptions::default();
            wo.set_sync(true);
            db.write_opt(batch, &wo).map_err(|e| open_error(dir, &e))?;
            // Into a table file at once: the store stays recognisable as this node's even if
            // its write-ahead log is lost later (which the durability record then reports).
            db.flush_cf(cf).map_err(|e| open_error(dir, &e))?;
            Ok(())
        }
        None => {
            Err(OpenError::Corrupt("the store has no format version: not a raft store, or damaged".into()))
        }
        Some(v) => {
            let found: u32 = codec::decode(&v, &|| "the format version".into()).map_err(corrupt)?;
            if found != FORMAT_VERSION {
                return Err(OpenError::FormatVersion { found, supported: FORMAT_VERSION });
            }
            let cluster: String = match read(KEY_CLUSTER_ID)? {
                Some(v) => codec::decode(&v, &|| "the cluster id".into()).map_err(corrupt)?,
                None => return Err(OpenError::Corrupt("the cluster id is missing".into())),
            };
            if cluster != identity.cluster_id {
                return Err(OpenError::ClusterMismatch {
                    expected: identity.cluster_id.clone(),
                    found: cluster,
                });
            }
            let node: u64 = match read(KEY_NODE_ID)? {
                Some(v) => codec::decode(&v, &|| "the node id".into()).map_err(corrupt)?,
                None => return Err(OpenError::Corrupt("the node id is missing".into())),
            };
            if node != identity.node_id {
                return Err(OpenError::NodeMismatch { expected: identity.node_id, found: node });
            }
            Ok(())
        }
    }
}

/// Read options for a scan that reads each block once (the log read for a follower, for
/// applying or at open, a whole-store check): its blocks stay out of the block cache, which
/// keeps the blocks point reads use, and they cost no memory once read.
pub(crate) fn scan_options() -> rocksdb::ReadOptions {
    let mut options = rocksdb::ReadOptions::default();
    options.fill_cache(false);
    options
}

/// Reads every record of both column families: RocksDB verifies block checksums, and every
/// frame's own checksum is checked.
fn verify_all(db: &DB) -> Result<(), OpenError> {
    for name in COLUMN_FAMILIES {
        let cf = db.cf_handle(name).ok_or_else(|| OpenError::MissingColumnFamily(name.into()))?;
        for item in db.iterator_cf_opt(cf, scan_options(), rocksdb::IteratorMode::Start) {
            let (key, value) = item.map_err(|e| OpenError::Corrupt(e.to_string()))?;
            let what = || format!("record {key:?} of column family {name:?}");
            codec::check_frame(&value, &what).map_err(|e| OpenError::Corrupt(e.to_string()))?;
        }
    }
    Ok(())
}

fn writer_loop(shared: &Shared, jobs: &mut mpsc::Receiver<Job>, mut record: Option<RecordFile>) {
    let recording = shared.options.durability_record;
    loop {
        // The next batch: the first job to come, and those queued behind it.
        let mut batch = Vec::new();
        match jobs.blocking_recv() {
            Some(first) => batch.push(first),
            None => break,
        }
        gather(shared, jobs, &mut batch);
        if recording {
            batch = match write_intent(shared, record.as_mut(), batch) {
                Some(batch) => batch,
                None => continue,
            };
        }
        let mut result = write_batch(shared, &batch);
        let count = batch.len() as u64;
        if recording {
            if result.is_ok() {
                if let Some(file) = record.as_mut() {
                    file.wal_synced();
                }
                match shared.marks.lock() {
                    Ok(mut marks) => {
                        batch.iter().filter_map(|j| j.mark.as_ref()).for_each(|mark| marks.apply(mark))
                    }
                    Err(_) => result = Err(StorageError::Poisoned),
                }
            }
            // Before the answers, the record says this batch's WAL write returned, so that a
            // crash of the process after them cannot leave it looking in flight: the
            // confirmation (through the page cache, no device IO) holds what the WAL now holds.
            if let Err(e) = record_synced(shared, record.as_mut(), false) {
                // A killed process would leave the batch looking in flight: refused.
                result = result.and(Err(e));
            }
        }
        if result.is_ok() {
            shared.counters.acked_jobs.fetch_add(count, Ordering::SeqCst);
            if shared.options.sync {
                shared.counters.synced_batches.fetch_add(1, Ordering::SeqCst);
                shared.counters.acked_jobs_synced.fetch_add(count, Ordering::SeqCst);
            }
        }
        for job in batch {
            let _ = job.reply.send(result.clone());
        }
    }
    // The store is closing: it stops with an exact record, synced.
    if recording {
        let _ = record_synced(shared, record.as_mut(), true);
    }
}

/// Adds the jobs already queued to `batch`, up to `max_jobs_per_batch`.
fn gather(shared: &Shared, jobs: &mut mpsc::Receiver<Job>, batch: &mut Vec<Job>) {
    while batch.len() < shared.options.max_jobs_per_batch.max(1) {
        match jobs.try_recv() {
            Ok(job) => batch.push(job),
            Err(_) => break,
        }
    }
}

/// Writes the record slot covering `batch` (`possible`: every log once the batch is written;
/// `synced`: every log now), made durable by the batch's own WAL sync. Returns the batch, or
/// `None` after failing its jobs when the slot could not be written.
fn write_intent(shared: &Shared, record: Option<&mut RecordFile>, batch: Vec<Job>) -> Option<Vec<Job>> {
    let written = match (record, shared.marks.lock()) {
        (Some(file), Ok(marks)) => {
            let possible = marks.preview(batch.iter().filter_map(|j| j.mark.as_ref()));
            let slot = marks.slot(&possible);
            drop(marks);
            #[cfg(test)]
            if let Ok(mut intents) = shared.intents.lock() {
                intents.push(slot.clone());
            }
            file.write_beside_wal(&slot)
        }
        (None, _) => Err(StorageError::Io("the durability record is not open".into())),
        (_, Err(_)) => Err(StorageError::Poisoned),
    };
    match written {
        Ok(()) => Some(batch),
        Err(e) => {
            tracing::error!(error = %e, "the durability record could not be written; the writes it covers are refused");
            for job in batch {
                let _ = job.reply.send(Err(e.clone()));
            }
            None
        }
    }
}

/// Records every log as its WAL synced it, after a batch's WAL write returned (or failed):
/// nothing in flight (a log not yet read since open keeps its record). While the store runs,
/// as the confirmation, through the page cache: it survives a crash of the process, and a
/// power loss that loses or tears it leaves the flushed slot, whose `synced` state is one
/// batch behind (see `durability.rs`, "What a crash can hide"). As the store closes
/// (`closing`), as a synced slot.
fn record_synced(
    shared: &Shared,
    record: Option<&mut RecordFile>,
    closing: bool,
) -> Result<(), StorageError> {
    let file = record.ok_or_else(|| StorageError::Io("the durability record is not open".into()))?;
    let marks = shared.marks.lock().map_err(|_| StorageError::Poisoned)?;
    let slot = marks.slot(marks.logs());
    drop(marks);
    let written = if closing { file.write(&slot) } else { file.confirm(&slot) };
    if let Err(e) = &written {
        tracing::error!(error = %e, "the durability record could not be written after a batch; its writes are refused");
    }
    written
}

/// Writes every job's ops as one batch with one (synced) WAL write.
fn write_batch(shared: &Shared, jobs: &[Job]) -> Result<(), StorageError> {
    let needs_reopen = shared.db.read().map_err(|_| StorageError::Poisoned)?.is_none();
    if needs_reopen {
        reopen(shared)?;
    }
    let guard = shared.db.read().map_err(|_| StorageError::Poisoned)?;
    let db = guard.as_ref().ok_or_else(reopening)?;
    let log = db.cf_handle(CF_LOG).ok_or_else(|| missing_cf(CF_LOG))?;
    let meta = db.cf_handle(CF_META).ok_or_else(|| missing_cf(CF_META))?;
    let mut batch = WriteBatch::default();
    for job in jobs {
        for op in &job.ops {
            match op {
                Op::Put(cf, k, v) => batch.put_cf(if matches!(cf, Cf::Log) { log } else { meta }, k, v),
                Op::DeleteRange(cf, from, to) => {
                    batch.delete_range_cf(if matches!(cf, Cf::Log) { log } else { meta }, from, to)
                }
            }
        }
    }
    let mut wo = WriteOptions::default();
    wo.set_sync(shared.options.sync);
    match db.write_opt(batch, &wo) {
        Ok(()) => Ok(()),
        Err(e) => {
            let error = storage_error(&e);
            tracing::error!(error = %e, "write failed; the store will be reopened before the next write");
            drop(guard);
            // RocksDB refuses writes after a failed WAL write or sync until reopened; close
            // it now so that the next write reopens it from what is really on disk.
            if let Ok(mut db) = shared.db.write() {
                db.take();
            }
            Err(error)
        }
    }
}

fn reopen(shared: &Shared) -> Result<(), StorageError> {
    let mut db = shared.db.write().map_err(|_| StorageError::Poisoned)?;
    if db.is_some() {
        return Ok(());
    }
    match open_db(&shared.dir, &db_options(&shared.dir, false, &shared.options), &shared.options) {
        Ok(opened) => {
            tracing::info!(dir = %shared.dir.display(), "store reopened after a failed write");
            if let Ok(mut bounds) = shared.bounds.lock() {
                bounds.clear();
            }
            *db = Some(opened);
            Ok(())
        }
        Err(OpenError::Io(m)) if crate::error::is_no_space(&m) => Err(StorageError::Full),
        Err(e) => Err(e.into()),
    }
}
