//! The durability record: what this store had made durable, kept outside RocksDB so that a
//! truncated or deleted write-ahead log cannot roll it back silently.
//!
//! The record is a small file, `durability.rec`, beside the database: two slots of equal size
//! (at least [`SLOT_BYTES`]; the file is always exactly two slots long), written alternately, each holding a sequence number, every log's hard
//! state and last log id, and a crc32c. A write goes to the slot the previous one did not use
//! and is synced before the writes it describes are acknowledged; a write torn by a crash
//! damages only its own slot, and the other slot (older, and covering everything acknowledged)
//! is read instead.
//!
//! **Why a file of its own, synced after each WAL sync.** RocksDB's WAL recovery cannot tell a
//! tail cut at a record boundary, or a deleted WAL, from a clean one; only something outside
//! the WAL can. The record is synced after the WAL sync of the batches it covers and before
//! their writers are answered, by a thread of its own: while the record of batch k syncs, the
//! WAL write of batch k+1 proceeds, so the throughput of synced batches is unchanged and each
//! acknowledgement waits for one more small sync. Because the record is written only after
//! the WAL sync, it never claims more than the WAL had (a crash between the two leaves the
//! record behind, with nothing acknowledged past it); because it is synced before the answer,
//! it never claims less than anything acknowledged. A store written before the record existed
//! starts one at its first open (what it had lost before cannot be known).

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use raft_core::{HardState, LogId, StorageError};
use serde::{Deserialize, Serialize};

/// The record file's name in the data directory.
pub(crate) const FILE_NAME: &str = "durability.rec";
/// The smallest slot. A record that outgrows its slot (a store with many logs) is moved to a
/// file with slots twice as large, written aside and renamed over the old one.
pub(crate) const SLOT_BYTES: usize = 4096;
/// The largest slot: 64 MiB (about a million logs).
const SLOT_BYTES_MAX: usize = 64 << 20;
const MAGIC: &[u8; 8] = b"RAFTDUR1";
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
}

/// The record as the writer keeps it: each log's latest state, and the floors of data found
/// missing at open that the logs have not yet reached again.
#[derive(Debug, Clone, Default)]
pub(crate) struct Marks {
    logs: BTreeMap<u64, LogRecord>,
    floors: BTreeMap<u64, LogId>,
}

impl Marks {
    /// The marks as a record read at open left them: every recorded last entry is a floor
    /// until [`Marks::settle`] (at the log's first read) or a write reaches it.
    pub(crate) fn from_record(logs: BTreeMap<u64, LogRecord>) -> Self {
        let floors = logs.iter().map(|(group, r)| (*group, r.last)).collect();
        Self { logs, floors }
    }

    /// Applies one job's change.
    pub(crate) fn apply(&mut self, mark: &Mark) {
        let record = self.logs.entry(mark.group).or_default();
        if let Some(hs) = mark.hard_state {
            record.hard_state = hs;
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
    }

    /// The log `group` was found to end at `found`: a floor it reaches is dropped (nothing was
    /// missing); one it does not reach stays until a write reaches it.
    pub(crate) fn settle(&mut self, group: u64, found: LogId) {
        if self.floors.get(&group).is_some_and(|floor| found >= *floor) {
            self.floors.remove(&group);
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

    /// Drops the floor of log `group`: its next write records what the log holds.
    pub(crate) fn forget_floor(&mut self, group: u64) {
        self.floors.remove(&group);
    }

    /// Whether log `group` still misses data found missing at open.
    pub(crate) fn has_floor(&self, group: u64) -> bool {
        self.floors.contains_key(&group)
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
    path: PathBuf,
    /// The sequence number of the latest slot written.
    seq: u64,
    /// The size of each of the two slots.
    slot_bytes: usize,
    sync: bool,
}

/// What [`RecordFile::open`] found.
#[derive(Debug)]
pub(crate) struct Opened {
    pub(crate) file: RecordFile,
    /// The record read, or `None` when there was none (a new store, or one written before the
    /// record existed).
    pub(crate) record: Option<BTreeMap<u64, LogRecord>>,
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

/// Decodes one slot: `None` when it holds no valid record (never written, or torn).
fn decode_slot(slot: &[u8]) -> Option<(u64, BTreeMap<u64, LogRecord>)> {
    if slot.len() < HEADER_BYTES + CRC_BYTES || &slot[..8] != MAGIC {
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
    let logs = postcard::from_bytes(&slot[HEADER_BYTES..end]).ok()?;
    Some((seq, logs))
}

/// Encodes a slot of `slot_bytes` (`None` when the record does not fit in it).
fn encode_slot(
    seq: u64,
    logs: &BTreeMap<u64, LogRecord>,
    slot_bytes: usize,
    path: &Path,
) -> Result<Option<Vec<u8>>, StorageError> {
    let payload = postcard::to_allocvec(logs).map_err(|e| corrupt(path, &format!("cannot encode: {e}")))?;
    if HEADER_BYTES + payload.len() + CRC_BYTES > slot_bytes {
        return Ok(None);
    }
    let mut slot = Vec::with_capacity(slot_bytes);
    slot.extend_from_slice(MAGIC);
    slot.extend_from_slice(&seq.to_le_bytes());
    slot.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    slot.extend_from_slice(&payload);
    let crc = crc32c::crc32c(&slot);
    slot.extend_from_slice(&crc.to_le_bytes());
    slot.resize(slot_bytes, 0);
    Ok(Some(slot))
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
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| io(&path, &e))?;
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut &file, &mut bytes).map_err(|e| io(&path, &e))?;
        let slot_bytes = slot_bytes_of(bytes.len());
        let slots: Vec<_> = bytes.chunks(slot_bytes).take(2).map(decode_slot).collect();
        let newest = slots.into_iter().flatten().max_by_key(|(seq, _)| *seq);
        let never_written = bytes.iter().all(|b| *b == 0);
        let (seq, record) = match newest {
            Some((seq, logs)) => (seq, Some(logs)),
            None if !existed || never_written => (0, None),
            None => return Err(corrupt(&path, "both slots are damaged")),
        };
        let mut opened = Self { file, path, seq, slot_bytes, sync };
        if !existed {
            // The file itself must survive a crash: sync it and its directory entry.
            opened.write(&record.clone().unwrap_or_default())?;
            if sync {
                File::open(dir).and_then(|d| d.sync_all()).map_err(|e| io(dir, &e))?;
            }
        }
        Ok(Opened { file: opened, record })
    }

    /// Writes `logs` to the slot the latest write did not use, and syncs it; a record that
    /// outgrew its slot moves to a file of larger slots first.
    pub(crate) fn write(&mut self, logs: &BTreeMap<u64, LogRecord>) -> Result<(), StorageError> {
        let seq = self.seq + 1;
        let slot = match encode_slot(seq, logs, self.slot_bytes, &self.path)? {
            Some(slot) => slot,
            None => return self.grow(seq, logs),
        };
        let offset = (seq % 2) * self.slot_bytes as u64;
        self.file.write_all_at(&slot, offset).map_err(|e| io(&self.path, &e))?;
        if self.sync {
            self.file.sync_data().map_err(|e| io(&self.path, &e))?;
        }
        self.seq = seq;
        Ok(())
    }

    /// Writes `logs` as record `seq` into a new file of slots large enough for it, then
    /// renames that over the record: a crash leaves the old file or the new one, whole.
    fn grow(&mut self, seq: u64, logs: &BTreeMap<u64, LogRecord>) -> Result<(), StorageError> {
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
        let mut bytes = vec![0u8; 2 * slot_bytes];
        let at = (seq % 2) as usize * slot_bytes;
        bytes[at..at + slot_bytes].copy_from_slice(&slot);
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
        self.slot_bytes = slot_bytes;
        self.seq = seq;
        tracing::info!(path = %self.path.display(), slot_bytes, logs = logs.len(), "durability record grown");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn logs(term: u64, last: u64) -> BTreeMap<u64, LogRecord> {
        let record = LogRecord {
            hard_state: HardState { current_term: term, voted_for: Some(1) },
            last: LogId::new(term, last),
        };
        BTreeMap::from([(0, record)])
    }

    #[test]
    fn the_newest_intact_slot_is_read_and_a_torn_one_falls_back() {
        let dir = tempfile::tempdir().unwrap();
        let mut file = RecordFile::open(dir.path(), true).unwrap().file;
        file.write(&logs(2, 10)).unwrap();
        file.write(&logs(3, 20)).unwrap();
        drop(file);
        assert_eq!(RecordFile::open(dir.path(), true).unwrap().record, Some(logs(3, 20)));
        // Tear the newest slot (seq 3 went to slot 1): the older one is read.
        let path = dir.path().join(FILE_NAME);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[SLOT_BYTES + 30] ^= 0xFF;
        std::fs::write(&path, &bytes).unwrap();
        assert_eq!(RecordFile::open(dir.path(), true).unwrap().record, Some(logs(2, 10)));
        // Both damaged: refused, never read as "nothing recorded".
        bytes[30] ^= 0xFF;
        std::fs::write(&path, &bytes).unwrap();
        assert!(matches!(RecordFile::open(dir.path(), true), Err(StorageError::Corrupt(_))));
    }

    #[test]
    fn a_record_of_many_logs_grows_its_slots_and_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let mut file = RecordFile::open(dir.path(), true).unwrap().file;
        let record = |n: u64| -> BTreeMap<u64, LogRecord> {
            (0..n)
                .map(|g| {
                    let hs = HardState { current_term: u64::MAX - g, voted_for: Some(u64::MAX) };
                    (u64::MAX - g, LogRecord { hard_state: hs, last: LogId::new(u64::MAX, u64::MAX) })
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
        let mut marks = Marks::from_record(logs(2, 10));
        // The log was found at 7: the floor stays, and a write that ends below it keeps it.
        marks.settle(0, LogId::new(2, 7));
        marks.apply(&Mark { group: 0, hard_state: None, last: Some(LogId::new(2, 8)) });
        assert_eq!(marks.logs()[&0].last, LogId::new(2, 10));
        marks.apply(&Mark { group: 0, hard_state: None, last: Some(LogId::new(3, 9)) });
        assert_eq!(marks.logs()[&0].last, LogId::new(3, 9));
        // From now on a truncation lowers it.
        marks.apply(&Mark { group: 0, hard_state: None, last: Some(LogId::new(3, 5)) });
        assert_eq!(marks.logs()[&0].last, LogId::new(3, 5));
        // A log found whole drops its floor at once.
        let mut marks = Marks::from_record(logs(2, 10));
        marks.settle(0, LogId::new(2, 10));
        marks.apply(&Mark { group: 0, hard_state: None, last: Some(LogId::new(2, 4)) });
        assert_eq!(marks.logs()[&0].last, LogId::new(2, 4));
    }
}
