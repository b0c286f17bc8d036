//! From the outside review of bf518e5: a small cluster of real `Raft`s driven by hand, with a fault
//! neither simulator models: a disk **rolled back to an older state** (a deleted write-ahead
//! log leaves what the last flush held: the log may then hold entries that were overwritten
//! later, and an older term and vote), while the durability record (a separate file) keeps
//! the latest hard state and last log id. Also tail loss, as the simulators do.
//!
//! Safety is checked after every step: one leader per term, every leader holds every entry
//! any node ever knew committed, no two committed entries at one index.
//!
//! The sweep runs `SWEEP_SEEDS` seeds (500 in CI; the review ran 105,000) from `SWEEP_START`:
//! `SWEEP_SEEDS=N SWEEP_START=S cargo nextest run --release -p raft-core --test
//! rollback_harness`. `ROLLBACK_NO_RECORD=1` (or `ROLLBACK_NO_RECORDED_LAST=1`) ignores the
//! durability record (or its last entry): about 46 % of seeds then fail, which shows the
//! harness sees the bug the record prevents.

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;
use raft_core::{
    Config, Entry, Event, HardState, Index, LogId, Membership, MembershipChange, Message, NodeId, Raft,
    RestoredState, Role, SeededRng, Term,
};

#[derive(Clone, Default)]
struct Disk {
    hs: HardState,
    entries: Vec<Entry>,
    /// The durability record: hard state and last log id (with the floor of lost data).
    record: Option<(HardState, LogId)>,
    floor: Option<LogId>,
    /// Earlier states of (hs, entries), to roll back to.
    versions: Vec<(HardState, Vec<Entry>)>,
}

impl Disk {
    fn last(&self) -> LogId {
        self.entries.last().map_or(LogId::default(), Entry::log_id)
    }

    fn write_record(&mut self) {
        let last = self.last();
        if self.floor.is_some_and(|f| last >= f) {
            self.floor = None;
        }
        self.record = Some((self.hs, last.max(self.floor.unwrap_or_default())));
        self.versions.push((self.hs, self.entries.clone()));
        if self.versions.len() > 200 {
            self.versions.remove(0);
        }
    }

    fn open(&mut self) -> (HardState, Option<LogId>) {
        let Some((rhs, rlast)) = self.record.filter(|_| std::env::var("ROLLBACK_NO_RECORD").is_err()) else {
            return (self.hs, None);
        };
        if self.hs.is_behind(&rhs) {
            self.hs = rhs;
        }
        let lost = (rlast > self.last()).then_some(rlast);
        self.floor = lost;
        // Control: the record's hard state only (no recovering state, no vouching).
        let lost = lost.filter(|_| std::env::var("ROLLBACK_NO_RECORDED_LAST").is_err());
        (self.hs, lost)
    }
}

struct Node {
    raft: Option<Raft>,
    disk: Disk,
}

struct Mini {
    rng: SeededRng,
    now: u64,
    config: Config,
    initial: Membership,
    nodes: Vec<Node>,
    inflight: Vec<(u64, Message)>,
    blocked: BTreeSet<(NodeId, NodeId)>,
    next_proposal: u64,
    /// index -> (term, the term of the first node seen knowing it committed: at least the
    /// term of the leader that committed it), for every entry any node knew committed.
    committed: BTreeMap<Index, (Term, Term)>,
    leaders: BTreeMap<Term, NodeId>,
    steps: u64,
    rollbacks_nonprefix: u64,
    seed: u64,
    trace: Vec<String>,
}

impl Mini {
    fn new(seed: u64, voters: usize, spares: usize, config: Config) -> Self {
        let initial = Membership::with_voters(1..=voters as NodeId);
        let mut m = Mini {
            rng: SeededRng::new(seed ^ 0xB0B0_CAFE),
            now: 0,
            config,
            initial,
            nodes: Vec::new(),
            inflight: Vec::new(),
            blocked: BTreeSet::new(),
            next_proposal: 1,
            committed: BTreeMap::new(),
            leaders: BTreeMap::new(),
            steps: 0,
            rollbacks_nonprefix: 0,
            seed,
            trace: Vec::new(),
        };
        for _ in 0..voters + spares {
            m.nodes.push(Node { raft: None, disk: Disk::default() });
        }
        for id in 1..=(voters + spares) as NodeId {
            m.start(id);
        }
        m
    }

    fn fail(&self, what: &str) -> ! {
        let tail: Vec<&String> = self.trace.iter().rev().take(40).collect();
        panic!("seed {}: t={} {what}\nrecent events (newest first):\n{tail:#?}", self.seed, self.now)
    }

    fn start(&mut self, id: NodeId) {
        let seed = self.rng.next_u64();
        let node = &mut self.nodes[id as usize - 1];
        let (hs, recorded_last) = node.disk.open();
        let restored = RestoredState {
            hard_state: hs,
            entries: node.disk.entries.clone(),
            membership: self.initial.clone(),
            recorded_last,
            ..RestoredState::default()
        };
        let raft = Raft::new(id, self.config.clone(), restored, seed, self.now).expect("starts");
        self.trace.push(format!(
            "t={} start {id}: hs {:?} last {} recovering_to {:?}",
            self.now,
            hs,
            node.disk.last(),
            recorded_last
        ));
        node.raft = Some(raft);
        self.pump(id);
    }

    fn pump(&mut self, id: NodeId) {
        loop {
            let now = self.now;
            let node = &mut self.nodes[id as usize - 1];
            let Some(raft) = node.raft.as_mut() else { return };
            if !raft.has_ready() {
                return;
            }
            let ready = raft.take_ready();
            let mut out = ready.messages.clone();
            if let Some(hs) = ready.hard_state {
                node.disk.hs = hs;
            }
            if let Some(from) = ready.truncate_from {
                node.disk.entries.retain(|e| e.index < from);
            }
            for e in &ready.entries {
                node.disk.entries.retain(|x| x.index < e.index);
                assert_eq!(node.disk.last().index + 1, e.index, "hole");
                node.disk.entries.push(e.clone());
            }
            assert!(ready.log_reads.is_empty() && ready.snapshot_reads.is_empty(), "unexpected reads");
            node.disk.write_record();
            out.extend(ready.persisted_messages.iter().cloned());
            raft.advance();
            for m in out {
                let delay = self.rng.range(1, 15);
                self.inflight.push((now + delay, m));
            }
            self.steps += 1;
        }
    }

    fn feed(&mut self, id: NodeId, event: Event) {
        let now = self.now;
        let Some(raft) = self.nodes[id as usize - 1].raft.as_mut() else { return };
        raft.step(now, event);
        self.pump(id);
    }

    fn check(&mut self) {
        // Commit knowledge, state-machine safety.
        for i in 0..self.nodes.len() {
            let Some(r) = self.nodes[i].raft.as_ref() else { continue };
            let commit = r.commit_index();
            let seen_in = r.term();
            for idx in 1..=commit {
                let Some(t) = r.term_at(idx) else {
                    self.fail(&format!("node {} commit {commit} lacks {idx}", i + 1));
                };
                match self.committed.get(&idx).map(|(t0, _)| *t0) {
                    Some(t0) if t0 != t => self.fail(&format!(
                        "state machine safety: node {} has {idx}@{t} committed, {idx}@{t0} was committed",
                        i + 1
                    )),
                    Some(_) => {}
                    None => {
                        self.committed.insert(idx, (t, seen_in));
                    }
                }
            }
        }
        // Election safety and leader completeness.
        for i in 0..self.nodes.len() {
            let Some(r) = self.nodes[i].raft.as_ref() else { continue };
            if r.role() != Role::Leader {
                continue;
            }
            let id = (i + 1) as NodeId;
            let term = r.term();
            if let Some(other) = self.leaders.get(&term) {
                if *other != id {
                    self.fail(&format!("election safety: {other} and {id} lead term {term}"));
                }
            } else {
                self.leaders.insert(term, id);
                self.trace.push(format!(
                    "t={} node {id} leads term {term}, last {}",
                    self.now,
                    r.last_log_id()
                ));
            }
            // Every entry committed by a leader of an earlier term (the term it was first seen
            // committed in bounds the committing leader's from above).
            for (idx, (t, seen_in)) in &self.committed {
                if *seen_in < term && r.term_at(*idx) != Some(*t) {
                    self.fail(&format!(
                        "leader completeness: node {id}, leader of term {term}, lacks committed {idx}@{t} (has {:?})",
                        r.term_at(*idx)
                    ));
                }
            }
        }
    }

    fn leader(&self) -> Option<NodeId> {
        self.nodes
            .iter()
            .enumerate()
            .filter_map(|(i, n)| n.raft.as_ref().filter(|r| r.role() == Role::Leader).map(|r| (r.term(), i)))
            .max()
            .map(|(_, i)| (i + 1) as NodeId)
    }

    /// Lets `ms` of simulated time pass in small steps: messages due are delivered (some
    /// lost, some twice, in random order), timers fire.
    fn run(&mut self, ms: u64) {
        let end = self.now + ms;
        while self.now < end {
            self.now += 1;
            let now = self.now;
            let (due, rest): (Vec<_>, Vec<_>) =
                std::mem::take(&mut self.inflight).into_iter().partition(|(t, _)| *t <= now);
            self.inflight = rest;
            let mut due: Vec<Message> = due.into_iter().map(|(_, m)| m).collect();
            // Random order.
            for i in (1..due.len()).rev() {
                let j = self.rng.range(0, i as u64 + 1) as usize;
                due.swap(i, j);
            }
            for m in due {
                if self.blocked.contains(&(m.from, m.to)) || self.rng.chance(1, 30) {
                    continue;
                }
                if self.rng.chance(1, 40) {
                    let later = now + self.rng.range(1, 100);
                    self.inflight.push((later, m.clone()));
                }
                let to = m.to;
                if to == 0 || to as usize > self.nodes.len() {
                    continue;
                }
                self.feed(to, Event::Message(m));
                self.check();
            }
            for id in 1..=self.nodes.len() as NodeId {
                let due = self.nodes[id as usize - 1].raft.as_ref().is_some_and(|r| r.next_deadline() <= now);
                if due {
                    self.feed(id, Event::Tick);
                    self.check();
                }
            }
        }
    }

    fn crash(&mut self, id: NodeId) {
        if self.nodes[id as usize - 1].raft.take().is_some() {
            self.trace.push(format!("t={} crash {id}", self.now));
        }
    }

    /// Crash, then the disk goes back to one of its earlier states (the record stays).
    fn crash_rolling_back(&mut self, id: NodeId) {
        self.crash(id);
        let n = self.nodes[id as usize - 1].disk.versions.len();
        if n == 0 {
            return;
        }
        // Prefer a version whose log is not a prefix of the current one.
        let current = self.nodes[id as usize - 1].disk.entries.clone();
        let mut pick = self.rng.range(0, n as u64) as usize;
        for _ in 0..n.min(20) {
            let (_, e) = &self.nodes[id as usize - 1].disk.versions[pick];
            let prefix =
                e.len() <= current.len() && e.iter().zip(&current).all(|(a, b)| a.log_id() == b.log_id());
            if !prefix {
                self.rollbacks_nonprefix += 1;
                break;
            }
            pick = self.rng.range(0, n as u64) as usize;
        }
        let disk = &mut self.nodes[id as usize - 1].disk;
        let (hs, entries) = disk.versions[pick].clone();
        disk.hs = hs;
        disk.entries = entries;
        self.trace.push(format!(
            "t={} roll back {id} to version {pick}: hs {:?} last {} (record {:?})",
            self.now,
            disk.hs,
            disk.last(),
            disk.record
        ));
    }

    fn crash_losing_tail(&mut self, id: NodeId, n: usize, forget_hs: bool) {
        self.crash(id);
        let disk = &mut self.nodes[id as usize - 1].disk;
        let keep = disk.entries.len().saturating_sub(n);
        disk.entries.truncate(keep);
        if forget_hs {
            disk.hs = HardState::default();
        }
        self.trace.push(format!(
            "t={} lose tail {id}: {n} entries, forget hs {forget_hs}; last {}",
            self.now,
            disk.last()
        ));
    }

    fn restart(&mut self, id: NodeId) {
        if self.nodes[id as usize - 1].raft.is_none() {
            self.start(id);
        }
    }

    fn propose(&mut self, id: NodeId) {
        let pid = self.next_proposal;
        self.next_proposal += 1;
        let command = Bytes::from(format!("p{pid}"));
        self.feed(id, Event::Propose { id: pid, command, forward: false });
    }

    fn change(&mut self, leader: NodeId, change: MembershipChange) {
        let now = self.now;
        let Some(raft) = self.nodes[leader as usize - 1].raft.as_mut() else { return };
        let r = raft.propose_membership_change(now, &change, true);
        self.trace.push(format!("t={now} change on {leader}: {change:?} -> {r:?}"));
        self.pump(leader);
    }
}

/// One run; returns (steps, terms with a leader, committed entries, non-prefix rollbacks).
fn run(seed: u64) -> (u64, usize, usize, u64) {
    let mut rng = SeededRng::new(seed);
    let voters = [2usize, 3, 3, 4, 5][rng.range(0, 5) as usize];
    let spares = rng.range(0, 2) as usize;
    let config = Config {
        election_timeout_min_ms: 150,
        election_timeout_max_ms: 300,
        heartbeat_interval_ms: 30,
        pre_vote: rng.chance(1, 2),
        check_quorum: rng.chance(1, 2),
        max_entries_per_append: rng.range(1, 4) as usize,
        max_in_flight_appends: rng.range(1, 4) as usize,
        log_cache_bytes: u64::MAX,
        snapshot_threshold_entries: u64::MAX,
        snapshot_threshold_bytes: u64::MAX,
        rpc_timeout_ms: 500,
        ..Config::default()
    };
    let mut m = Mini::new(seed, voters, spares, config);
    let n = voters + spares;
    let ids: Vec<NodeId> = (1..=n as NodeId).collect();
    let loss_weight = rng.range(1, 6);
    for _ in 0..400 {
        m.run(rng.range(1, 40));
        let pick = |rng: &mut SeededRng| ids[rng.range(0, n as u64) as usize];
        match rng.range(0, 100) {
            0..=44 => {
                if let Some(l) = m.leader() {
                    m.propose(l);
                }
            }
            45..=49 => {
                let id = if rng.chance(1, 2) {
                    m.leader().unwrap_or_else(|| pick(&mut rng))
                } else {
                    pick(&mut rng)
                };
                match rng.range(0, 10) {
                    x if x < loss_weight => {
                        if rng.chance(1, 2) {
                            m.crash_rolling_back(id);
                        } else {
                            let k = rng.range(1, 8) as usize;
                            let f = rng.chance(1, 2);
                            m.crash_losing_tail(id, k, f);
                        }
                    }
                    _ => m.crash(id),
                }
            }
            50..=62 => {
                let id = pick(&mut rng);
                m.restart(id);
            }
            63..=68 => {
                m.blocked.clear();
                for a in &ids {
                    for b in &ids {
                        if a != b && rng.chance(1, 4) {
                            m.blocked.insert((*a, *b));
                        }
                    }
                }
            }
            69..=72 => {
                let id = pick(&mut rng);
                for o in &ids {
                    m.blocked.insert((id, *o));
                    m.blocked.insert((*o, id));
                }
            }
            73..=82 => m.blocked.clear(),
            83..=88 => {
                if let Some(l) = m.leader() {
                    let change = match rng.range(0, 3) {
                        0 => {
                            let size = rng.range(1, n.min(5) as u64 + 1);
                            let mut v = BTreeSet::new();
                            while (v.len() as u64) < size {
                                v.insert(pick(&mut rng));
                            }
                            MembershipChange::SetVoters(v)
                        }
                        1 => MembershipChange::RemoveNode(pick(&mut rng)),
                        _ => MembershipChange::AddLearner(pick(&mut rng)),
                    };
                    m.change(l, change);
                }
            }
            89..=91 => {
                if let Some(l) = m.leader() {
                    let now = m.now;
                    let to = Some(pick(&mut rng));
                    if let Some(r) = m.nodes[l as usize - 1].raft.as_mut() {
                        let _ = r.transfer_leadership(now, to);
                    }
                    m.pump(l);
                }
            }
            _ => {}
        }
    }
    m.blocked.clear();
    for id in &ids {
        m.restart(*id);
    }
    m.run(3_000);
    (m.steps, m.leaders.len(), m.committed.len(), m.rollbacks_nonprefix)
}

fn seeds() -> (u64, u64) {
    let start = std::env::var("SWEEP_START").ok().and_then(|s| s.parse().ok()).unwrap_or(0);
    let n = std::env::var("SWEEP_SEEDS").ok().and_then(|s| s.parse().ok()).unwrap_or(500);
    (start, n)
}

#[test]
fn rollback_harness_sweep() {
    let (start, n) = seeds();
    let mut failed = Vec::new();
    let (mut steps, mut terms, mut committed, mut nonprefix) = (0, 0, 0, 0);
    for seed in start..start + n {
        match std::panic::catch_unwind(|| run(seed)) {
            Ok((s, t, c, r)) => {
                steps += s;
                terms += t;
                committed += c;
                nonprefix += r;
            }
            Err(e) => {
                let msg = e
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                eprintln!("SEED {seed} FAILED: {}", msg.lines().next().unwrap_or(""));
                failed.push(seed);
            }
        }
    }
    eprintln!(
        "rollback sweep {start}..{}: {steps} steps, {terms} terms with a leader, {committed} committed entries, {nonprefix} non-prefix rollbacks; failed {failed:?}",
        start + n
    );
    assert!(failed.is_empty(), "{failed:?}");
    assert!(terms > 0 && committed > 0, "nothing happened: {terms} terms, {committed} committed");
    assert!(nonprefix > 0, "no disk was rolled back to a state that is not a prefix of its log");
}
