//! Membership changes (learners, joint consensus) and leadership transfer.
//!
//! A change is one configuration entry in the log, which takes effect on each node when it is
//! appended. Voter changes go through the joint configuration C_old,new (every decision needs
//! a majority of both voter sets); once it commits, the leader appends C_new; a leader that is
//! not in C_new steps down when C_new commits. One change at a time: a new change is refused
//! while the latest configuration is joint or uncommitted.
//!
//! Leadership transfer (dissertation §3.10): the leader refuses proposals, brings the target
//! up to date, then sends it `TimeoutNow`; the target campaigns at once, and voters answer it
//! even within their leader lease. After an election timeout without success the transfer is
//! abandoned and proposals are accepted again.

use super::{Progress, ProposalRejection, Raft, TransferError};
use crate::membership::{Membership, MembershipChange};
use crate::message::Payload;
use crate::types::{Entry, EntryPayload, Index, LogId, Millis, NodeId, Role};

/// A leadership transfer in progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Transfer {
    /// The node that should take over.
    pub(crate) target: NodeId,
    /// When the transfer is abandoned.
    pub(crate) deadline: Millis,
    /// `TimeoutNow` was sent.
    pub(crate) timeout_now_sent: bool,
}

impl Raft {
    /// Proposes a membership change on the leader. Returns where its first configuration entry
    /// was appended (C_old,new for a voter change; the leader appends C_new on its own once that
    /// commits).
    ///
    /// The change is refused unless every node it makes a voter has caught up with the commit
    /// index and answers the leader ([`ProposalRejection::NotCaughtUp`]), and a majority of
    /// the new voters do ([`ProposalRejection::NoLiveQuorum`]): an operator's mistake must not
    /// leave the cluster without an electable majority. `force` skips these two checks (for
    /// replacing nodes that are gone for good).
    pub fn propose_membership_change(
        &mut self,
        now: Millis,
        change: &MembershipChange,
        force: bool,
    ) -> Result<LogId, ProposalRejection> {
        debug_assert!(!self.awaiting_advance, "call between take_ready and advance");
        self.now = self.now.max(now);
        if self.role != Role::Leader {
            return Err(ProposalRejection::NotLeader { leader_hint: self.leader });
        }
        if self.transfer.is_some() {
            return Err(ProposalRejection::LeadershipTransferInProgress);
        }
        // Until the leader has committed an entry of its term it may hold an uncommitted
        // configuration of an earlier leader; one change at a time.
        if self.membership.is_joint() || self.latest_config_index() > self.log.committed {
            return Err(ProposalRejection::MembershipChangeInProgress);
        }
        if !self.committed_in_current_term() {
            return Err(ProposalRejection::MembershipChangeInProgress);
        }
        let target = self.membership.target(change).map_err(ProposalRejection::InvalidMembershipChange)?;
        if !force {
            self.check_live_quorum(&target)?;
        }
        let next = self.membership.transition_to(&target);
        Ok(self.append_config(next))
    }

    /// Whether `id` answered within an election timeout and is caught up with the commit index,
    /// give or take one AppendEntries batch (a healthy follower under load trails by that much).
    fn caught_up_and_answering(&self, id: NodeId) -> bool {
        if id == self.id {
            return true;
        }
        let recent = |t: Millis| self.now.saturating_sub(t) < self.config.election_timeout_min_ms;
        let slack = self.config.max_entries_per_append.max(1) as Index;
        self.progress.get(&id).is_some_and(|p| {
            p.match_index.saturating_add(slack) >= self.log.committed && p.last_contact.is_some_and(recent)
        })
    }

    /// The safety checks of a non-forced change to `target`.
    fn check_live_quorum(&self, target: &Membership) -> Result<(), ProposalRejection> {
        for id in target.voters.iter().filter(|id| !self.membership.voters.contains(id)) {
            if !self.caught_up_and_answering(*id) {
                return Err(ProposalRejection::NotCaughtUp { node: *id });
            }
        }
        let live = target.voters.iter().filter(|id| self.caught_up_and_answering(**id)).count();
        if live <= target.voters.len() / 2 {
            return Err(ProposalRejection::NoLiveQuorum { live, voters: target.voters.len() });
        }
        Ok(())
    }

    fn append_config(&mut self, membership: Membership) -> LogId {
        let log_id = LogId::new(self.term(), self.log.last_index() + 1);
        tracing::info!(node = self.id, at = %log_id, ?membership, "appending configuration");
        self.append_local(Entry {
            term: log_id.term,
            index: log_id.index,
            payload: EntryPayload::Membership(Box::new(membership)),
        });
        log_id
    }

    /// The index of the latest configuration entry (or of the snapshot that carries it).
    pub(super) fn latest_config_index(&self) -> Index {
        self.configs.keys().next_back().copied().unwrap_or(0)
    }

    /// The membership in force at `index` (the latest configuration at or before it).
    pub fn membership_at(&self, index: Index) -> Membership {
        self.configs.range(..=index).next_back().map(|(_, m)| m.clone()).unwrap_or_default()
    }

    /// The configurations changed (appended, truncated, installed): update what depends on them.
    pub(super) fn on_membership_changed(&mut self) {
        self.membership = self.configs.values().next_back().cloned().unwrap_or_default();
        if self.role != Role::Leader {
            return;
        }
        let members = self.membership.members();
        self.progress.retain(|id, _| members.contains(id));
        let next = self.log.last_index() + 1;
        for id in members {
            if id != self.id {
                self.progress.entry(id).or_insert_with(|| Progress::new(next));
            }
        }
        if let Some(t) = self.transfer {
            if !self.membership.voters.contains(&t.target) {
                tracing::info!(
                    node = self.id,
                    target = t.target,
                    "transfer target left the voters; transfer abandoned"
                );
                self.transfer = None;
            }
        }
    }

    /// The leader's commit index advanced.
    pub(super) fn on_leader_commit(&mut self) {
        self.on_commit_for_reads();
        if self.latest_config_index() > self.log.committed {
            return;
        }
        if self.membership.is_joint() {
            // C_old,new is committed: move on to C_new.
            let next = self.membership.leave_joint();
            self.append_config(next);
        } else if !self.membership.is_voter(self.id) {
            // C_new without this leader is committed: hand over to the most caught-up voter.
            tracing::info!(node = self.id, term = self.term(), "removed from the voters; stepping down");
            let last = self.log.last_index();
            let successor = self
                .progress
                .iter()
                .filter(|(id, p)| self.membership.voters.contains(id) && p.match_index == last)
                .map(|(id, _)| *id)
                .next();
            if let Some(to) = successor {
                let term = self.term();
                self.send(to, term, Payload::TimeoutNow);
                self.lease_revoked = true;
            }
            let term = self.term();
            self.become_follower(term, None);
        }
    }

    /// Starts handing leadership to `to`, or, when `None`, to the most caught-up voter among
    /// those that answered within an election timeout (a stopped follower can hold as much
    /// of the log as a live one; handing over to it only costs a failed transfer and then an
    /// election). Returns the target. Proposals are refused until the transfer completes or is abandoned (after
    /// `election_timeout_max_ms`); watch [`status`](Raft::status) to see which happened.
    pub fn transfer_leadership(&mut self, now: Millis, to: Option<NodeId>) -> Result<NodeId, TransferError> {
        debug_assert!(!self.awaiting_advance, "call between take_ready and advance");
        self.now = self.now.max(now);
        if self.role != Role::Leader {
            return Err(TransferError::NotLeader { leader_hint: self.leader });
        }
        if let Some(t) = self.transfer {
            return Err(TransferError::InProgress(t.target));
        }
        let target = match to {
            Some(id) if id == self.id => return Ok(id),
            Some(id) if !self.membership.voters.contains(&id) => return Err(TransferError::NotAVoter(id)),
            Some(id) => id,
            None => {
                let answering = |t: Millis| self.now.saturating_sub(t) < self.config.election_timeout_min_ms;
                self.progress
                    .iter()
                    .filter(|(id, p)| {
                        self.membership.voters.contains(id) && p.last_contact.is_some_and(answering)
                    })
                    .max_by_key(|(id, p)| (p.match_index, std::cmp::Reverse(**id)))
                    .map(|(id, _)| *id)
                    .ok_or(TransferError::NoCandidate)?
            }
        };
        tracing::info!(node = self.id, target, "leadership transfer started");
        self.transfer = Some(Transfer {
            target,
            deadline: self.now + self.config.election_timeout_max_ms,
            timeout_now_sent: false,
        });
        self.maybe_send_timeout_now();
        Ok(target)
    }

    /// Sends `TimeoutNow` once the transfer target holds the whole log.
    pub(super) fn maybe_send_timeout_now(&mut self) {
        let Some(t) = self.transfer else { return };
        if t.timeout_now_sent {
            return;
        }
        let caught_up = self.progress.get(&t.target).is_some_and(|p| p.match_index >= self.log.last_index());
        if caught_up && self.log.persisted >= self.log.last_index() {
            let term = self.term();
            self.send(t.target, term, Payload::TimeoutNow);
            self.transfer = Some(Transfer { timeout_now_sent: true, ..t });
            self.lease_revoked = true;
        }
    }

    pub(super) fn expire_transfer(&mut self) {
        if let Some(t) = self.transfer {
            if self.now >= t.deadline {
                tracing::info!(node = self.id, target = t.target, "leadership transfer timed out; abandoned");
                self.transfer = None;
            }
        }
    }

    pub(super) fn handle_timeout_now(&mut self, from: NodeId) {
        // A node recovering lost data ignores it: voters take a transfer's term even under
        // their lease, so the leader would be deposed for an election this node may not win
        // (its own vote does not vouch for its log; found by review: the leader still counted
        // the match index from before the loss).
        if self.role != Role::Follower
            || self.leader != Some(from)
            || !self.may_campaign()
            || self.recovering_to.is_some()
        {
            tracing::debug!(node = self.id, from, "ignoring TimeoutNow");
            return;
        }
        tracing::info!(node = self.id, from, "leadership handed over; campaigning now");
        self.become_candidate(true);
    }
}
