//! Why a RocksDB store cannot be opened or used, and how that maps onto [`StorageError`].

use raft_core::StorageError;

/// Why [`RocksDb::open`](crate::RocksDb::open) refused to open a data directory. The node must
/// not start on any of these: it would serve damaged, foreign or unreadable data.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    /// Another process (or another handle in this one) has the data directory open.
    #[error("data directory {dir} is in use by another process (RocksDB LOCK held): {detail}")]
    Locked {
        /// The data directory.
        dir: String,
        /// RocksDB's message.
        detail: String,
    },
    /// The directory holds files but neither a RocksDB `CURRENT` file nor this store's
    /// durability record: a foreign directory (or a damaged store that kept no record). It is
    /// never re-initialized over. A store that lost `CURRENT` but kept its record is
    /// [`Corrupt`](Self::Corrupt).
    #[error(
        "data directory {0} is not empty but holds no RocksDB CURRENT file (damaged or not a raft store)"
    )]
    MissingCurrent(String),
    /// A column family this store needs is missing.
    #[error("column family {0:?} is missing from the store")]
    MissingColumnFamily(String),
    /// The store was written by a newer (or unknown) on-disk format.
    #[error("on-disk format version {found} is not supported (this build reads version {supported})")]
    FormatVersion {
        /// The version in the store.
        found: u32,
        /// The version this build writes and reads.
        supported: u32,
    },
    /// The store belongs to another cluster.
    #[error("data directory belongs to cluster {found:?}, not {expected:?}")]
    ClusterMismatch {
        /// The cluster this node was configured for.
        expected: String,
        /// The cluster recorded in the store.
        found: String,
    },
    /// The store belongs to another node.
    #[error("data directory belongs to node {found}, not {expected}")]
    NodeMismatch {
        /// The node id this node was configured with.
        expected: u64,
        /// The node id recorded in the store.
        found: u64,
    },
    /// RocksDB or this store's own checks found damaged data (checksums, MANIFEST, WAL, an
    /// undecodable record).
    #[error("store is corrupt: {0}")]
    Corrupt(String),
    /// Any other IO error while opening.
    #[error("io error opening the store: {0}")]
    Io(String),
}

impl From<OpenError> for StorageError {
    fn from(e: OpenError) -> Self {
        match e {
            OpenError::Corrupt(m) => StorageError::Corrupt(m),
            OpenError::Io(m) => StorageError::Io(m),
            other => StorageError::Mismatch(other.to_string()),
        }
    }
}

/// Whether an IO error message says the device is full.
impl OpenError {
    /// Whether opening may succeed later without anyone changing anything: the disk failed
    /// (EIO) or is full. A supervisor tries such a start again; every other refusal needs an
    /// operator.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Io(m) if is_disk_failure(m))
    }
}

/// Whether an I/O error's message (of this store, also as [`StorageError::Io`]) says the disk
/// failed (EIO) or is full: something that may pass without anyone changing anything.
pub fn is_disk_failure(message: &str) -> bool {
    is_no_space(message) || message.contains("Input/output error")
}

pub(crate) fn is_no_space(message: &str) -> bool {
    // Case-blind: the OS says "No space left", `StorageError::Full` "no space left".
    message.to_ascii_lowercase().contains("no space left")
        || message.contains("NoSpace")
        || message.contains("ENOSPC")
}

/// Maps a RocksDB error of a read or write onto the trait's error.
pub(crate) fn storage_error(e: &rocksdb::Error) -> StorageError {
    let message = e.to_string();
    match e.kind() {
        rocksdb::ErrorKind::Corruption => StorageError::Corrupt(message),
        _ if is_no_space(&message) => StorageError::Full,
        _ => StorageError::Io(message),
    }
}

/// Maps a RocksDB error at open time onto [`OpenError`].
pub(crate) fn open_error(dir: &str, e: &rocksdb::Error) -> OpenError {
    let message = e.to_string();
    if message.contains("lock") && (message.contains("LOCK") || message.contains("Resource temporarily")) {
        return OpenError::Locked { dir: dir.to_string(), detail: message };
    }
    if message.contains("Column famil") && message.contains("not") {
        return OpenError::MissingColumnFamily(message);
    }
    match e.kind() {
        rocksdb::ErrorKind::Corruption => OpenError::Corrupt(message),
        // A file the store names is gone (a deleted MANIFEST, table or log file): damage, not
        // a passing error.
        rocksdb::ErrorKind::IOError if message.contains("No such file or directory") => {
            OpenError::Corrupt(message)
        }
        rocksdb::ErrorKind::InvalidArgument if message.contains("does not exist") => {
            OpenError::MissingCurrent(dir.to_string())
        }
        _ => OpenError::Io(message),
    }
}
