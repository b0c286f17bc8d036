//! The safety properties the simulator checks after every step, each with the rule of the Raft
//! paper it comes from.
//!
//! - **Election safety** (§5.2, Figure 3): at most one leader per term.
//! - **Log matching** (§5.3): two entries with the same index and term have the same command and
//!   the same preceding entry (checked on every append: by induction the logs are identical up
//!   to there).
//! - **Leader completeness** (§5.4): a leader's log holds every committed entry.
//! - **State-machine safety** (§5.4.3): no two nodes apply different entries at one index.
//! - **Durable commitment**: when an entry is first known committed, a majority holds it on
//!   disk (acknowledgements wait for durability; a crash cannot un-commit it).
//! - **Persistent term and vote** (Figure 2, "updated on stable storage before responding"): a
//!   node never restarts with a term below one it sent, nor votes for two candidates in a term.
//! - **Commit and apply order**: commit indexes never go back while a node runs; entries are
//!   applied in order, each once (checked by the simulator).

use std::collections::BTreeMap;

use crate::membership::Membership;
use crate::message::{Message, Payload};
use crate::protocol::{Raft, Ready};
use crate::types::{Entry, EntryPayload, HardState, Index, LogId, NodeId, Role, Term};

use super::disk::Disk;

/// What the simulator remembers of the whole run to check the invariants.
#[derive(Debug, Default)]
pub(crate) struct History {
    /// The leader of each term.
    leaders: BTreeMap<Term, NodeId>,
    /// For each (index, term) ever appended anywhere: the payload and the previous entry's term.
    entries: BTreeMap<LogId, (EntryPayload, Term)>,
    /// Committed entries (index → term, payload, and a term the entry was committed in or
    /// before: the lowest term of a node seen with it in its commit index).
    committed: BTreeMap<Index, (Term, EntryPayload, Term)>,
    /// Highest index each running node has had checked as committed.
    commit_checked: BTreeMap<NodeId, Index>,
    /// Highest term each node put on a message that left it.
    max_sent_term: BTreeMap<NodeId, Term>,
    /// The candidate each node granted its vote to, per term.
    votes: BTreeMap<(NodeId, Term), NodeId>,
    /// The digest of the state machine after applying each index (the first node to get
    /// there sets it; every other node, by applying or by restoring a snapshot, must match).
    fsm_digests: BTreeMap<Index, u64>,
    pending_violation: Option<String>,
    /// Grants sent by recovering voters naming witnesses (for reports).
    pub(crate) witnessed_grants: u64,
}

impl History {
    pub(crate) fn violation(&mut self, what: String) {
        self.pending_violation.get_or_insert(what);
    }

    pub(crate) fn take_violation(&mut self) -> Option<String> {
        self.pending_violation.take()
    }

    /// A node (re)started with `hard_state` from its disk.
    pub(crate) fn on_start(&mut self, id: NodeId, hard_state: HardState) -> Result<(), String> {
        let sent = self.max_sent_term.get(&id).copied().unwrap_or(0);
        if hard_state.current_term < sent {
            return Err(format!(
                "node {id} restarted with term {} but had sent messages in term {sent}: term not persisted before sending",
                hard_state.current_term
            ));
        }
        Ok(())
    }

    /// A node crashed: its commit index starts again from zero.
    pub(crate) fn on_restart(&mut self, id: NodeId) {
        self.commit_checked.remove(&id);
    }

    /// A node produced a [`Ready`]; check the entries it appends (log matching).
    pub(crate) fn on_ready(
        &mut self,
        id: NodeId,
        ready: &Ready,
        raft: Option<&Raft>,
        disk: &Disk,
    ) -> Result<(), String> {
        let Some(raft) = raft else { return Ok(()) };
        for e in &ready.entries {
            let prev_term = if e.index == 1 {
                0
            } else {
                match raft.term_at(e.index - 1) {
                    Some(t) => t,
                    None => disk.get(e.index - 1).map_or(0, |p| p.term),
                }
            };
            match self.entries.get(&e.log_id()) {
                Some((payload, prev)) => {
                    if *payload != e.payload || *prev != prev_term {
                        return Err(format!(
                            "log matching violated on node {id}: entry {} differs from the one another node holds",
                            e.log_id()
                        ));
                    }
                }
                None => {
                    self.entries.insert(e.log_id(), (e.payload.clone(), prev_term));
                }
            }
        }
        for m in &ready.messages {
            self.on_send(m)?;
        }
        Ok(())
    }

    /// A message leaves a node (after its writes, for the persisted ones).
    pub(crate) fn on_send(&mut self, m: &Message) -> Result<(), String> {
        let pre_vote_grant = matches!(
            m.payload,
            Payload::RequestVoteResponse { pre_vote: true, .. } | Payload::RequestVote { pre_vote: true, .. }
        );
        if !pre_vote_grant {
            let t = self.max_sent_term.entry(m.from).or_default();
            *t = (*t).max(m.term);
        }
        if let Payload::RequestVoteResponse { granted: true, witnesses: Some(_), .. } = &m.payload {
            self.witnessed_grants += 1;
        }
        if let Payload::RequestVoteResponse { pre_vote: false, granted: true, .. } = m.payload {
            if let Some(previous) = self.votes.insert((m.from, m.term), m.to) {
                if previous != m.to {
                    return Err(format!(
                        "node {} voted for {previous} and for {} in term {}",
                        m.from, m.to, m.term
                    ));
                }
            }
        }
        Ok(())
    }

    /// A node applies `entry`; `disks` are every node's disk (by id - 1), `memberships` the
    /// configurations in force on the node since the entry was appended (one of them committed
    /// it).
    pub(crate) fn on_apply(
        &mut self,
        id: NodeId,
        entry: &Entry,
        disks: &[&Disk],
        memberships: &[Membership],
    ) -> Result<(), String> {
        // No bound on the term it was committed in here: the cluster checks give one.
        self.record_committed(id, entry.index, entry.term, &entry.payload, Term::MAX, disks, memberships)
    }

    /// A node's state machine reached `index` with `digest` (by applying or restoring).
    pub(crate) fn on_fsm_state(
        &mut self,
        id: NodeId,
        index: Index,
        digest: u64,
        how: &str,
    ) -> Result<(), String> {
        match self.fsm_digests.get(&index) {
            Some(d) if *d != digest => Err(format!(
                "state machine divergence: node {id} {how} index {index} and its state differs from another node's at that index"
            )),
            Some(_) => Ok(()),
            None => {
                self.fsm_digests.insert(index, digest);
                Ok(())
            }
        }
    }

    /// The committed entries `1..=up_to`, as far as the run has seen them.
    pub(crate) fn committed_prefix(&self, up_to: Index) -> Vec<Entry> {
        self.committed
            .range(1..=up_to)
            .map(|(index, (term, payload, _))| Entry { term: *term, index: *index, payload: payload.clone() })
            .collect()
    }

    /// `by`: a term the entry was committed in or before.
    #[allow(clippy::too_many_arguments)]
    fn record_committed(
        &mut self,
        id: NodeId,
        index: Index,
        term: Term,
        payload: &EntryPayload,
        by: Term,
        disks: &[&Disk],
        memberships: &[Membership],
    ) -> Result<(), String> {
        match self.committed.get_mut(&index) {
            Some((t, p, committed_by)) => {
                *committed_by = (*committed_by).min(by);
                if *t != term || p != payload {
                    return Err(format!(
                        "state machine safety violated: node {id} has {index}@{term} committed, but {index}@{t} was committed before"
                    ));
                }
            }
            None => {
                // First time this index is known committed: a quorum of the configuration in
                // force on the node that knows it must hold it durably (or, after a data-loss
                // fault, have it in its durability record).
                let holds =
                    |n: NodeId| disks.get(n as usize - 1).is_some_and(|d| d.holds_or_recorded(index, term));
                if !memberships.iter().any(|m| m.is_quorum(holds)) {
                    let holders: Vec<NodeId> = (1..=disks.len() as NodeId).filter(|n| holds(*n)).collect();
                    return Err(format!(
                        "entry {index}@{term} is committed (seen on node {id}) but only nodes {holders:?} hold it durably; memberships {memberships:?}"
                    ));
                }
                self.committed.insert(index, (term, payload.clone(), by));
            }
        }
        Ok(())
    }

    /// Checks the running nodes after a step.
    pub(crate) fn check_cluster<'a>(
        &mut self,
        nodes: impl Iterator<Item = &'a Raft>,
        disks: &[&Disk],
    ) -> Result<(), String> {
        for raft in nodes {
            let id = raft.id();
            // A node leads for the checks once its term is durable, as the node simulation
            // counts it: a one-voter node elects itself before its term is saved and does
            // nothing as leader until it is (tests/term_durable.rs); a crash before the save
            // loses that term, and another node may then lead it (found by review: seed
            // 73085 of a sweep with unrestricted data loss).
            if raft.role() == Role::Leader && raft.term_durable() {
                let term = raft.term();
                match self.leaders.insert(term, id) {
                    Some(other) if other != id => {
                        return Err(format!(
                            "election safety violated: nodes {other} and {id} both lead term {term}"
                        ));
                    }
                    Some(_) => {}
                    None => {
                        // A new leader: it must hold every entry committed in an earlier term
                        // (leader completeness; entries it compacted are in its snapshot). One
                        // committed in its term or later need not be there: a candidate of an
                        // older term may win late, on votes delayed past a later term's commit
                        // (found by the review harness, seed 1185325), and can commit nothing.
                        let first = raft.first_log_index();
                        let earlier = self.committed.range(first..).filter(|(_, (_, _, by))| *by < term);
                        for (index, (t, _, _)) in earlier {
                            match raft.term_at(*index) {
                                Some(term) if term == *t => {}
                                _ => {
                                    return Err(format!(
                                        "leader completeness violated: node {id}, leader of term {term}, lacks committed entry {index}@{t}"
                                    ))
                                }
                            }
                        }
                    }
                }
            }
            // Entries the node knows committed (it may not have applied them yet).
            let checked = self.commit_checked.get(&id).copied().unwrap_or(0);
            let commit = raft.commit_index();
            if commit > checked {
                let first = raft.first_log_index();
                for index in checked.max(first - 1) + 1..=commit {
                    // An entry out of the log's cache is on the node's disk (it is durable).
                    let disk = disks.get(id as usize - 1).and_then(|d| d.get(index));
                    let held = raft.entry(index).or(disk).filter(|e| raft.term_at(index) == Some(e.term));
                    let Some(e) = held else {
                        return Err(format!("node {id} has commit index {commit} but no entry {index}"));
                    };
                    let (term, payload) = (e.term, e.payload.clone());
                    // Not the latest configuration alone: a leader of one voter commits an entry on
                    // its own write and may append a joint configuration in the same step, before
                    // this check (found by the protocol simulation, seed 1057380).
                    let memberships = memberships_since(raft, index);
                    self.record_committed(id, index, term, &payload, raft.term(), disks, &memberships)?;
                }
                self.commit_checked.insert(id, commit);
            } else if commit < checked {
                return Err(format!("node {id}: commit index went back from {checked} to {commit}"));
            }
        }
        Ok(())
    }
}

/// The configurations in force on `raft` since entry `index` was appended (the one at its
/// index, then each later one, without repeats): an entry committed at some point in between
/// was committed under one of them, and a quorum of that one holds it.
pub(crate) fn memberships_since(raft: &Raft, index: Index) -> Vec<Membership> {
    let mut all: Vec<Membership> = Vec::new();
    for i in index..=raft.last_log_id().index.max(index) {
        let m = raft.membership_at(i);
        if all.last() != Some(&m) {
            all.push(m);
        }
    }
    all
}
