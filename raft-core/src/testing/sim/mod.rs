//! A deterministic simulator of whole clusters.
//!
//! N [`Raft`] nodes share a simulated clock; a simulated network delivers their messages after
//! random delays (with loss, duplication, reordering and partitions); a simulated disk keeps
//! durable writes apart from writes in progress, so a crash loses exactly what was not yet
//! synced. Everything random comes from one seed: the same seed replays the same run.
//!
//! After every step the [`invariants`] are checked: election safety, log matching, leader
//! completeness, state-machine safety, durability of committed entries, and that no node forgets
//! a term or a vote across restarts. A violation panics with the seed.
//!
//! ```
//! use raft_core::testing::sim::Cluster;
//!
//! let mut cluster = Cluster::new(3, 7);
//! let leader = cluster.check_one_leader();
//! let index = cluster.one(b"hello", 3, false);
//! assert!(index >= 1);
//! assert!(cluster.node_is_up(leader));
//! ```

mod disk;
mod fsm;
pub mod invariants;
mod network;
pub mod random;

use std::collections::{BTreeMap, VecDeque};

use bytes::Bytes;

pub use network::NetworkFaults;

use crate::config::Config;
use crate::membership::{Membership, MembershipChange};
use crate::message::{Message, ProposalId, ReadId};
use crate::protocol::{Event, Raft, ReadMode, Ready, RestoredState, TransferError};
use crate::rng::SeededRng;
use crate::storage::{Snapshot, SnapshotMeta, SnapshotStage};
use crate::types::{Entry, EntryPayload, EntryStub, Index, LogId, Millis, NodeId, Role, Term};
use disk::{CrashCut, Disk, PendingWrite};
use fsm::SimFsm;
use invariants::History;
use network::Network;

/// What became of a proposal submitted through the simulator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProposalState {
    /// Submitted; no answer yet.
    Pending,
    /// The leader appended it here; waiting for it to be applied on the proposing node.
    Appended(LogId),
    /// Applied on the proposing node at the position the leader gave: acknowledged.
    Applied(LogId),
    /// Refused, or a different entry was applied at its position (outcome: not applied there).
    Failed(String),
    /// The proposing node crashed before answering: outcome unknown.
    Unknown,
}

/// What became of a linearizable read submitted through the simulator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadState {
    /// Waiting for the read index.
    Pending,
    /// The read index is known; waiting for the node to apply it.
    Confirmed(Index),
    /// Served: the value of the key (if set) in the state at `index` (at least the read index).
    Served {
        /// The read index the protocol confirmed.
        read_index: Index,
        /// The value read.
        value: Option<Bytes>,
    },
    /// Refused, timed out, or the node crashed.
    Failed(String),
}

/// A read and what the simulator checks it against.
#[derive(Debug, Clone)]
struct ReadRecord {
    key: Bytes,
    /// The highest index of a write acknowledged before the read began: the read must see it.
    must_see: Index,
    state: ReadState,
}

/// When a node snapshots its state machine and compacts its log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotPolicy {
    /// Snapshot once this many entries were applied since the last snapshot.
    pub threshold: u64,
    /// Entries kept in the log behind the snapshot.
    pub keep: u64,
}

/// A node's volatile state plus its durable disk.
#[derive(Debug)]
struct SimNode {
    id: NodeId,
    raft: Option<Raft>,
    disk: Disk,
    /// The write of the [`Ready`] in progress, with what follows it, and when it completes.
    in_progress: Option<InProgress>,
    /// Messages and proposals that arrived while a write was in progress.
    inbox: VecDeque<Event>,
    /// The committed log as this node's state machine has it, from index 1 (entries a
    /// snapshot covers are filled in from the run's history: bookkeeping for the checks).
    applied: Vec<Entry>,
    /// The state machine.
    fsm: SimFsm,
    next_proposal: ProposalId,
    /// The parts of the snapshot being received (volatile, as storage stages them).
    staged: SnapshotStage,
}

#[derive(Debug)]
struct InProgress {
    write: PendingWrite,
    done_at: Millis,
    persisted_messages: Vec<Message>,
    snapshot: Option<Snapshot>,
    committed: Vec<Entry>,
}

/// A simulated cluster; see the [module docs](self).
#[derive(Debug)]
pub struct Cluster {
    seed: u64,
    now: Millis,
    rng: SeededRng,
    config: Config,
    membership: Membership,
    nodes: Vec<SimNode>,
    network: Network,
    /// Upper bound of the simulated time a disk write takes.
    pub disk_latency_max_ms: Millis,
    /// When not 0, a node's ready holds committed entries back one time in this many
    /// ([`Raft::hold_apply`], as a driver with a full apply queue does), so that entries
    /// leave the log's cache before they are handed out and are read back from disk.
    pub apply_hold_one_in: u64,
    history: History,
    proposals: BTreeMap<(NodeId, ProposalId), (Bytes, ProposalState)>,
    reads: BTreeMap<(NodeId, ReadId), ReadRecord>,
    /// When nodes snapshot (`None`: never).
    pub snapshot_policy: Option<SnapshotPolicy>,
    /// Reads served (for reports).
    pub reads_served: u64,
    /// Snapshots installed from a leader (for reports).
    pub snapshots_installed: u64,
    /// Restart nodes ignoring their disks' durability records, as stores did before they
    /// kept one: a data-loss fault then goes unnoticed (to show that the checks catch what
    /// follows).
    pub ignore_durability_records: bool,
    /// Data-loss faults injected (for reports).
    pub data_losses: u64,
    steps: u64,
}

impl Cluster {
    /// Grants that named witnesses of lost data (see `RestoredState::recorded_config`), sent
    /// so far.
    pub fn witnessed_grants(&self) -> u64 {
        self.history.witnessed_grants
    }

    /// A cluster of `n` voters (ids `1..=n`) with the default config, on a reliable network.
    pub fn new(n: usize, seed: u64) -> Self {
        Self::with_config(n, seed, Config::default())
    }

    /// A cluster of `n` voters with the given protocol config.
    pub fn with_config(n: usize, seed: u64, config: Config) -> Self {
        Self::with_spares(n, 0, seed, config)
    }

    /// A cluster of `voters` voters (ids `1..=voters`) and `spares` more nodes (the next ids)
    /// that run but are not members until a membership change adds them.
    pub fn with_spares(voters: usize, spares: usize, seed: u64, config: Config) -> Self {
        let ids: Vec<NodeId> = (1..=(voters + spares) as NodeId).collect();
        let membership = Membership::with_voters(1..=voters as NodeId);
        let mut cluster = Self {
            seed,
            now: 0,
            rng: SeededRng::new(seed),
            config,
            membership,
            nodes: Vec::new(),
            network: Network::new(NetworkFaults::RELIABLE),
            disk_latency_max_ms: 2,
            apply_hold_one_in: 0,
            history: History::default(),
            proposals: BTreeMap::new(),
            reads: BTreeMap::new(),
            snapshot_policy: None,
            reads_served: 0,
            snapshots_installed: 0,
            ignore_durability_records: false,
            data_losses: 0,
            steps: 0,
        };
        for id in ids {
            cluster.nodes.push(SimNode {
                id,
                raft: None,
                disk: Disk::fresh(),
                in_progress: None,
                inbox: VecDeque::new(),
                applied: Vec::new(),
                fsm: SimFsm::default(),
                next_proposal: 1,
                staged: SnapshotStage::default(),
            });
            cluster.start_node(id);
        }
        cluster
    }

    /// The seed of this run.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// Simulated time now.
    pub fn now(&self) -> Millis {
        self.now
    }

    /// Node ids, ascending.
    pub fn ids(&self) -> Vec<NodeId> {
        self.nodes.iter().map(|n| n.id).collect()
    }

    /// Steps taken so far (inputs fed to nodes).
    pub fn steps(&self) -> u64 {
        self.steps
    }

    /// Messages handed to the network so far (dropped ones included).
    pub fn messages_sent(&self) -> u64 {
        self.network.sent
    }

    /// The protocol config the nodes use.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Changes how unreliable the network is from now on.
    pub fn set_network_faults(&mut self, faults: NetworkFaults) {
        self.network.faults = faults;
    }

    /// The protocol state of a running node.
    pub fn raft(&self, id: NodeId) -> Option<&Raft> {
        self.node(id).raft.as_ref()
    }

    /// Whether the node is running (not crashed).
    pub fn node_is_up(&self, id: NodeId) -> bool {
        self.node(id).raft.is_some()
    }

    fn node(&self, id: NodeId) -> &SimNode {
        &self.nodes[id as usize - 1]
    }

    fn node_mut(&mut self, id: NodeId) -> &mut SimNode {
        &mut self.nodes[id as usize - 1]
    }

    /// Panics with the seed and a replay hint.
    #[track_caller]
    pub fn fail(&self, what: &str) -> ! {
        panic!(
            "simulation failed at t={}ms: {what}\n  seed = {}\n  replay: cargo xtask sim --seed {}",
            self.now, self.seed, self.seed
        )
    }

    // ---- faults ----

    /// Crashes a node: its volatile state is lost, and so is the part of an in-progress write
    /// that had not reached the disk (a random cut: nothing, the hard state only, or a prefix of
    /// the entries).
    pub fn crash(&mut self, id: NodeId) {
        let cut = match self.rng.range(0, 4) {
            0 => CrashCut::Nothing,
            1 => CrashCut::HardStateOnly,
            _ => CrashCut::Prefix(self.rng.range(0, 8) as usize),
        };
        self.crash_with(id, cut);
    }

    fn crash_with(&mut self, id: NodeId, cut: CrashCut) {
        // Staged snapshot parts survive, but for the last few the crash may cut (or all).
        let staged_cut = match self.rng.range(0, 4) {
            0 => usize::MAX,
            n => n as usize - 1,
        };
        let node = self.node_mut(id);
        if node.raft.take().is_none() {
            return;
        }
        if let Some(p) = node.in_progress.take() {
            node.disk.apply(&p.write, Some(cut));
        }
        node.inbox.clear();
        node.staged.drop_last_parts(staged_cut);
        node.applied.clear();
        node.fsm = SimFsm::default();
        for ((from, _), (_, state)) in self.proposals.iter_mut() {
            if *from == id && matches!(state, ProposalState::Pending | ProposalState::Appended(_)) {
                *state = ProposalState::Unknown;
            }
        }
        for ((from, _), read) in self.reads.iter_mut() {
            if *from == id && matches!(read.state, ReadState::Pending | ReadState::Confirmed(_)) {
                read.state = ReadState::Failed("the node crashed".into());
            }
        }
        self.history.on_restart(id);
    }

    /// Crashes a node and then damages its disk: the last `entries` log entries it had made
    /// durable vanish, and with `forget_hard_state` its term and vote too (a truncated or
    /// deleted write-ahead log). The disk's durability record survives.
    pub fn crash_losing_data(&mut self, id: NodeId, entries: usize, forget_hard_state: bool) {
        self.crash_with(id, CrashCut::Nothing);
        self.node_mut(id).disk.lose_tail(entries, forget_hard_state);
        self.data_losses += 1;
    }

    /// Nodes whose disks lost data that they have not yet received again.
    pub fn nodes_missing_data(&self) -> usize {
        self.nodes
            .iter()
            .filter(|n| n.disk.record.is_some_and(|(_, last)| last > n.disk.last_log_id()))
            .count()
    }

    /// Restarts a crashed node from its disk. No-op if it is running.
    pub fn restart(&mut self, id: NodeId) {
        if self.node_is_up(id) {
            return;
        }
        self.start_node(id);
    }

    fn start_node(&mut self, id: NodeId) {
        let seed = self.rng.next_u64();
        let now = self.now;
        let config = self.config.clone();
        let membership = self.membership.clone();
        let use_record = !self.ignore_durability_records;
        let node = self.node_mut(id);
        let snapshot = node.disk.snapshot.clone();
        let staged = node.staged.staged();
        let (hard_state, recorded_last, recorded_config) = node.disk.open(use_record);
        // A restarted node may hold any prefix of its log as stubs (payloads left on disk).
        let mut entries = node.disk.entries.clone();
        let split = self.rng.range(0, entries.len() as u64 + 1) as usize;
        let stubs = entries.drain(..split).map(|e| EntryStub::from(&e)).collect();
        let restored = RestoredState {
            hard_state,
            snapshot: snapshot.clone(),
            stubs,
            entries,
            membership,
            recorded_last,
            recorded_config,
            staged,
        };
        let raft = match Raft::new(id, config, restored, seed, now) {
            Ok(r) => r,
            Err(e) => self.fail(&format!("node {id} failed to start: {e}")),
        };
        let hs = raft.hard_state();
        self.node_mut(id).raft = Some(raft);
        if let Err(v) = self.history.on_start(id, hs) {
            self.fail(&v);
        }
        if let Some(s) = snapshot {
            self.restore_fsm(id, &s, "restarted from a snapshot at");
        }
    }

    /// Replaces the node's state machine with the snapshot's and checks it against the state
    /// other nodes had at that index.
    fn restore_fsm(&mut self, id: NodeId, snapshot: &Snapshot, how: &str) {
        let fsm = match SimFsm::decode(&snapshot.data.to_bytes()) {
            Ok(f) => f,
            Err(e) => self.fail(&format!("node {id}: snapshot does not decode: {e}")),
        };
        let index = snapshot.meta.last_log_id.index;
        if fsm.index != index {
            self.fail(&format!("node {id}: snapshot at {index} holds a state machine at {}", fsm.index));
        }
        if let Err(v) = self.history.on_fsm_state(id, index, fsm.digest(), how) {
            self.fail(&v);
        }
        let prefix = self.history.committed_prefix(index);
        if prefix.len() as Index != index {
            self.fail(&format!("node {id}: snapshot at {index} covers entries the run never saw committed"));
        }
        let node = self.node_mut(id);
        node.fsm = fsm;
        node.applied = prefix;
    }

    /// Cuts a node off from every other node, both ways.
    pub fn disconnect(&mut self, id: NodeId) {
        for other in self.ids() {
            if other != id {
                self.network.block(id, other);
                self.network.block(other, id);
            }
        }
    }

    /// Reconnects a node to every node that is not itself disconnected... precisely: removes
    /// every block on links to and from `id`.
    pub fn connect(&mut self, id: NodeId) {
        for other in self.ids() {
            self.network.unblock(id, other);
            self.network.unblock(other, id);
        }
    }

    /// Blocks one direction of one link (an asymmetric partition).
    pub fn block_link(&mut self, from: NodeId, to: NodeId) {
        self.network.block(from, to);
    }

    /// Splits the cluster into groups that reach only their own members. Nodes in no group are
    /// isolated.
    pub fn partition(&mut self, groups: &[&[NodeId]]) {
        self.network.heal();
        let group_of = |id: NodeId| groups.iter().position(|g| g.contains(&id));
        for a in self.ids() {
            for b in self.ids() {
                if a != b && (group_of(a).is_none() || group_of(a) != group_of(b)) {
                    self.network.block(a, b);
                }
            }
        }
    }

    /// Removes every block.
    pub fn heal(&mut self) {
        self.network.heal();
    }

    /// Whether `id` can send to and receive from `other`.
    pub fn connected(&self, id: NodeId, other: NodeId) -> bool {
        !self.network.is_blocked(id, other) && !self.network.is_blocked(other, id)
    }

    // ---- clients ----

    /// Submits a command on node `id` (forwarded to the leader if `forward` and `id` is a
    /// follower). Returns a handle to follow it with [`proposal`](Self::proposal), or `None` if
    /// the node is down.
    pub fn propose(&mut self, id: NodeId, command: &[u8], forward: bool) -> Option<(NodeId, ProposalId)> {
        let now = self.now;
        let command = Bytes::copy_from_slice(command);
        let node = self.node_mut(id);
        node.raft.as_ref()?;
        let pid = node.next_proposal;
        node.next_proposal += 1;
        self.proposals.insert((id, pid), (command.clone(), ProposalState::Pending));
        self.feed(id, now, Event::Propose { id: pid, command, forward });
        Some((id, pid))
    }

    /// Submits several commands on node `id` in one batch (as the driver does with proposals
    /// that arrive together): they are stepped together and the node produces one `Ready`.
    pub fn propose_batch(&mut self, id: NodeId, commands: &[&[u8]]) -> Vec<(NodeId, ProposalId)> {
        let now = self.now;
        let mut handles = Vec::new();
        let node = self.node_mut(id);
        if node.raft.is_none() || node.in_progress.is_some() {
            return handles;
        }
        for command in commands {
            let command = Bytes::copy_from_slice(command);
            let node = self.node_mut(id);
            let pid = node.next_proposal;
            node.next_proposal += 1;
            if let Some(raft) = node.raft.as_mut() {
                raft.step(now, Event::Propose { id: pid, command: command.clone(), forward: false });
            }
            self.steps += 1;
            self.proposals.insert((id, pid), (command, ProposalState::Pending));
            handles.push((id, pid));
        }
        self.pump(id);
        handles
    }

    /// The state of a proposal made with [`propose`](Self::propose).
    pub fn proposal(&self, handle: (NodeId, ProposalId)) -> ProposalState {
        self.proposals.get(&handle).map_or(ProposalState::Unknown, |(_, s)| s.clone())
    }

    /// Every proposal acknowledged to its client, with its command.
    pub fn acknowledged(&self) -> Vec<(LogId, Bytes)> {
        self.proposals
            .values()
            .filter_map(|(c, s)| match s {
                ProposalState::Applied(id) => Some((*id, c.clone())),
                _ => None,
            })
            .collect()
    }

    /// Starts a linearizable read of `key` on node `id`. The simulator checks that the read
    /// index it gets covers every write acknowledged before now. `None` if the node is down.
    pub fn read(&mut self, id: NodeId, key: &[u8], mode: ReadMode) -> Option<(NodeId, ReadId)> {
        let now = self.now;
        let must_see = self.acknowledged().iter().map(|(l, _)| l.index).max().unwrap_or(0);
        let node = self.node_mut(id);
        node.raft.as_ref()?;
        let rid = node.next_proposal;
        node.next_proposal += 1;
        let record = ReadRecord { key: Bytes::copy_from_slice(key), must_see, state: ReadState::Pending };
        self.reads.insert((id, rid), record);
        self.feed(id, now, Event::Read { id: rid, mode });
        Some((id, rid))
    }

    /// The state of a read made with [`read`](Self::read).
    pub fn read_state(&self, handle: (NodeId, ReadId)) -> ReadState {
        self.reads.get(&handle).map_or(ReadState::Failed("unknown read".into()), |r| r.state.clone())
    }

    /// Serves the confirmed reads of node `id` whose index its state machine has applied.
    fn serve_reads(&mut self, id: NodeId) {
        let node = &self.nodes[id as usize - 1];
        let applied = node.fsm.index;
        let mut served = 0;
        for ((from, _), read) in self.reads.iter_mut() {
            if *from != id {
                continue;
            }
            if let ReadState::Confirmed(index) = read.state {
                if applied >= index {
                    let value = node.fsm.kv.get(&read.key).cloned();
                    read.state = ReadState::Served { read_index: index, value };
                    served += 1;
                }
            }
        }
        self.reads_served += served;
    }

    /// Proposes a membership change on node `id` (which must lead). `Err` carries the refusal.
    pub fn change_membership(&mut self, id: NodeId, change: &MembershipChange) -> Result<LogId, String> {
        self.wait_idle(id);
        let now = self.now;
        let node = self.node_mut(id);
        if node.in_progress.is_some() {
            return Err("the node is writing".into());
        }
        let raft = node.raft.as_mut().ok_or("the node is down")?;
        // Forced: the simulation's random changes test what the protocol does with any valid
        // change, including those the safety checks would refuse.
        let result = raft.propose_membership_change(now, change, true).map_err(|e| e.to_string());
        self.steps += 1;
        self.pump(id);
        result
    }

    /// Asks node `id` (which must lead) to hand leadership to `to` (or the best voter).
    pub fn transfer_leadership(&mut self, id: NodeId, to: Option<NodeId>) -> Result<NodeId, TransferError> {
        self.wait_idle(id);
        let now = self.now;
        let node = self.node_mut(id);
        let not_leader = TransferError::NotLeader { leader_hint: None };
        if node.in_progress.is_some() {
            return Err(not_leader);
        }
        let raft = node.raft.as_mut().ok_or(not_leader)?;
        let result = raft.transfer_leadership(now, to);
        self.steps += 1;
        self.pump(id);
        result
    }

    /// Lets the cluster run until node `id` has no write in progress (direct calls into the
    /// protocol must not come between `take_ready` and `advance`); at most a few simulated ms.
    fn wait_idle(&mut self, id: NodeId) {
        let limit = self.disk_latency_max_ms + 1;
        self.run_until(limit, |c| c.node(id).in_progress.is_none());
    }

    /// Takes a snapshot of node `id`'s state machine if the policy says so; it is durable at
    /// once and the log is compacted behind it.
    fn maybe_snapshot(&mut self, id: NodeId) {
        let Some(policy) = self.snapshot_policy else { return };
        let node = self.node(id);
        if node.in_progress.is_some() {
            return;
        }
        let Some(raft) = node.raft.as_ref() else { return };
        let applied = node.fsm.index;
        if applied < raft.snapshot_last().index + policy.threshold.max(1) {
            return;
        }
        let Some(term) = raft.term_at(applied) else { return };
        let meta =
            SnapshotMeta { last_log_id: LogId::new(term, applied), membership: raft.membership_at(applied) };
        let snapshot = Snapshot { meta, data: node.fsm.encode().into() };
        let up_to = applied.saturating_sub(policy.keep);
        let node = self.node_mut(id);
        node.disk.save_local_snapshot(snapshot.clone(), up_to);
        if let Some(raft) = node.raft.as_mut() {
            raft.on_snapshot_saved(snapshot, up_to);
        }
    }

    /// The membership in force on node `id`, if it runs.
    pub fn membership_of(&self, id: NodeId) -> Option<Membership> {
        self.raft(id).map(|r| r.membership().clone())
    }

    // ---- running ----

    /// Feeds one event to a running node (queued if a write is in progress) and lets it work.
    fn feed(&mut self, id: NodeId, now: Millis, event: Event) {
        let node = self.node_mut(id);
        let Some(raft) = node.raft.as_mut() else { return };
        if node.in_progress.is_some() {
            // Inputs wait for the write in progress, as in the real driver; a tick is simply
            // taken again later.
            if !matches!(event, Event::Tick) {
                node.inbox.push_back(event);
            }
            return;
        }
        raft.step(now, event);
        self.steps += 1;
        self.pump(id);
    }

    /// Takes the node's ready work, if any, and starts carrying it out.
    fn pump(&mut self, id: NodeId) {
        let now = self.now;
        let mut rounds = 0u32;
        loop {
            rounds += 1;
            if rounds > 100_000 {
                let status = self.node(id).raft.as_ref().map(|r| r.status());
                self.fail(&format!("node {id} produced ready work 100000 times in a row: {status:?}"));
            }
            let hold = self.apply_hold_one_in > 0 && self.rng.chance(1, self.apply_hold_one_in);
            let node = self.node_mut(id);
            if node.in_progress.is_some() {
                return;
            }
            let Some(raft) = node.raft.as_mut() else { return };
            raft.hold_apply(hold);
            if !raft.has_ready() {
                return;
            }
            let mut ready = raft.take_ready();
            if ready.is_empty() {
                let status = self.node(id).raft.as_ref().map(|r| r.status());
                self.fail(&format!("node {id}: has_ready() was true but the ready is empty: {status:?}"));
            }
            if let Err(v) = Self::stage_and_read_snapshots(self.node_mut(id), &mut ready) {
                self.fail(&v);
            }
            let node = &self.nodes[id as usize - 1];
            if let Err(v) = self.history.on_ready(id, &ready, node.raft.as_ref(), &node.disk) {
                self.fail(&v);
            }
            let applied = self.applied_index(id);
            for outcome in &ready.proposals {
                let state = match &outcome.result {
                    Ok(log_id) if log_id.index <= applied => {
                        // The answer came after the entry was applied here: the outcome is not
                        // known to this node any more (the driver reports it as unknown).
                        ProposalState::Unknown
                    }
                    Ok(log_id) => ProposalState::Appended(*log_id),
                    Err(e) => ProposalState::Failed(e.to_string()),
                };
                if let Some((_, s)) = self.proposals.get_mut(&(id, outcome.id)) {
                    *s = state;
                }
            }
            for outcome in &ready.reads {
                let Some(read) = self.reads.get_mut(&(id, outcome.id)) else { continue };
                match outcome.result {
                    Ok(index) => {
                        if index < read.must_see {
                            let msg = format!(
                                "linearizability violated: a read on node {id} got read index {index}, but a write at index {} was acknowledged before the read began",
                                read.must_see
                            );
                            self.fail(&msg);
                        }
                        read.state = ReadState::Confirmed(index);
                    }
                    Err(e) => read.state = ReadState::Failed(e.to_string()),
                }
            }
            for m in ready.messages.iter().cloned() {
                self.network.send(now, m, &mut self.rng);
            }
            let latency =
                if ready.must_persist() { self.rng.range(0, self.disk_latency_max_ms + 1) } else { 0 };
            let progress = InProgress {
                write: PendingWrite::from_ready(&ready),
                done_at: now + latency,
                persisted_messages: ready.persisted_messages,
                snapshot: ready.snapshot,
                committed: ready.committed,
            };
            self.node_mut(id).in_progress = Some(progress);
            if latency > 0 {
                return;
            }
            self.complete_write(id);
        }
    }

    /// Does what storage does with a ready's snapshot parts: stages the parts the leader
    /// sends and turns the received snapshot (which the protocol holds as stored) into the
    /// staged bytes; reads the parts of the node's own snapshot and the log entries before the
    /// cache it sends, answered after `advance` (`None` when the disk no longer holds them).
    fn stage_and_read_snapshots(node: &mut SimNode, ready: &mut Ready) -> Result<(), String> {
        if ready.discard_staged_snapshot {
            node.staged.clear();
        }
        let id = node.id;
        for part in ready.snapshot_parts.drain(..) {
            let at = (part.meta.last_log_id, part.offset);
            node.staged
                .stage(part.term, &part.meta, part.offset, part.data)
                .map_err(|e| format!("node {id}: staging {at:?}: {e}"))?;
        }
        if let Some(snapshot) = ready.snapshot.as_mut().filter(|s| s.data.is_stored()) {
            let last = snapshot.meta.last_log_id;
            snapshot.data = node
                .staged
                .take(&snapshot.meta, snapshot.data.len())
                .map_err(|e| format!("node {id}: received the snapshot of {last}: {e}"))?;
        }
        for read in ready.log_reads.drain(..) {
            let entries: Option<Vec<Entry>> =
                (read.from..=read.last).map(|i| node.disk.get(i).cloned()).collect();
            node.inbox.push_back(Event::LogEntries { to: read.to, from: read.from, entries });
        }
        for read in ready.snapshot_reads.drain(..) {
            let held = node.disk.snapshot.as_ref().filter(|s| s.meta.last_log_id == read.snapshot);
            let data = held.map(|s| s.data.slice(read.offset, read.max));
            node.inbox.push_back(Event::SnapshotChunk {
                to: read.to,
                snapshot: read.snapshot,
                offset: read.offset,
                data,
            });
        }
        Ok(())
    }

    fn applied_index(&self, id: NodeId) -> Index {
        self.node(id).applied.last().map_or(0, |e| e.index)
    }

    /// The node's write is durable: send what waited for it, apply, advance.
    fn complete_write(&mut self, id: NodeId) {
        let now = self.now;
        let Some(p) = self.node_mut(id).in_progress.take() else { return };
        self.node_mut(id).disk.apply(&p.write, None);
        for m in p.persisted_messages {
            if let Err(v) = self.history.on_send(&m) {
                self.fail(&v);
            }
            self.network.send(now, m, &mut self.rng);
        }
        if let Some(snapshot) = &p.snapshot {
            self.restore_fsm(id, snapshot, "installed a snapshot at");
            self.snapshots_installed += 1;
        }
        for e in p.committed {
            self.apply_entry(id, e);
        }
        self.serve_reads(id);
        if let Some(raft) = self.node_mut(id).raft.as_mut() {
            raft.advance();
        }
        self.maybe_snapshot(id);
        // Inputs that arrived meanwhile.
        let inbox: Vec<Event> = self.node_mut(id).inbox.drain(..).collect();
        let stepped = inbox.len() as u64;
        if let Some(raft) = self.node_mut(id).raft.as_mut() {
            for event in inbox {
                raft.step(now, event);
            }
        }
        self.steps += stepped;
        self.pump(id);
    }

    fn apply_entry(&mut self, id: NodeId, entry: Entry) {
        let expected = self.applied_index(id) + 1;
        if entry.index != expected {
            self.fail(&format!("node {id} applied index {} but expected {expected}", entry.index));
        }
        // When applying was held back past a membership change, the latest configuration
        // alone may not hold it.
        let memberships: Vec<Membership> = self
            .node(id)
            .raft
            .as_ref()
            .map_or_else(Vec::new, |r| invariants::memberships_since(r, entry.index));
        let disks: Vec<&Disk> = self.nodes.iter().map(|n| &n.disk).collect();
        if let Err(v) = self.history.on_apply(id, &entry, &disks, &memberships) {
            self.fail(&v);
        }
        let node = self.node_mut(id);
        node.fsm.apply(&entry);
        let digest = node.fsm.digest();
        if let Err(v) = self.history.on_fsm_state(id, entry.index, digest, "applied") {
            self.fail(&v);
        }
        for ((from, _), (command, state)) in self.proposals.iter_mut() {
            if *from != id {
                continue;
            }
            if let ProposalState::Appended(log_id) = state {
                if log_id.index == entry.index {
                    if log_id.term == entry.term {
                        if entry.payload != EntryPayload::Command(command.clone()) {
                            let msg = format!("entry {} has another command than proposed", entry.log_id());
                            self.history.violation(msg);
                        }
                        *state = ProposalState::Applied(*log_id);
                    } else {
                        *state = ProposalState::Failed("another entry was committed at its index".into());
                    }
                }
            }
        }
        if let Some(v) = self.history.take_violation() {
            self.fail(&v);
        }
        self.node_mut(id).applied.push(entry);
    }

    /// The time of the next thing that happens on its own.
    fn next_event_time(&self) -> Option<Millis> {
        let mut t = self.network.next_delivery();
        for n in &self.nodes {
            let Some(raft) = &n.raft else { continue };
            let candidate = match &n.in_progress {
                Some(p) => p.done_at,
                None => raft.next_deadline(),
            };
            t = Some(t.map_or(candidate, |x| x.min(candidate)));
        }
        t
    }

    /// Processes everything due at the next event time, if it is not after `limit`. Returns
    /// `false` (and moves the clock to `limit`) when nothing happens before then.
    pub fn step_until(&mut self, limit: Millis) -> bool {
        let Some(t) = self.next_event_time() else {
            self.now = self.now.max(limit);
            return false;
        };
        if t > limit {
            self.now = self.now.max(limit);
            return false;
        }
        self.now = self.now.max(t);
        let now = self.now;
        // Disk writes that finished.
        for i in 0..self.nodes.len() {
            let id = self.nodes[i].id;
            if self.nodes[i].in_progress.as_ref().is_some_and(|p| p.done_at <= now) {
                self.complete_write(id);
            }
        }
        // Messages due.
        while let Some(m) = self.network.pop_due(now) {
            let to = m.to;
            if to == 0 || to as usize > self.nodes.len() {
                continue;
            }
            self.feed(to, now, Event::Message(m));
        }
        // Timers due.
        for i in 0..self.nodes.len() {
            let id = self.nodes[i].id;
            let due = self.nodes[i].in_progress.is_none()
                && self.nodes[i].raft.as_ref().is_some_and(|r| r.next_deadline() <= now);
            if due {
                self.feed(id, now, Event::Tick);
                if self.nodes[i].in_progress.is_none()
                    && self.nodes[i].raft.as_ref().is_some_and(|r| r.next_deadline() <= now)
                {
                    self.fail(&format!("node {id}: a tick left a timer due in the past"));
                }
            }
        }
        let disks: Vec<&Disk> = self.nodes.iter().map(|n| &n.disk).collect();
        let result = self.history.check_cluster(self.nodes.iter().filter_map(|n| n.raft.as_ref()), &disks);
        if let Err(v) = result {
            self.fail(&v);
        }
        true
    }

    /// Runs the cluster for `ms` of simulated time.
    pub fn run_for(&mut self, ms: Millis) {
        let end = self.now + ms;
        while self.step_until(end) {}
    }

    /// Runs until `done` holds (checked after every step) or `max_ms` pass. Returns whether it
    /// held.
    pub fn run_until(&mut self, max_ms: Millis, mut done: impl FnMut(&Cluster) -> bool) -> bool {
        let end = self.now + max_ms;
        loop {
            if done(self) {
                return true;
            }
            if !self.step_until(end) {
                return done(self);
            }
        }
    }

    // ---- checks (the course-lab harness) ----

    /// Running nodes that think they lead, with their terms.
    pub fn leaders(&self) -> Vec<(NodeId, Term)> {
        self.nodes
            .iter()
            .filter_map(|n| n.raft.as_ref())
            .filter(|r| r.role() == Role::Leader)
            .map(|r| (r.id(), r.term()))
            .collect()
    }

    /// Nodes that are up and not cut off from a majority... precisely: up, and not blocked from
    /// every other node in both directions.
    fn reachable(&self) -> Vec<NodeId> {
        self.ids()
            .into_iter()
            .filter(|id| self.node_is_up(*id))
            .filter(|id| {
                self.ids().iter().any(|o| o != id && self.connected(*id, *o)) || self.nodes.len() == 1
            })
            .collect()
    }

    /// Waits (up to 5 s simulated) until exactly one node of the highest term among reachable
    /// nodes leads; returns it. Fails the run if that does not happen.
    #[track_caller]
    pub fn check_one_leader(&mut self) -> NodeId {
        let mut found = None;
        let ok = self.run_until(5_000, |c| {
            let reachable = c.reachable();
            let mut by_term: BTreeMap<Term, Vec<NodeId>> = BTreeMap::new();
            for (id, term) in c.leaders() {
                if reachable.contains(&id) {
                    by_term.entry(term).or_default().push(id);
                }
            }
            match by_term.iter().next_back() {
                Some((_, ids)) if ids.len() == 1 => {
                    // The leader must be in contact with a majority of its voters to count.
                    let leader = ids[0];
                    let voters = c.membership_of(leader).map(|m| m.voters).unwrap_or_default();
                    let peers = voters.iter().filter(|o| **o == leader || c.connected(leader, **o)).count();
                    if peers > voters.len() / 2 {
                        found = Some(leader);
                        return true;
                    }
                    false
                }
                _ => false,
            }
        });
        match (ok, found) {
            (true, Some(l)) => l,
            _ => self.fail("expected one leader"),
        }
    }

    /// Checks that no reachable node thinks it leads (after letting `ms` pass).
    #[track_caller]
    pub fn check_no_leader(&mut self) {
        let reachable = self.reachable();
        for (id, term) in self.leaders() {
            if reachable.contains(&id) {
                self.fail(&format!("expected no leader, but node {id} leads term {term}"));
            }
        }
    }

    /// Checks that every running, connected node agrees on the term; returns it.
    #[track_caller]
    pub fn check_terms(&self) -> Term {
        let reachable = self.reachable();
        let terms: Vec<Term> = reachable.iter().filter_map(|id| self.raft(*id)).map(|r| r.term()).collect();
        match terms.first() {
            Some(t) if terms.iter().all(|x| x == t) => *t,
            Some(_) => self.fail(&format!("nodes disagree on the term: {terms:?}")),
            None => 0,
        }
    }

    /// How many running nodes applied `index`, and the command there. Fails the run if they
    /// applied different commands.
    pub fn n_committed(&self, index: Index) -> (usize, Option<Bytes>) {
        let mut count = 0;
        let mut command: Option<Bytes> = None;
        for n in &self.nodes {
            if n.raft.is_none() {
                continue;
            }
            let Some(e) = n.applied.get(index as usize - 1) else { continue };
            let c = match &e.payload {
                EntryPayload::Command(c) => c.clone(),
                EntryPayload::Blank | EntryPayload::Membership(_) => Bytes::new(),
            };
            if let Some(prev) = &command {
                if *prev != c {
                    self.fail(&format!("nodes applied different commands at index {index}"));
                }
            }
            command = Some(c);
            count += 1;
        }
        (count, command)
    }

    /// The course lab's `one()`: submits `command` to a leader (trying each node in turn) until
    /// it is applied on at least `expected` nodes. With `retry`, resubmits after a failed
    /// attempt. Returns the index. Fails the run after 10 s of simulated time.
    #[track_caller]
    pub fn one(&mut self, command: &[u8], expected: usize, retry: bool) -> Index {
        let deadline = self.now + 10_000;
        let mut start = 0usize;
        while self.now < deadline {
            let ids = self.ids();
            let mut appended = None;
            for k in 0..ids.len() {
                let id = ids[(start + k) % ids.len()];
                if !self.node_is_up(id) {
                    continue;
                }
                let Some(handle) = self.propose(id, command, false) else { continue };
                self.run_until(50, |c| c.proposal(handle) != ProposalState::Pending);
                if let ProposalState::Appended(log_id) | ProposalState::Applied(log_id) =
                    self.proposal(handle)
                {
                    appended = Some(log_id.index);
                    start = (start + k) % ids.len();
                    break;
                }
            }
            if let Some(index) = appended {
                let ok = self.run_until(2_000, |c| {
                    let (n, cmd) = c.n_committed(index);
                    n >= expected && cmd.as_deref() == Some(command)
                });
                if ok {
                    return index;
                }
                if !retry {
                    self.fail(&format!(
                        "one({:?}) failed to reach agreement",
                        String::from_utf8_lossy(command)
                    ));
                }
            } else {
                self.run_for(50);
            }
        }
        self.fail(&format!("one({:?}) failed to reach agreement", String::from_utf8_lossy(command)))
    }

    /// Submits to node `id` and returns where it was appended, if that node leads.
    pub fn start(&mut self, id: NodeId, command: &[u8]) -> Option<LogId> {
        let handle = self.propose(id, command, false)?;
        self.run_until(20, |c| c.proposal(handle) != ProposalState::Pending);
        match self.proposal(handle) {
            ProposalState::Appended(l) | ProposalState::Applied(l) => Some(l),
            _ => None,
        }
    }

    /// Waits until at least `n` nodes applied `index`; returns the command there.
    #[track_caller]
    pub fn wait_committed(&mut self, index: Index, n: usize, max_ms: Millis) -> Bytes {
        if !self.run_until(max_ms, |c| c.n_committed(index).0 >= n) {
            self.fail(&format!("index {index} was not applied on {n} nodes in {max_ms}ms"));
        }
        self.n_committed(index).1.unwrap_or_default()
    }

    /// Restarts every node from disk and drops every message in flight (the whole cluster
    /// crashed).
    pub fn crash_all_and_restart(&mut self) {
        for id in self.ids() {
            self.crash(id);
        }
        self.network.clear();
        for id in self.ids() {
            self.restart(id);
        }
    }

    /// The durable log of a node (what survives a crash).
    pub fn durable_log(&self, id: NodeId) -> Vec<LogId> {
        self.node(id).disk.entries.iter().map(Entry::log_id).collect()
    }

    /// The last durable log entry of a node.
    pub fn durable_last(&self, id: NodeId) -> LogId {
        self.node(id).disk.last_log_id()
    }

    /// How many entries node `id` has applied (its state machine's index).
    pub fn applied_len(&self, id: NodeId) -> usize {
        self.node(id).applied.len()
    }

    /// Commands applied on node `id` since its last restart, in order.
    pub fn applied(&self, id: NodeId) -> Vec<Entry> {
        self.node(id).applied.clone()
    }
}
