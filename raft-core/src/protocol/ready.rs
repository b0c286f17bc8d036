//! What the protocol asks its driver to do after a batch of inputs.

use crate::message::{Message, ProposalId};
use crate::types::{Entry, HardState, Index, LogId, NodeId};

/// The work one [`Raft::take_ready`](crate::Raft::take_ready) hands to the driver. The driver
/// carries it out in this order:
///
/// 1. send `messages` (the leader's AppendEntries may go out before its own write);
/// 2. persist: `hard_state` first, then truncate the log from `truncate_from`, then append
///    `entries` (all durable before step 3);
/// 3. send `persisted_messages` (votes and acknowledgements that promise durable state);
/// 4. apply `committed` in order and answer `proposals`;
/// 5. call [`Raft::advance`](crate::Raft::advance).
///
/// No other input may be given to the protocol between `take_ready` and `advance`.
#[derive(Debug, Default)]
pub struct Ready {
    /// Messages that can be sent at once.
    pub messages: Vec<Message>,
    /// New hard state to persist, if it changed.
    pub hard_state: Option<HardState>,
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
}

impl Ready {
    /// Whether there is anything to persist.
    pub fn must_persist(&self) -> bool {
        self.hard_state.is_some() || self.truncate_from.is_some() || !self.entries.is_empty()
    }

    /// Whether the ready is empty.
    pub fn is_empty(&self) -> bool {
        self.messages.is_empty()
            && !self.must_persist()
            && self.persisted_messages.is_empty()
            && self.committed.is_empty()
            && self.proposals.is_empty()
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

/// Why a proposal was not appended.
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
    #[error("the leader did not answer the forwarded proposal in time (outcome unknown)")]
    ForwardTimeout,
}
