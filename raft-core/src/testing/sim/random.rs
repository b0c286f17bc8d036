//! Randomized runs: one seed picks the cluster size, the protocol options and a schedule of
//! faults (crashes with torn writes, restarts, partitions of any shape, one-way links, loss,
//! duplication, reordering, long delays) mixed with client proposals, linearizable reads
//! (ReadIndex and lease), snapshots at random thresholds (streamed in small chunks),
//! membership changes (learners, promotions, removals, joint voter changes) and leadership
//! transfers. After the faults heal the cluster must make progress again (liveness), and every
//! acknowledged proposal must be committed (no acknowledged write is lost).

use std::collections::BTreeSet;

use crate::config::Config;
use crate::membership::MembershipChange;
use crate::protocol::ReadMode;
use crate::rng::SeededRng;
use crate::types::{EntryPayload, Millis, NodeId};

use super::{Cluster, NetworkFaults, ProposalState, ReadState, SnapshotPolicy};

/// Knobs of a randomized run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RandomRunOptions {
    /// Simulated time of the fault phase.
    pub chaos_ms: Millis,
    /// After healing, the time within which a leader must be elected and a proposal applied on
    /// every node.
    pub liveness_ms: Millis,
    /// Inject data-loss faults: a crashed node's disk loses its last few durable entries and
    /// maybe its term and vote (one node at a time, in clusters of at least three voters).
    pub data_loss: bool,
    /// Restart nodes ignoring their disks' durability records (see
    /// [`Cluster::ignore_durability_records`]): with `data_loss`, runs must then fail.
    pub ignore_durability_records: bool,
}

impl Default for RandomRunOptions {
    fn default() -> Self {
        Self { chaos_ms: 6_000, liveness_ms: 10_000, data_loss: true, ignore_durability_records: false }
    }
}

/// What a successful run did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RandomRunReport {
    /// The seed.
    pub seed: u64,
    /// Cluster size.
    pub nodes: usize,
    /// Inputs fed to nodes.
    pub steps: u64,
    /// Proposals acknowledged to clients.
    pub acknowledged: usize,
    /// Highest index applied on every member at the end.
    pub final_index: u64,
    /// Linearizable reads served.
    pub reads_served: u64,
    /// Membership changes accepted.
    pub membership_changes: u64,
    /// Snapshots installed from a leader.
    pub snapshots_installed: u64,
    /// Data-loss faults injected.
    pub data_losses: u64,
}

/// The leader of the highest term among running nodes.
fn current_leader(cluster: &Cluster) -> Option<NodeId> {
    cluster.leaders().into_iter().max_by_key(|(_, t)| *t).map(|(id, _)| id)
}

/// Whether a node may lose data now without making the cluster lose committed entries for
/// good: no other node is missing data, and each voter set of every running node's
/// configuration (the outgoing one too, during a joint change) has at least three voters, so the node is a
/// minority of each. (A node that lost entries it may have acknowledged cannot be outvoted in
/// a smaller one: that loss needs an operator.)
fn may_lose_data(cluster: &Cluster) -> bool {
    let large = |voters: &BTreeSet<NodeId>| voters.len() >= 3;
    let views: Vec<_> = cluster.ids().into_iter().filter_map(|id| cluster.membership_of(id)).collect();
    current_leader(cluster).is_some()
        && cluster.nodes_missing_data() == 0
        && views
            .iter()
            .all(|m| large(&m.voters) && (m.outgoing_voters.is_empty() || large(&m.outgoing_voters)))
}

/// A random membership change proposed on the current leader; returns whether it was accepted.
fn change_membership(cluster: &mut Cluster, rng: &mut SeededRng) -> bool {
    let Some(leader) = current_leader(cluster) else { return false };
    let Some(m) = cluster.membership_of(leader) else { return false };
    let ids = cluster.ids();
    let outsiders: Vec<NodeId> = ids.iter().copied().filter(|id| !m.contains(*id)).collect();
    let learners: Vec<NodeId> = m.learners.iter().copied().collect();
    let members: Vec<NodeId> = m.members().into_iter().collect();
    let pick = |rng: &mut SeededRng, from: &[NodeId]| from[rng.range(0, from.len() as u64) as usize];
    // While a node is missing data, configurations keep three voters or more: in a smaller
    // one that node could be a majority, whose loss no protocol can undo.
    let min_voters = if cluster.nodes_missing_data() > 0 { 3 } else { 1 };
    let change = match rng.range(0, 4) {
        0 if !outsiders.is_empty() => MembershipChange::AddLearner(pick(rng, &outsiders)),
        1 if !learners.is_empty() => MembershipChange::PromoteLearner(pick(rng, &learners)),
        2 if members.len() > 1 && m.voters.len() > min_voters => {
            MembershipChange::RemoveNode(pick(rng, &members))
        }
        _ => {
            let size = rng.range(min_voters.min(ids.len()) as u64, ids.len().min(5) as u64 + 1);
            let mut voters = BTreeSet::new();
            while (voters.len() as u64) < size {
                voters.insert(pick(rng, &ids));
            }
            MembershipChange::SetVoters(voters)
        }
    };
    cluster.change_membership(leader, &change).is_ok()
}

/// The course lab's Figure 8 schedule: propose on every node, wait a little, crash the leader,
/// keep a majority up by restarting others. Old-term entries end up on a majority while their
/// leaders die, which is where counting replicas of an older term goes wrong.
fn leader_churn(cluster: &mut Cluster, rng: &mut SeededRng, end: Millis, counter: &mut u64) {
    let ids = cluster.ids();
    let n = ids.len();
    if rng.chance(1, 2) {
        cluster.set_network_faults(NetworkFaults::UNRELIABLE);
    }
    let mut up = ids.iter().filter(|id| cluster.node_is_up(**id)).count();
    while cluster.now() < end {
        let mut leader = None;
        for id in &ids {
            *counter += 1;
            let command = format!("f{counter}");
            if let Some(handle) = cluster.propose(*id, command.as_bytes(), false) {
                cluster.run_for(0);
                if matches!(cluster.proposal(handle), ProposalState::Appended(_)) {
                    leader = Some(*id);
                }
            }
        }
        let election_min = cluster.config().election_timeout_min_ms;
        let wait = if rng.chance(1, 10) { rng.range(0, election_min / 2) } else { rng.range(0, 13) };
        cluster.run_for(wait);
        if let Some(l) = leader {
            if cluster.node_is_up(l) {
                cluster.crash(l);
                up -= 1;
            }
        }
        if up < n / 2 + 1 {
            let id = ids[rng.range(0, n as u64) as usize];
            if !cluster.node_is_up(id) {
                cluster.restart(id);
                up += 1;
            }
        }
    }
    cluster.set_network_faults(NetworkFaults::RELIABLE);
}

/// Runs one randomized simulation. Panics (with the seed) on any invariant violation or when
/// the healed cluster makes no progress.
pub fn run(seed: u64, options: RandomRunOptions) -> RandomRunReport {
    let mut rng = SeededRng::new(seed ^ 0xA5A5_5A5A_DEAD_BEEF);
    let voters = [3usize, 3, 5, 5, 7][rng.range(0, 5) as usize];
    let spares = if voters < 7 { rng.range(0, 3) as usize } else { 0 };
    let nodes = voters + spares;
    let min = rng.range(100, 200);
    let check_quorum = rng.chance(3, 4);
    let config = Config {
        election_timeout_min_ms: min,
        election_timeout_max_ms: min + rng.range(50, 200),
        heartbeat_interval_ms: rng.range(10, min / 3),
        pre_vote: rng.chance(3, 4),
        check_quorum,
        lease_read: check_quorum && rng.chance(1, 2),
        snapshot_chunk_bytes: rng.range(8, 256) as usize,
        max_entries_per_append: if rng.chance(1, 2) { rng.range(1, 4) } else { rng.range(4, 64) } as usize,
        max_in_flight_appends: rng.range(1, 8) as usize,
        max_uncommitted_entries: rng.range(4, 1_000) as usize,
        max_uncommitted_bytes: rng.range(64, 64 * 1024),
        rpc_timeout_ms: 500,
        // Often a cache of a few entries: followers that lag are sent entries read from disk.
        log_cache_bytes: if rng.chance(2, 3) { rng.range(0, 2_048) } else { u64::MAX },
        ..Config::default()
    };
    let mut cluster = Cluster::with_spares(voters, spares, seed, config);
    cluster.ignore_durability_records = options.ignore_durability_records;
    cluster.disk_latency_max_ms = rng.range(0, 5);
    if rng.chance(1, 2) {
        cluster.apply_hold_one_in = rng.range(2, 5);
    }
    if rng.chance(2, 3) {
        cluster.snapshot_policy = Some(SnapshotPolicy { threshold: rng.range(3, 60), keep: rng.range(0, 8) });
    }
    let reconfigure = rng.chance(1, 2);
    let mut membership_changes = 0u64;
    let ids = cluster.ids();
    let mut counter = 0u64;
    let end = cluster.now() + options.chaos_ms;
    if rng.chance(1, 3) {
        leader_churn(&mut cluster, &mut rng, end, &mut counter);
    }

    while cluster.now() < end {
        let wait = rng.range(1, 60);
        cluster.run_for(wait);
        match rng.range(0, 100) {
            0..=41 => {
                let id = ids[rng.range(0, nodes as u64) as usize];
                counter += 1;
                let command = format!("k{}={counter}", rng.range(0, 5));
                cluster.propose(id, command.as_bytes(), rng.chance(1, 2));
            }
            42..=49 => {
                let id = ids[rng.range(0, nodes as u64) as usize];
                let key = format!("k{}", rng.range(0, 5));
                let mode = if rng.chance(1, 2) { ReadMode::Lease } else { ReadMode::ReadIndex };
                cluster.read(id, key.as_bytes(), mode);
            }
            50..=55 => {
                let id = ids[rng.range(0, nodes as u64) as usize];
                if options.data_loss && rng.chance(1, 3) && may_lose_data(&cluster) {
                    let entries = rng.range(1, 9) as usize;
                    cluster.crash_losing_data(id, entries, rng.chance(1, 2));
                } else {
                    cluster.crash(id);
                }
            }
            56..=63 => {
                let id = ids[rng.range(0, nodes as u64) as usize];
                cluster.restart(id);
            }
            64..=67 => {
                // A random split into two groups.
                let mut a: Vec<NodeId> = Vec::new();
                let mut b: Vec<NodeId> = Vec::new();
                for id in &ids {
                    if rng.chance(1, 2) {
                        a.push(*id);
                    } else {
                        b.push(*id);
                    }
                }
                cluster.partition(&[&a, &b]);
            }
            68..=70 => {
                let from = ids[rng.range(0, nodes as u64) as usize];
                let to = ids[rng.range(0, nodes as u64) as usize];
                if from != to {
                    cluster.block_link(from, to);
                }
            }
            71..=73 => {
                let id = ids[rng.range(0, nodes as u64) as usize];
                cluster.disconnect(id);
            }
            74..=80 => cluster.heal(),
            81..=84 => {
                let faults = match rng.range(0, 3) {
                    0 => NetworkFaults::RELIABLE,
                    1 => NetworkFaults::UNRELIABLE,
                    _ => NetworkFaults::LONG_REORDER,
                };
                cluster.set_network_faults(faults);
            }
            85..=86 => {
                // Crash the leader, if there is one.
                if let Some(leader) = current_leader(&cluster) {
                    cluster.crash(leader);
                }
            }
            87..=91 if reconfigure && change_membership(&mut cluster, &mut rng) => {
                membership_changes += 1;
            }
            94..=96 => {
                // Read on every node that believes it leads: a deposed leader cut off from
                // the others must not answer from its stale state.
                let key = format!("k{}", rng.range(0, 5));
                let mode = if rng.chance(1, 2) { ReadMode::Lease } else { ReadMode::ReadIndex };
                for (leader, _) in cluster.leaders() {
                    cluster.read(leader, key.as_bytes(), mode);
                }
            }
            92..=93 => {
                if let Some(leader) = current_leader(&cluster) {
                    let to =
                        if rng.chance(1, 2) { Some(ids[rng.range(0, nodes as u64) as usize]) } else { None };
                    let _ = cluster.transfer_leadership(leader, to);
                }
            }
            _ => {}
        }
    }

    // Heal everything and check liveness.
    cluster.heal();
    cluster.set_network_faults(NetworkFaults::RELIABLE);
    for id in &ids {
        cluster.restart(*id);
    }
    let deadline = cluster.now() + options.liveness_ms;
    let final_command = b"final".to_vec();
    let mut final_index = None;
    while cluster.now() < deadline && final_index.is_none() {
        let leader = cluster.leaders().into_iter().max_by_key(|(_, t)| *t).map(|(id, _)| id);
        if let Some(leader) = leader {
            if let Some(handle) = cluster.propose(leader, &final_command, false) {
                let settled = |c: &Cluster| {
                    matches!(
                        c.proposal(handle),
                        ProposalState::Applied(_) | ProposalState::Failed(_) | ProposalState::Unknown
                    )
                };
                cluster.run_until(2_000, settled);
                if let ProposalState::Applied(log_id) = cluster.proposal(handle) {
                    let members = cluster.membership_of(leader).map(|m| m.members()).unwrap_or_default();
                    let left = deadline.saturating_sub(cluster.now());
                    let all_applied =
                        |c: &Cluster| members.iter().all(|m| c.applied_len(*m) >= log_id.index as usize);
                    if cluster.run_until(left, all_applied) {
                        final_index = Some(log_id.index);
                    }
                } else {
                    // Refused (busy, or leadership changed): try again a little later.
                    cluster.run_for(20);
                }
            } else {
                cluster.run_for(20);
            }
        } else {
            cluster.run_for(50);
        }
    }
    let Some(final_index) = final_index else {
        let statuses: Vec<String> = ids
            .iter()
            .filter_map(|id| cluster.raft(*id))
            .map(|r| format!("\n    {:?}", r.status()))
            .collect();
        cluster.fail(&format!(
            "liveness: no proposal was applied on every member within {}ms after healing; nodes:{}",
            options.liveness_ms,
            statuses.concat()
        ))
    };

    // Let stragglers (proposals acknowledged after the final one) settle, then compare against
    // the longest applied log.
    cluster.run_for(1_000);
    let reference = ids.iter().copied().max_by_key(|id| cluster.applied(*id).len()).unwrap_or(ids[0]);
    let applied = cluster.applied(reference);
    // Every acknowledged write is in the final log, at the position it was acknowledged at.
    for (log_id, command) in cluster.acknowledged() {
        let Some(e) = applied.get(log_id.index as usize - 1) else {
            cluster.fail(&format!(
                "acknowledged entry {log_id} is missing from the final log (node {reference} applied {})",
                applied.len()
            ));
        };
        if e.log_id() != log_id || e.payload != EntryPayload::Command(command) {
            cluster.fail(&format!("acknowledged entry {log_id} was replaced by {}", e.log_id()));
        }
    }
    // Every node applied the same prefix.
    for id in &ids {
        let other = cluster.applied(*id);
        let n = other.len().min(applied.len());
        if other[..n] != applied[..n] {
            cluster.fail(&format!("nodes {reference} and {id} applied different logs"));
        }
    }
    // A final linearizable read on the leader sees the last write of its key in the final log.
    if let Some(leader) = current_leader(&cluster) {
        if let Some(handle) = cluster.read(leader, b"k0", ReadMode::ReadIndex) {
            cluster.run_until(2_000, |c| {
                !matches!(c.read_state(handle), ReadState::Pending | ReadState::Confirmed(_))
            });
            if let ReadState::Served { read_index, value } = cluster.read_state(handle) {
                let expected =
                    applied[..(read_index as usize).min(applied.len())].iter().rev().find_map(|e| {
                        match &e.payload {
                            EntryPayload::Command(c) if c.starts_with(b"k0=") => Some(c.slice(3..)),
                            _ => None,
                        }
                    });
                if value != expected {
                    cluster.fail(&format!("final read of k0 at index {read_index} returned {value:?}, the log says {expected:?}"));
                }
            }
        }
    }
    RandomRunReport {
        seed,
        nodes,
        steps: cluster.steps(),
        acknowledged: cluster.acknowledged().len(),
        final_index,
        reads_served: cluster.reads_served,
        membership_changes,
        snapshots_installed: cluster.snapshots_installed,
        data_losses: cluster.data_losses,
    }
}
