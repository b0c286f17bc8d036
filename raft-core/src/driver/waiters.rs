//! Callers parked until their request completes: proposals until applied, reads until the
//! state machine caught up with their index, membership changes until the final
//! configuration is applied, leadership transfers until another node leads.
//!
//! Every waiter is resolved exactly once: by an outcome, an apply, a snapshot, a deadline, or
//! [`Waiters::fail_all`] when the driver stops. Their number is bounded by the request queue
//! and the protocol's limits (`max_uncommitted_entries`, `max_pending_forwards`,
//! `max_pending_reads`, one membership change and one transfer at a time).

use std::collections::BTreeMap;

use bytes::Bytes;
use tokio::sync::oneshot;

use super::{Applied, RaftError};
use crate::membership::Membership;
use crate::message::{ProposalId, ReadId};
use crate::protocol::{ProposalOutcome, ReadOutcome, TransferError};
use crate::types::{Entry, EntryPayload, Index, LogId, Millis, NodeId, Role, Term};

/// Where the answer to a request goes.
pub(super) type Reply<T> = oneshot::Sender<Result<T, RaftError>>;

/// A membership change proposed on this node.
struct MembershipWaiter {
    /// Where its first configuration entry was appended.
    log_id: LogId,
    /// That entry is a joint configuration (a voter change): the change completes when the
    /// configuration that leaves it is applied.
    joint: bool,
    /// The joint entry was applied (committed).
    joint_applied: bool,
    /// Set while this node is not the leader: past it, the outcome is reported unknown.
    deadline: Option<Millis>,
    reply: Reply<Membership>,
}

/// A leadership transfer started on this node.
struct TransferWaiter {
    target: NodeId,
    /// Past it, the transfer is reported timed out even if this node knows no leader yet.
    deadline: Millis,
    reply: Reply<NodeId>,
}

/// What the driver's node looks like after a step, for resolving waiters that depend on it.
#[derive(Debug, Clone, Copy)]
pub(super) struct NodeView {
    pub(super) id: NodeId,
    pub(super) now: Millis,
    pub(super) role: Role,
    pub(super) leader: Option<NodeId>,
    /// The target of the protocol's leadership transfer in progress.
    pub(super) transfer: Option<NodeId>,
}

/// Every caller the driver owes an answer.
#[derive(Default)]
pub(super) struct Waiters {
    /// Proposals waiting for the protocol to place them.
    outcomes: BTreeMap<ProposalId, Reply<Applied>>,
    /// Placed proposals waiting to be applied, by index.
    applies: BTreeMap<Index, (Term, Reply<Applied>)>,
    /// Reads waiting for the protocol's read index.
    reads: BTreeMap<ReadId, Reply<Index>>,
    /// Reads with a read index, waiting for the state machine to apply it.
    parked_reads: BTreeMap<Index, Vec<Reply<Index>>>,
    parked_reads_len: usize,
    memberships: Vec<MembershipWaiter>,
    transfers: Vec<TransferWaiter>,
}

impl Waiters {
    /// A proposal was stepped into the protocol as `id`.
    pub(super) fn add_proposal(&mut self, id: ProposalId, reply: Reply<Applied>) {
        self.outcomes.insert(id, reply);
    }

    /// The protocol placed or refused a proposal; `applied` is the last index applied here.
    pub(super) fn on_proposal_outcome(&mut self, outcome: ProposalOutcome, applied: Index) {
        let Some(reply) = self.outcomes.remove(&outcome.id) else { return };
        match outcome.result {
            Ok(log_id) if log_id.index <= applied => {
                let _ = reply.send(Err(RaftError::OutcomeUnknown));
            }
            Ok(log_id) => {
                if let Some((_, earlier)) = self.applies.insert(log_id.index, (log_id.term, reply)) {
                    // A leader placed a new entry at this index: the earlier proposal there
                    // was truncated from that leader's log, so it never commits.
                    let _ = earlier.send(Err(RaftError::ProposalDropped));
                }
            }
            Err(e) => {
                let _ = reply.send(Err(e.into()));
            }
        }
    }

    /// How many reads are waiting (for an index or for the state machine).
    pub(super) fn pending_reads(&self) -> usize {
        self.reads.len() + self.parked_reads_len
    }

    /// A read was stepped into the protocol as `id`.
    pub(super) fn add_read(&mut self, id: ReadId, reply: Reply<Index>) {
        self.reads.insert(id, reply);
    }

    /// The protocol confirmed or refused a read; `applied` is the last index applied here.
    pub(super) fn on_read_outcome(&mut self, outcome: ReadOutcome, applied: Index) {
        let Some(reply) = self.reads.remove(&outcome.id) else { return };
        match outcome.result {
            Ok(index) if index <= applied => {
                let _ = reply.send(Ok(index));
            }
            Ok(index) => {
                self.parked_reads.entry(index).or_default().push(reply);
                self.parked_reads_len += 1;
            }
            Err(e) => {
                let _ = reply.send(Err(e.into()));
            }
        }
    }

    /// The state machine has applied everything up to `applied`: serve the reads it covers.
    pub(super) fn release_reads(&mut self, applied: Index) {
        let waiting = self.parked_reads.split_off(&(applied + 1));
        for (index, replies) in std::mem::replace(&mut self.parked_reads, waiting) {
            self.parked_reads_len -= replies.len();
            for reply in replies {
                let _ = reply.send(Ok(index));
            }
        }
    }

    /// A membership change was appended at `log_id`; `joint` when it is a joint configuration.
    pub(super) fn add_membership(&mut self, log_id: LogId, joint: bool, reply: Reply<Membership>) {
        self.memberships.push(MembershipWaiter {
            log_id,
            joint,
            joint_applied: false,
            deadline: None,
            reply,
        });
    }

    /// A leadership transfer to `target` started.
    pub(super) fn add_transfer(&mut self, target: NodeId, deadline: Millis, reply: Reply<NodeId>) {
        self.transfers.push(TransferWaiter { target, deadline, reply });
    }

    /// `entry` was applied with `response`: answer the proposal and the membership change
    /// waiting on it.
    pub(super) fn on_applied(&mut self, entry: &Entry, response: Bytes) {
        if let Some((term, reply)) = self.applies.remove(&entry.index) {
            let result = if term == entry.term {
                Ok(Applied { log_id: entry.log_id(), response })
            } else {
                Err(RaftError::ProposalDropped)
            };
            let _ = reply.send(result);
        }
        if self.memberships.is_empty() {
            return;
        }
        let config = match &entry.payload {
            EntryPayload::Membership(m) => Some(m),
            _ => None,
        };
        let mut i = 0;
        while i < self.memberships.len() {
            let w = &mut self.memberships[i];
            let result = if entry.index == w.log_id.index {
                match config {
                    _ if entry.term != w.log_id.term => Some(Err(RaftError::ProposalDropped)),
                    Some(m) if !w.joint => Some(Ok(m.clone())),
                    _ => {
                        w.joint_applied = true;
                        None
                    }
                }
            } else if entry.index > w.log_id.index && w.joint_applied {
                // After a committed joint configuration, the next one is the one leaving it.
                config.filter(|m| !m.is_joint()).map(|m| Ok(m.clone()))
            } else {
                None
            };
            match result {
                Some(result) => {
                    let w = self.memberships.swap_remove(i);
                    let _ = w.reply.send(result);
                }
                None => i += 1,
            }
        }
    }

    /// A snapshot from the leader ending at `last` with `membership` replaced the state
    /// machine: entries at or below `last` will not be applied here.
    pub(super) fn on_snapshot_installed(&mut self, last: LogId, membership: &Membership) {
        let waiting = self.applies.split_off(&(last.index + 1));
        for (_, (_, reply)) in std::mem::replace(&mut self.applies, waiting) {
            let _ = reply.send(Err(RaftError::OutcomeUnknown));
        }
        let mut i = 0;
        while i < self.memberships.len() {
            let w = &self.memberships[i];
            let result = if last.index < w.log_id.index {
                None
            } else if !w.joint_applied {
                Some(Err(RaftError::OutcomeUnknown))
            } else if !membership.is_joint() {
                Some(Ok(membership.clone()))
            } else {
                None
            };
            match result {
                Some(result) => {
                    let w = self.memberships.swap_remove(i);
                    let _ = w.reply.send(result);
                }
                None => i += 1,
            }
        }
        self.release_reads(last.index);
    }

    /// Resolves what depends on the node's role and leader: finished or abandoned transfers,
    /// and membership changes whose proposer lost leadership for longer than `grace_ms`.
    pub(super) fn on_step(&mut self, node: NodeView, grace_ms: Millis) {
        let mut i = 0;
        while i < self.transfers.len() {
            let t = &self.transfers[i];
            let result = match (node.role, node.leader) {
                (Role::Leader, _) if node.transfer != Some(t.target) => {
                    Some(Err(TransferError::TimedOut(t.target).into()))
                }
                (role, Some(leader)) if role != Role::Leader && leader != node.id => Some(Ok(leader)),
                _ if node.now >= t.deadline => Some(Err(TransferError::TimedOut(t.target).into())),
                _ => None,
            };
            match result {
                Some(result) => {
                    let t = self.transfers.swap_remove(i);
                    let _ = t.reply.send(result);
                }
                None => i += 1,
            }
        }
        let mut i = 0;
        while i < self.memberships.len() {
            let w = &mut self.memberships[i];
            if node.role == Role::Leader {
                w.deadline = None;
            } else {
                let deadline = *w.deadline.get_or_insert(node.now + grace_ms);
                if node.now >= deadline {
                    let w = self.memberships.swap_remove(i);
                    let _ = w.reply.send(Err(RaftError::OutcomeUnknown));
                    continue;
                }
            }
            i += 1;
        }
    }

    /// The earliest deadline of a waiter, if any.
    pub(super) fn next_deadline(&self) -> Option<Millis> {
        let transfers = self.transfers.iter().map(|t| t.deadline);
        let memberships = self.memberships.iter().filter_map(|w| w.deadline);
        transfers.chain(memberships).min()
    }

    /// The driver stops: every waiter gets `error`.
    pub(super) fn fail_all(&mut self, error: &RaftError) {
        for (_, reply) in std::mem::take(&mut self.outcomes) {
            let _ = reply.send(Err(error.clone()));
        }
        for (_, (_, reply)) in std::mem::take(&mut self.applies) {
            let _ = reply.send(Err(error.clone()));
        }
        for (_, reply) in std::mem::take(&mut self.reads) {
            let _ = reply.send(Err(error.clone()));
        }
        for reply in std::mem::take(&mut self.parked_reads).into_values().flatten() {
            let _ = reply.send(Err(error.clone()));
        }
        self.parked_reads_len = 0;
        for w in std::mem::take(&mut self.memberships) {
            let _ = w.reply.send(Err(error.clone()));
        }
        for t in std::mem::take(&mut self.transfers) {
            let _ = t.reply.send(Err(error.clone()));
        }
    }
}
