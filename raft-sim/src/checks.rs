//! Safety checks that need no access to a node's protocol state: what was applied where, which
//! state each index led to, who led which term. Violations are collected; a run with any fails.

use std::collections::{BTreeMap, BTreeSet};
use std::hash::{DefaultHasher, Hash, Hasher};

use raft_core::{Entry, EntryPayload, Index, LogId, NodeId, Term};
use tokio::time::Instant;

/// What the run has observed, shared by every node's state machine and the controller.
#[derive(Debug, Default)]
pub(crate) struct Checks {
    violations: Vec<String>,
    /// The committed log as the first node to apply each index saw it: (term, payload hash).
    log: BTreeMap<Index, (Term, u64)>,
    /// The state-machine digest after applying each index, as the first node to reach it had.
    digests: BTreeMap<Index, u64>,
    /// The leader of each term seen so far.
    leaders: BTreeMap<Term, NodeId>,
    /// Client commands (client, seq) applied somewhere, and those whose client was told they
    /// were not applied: the two must never meet.
    applied_commands: BTreeSet<(u64, u64)>,
    failed_commands: BTreeSet<(u64, u64)>,
    /// When a leader of each term was first seen (the status a driver publishes as it is
    /// elected, watched as it changes).
    elected: BTreeMap<Term, Instant>,
    /// The last read each term's leader answered by its lease, and when (tokio time, at most
    /// a millisecond early).
    lease_reads: BTreeMap<Term, (NodeId, Instant)>,
    /// Reads answered by a lease.
    pub(crate) lease_reads_answered: u64,
}

/// A stable hash of anything hashable (std's `DefaultHasher::new` has fixed keys).
pub(crate) fn stable_hash(value: &impl Hash) -> u64 {
    let mut h = DefaultHasher::new();
    value.hash(&mut h);
    h.finish()
}

impl Checks {
    pub(crate) fn violation(&mut self, what: String) {
        if self.violations.len() < 20 {
            self.violations.push(what);
        }
    }

    pub(crate) fn violations(&self) -> &[String] {
        &self.violations
    }

    /// State-machine safety: every node applies the same entry at an index.
    pub(crate) fn on_apply(&mut self, node: NodeId, entry: &Entry) {
        let payload = stable_hash(&format!("{:?}", entry.payload));
        match self.log.get(&entry.index) {
            Some(&(term, hash)) if (term, hash) != (entry.term, payload) => self.violation(format!(
                "node {node} applied {} ({:?}) where another node applied an entry of term {term}",
                entry.log_id(),
                entry.payload
            )),
            Some(_) => {}
            None => {
                self.log.insert(entry.index, (entry.term, payload));
            }
        }
    }

    /// Every node's state machine is in the same state after the same index (applied or
    /// restored from a snapshot).
    pub(crate) fn on_state(&mut self, node: NodeId, index: Index, digest: u64, how: &str) {
        match self.digests.get(&index) {
            Some(d) if *d != digest => self.violation(format!(
                "node {node} {how} index {index} with a state that differs from the others'"
            )),
            Some(_) => {}
            None => {
                self.digests.insert(index, digest);
            }
        }
    }

    /// A client command was applied (on some node).
    pub(crate) fn on_command_applied(&mut self, command: (u64, u64)) {
        if self.failed_commands.contains(&command) {
            self.violation(format!(
                "client {} seq {} was told its write failed, but it was applied",
                command.0, command.1
            ));
        }
        self.applied_commands.insert(command);
    }

    /// A client was told its write was not applied.
    pub(crate) fn on_command_failed(&mut self, command: (u64, u64)) {
        if self.applied_commands.contains(&command) {
            self.violation(format!(
                "client {} seq {} was told its write failed, but it was applied",
                command.0, command.1
            ));
        }
        self.failed_commands.insert(command);
    }

    /// A client was told its command was applied at `log_id`: that entry must be this command.
    pub(crate) fn on_acknowledged(&mut self, client: u64, log_id: LogId, command: &bytes::Bytes) {
        let expected = stable_hash(&format!("{:?}", EntryPayload::Command(command.clone())));
        match self.log.get(&log_id.index) {
            Some(&(term, hash)) if term == log_id.term && hash == expected => {}
            other => self.violation(format!(
                "client {client} was told its command was applied at {log_id}, but the entry applied there is {other:?}"
            )),
        }
    }

    /// Election safety: at most one leader per term.
    pub(crate) fn on_leader(&mut self, node: NodeId, term: Term) {
        match self.leaders.get(&term) {
            Some(other) if *other != node => {
                self.violation(format!("nodes {other} and {node} both led term {term}"))
            }
            Some(_) => {}
            None => {
                self.leaders.insert(term, node);
            }
        }
    }

    /// Node `node` leads `term`, seen at `now`.
    pub(crate) fn on_leader_seen(&mut self, node: NodeId, term: Term, now: Instant) {
        self.on_leader(node, term);
        self.elected.entry(term).or_insert(now);
    }

    /// The leader of `term` answered a read by its lease at `at`.
    pub(crate) fn on_lease_read(&mut self, node: NodeId, term: Term, at: Instant) {
        self.lease_reads_answered += 1;
        let last = self.lease_reads.entry(term).or_insert((node, at));
        if at > last.1 {
            *last = (node, at);
        }
    }

    /// Lease safety: no leader answers a read by its lease after a leader of a later term was
    /// elected (that leader may have committed writes the read misses). Needs the clocks
    /// within the configured drift bound, which the simulation keeps.
    pub(crate) fn check_leases(&mut self, start: Instant) {
        let mut found = Vec::new();
        for (term, (node, at)) in &self.lease_reads {
            if let Some((later, elected)) = self.elected.range(term + 1..).find(|(_, e)| *e < at) {
                found.push(format!(
                    "node {node} answered a lease read in term {term} at {} ms, after the leader of term {later} was elected at {} ms",
                    at.duration_since(start).as_millis(),
                    elected.duration_since(start).as_millis()
                ));
            }
        }
        for f in found {
            self.violation(f);
        }
    }

    /// How many terms had a leader.
    pub(crate) fn terms_led(&self) -> usize {
        self.leaders.len()
    }
}
