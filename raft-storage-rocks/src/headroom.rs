//! Headroom reserved on the data directory's file system: a file of
//! [`RocksOptions::headroom_bytes`](crate::RocksOptions::headroom_bytes) allocated at open.
//!
//! A disk that fills up stops the node's writes (`StorageError::Full`), and the writes that
//! must finish for it to go on afterwards need room too: RocksDB's flushes and compactions, a
//! snapshot and the compaction of the log it allows, a follower's catch-up. When a write fails
//! on a full disk the driver asks the store to free its headroom (`Storage::release_headroom`)
//! and tries again at once. While the headroom is in use the store says so
//! (`Storage::headroom_in_use`) and the node refuses new proposals, as it does while a write
//! waits for space, so that clients cannot take that room. The store checks the free space
//! again at most once a second when asked, and allocates the file again (releasing the refusal)
//! once twice its size is free.
//!
//! A store opened on a disk without room for the file starts with its headroom in use.

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The reserve's file name in the data directory.
pub(crate) const FILE_NAME: &str = "headroom.reserve";
/// How often the free space is looked at while the headroom is in use.
const CHECK_EVERY: Duration = Duration::from_secs(1);

/// The reserved headroom of one store.
#[derive(Debug)]
pub(crate) struct Headroom {
    path: PathBuf,
    bytes: u64,
    /// The file is gone (released, or it could not be allocated).
    in_use: AtomicBool,
    /// When the free space was last looked at.
    checked: Mutex<Option<Instant>>,
}

impl Headroom {
    /// Reserves `bytes` in `dir` (none when `bytes` is 0), keeping a reserve file already there.
    pub(crate) fn open(dir: &Path, bytes: u64) -> Self {
        let headroom = Self {
            path: dir.join(FILE_NAME),
            bytes,
            in_use: AtomicBool::new(false),
            checked: Mutex::new(None),
        };
        if bytes == 0 {
            let _ = std::fs::remove_file(&headroom.path);
            return headroom;
        }
        if let Err(e) = headroom.allocate() {
            tracing::warn!(
                path = %headroom.path.display(),
                bytes,
                error = %e,
                "no room for the store's headroom: new proposals are refused until there is"
            );
            headroom.in_use.store(true, Ordering::SeqCst);
        }
        headroom
    }

    /// Allocates the file (written aside, then renamed), unless it is there whole.
    fn allocate(&self) -> std::io::Result<()> {
        use std::os::unix::fs::MetadataExt;
        if let Ok(meta) = std::fs::metadata(&self.path) {
            if meta.len() == self.bytes && meta.blocks().saturating_mul(512) >= self.bytes {
                return Ok(());
            }
        }
        let tmp = self.path.with_file_name(format!("{FILE_NAME}.tmp"));
        let result = (|| {
            let file = OpenOptions::new().write(true).create(true).truncate(true).open(&tmp)?;
            rustix::fs::fallocate(&file, rustix::fs::FallocateFlags::empty(), 0, self.bytes)?;
            file.sync_all()?;
            std::fs::rename(&tmp, &self.path)
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result
    }

    /// Frees the headroom; whether it freed any (it was held).
    pub(crate) fn release(&self) -> bool {
        if self.bytes == 0 || self.in_use.swap(true, Ordering::SeqCst) {
            return false;
        }
        match std::fs::remove_file(&self.path) {
            Ok(()) => {
                tracing::warn!(
                    bytes = self.bytes,
                    "the disk is full: the store's headroom is released for the writes in progress; \
                     new proposals are refused until space returns"
                );
                if let Ok(mut checked) = self.checked.lock() {
                    *checked = Some(Instant::now());
                }
                true
            }
            Err(e) => {
                tracing::warn!(path = %self.path.display(), error = %e, "could not release the headroom");
                false
            }
        }
    }

    /// Whether the headroom is in use; at most once a [`CHECK_EVERY`], allocates it again when
    /// twice its size is free.
    pub(crate) fn in_use(&self) -> bool {
        if !self.in_use.load(Ordering::SeqCst) {
            return false;
        }
        let Ok(mut checked) = self.checked.try_lock() else { return true };
        if checked.is_some_and(|at| at.elapsed() < CHECK_EVERY) {
            return true;
        }
        *checked = Some(Instant::now());
        let dir = self.path.parent().unwrap_or(Path::new("."));
        let free = match rustix::fs::statvfs(dir) {
            Ok(s) => s.f_bavail.saturating_mul(s.f_frsize),
            Err(_) => return true,
        };
        if free < self.bytes.saturating_mul(2) {
            return true;
        }
        match self.allocate() {
            Ok(()) => {
                self.in_use.store(false, Ordering::SeqCst);
                tracing::info!(bytes = self.bytes, "space returned: the store's headroom is reserved again");
                false
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not reserve the headroom again");
                true
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_headroom_is_allocated_released_once_and_reserved_again_when_space_returns() {
        let dir = tempfile::tempdir().expect("tempdir");
        let headroom = Headroom::open(dir.path(), 1 << 20);
        let path = dir.path().join(FILE_NAME);
        let allocated = |p: &Path| {
            use std::os::unix::fs::MetadataExt;
            std::fs::metadata(p).is_ok_and(|m| m.len() == 1 << 20 && m.blocks() * 512 >= 1 << 20)
        };
        assert!(allocated(&path), "the reserve is not allocated");
        assert!(!headroom.in_use());
        assert!(headroom.release(), "nothing released");
        assert!(!path.exists());
        assert!(!headroom.release(), "released twice");
        // Looked at again only after a while; then there is room (a temp dir), and it is back.
        assert!(headroom.in_use());
        std::thread::sleep(CHECK_EVERY + Duration::from_millis(100));
        assert!(!headroom.in_use(), "not reserved again with space free");
        assert!(allocated(&path));
        // A store opened again keeps the file; none is kept with no headroom configured.
        drop(headroom);
        assert!(!Headroom::open(dir.path(), 1 << 20).in_use());
        let none = Headroom::open(dir.path(), 0);
        assert!(!path.exists() && !none.release() && !none.in_use());
    }
}
