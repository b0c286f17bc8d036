//! What the protocol asks its driver to do after a batch of inputs.

use crate::config::ConfigError;
use crate::membership::InvalidChange;
use crate::message::{ForwardRejection, Message, ProposalId, ReadId};
use bytes::Bytes;

use crate::storage::{Snapshot, SnapshotMeta};
use crate::types::{Entry, HardState, Index, LogId, NodeId, Term};

/// The work one [`Raft::take_ready`](crate::Raft::take_ready) hands to the driver. The driver
/// carries it out in this order:
///
/// 0. discard the staged snapshot if `discard_staged_snapshot`, then stage `snapshot_parts`
///    (parts of a snapshot the leader is sending);
/// 1. send `messages` (the leader's AppendEntries may go out before its own write; a ready
///    that changes `hard_state` has none: what it would send waits in `persisted_messages`);
/// 2. persist: `hard_state` first, then the received `snapshot` (the staged parts; storage
///    drops the log it replaces), then truncate the log from `truncate_from`, then append `entries` (all
///    durable before step 3);
/// 3. send `persisted_messages` (votes and acknowledgements that promise durable state);
/// 4. restore the state machine from `snapshot`, if any; apply `committed` in order; answer
///    `proposals`; serve `reads` once the state machine has applied their index;
/// 5. call [`Raft::advance`](crate::Raft::advance).
///
/// No other input may be given to the protocol between `take_ready` and `advance`.
///
/// A driver may instead persist in the background: it queues step 2's writes (storage
/// carries out the writes of readies in the order they were taken), holds `persisted_messages`
/// until they and every earlier write are durable, carries out the rest, and calls
/// [`Raft::advance_unpersisted`](crate::Raft::advance_unpersisted); once the writes are
/// durable it sends the held messages and steps [`Event::Persisted`](crate::Event::Persisted)
/// with [`persist_through`](Ready::persist_through) and [`seq`](Ready::seq). While a ready's
/// new hard state is not reported durable, later readies carry no early `messages` either. `committed` then holds only entries
/// reported durable. A ready with a `snapshot` is carried out whole, after every queued write,
/// and ends with `advance`.
///
/// A driver may also apply in the background: step 4's restore and applies are queued to a
/// task that carries them out in order, and proposals and reads are answered when it reports
/// their index applied (the protocol counts entries as handed out, not as applied). While its
/// queue is full it calls [`Raft::hold_apply`](crate::Raft::hold_apply), so that readies stop
/// handing out committed entries instead of the driver waiting.
#[derive(Debug, Default)]
pub struct Ready {
    /// Messages that can be sent at once.
    pub messages: Vec<Message>,
    /// New hard state to persist, if it changed.
    pub hard_state: Option<HardState>,
    /// A snapshot received from the leader: store it, then restore the state machine from it.
    pub snapshot: Option<Snapshot>,
    /// Remove every log entry at or after this index (a conflicting suffix).
    pub truncate_from: Option<Index>,
    /// Entries to append after the truncation.
    pub entries: Vec<Entry>,
    /// Messages to send only once the writes above are durable.
    pub persisted_messages: Vec<Message>,
    /// Committed entries to apply, in index order; all are durable locally.
    pub committed: Vec<Entry>,
    /// Outcomes of proposals made on this node.
    pub proposals: Vec<ProposalOutcome>,
    /// Outcomes of linearizable reads made on this node.
    pub reads: Vec<ReadOutcome>,
    /// Parts of this node's snapshot to read from storage (it holds only its size): read each
    /// (at any point of the order above) and hand it back with
    /// [`Event::SnapshotChunk`](crate::Event::SnapshotChunk) after `advance`.
    pub snapshot_reads: Vec<SnapshotRead>,
    /// Log entries a follower needs that are before the log's cache (see
    /// [`Config::log_cache_bytes`](crate::Config::log_cache_bytes)): read each from storage (at
    /// any point of the order above) and hand it back with
    /// [`Event::LogEntries`](crate::Event::LogEntries) after `advance`.
    pub log_reads: Vec<LogRead>,
    /// Parts of a snapshot the leader is sending, in order: stage each
    /// ([`Storage::stage_snapshot_part`](crate::Storage::stage_snapshot_part)) before
    /// anything else of this ready. A part at offset 0 starts a snapshot over. When the last
    /// part has come, [`snapshot`](Ready::snapshot) is that snapshot, its bytes
    /// [stored](crate::SnapshotData::stored): the staged parts.
    pub snapshot_parts: Vec<SnapshotPart>,
    /// The snapshot being received was given up (a new term, or the log caught up past it):
    /// discard its staged parts ([`Storage::discard_staged_snapshot`](crate::Storage::discard_staged_snapshot))
    /// before staging `snapshot_parts`, which then belong to another snapshot.
    pub discard_staged_snapshot: bool,
    /// The log's last entry when this ready was taken. A driver that persists in the
    /// background ([`Raft::advance_unpersisted`](crate::Raft::advance_unpersisted)) reports
    /// it with [`Event::Persisted`](crate::Event::Persisted) once this ready's writes, and
    /// every earlier one's, are durable.
    pub persist_through: LogId,
    /// This ready's number (1, 2, ... in the order taken), for
    /// [`Event::Persisted`](crate::Event::Persisted).
    pub seq: u64,
}

/// A part of a snapshot received from the leader, for the driver to stage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotPart {
    /// The term of the leader sending it.
    pub term: Term,
    /// The snapshot it belongs to.
    pub meta: SnapshotMeta,
    /// Where its bytes go in the snapshot.
    pub offset: u64,
    /// Its bytes.
    pub data: Bytes,
}

/// A part of the node's snapshot the protocol needs in order to send it to a follower.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotRead {
    /// The follower it is for.
    pub to: NodeId,
    /// The snapshot (its last entry).
    pub snapshot: LogId,
    /// The first byte.
    pub offset: u64,
    /// The most bytes.
    pub max: usize,
}

/// Log entries the protocol needs from storage in order to send them to a follower.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogRead {
    /// The follower they are for.
    pub to: NodeId,
    /// The first index.
    pub from: Index,
    /// The last index (inclusive).
    pub last: Index,
}

impl Ready {
    /// Whether there is anything to persist.
    pub fn must_persist(&self) -> bool {
        self.hard_state.is_some()
            || self.snapshot.is_some()
            || self.truncate_from.is_some()
            || !self.entries.is_empty()
    }

    /// Whether the ready is empty.
    pub fn is_empty(&self) -> bool {
        self.messages.is_empty()
            && !self.must_persist()
            && self.persisted_messages.is_empty()
            && self.committed.is_empty()
            && self.proposals.is_empty()
            && self.reads.is_empty()
            && self.snapshot_reads.is_empty()
            && self.log_reads.is_empty()
            && self.snapshot_parts.is_empty()
            && !self.discard_staged_snapshot
    }
}

/// What became of a proposal made on this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProposalOutcome {
    /// The id the driver gave the proposal.
    pub id: ProposalId,
    /// Where the leader put it, or why it was refused.
    pub result: Result<LogId, ProposalRejection>,
}

/// What became of a linearizable read made on this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadOutcome {
    /// The id the driver gave the read.
    pub id: ReadId,
    /// The read index: serve the read once the state machine has applied it. Or why no
    /// index could be confirmed.
    pub result: Result<Index, ProposalRejection>,
}

/// Why a proposal, a read or a membership change was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ProposalRejection {
    /// This node is not the leader and did not (or could not) forward.
    #[error("not the leader (leader hint: {leader_hint:?})")]
    NotLeader {
        /// The leader this node knows of.
        leader_hint: Option<NodeId>,
    },
    /// Too many proposals are uncommitted or forwarded; retry later.
    #[error("too many proposals in flight")]
    Busy,
    /// A forwarded proposal got no answer from the leader in time; its outcome is unknown.
    #[error("the leader did not answer the forwarded request in time (outcome unknown)")]
    ForwardTimeout,
    /// The leader (or the node taken for it) refused a forwarded proposal. The transport may
    /// have delivered the proposal more than once, and another delivery may have been
    /// appended (by this node in an earlier term, say), so the outcome is unknown; the driver
    /// answers such proposals with `OutcomeUnknown`.
    #[error("the leader refused the forwarded proposal (outcome unknown; leader hint: {leader_hint:?})")]
    ForwardRefused {
        /// The leader the refusing node knows of.
        leader_hint: Option<NodeId>,
    },
    /// The leader could not confirm the request with a quorum in time (`rpc_timeout_ms`); it
    /// may be cut off from the others.
    #[error("no quorum confirmed the request in time")]
    Timeout,
    /// The leader is handing over leadership; retry on the new leader.
    #[error("a leadership transfer is in progress")]
    LeadershipTransferInProgress,
    /// A membership change is still in progress (one change at a time).
    #[error("a membership change is already in progress")]
    MembershipChangeInProgress,
    /// The membership change is not valid for the current membership.
    #[error("invalid membership change: {0}")]
    InvalidMembershipChange(InvalidChange),
    /// The change would make `node` a voter before its log has caught up with the leader's
    /// commit index (or while the leader does not hear from it); retry once it has.
    #[error("node {node} has not caught up with the leader (or is not answering); retry later")]
    NotCaughtUp {
        /// The node that would become a voter.
        node: NodeId,
    },
    /// Fewer than a majority of the new voters are caught up and answering the leader: the
    /// cluster could be left unable to elect or commit. A forced change skips this check.
    #[error(
        "only {live} of the {voters} voters after this change are caught up and answering the leader, short of a majority (force it to proceed anyway)"
    )]
    NoLiveQuorum {
        /// Voters of the new configuration that are caught up and answering.
        live: usize,
        /// Voters of the new configuration.
        voters: usize,
    },
}

impl From<ForwardRejection> for ProposalRejection {
    fn from(r: ForwardRejection) -> Self {
        match r {
            ForwardRejection::NotLeader { leader_hint } => ProposalRejection::NotLeader { leader_hint },
            ForwardRejection::Busy => ProposalRejection::Busy,
        }
    }
}

/// Why a leadership transfer could not start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TransferError {
    /// Only the leader can hand over leadership.
    #[error("not the leader (leader hint: {leader_hint:?})")]
    NotLeader {
        /// The leader this node knows of.
        leader_hint: Option<NodeId>,
    },
    /// The target does not vote in the current configuration.
    #[error("node {0} is not a voter")]
    NotAVoter(NodeId),
    /// No other voter exists, or (no target named) none answered within an election timeout.
    #[error("no other voter can take over (none answered lately)")]
    NoCandidate,
    /// A transfer is already in progress.
    #[error("a leadership transfer to node {0} is already in progress")]
    InProgress(NodeId),
    /// The transfer did not complete within an election timeout and was abandoned.
    #[error("the leadership transfer to node {0} timed out")]
    TimedOut(NodeId),
}

/// Why a node cannot start from its restored state.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RestoreError {
    /// The config is invalid.
    #[error("invalid config: {0}")]
    Config(#[from] ConfigError),
    /// The restored log and snapshot do not fit together (storage is damaged).
    #[error("restored state is inconsistent: {0}")]
    Inconsistent(String),
}
