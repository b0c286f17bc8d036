//! Linearizable reads: ReadIndex and leases (Raft dissertation §6.4).
//!
//! ReadIndex: the leader records its commit index when the read arrives (or, before it has
//! committed an entry of its term, the commit index once it has), starts a heartbeat round,
//! and answers once a quorum has answered that round or a later one: no other leader can
//! have been elected before the round was sent, so the recorded index covers every write
//! acknowledged before the read began. The caller then waits until its state machine has
//! applied that index. A follower asks the leader for the index and waits the same way.
//!
//! Lease: while a quorum answered a round sent less than [`Config::lease_ms`] ago, no voter
//! of that quorum grants a vote to anyone else (check-quorum's vote lease), so the leader
//! answers at once. Off unless [`Config::lease_read`] is set; see its clock assumptions.
//!
//! [`Config::lease_ms`]: crate::Config::lease_ms
//! [`Config::lease_read`]: crate::Config::lease_read

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use super::{ProposalRejection, Raft, ReadOutcome};
use crate::message::{ForwardRejection, Payload, ReadId};
use crate::types::{Index, Millis, NodeId, Role};

/// How many recent heartbeat rounds the leader remembers the send time of (for leases).
pub(crate) const ROUNDS_REMEMBERED: usize = 256;

/// How a linearizable read is confirmed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum ReadMode {
    /// A heartbeat round confirms the leader (one round trip to a quorum).
    #[default]
    ReadIndex,
    /// Answer at once while the leader's lease holds (falls back to ReadIndex when it does not,
    /// or when `lease_read` is off).
    Lease,
}

/// Who asked for a read the leader is confirming.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ReadOrigin {
    /// A read made on this node.
    Local(ReadId),
    /// A read a follower asked for.
    Remote(NodeId, ReadId),
}

/// A read waiting for the leader's heartbeat round.
#[derive(Debug, Clone)]
pub(crate) struct PendingRead {
    origin: ReadOrigin,
    /// The round whose quorum answer confirms the read.
    required_seq: u64,
    /// The read index; `None` until the leader committed an entry of its term.
    index: Option<Index>,
    /// When the read fails with `Timeout` if still unconfirmed.
    deadline: Millis,
}

impl Raft {
    pub(super) fn read(&mut self, id: ReadId, mode: ReadMode) {
        if self.role == Role::Leader {
            self.leader_read(ReadOrigin::Local(id), mode);
            return;
        }
        if self.leader.is_none() {
            let result = Err(ProposalRejection::NotLeader { leader_hint: None });
            self.out.reads.push(ReadOutcome { id, result });
            return;
        }
        if self.remote_reads.len() >= self.config.max_pending_reads {
            self.out.reads.push(ReadOutcome { id, result: Err(ProposalRejection::Busy) });
            return;
        }
        // Sent by `send_remote_reads` at the end of the step: at once if no request is out.
        self.remote_reads.waiting.push_back((id, self.now + self.config.rpc_timeout_ms));
    }

    /// Asks the leader to confirm the waiting reads, unless a request is out already: one
    /// request confirms every read that arrived before it was sent, so a follower sends one per
    /// round trip however many reads arrive (as the leader sends one heartbeat round).
    ///
    /// A request out for a heartbeat interval, or sent to a node that is no longer the leader
    /// this follower knows, is given up for a new one that covers its reads as well (an answer
    /// to a later request confirms earlier reads too). A node that became leader confirms the
    /// reads itself.
    pub(super) fn send_remote_reads(&mut self) {
        if let Some(out) = &self.remote_reads.out {
            let stale = self.now >= out.sent_at.saturating_add(self.config.heartbeat_interval_ms)
                || self.leader != Some(out.to);
            if !stale {
                return;
            }
            if let Some(out) = self.remote_reads.out.take() {
                for read in out.reads.into_iter().rev() {
                    self.remote_reads.waiting.push_front(read);
                }
            }
        }
        if self.remote_reads.waiting.is_empty() {
            return;
        }
        if self.role == Role::Leader {
            for (id, _) in std::mem::take(&mut self.remote_reads.waiting) {
                self.leader_read(ReadOrigin::Local(id), ReadMode::ReadIndex);
            }
            return;
        }
        let Some(leader) = self.leader else { return };
        let reads: Vec<(ReadId, Millis)> = self.remote_reads.waiting.drain(..).collect();
        // The newest read's id: an answer to any request of that id confirms a request sent
        // after that read arrived, so after every read this one covers (a request given up
        // and sent again with no new read keeps its id, and an answer to either will do).
        let Some(&(id, _)) = reads.last() else { return };
        self.remote_reads.out = Some(ReadRequest { id, to: leader, sent_at: self.now, reads });
        let term = self.term();
        self.send(leader, term, Payload::ReadIndexRequest { id });
    }

    /// Whether the leader has committed an entry of its own term (before that, its commit
    /// index may lag behind writes acknowledged by the previous leader).
    pub(super) fn committed_in_current_term(&self) -> bool {
        self.log.term_at(self.log.committed) == Some(self.term())
    }

    fn leader_read(&mut self, origin: ReadOrigin, mode: ReadMode) {
        if self.pending_reads.len() >= self.config.max_pending_reads {
            self.finish_read(origin, Err(ProposalRejection::Busy));
            return;
        }
        let ready = self.committed_in_current_term();
        if mode == ReadMode::Lease && self.config.lease_read && ready && self.lease_valid() {
            let index = self.log.committed;
            self.last_lease_read = Some(self.now);
            self.finish_read(origin, Ok(index));
            return;
        }
        let index = ready.then_some(self.log.committed);
        let deadline = self.now + self.config.rpc_timeout_ms;
        self.pending_reads.push_back(PendingRead {
            origin,
            required_seq: self.read_seq + 1,
            index,
            deadline,
        });
        if self.progress.is_empty() {
            // No one else to ask: the round is this node's own.
            self.read_seq += 1;
            self.read_seq_sent_at.push_back((self.read_seq, self.now));
            self.advance_reads();
        } else {
            self.read_round_needed = true;
        }
    }

    /// Whether the leader's lease holds now: a quorum answered a round sent less than the
    /// lease ago, and no leadership transfer is under way (the transfer target may be elected
    /// at any moment).
    pub fn lease_valid(&self) -> bool {
        if self.role != Role::Leader
            || self.transfer.is_some()
            || self.lease_revoked
            || !self.config.check_quorum
        {
            return false;
        }
        let seq = self.quorum_read_seq();
        let lease = self.config.lease_ms();
        self.read_seq_sent_at.iter().find(|(s, _)| *s == seq).is_some_and(|(_, sent)| self.now < sent + lease)
    }

    /// Whether reads wait for a round and no earlier round is still waiting for its quorum.
    ///
    /// One round at a time: the reads that arrive while a round is out wait for the next one,
    /// sent as soon as a quorum answered (or by the heartbeat timer, if the round was lost).
    /// Under load one round confirms every read of a round trip instead of one round per
    /// turn of the driver, which cost the followers nearly as much CPU as the leader spent
    /// serving the reads.
    pub(super) fn read_round_due(&self) -> bool {
        self.read_round_needed && (self.progress.is_empty() || self.quorum_read_seq() >= self.read_seq)
    }

    /// The highest round a quorum has answered (the leader answers its own rounds).
    fn quorum_read_seq(&self) -> u64 {
        let id = self.id;
        let own = self.read_seq;
        let progress = &self.progress;
        self.membership.quorum_index(|n| {
            if n == id {
                own
            } else {
                progress.get(&n).map_or(0, |p| p.acked_read_seq)
            }
        })
    }

    /// Answers every pending read whose round a quorum confirmed.
    pub(super) fn advance_reads(&mut self) {
        if self.role != Role::Leader || self.pending_reads.is_empty() {
            return;
        }
        let confirmed = self.quorum_read_seq();
        while let Some(front) = self.pending_reads.front() {
            let Some(index) = front.index else { break };
            if front.required_seq > confirmed {
                break;
            }
            let origin = front.origin;
            self.pending_reads.pop_front();
            self.finish_read(origin, Ok(index));
        }
    }

    /// The leader's commit index advanced: reads that waited for the first commit of the term
    /// get it as their index.
    pub(super) fn on_commit_for_reads(&mut self) {
        if !self.committed_in_current_term() {
            return;
        }
        let committed = self.log.committed;
        for read in self.pending_reads.iter_mut() {
            read.index.get_or_insert(committed);
        }
        self.advance_reads();
    }

    fn finish_read(&mut self, origin: ReadOrigin, result: Result<Index, ProposalRejection>) {
        match origin {
            ReadOrigin::Local(id) => self.out.reads.push(ReadOutcome { id, result }),
            ReadOrigin::Remote(node, id) => {
                let result = result.map_err(|e| match e {
                    ProposalRejection::NotLeader { leader_hint } => {
                        ForwardRejection::NotLeader { leader_hint }
                    }
                    _ => ForwardRejection::Busy,
                });
                let term = self.term();
                self.send(node, term, Payload::ReadIndexResponse { id, result });
            }
        }
    }

    /// When the oldest pending read times out (reads are queued in deadline order).
    pub(super) fn next_read_deadline(&self) -> Option<Millis> {
        self.pending_reads.front().map(|r| r.deadline)
    }

    /// Fails the reads the leader could not confirm in time.
    pub(super) fn expire_pending_reads(&mut self) {
        while self.pending_reads.front().is_some_and(|r| r.deadline <= self.now) {
            if let Some(read) = self.pending_reads.pop_front() {
                self.finish_read(read.origin, Err(ProposalRejection::Timeout));
            }
        }
    }

    /// The leader steps down: every read it was confirming fails.
    pub(super) fn fail_pending_reads(&mut self, leader_hint: Option<NodeId>) {
        self.read_round_needed = false;
        for read in std::mem::take(&mut self.pending_reads) {
            self.finish_read(read.origin, Err(ProposalRejection::NotLeader { leader_hint }));
        }
    }

    pub(super) fn handle_read_index_request(&mut self, from: NodeId, id: ReadId) {
        if self.role == Role::Leader {
            self.leader_read(ReadOrigin::Remote(from, id), ReadMode::ReadIndex);
        } else {
            let term = self.term();
            let result = Err(ForwardRejection::NotLeader { leader_hint: self.leader });
            self.send(from, term, Payload::ReadIndexResponse { id, result });
        }
    }

    pub(super) fn handle_read_index_response(&mut self, id: ReadId, result: Result<Index, ForwardRejection>) {
        if self.remote_reads.out.as_ref().is_none_or(|out| out.id != id) {
            return; // a request given up for a later one, or an answer from before a restart
        }
        let Some(out) = self.remote_reads.out.take() else { return };
        let result = result.map_err(ProposalRejection::from);
        for (read, _) in out.reads {
            self.out.reads.push(ReadOutcome { id: read, result });
        }
    }

    /// Fails the forwarded reads whose deadline passed.
    pub(super) fn expire_remote_reads(&mut self) {
        let now = self.now;
        let mut expired = Vec::new();
        if let Some(out) = self.remote_reads.out.as_mut() {
            out.reads.retain(|&(id, deadline)| {
                let keep = deadline > now;
                if !keep {
                    expired.push(id);
                }
                keep
            });
            if out.reads.is_empty() {
                self.remote_reads.out = None;
            }
        }
        while self.remote_reads.waiting.front().is_some_and(|&(_, deadline)| deadline <= now) {
            if let Some((id, _)) = self.remote_reads.waiting.pop_front() {
                expired.push(id);
            }
        }
        for id in expired {
            self.out.reads.push(ReadOutcome { id, result: Err(ProposalRejection::ForwardTimeout) });
        }
    }

    /// When the forwarded reads next need a tick: the oldest read's deadline, or the time at
    /// which the request out is given up for a new one.
    pub(super) fn next_remote_read_deadline(&self) -> Option<Millis> {
        let waiting = self.remote_reads.waiting.front().map(|&(_, deadline)| deadline);
        let out = self.remote_reads.out.as_ref().map(|out| {
            let oldest = out.reads.first().map_or(Millis::MAX, |&(_, deadline)| deadline);
            oldest.min(out.sent_at.saturating_add(self.config.heartbeat_interval_ms))
        });
        match (waiting, out) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

/// The reads a follower forwards to the leader.
#[derive(Debug, Default)]
pub(crate) struct RemoteReads {
    /// The request out, if any.
    out: Option<ReadRequest>,
    /// Reads that arrived since it was sent, with their deadlines, in arrival order.
    waiting: VecDeque<(ReadId, Millis)>,
}

impl RemoteReads {
    /// Reads forwarded and not answered yet.
    fn len(&self) -> usize {
        self.out.as_ref().map_or(0, |out| out.reads.len()) + self.waiting.len()
    }
}

/// A `ReadIndexRequest` out: its answer confirms `reads`, which all arrived before it was sent.
#[derive(Debug)]
struct ReadRequest {
    /// The request's id: its newest read's id.
    id: ReadId,
    /// The leader it was sent to.
    to: NodeId,
    sent_at: Millis,
    /// The reads it confirms, with their deadlines, in arrival order.
    reads: Vec<(ReadId, Millis)>,
}
