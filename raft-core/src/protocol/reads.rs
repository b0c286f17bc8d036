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
        let deadline = self.now + self.config.rpc_timeout_ms;
        if self.role == Role::Leader {
            self.leader_read(ReadOrigin::Local(id), mode, deadline);
            return;
        }
        if self.leader.is_none() {
            let result = Err(ProposalRejection::NotLeader { leader_hint: None });
            self.out.reads.push(ReadOutcome { id, result });
            return;
        }
        if self.remote_reads.reads.len() >= self.config.max_pending_reads {
            self.out.reads.push(ReadOutcome { id, result: Err(ProposalRejection::Busy) });
            return;
        }
        // Asked of the leader by `send_remote_reads` at the end of the step.
        let seq = self.remote_reads.next_seq;
        self.remote_reads.next_seq += 1;
        self.remote_reads.reads.push_back(RemoteRead { seq, id, deadline });
    }

    /// Asks the leader to confirm the forwarded reads: one request confirms every read that
    /// arrived before it was sent, so while the latest request to the leader is less than a
    /// heartbeat interval old, reads that arrive wait for its answer and then share one
    /// request (a follower sends about one per round trip however many reads arrive, as the
    /// leader sends one heartbeat round).
    ///
    /// A request unanswered for a heartbeat interval, or sent to a node that is no longer the
    /// leader this follower knows, is followed by a new one covering every read not answered
    /// yet. The older requests stay out: an answer to any of them still confirms the reads it
    /// covered (a slow leader answers every request late, and each answer counts). A node that
    /// became leader confirms the reads itself, each by its own deadline.
    pub(super) fn send_remote_reads(&mut self) {
        let Some(newest) = self.remote_reads.reads.back().map(|r| (r.seq, r.id)) else { return };
        if self.role == Role::Leader {
            self.remote_reads.requests.clear();
            let now = self.now;
            for read in std::mem::take(&mut self.remote_reads.reads) {
                if read.deadline <= now {
                    let result = Err(ProposalRejection::ForwardTimeout);
                    self.out.reads.push(ReadOutcome { id: read.id, result });
                } else {
                    self.leader_read(ReadOrigin::Local(read.id), ReadMode::ReadIndex, read.deadline);
                }
            }
            return;
        }
        let Some(leader) = self.leader else { return };
        let interval = self.config.heartbeat_interval_ms;
        if let Some(latest) = self.remote_reads.requests.back() {
            if latest.to == leader && self.now < latest.sent_at.saturating_add(interval) {
                return;
            }
        }
        // Named after the newest read it covers: an answer to any request of that name
        // confirms a request sent after that read arrived, so after every read it covers.
        let (upto, id) = newest;
        let requests = &mut self.remote_reads.requests;
        let full = requests.len() >= REQUESTS_OUT_MAX;
        match requests.back_mut() {
            // The same reads, asked again (of a new leader, or after a heartbeat interval).
            Some(latest) if latest.upto == upto => {
                latest.to = leader;
                latest.sent_at = self.now;
            }
            // As many requests out as kept: the newest is replaced, so that the older ones
            // still count when their answers come (dropping the oldest instead starved every
            // read behind a leader slower than that many heartbeat intervals).
            Some(latest) if full => {
                *latest = ReadRequest { id, to: leader, sent_at: self.now, upto };
            }
            _ => requests.push_back(ReadRequest { id, to: leader, sent_at: self.now, upto }),
        }
        let term = self.term();
        self.send(leader, term, Payload::ReadIndexRequest { id });
    }

    /// Whether the leader has committed an entry of its own term (before that, its commit
    /// index may lag behind writes acknowledged by the previous leader).
    pub(super) fn committed_in_current_term(&self) -> bool {
        self.log.term_at(self.log.committed) == Some(self.term())
    }

    fn leader_read(&mut self, origin: ReadOrigin, mode: ReadMode, deadline: Millis) {
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
        self.round_sent_at(seq).is_some_and(|sent| self.now < sent + lease)
    }

    /// When heartbeat round `seq` was sent, if it is among the rounds remembered. Their
    /// numbers are consecutive (each round takes the next and is pushed at the back), so the
    /// round is found by its distance from the oldest, with no scan for a `seq` a peer made up.
    pub(super) fn round_sent_at(&self, seq: u64) -> Option<Millis> {
        let oldest = self.read_seq_sent_at.front()?.0;
        let at = usize::try_from(seq.checked_sub(oldest)?).ok()?;
        let (found, sent) = self.read_seq_sent_at.get(at)?;
        debug_assert_eq!(*found, seq, "rounds remembered out of order");
        (*found == seq).then_some(*sent)
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
            let deadline = self.now + self.config.rpc_timeout_ms;
            self.leader_read(ReadOrigin::Remote(from, id), ReadMode::ReadIndex, deadline);
        } else {
            let term = self.term();
            let result = Err(ForwardRejection::NotLeader { leader_hint: self.leader });
            self.send(from, term, Payload::ReadIndexResponse { id, result });
        }
    }

    pub(super) fn handle_read_index_response(
        &mut self,
        from: NodeId,
        id: ReadId,
        result: Result<Index, ForwardRejection>,
    ) {
        // A request replaced, or an answer from before a restart: nothing to do.
        let Some(request) = self.remote_reads.requests.iter().find(|r| r.id == id) else { return };
        // A refusal from a node the request has since been asked again of another (a deposed
        // leader's `NotLeader`) does not fail reads the new leader may confirm; a
        // confirmation counts from whoever sends it (it took a quorum round).
        if result.is_err() && request.to != from {
            return;
        }
        let upto = request.upto;
        let requests = &mut self.remote_reads.requests;
        while requests.front().is_some_and(|r| r.upto <= upto) {
            requests.pop_front();
        }
        let result = result.map_err(ProposalRejection::from);
        while self.remote_reads.reads.front().is_some_and(|r| r.seq <= upto) {
            if let Some(read) = self.remote_reads.reads.pop_front() {
                self.out.reads.push(ReadOutcome { id: read.id, result });
            }
        }
    }

    /// Fails the forwarded reads whose deadline passed (they arrived in deadline order).
    pub(super) fn expire_remote_reads(&mut self) {
        let now = self.now;
        while self.remote_reads.reads.front().is_some_and(|r| r.deadline <= now) {
            if let Some(read) = self.remote_reads.reads.pop_front() {
                let result = Err(ProposalRejection::ForwardTimeout);
                self.out.reads.push(ReadOutcome { id: read.id, result });
            }
        }
        // Requests whose reads are all settled.
        let oldest = self.remote_reads.reads.front().map_or(u64::MAX, |r| r.seq);
        let requests = &mut self.remote_reads.requests;
        while requests.front().is_some_and(|r| r.upto < oldest) {
            requests.pop_front();
        }
    }

    /// When the forwarded reads next need a tick: the oldest read's deadline, or the time at
    /// which the latest request is followed by a new one.
    pub(super) fn next_remote_read_deadline(&self) -> Option<Millis> {
        let oldest = self.remote_reads.reads.front()?.deadline;
        if self.leader.is_none() || self.role == Role::Leader {
            return Some(oldest); // nobody to ask: the reads wait for a leader or their deadline
        }
        let again = self
            .remote_reads
            .requests
            .back()
            .map_or(oldest, |latest| latest.sent_at.saturating_add(self.config.heartbeat_interval_ms));
        Some(oldest.min(again))
    }
}

/// Most requests a follower keeps out for its forwarded reads; at the limit, the newest is
/// replaced by the next.
const REQUESTS_OUT_MAX: usize = 8;

/// The reads a follower forwards to the leader.
#[derive(Debug, Default)]
pub(crate) struct RemoteReads {
    /// The reads not answered yet, in arrival (so deadline) order.
    reads: VecDeque<RemoteRead>,
    /// The requests out, oldest first (their `upto` never goes down).
    requests: VecDeque<ReadRequest>,
    /// The number of the next read to arrive.
    next_seq: u64,
}

/// A read forwarded to the leader.
#[derive(Debug)]
struct RemoteRead {
    /// Its number in arrival order on this node.
    seq: u64,
    id: ReadId,
    deadline: Millis,
}

/// A `ReadIndexRequest` out: its answer confirms the reads numbered up to `upto`, which all
/// arrived before it was sent.
#[derive(Debug)]
struct ReadRequest {
    /// The request's id: the id of read `upto`.
    id: ReadId,
    /// The leader it was sent to.
    to: NodeId,
    sent_at: Millis,
    upto: u64,
}
