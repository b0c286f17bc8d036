//! Snapshot files: a log's snapshots live beside the database in `snapshots/`, not in RocksDB
//! (a value of the whole state would pass through the WAL, a memtable and compactions).
//!
//! A file is written under a temporary name, synced, renamed to its final name and the
//! directory synced; only then does the RocksDB batch that makes it the log's snapshot (its
//! [`SnapshotFileRef`]) commit. A crash at any step leaves the old snapshot in force: an
//! unreferenced file is an orphan, removed by the next save.
//!
//! Format: `MAGIC`, then chunks framed as `len: u32 LE ‖ crc32c: u32 LE ‖ bytes`, then a
//! trailer `u32::MAX ‖ total length: u64 LE ‖ crc32c of all bytes: u32 LE ‖ crc32c of these
//! 12 bytes: u32 LE`. A file that is cut short, extended or altered anywhere fails to read.

use std::fs::{self, File};
use std::io::{BufReader, Read, Write};
use std::path::{Path, PathBuf};

use bytes::Bytes;
use raft_core::{LogId, SnapshotData, StorageError};
use serde::{Deserialize, Serialize};

/// The first bytes of every snapshot file.
const MAGIC: &[u8; 8] = b"RAFTSNP1";
/// The largest chunk a file may declare (a chunk written is at most what the state machine
/// handed over; this bounds what a damaged length makes us allocate).
const MAX_CHUNK_BYTES: u32 = 256 << 20;
/// The length marking the trailer.
const TRAILER: u32 = u32::MAX;
/// A file being written is synced every this many bytes (as RocksDB's `bytes_per_sync`): the
/// kernel then never holds a whole snapshot of dirty pages to flush at once, which would make
/// the WAL's own syncs (and so every acknowledged write) wait behind it.
const SYNC_EVERY_BYTES: u64 = 8 << 20;

/// How the temporary files of received snapshots (and their records) start.
pub(crate) const RECEIVED_PREFIX: &str = ".tmp-recv-";

/// The subdirectory of the data directory that holds snapshot files.
pub(crate) const SNAPSHOT_DIR: &str = "snapshots";

/// What the database records of a log's snapshot file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct SnapshotFileRef {
    /// The snapshot's last entry.
    pub(crate) last: LogId,
    /// The file's name in [`SNAPSHOT_DIR`].
    pub(crate) name: String,
    /// The snapshot's size in bytes (the data, not the file).
    pub(crate) len: u64,
    /// crc32c of the data.
    pub(crate) crc: u32,
}

fn io_error(what: &str, path: &Path, e: &std::io::Error) -> StorageError {
    if e.raw_os_error() == Some(28) {
        return StorageError::Full;
    }
    StorageError::Io(format!("{what} {}: {e}", path.display()))
}

/// The name of the snapshot file of log `group` ending at `last`.
fn file_name(group: u64, last: LogId) -> String {
    format!("g{group}-{}-{}.snap", last.index, last.term)
}

/// Writes `data` as log `group`'s snapshot file ending at `last` in `dir` (temporary name,
/// sync, rename, directory sync). Blocking.
pub(crate) fn write(
    dir: &Path,
    group: u64,
    last: LogId,
    data: &SnapshotData,
) -> Result<SnapshotFileRef, StorageError> {
    let mut chunks = data.chunks().iter().cloned();
    write_from(dir, group, last, &mut || Ok(chunks.next()))
}

/// Writes the chunks `next` hands over, until it returns `None`, as log `group`'s snapshot file
/// ending at `last` in `dir` (temporary name, sync, rename, directory sync): the snapshot is
/// never whole in memory. Blocking.
pub(crate) fn write_from(
    dir: &Path,
    group: u64,
    last: LogId,
    next: &mut dyn FnMut() -> Result<Option<Bytes>, StorageError>,
) -> Result<SnapshotFileRef, StorageError> {
    let mut file = PendingFile::create(dir, group, last, "")?;
    let written = (|| {
        while let Some(chunk) = next()? {
            file.write(&chunk)?;
        }
        Ok(())
    })();
    match written {
        Ok(()) => file.commit().inspect_err(|_| file.discard()),
        Err(e) => {
            file.discard();
            Err(e)
        }
    }
}

/// A snapshot file being written under a temporary name in the snapshot directory: chunks
/// are framed as they come; [`commit`](Self::commit) finishes, syncs and renames it. A write
/// or a commit that fails (a full disk) leaves the file as it was before the call, so it can
/// be made again.
#[derive(Debug)]
pub(crate) struct PendingFile {
    dir: PathBuf,
    tmp: PathBuf,
    name: String,
    last: LogId,
    out: File,
    /// Bytes of the file written (magic and frames), where the next frame goes.
    pos: u64,
    crc: u32,
    len: u64,
    /// `len` at the last intermediate sync.
    synced: u64,
    /// The trailer is written and the file synced (a rename that failed is tried again).
    finished: bool,
    /// A sync of the file failed. The kernel may then have dropped the pages it could not
    /// write and marked them clean, so a later sync would succeed over lost data: the file is
    /// never written to or committed again (its writer starts over on a new file).
    sync_failed: Option<String>,
    /// Tests: the next sync fails with this OS error number.
    #[cfg(test)]
    fail_next_sync: Option<i32>,
}

impl PendingFile {
    /// Creates the temporary file of log `group`'s snapshot ending at `last` (`kind` tells
    /// temporary files of different writers apart). Blocking.
    pub(crate) fn create(dir: &Path, group: u64, last: LogId, kind: &str) -> Result<Self, StorageError> {
        if !dir.is_dir() {
            fs::create_dir_all(dir).map_err(|e| io_error("creating", dir, &e))?;
            // The new directory's own entry must survive a power loss too.
            if let Some(parent) = dir.parent() {
                sync_dir(parent)?;
            }
        }
        let name = file_name(group, last);
        let tmp = dir.join(format!(".tmp-{kind}{name}"));
        let mut out = File::create(&tmp).map_err(|e| io_error("creating", &tmp, &e))?;
        if let Err(e) = out.write_all(MAGIC) {
            let _ = fs::remove_file(&tmp);
            return Err(io_error("writing", &tmp, &e));
        }
        Ok(Self::at(dir, tmp, name, last, out, (MAGIC.len() as u64, 0, 0)))
    }

    /// A file open for writing at `pos`, holding `len` bytes of data whose crc32c is `crc`
    /// (`(pos, crc, len)`), all of them synced.
    fn at(
        dir: &Path,
        tmp: PathBuf,
        name: String,
        last: LogId,
        out: File,
        (pos, crc, len): (u64, u32, u64),
    ) -> Self {
        Self {
            dir: dir.to_path_buf(),
            tmp,
            name,
            last,
            out,
            pos,
            crc,
            len,
            synced: len,
            finished: false,
            sync_failed: None,
            #[cfg(test)]
            fail_next_sync: None,
        }
    }

    /// Opens again the temporary file `create` made with the same arguments, to go on writing
    /// it after a restart: keeps its whole frames that pass their checksums up to the first
    /// one that does not (a crash may have cut or torn the last ones) and cuts the rest off.
    /// Blocking. `Ok(None)` when there is no such file or it holds no snapshot file's start.
    pub(crate) fn reopen(
        dir: &Path,
        group: u64,
        last: LogId,
        kind: &str,
    ) -> Result<Option<Self>, StorageError> {
        use std::io::Seek;
        let name = file_name(group, last);
        let tmp = dir.join(format!(".tmp-{kind}{name}"));
        let mut out = match fs::OpenOptions::new().read(true).write(true).open(&tmp) {
            Ok(out) => out,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_error("opening", &tmp, &e)),
        };
        let (mut pos, mut crc, mut len) = (0u64, 0u32, 0u64);
        {
            let mut input = BufReader::with_capacity(1 << 20, &mut out);
            let mut magic = [0u8; 8];
            if input.read_exact(&mut magic).is_err() || &magic != MAGIC {
                return Ok(None);
            }
            pos += MAGIC.len() as u64;
            loop {
                let mut head = [0u8; 8];
                if input.read_exact(&mut head).is_err() {
                    break;
                }
                let frame_len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]);
                if frame_len == 0 || frame_len > MAX_CHUNK_BYTES {
                    break; // the trailer, zeros, or damage: the staged bytes end here
                }
                let sum = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
                let mut chunk = vec![0u8; frame_len as usize];
                if input.read_exact(&mut chunk).is_err() || crc32c::crc32c(&chunk) != sum {
                    break;
                }
                crc = crc32c::crc32c_append(crc, &chunk);
                len += u64::from(frame_len);
                pos += 8 + u64::from(frame_len);
            }
        }
        out.set_len(pos).map_err(|e| io_error("cutting", &tmp, &e))?;
        out.seek(std::io::SeekFrom::Start(pos)).map_err(|e| io_error("seeking", &tmp, &e))?;
        out.sync_all().map_err(|e| io_error("syncing", &tmp, &e))?;
        Ok(Some(Self::at(dir, tmp, name, last, out, (pos, crc, len))))
    }

    /// The snapshot's bytes written so far.
    pub(crate) fn len(&self) -> u64 {
        self.len
    }

    /// Syncs the file's data (`all`: and its metadata); a failure is remembered for good.
    fn sync(&mut self, all: bool) -> Result<(), StorageError> {
        #[cfg(test)]
        let injected = self.fail_next_sync.take().map(std::io::Error::from_raw_os_error);
        #[cfg(not(test))]
        let injected: Option<std::io::Error> = None;
        let outcome = match injected {
            Some(e) => Err(e),
            None if all => self.out.sync_all(),
            None => self.out.sync_data(),
        };
        outcome.map_err(|e| {
            self.sync_failed = Some(e.to_string());
            io_error("syncing", &self.tmp, &e)
        })
    }

    /// Refuses to go on with a file whose sync failed (see `sync_failed`).
    fn check_not_failed(&self) -> Result<(), StorageError> {
        match &self.sync_failed {
            None => Ok(()),
            Some(e) => Err(StorageError::Io(format!(
                "an earlier sync of {} failed ({e}): what it held may be lost, so it is not used",
                self.tmp.display()
            ))),
        }
    }

    /// Writes `bytes` at the end, or (on an error) cuts the file back to where it ended.
    fn append(&mut self, bytes: &[u8]) -> Result<(), StorageError> {
        match self.out.write_all(bytes) {
            Ok(()) => {
                self.pos += bytes.len() as u64;
                Ok(())
            }
            Err(e) => {
                self.rewind();
                Err(io_error("writing", &self.tmp, &e))
            }
        }
    }

    /// Cuts the file back to `pos` (what a failed write left past it goes).
    fn rewind(&mut self) {
        use std::io::Seek;
        let _ = self.out.set_len(self.pos);
        let _ = self.out.seek(std::io::SeekFrom::Start(self.pos));
    }

    /// Appends `chunk` as one or more frames. Blocking. On an error nothing of `chunk` stays.
    pub(crate) fn write(&mut self, chunk: &[u8]) -> Result<(), StorageError> {
        self.check_not_failed()?;
        let (pos, crc) = (self.pos, self.crc);
        let written = (|| {
            // A chunk over the frame limit is written as several frames.
            for part in chunk.chunks(MAX_CHUNK_BYTES as usize) {
                let len = u32::try_from(part.len()).unwrap_or(MAX_CHUNK_BYTES);
                let mut frame = Vec::with_capacity(8 + part.len());
                frame.extend_from_slice(&len.to_le_bytes());
                frame.extend_from_slice(&crc32c::crc32c(part).to_le_bytes());
                frame.extend_from_slice(part);
                self.append(&frame)?;
                self.crc = crc32c::crc32c_append(self.crc, part);
            }
            Ok(())
        })();
        if let Err(e) = written {
            (self.pos, self.crc) = (pos, crc);
            self.rewind();
            return Err(e);
        }
        self.len += chunk.len() as u64;
        if self.len - self.synced >= SYNC_EVERY_BYTES {
            // The chunk stays written (its frames are whole), but the file is not used again.
            self.sync(false)?;
            self.synced = self.len;
        }
        Ok(())
    }

    /// Writes the trailer, syncs the file, renames it to its final name and syncs the
    /// directory; the file is then complete but not yet the log's snapshot (the database
    /// records that). Blocking. On an error the file is as it was, to commit again (or
    /// discard), but after a failed sync: then every later call fails with `Io`.
    pub(crate) fn commit(&mut self) -> Result<SnapshotFileRef, StorageError> {
        self.check_not_failed()?;
        if !self.finished {
            let pos = self.pos;
            if let Err(e) = self.finish() {
                self.pos = pos;
                self.rewind();
                return Err(e);
            }
            self.finished = true;
        }
        let path = self.dir.join(&self.name);
        fs::rename(&self.tmp, &path).map_err(|e| io_error("renaming", &self.tmp, &e))?;
        if let Err(e) = sync_dir(&self.dir) {
            // Back under its temporary name, so that a commit made again renames it again.
            let _ = fs::rename(&path, &self.tmp);
            return Err(e);
        }
        Ok(SnapshotFileRef { last: self.last, name: self.name.clone(), len: self.len, crc: self.crc })
    }

    fn finish(&mut self) -> Result<(), StorageError> {
        let mut trailer = Vec::with_capacity(12);
        trailer.extend_from_slice(&self.len.to_le_bytes());
        trailer.extend_from_slice(&self.crc.to_le_bytes());
        let mut end = TRAILER.to_le_bytes().to_vec();
        end.extend_from_slice(&trailer);
        end.extend_from_slice(&crc32c::crc32c(&trailer).to_le_bytes());
        self.append(&end)?;
        self.sync(true)
    }

    /// Removes the temporary file (a write that failed or was given up). Blocking.
    pub(crate) fn discard(self) {
        let _ = fs::remove_file(&self.tmp);
    }
}

fn sync_dir(dir: &Path) -> Result<(), StorageError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(|e| io_error("syncing", dir, &e))
}

/// Reads and checks the snapshot file `reference` names in `dir`: every frame, the trailer,
/// and the length and checksum the database recorded. Blocking.
pub(crate) fn read(dir: &Path, reference: &SnapshotFileRef) -> Result<SnapshotData, StorageError> {
    let mut chunks = Vec::new();
    walk(dir, reference, |chunk| chunks.push(Bytes::from(chunk)))?;
    Ok(SnapshotData::from_chunks(chunks))
}

/// Reads the whole file of `reference` and checks every checksum, its length and its end,
/// keeping nothing (one chunk in memory at a time): at open, so that a damaged file is
/// repaired from the cluster before the node starts rather than found by the restore.
pub(crate) fn verify(dir: &Path, reference: &SnapshotFileRef) -> Result<(), StorageError> {
    walk(dir, reference, drop)
}

/// Fails with `Corrupt` if the file of `reference` is not there, `Io` if that cannot be told.
pub(crate) fn exists(dir: &Path, reference: &SnapshotFileRef) -> Result<(), StorageError> {
    let path = dir.join(&reference.name);
    match fs::metadata(&path) {
        Ok(meta) if meta.is_file() => Ok(()),
        Ok(_) => Err(StorageError::Corrupt(format!("snapshot file {}: not a file", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            Err(StorageError::Corrupt(format!("snapshot file {}: missing", path.display())))
        }
        Err(e) => Err(io_error("reading", &path, &e)),
    }
}

/// EIO from reading a file's data: the disk or the file system (btrfs and ZFS check their own
/// checksums) could not return those bytes, which is damage to repair, not a passing fault.
const EIO: i32 = 5;

/// Reads the file of `reference`, handing each checked chunk to `each`; fails on any damage.
fn walk(dir: &Path, reference: &SnapshotFileRef, mut each: impl FnMut(Vec<u8>)) -> Result<(), StorageError> {
    let path = dir.join(&reference.name);
    let corrupt = |what: String| StorageError::Corrupt(format!("snapshot file {}: {what}", path.display()));
    let file = File::open(&path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => corrupt("missing".into()),
        _ => io_error("opening", &path, &e),
    })?;
    let mut input = BufReader::with_capacity(1 << 20, file);
    let mut read_exact = |buf: &mut [u8]| -> Result<(), StorageError> {
        input.read_exact(buf).map_err(|e| match e.kind() {
            std::io::ErrorKind::UnexpectedEof => corrupt("cut short".into()),
            _ if e.raw_os_error() == Some(EIO) => corrupt(format!("unreadable ({e})")),
            _ => io_error("reading", &path, &e),
        })
    };
    let mut magic = [0u8; 8];
    read_exact(&mut magic)?;
    if &magic != MAGIC {
        return Err(corrupt("not a snapshot file".into()));
    }
    let (mut total, mut crc) = (0u64, 0u32);
    loop {
        let mut head = [0u8; 8];
        read_exact(&mut head[..4])?;
        let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]);
        if len == TRAILER {
            break;
        }
        if len == 0 || len > MAX_CHUNK_BYTES {
            return Err(corrupt(format!("a chunk of {len} bytes")));
        }
        read_exact(&mut head[4..])?;
        let sum = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
        let mut chunk = vec![0u8; len as usize];
        read_exact(&mut chunk)?;
        if crc32c::crc32c(&chunk) != sum {
            return Err(corrupt(format!("the chunk at byte {total} fails its checksum")));
        }
        crc = crc32c::crc32c_append(crc, &chunk);
        total += u64::from(len);
        each(chunk);
    }
    let mut trailer = [0u8; 16];
    read_exact(&mut trailer)?;
    let (body, sum) = trailer.split_at(12);
    if crc32c::crc32c(body).to_le_bytes() != sum {
        return Err(corrupt("the trailer fails its checksum".into()));
    }
    let mut len_bytes = [0u8; 8];
    len_bytes.copy_from_slice(&body[..8]);
    let recorded_len = u64::from_le_bytes(len_bytes);
    let recorded_crc = u32::from_le_bytes([body[8], body[9], body[10], body[11]]);
    if (recorded_len, recorded_crc) != (total, crc) || (reference.len, reference.crc) != (total, crc) {
        return Err(corrupt("the data does not match its recorded length and checksum".into()));
    }
    let mut extra = [0u8; 1];
    if read_exact(&mut extra).is_ok() {
        return Err(corrupt("bytes after the trailer".into()));
    }
    Ok(())
}

/// Removes every snapshot file of `group` in `dir` other than `keep`, and temporary files of
/// `group` (left by a crash mid-write). Errors are ignored: an orphan costs space only.
pub(crate) fn remove_others(dir: &Path, group: u64, keep: Option<&str>, open: &[String]) {
    let Ok(entries) = fs::read_dir(dir) else { return };
    let own = format!("g{group}-");
    let own_tmp = format!(".tmp-g{group}-");
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let ours = name.starts_with(&own) || name.starts_with(&own_tmp);
        if ours && Some(name) != keep {
            // A file a transfer still reads keeps its bytes until closed: unlink it at once.
            if !open.iter().any(|o| o == name) {
                shrink_gradually(&entry.path());
            }
            let _ = fs::remove_file(entry.path());
        }
    }
}

/// Bytes a large file is shortened by at a time before it is removed.
const SHRINK_STEP_BYTES: u64 = 64 << 20;

/// Shortens a large file step by step, pausing between steps, before it is unlinked: freeing
/// a gigabyte of extents in one journal transaction holds up every other sync on the file
/// system (the WAL's among them) for a long moment, as RocksDB's rate-limited file deletion
/// also avoids. Blocking; best effort.
fn shrink_gradually(path: &Path) {
    let Ok(file) = fs::OpenOptions::new().write(true).open(path) else { return };
    let Ok(mut len) = file.metadata().map(|m| m.len()) else { return };
    while len > SHRINK_STEP_BYTES {
        len -= SHRINK_STEP_BYTES;
        if file.set_len(len).is_err() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// Removes what interrupted snapshot writes left in `dir`: every temporary file, and every
/// snapshot file that `referenced` (given the log group a file name says it belongs to) does
/// not name; a group whose reference cannot be read (`Err`) keeps its files. Run when the store
/// opens, before anything writes a snapshot. Blocking.
pub(crate) fn remove_leftovers(dir: &Path, referenced: &dyn Fn(u64) -> Result<Option<String>, ()>) -> usize {
    let Ok(entries) = fs::read_dir(dir) else { return 0 };
    let mut removed = 0;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let leftover = if name.starts_with(RECEIVED_PREFIX) {
            false // a received snapshot's staging: its log's store resumes it or removes it
        } else if name.starts_with(".tmp-") {
            true
        } else if let Some(group) = group_of(name) {
            referenced(group).is_ok_and(|r| r.as_deref() != Some(name))
        } else {
            false // not ours: leave it
        };
        if leftover && fs::remove_file(entry.path()).is_ok() {
            removed += 1;
        }
    }
    removed
}

/// The log group of a snapshot file named `g{group}-{index}-{term}.snap`.
fn group_of(name: &str) -> Option<u64> {
    let rest = name.strip_prefix('g')?.strip_suffix(".snap")?;
    let mut parts = rest.split('-');
    let group = parts.next()?.parse().ok()?;
    let numbers = parts.map(|p| p.parse::<u64>().is_ok()).collect::<Vec<_>>();
    (numbers.len() == 2 && numbers.iter().all(|ok| *ok)).then_some(group)
}

/// The snapshot directory of the store at `data_dir`.
pub(crate) fn dir_of(data_dir: &Path) -> PathBuf {
    data_dir.join(SNAPSHOT_DIR)
}

/// One frame of an open snapshot file: where its bytes are in the snapshot and in the file.
#[derive(Debug, Clone, Copy)]
struct Frame {
    /// Offset of its first byte in the snapshot.
    start: u64,
    /// Offset of its first byte in the file.
    at: u64,
    len: u32,
    crc: u32,
}

/// A snapshot file opened for reading parts of it: its frames indexed once (headers only),
/// each part read with one positioned read and checked against its frame's checksum. The open
/// file keeps a replaced (unlinked) snapshot readable, so a transfer in progress can finish.
#[derive(Debug)]
pub(crate) struct OpenSnapshot {
    pub(crate) last: LogId,
    file: File,
    frames: Vec<Frame>,
    path: PathBuf,
}

impl OpenSnapshot {
    /// The file's name.
    pub(crate) fn name(&self) -> Option<String> {
        self.path.file_name().and_then(|n| n.to_str()).map(str::to_owned)
    }

    /// Opens the file `reference` names and indexes its frames; checks the trailer and the
    /// recorded length (chunk checksums are checked on each part read). Blocking.
    pub(crate) fn open(dir: &Path, reference: &SnapshotFileRef) -> Result<Self, StorageError> {
        use std::os::unix::fs::FileExt;
        let path = dir.join(&reference.name);
        let corrupt =
            |what: String| StorageError::Corrupt(format!("snapshot file {}: {what}", path.display()));
        let file = File::open(&path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => corrupt("missing".into()),
            _ => io_error("opening", &path, &e),
        })?;
        let size = file.metadata().map_err(|e| io_error("reading", &path, &e))?.len();
        let read_at = |buf: &mut [u8], at: u64| -> Result<(), StorageError> {
            file.read_exact_at(buf, at).map_err(|e| match e.kind() {
                std::io::ErrorKind::UnexpectedEof => corrupt("cut short".into()),
                _ => io_error("reading", &path, &e),
            })
        };
        let mut magic = [0u8; 8];
        read_at(&mut magic, 0)?;
        if &magic != MAGIC {
            return Err(corrupt("not a snapshot file".into()));
        }
        let (mut frames, mut at, mut start) = (Vec::new(), 8u64, 0u64);
        loop {
            let mut head = [0u8; 8];
            read_at(&mut head[..4], at)?;
            let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]);
            if len == TRAILER {
                break;
            }
            if len == 0 || len > MAX_CHUNK_BYTES {
                return Err(corrupt(format!("a chunk of {len} bytes")));
            }
            read_at(&mut head[4..], at + 4)?;
            let crc = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
            frames.push(Frame { start, at: at + 8, len, crc });
            start += u64::from(len);
            at += 8 + u64::from(len);
            if at > size {
                return Err(corrupt("cut short".into()));
            }
        }
        let mut trailer = [0u8; 16];
        read_at(&mut trailer, at + 4)?;
        let (body, sum) = trailer.split_at(12);
        if crc32c::crc32c(body).to_le_bytes() != sum || at + 4 + 16 != size {
            return Err(corrupt("the trailer is damaged".into()));
        }
        let mut len_bytes = [0u8; 8];
        len_bytes.copy_from_slice(&body[..8]);
        if u64::from_le_bytes(len_bytes) != start || reference.len != start {
            return Err(corrupt("the data does not match its recorded length".into()));
        }
        Ok(Self { last: reference.last, file, frames, path })
    }

    /// Up to `max` bytes from `offset` (ending at the end of the frame holding `offset`);
    /// empty at or past the end. Blocking.
    pub(crate) fn read(&self, offset: u64, max: usize) -> Result<Bytes, StorageError> {
        use std::os::unix::fs::FileExt;
        let i = self.frames.partition_point(|f| f.start <= offset);
        let Some(frame) = i.checked_sub(1).map(|i| self.frames[i]) else { return Ok(Bytes::new()) };
        if offset >= frame.start + u64::from(frame.len) || max == 0 {
            return Ok(Bytes::new());
        }
        let mut buf = vec![0u8; frame.len as usize];
        self.file.read_exact_at(&mut buf, frame.at).map_err(|e| io_error("reading", &self.path, &e))?;
        if crc32c::crc32c(&buf) != frame.crc {
            return Err(StorageError::Corrupt(format!(
                "snapshot file {}: the chunk at byte {} fails its checksum",
                self.path.display(),
                frame.start
            )));
        }
        let from = (offset - frame.start) as usize;
        let to = buf.len().min(from.saturating_add(max));
        Ok(Bytes::from(buf).slice(from..to))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ENOSPC: i32 = 28;
    const EIO: i32 = 5;

    fn pending(dir: &Path) -> PendingFile {
        PendingFile::create(dir, 0, LogId::new(1, 10), "recv-").expect("created")
    }

    /// A sync that failed with ENOSPC or EIO may have dropped what it was to write: a commit
    /// tried again must not rename that file into place as a valid snapshot.
    #[test]
    fn a_commit_whose_sync_failed_is_never_made_good_by_trying_again() {
        for errno in [ENOSPC, EIO] {
            let dir = tempfile::tempdir().expect("temp dir");
            let mut file = pending(dir.path());
            file.write(b"part one").expect("written");
            file.fail_next_sync = Some(errno);
            let first = file.commit().expect_err("the sync failed");
            if errno == ENOSPC {
                assert_eq!(first, StorageError::Full, "a full disk is reported as such");
            }
            let again = file.commit().expect_err("committed over a failed sync");
            assert!(matches!(again, StorageError::Io(ref m) if m.contains("earlier sync")), "{again:?}");
            assert!(file.write(b"more").is_err(), "written to after a failed sync");
            assert!(!dir.path().join(&file.name).exists(), "the file was renamed into place");
        }
    }

    /// The intermediate sync of a long write fails: the next part is refused too.
    #[test]
    fn a_failed_intermediate_sync_refuses_the_parts_after_it() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut file = pending(dir.path());
        file.fail_next_sync = Some(ENOSPC);
        let big = vec![7u8; SYNC_EVERY_BYTES as usize];
        assert_eq!(file.write(&big), Err(StorageError::Full));
        assert!(file.write(b"next part").is_err());
        assert!(file.commit().is_err());
        // Without a failure the same steps commit.
        let mut fine = pending(dir.path());
        fine.write(&big).expect("written");
        fine.write(b"next part").expect("written");
        let reference = fine.commit().expect("committed");
        verify(dir.path(), &reference).expect("a valid file");
    }
}
