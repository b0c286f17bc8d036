//! One seeded run: a cluster of real [`RaftNode`]s on a paused tokio clock, a client workload,
//! a nemesis, then healing, a liveness check and the history's linearizability check.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use raft_core::{
    Config, Membership, MembershipChange, NodeId, RaftError, RaftNode, ReadMode, Role, SeededRng,
    StorageError,
};
use raft_linearizability::{check, CheckOptions, Op, Operation, Outcome, Verdict};
use tokio::time::Instant;

use crate::checks::{stable_hash, Checks};
use crate::clock::SimClock;
use crate::disk::{lock, Disk, SimStorage};
use crate::fsm::{encode_write, KvState, SimFsm};
use crate::net::{Faults, Network, SimTransport};

/// Knobs of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Options {
    /// Simulated time of the fault phase (ms).
    pub chaos_ms: u64,
    /// After healing, the simulated time within which a write must be applied on every member.
    pub liveness_ms: u64,
}

impl Default for Options {
    fn default() -> Self {
        Self { chaos_ms: 6_000, liveness_ms: 10_000 }
    }
}

/// What a run exercised (summed over seeds by `cargo xtask sim`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Coverage {
    /// Client writes acknowledged.
    pub acknowledged_writes: u64,
    /// Client writes with an unknown outcome.
    pub unknown_writes: u64,
    /// Linearizable reads served (of which `lease_reads` in lease mode).
    pub reads_served: u64,
    /// Reads asked for in lease mode (served by a lease, or by ReadIndex when the lease or
    /// the config does not allow it, or when asked of a follower).
    pub lease_reads: u64,
    /// Reads a leader answered by its lease (at least: two in the same millisecond count once).
    pub lease_reads_answered: u64,
    /// Snapshots saved by nodes (taken or installed).
    pub snapshots_saved: u64,
    /// Snapshots installed from a leader.
    pub snapshots_installed: u64,
    /// Receptions of a snapshot resumed after a crash from the parts staged before it.
    pub staged_resumes: u64,
    /// Membership changes that completed (joint ones included).
    pub membership_changes: u64,
    /// Voter changes (through a joint configuration) that completed.
    pub joint_changes: u64,
    /// Completed changes that removed the leader that proposed them.
    pub leader_removals: u64,
    /// Leadership transfers that completed.
    pub transfers: u64,
    /// Process crashes.
    pub crashes: u64,
    /// Data-loss faults: a disk lost its last durable entries (and maybe its term and vote).
    pub data_losses: u64,
    /// Crashes that tore an append (kept a strict prefix of it).
    pub torn_writes: u64,
    /// Injected storage errors (EIO, disk full), each stopping its node.
    pub storage_errors: u64,
    /// Injected read faults: the leader's next reads of log entries fail as unreadable (its
    /// copy rotted), and it must catch its followers up another way (a new snapshot).
    pub read_faults: u64,
    /// Reads of log entries that failed so.
    pub reads_failed: u64,
    /// Crashes while a snapshot was being received from the leader or written to disk.
    pub installs_interrupted: u64,
    /// Crashes after a snapshot was saved and before the log was compacted up to it.
    pub crashes_before_compaction: u64,
    /// Process pauses (the process stopped while the others go on).
    pub pauses: u64,
    /// Terms that had a leader.
    pub terms_led: u64,
}

impl Coverage {
    /// Adds another run's figures.
    pub fn add(&mut self, o: &Coverage) {
        self.acknowledged_writes += o.acknowledged_writes;
        self.unknown_writes += o.unknown_writes;
        self.reads_served += o.reads_served;
        self.lease_reads += o.lease_reads;
        self.lease_reads_answered += o.lease_reads_answered;
        self.snapshots_saved += o.snapshots_saved;
        self.snapshots_installed += o.snapshots_installed;
        self.staged_resumes += o.staged_resumes;
        self.membership_changes += o.membership_changes;
        self.joint_changes += o.joint_changes;
        self.leader_removals += o.leader_removals;
        self.transfers += o.transfers;
        self.crashes += o.crashes;
        self.data_losses += o.data_losses;
        self.torn_writes += o.torn_writes;
        self.storage_errors += o.storage_errors;
        self.read_faults += o.read_faults;
        self.reads_failed += o.reads_failed;
        self.installs_interrupted += o.installs_interrupted;
        self.crashes_before_compaction += o.crashes_before_compaction;
        self.pauses += o.pauses;
        self.terms_led += o.terms_led;
    }
}

/// A passed run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// The seed.
    pub seed: u64,
    /// Nodes in the run (voters and spares).
    pub nodes: usize,
    /// Client operations recorded.
    pub operations: usize,
    /// Messages sent.
    pub messages: u64,
    /// Simulated milliseconds.
    pub simulated_ms: u64,
    /// What the run exercised.
    pub coverage: Coverage,
    /// A hash of everything observable (history, final states): equal for equal seeds.
    pub trace_hash: u64,
}

/// A failed run: what went wrong, with the replay command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// The seed.
    pub seed: u64,
    /// The violations, or the liveness or linearizability failure.
    pub problems: Vec<String>,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "node simulation seed {} failed (replay: cargo xtask sim --node --seed {}):",
            self.seed, self.seed
        )?;
        for p in &self.problems {
            writeln!(f, "  - {p}")?;
        }
        Ok(())
    }
}

/// Runs seed `seed` on a fresh single-threaded runtime with a paused clock.
pub fn run(seed: u64, options: Options) -> Result<Report, Failure> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build();
    let runtime = match runtime {
        Ok(r) => r,
        Err(e) => return Err(Failure { seed, problems: vec![format!("no runtime: {e}")] }),
    };
    // `Sim::new` reads the clock: inside the runtime, so that it reads the paused clock. Built
    // outside, it read the real one, and the seed's schedule shifted by the real time between
    // building the runtime and the simulation (a millisecond or more under load, and the same
    // seed no longer replayed).
    runtime.block_on(async move { Sim::new(seed).run(options).await })
}

/// One incarnation of a node.
#[derive(Clone)]
struct Running {
    raft: Arc<RaftNode>,
    state: Arc<Mutex<KvState>>,
    clock: Arc<SimClock>,
}

/// Everything clients and the nemesis share.
struct World {
    start: Instant,
    nodes: Vec<Option<Running>>,
    history: Vec<Operation>,
    /// (ms, counter within that ms): a total order of recorded events that respects time.
    clock: (u64, u64),
    coverage: Coverage,
    /// A membership change or transfer task is running.
    admin_busy: bool,
    /// The highest log index a client write was acknowledged at.
    acknowledged_index: u64,
    stop_clients: bool,
}

impl World {
    fn now_ns(&mut self) -> u64 {
        let ms = self.start.elapsed().as_millis() as u64;
        if ms != self.clock.0 {
            self.clock = (ms, 0);
        }
        self.clock.1 += 1;
        ms * 1_000_000 + self.clock.1
    }
}

struct Sim {
    seed: u64,
    rng: SeededRng,
    config: Config,
    voters: usize,
    /// Every clock at one end of the drift range.
    extreme_clocks: bool,
    ids: Vec<NodeId>,
    net: Arc<Mutex<Network>>,
    disks: Vec<Arc<Mutex<Disk>>>,
    checks: Arc<Mutex<Checks>>,
    installs: Arc<Mutex<u64>>,
    world: Arc<Mutex<World>>,
}

const KEYS: [&str; 4] = ["a", "b", "c", "d"];

impl Sim {
    /// Must run inside the simulation's runtime: it reads the paused clock.
    fn new(seed: u64) -> Self {
        assert!(
            tokio::runtime::Handle::try_current().is_ok(),
            "a simulation is built inside its runtime (else it reads the real clock)"
        );
        let mut rng = SeededRng::new(seed ^ 0x5EED_0F0D_E51A_7105);
        let voters = [3usize, 3, 5, 5, 1][rng.range(0, 5) as usize];
        let spares = rng.range(0, 3) as usize;
        let n = voters + spares;
        let min = rng.range(100, 200);
        let check_quorum = rng.chance(3, 4);
        // Half the runs put every clock at one end of the allowed range (the lease
        // reads' worst case: a slow leader among fast voters).
        let extreme_clocks = rng.chance(1, 2);
        let config = Config {
            election_timeout_min_ms: min,
            election_timeout_max_ms: min + rng.range(10, 200),
            heartbeat_interval_ms: rng.range(10, min / 3),
            rpc_timeout_ms: 500,
            pre_vote: rng.chance(3, 4),
            check_quorum,
            lease_read: check_quorum && rng.chance(3, 4),
            max_clock_drift_percent: if extreme_clocks { rng.range(30, 50) } else { rng.range(2, 50) },
            auto_forward: true,
            snapshot_threshold_entries: rng.range(5, 40),
            snapshot_keep_entries: rng.range(0, 6),
            snapshot_chunk_bytes: rng.range(16, 512) as usize,
            max_entries_per_append: rng.range(1, 64) as usize,
            max_in_flight_appends: rng.range(1, 8) as usize,
            max_uncommitted_entries: rng.range(8, 1_000) as usize,
            max_uncommitted_bytes: rng.range(512, 1 << 20),
            // Often a cache of a few entries: followers that lag are sent entries read from
            // the simulated disk (`Storage::entries`).
            log_cache_bytes: if rng.chance(2, 3) { rng.range(0, 2_048) } else { u64::MAX },
            ..Config::default()
        };
        let latency = rng.range(1, 9);
        let disks = (1..=n as NodeId)
            .map(|id| Arc::new(Mutex::new(Disk::new(id, rng.next_u64(), latency))))
            .collect();
        let net = Arc::new(Mutex::new(Network::new(n, rng.next_u64())));
        let world = World {
            start: Instant::now(),
            nodes: vec![None; n],
            history: Vec::new(),
            clock: (0, 0),
            coverage: Coverage::default(),
            admin_busy: false,
            acknowledged_index: 0,
            stop_clients: false,
        };
        Self {
            seed,
            rng,
            config,
            voters,
            extreme_clocks,
            ids: (1..=n as NodeId).collect(),
            net,
            disks,
            checks: Arc::new(Mutex::new(Checks::default())),
            installs: Arc::new(Mutex::new(0)),
            world: Arc::new(Mutex::new(world)),
        }
    }

    fn violation(&self, what: String) {
        lock(&self.checks).violation(what);
    }

    fn running(&self, id: NodeId) -> Option<Running> {
        lock(&self.world).nodes[id as usize - 1].clone()
    }

    async fn start(&mut self, id: NodeId) {
        if self.running(id).is_some() {
            return;
        }
        lock(&self.net).up(id);
        let disk = self.disks[id as usize - 1].clone();
        let state = Arc::new(Mutex::new(KvState::default()));
        let started = Arc::new(Mutex::new(false));
        let seed = self.rng.next_u64();
        let fsm = SimFsm {
            node: id,
            state: state.clone(),
            checks: self.checks.clone(),
            disk: disk.clone(),
            installs: self.installs.clone(),
            started: started.clone(),
            slowness: seed,
        };
        let storage = Arc::new(SimStorage::new(disk, self.checks.clone()));
        let transport = Arc::new(SimTransport::new(id, self.net.clone()));
        let membership = Membership::with_voters(1..=self.voters as NodeId);
        // Each process's clock runs at its own rate; any two stay within the configured drift
        // bound of each other (each within half of it of tokio's).
        let half = (self.config.max_clock_drift_percent * 10_000 / 2) as i64;
        // Half the time at one end of the range, where a lease computed without the bound
        // would outlast the other nodes' election timeouts.
        let rate_ppm = match self.rng.range(0, 4) {
            0 => -half,
            1 => half,
            _ if self.extreme_clocks => {
                if self.rng.chance(1, 2) {
                    -half
                } else {
                    half
                }
            }
            _ => self.rng.range(0, 2 * half as u64 + 1) as i64 - half,
        };
        let clock = Arc::new(SimClock::new(id, self.net.clone(), rate_ppm));
        let fsm = Box::new(fsm);
        match RaftNode::start_with_clock(
            id,
            self.config.clone(),
            membership,
            storage,
            transport,
            fsm,
            seed,
            clock.clone(),
        )
        .await
        {
            Ok(raft) => {
                *lock(&started) = true;
                tokio::spawn(watch_status(id, raft.watch_status(), clock.clone(), self.checks.clone()));
                lock(&self.world).nodes[id as usize - 1] =
                    Some(Running { raft: Arc::new(raft), state, clock });
            }
            Err(e) => {
                lock(&self.net).down(id);
                self.violation(format!("node {id} could not restart from its disk: {e}"));
            }
        }
    }

    /// The process of node `id` dies: the driver stops where it is, the write in progress is
    /// kept in part or not at all, the inbox is lost.
    fn crash(&mut self, id: NodeId) {
        let Some(running) = lock(&self.world).nodes[id as usize - 1].take() else { return };
        let receiving = running.raft.status().protocol.incoming_snapshot.is_some();
        running.raft.abort();
        lock(&self.net).down(id);
        let (torn, saving) = {
            let mut disk = lock(&self.disks[id as usize - 1]);
            let saving_before = disk.crashes_saving_snapshot;
            let torn = disk.crash();
            (torn, disk.crashes_saving_snapshot > saving_before)
        };
        let mut w = lock(&self.world);
        w.coverage.crashes += 1;
        w.coverage.torn_writes += u64::from(torn);
        w.coverage.installs_interrupted += u64::from(receiving || saving);
    }

    /// Checks each running node's status: one leader per term; a node stopped by a fatal
    /// error (an injected storage error) is taken down, to be restarted later.
    fn observe(&mut self) {
        for id in self.ids.clone() {
            let Some(running) = self.running(id) else { continue };
            let status = running.raft.status();
            // A node stopped by a fatal error publishes its last in-memory state, which may be
            // a leadership whose term it failed to save (and never acted on): not a leader. Nor
            // is one whose term is not saved yet: the write may still fail.
            if status.protocol.role == Role::Leader && status.fatal.is_none() && status.protocol.term_durable
            {
                lock(&self.checks).on_leader(id, status.protocol.term);
            }
            if let Some(fatal) = status.fatal {
                // Only the injected storage errors may stop a node.
                if !fatal.contains("injected EIO") && !fatal.contains("no space left") {
                    self.violation(format!("node {id} stopped: {fatal}"));
                }
                self.crash(id);
            }
        }
    }

    fn leader(&self) -> Option<(NodeId, Arc<RaftNode>)> {
        let w = lock(&self.world);
        w.nodes
            .iter()
            .flatten()
            .map(|r| (r.raft.status().protocol, r.raft.clone()))
            .filter(|(s, _)| s.role == Role::Leader)
            .max_by_key(|(s, _)| s.term)
            .map(|(s, raft)| (s.id, raft))
    }

    async fn run(mut self, options: Options) -> Result<Report, Failure> {
        for id in self.ids.clone() {
            self.start(id).await;
        }
        let clients = self.rng.range(4, 11);
        let mut tasks = Vec::new();
        for c in 0..clients {
            let world = self.world.clone();
            let checks = self.checks.clone();
            let seed = self.rng.next_u64();
            let nodes = self.ids.len() as u64;
            let net = self.net.clone();
            tasks.push(tokio::spawn(client(c + 1, seed, nodes, world, checks, net)));
        }
        let end = options.chaos_ms;
        while (lock(&self.world).start.elapsed().as_millis() as u64) < end {
            let wait = self.rng.range(1, 60);
            tokio::time::sleep(Duration::from_millis(wait)).await;
            self.observe();
            self.nemesis().await;
        }
        // Heal, restart everyone, and let the cluster show that it recovers.
        {
            let mut n = lock(&self.net);
            n.heal();
            n.faults = Faults::RELIABLE;
        }
        for d in &self.disks {
            lock(d).fault = None;
        }
        self.observe();
        for id in self.ids.clone() {
            self.start(id).await;
        }
        let healed_at = lock(&self.world).start.elapsed().as_millis() as u64;
        let live = self.liveness(options.liveness_ms).await;
        lock(&self.world).stop_clients = true;
        for t in tasks {
            let _ = t.await;
        }
        self.final_reads().await;
        let start = lock(&self.world).start;
        lock(&self.checks).check_leases(start);
        let mut problems: Vec<String> = lock(&self.checks).violations().to_vec();
        if let Err(e) = live {
            problems.push(e);
        }
        let history = std::mem::take(&mut lock(&self.world).history);
        match check(&history, &CheckOptions::default()) {
            Verdict::Linearizable => {}
            other => problems.push(format!("the client history is not linearizable: {other}")),
        }
        if !problems.is_empty() {
            return Err(Failure { seed: self.seed, problems });
        }
        let mut w = lock(&self.world);
        let mut coverage = w.coverage.clone();
        coverage.snapshots_saved = self.disks.iter().map(|d| lock(d).snapshots_saved).sum();
        coverage.reads_failed = self.disks.iter().map(|d| lock(d).reads_failed).sum();
        coverage.snapshots_installed = *lock(&self.installs);
        coverage.staged_resumes = self.disks.iter().map(|d| lock(d).staged_resumes).sum();
        coverage.crashes_before_compaction =
            self.disks.iter().map(|d| lock(d).crashes_before_compaction).sum();
        coverage.terms_led = lock(&self.checks).terms_led() as u64;
        coverage.lease_reads_answered = lock(&self.checks).lease_reads_answered;
        let states: Vec<(u64, usize)> =
            w.nodes.iter().flatten().map(|r| lock(&r.state)).map(|s| (s.digest(), s.keys())).collect();
        let net = lock(&self.net);
        let _ = healed_at;
        Ok(Report {
            seed: self.seed,
            nodes: self.ids.len(),
            operations: history.len(),
            messages: net.sent,
            simulated_ms: w.start.elapsed().as_millis() as u64,
            trace_hash: stable_hash(&(&history, &states, net.sent, net.delivered, w.now_ns())),
            coverage,
        })
    }

    /// One random fault or admin action.
    async fn nemesis(&mut self) {
        let n = self.ids.len() as u64;
        let pick = |rng: &mut SeededRng| rng.range(1, n + 1);
        match self.rng.range(0, 100) {
            0..=7 => {
                let id = pick(&mut self.rng);
                self.crash(id);
            }
            8..=17 => {
                let id = pick(&mut self.rng);
                self.start(id).await;
            }
            18..=21 => {
                let mut net = lock(&self.net);
                net.heal();
                let ids = self.ids.clone();
                let side: Vec<bool> = ids.iter().map(|_| self.rng.chance(1, 2)).collect();
                for (i, a) in ids.iter().enumerate() {
                    for (j, b) in ids.iter().enumerate() {
                        if side[i] != side[j] {
                            net.block(*a, *b);
                        }
                    }
                }
            }
            22..=24 => {
                let (a, b) = (pick(&mut self.rng), pick(&mut self.rng));
                if a != b {
                    lock(&self.net).block(a, b);
                }
            }
            25..=31 => lock(&self.net).heal(),
            32..=35 => {
                let faults = match self.rng.range(0, 3) {
                    0 => Faults::RELIABLE,
                    1 => Faults::UNRELIABLE,
                    _ => Faults::REORDERING,
                };
                lock(&self.net).faults = faults;
            }
            36..=39 => {
                if let Some((id, _)) = self.leader() {
                    self.crash(id);
                }
            }
            40..=44 | 62..=63 => self.change_membership(),
            54..=57 | 64..=67 => {
                // Cut the leader off from everyone: a new leader takes over while the old one
                // may still believe it leads (and serve lease reads if its lease were wrong).
                if let Some((id, raft)) = self.leader() {
                    if self.extreme_clocks {
                        // The lease's worst case within the drift bound: from now on the
                        // cut-off leader's clock is the slowest allowed, the others' the fastest.
                        let half = (self.config.max_clock_drift_percent * 10_000 / 2) as i64;
                        for (i, node) in lock(&self.world).nodes.iter().enumerate() {
                            if let Some(r) = node {
                                r.clock.set_rate(if i as NodeId + 1 == id { -half } else { half });
                            }
                        }
                    }
                    let mut net = lock(&self.net);
                    for other in self.ids.iter().filter(|o| **o != id) {
                        net.block(id, *other);
                        net.block(*other, id);
                    }
                    // Lease reads on the cut-off leader every millisecond until long after
                    // the others could have elected someone: the lease check (no lease read
                    // after a later term's election) sees the last one it answers.
                    let probe_ms = 2 * self.config.election_timeout_max_ms;
                    tokio::spawn(async move {
                        for _ in 0..probe_ms {
                            let read = raft.read_index(ReadMode::Lease);
                            let _ = tokio::time::timeout(Duration::from_millis(1), read).await;
                        }
                    });
                }
            }
            45..=48 => self.transfer(),
            58 => {
                // A process pause (SIGSTOP, a GC pause, a stalled VM), the leader's half the
                // time: it may outlast an election timeout, and the process resumes with its
                // lease, its timers and its inbox as they were.
                let id = match self.leader() {
                    Some((leader, _)) if self.rng.chance(1, 2) => leader,
                    _ => pick(&mut self.rng),
                };
                let max = 2 * self.config.election_timeout_max_ms;
                let until = Instant::now() + Duration::from_millis(self.rng.range(10, max));
                if self.running(id).is_some() {
                    lock(&self.net).pause(id, until);
                    lock(&self.world).coverage.pauses += 1;
                }
            }
            49..=52 => {
                // A process restart (a supervisor brings it back at once): answers its peers
                // still hold for the old process reach the new one.
                let id = pick(&mut self.rng);
                self.crash(id);
                let pause = self.rng.range(0, 30);
                tokio::time::sleep(Duration::from_millis(pause)).await;
                self.start(id).await;
            }
            68..=70 if self.may_lose_data() => {
                // A disk that loses what it had made durable (a write-ahead log cut short or
                // deleted): the node must recover by itself without losing a committed write.
                let id = pick(&mut self.rng);
                if self.running(id).is_some() {
                    self.crash(id);
                }
                let entries = self.rng.range(1, 9) as usize;
                let forget_hard_state = self.rng.chance(1, 2);
                lock(&self.disks[id as usize - 1]).lose_tail(entries, forget_hard_state);
                lock(&self.world).coverage.data_losses += 1;
            }
            53 => {
                let id = pick(&mut self.rng);
                let error = if self.rng.chance(1, 2) {
                    StorageError::Io("injected EIO".into())
                } else {
                    StorageError::Full
                };
                lock(&self.disks[id as usize - 1]).fault = Some(error);
                lock(&self.world).coverage.storage_errors += 1;
            }
            71 => {
                // No draw from the schedule's generator: the leader, three reads.
                if let Some((id, _)) = self.leader() {
                    lock(&self.disks[id as usize - 1]).read_faults = 3;
                    lock(&self.world).coverage.read_faults += 1;
                }
            }
            _ => {}
        }
    }

    /// Whether a node may lose data now with the cluster still able to recover: a leader runs, no disk is
    /// missing data already, no membership change is under way, and every running node's
    /// configuration has at least three voters in each voter set (so one node is a minority of
    /// it).
    fn may_lose_data(&self) -> bool {
        let large = |m: &raft_core::Membership| {
            m.voters.len() >= 3 && (m.outgoing_voters.is_empty() || m.outgoing_voters.len() >= 3)
        };
        if self.leader().is_none() {
            return false;
        }
        let w = lock(&self.world);
        !w.admin_busy
            && !self.disks.iter().any(|d| lock(d).missing_data())
            && w.nodes.iter().flatten().all(|r| large(&r.raft.membership()))
    }

    /// A random membership change proposed on the leader, run as its own task.
    fn change_membership(&mut self) {
        let Some((leader, raft)) = self.leader() else { return };
        if lock(&self.world).admin_busy {
            return;
        }
        let m = raft.membership();
        if m.is_joint() {
            return;
        }
        let outsiders: Vec<NodeId> = self.ids.iter().copied().filter(|id| !m.contains(*id)).collect();
        let learners: Vec<NodeId> = m.learners.iter().copied().collect();
        let voters: Vec<NodeId> = m.voters.iter().copied().collect();
        // While a disk misses data, configurations keep three voters or more (in a smaller one
        // that node could be a majority, whose loss needs an operator).
        let min_voters = if self.disks.iter().any(|d| lock(d).missing_data()) { 3 } else { 1 };
        let rng = &mut self.rng;
        let one = |rng: &mut SeededRng, from: &[NodeId]| from[rng.range(0, from.len() as u64) as usize];
        let change = match rng.range(0, 6) {
            0 if !outsiders.is_empty() => MembershipChange::AddLearner(one(rng, &outsiders)),
            1 if !learners.is_empty() => MembershipChange::PromoteLearner(one(rng, &learners)),
            2 | 5 if voters.len() > min_voters => MembershipChange::RemoveNode(leader),
            3 if voters.len() > min_voters => MembershipChange::RemoveNode(one(rng, &voters)),
            _ => {
                let size = rng.range(min_voters.min(self.ids.len()) as u64, self.ids.len().min(5) as u64 + 1);
                let mut set = BTreeSet::new();
                while (set.len() as u64) < size {
                    set.insert(one(rng, &self.ids));
                }
                MembershipChange::SetVoters(set)
            }
        };
        let joint = match m.target(&change) {
            Ok(target) => target.voters != m.voters,
            Err(_) => return,
        };
        let removes_leader = matches!(&change, MembershipChange::RemoveNode(id) if *id == leader)
            || matches!(&change, MembershipChange::SetVoters(v) if !v.contains(&leader));
        // Two thirds of the changes skip the operator-safety checks (caught-up new voters, a live
        // majority after the change), so that the protocol meets every valid change.
        let force = self.rng.chance(2, 3);
        let world = self.world.clone();
        lock(&world).admin_busy = true;
        tokio::spawn(async move {
            let result = if force {
                raft.force_membership_change(change).await
            } else {
                raft.change_membership(change).await
            };
            let mut w = lock(&world);
            w.admin_busy = false;
            if result.is_ok() {
                w.coverage.membership_changes += 1;
                w.coverage.joint_changes += u64::from(joint);
                w.coverage.leader_removals += u64::from(removes_leader);
            }
        });
    }

    /// A leadership transfer on the leader, run as its own task.
    fn transfer(&mut self) {
        let Some((_, raft)) = self.leader() else { return };
        if lock(&self.world).admin_busy {
            return;
        }
        let to =
            if self.rng.chance(1, 2) { Some(self.rng.range(1, self.ids.len() as u64 + 1)) } else { None };
        let world = self.world.clone();
        lock(&world).admin_busy = true;
        tokio::spawn(async move {
            let result = raft.transfer_leadership(to).await;
            let mut w = lock(&world);
            w.admin_busy = false;
            if result.is_ok() {
                w.coverage.transfers += 1;
            }
        });
    }

    /// After healing: a write through the leader is applied on every member in time.
    async fn liveness(&mut self, within_ms: u64) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_millis(within_ms);
        let mut seq = 0;
        while Instant::now() < deadline {
            self.observe();
            // A node stopped by a storage error injected before healing comes back too.
            for id in self.ids.clone() {
                self.start(id).await;
            }
            let Some((_, raft)) = self.leader() else {
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            };
            seq += 1;
            let command = encode_write(0, seq, "live", &format!("final-{seq}"));
            let result = tokio::time::timeout(Duration::from_millis(2_000), raft.propose(command)).await;
            let Ok(Ok(applied)) = result else {
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            };
            while Instant::now() < deadline {
                // The members of now (a change in flight may still remove some).
                let members = self.leader().map(|(_, l)| l.membership().members()).unwrap_or_default();
                let all = !members.is_empty()
                    && members.iter().all(|id| {
                        self.running(*id).is_some_and(|r| lock(&r.state).index >= applied.log_id.index)
                    });
                if all {
                    return Ok(());
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        let statuses: Vec<String> = self
            .ids
            .iter()
            .filter_map(|id| self.running(*id))
            .map(|r| {
                let s = r.raft.status();
                format!("{:?} fatal={:?}", s.protocol, s.fatal)
            })
            .collect();
        Err(format!("liveness: no write was applied on every member within {within_ms} ms of healing; nodes: {statuses:#?}"))
    }

    /// One linearizable read of every key on the leader, so that a lost acknowledged write
    /// shows in the history.
    async fn final_reads(&mut self) {
        for key in KEYS {
            let Some((id, raft)) = self.leader() else { return };
            let Some(running) = self.running(id) else { return };
            let call_ns = lock(&self.world).now_ns();
            let result =
                tokio::time::timeout(Duration::from_millis(2_000), raft.read_index(ReadMode::ReadIndex))
                    .await;
            if let Ok(Ok(index)) = result {
                let value = read_state(&running.state, index, id, &self.checks, key);
                let mut w = lock(&self.world);
                let return_ns = w.now_ns();
                w.history.push(Operation {
                    client: 0,
                    key: key.to_owned(),
                    op: Op::Get,
                    call_ns,
                    return_ns: Some(return_ns),
                    outcome: Outcome::Ok(value),
                });
            }
        }
    }
}

/// Follows the status one incarnation of node `id` publishes: who leads which term (from the
/// moment it is elected) and when it answers reads by its lease.
async fn watch_status(
    id: NodeId,
    mut status: tokio::sync::watch::Receiver<raft_core::NodeStatus>,
    clock: Arc<SimClock>,
    checks: Arc<Mutex<Checks>>,
) {
    let mut last_lease_read = None;
    loop {
        {
            let s = status.borrow_and_update();
            // A node stopped by a fatal error publishes its last in-memory state, which may be
            // a leadership whose term it failed to save (and never acted on): not a leader. Nor
            // is one whose term is not saved yet (it is counted once it is).
            if s.protocol.role == Role::Leader && s.fatal.is_none() && s.protocol.term_durable {
                let mut c = lock(&checks);
                c.on_leader_seen(id, s.protocol.term, Instant::now());
                if let Some(ms) = s.protocol.last_lease_read_ms {
                    if last_lease_read != Some((s.protocol.term, ms)) {
                        last_lease_read = Some((s.protocol.term, ms));
                        c.on_lease_read(id, s.protocol.term, clock.instant_of(ms));
                    }
                }
            }
        }
        if status.changed().await.is_err() {
            return;
        }
    }
}

/// Reads `key` from a state machine the driver said has applied `index`.
fn read_state(
    state: &Mutex<KvState>,
    index: u64,
    node: NodeId,
    checks: &Mutex<Checks>,
    key: &str,
) -> Option<String> {
    let state = lock(state);
    if state.index < index {
        lock(checks).violation(format!(
            "node {node} answered a read at index {index} with its state at {}",
            state.index
        ));
    }
    state.get(key)
}

/// A client: random writes and reads on random nodes, each recorded with its interval and
/// outcome, until told to stop.
async fn client(
    client: u64,
    seed: u64,
    nodes: u64,
    world: Arc<Mutex<World>>,
    checks: Arc<Mutex<Checks>>,
    net: Arc<Mutex<Network>>,
) {
    let mut rng = SeededRng::new(seed);
    let mut seq = 0u64;
    loop {
        let think = rng.range(0, 10);
        tokio::time::sleep(Duration::from_millis(think)).await;
        let id = rng.range(1, nodes + 1);
        let key = KEYS[rng.range(0, KEYS.len() as u64) as usize];
        let write = rng.chance(3, 5);
        let lease = rng.chance(1, 2);
        let (running, call_ns, acknowledged_before) = {
            let mut w = lock(&world);
            if w.stop_clients {
                return;
            }
            let running = w.nodes[id as usize - 1].clone();
            (running, w.now_ns(), w.acknowledged_index)
        };
        let Some(running) = running else { continue };
        // A request to a paused process waits in its socket until the process resumes.
        let paused = lock(&net).paused_until(id);
        if let Some(until) = paused {
            tokio::time::sleep_until(until).await;
        }
        // Longer than the driver's own deadline for applying a placed proposal (10 rpc timeouts),
        // so that its answer is seen.
        let timeout = Duration::from_millis(8_000);
        if write {
            seq += 1;
            let value = format!("c{client}-{seq}");
            let command = encode_write(client, seq, key, &value);
            let result = tokio::time::timeout(timeout, running.raft.propose(command.clone())).await;
            match &result {
                Ok(Ok(applied)) => {
                    lock(&checks).on_acknowledged(client, applied.log_id, &command);
                    let mut w = lock(&world);
                    w.acknowledged_index = w.acknowledged_index.max(applied.log_id.index);
                }
                Ok(Err(RaftError::OutcomeUnknown)) | Err(_) => {}
                Ok(Err(_)) => lock(&checks).on_command_failed((client, seq)),
            }
            let outcome = match result {
                Ok(Ok(_)) => Outcome::Ok(None),
                Ok(Err(RaftError::OutcomeUnknown)) | Err(_) => Outcome::Unknown,
                // Every other answer promises the write was not applied: the checker holds
                // the node to it.
                Ok(Err(_)) => Outcome::Failed,
            };
            let mut w = lock(&world);
            match outcome {
                Outcome::Ok(_) => w.coverage.acknowledged_writes += 1,
                Outcome::Unknown => w.coverage.unknown_writes += 1,
                _ => {}
            }
            let return_ns = (outcome != Outcome::Unknown).then(|| w.now_ns());
            w.history.push(Operation {
                client,
                key: key.to_owned(),
                op: Op::Put(value),
                call_ns,
                return_ns,
                outcome,
            });
        } else {
            let mode = if lease { ReadMode::Lease } else { ReadMode::ReadIndex };
            let result = tokio::time::timeout(timeout, running.raft.read_index(mode)).await;
            if let Ok(Ok(index)) = result {
                // A linearizable read covers every write acknowledged before it began, whatever
                // keys the client looks at.
                if index < acknowledged_before {
                    lock(&checks).violation(format!(
                        "node {id} answered a read with index {index}, below the write acknowledged at {acknowledged_before} before the read began"
                    ));
                }
                let value = read_state(&running.state, index, id, &checks, key);
                let mut w = lock(&world);
                w.coverage.reads_served += 1;
                w.coverage.lease_reads += u64::from(lease);
                let return_ns = w.now_ns();
                w.history.push(Operation {
                    client,
                    key: key.to_owned(),
                    op: Op::Get,
                    call_ns,
                    return_ns: Some(return_ns),
                    outcome: Outcome::Ok(value),
                });
            }
        }
    }
}
