//! Callers parked until their request completes: proposals until applied, reads until the
//! state machine caught up with their index, membership changes until the final
//! configuration is applied, leadership transfers until another node leads.
//!
//! Every waiter is resolved exactly once: by an outcome, an apply, a snapshot, a deadline, or
//! [`Waiters::fail_all`] when the driver stops. Their number is bounded by the request queue
//! and the protocol's limits (`max_uncommitted_entries`, `max_pending_forwards`,
//! `max_pending_reads`, one membership change and one transfer at a time).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};

use bytes::Bytes;
use tokio::sync::oneshot;

use super::{Applied, RaftError};
use crate::membership::Membership;
use crate::message::{ProposalId, ReadId};
use crate::protocol::{ProposalOutcome, ProposalRejection, ReadOutcome, TransferError};
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

/// Hashes the driver's request ids. They are counters (one per request, from a random start),
/// never chosen by a peer, so a multiplication spreads them well enough; the default SipHash and
/// an ordered map both showed in the profile of a busy leader.
#[derive(Default)]
struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(*b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }

    fn write_u64(&mut self, id: u64) {
        self.0 = id.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

/// The hasher of the id-keyed maps.
type IdHash = BuildHasherDefault<IdHasher>;

/// Placed proposals waiting for their entry to be applied. On a leader they are placed in
/// index order: those go to a queue (pushed at the back, answered from the front, no search
/// and no allocation per proposal: this is on every write's path). One placed at or below an
/// index already waiting (after a change of leader, several can wait on one index; the one
/// whose term the applied entry has wins) goes to an ordered map.
#[derive(Default)]
struct Placed {
    in_order: VecDeque<(LogId, Millis, Reply<Applied>)>,
    others: BTreeMap<(Index, ProposalId), (Term, Millis, Reply<Applied>)>,
}

impl Placed {
    fn insert(&mut self, at: LogId, id: ProposalId, deadline: Millis, reply: Reply<Applied>) {
        if self.in_order.back().is_none_or(|(last, _, _)| last.index < at.index) {
            self.in_order.push_back((at, deadline, reply));
        } else {
            self.others.insert((at.index, id), (at.term, deadline, reply));
        }
    }

    /// Removes one waiting proposal placed at or below `index`, the lowest first.
    fn pop_through(&mut self, index: Index) -> Option<(Index, Term, Reply<Applied>)> {
        let queued = self.in_order.front().map(|(at, _, _)| at.index).filter(|&i| i <= index);
        let mapped = self.others.first_key_value().map(|((i, _), _)| *i).filter(|&i| i <= index);
        match (queued, mapped) {
            (Some(q), Some(m)) if m < q => self.pop_mapped(),
            (Some(_), _) => self.in_order.pop_front().map(|(at, _, reply)| (at.index, at.term, reply)),
            (None, Some(_)) => self.pop_mapped(),
            (None, None) => None,
        }
    }

    fn pop_mapped(&mut self) -> Option<(Index, Term, Reply<Applied>)> {
        self.others.pop_first().map(|((index, _), (term, _, reply))| (index, term, reply))
    }

    /// Answers `OutcomeUnknown` to those whose deadline passed; returns the earliest left.
    fn expire(&mut self, now: Millis) -> Option<Millis> {
        let mut earliest: Option<Millis> = None;
        let mut keep = |deadline: Millis| {
            let keep = deadline > now;
            if keep {
                earliest = Some(earliest.map_or(deadline, |e| e.min(deadline)));
            }
            keep
        };
        for (at, deadline, reply) in std::mem::take(&mut self.in_order) {
            if keep(deadline) {
                self.in_order.push_back((at, deadline, reply));
            } else {
                let _ = reply.send(Err(RaftError::OutcomeUnknown));
            }
        }
        for (key, (term, deadline, reply)) in std::mem::take(&mut self.others) {
            if keep(deadline) {
                self.others.insert(key, (term, deadline, reply));
            } else {
                let _ = reply.send(Err(RaftError::OutcomeUnknown));
            }
        }
        earliest
    }

    /// Every waiting proposal's reply.
    fn into_replies(self) -> impl Iterator<Item = Reply<Applied>> {
        let queued = self.in_order.into_iter().map(|(_, _, reply)| reply);
        queued.chain(self.others.into_values().map(|(_, _, reply)| reply))
    }
}

/// Every caller the driver owes an answer.
#[derive(Default)]
pub(super) struct Waiters {
    /// Proposals waiting for the protocol to place them.
    outcomes: HashMap<ProposalId, Reply<Applied>, IdHash>,
    /// Placed proposals waiting to be applied, by index (then proposal id: several can wait on
    /// one index after a leadership change; the one whose term the applied entry has wins, the
    /// others were dropped). Nothing is decided before the entry at that index is applied.
    /// One map entry per proposal, no allocation of its own: this is on every write's path.
    applies: Placed,
    /// The earliest deadline among `applies`.
    applies_deadline: Option<Millis>,
    /// Reads waiting for the protocol's read index.
    reads: HashMap<ReadId, Reply<Index>, IdHash>,
    /// Reads with a read index, waiting for the state machine to apply it, each with the time
    /// it fails with `Timeout` (a node cut off from the leader may never catch up).
    parked_reads: BTreeMap<Index, Vec<(Millis, Reply<Index>)>>,
    parked_reads_len: usize,
    /// The earliest deadline among parked reads.
    parked_reads_deadline: Option<Millis>,
    memberships: Vec<MembershipWaiter>,
    transfers: Vec<TransferWaiter>,
}

impl Waiters {
    /// A proposal was stepped into the protocol as `id`.
    pub(super) fn add_proposal(&mut self, id: ProposalId, reply: Reply<Applied>) {
        self.outcomes.insert(id, reply);
    }

    /// The protocol placed or refused a proposal; `applied` is the last index applied here.
    /// A placed proposal not applied by `deadline` is answered `OutcomeUnknown` (this node
    /// may be cut off from the leader for good).
    pub(super) fn on_proposal_outcome(&mut self, outcome: ProposalOutcome, applied: Index, deadline: Millis) {
        let Some(reply) = self.outcomes.remove(&outcome.id) else { return };
        match outcome.result {
            Ok(log_id) if log_id.index <= applied => {
                let _ = reply.send(Err(RaftError::OutcomeUnknown));
            }
            Ok(log_id) => {
                self.applies.insert(log_id, outcome.id, deadline, reply);
                self.applies_deadline = Some(self.applies_deadline.map_or(deadline, |d| d.min(deadline)));
            }
            Err(ProposalRejection::ForwardTimeout | ProposalRejection::ForwardRefused { .. }) => {
                // The leader may have appended it (the answer was lost, or a refusal answers
                // another delivery of it): the outcome is unknown, not a failure.
                let _ = reply.send(Err(RaftError::OutcomeUnknown));
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

    /// The protocol confirmed or refused a read; `applied` is the last index applied here. A
    /// read that must wait for the state machine fails at `deadline` if it is still waiting.
    pub(super) fn on_read_outcome(&mut self, outcome: ReadOutcome, applied: Index, deadline: Millis) {
        let Some(reply) = self.reads.remove(&outcome.id) else { return };
        match outcome.result {
            Ok(index) if index <= applied => {
                let _ = reply.send(Ok(index));
            }
            Ok(index) => {
                self.parked_reads.entry(index).or_default().push((deadline, reply));
                self.parked_reads_len += 1;
                let earliest = self.parked_reads_deadline.map_or(deadline, |d| d.min(deadline));
                self.parked_reads_deadline = Some(earliest);
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
            for (_, reply) in replies {
                let _ = reply.send(Ok(index));
            }
        }
        if self.parked_reads.is_empty() {
            self.parked_reads_deadline = None;
        }
    }

    /// Answers `OutcomeUnknown` to the placed proposals whose deadline passed.
    fn expire_applies(&mut self, now: Millis) {
        if self.applies_deadline.is_none_or(|d| now < d) {
            return;
        }
        self.applies_deadline = self.applies.expire(now);
    }

    /// Fails the parked reads whose deadline passed.
    fn expire_parked_reads(&mut self, now: Millis) {
        if self.parked_reads_deadline.is_none_or(|d| now < d) {
            return;
        }
        let mut earliest: Option<Millis> = None;
        for replies in self.parked_reads.values_mut() {
            for (deadline, reply) in std::mem::take(replies) {
                if deadline <= now {
                    let _ = reply.send(Err(ProposalRejection::Timeout.into()));
                    self.parked_reads_len -= 1;
                } else {
                    earliest = Some(earliest.map_or(deadline, |e| e.min(deadline)));
                    replies.push((deadline, reply));
                }
            }
        }
        self.parked_reads.retain(|_, replies| !replies.is_empty());
        self.parked_reads_deadline = earliest;
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
        while let Some((index, term, reply)) = self.applies.pop_through(entry.index) {
            if index < entry.index {
                // Not reachable (entries are applied in order and a proposal placed at or
                // below the applied index is answered at once); answered rather than kept.
                let _ = reply.send(Err(RaftError::OutcomeUnknown));
                continue;
            }
            let result = if term == entry.term {
                Ok(Applied { log_id: entry.log_id(), response: response.clone() })
            } else {
                Err(RaftError::ProposalDropped)
            };
            let _ = reply.send(result);
        }
        if self.memberships.is_empty() {
            return;
        }
        let config = match &entry.payload {
            EntryPayload::Membership(m) => Some(&**m),
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
        while let Some((_, _, reply)) = self.applies.pop_through(last.index) {
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
        self.expire_parked_reads(node.now);
        self.expire_applies(node.now);
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
        transfers.chain(memberships).chain(self.parked_reads_deadline).chain(self.applies_deadline).min()
    }

    /// The driver stops: reads and transfers get `error`; proposals and membership changes
    /// get `OutcomeUnknown` (their entries may be on other nodes already and commit there).
    pub(super) fn fail_all(&mut self, error: &RaftError) {
        for (_, reply) in std::mem::take(&mut self.outcomes) {
            let _ = reply.send(Err(RaftError::OutcomeUnknown));
        }
        for reply in std::mem::take(&mut self.applies).into_replies() {
            let _ = reply.send(Err(RaftError::OutcomeUnknown));
        }
        self.applies_deadline = None;
        for (_, reply) in std::mem::take(&mut self.reads) {
            let _ = reply.send(Err(error.clone()));
        }
        for (_, reply) in std::mem::take(&mut self.parked_reads).into_values().flatten() {
            let _ = reply.send(Err(error.clone()));
        }
        self.parked_reads_len = 0;
        self.parked_reads_deadline = None;
        for w in std::mem::take(&mut self.memberships) {
            let _ = w.reply.send(Err(RaftError::OutcomeUnknown));
        }
        for t in std::mem::take(&mut self.transfers) {
            let _ = t.reply.send(Err(error.clone()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::ProposalRejection;

    fn config_entry(term: Term, index: Index, membership: Membership) -> Entry {
        Entry { term, index, payload: EntryPayload::Membership(Box::new(membership)) }
    }

    fn joint() -> Membership {
        Membership { outgoing_voters: [1, 2, 3].into(), ..Membership::with_voters([1, 2, 3, 4]) }
    }

    fn view(role: Role, leader: Option<NodeId>, now: Millis) -> NodeView {
        NodeView { id: 1, now, role, leader, transfer: None }
    }

    #[test]
    fn a_voter_change_completes_when_the_configuration_leaving_the_joint_one_is_applied() {
        let mut w = Waiters::default();
        let (reply, mut rx) = oneshot::channel();
        w.add_membership(LogId::new(2, 10), true, reply);
        w.on_applied(&config_entry(2, 10, joint()), Bytes::new());
        assert!(rx.try_recv().is_err(), "the joint configuration alone does not complete it");
        w.on_applied(&Entry { term: 2, index: 11, payload: EntryPayload::Blank }, Bytes::new());
        w.on_applied(&config_entry(2, 12, Membership::with_voters([1, 2, 3, 4])), Bytes::new());
        assert_eq!(rx.try_recv().unwrap(), Ok(Membership::with_voters([1, 2, 3, 4])));
    }

    #[test]
    fn a_change_replaced_by_another_leader_is_dropped_and_one_lost_with_leadership_times_out() {
        let mut w = Waiters::default();
        let (reply, mut dropped) = oneshot::channel();
        w.add_membership(LogId::new(2, 10), true, reply);
        w.on_applied(&Entry { term: 3, index: 10, payload: EntryPayload::Blank }, Bytes::new());
        assert_eq!(dropped.try_recv().unwrap(), Err(RaftError::ProposalDropped));

        let (reply, mut unknown) = oneshot::channel();
        w.add_membership(LogId::new(3, 20), false, reply);
        w.on_step(view(Role::Leader, Some(1), 0), 100);
        w.on_step(view(Role::Follower, None, 50), 100);
        assert_eq!(w.next_deadline(), Some(150));
        w.on_step(view(Role::Follower, Some(2), 149), 100);
        assert!(unknown.try_recv().is_err());
        w.on_step(view(Role::Follower, Some(2), 150), 100);
        assert_eq!(unknown.try_recv().unwrap(), Err(RaftError::OutcomeUnknown));
    }

    #[test]
    fn proposals_placed_at_one_index_are_decided_by_the_entry_applied_there() {
        // The first proposal may still commit (its entry can survive on another node and be
        // committed by a later leader): nothing is decided before the index is applied.
        for applied_term in [2, 3] {
            let mut w = Waiters::default();
            let (first, mut first_rx) = oneshot::channel();
            let (second, mut second_rx) = oneshot::channel();
            w.add_proposal(1, first);
            w.add_proposal(2, second);
            w.on_proposal_outcome(ProposalOutcome { id: 1, result: Ok(LogId::new(2, 5)) }, 0, 1_000);
            w.on_proposal_outcome(ProposalOutcome { id: 2, result: Ok(LogId::new(3, 5)) }, 0, 1_000);
            assert!(first_rx.try_recv().is_err(), "undecided before index 5 is applied");
            let entry = Entry { term: applied_term, index: 5, payload: EntryPayload::Blank };
            w.on_applied(&entry, Bytes::from_static(b"ok"));
            let (first, second) = (first_rx.try_recv().unwrap(), second_rx.try_recv().unwrap());
            let (winner, loser) = if applied_term == 2 { (first, second) } else { (second, first) };
            assert_eq!(winner.unwrap().log_id, LogId::new(applied_term, 5));
            assert_eq!(loser, Err(RaftError::ProposalDropped));
        }
    }

    #[test]
    fn stopping_answers_proposals_unknown_and_reads_with_the_error() {
        let mut w = Waiters::default();
        let (forwarded, mut forwarded_rx) = oneshot::channel();
        let (placed, mut placed_rx) = oneshot::channel();
        let (read, mut read_rx) = oneshot::channel();
        w.add_proposal(1, forwarded);
        w.add_proposal(2, placed);
        w.on_proposal_outcome(ProposalOutcome { id: 2, result: Ok(LogId::new(2, 5)) }, 0, 1_000);
        w.add_read(3, read);
        let (change, mut change_rx) = oneshot::channel();
        w.add_membership(LogId::new(2, 6), true, change);
        w.fail_all(&RaftError::Storage(crate::StorageError::Io("disk gone".into())));
        assert_eq!(forwarded_rx.try_recv().unwrap(), Err(RaftError::OutcomeUnknown));
        assert_eq!(placed_rx.try_recv().unwrap(), Err(RaftError::OutcomeUnknown));
        assert_eq!(change_rx.try_recv().unwrap(), Err(RaftError::OutcomeUnknown));
        assert!(matches!(read_rx.try_recv().unwrap(), Err(RaftError::Storage(_))));
    }

    #[test]
    fn a_placed_proposal_never_applied_is_unknown_at_its_deadline_and_a_lost_forward_answer_too() {
        let mut w = Waiters::default();
        let (placed, mut placed_rx) = oneshot::channel();
        let (forwarded, mut forwarded_rx) = oneshot::channel();
        w.add_proposal(1, placed);
        w.add_proposal(2, forwarded);
        w.on_proposal_outcome(ProposalOutcome { id: 1, result: Ok(LogId::new(2, 5)) }, 0, 500);
        let timeout = ProposalOutcome { id: 2, result: Err(ProposalRejection::ForwardTimeout) };
        w.on_proposal_outcome(timeout, 0, 500);
        assert_eq!(forwarded_rx.try_recv().unwrap(), Err(RaftError::OutcomeUnknown));
        // A refusal may answer another delivery of the forward than the one appended.
        let (refused, mut refused_rx) = oneshot::channel();
        w.add_proposal(3, refused);
        let refusal = ProposalRejection::ForwardRefused { leader_hint: Some(2) };
        w.on_proposal_outcome(ProposalOutcome { id: 3, result: Err(refusal) }, 0, 500);
        assert_eq!(refused_rx.try_recv().unwrap(), Err(RaftError::OutcomeUnknown));
        assert_eq!(w.next_deadline(), Some(500));
        w.on_step(view(Role::Follower, None, 499), 100);
        assert!(placed_rx.try_recv().is_err());
        w.on_step(view(Role::Follower, None, 500), 100);
        assert_eq!(placed_rx.try_recv().unwrap(), Err(RaftError::OutcomeUnknown));
        assert_eq!(w.next_deadline(), None);
    }

    #[test]
    fn a_parked_read_times_out_if_the_state_machine_never_catches_up() {
        let mut w = Waiters::default();
        let (read, mut rx) = oneshot::channel();
        w.add_read(1, read);
        w.on_read_outcome(ReadOutcome { id: 1, result: Ok(9) }, 3, 100);
        assert_eq!(w.next_deadline(), Some(100));
        w.on_step(view(Role::Follower, Some(2), 99), 1_000);
        assert!(rx.try_recv().is_err());
        w.on_step(view(Role::Follower, Some(2), 100), 1_000);
        assert_eq!(rx.try_recv().unwrap(), Err(RaftError::Rejected(ProposalRejection::Timeout)));
        assert_eq!(w.pending_reads(), 0);
        assert_eq!(w.next_deadline(), None);
    }

    #[test]
    fn a_snapshot_answers_covered_proposals_unknown_and_serves_covered_reads() {
        let mut w = Waiters::default();
        let (covered, mut covered_rx) = oneshot::channel();
        let (later, mut later_rx) = oneshot::channel();
        w.add_proposal(1, covered);
        w.add_proposal(2, later);
        w.on_proposal_outcome(ProposalOutcome { id: 1, result: Ok(LogId::new(2, 5)) }, 0, 1_000);
        w.on_proposal_outcome(ProposalOutcome { id: 2, result: Ok(LogId::new(2, 9)) }, 0, 1_000);
        let (read, mut read_rx) = oneshot::channel();
        w.add_read(1, read);
        w.on_read_outcome(ReadOutcome { id: 1, result: Ok(7) }, 0, 1_000);
        assert_eq!(w.pending_reads(), 1);
        w.on_snapshot_installed(LogId::new(2, 8), &Membership::with_voters([1]));
        assert_eq!(covered_rx.try_recv().unwrap(), Err(RaftError::OutcomeUnknown));
        assert!(later_rx.try_recv().is_err(), "index 9 is applied from the log later");
        assert_eq!(read_rx.try_recv().unwrap(), Ok(7));
        assert_eq!(w.pending_reads(), 0);
    }

    #[test]
    fn reads_wait_until_their_index_is_applied() {
        let mut w = Waiters::default();
        let (refused, mut refused_rx) = oneshot::channel();
        w.add_read(1, refused);
        w.on_read_outcome(ReadOutcome { id: 1, result: Err(ProposalRejection::Busy) }, 0, 1_000);
        assert_eq!(refused_rx.try_recv().unwrap(), Err(RaftError::Rejected(ProposalRejection::Busy)));
        let (read, mut rx) = oneshot::channel();
        w.add_read(2, read);
        w.on_read_outcome(ReadOutcome { id: 2, result: Ok(4) }, 3, 1_000);
        w.release_reads(3);
        assert!(rx.try_recv().is_err());
        w.release_reads(4);
        assert_eq!(rx.try_recv().unwrap(), Ok(4));
    }

    #[test]
    fn a_transfer_succeeds_when_another_node_leads_and_fails_when_abandoned() {
        let mut w = Waiters::default();
        let (reply, mut rx) = oneshot::channel();
        w.add_transfer(2, 1_000, reply);
        w.on_step(NodeView { transfer: Some(2), ..view(Role::Leader, Some(1), 10) }, 100);
        w.on_step(view(Role::Follower, None, 20), 100);
        assert!(rx.try_recv().is_err(), "stepped down, no leader known yet");
        w.on_step(view(Role::Follower, Some(3), 30), 100);
        assert_eq!(rx.try_recv().unwrap(), Ok(3));

        let (reply, mut rx) = oneshot::channel();
        w.add_transfer(2, 1_000, reply);
        w.on_step(view(Role::Leader, Some(1), 40), 100);
        assert_eq!(rx.try_recv().unwrap(), Err(RaftError::Transfer(TransferError::TimedOut(2))));

        let (reply, mut rx) = oneshot::channel();
        w.add_transfer(2, 1_000, reply);
        w.on_step(view(Role::Candidate, None, 1_000), 100);
        assert_eq!(rx.try_recv().unwrap(), Err(RaftError::Transfer(TransferError::TimedOut(2))));
        let (reply, mut rx) = oneshot::channel();
        w.add_transfer(2, 1_000, reply);
        w.fail_all(&RaftError::AlreadyShutdown);
        assert_eq!(rx.try_recv().unwrap(), Err(RaftError::AlreadyShutdown));
    }
}
