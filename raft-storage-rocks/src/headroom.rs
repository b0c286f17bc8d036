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
//! again at most once a second when asked, and once the headroom and a quarter more are free it
//! allocates the file again on a thread of its own (ending the refusal). On a file system
//! without `fallocate` the file is written with zeros.
//!
//! A store opened on a disk without room for the file starts with its headroom in use. One
//! whose RocksDB cannot even open for lack of space (replaying its write-ahead log writes a
//! table file) gives up the file and opens in it (see `RocksDb::open`).

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The reserve's file name in the data directory.
pub(crate) const FILE_NAME: &str = "headroom.reserve";
/// How often the free space is looked at while the headroom is in use.
const CHECK_EVERY: Duration = Duration::from_secs(1);

/// The reserved headroom of one store.
#[derive(Debug, Clone)]
pub(crate) struct Headroom {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    path: PathBuf,
    bytes: u64,
    /// The file is gone (released, or it could not be allocated).
    in_use: AtomicBool,
    /// When the free space was last looked at.
    checked: Mutex<Option<Instant>>,
    /// Held while the file is removed or allocated, with `in_use` changed under it: a release
    /// and a reservation never interleave.
    file: Mutex<()>,
    /// A reservation runs on its own thread.
    reserving: AtomicBool,
}

impl Headroom {
    /// Reserves `bytes` in `dir` (none when `bytes` is 0), keeping a reserve file of that size
    /// already there.
    pub(crate) fn open(dir: &Path, bytes: u64) -> Self {
        let headroom = Self {
            inner: Arc::new(Inner {
                path: dir.join(FILE_NAME),
                bytes,
                in_use: AtomicBool::new(false),
                checked: Mutex::new(None),
                file: Mutex::new(()),
                reserving: AtomicBool::new(false),
            }),
        };
        if bytes == 0 {
            let _ = std::fs::remove_file(&headroom.inner.path);
            return headroom;
        }
        if let Err(e) = headroom.inner.allocate(true) {
            tracing::warn!(
                path = %headroom.inner.path.display(),
                bytes,
                error = %e,
                "cannot reserve the store's headroom: new proposals are refused until it is"
            );
            headroom.inner.in_use.store(true, Ordering::SeqCst);
        }
        headroom
    }

    /// Frees the headroom; whether it freed any (it was held).
    pub(crate) fn release(&self) -> bool {
        let inner = &self.inner;
        if inner.bytes == 0 {
            return false;
        }
        let Ok(_file) = inner.file.lock() else { return false };
        if inner.in_use.swap(true, Ordering::SeqCst) {
            return false;
        }
        match std::fs::remove_file(&inner.path) {
            Ok(()) => {
                tracing::warn!(
                    bytes = inner.bytes,
                    "the disk is full: the store's headroom is released for the writes in progress; \
                     new proposals are refused until space returns"
                );
                if let Ok(mut checked) = inner.checked.lock() {
                    *checked = Some(Instant::now());
                }
                true
            }
            Err(e) => {
                tracing::warn!(path = %inner.path.display(), error = %e, "could not release the headroom");
                false
            }
        }
    }

    /// Whether the headroom is in use. At most once a [`CHECK_EVERY`] it looks at the free
    /// space, and once the headroom and a quarter more are free it reserves the file again on a
    /// thread of its own (never on the caller's: this runs on every proposal).
    pub(crate) fn in_use(&self) -> bool {
        let inner = &self.inner;
        if !inner.in_use.load(Ordering::SeqCst) {
            return false;
        }
        let Ok(mut checked) = inner.checked.try_lock() else { return true };
        if checked.is_some_and(|at| at.elapsed() < CHECK_EVERY) || inner.reserving.load(Ordering::SeqCst) {
            return true;
        }
        *checked = Some(Instant::now());
        let dir = inner.path.parent().unwrap_or(Path::new("."));
        let free = match rustix::fs::statvfs(dir) {
            Ok(s) => s.f_bavail.saturating_mul(s.f_frsize),
            Err(_) => return true,
        };
        if free < inner.bytes.saturating_add(inner.bytes / 4) {
            return true;
        }
        if inner.reserving.swap(true, Ordering::SeqCst) {
            return true;
        }
        let reserve = inner.clone();
        let spawned = std::thread::Builder::new().name("raft-headroom".into()).spawn(move || {
            reserve.reserve_again();
            reserve.reserving.store(false, Ordering::SeqCst);
        });
        if spawned.is_err() {
            inner.reserving.store(false, Ordering::SeqCst);
        }
        true
    }
}

impl Inner {
    /// Allocates the file again after a release and marks the headroom held.
    fn reserve_again(&self) {
        let Ok(_file) = self.file.lock() else { return };
        if !self.in_use.load(Ordering::SeqCst) {
            return;
        }
        match self.allocate(false) {
            Ok(()) => {
                self.in_use.store(false, Ordering::SeqCst);
                tracing::info!(bytes = self.bytes, "space returned: the store's headroom is reserved again");
            }
            Err(e) => tracing::warn!(error = %e, "could not reserve the headroom again"),
        }
    }

    /// Allocates the file (written aside, then renamed); `keep`: a file of the right size
    /// already there is taken as it is (at open).
    fn allocate(&self, keep: bool) -> std::io::Result<()> {
        use std::os::unix::fs::MetadataExt;
        if let Ok(meta) = std::fs::symlink_metadata(&self.path) {
            let whole =
                meta.is_file() && meta.len() == self.bytes && meta.blocks().saturating_mul(512) >= self.bytes;
            if keep && whole {
                return Ok(());
            }
            // Another size (changed options), not a regular file, or sparse: replaced.
            std::fs::remove_file(&self.path)?;
        }
        let tmp = self.path.with_file_name(format!("{FILE_NAME}.tmp"));
        let result = (|| {
            let mut file = OpenOptions::new().write(true).create(true).truncate(true).open(&tmp)?;
            match rustix::fs::fallocate(&file, rustix::fs::FallocateFlags::empty(), 0, self.bytes) {
                Ok(()) => {}
                Err(rustix::io::Errno::NOSPC) => return Err(std::io::Error::from_raw_os_error(28)),
                // A file system without fallocate (ext4 without extents, older ZFS, NFSv3,
                // many FUSE ones): zeros are written instead.
                Err(_) => {
                    let zeros = vec![0u8; 1 << 20];
                    let mut left = self.bytes;
                    while left > 0 {
                        let n = left.min(zeros.len() as u64) as usize;
                        file.write_all(&zeros[..n])?;
                        left -= n as u64;
                    }
                }
            }
            file.sync_all()?;
            std::fs::rename(&tmp, &self.path)
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result
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
        // Looked at again only after a while; then there is room (a temp dir), and it is back
        // (reserved on a thread of its own).
        assert!(headroom.in_use());
        std::thread::sleep(CHECK_EVERY + Duration::from_millis(100));
        let deadline = Instant::now() + Duration::from_secs(10);
        while headroom.in_use() {
            assert!(Instant::now() < deadline, "not reserved again with space free");
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(allocated(&path));
        // A file of another size is replaced at open.
        drop(headroom);
        let other = Headroom::open(dir.path(), 2 << 20);
        assert!(!other.in_use());
        assert_eq!(std::fs::metadata(&path).expect("the reserve").len(), 2 << 20);
        drop(other);
        // A store opened again keeps the file; none is kept with no headroom configured.
        assert!(!Headroom::open(dir.path(), 1 << 20).in_use());
        let none = Headroom::open(dir.path(), 0);
        assert!(!path.exists() && !none.release() && !none.in_use());
    }
}
