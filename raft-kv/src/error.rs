//! The crate's error types: what a caller can handle (a bad command, a watch that must resync,
//! a service with no live node) is kept apart from what stops the node (a bad snapshot).

use raft_core::{FsmError, Index};

/// An error of encoding, decoding or validating, or of a store whose state machine is gone.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KvError {
    /// The bytes are not a valid encoding (of a [`Command`](crate::Command) or a
    /// [`Response`](crate::Response)).
    #[error("cannot decode {what}: {reason}")]
    Decode {
        /// What was being decoded.
        what: &'static str,
        /// Why it failed.
        reason: String,
    },
    /// The command breaks a rule of the data model (bad request).
    #[error(transparent)]
    Invalid(#[from] InvalidCommand),
    /// The options are inconsistent.
    #[error("invalid options: {0}")]
    Options(String),
    /// The [`KvFsm`](crate::KvFsm) was dropped (the node stopped): nothing will be applied
    /// anymore.
    #[error("the state machine is gone (the node stopped)")]
    Closed,
}

/// Why a command is invalid. Checked by [`Command::validate`](crate::Command::validate) (the
/// HTTP layer can refuse a request before proposing it) and again when the command is applied
/// (where it becomes a [`Response::Rejected`](crate::Response::Rejected)).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidCommand {
    /// A field that must not be empty is empty.
    #[error("{what} must not be empty")]
    Empty {
        /// The field.
        what: &'static str,
    },
    /// A field is longer than its limit.
    #[error("{what} is {len} bytes, more than the limit of {max}")]
    TooLong {
        /// The field.
        what: &'static str,
        /// Its length in bytes.
        len: usize,
        /// The limit in bytes.
        max: usize,
    },
    /// A list has more items than its limit.
    #[error("{what} has {count} items, more than the limit of {max}")]
    TooMany {
        /// The list.
        what: &'static str,
        /// Its length.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// Two nodes of a service share an id.
    #[error("node id {node:?} appears twice in service {service:?}")]
    DuplicateNode {
        /// The service.
        service: String,
        /// The repeated node id.
        node: String,
    },
    /// A session sequence number of 0 (they start at 1).
    #[error("session seq must be at least 1")]
    ZeroSeq,
}

/// Why a snapshot cannot be restored. Restoring fails as a whole: the state is unchanged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SnapshotError {
    /// The snapshot has no bytes.
    #[error("snapshot is empty")]
    Empty,
    /// The format version byte is not one this build reads.
    #[error("unsupported snapshot format version {0}")]
    UnsupportedFormat(u8),
    /// The body cannot be decoded (truncated, garbage, or trailing bytes).
    #[error("cannot decode snapshot: {0}")]
    Decode(String),
    /// The snapshot's bytes could not be read (a missing or damaged snapshot file).
    #[error("cannot read snapshot: {0}")]
    Read(String),
    /// The body decodes but breaks an invariant of the state (duplicate keys, bad versions,
    /// invalid services, more sessions or keys than this node's options allow...).
    #[error("snapshot is inconsistent: {0}")]
    Invalid(String),
    /// The state rebuilt from the snapshot does not have the hash the snapshot recorded.
    #[error("snapshot state hash {recorded:#018x} does not match the restored state's {computed:#018x}")]
    HashMismatch {
        /// The hash written in the snapshot.
        recorded: u64,
        /// The hash of the restored state.
        computed: u64,
    },
}

impl From<SnapshotError> for FsmError {
    fn from(e: SnapshotError) -> Self {
        FsmError::BadSnapshot(e.to_string())
    }
}

/// Why a [`Watcher`](crate::Watcher) stopped or could not start. Each is terminal for that
/// watcher; the client resyncs as described per variant.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WatchError {
    /// The events after the requested index are no longer retained (or a snapshot was restored,
    /// which replaces history). Read the current state, then watch from its index; any
    /// `from_index >= min_from_index` is accepted now.
    #[error("events are compacted; watch from index {min_from_index} or later")]
    Compacted {
        /// The smallest `from_index` that can be served now.
        min_from_index: Index,
    },
    /// The watcher fell behind the live stream and events were dropped. Watching again from
    /// `resume_from` may still be served from the retained history.
    #[error("watcher fell behind; resume from index {resume_from}")]
    Lagged {
        /// The index of the last event this watcher examined.
        resume_from: Index,
    },
    /// The state machine is gone (the node stopped).
    #[error("the state machine is gone (the node stopped)")]
    Closed,
}

/// Why the balancer picked no node.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BalanceError {
    /// No service has this name.
    #[error("unknown service {0:?}")]
    UnknownService(String),
    /// Every node of the service is down or has priority 0 (or it has no nodes).
    #[error("service {0:?} has no live node")]
    NoLiveNode(String),
}
