//! The `Storage` trait: where a node keeps its log, hard state and snapshots.

use async_trait::async_trait;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::membership::Membership;
use crate::types::{Entry, HardState, Index, LogId, Term};

/// A snapshot of the state machine with the log position and membership it covers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    /// What the snapshot covers.
    pub meta: SnapshotMeta,
    /// The state machine's serialized state.
    pub data: Bytes,
}

/// What a snapshot covers.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct SnapshotMeta {
    /// The last log entry included in the snapshot.
    pub last_log_id: LogId,
    /// The membership in force at `last_log_id`.
    pub membership: Membership,
}

/// Everything a node needs from storage to start.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InitialState {
    /// The persisted term and vote.
    pub hard_state: HardState,
    /// The metadata of the latest snapshot, if any.
    pub snapshot: Option<SnapshotMeta>,
    /// The index of the first entry kept in the log (1 for a new log). May be at or below the
    /// snapshot's index when the log keeps entries the snapshot covers.
    pub first_index: Index,
    /// The index of the last entry (`first_index - 1` when the log is empty).
    pub last_index: Index,
}

/// A storage operation that failed. Every variant names the failed operation's reason; the
/// driver stops accepting writes after any error (it must not acknowledge what it could not
/// persist).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StorageError {
    /// An append did not start right after the stored log (a hole) or overlapped the snapshot.
    #[error("append at index {got} does not continue the log (last index {last})")]
    NotContiguous {
        /// The index of the first entry offered.
        got: Index,
        /// The last index stored.
        last: Index,
    },
    /// A read asked for entries that are compacted or past the end.
    #[error("entries {from}..{to} are not available (log holds {first}..={last})")]
    OutOfRange {
        /// First index asked for.
        from: Index,
        /// One past the last index asked for.
        to: Index,
        /// First index held.
        first: Index,
        /// Last index held.
        last: Index,
    },
    /// Stored data failed an integrity check (checksum, decoding, wrong format version).
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    /// The device is full; nothing of the failed write is visible.
    #[error("no space left on the device")]
    Full,
    /// An IO error; after a failed sync the store refuses further writes.
    #[error("io error: {0}")]
    Io(String),
    /// An earlier write or sync failed; the store accepts no more writes until reopened.
    #[error("storage is poisoned by an earlier failure; reopen it")]
    Poisoned,
    /// The data belongs to another cluster or node, or to another format version.
    #[error("data directory mismatch: {0}")]
    Mismatch(String),
}

/// Durable storage of the log, the hard state and snapshots.
///
/// # Correctness
/// - Every method that writes returns only once its write is **durable** (it survives a
///   process crash and a power loss). The driver acknowledges votes and appends to peers only
///   after these return `Ok`.
/// - [`save_hard_state`](Storage::save_hard_state) is called before a log write of the same
///   batch; a crash in between must leave the old or the new hard state, never a mix.
/// - The log has no holes: entries `first_index..=last_index` are all present.
/// - [`append`](Storage::append) replaces stored entries at and after the first offered index
///   (a crash part-way must leave a prefix of the new log, never a gap).
/// - [`truncate`](Storage::truncate) and [`compact`](Storage::compact) are crash-atomic.
/// - An error leaves the stored state as it was before the call; after an IO error the store
///   may refuse all further writes ([`StorageError::Poisoned`]).
/// - Methods may be called from any task but not concurrently for writes: one driver owns the
///   store.
#[async_trait]
pub trait Storage: Send + Sync {
    /// Reads the hard state, snapshot metadata and log bounds.
    async fn initial_state(&self) -> Result<InitialState, StorageError>;

    /// Durably stores the hard state.
    async fn save_hard_state(&self, hard_state: HardState) -> Result<(), StorageError>;

    /// Durably appends `entries` (contiguous, ascending). `entries[0].index` must be at most
    /// `last_index + 1`, at least `first_index`, and greater than the snapshot index (else
    /// `NotContiguous`); stored entries at or after it are replaced.
    async fn append(&self, entries: &[Entry]) -> Result<(), StorageError>;

    /// Durably removes every entry at or after `from` (a conflicting suffix). `from` must be
    /// past the snapshot and at least `first_index` (else `OutOfRange`); past the end it is a
    /// no-op.
    async fn truncate(&self, from: Index) -> Result<(), StorageError>;

    /// Reads entries `from..to` (half-open); `OutOfRange` unless all of them are held.
    async fn entries(&self, from: Index, to: Index) -> Result<Vec<Entry>, StorageError>;

    /// The term of the entry at `index` (the snapshot's last index included).
    async fn term(&self, index: Index) -> Result<Term, StorageError>;

    /// Durably stores `snapshot` as the latest snapshot (an older one than the stored snapshot
    /// is ignored). If the log does not hold the snapshot's last entry with the same term, the
    /// whole log is discarded and the next append starts right after the snapshot; otherwise
    /// the log is kept as it is.
    async fn save_snapshot(&self, snapshot: Snapshot) -> Result<(), StorageError>;

    /// The latest snapshot, if any.
    async fn load_snapshot(&self) -> Result<Option<Snapshot>, StorageError>;

    /// Durably removes entries up to and including `up_to`, which must be covered by the
    /// latest snapshot (else `OutOfRange`).
    async fn compact(&self, up_to: Index) -> Result<(), StorageError>;
}
