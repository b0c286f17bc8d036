//! The durability record: what this store had made durable, kept outside RocksDB so that a
//! truncated or deleted write-ahead log cannot roll it back silently.
//!
//! The record is a small file, `durability.rec`, beside the database: two slots of equal size
//! (at least [`SLOT_BYTES`]; the file is always exactly two slots long), each holding a
//! sequence number, two states of every log (hard state and last log id) and a crc32c. The
//! newest intact slot is the record. A write never goes over the slot holding the newest
//! state known to be on stable storage (synced, or flushed by a later WAL sync): a write torn
//! by a crash damages only the other slot, and that one is read instead.
//!
//! **Why a file of its own.** RocksDB's WAL recovery cannot tell a tail cut at a record
//! boundary, or a deleted WAL, from a clean one; only something outside the WAL can.
//!
//! **No extra sync per batch.** Each slot holds, for every log:
//! - `synced`: what the log held after the last WAL write that had returned (synced) when the
//!   slot was written; it never claims more than the WAL had;
//! - `possible`: what the log holds once the batch written after it is synced too; it never
//!   claims less than anything acknowledged.
//!
//! The writer thread writes batch k's slot with direct IO (`O_DIRECT`: the write reaches the
//! device, possibly only its volatile cache, before it returns), then batch k's synced WAL
//! write, whose `fdatasync` flushes the device's cache and the slot with it. Before answering
//! batch k's writers it records that the WAL write returned: the *confirmation*, a second
//! small file (`durability.confirmed`: the sequence number and crc of the slot it follows,
//! then one record of the slots' format) written through the page cache without a sync,
//! holds both states of every log equal to what the WAL now holds, with the sequence number
//! after that slot's. At open it is the record when it is intact and follows the newest slot
//! (same sequence number and crc): one that follows an older slot is older than that slot,
//! and one of another record (left from a record since removed or replaced) is never taken
//! for this one's. Its room (twice a slot) is allocated at open and when the slots grow, so
//! that on ext4 and XFS a full disk does not refuse a confirmation of a batch the WAL
//! already synced (a copy-on-write file system may still need room to overwrite). That is one device write per batch (the slot), one page-cache write
//! and never a sync of its own. The confirmation costs the answers no device IO (a second
//! direct slot write there cost about a tenth of an idle write's latency on a 3-node
//! cluster), and it never touches a slot: a buffered write to a page that the next direct
//! write covers would cost that write one more IO. It is removed with the record when the
//! record is turned off, and at open when the record file is missing (a confirmation without
//! its record is left over, and its sequence number means nothing to a new record).
//!
//! This needs the record and the WAL on one file system (both are in the data directory) on
//! which a direct overwrite lands in place and `fdatasync` flushes the device cache: ext4 and
//! XFS, unless mounted without barriers (where no sync is durable). Elsewhere (tmpfs, btrfs,
//! ZFS, FUSE; checked with `statfs`), or where direct IO is refused, a batch's slot is synced
//! on its own (one more sync per batch, with a warning). The store syncs one last exact slot
//! when it closes, and syncs both files once at open (what a killed process wrote is then on
//! stable storage).
//!
//! The flushed slot is the one batch k's own slot went to once batch k's WAL write returned:
//! it covers every answer so far, and the next batch's slot goes to the other one.
//!
//! **What a crash can hide.** At open, a log that ends before `synced` (or holds an older hard
//! state) lost data: reported as [`DataLoss`](raft_core::DataLoss) up to the later of
//! `possible` and `synced` ([`RecordedLog::is_whole`]). A log that ends between `synced` and
//! `possible` is *ambiguous*, and only the newest slot can be so: either the batch in flight
//! at the crash never finished its WAL sync (nothing of it was answered, no loss), or the
//! disk lost that batch after reporting it synced (its writers may have been answered). It is
//! taken as the first: the store logs a warning and reports no loss, and adopts the recorded
//! hard state (a vote it may have cast is kept; keeping one it never cast is safe).
//! - After a crash of the *process* (SIGKILL, OOM, panic) nothing is ambiguous: the
//!   confirmation written before the answers survives it (it is in the page cache), so the
//!   newest slot is ambiguous only if the WAL write had not returned. A WAL cut or deleted
//!   afterwards is always reported.
//! - After a *power loss* or kernel crash that write may be lost: a disk that then also lost
//!   exactly the batch it synced last, and nothing earlier, goes unnoticed, as it would in
//!   every Raft store without a record. Any earlier loss is reported. Counting the batch in
//!   flight as lost instead would leave a cluster that lost power as a whole without a
//!   leader: each node's record would name a batch none of their logs holds.
//!
//! **Where the newest configuration stands.** Each state also holds the log's
//! [`ConfigPosition`], followed from the writes (an append that carries a configuration
//! names it; a truncation or an overwrite that removes it makes it unknown; a snapshot past
//! it names the snapshot). At open a loss reports the `possible` one
//! ([`DataLoss::recorded_config`](raft_core::DataLoss::recorded_config)). While the log has
//! not reached what it lost, it stays as it was through writes that leave the log alone (a
//! restart while recovering reports it again), and becomes unknown at the first write that
//! changes the log (a later loss cannot be judged by the first one's configuration), until a
//! write names one again or a start finds the log whole and reads where it stands (see
//! `RocksStorage::newest_config_position`).
//!
//! A store written before the record existed starts one at its first open (what it had lost
//! before cannot be known); a record of the first format (one state per log, written after
//! the WAL sync) is read as `synced` = `possible`, and records of the first two formats hold
//! no configuration position (unknown). A store that keeps a record marks so in
//! RocksDB (flushed to a table file), and refuses to open if the record is then missing,
//! empty or zeroed.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use raft_core::{ConfigPosition, HardState, Index, LogId, StorageError};
use serde::{Deserialize, Serialize};

/// The record file's name in the data directory.
pub const FILE_NAME: &str = "durability.rec";
/// The confirmation's file name in the data directory: what the WAL had synced when the
/// latest batch was answered, written through the page cache (see the module docs).
pub const CONFIRMATION_FILE_NAME: &str = "durability.confirmed";
/// The smallest slot. A record that outgrows its slot (a store with many logs) is moved to a
/// file with slots twice as large, written aside and renamed over the old one.
pub(crate) const SLOT_BYTES: usize = 4096;
/// The largest slot: 64 MiB (about a million logs).
const SLOT_BYTES_MAX: usize = 64 << 20;
/// A slot of the first format: one state per log, written after the WAL sync it covers.
const MAGIC_V1: &[u8; 8] = b"RAFTDUR1";
/// A slot of the second format: two states per log, without the configuration's position.
const MAGIC_V2: &[u8; 8] = b"RAFTDUR2";
/// A slot of this format: [`RecordedLog`] per log.
const MAGIC: &[u8; 8] = b"RAFTDUR3";
/// Magic, sequence number, payload length.
const HEADER_BYTES: usize = 8 + 8 + 4;
const CRC_BYTES: usize = 4;

/// What the record holds for one log.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct LogRecord {
    /// The hard state as of the latest recorded write.
    pub(crate) hard_state: HardState,
    /// The log's last entry (or its snapshot's) as of the latest recorded write, or the floor
    /// of data found missing while the log has not reached it again.
    pub(crate) last: LogId,
    /// Where the log's newest configuration stands (see the module docs).
    pub(crate) config: ConfigPosition,
}

/// [`LogRecord`] as the first two formats hold it.
#[derive(Debug, Clone, Copy, Default, Deserialize)]
struct LogRecordV2 {
    hard_state: HardState,
    last: LogId,
}

impl From<LogRecordV2> for LogRecord {
    fn from(old: LogRecordV2) -> Self {
        Self { hard_state: old.hard_state, last: old.last, config: ConfigPosition(None) }
    }
}

/// What one slot holds for one log (see the module docs).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct RecordedLog {
    /// What the log holds once the batch written beside the slot is synced: covers every
    /// acknowledgement the log gave.
    pub(crate) possible: LogRecord,
    /// What the log held after the last WAL write that had returned when the slot was
    /// written: never more than the WAL had synced.
    pub(crate) synced: LogRecord,
}

impl RecordedLog {
    /// A slot in which the log is exactly `record` (nothing in flight).
    pub(crate) fn exact(record: LogRecord) -> Self {
        Self { possible: record, synced: record }
    }

    /// Whether a log found ending at `found` holds everything the WAL had synced: it reaches
    /// `synced`, or it is exactly `possible` (the batch in flight was a truncation, and it
    /// synced). Anything else is lost data.
    pub(crate) fn is_whole(&self, found: LogId) -> bool {
        found >= self.synced.last || found == self.possible.last
    }

    /// The last entry the log may have acknowledged.
    pub(crate) fn may_have_acked(&self) -> LogId {
        self.possible.last.max(self.synced.last)
    }
}

/// The slot contents for every log: `possible` from `possible`, `synced` from `synced` (a log
/// not yet in `synced` had nothing synced; one not in `possible` has nothing in flight).
pub(crate) fn slot_of(
    possible: &BTreeMap<u64, LogRecord>,
    synced: &BTreeMap<u64, LogRecord>,
) -> BTreeMap<u64, RecordedLog> {
    let mut out: BTreeMap<u64, RecordedLog> =
        synced.iter().map(|(g, r)| (*g, RecordedLog::exact(*r))).collect();
    for (group, record) in possible {
        out.entry(*group).or_default().possible = *record;
    }
    out
}

/// A change one write job makes to its log's record.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Mark {
    /// The log (group) written.
    pub(crate) group: u64,
    /// The hard state the job stores, if it stores one.
    pub(crate) hard_state: Option<HardState>,
    /// The log's last entry after the job, if the job changes it.
    pub(crate) last: Option<LogId>,
    /// How the job moves the log's newest configuration, if it may.
    pub(crate) config: Option<ConfigWrite>,
}

/// What a write job does to where the log's newest configuration stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ConfigWrite {
    /// Entries from `first` on were written, replacing what the log held there; `newest`
    /// names the newest configuration among them.
    Appended {
        /// The first index written.
        first: Index,
        /// The newest configuration entry written.
        newest: Option<LogId>,
    },
    /// The entries from this index on were removed.
    Truncated(Index),
    /// A snapshot ending at `last` was stored; `log_kept` when the log past it was kept.
    Snapshot {
        /// The snapshot's last entry.
        last: LogId,
        /// Whether the log was kept.
        log_kept: bool,
    },
    /// The position is this one (a new, empty log).
    Known(ConfigPosition),
}

impl ConfigWrite {
    /// The position after the job, from `before`.
    pub(crate) fn after(self, before: ConfigPosition) -> ConfigPosition {
        match self {
            ConfigWrite::Appended { newest: Some(at), .. } => ConfigPosition(Some(at)),
            ConfigWrite::Appended { first, newest: None } => before.after_truncate(first),
            ConfigWrite::Truncated(from) => before.after_truncate(from),
            ConfigWrite::Snapshot { last, log_kept } => before.after_snapshot(last, log_kept),
            ConfigWrite::Known(at) => at,
        }
    }
}

/// The record as the writer keeps it: each log's latest state, and the floors of data found
/// missing at open that the logs have not yet reached again.
#[derive(Debug, Clone, Default)]
pub(crate) struct Marks {
    logs: BTreeMap<u64, LogRecord>,
    floors: BTreeMap<u64, LogId>,
    /// The record read at open of each log not yet settled (its `synced` state is written
    /// back unchanged until then).
    at_open: BTreeMap<u64, RecordedLog>,
    /// Of each log that misses data: where the newest configuration of the log *as it is*
    /// stands (read from the log when the loss was found, then followed through the writes
    /// that change the log). The record's own place stays that of what was lost; the write
    /// that reaches the floor adopts this one, so that a later loss names witnesses again
    /// without the log being read back on the write path.
    shadows: BTreeMap<u64, ConfigPosition>,
}

impl Marks {
    /// The marks as a record read at open left them: every `possible` last entry is a floor
    /// until [`Marks::settle`] (at the log's first read) or a write reaches it.
    pub(crate) fn from_record(record: &BTreeMap<u64, RecordedLog>) -> Self {
        let logs = record.iter().map(|(group, r)| (*group, r.possible)).collect();
        let floors = record.iter().map(|(group, r)| (*group, r.may_have_acked())).collect();
        Self { logs, floors, at_open: record.clone(), shadows: BTreeMap::new() }
    }

    /// Each log's record once `marks` are applied too, without applying them.
    pub(crate) fn preview<'a>(&self, marks: impl IntoIterator<Item = &'a Mark>) -> BTreeMap<u64, LogRecord> {
        let mut after = Self {
            logs: self.logs.clone(),
            floors: self.floors.clone(),
            at_open: BTreeMap::new(),
            shadows: self.shadows.clone(),
        };
        for mark in marks {
            after.apply(mark);
        }
        after.logs
    }

    /// Applies one job's change, once its WAL write returned.
    pub(crate) fn apply(&mut self, mark: &Mark) {
        self.at_open.remove(&mark.group);
        let missing_data = self.floors.contains_key(&mark.group);
        let record = self.logs.entry(mark.group).or_default();
        if let Some(hs) = mark.hard_state {
            record.hard_state = hs;
        }
        if let Some(write) = mark.config {
            record.config = write.after(record.config);
            // `Known` states the record's place (a new log, a loss), not a change of the log.
            if missing_data && !matches!(write, ConfigWrite::Known(_)) {
                if let Some(shadow) = self.shadows.get_mut(&mark.group) {
                    *shadow = write.after(*shadow);
                }
            }
        }
        if let Some(last) = mark.last {
            match self.floors.get(&mark.group) {
                Some(floor) if last < *floor => record.last = *floor,
                Some(_) => {
                    self.floors.remove(&mark.group);
                    record.last = last;
                }
                None => record.last = last,
            }
        }
        // While the log misses what it lost, a write that changes the log leaves the recorded
        // place of the configuration of what was lost behind (entries acknowledged since may
        // have been appended under another, in a log that went back to an older state):
        // unknown until a later write names one. Writes that leave the log as it is (a hard
        // state, the write-back at open) keep it, so that a restart while recovering still
        // names the same witnesses. The write that reaches the floor leaves a log that holds
        // everything it may have acknowledged: its place is that of the log as it is (the
        // shadow; unknown when a truncation removed the entry the shadow named).
        if missing_data && mark.config.is_some() {
            record.config = match self.floors.contains_key(&mark.group) {
                true => ConfigPosition(None),
                false => self.shadows.remove(&mark.group).unwrap_or(ConfigPosition(None)),
            };
        }
        if !self.floors.contains_key(&mark.group) {
            self.shadows.remove(&mark.group);
        }
    }

    /// The log `group` was found to end at `found`: a floor it reaches is dropped (nothing was
    /// missing), and so is one of a record it is whole against ([`RecordedLog::is_whole`]:
    /// the batch in flight at the crash did not reach the disk, see the module docs); one it
    /// does not reach stays until a write reaches it.
    pub(crate) fn settle(&mut self, group: u64, found: LogId) {
        // The record read at open stays the log's `synced` state until the write-back of what
        // was found has returned from the WAL (`apply`): until then the WAL holds no more.
        let at_open = self.at_open.get(&group).copied();
        let reached = |floor: &LogId| found >= *floor || at_open.is_some_and(|r| r.is_whole(found));
        if self.floors.get(&group).is_some_and(reached) {
            self.floors.remove(&group);
            self.shadows.remove(&group);
            if let Some(record) = self.logs.get_mut(&group) {
                record.last = found;
            }
        }
    }

    /// Sets a floor for log `group` (data lost that the record never held: a whole data dir).
    pub(crate) fn set_floor(&mut self, group: u64, floor: LogId) {
        let current = self.floors.entry(group).or_default();
        *current = (*current).max(floor);
    }

    /// Sets where the newest configuration of log `group` as it is stands, while it misses
    /// data (see `shadows`); read from the log.
    pub(crate) fn set_shadow(&mut self, group: u64, position: ConfigPosition) {
        if self.floors.contains_key(&group) {
            self.shadows.insert(group, position);
        }
    }

    /// Drops the floor of log `group`: its next write records what the log holds.
    pub(crate) fn forget_floor(&mut self, group: u64) {
        self.shadows.remove(&group);
        self.floors.remove(&group);
    }

    /// Whether log `group` still misses data found missing at open.
    pub(crate) fn has_floor(&self, group: u64) -> bool {
        self.floors.contains_key(&group)
    }

    /// The slot to write before a batch that leads to `possible` (from [`Marks::preview`]):
    /// `synced` is each log now, except a log not yet settled since open, whose record read
    /// at open is kept (what its WAL holds is not known yet).
    pub(crate) fn slot(&self, possible: &BTreeMap<u64, LogRecord>) -> BTreeMap<u64, RecordedLog> {
        let mut slot = slot_of(possible, &self.logs);
        for (group, at_open) in &self.at_open {
            if let Some(recorded) = slot.get_mut(group) {
                recorded.synced = at_open.synced;
            }
        }
        slot
    }

    /// Each log's record.
    pub(crate) fn logs(&self) -> &BTreeMap<u64, LogRecord> {
        &self.logs
    }
}

/// The record file, open for writing.
#[derive(Debug)]
pub(crate) struct RecordFile {
    file: File,
    /// The same file opened for direct IO (`O_DIRECT`), which every write then goes through;
    /// `None` where the file system refuses direct IO.
    direct: Option<File>,
    /// Room for one slot at an address aligned for direct IO.
    buffer: Vec<u8>,
    path: PathBuf,
    /// The sequence number of the latest slot written.
    seq: u64,
    /// The slot (0 or 1) written last.
    latest: usize,
    /// The slot holding the newest state known to be on stable storage (synced, or flushed
    /// by a WAL sync after it was written): never overwritten until the other slot is too.
    flushed: usize,
    /// The size of each of the two slots.
    slot_bytes: usize,
    sync: bool,
    /// The slot written last (or the newest one read at open): what the next confirmation
    /// follows.
    latest_id: SlotId,
    /// The confirmation file, written through the page cache ([`RecordFile::confirm`]).
    confirmation: File,
    /// Where the confirmation is.
    confirmation_path: PathBuf,
}

/// The alignment direct IO needs (of the buffer, the offset and the length): a page, which
/// covers devices of 512-byte and 4 KiB logical blocks.
const DIRECT_ALIGN: usize = 4096;

/// The file systems on which a direct overwrite of an allocated block lands in place, so that
/// a later `fdatasync` of another file (the WAL) flushes it to stable storage: ext4 and XFS.
/// Elsewhere it may not (btrfs writes a new extent that only its next transaction commits;
/// ZFS before 2.3 and encrypted ext4 turn it into a buffered write).
const DIRECT_FILE_SYSTEMS: [u64; 2] = [0xEF53, 0x5846_5342];

/// Opens `path` for direct IO where that makes a slot durable with the WAL's sync; `None`
/// elsewhere (the slot is then synced on its own).
fn open_direct(path: &Path) -> Option<File> {
    use std::os::unix::fs::OpenOptionsExt;
    let refused = |why: String| {
        tracing::warn!(path = %path.display(), why, "the durability record is synced on its own here: each WAL batch waits for one more sync");
        None
    };
    match rustix::fs::statfs(path) {
        Ok(fs) if DIRECT_FILE_SYSTEMS.contains(&(fs.f_type as u64)) => {}
        Ok(fs) => return refused(format!("file system type {:#x} is not ext4 or XFS", fs.f_type)),
        Err(e) => return refused(format!("statfs: {e}")),
    }
    let flags = rustix::fs::OFlags::DIRECT.bits() as i32;
    match OpenOptions::new().write(true).custom_flags(flags).open(path) {
        Ok(file) => Some(file),
        Err(e) => refused(format!("direct IO: {e}")),
    }
}

/// Whether a direct write failed because the file system does not do direct IO (then every
/// later slot is synced on its own).
fn direct_io_refused(e: &std::io::Error) -> bool {
    [rustix::io::Errno::INVAL, rustix::io::Errno::OPNOTSUPP]
        .iter()
        .any(|errno| e.raw_os_error() == Some(errno.raw_os_error()))
}

/// What [`RecordFile::open`] found.
#[derive(Debug)]
pub(crate) struct Opened {
    pub(crate) file: RecordFile,
    /// The record read, or `None` when there was none (a new store, or one written before the
    /// record existed).
    pub(crate) record: Option<BTreeMap<u64, RecordedLog>>,
}

fn corrupt(path: &Path, what: &str) -> StorageError {
    StorageError::Corrupt(format!("durability record {}: {what}", path.display()))
}

fn io(path: &Path, e: &std::io::Error) -> StorageError {
    if e.raw_os_error() == Some(28) {
        return StorageError::Full;
    }
    StorageError::Io(format!("durability record {}: {e}", path.display()))
}

/// Opens (creating it if missing) `path` for reading and writing, and reads it whole.
fn open_and_read(path: &Path) -> Result<(File, Vec<u8>), StorageError> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(|e| io(path, &e))?;
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(&mut &file, &mut bytes).map_err(|e| io(path, &e))?;
    Ok((file, bytes))
}

/// Extends `file` to at least `len` bytes with zeros written out (blocks allocated, not a
/// hole), synced with its size when `sync`; what it holds is left as it is.
fn allocate(file: &File, path: &Path, len: usize, sync: bool) -> Result<(), StorageError> {
    let from = file.metadata().map_err(|e| io(path, &e))?.len();
    let Some(missing) = (len as u64).checked_sub(from).filter(|m| *m > 0) else {
        return Ok(());
    };
    file.write_all_at(&vec![0u8; missing as usize], from).map_err(|e| io(path, &e))?;
    if sync {
        file.sync_all().map_err(|e| io(path, &e))?;
    }
    Ok(())
}

/// Decodes one slot: `None` when it holds no valid record (never written, or torn).
fn decode_slot(slot: &[u8]) -> Option<(u64, BTreeMap<u64, RecordedLog>)> {
    let magic = slot.get(..8)?;
    if slot.len() < HEADER_BYTES + CRC_BYTES || (magic != MAGIC && magic != MAGIC_V2 && magic != MAGIC_V1) {
        return None;
    }
    let seq = u64::from_le_bytes(slot[8..16].try_into().ok()?);
    let len = u32::from_le_bytes(slot[16..20].try_into().ok()?) as usize;
    let end = HEADER_BYTES.checked_add(len)?;
    if end + CRC_BYTES > slot.len() {
        return None;
    }
    let crc = u32::from_le_bytes(slot[end..end + CRC_BYTES].try_into().ok()?);
    if crc32c::crc32c(&slot[..end]) != crc {
        return None;
    }
    let payload = &slot[HEADER_BYTES..end];
    let logs = if magic == MAGIC_V1 {
        let v1: BTreeMap<u64, LogRecordV2> = postcard::from_bytes(payload).ok()?;
        v1.into_iter().map(|(group, r)| (group, RecordedLog::exact(r.into()))).collect()
    } else if magic == MAGIC_V2 {
        #[derive(Deserialize)]
        struct RecordedLogV2 {
            possible: LogRecordV2,
            synced: LogRecordV2,
        }
        let v2: BTreeMap<u64, RecordedLogV2> = postcard::from_bytes(payload).ok()?;
        v2.into_iter()
            .map(|(group, r)| (group, RecordedLog { possible: r.possible.into(), synced: r.synced.into() }))
            .collect()
    } else {
        postcard::from_bytes(payload).ok()?
    };
    Some((seq, logs))
}

/// Encodes a slot of `slot_bytes` (`None` when the record does not fit in it).
fn encode_slot(
    seq: u64,
    logs: &BTreeMap<u64, RecordedLog>,
    slot_bytes: usize,
    path: &Path,
) -> Result<Option<Vec<u8>>, StorageError> {
    let mut slot = encode_record(seq, logs, path)?;
    if slot.len() > slot_bytes {
        return Ok(None);
    }
    slot.resize(slot_bytes, 0);
    Ok(Some(slot))
}

/// Encodes record `seq` without padding: magic, sequence number, length, payload, crc32c.
fn encode_record(seq: u64, logs: &BTreeMap<u64, RecordedLog>, path: &Path) -> Result<Vec<u8>, StorageError> {
    let payload = postcard::to_allocvec(logs).map_err(|e| corrupt(path, &format!("cannot encode: {e}")))?;
    let mut slot = Vec::with_capacity(HEADER_BYTES + payload.len() + CRC_BYTES);
    slot.extend_from_slice(MAGIC);
    slot.extend_from_slice(&seq.to_le_bytes());
    slot.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    slot.extend_from_slice(&payload);
    let crc = crc32c::crc32c(&slot);
    slot.extend_from_slice(&crc.to_le_bytes());
    Ok(slot)
}

/// What names one slot's contents: its sequence number and stored crc32c (a slot of another
/// record with the same sequence number has another crc, but for a chance of 2^-32).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct SlotId {
    seq: u64,
    crc: u32,
}

impl SlotId {
    /// The id of an encoded slot (`None` if it is too short to hold one).
    fn of(slot: &[u8]) -> Option<Self> {
        let seq = u64::from_le_bytes(slot.get(8..16)?.try_into().ok()?);
        let len = u32::from_le_bytes(slot.get(16..20)?.try_into().ok()?) as usize;
        let end = HEADER_BYTES.checked_add(len)?;
        let crc = u32::from_le_bytes(slot.get(end..end.checked_add(CRC_BYTES)?)?.try_into().ok()?);
        Some(Self { seq, crc })
    }
}

/// The confirmation's magic: it is followed by the [`SlotId`] of the slot it follows (8 + 4
/// bytes), then by one record encoded like a slot.
const CONFIRMATION_MAGIC: &[u8; 8] = b"RAFTCNF1";
const CONFIRMATION_HEADER_BYTES: usize = 8 + 8 + 4;

/// Decodes a confirmation: the slot it follows, and its record (`None` when it holds none, or
/// a torn one).
fn decode_confirmation(bytes: &[u8]) -> Option<(SlotId, u64, BTreeMap<u64, RecordedLog>)> {
    if bytes.get(..8)? != CONFIRMATION_MAGIC {
        return None;
    }
    let seq = u64::from_le_bytes(bytes.get(8..16)?.try_into().ok()?);
    let crc = u32::from_le_bytes(bytes.get(16..20)?.try_into().ok()?);
    let (confirmed_seq, logs) = decode_slot(bytes.get(CONFIRMATION_HEADER_BYTES..)?)?;
    Some((SlotId { seq, crc }, confirmed_seq, logs))
}

/// The slot size of a record file of `len` bytes (two equal slots).
fn slot_bytes_of(len: usize) -> usize {
    (len / 2).clamp(SLOT_BYTES, SLOT_BYTES_MAX)
}

impl RecordFile {
    /// Opens (or creates) the record of the store in `dir`. A file whose slots are both
    /// damaged is refused: it did exist, so what it recorded is unknown.
    pub(crate) fn open(dir: &Path, sync: bool) -> Result<Opened, StorageError> {
        let path = dir.join(FILE_NAME);
        let existed = path.exists();
        let confirmation_path = dir.join(CONFIRMATION_FILE_NAME);
        if !existed {
            // A confirmation without its record is left from a record that was removed (turned
            // off): its sequence number means nothing to the new record.
            match std::fs::remove_file(&confirmation_path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io(&confirmation_path, &e)),
                _ => {}
            }
        }
        let (confirmation, confirmed) = open_and_read(&confirmation_path)?;
        let (file, bytes) = open_and_read(&path)?;
        let slot_bytes = slot_bytes_of(bytes.len());
        let slots: Vec<_> = bytes.chunks(slot_bytes).take(2).map(decode_slot).collect();
        let newest = slots
            .into_iter()
            .enumerate()
            .filter_map(|(at, slot)| Some((at, slot?)))
            .max_by_key(|(_, (seq, _))| *seq);
        let never_written = bytes.iter().all(|b| *b == 0);
        let (latest, mut seq, mut record) = match newest {
            Some((at, (seq, logs))) => (at, seq, Some(logs)),
            None if !existed || never_written => (1, 0, None),
            None => return Err(corrupt(&path, "both slots are damaged")),
        };
        let latest_id = match record {
            Some(_) => bytes.chunks(slot_bytes).nth(latest).and_then(SlotId::of).unwrap_or_default(),
            None => SlotId::default(),
        };
        // The confirmation is the record when it follows the newest slot (written after it,
        // and about the same record). One that follows an older slot is older than the newest
        // slot, or belongs to a record since replaced: the slots then hold everything it could
        // have confirmed, as `possible`. A torn one is not read.
        if let Some((follows, confirmed_seq, logs)) = decode_confirmation(&confirmed) {
            if record.is_some() && follows == latest_id && confirmed_seq == latest_id.seq + 1 {
                (seq, record) = (confirmed_seq, Some(logs));
            }
        }
        // Room for the confirmation, allocated now so that a full disk does not refuse the
        // write that confirms a batch its WAL already synced. At best: a store opened on a
        // full disk (first opened by a build before the confirmation, say) still opens, and
        // its confirmations take the room as they go.
        if let Err(e) = allocate(&confirmation, &confirmation_path, 2 * slot_bytes, sync) {
            tracing::warn!(path = %confirmation_path.display(), error = %e, "no room allocated for the durability confirmation");
        }
        // What a killed process wrote without a sync is in the files but maybe not on stable
        // storage: one sync makes the newest slot the flushed one, and the confirmation
        // durable.
        if existed && sync {
            file.sync_data().map_err(|e| io(&path, &e))?;
            confirmation.sync_data().map_err(|e| io(&confirmation_path, &e))?;
        }
        let direct = open_direct(&path);
        let mut opened = Self {
            file,
            direct,
            buffer: Vec::new(),
            path,
            seq,
            latest,
            flushed: latest,
            slot_bytes,
            sync,
            latest_id,
            confirmation,
            confirmation_path,
        };
        if !existed {
            // The file itself must survive a crash: sync it and its directory entry.
            opened.write(&record.clone().unwrap_or_default())?;
            if sync {
                File::open(dir).and_then(|d| d.sync_all()).map_err(|e| io(dir, &e))?;
            }
        }
        Ok(Opened { file: opened, record })
    }

    /// Writes `logs` to the slot not holding the newest flushed state, and syncs it; a record
    /// that outgrew its slot moves to a file of larger slots first.
    pub(crate) fn write(&mut self, logs: &BTreeMap<u64, RecordedLog>) -> Result<(), StorageError> {
        self.write_slot(logs, self.sync)
    }

    /// Writes `logs` like [`RecordFile::write`], durable once the WAL write that follows
    /// returns ([`RecordFile::wal_synced`]): a direct write reaches the device before the WAL
    /// write starts, and the WAL's `fdatasync` flushes the device's cache, this slot with it
    /// (the record and the WAL share the data directory's file system). Where direct IO is
    /// not used the slot is synced here: one more sync per batch.
    pub(crate) fn write_beside_wal(&mut self, logs: &BTreeMap<u64, RecordedLog>) -> Result<(), StorageError> {
        let sync = self.sync && self.direct.is_none();
        self.write_slot(logs, sync)
    }

    /// Writes `logs` (every log exactly as its WAL synced it) as the confirmation, through the
    /// page cache and unsynced, with a sequence number above every slot's: a crash of the
    /// process does not lose it, and it never touches a slot (a buffered write to a page that
    /// a later direct write covers would cost that write one more IO). A power loss may lose
    /// or tear it; the slots then cover what it confirmed, as `possible`.
    pub(crate) fn confirm(&mut self, logs: &BTreeMap<u64, RecordedLog>) -> Result<(), StorageError> {
        // A confirmation follows a slot: one after another would not be read at open.
        debug_assert_eq!(self.seq, self.latest_id.seq, "a confirmation that follows no slot");
        let seq = self.seq + 1;
        let record = encode_record(seq, logs, &self.confirmation_path)?;
        let mut bytes = Vec::with_capacity(CONFIRMATION_HEADER_BYTES + record.len());
        bytes.extend_from_slice(CONFIRMATION_MAGIC);
        bytes.extend_from_slice(&self.latest_id.seq.to_le_bytes());
        bytes.extend_from_slice(&self.latest_id.crc.to_le_bytes());
        bytes.extend_from_slice(&record);
        self.confirmation.write_all_at(&bytes, 0).map_err(|e| io(&self.confirmation_path, &e))?;
        self.seq = seq;
        Ok(())
    }

    /// Writes `logs` like [`RecordFile::write`] without syncing it: a crash of the process does
    /// not lose it (a direct write is on the device, a buffered one in the page cache); a
    /// power loss may, or may tear it, which leaves the flushed slot.
    #[cfg(test)]
    pub(crate) fn write_unsynced(&mut self, logs: &BTreeMap<u64, RecordedLog>) -> Result<(), StorageError> {
        self.write_slot(logs, false)
    }

    /// A WAL write that began after the latest slot was written returned `Ok`: with direct IO
    /// its `fdatasync` flushed that slot too.
    pub(crate) fn wal_synced(&mut self) {
        if self.direct.is_some() {
            self.flushed = self.latest;
        }
    }

    fn write_slot(&mut self, logs: &BTreeMap<u64, RecordedLog>, sync: bool) -> Result<(), StorageError> {
        let seq = self.seq + 1;
        let slot = match encode_slot(seq, logs, self.slot_bytes, &self.path)? {
            Some(slot) => slot,
            None => return self.grow(seq, logs),
        };
        // Never over the newest flushed state: a torn write must leave it.
        let at = 1 - self.flushed;
        let offset = (at * self.slot_bytes) as u64;
        let direct_result = self.direct.as_ref().map(|direct| {
            self.buffer.clear();
            self.buffer.resize(slot.len() + DIRECT_ALIGN, 0);
            let at = self.buffer.as_ptr().align_offset(DIRECT_ALIGN);
            self.buffer[at..at + slot.len()].copy_from_slice(&slot);
            direct.write_all_at(&self.buffer[at..at + slot.len()], offset).and_then(|()| match sync {
                true => direct.sync_data(),
                false => Ok(()),
            })
        });
        match direct_result {
            Some(Ok(())) => {}
            // A file system that opened the file for direct IO but refuses the write: from
            // now on every slot is written through the page cache and synced.
            Some(Err(e)) if direct_io_refused(&e) => {
                tracing::warn!(path = %self.path.display(), error = %e, "the durability record cannot use direct IO here: each WAL batch waits for one more sync");
                self.direct = None;
                return self.write_slot(logs, self.sync);
            }
            Some(Err(e)) => return Err(io(&self.path, &e)),
            None => {
                self.file.write_all_at(&slot, offset).map_err(|e| io(&self.path, &e))?;
                if sync {
                    self.file.sync_data().map_err(|e| io(&self.path, &e))?;
                }
            }
        }
        self.seq = seq;
        self.latest = at;
        self.latest_id = SlotId::of(&slot).unwrap_or_default();
        if sync {
            self.flushed = at;
        }
        Ok(())
    }

    /// Writes `logs` as record `seq` into a new file of slots large enough for it, then
    /// renames that over the record: a crash leaves the old file or the new one, whole.
    fn grow(&mut self, seq: u64, logs: &BTreeMap<u64, RecordedLog>) -> Result<(), StorageError> {
        let mut slot_bytes = self.slot_bytes;
        let slot = loop {
            slot_bytes = slot_bytes.saturating_mul(2);
            if slot_bytes > SLOT_BYTES_MAX {
                return Err(StorageError::Io(format!(
                    "durability record {}: {} logs do not fit in {SLOT_BYTES_MAX} bytes",
                    self.path.display(),
                    logs.len()
                )));
            }
            if let Some(slot) = encode_slot(seq, logs, slot_bytes, &self.path)? {
                break slot;
            }
        };
        let dir = self.path.parent().map(Path::to_path_buf).unwrap_or_default();
        let fresh = dir.join(format!("{FILE_NAME}.new"));
        // Both slots hold the record (the first as `seq - 1`): a torn later write leaves one.
        let older = encode_slot(seq.saturating_sub(1), logs, slot_bytes, &self.path)?.unwrap_or_default();
        let mut bytes = vec![0u8; 2 * slot_bytes];
        bytes[..older.len()].copy_from_slice(&older);
        bytes[slot_bytes..2 * slot_bytes].copy_from_slice(&slot);
        std::fs::write(&fresh, &bytes).map_err(|e| io(&fresh, &e))?;
        let file = OpenOptions::new().read(true).write(true).open(&fresh).map_err(|e| io(&fresh, &e))?;
        if self.sync {
            file.sync_all().map_err(|e| io(&fresh, &e))?;
        }
        std::fs::rename(&fresh, &self.path).map_err(|e| io(&self.path, &e))?;
        if self.sync {
            File::open(&dir).and_then(|d| d.sync_all()).map_err(|e| io(&dir, &e))?;
        }
        self.file = file;
        self.direct = self.direct.take().and_then(|_| open_direct(&self.path));
        self.slot_bytes = slot_bytes;
        self.seq = seq;
        self.latest = 1;
        self.flushed = 1;
        self.latest_id = SlotId::of(&slot).unwrap_or_default();
        allocate(&self.confirmation, &self.confirmation_path, 2 * slot_bytes, self.sync)?;
        tracing::info!(path = %self.path.display(), slot_bytes, logs = logs.len(), "durability record grown");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log(term: u64, last: u64) -> LogRecord {
        LogRecord {
            hard_state: HardState { current_term: term, voted_for: Some(1) },
            last: LogId::new(term, last),
            config: ConfigPosition::default(),
        }
    }

    fn logs(term: u64, last: u64) -> BTreeMap<u64, RecordedLog> {
        BTreeMap::from([(0, RecordedLog::exact(log(term, last)))])
    }

    #[test]
    fn the_newest_intact_slot_is_read_and_a_torn_one_falls_back() {
        let dir = tempfile::tempdir().unwrap();
        let mut file = RecordFile::open(dir.path(), true).unwrap().file;
        file.write(&logs(2, 10)).unwrap();
        file.write(&logs(3, 20)).unwrap();
        drop(file);
        assert_eq!(RecordFile::open(dir.path(), true).unwrap().record, Some(logs(3, 20)));
        // Tear the newest slot (seq 1 went to slot 0 at creation, seq 3 too): the older one is
        // read.
        let path = dir.path().join(FILE_NAME);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[30] ^= 0xFF;
        std::fs::write(&path, &bytes).unwrap();
        assert_eq!(RecordFile::open(dir.path(), true).unwrap().record, Some(logs(2, 10)));
        // Both damaged: refused, never read as "nothing recorded".
        bytes[SLOT_BYTES + 30] ^= 0xFF;
        std::fs::write(&path, &bytes).unwrap();
        assert!(matches!(RecordFile::open(dir.path(), true), Err(StorageError::Corrupt(_))));
    }

    #[test]
    fn a_record_of_many_logs_grows_its_slots_and_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let mut file = RecordFile::open(dir.path(), true).unwrap().file;
        let record = |n: u64| -> BTreeMap<u64, RecordedLog> {
            (0..n)
                .map(|g| {
                    let hs = HardState { current_term: u64::MAX - g, voted_for: Some(u64::MAX) };
                    let possible = LogRecord {
                        hard_state: hs,
                        last: LogId::new(u64::MAX, u64::MAX),
                        config: ConfigPosition(Some(LogId::new(u64::MAX, u64::MAX))),
                    };
                    (u64::MAX - g, RecordedLog { possible, synced: LogRecord::default() })
                })
                .collect()
        };
        file.write(&record(10)).unwrap();
        file.write(&record(5_000)).unwrap();
        assert!(file.slot_bytes > SLOT_BYTES);
        file.write(&record(5_001)).unwrap();
        drop(file);
        let len = std::fs::metadata(dir.path().join(FILE_NAME)).unwrap().len() as usize;
        assert_eq!(len % (2 * SLOT_BYTES), 0, "two equal slots");
        assert_eq!(RecordFile::open(dir.path(), true).unwrap().record, Some(record(5_001)));
    }

    #[test]
    fn floors_stay_until_a_write_or_the_found_log_reaches_them() {
        let mut marks = Marks::from_record(&logs(2, 10));
        // The log was found at 7: the floor stays, and a write that ends below it keeps it.
        marks.settle(0, LogId::new(2, 7));
        marks.apply(&Mark { group: 0, hard_state: None, last: Some(LogId::new(2, 8)), config: None });
        assert_eq!(marks.logs()[&0].last, LogId::new(2, 10));
        marks.apply(&Mark { group: 0, hard_state: None, last: Some(LogId::new(3, 9)), config: None });
        assert_eq!(marks.logs()[&0].last, LogId::new(3, 9));
        // From now on a truncation lowers it.
        marks.apply(&Mark { group: 0, hard_state: None, last: Some(LogId::new(3, 5)), config: None });
        assert_eq!(marks.logs()[&0].last, LogId::new(3, 5));
        // A log found whole drops its floor at once.
        let mut marks = Marks::from_record(&logs(2, 10));
        marks.settle(0, LogId::new(2, 10));
        marks.apply(&Mark { group: 0, hard_state: None, last: Some(LogId::new(2, 4)), config: None });
        assert_eq!(marks.logs()[&0].last, LogId::new(2, 4));
    }

    #[test]
    fn the_write_that_reaches_the_floor_adopts_the_place_the_log_itself_has() {
        let write = |last: u64, config: ConfigWrite| Mark {
            group: 0,
            hard_state: None,
            last: Some(LogId::new(2, last)),
            config: Some(config),
        };
        let appended = |first, newest: Option<u64>| ConfigWrite::Appended {
            first,
            newest: newest.map(|i| LogId::new(2, i)),
        };
        // Found at 7 with its newest configuration at 3; the floor is 10.
        let mut marks = Marks::from_record(&logs(2, 10));
        marks.settle(0, LogId::new(2, 7));
        marks.set_shadow(0, ConfigPosition(Some(LogId::new(2, 3))));
        marks.apply(&write(8, appended(8, None)));
        assert_eq!(marks.logs()[&0].config, ConfigPosition(None), "unknown while data is missing");
        marks.apply(&write(12, appended(9, None)));
        assert_eq!(marks.logs()[&0].config, ConfigPosition(Some(LogId::new(2, 3))), "reached: the log's own");
        // A configuration appended meanwhile is the one adopted.
        let mut marks = Marks::from_record(&logs(2, 10));
        marks.settle(0, LogId::new(2, 7));
        marks.set_shadow(0, ConfigPosition(Some(LogId::new(2, 3))));
        marks.apply(&write(9, appended(8, Some(9))));
        marks.apply(&write(10, appended(10, None)));
        assert_eq!(marks.logs()[&0].config, ConfigPosition(Some(LogId::new(2, 9))));
        // A truncation that removes the entry it named: unknown, even once reached.
        let mut marks = Marks::from_record(&logs(2, 10));
        marks.settle(0, LogId::new(2, 7));
        marks.set_shadow(0, ConfigPosition(Some(LogId::new(2, 3))));
        marks.apply(&write(2, ConfigWrite::Truncated(3)));
        marks.apply(&write(10, appended(3, None)));
        assert_eq!(marks.logs()[&0].config, ConfigPosition(None));
        // A `Known` write states the record's place, not the log's: the shadow stays.
        let mut marks = Marks::from_record(&logs(2, 10));
        marks.settle(0, LogId::new(2, 7));
        marks.set_shadow(0, ConfigPosition(Some(LogId::new(2, 3))));
        marks.apply(&write(7, ConfigWrite::Known(ConfigPosition(None))));
        marks.apply(&write(10, appended(8, None)));
        assert_eq!(marks.logs()[&0].config, ConfigPosition(Some(LogId::new(2, 3))));
    }

    #[test]
    fn a_log_between_synced_and_possible_settles_and_one_below_synced_keeps_its_floor() {
        let record = BTreeMap::from([(0, RecordedLog { possible: log(2, 10), synced: log(2, 8) })]);
        // Found at 9: the batch in flight (9..=10) never finished its sync; no floor.
        let mut marks = Marks::from_record(&record);
        marks.settle(0, LogId::new(2, 9));
        assert!(!marks.has_floor(0));
        assert_eq!(marks.logs()[&0].last, LogId::new(2, 9));
        // Found at 7: lost for sure, and the floor is what may have been acknowledged (10).
        let mut marks = Marks::from_record(&record);
        marks.settle(0, LogId::new(2, 7));
        assert!(marks.has_floor(0));
        marks.apply(&Mark { group: 0, hard_state: None, last: Some(LogId::new(2, 9)), config: None });
        assert_eq!(marks.logs()[&0].last, LogId::new(2, 10));
    }

    #[test]
    fn a_slot_of_the_first_format_reads_as_synced_and_possible_alike() {
        let dir = tempfile::tempdir().expect("temp dir");
        let payload = postcard::to_allocvec(&BTreeMap::from([(0u64, log(3, 20))])).expect("encode");
        let mut slot = Vec::new();
        slot.extend_from_slice(MAGIC_V1);
        slot.extend_from_slice(&5u64.to_le_bytes());
        slot.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        slot.extend_from_slice(&payload);
        let crc = crc32c::crc32c(&slot);
        slot.extend_from_slice(&crc.to_le_bytes());
        slot.resize(SLOT_BYTES, 0);
        let mut bytes = vec![0u8; 2 * SLOT_BYTES];
        bytes[SLOT_BYTES..].copy_from_slice(&slot);
        std::fs::write(dir.path().join(FILE_NAME), &bytes).expect("write");
        let opened = RecordFile::open(dir.path(), true).expect("open");
        assert_eq!(opened.record, Some(logs(3, 20)));
        // The next write (seq 6) goes to the other slot, in this format, and wins.
        let mut file = opened.file;
        let next = BTreeMap::from([(0, RecordedLog { possible: log(3, 22), synced: log(3, 21) })]);
        file.write(&next).expect("write");
        drop(file);
        assert_eq!(RecordFile::open(dir.path(), true).expect("open").record, Some(next));
    }

    #[test]
    fn a_slot_of_the_second_format_reads_with_the_configuration_position_unknown() {
        #[derive(Serialize)]
        struct V2 {
            hard_state: HardState,
            last: LogId,
        }
        #[derive(Serialize)]
        struct RecordedV2 {
            possible: V2,
            synced: V2,
        }
        let hs = HardState { current_term: 3, voted_for: Some(1) };
        let v2 = RecordedV2 {
            possible: V2 { hard_state: hs, last: LogId::new(3, 22) },
            synced: V2 { hard_state: hs, last: LogId::new(3, 21) },
        };
        let payload = postcard::to_allocvec(&BTreeMap::from([(0u64, v2)])).expect("encode");
        let mut slot = Vec::new();
        slot.extend_from_slice(MAGIC_V2);
        slot.extend_from_slice(&5u64.to_le_bytes());
        slot.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        slot.extend_from_slice(&payload);
        let crc = crc32c::crc32c(&slot);
        slot.extend_from_slice(&crc.to_le_bytes());
        let (seq, logs) = decode_slot(&slot).expect("a valid slot");
        assert_eq!(seq, 5);
        let unknown = ConfigPosition(None);
        let expected = RecordedLog {
            possible: LogRecord { hard_state: hs, last: LogId::new(3, 22), config: unknown },
            synced: LogRecord { hard_state: hs, last: LogId::new(3, 21), config: unknown },
        };
        assert_eq!(logs, BTreeMap::from([(0, expected)]));
    }

    #[test]
    fn a_slot_takes_possible_and_synced_from_each_side() {
        let possible = BTreeMap::from([(0, log(2, 10)), (1, log(1, 5))]);
        let synced = BTreeMap::from([(0, log(2, 8)), (2, log(4, 4))]);
        let slot = slot_of(&possible, &synced);
        assert_eq!(slot[&0], RecordedLog { possible: log(2, 10), synced: log(2, 8) });
        assert_eq!(slot[&1], RecordedLog { possible: log(1, 5), synced: LogRecord::default() });
        assert_eq!(slot[&2], RecordedLog::exact(log(4, 4)));
    }

    #[test]
    fn a_confirmation_newer_than_the_slots_is_the_record_and_a_torn_older_or_orphaned_one_is_not() {
        let dir = tempfile::tempdir().expect("temp dir");
        let reopen = || RecordFile::open(dir.path(), true).expect("open");
        let mut file = reopen().file;
        file.write(&logs(2, 10)).expect("synced write");
        let slots = std::fs::read(dir.path().join(FILE_NAME)).expect("read");
        file.confirm(&logs(2, 11)).expect("confirm");
        drop(file);
        assert_eq!(std::fs::read(dir.path().join(FILE_NAME)).expect("read"), slots, "no slot was written");
        let mut file = reopen().file;
        assert_eq!(reopen().record, Some(logs(2, 11)), "the newest state is the confirmation's");
        // A slot written after it is newer.
        file.write(&logs(2, 12)).expect("synced write");
        assert_eq!(reopen().record, Some(logs(2, 12)));
        // A torn confirmation is not read.
        file.confirm(&logs(2, 13)).expect("confirm");
        assert_eq!(reopen().record, Some(logs(2, 13)));
        let path = dir.path().join(CONFIRMATION_FILE_NAME);
        let mut bytes = std::fs::read(&path).expect("read");
        bytes[30] ^= 0xFF;
        std::fs::write(&path, &bytes).expect("write");
        assert_eq!(reopen().record, Some(logs(2, 12)));
        bytes[30] ^= 0xFF;
        std::fs::write(&path, &bytes).expect("write");
        drop(file);
        // A record removed (turned off) and started again: the confirmation left behind, whose
        // sequence number is above the new record's, is removed, never read.
        std::fs::remove_file(dir.path().join(FILE_NAME)).expect("remove the record");
        let mut file = reopen().file;
        file.write(&logs(1, 1)).expect("synced write");
        assert_eq!(reopen().record, Some(logs(1, 1)));
    }

    /// Found by review: a confirmation left from a record since replaced (a build that
    /// removed only `durability.rec` when the record was turned off, a restore of that file
    /// alone) had a sequence number above the new record's and was read as the record.
    #[test]
    fn a_confirmation_of_another_record_is_not_read_even_with_the_next_sequence_number() {
        let dir = tempfile::tempdir().expect("temp dir");
        let reopen = || RecordFile::open(dir.path(), true).expect("open");
        let mut file = reopen().file;
        file.write(&logs(2, 10)).expect("write");
        file.write(&logs(2, 20)).expect("write");
        file.confirm(&logs(2, 21)).expect("confirm");
        drop(file);
        let confirmation = dir.path().join(CONFIRMATION_FILE_NAME);
        let stale = std::fs::read(&confirmation).expect("read");
        // The record is replaced by one with as many slots written, then the old confirmation
        // is put back: it has the sequence number that would follow the new newest slot.
        std::fs::remove_file(dir.path().join(FILE_NAME)).expect("remove");
        let mut file = reopen().file;
        file.write(&logs(1, 1)).expect("write");
        file.write(&logs(1, 2)).expect("write");
        drop(file);
        std::fs::write(&confirmation, &stale).expect("put back");
        let (follows, seq, _) = decode_confirmation(&stale).expect("a confirmation");
        assert_eq!((follows.seq, seq), (3, 4), "the stale confirmation follows a slot of the same number");
        assert_eq!(reopen().record, Some(logs(1, 2)));
    }

    #[test]
    fn the_confirmation_has_its_room_allocated_before_it_is_needed() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut file = RecordFile::open(dir.path(), true).expect("open").file;
        let len = || std::fs::metadata(dir.path().join(CONFIRMATION_FILE_NAME)).expect("metadata").len();
        assert_eq!(len(), 2 * SLOT_BYTES as u64, "allocated at open");
        // A record that outgrows its slots grows the confirmation's room with them.
        let many: BTreeMap<u64, RecordedLog> =
            (0..2_000).map(|g| (g, RecordedLog::exact(log(u64::MAX - g, u64::MAX - g)))).collect();
        file.write(&many).expect("write");
        assert!(file.slot_bytes > SLOT_BYTES);
        assert_eq!(len(), 2 * file.slot_bytes as u64, "grown with the slots");
        file.confirm(&many).expect("confirm");
        assert_eq!(len(), 2 * file.slot_bytes as u64, "the confirmation fit in its room");
        drop(file);
        assert_eq!(RecordFile::open(dir.path(), true).expect("open").record, Some(many));
    }

    #[test]
    fn unsynced_writes_never_overwrite_the_newest_flushed_slot() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut file = RecordFile::open(dir.path(), true).expect("open").file;
        file.write(&logs(2, 10)).expect("synced write");
        let flushed = file.flushed;
        // Two unsynced writes in a row (a batch's slot, then the one after its WAL write)
        // both go to the other slot.
        file.write_unsynced(&logs(2, 11)).expect("write");
        file.write_unsynced(&logs(2, 12)).expect("write");
        assert_eq!((file.latest, file.flushed), (1 - flushed, flushed));
        drop(file);
        // A power loss tears the unflushed slot: the flushed one is read, never nothing.
        let path = dir.path().join(FILE_NAME);
        let mut bytes = std::fs::read(&path).expect("read");
        bytes[(1 - flushed) * SLOT_BYTES + 30] ^= 0xFF;
        std::fs::write(&path, &bytes).expect("write");
        assert_eq!(RecordFile::open(dir.path(), true).expect("open").record, Some(logs(2, 10)));
    }
}
