//! Basic protocol types: ids, terms, indexes, log entries and the persistent hard state.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::membership::Membership;

/// Identifies a node of the cluster. Unique within a cluster; never reused for another node.
pub type NodeId = u64;
/// A Raft term. Terms start at 0 (no leader yet) and only grow.
pub type Term = u64;
/// A log index. The first entry of a log has index 1; index 0 means "before the log".
pub type Index = u64;
/// Monotonic time in milliseconds, supplied by the caller (the protocol never reads a clock).
pub type Millis = u64;

/// The position of an entry: its index and the term in which it was created.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize, Deserialize)]
pub struct LogId {
    /// The term of the entry.
    pub term: Term,
    /// The index of the entry.
    pub index: Index,
}

impl LogId {
    /// Makes a log id from a term and an index.
    pub fn new(term: Term, index: Index) -> Self {
        Self { term, index }
    }
}

impl std::fmt::Display for LogId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}@{}", self.index, self.term)
    }
}

/// What a log entry carries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum EntryPayload {
    /// The no-op a new leader appends at the start of its term (Raft §8), so that earlier
    /// entries can commit.
    Blank,
    /// An opaque client command, applied by the [`Fsm`](crate::Fsm).
    Command(Bytes),
    /// A cluster configuration. It takes effect on a node as soon as it is appended to that
    /// node's log (Raft §4.1), committed or not. Boxed: configurations are rare, and unboxed
    /// they made every entry 88 bytes instead of 56 (each entry is moved and cloned several
    /// times on its way through a node).
    Membership(Box<Membership>),
}

/// One entry of the replicated log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// The term in which the leader created this entry.
    pub term: Term,
    /// The position of this entry in the log (first index is 1).
    pub index: Index,
    /// What the entry carries.
    pub payload: EntryPayload,
}

impl Entry {
    /// The entry's position.
    pub fn log_id(&self) -> LogId {
        LogId::new(self.term, self.index)
    }

    /// Approximate size of the entry in bytes, used for batching limits.
    pub fn size_bytes(&self) -> usize {
        const HEADER_BYTES: usize = 24;
        HEADER_BYTES
            + match &self.payload {
                EntryPayload::Blank => 0,
                EntryPayload::Command(c) => c.len(),
                EntryPayload::Membership(m) => 8 * m.members().len() + 8,
            }
    }
}

/// A log entry known by its position and size, its payload left in storage: how a restarted
/// node hands the protocol the part of its log that does not fit the cache
/// ([`Config::log_cache_bytes`](crate::Config::log_cache_bytes)). A configuration entry keeps
/// its membership (the protocol knows every configuration in its log).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryStub {
    /// The entry's position.
    pub log_id: LogId,
    /// [`Entry::size_bytes`] of the whole entry.
    pub size_bytes: u64,
    /// The membership a configuration entry carries.
    pub membership: Option<Box<Membership>>,
}

impl From<&Entry> for EntryStub {
    fn from(e: &Entry) -> Self {
        let membership = match &e.payload {
            EntryPayload::Membership(m) => Some(m.clone()),
            _ => None,
        };
        Self { log_id: e.log_id(), size_bytes: e.size_bytes() as u64, membership }
    }
}

/// The state every node persists before answering any RPC (the paper's Figure 2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct HardState {
    /// Latest term the node has seen.
    pub current_term: Term,
    /// The candidate that received this node's vote in `current_term`, if any.
    pub voted_for: Option<NodeId>,
}

impl HardState {
    /// Whether this hard state is older than `recorded`: a lower term, or the same term
    /// without the vote `recorded` holds (what a store that lost writes finds).
    pub fn is_behind(&self, recorded: &HardState) -> bool {
        recorded.current_term > self.current_term
            || (recorded.current_term == self.current_term
                && self.voted_for.is_none()
                && recorded.voted_for.is_some())
    }
}

/// A node's role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Role {
    /// Follows a leader (or waits for one).
    Follower,
    /// Asks for pre-votes without changing its term (§9.6 of the Raft dissertation).
    PreCandidate,
    /// Asks for votes in a new term.
    Candidate,
    /// Accepts proposals and replicates the log.
    Leader,
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = match self {
            Role::Follower => "follower",
            Role::PreCandidate => "pre-candidate",
            Role::Candidate => "candidate",
            Role::Leader => "leader",
        };
        f.write_str(s)
    }
}

#[cfg(test)]
mod tests {
    use super::{Entry, EntryPayload};

    /// Every entry is moved and cloned several times per node: a configuration inline (72
    /// bytes) made all of them 88 bytes; boxed, a command's `Bytes` is the largest payload.
    #[test]
    fn an_entry_is_no_larger_than_its_command() {
        assert_eq!(std::mem::size_of::<EntryPayload>(), 40);
        assert_eq!(std::mem::size_of::<Entry>(), 56);
    }
}
