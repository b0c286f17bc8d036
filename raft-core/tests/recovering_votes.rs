//! From the outside review of bf518e5 (recovering voters grant unvouched votes; a candidate needs
//! vouching voters meeting every majority of each voter set).
//!
//! Two kinds of tests:
//! - hand-written scenarios on the deterministic simulator (configurations that differ
//!   between the candidate, the recovering node and the committing leader; joint
//!   configurations; several recovering nodes; a recovering candidate; TimeoutNow);
//! - an *aggressive* randomized harness: unlike `random::run`, data loss is injected on any
//!   node at any time (several nodes missing data at once, two-voter and one-voter
//!   configurations, whole majorities, leaders), which the protocol must survive *safely*
//!   (the simulator's invariants are checked after every step); and a liveness variant in
//!   which the nodes missing data never exceed half of any voter set.
//!
//! The sweeps run `SWEEP_SEEDS` seeds (default 1,000 each in CI; the review ran 200,000 and
//! 80,000) from `SWEEP_START`: `SWEEP_SEEDS=N SWEEP_START=S cargo nextest run --release -p
//! raft-core --test recovering_votes aggressive`. One seed with a trace of every node:
//! `SWEEP_SEEDS=1 SWEEP_START=S SWEEP_VERBOSE=1`.

use std::collections::{BTreeMap, BTreeSet};

mod joint_node;

use raft_core::testing::sim::{Cluster, NetworkFaults, ProposalState};
use raft_core::{Config, Membership, MembershipChange, NodeId, SeededRng};

const ELECTION_MS: u64 = 1_000;

// ---------------------------------------------------------------------------------------
// The aggressive randomized harness.
// ---------------------------------------------------------------------------------------

/// Each node's role, term, vote, last entry and recovery, for tracing a seed step by step.
fn node_states(c: &Cluster) -> Vec<String> {
    c.ids()
        .iter()
        .map(|id| {
            c.raft(*id).map_or_else(
                || "down".into(),
                |r| {
                    format!(
                        "{:?}/{}/{:?}/{}/{:?}",
                        r.role(),
                        r.term(),
                        r.hard_state().voted_for,
                        r.last_log_id(),
                        r.status().recovering_to
                    )
                },
            )
        })
        .collect()
}

/// The message a caught panic carried.
fn panic_message(e: &(dyn std::any::Any + Send)) -> String {
    e.downcast_ref::<String>()
        .cloned()
        .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_default()
}

fn current_leader(c: &Cluster) -> Option<NodeId> {
    c.leaders().into_iter().max_by_key(|(_, t)| *t).map(|(id, _)| id)
}

/// Tracks which nodes are missing data (recovering). For a running node its protocol
/// status; for a down node the last status seen (or the loss just injected).
#[derive(Default)]
struct Missing {
    known: BTreeMap<NodeId, bool>,
    /// Every configuration seen on any node (to keep the liveness variant honest about views
    /// of nodes that are down).
    views: Vec<Membership>,
}

impl Missing {
    fn refresh(&mut self, c: &Cluster) {
        for id in c.ids() {
            if let Some(r) = c.raft(id) {
                self.known.insert(id, r.status().recovering_to.is_some());
                let m = r.membership().clone();
                if !self.views.contains(&m) {
                    self.views.push(m);
                }
            }
        }
        // Keep the view list short: the latest views of running nodes and what was seen.
        if self.views.len() > 64 {
            self.views.drain(..self.views.len() - 64);
        }
    }

    fn is_missing(&self, id: NodeId) -> bool {
        self.known.get(&id).copied().unwrap_or(false)
    }

    /// Whether, with `extra` missing data too, the nodes missing data are at most half of
    /// every voter set of every configuration seen (so whole nodes meet every majority).
    fn at_most_half_with(&self, extra: Option<NodeId>, also: Option<&Membership>) -> bool {
        let missing = |id: NodeId| self.is_missing(id) || Some(id) == extra;
        let ok = |set: &BTreeSet<NodeId>| set.iter().filter(|id| missing(**id)).count() * 2 <= set.len();
        self.views.iter().chain(also).all(|m| ok(&m.voters) && ok(&m.outgoing_voters))
    }
}

fn random_change(c: &Cluster, rng: &mut SeededRng, leader: NodeId) -> Option<MembershipChange> {
    let m = c.membership_of(leader)?;
    let ids = c.ids();
    let outsiders: Vec<NodeId> = ids.iter().copied().filter(|id| !m.contains(*id)).collect();
    let learners: Vec<NodeId> = m.learners.iter().copied().collect();
    let members: Vec<NodeId> = m.members().into_iter().collect();
    let pick = |rng: &mut SeededRng, from: &[NodeId]| from[rng.range(0, from.len() as u64) as usize];
    Some(match rng.range(0, 4) {
        0 if !outsiders.is_empty() => MembershipChange::AddLearner(pick(rng, &outsiders)),
        1 if !learners.is_empty() => MembershipChange::PromoteLearner(pick(rng, &learners)),
        2 if members.len() > 1 && m.voters.len() > 1 => MembershipChange::RemoveNode(pick(rng, &members)),
        _ => {
            let size = rng.range(1, ids.len().min(5) as u64 + 1);
            let mut voters = BTreeSet::new();
            while (voters.len() as u64) < size {
                voters.insert(pick(rng, &ids));
            }
            MembershipChange::SetVoters(voters)
        }
    })
}

/// One aggressive run. With `liveness`, data loss is injected only while the nodes missing
/// data stay at most half of every voter set, and after healing a write must commit.
/// Returns the number of data-loss faults injected, whether the run ended with a leader, and
/// the grants that named witnesses.
pub fn aggressive_run(seed: u64, liveness: bool) -> (u64, bool, u64) {
    let mut rng = SeededRng::new(seed ^ 0x5EED_0F4E_71E4);
    let voters = [2usize, 2, 3, 3, 4, 5, 5][rng.range(0, 7) as usize];
    let spares = rng.range(0, 3) as usize;
    let nodes = voters + spares;
    let min = rng.range(100, 200);
    let check_quorum = rng.chance(2, 3);
    let config = Config {
        election_timeout_min_ms: min,
        election_timeout_max_ms: min + rng.range(50, 200),
        heartbeat_interval_ms: rng.range(10, min / 3),
        pre_vote: rng.chance(1, 2),
        check_quorum,
        lease_read: false,
        snapshot_chunk_bytes: rng.range(8, 256) as usize,
        max_entries_per_append: if rng.chance(1, 2) { rng.range(1, 4) } else { rng.range(4, 64) } as usize,
        max_in_flight_appends: rng.range(1, 8) as usize,
        max_uncommitted_entries: rng.range(4, 1_000) as usize,
        max_uncommitted_bytes: rng.range(64, 64 * 1024),
        rpc_timeout_ms: 500,
        log_cache_bytes: if rng.chance(2, 3) { rng.range(0, 2_048) } else { u64::MAX },
        ..Config::default()
    };
    let mut c = Cluster::with_spares(voters, spares, seed, config);
    c.disk_latency_max_ms = rng.range(0, 5);
    let reconfigure = rng.chance(2, 3);
    // Out of 12 crashes, how many lose data.
    let loss_weight = [1, 2, 4, 8][rng.range(0, 4) as usize];
    let ids = c.ids();
    let mut missing = Missing::default();
    let mut counter = 0u64;
    let end = c.now() + 6_000;
    let verbose = std::env::var("SWEEP_VERBOSE").is_ok();
    while c.now() < end {
        if verbose {
            eprintln!("t={}: {:?}", c.now(), node_states(&c));
        }
        c.run_for(rng.range(1, 60));
        missing.refresh(&c);
        let pick = |rng: &mut SeededRng| ids[rng.range(0, nodes as u64) as usize];
        match rng.range(0, 100) {
            0..=39 => {
                let id = pick(&mut rng);
                counter += 1;
                c.propose(id, format!("k{}={counter}", rng.range(0, 5)).as_bytes(), rng.chance(1, 2));
            }
            40..=45 => {
                // A crash, often losing data (any node, the leader included).
                let id = if rng.chance(1, 3) {
                    current_leader(&c).unwrap_or_else(|| pick(&mut rng))
                } else {
                    pick(&mut rng)
                };
                // Let a term written in one step (a one-voter self-election) become durable
                // first: the protocol simulator would count that never-durable leadership as a
                // leader of the term (see `simulator_flags_a_one_voter_leadership_...` below).
                c.run_until(20, |c| c.raft(id).is_none_or(|r| r.status().term_durable));
                let lose = rng.range(0, 12) < loss_weight
                    && (!liveness || missing.at_most_half_with(Some(id), None));
                if lose {
                    let entries = rng.range(1, 13) as usize;
                    let forget = rng.chance(1, 2);
                    if verbose {
                        eprintln!(
                            "ACTION t={} crash {id} losing {entries} entries, forget hs {forget}",
                            c.now()
                        );
                    }
                    c.crash_losing_data(id, entries, forget);
                    missing.known.insert(id, true);
                } else {
                    if verbose {
                        eprintln!("ACTION t={} crash {id}", c.now());
                    }
                    c.crash(id);
                }
            }
            46..=62 => {
                let id = pick(&mut rng);
                if verbose && !c.node_is_up(id) {
                    eprintln!("ACTION t={} restart {id}", c.now());
                }
                c.restart(id);
            }
            63..=67 => {
                let (mut a, mut b) = (Vec::new(), Vec::new());
                for id in &ids {
                    if rng.chance(1, 2) {
                        a.push(*id);
                    } else {
                        b.push(*id);
                    }
                }
                if verbose {
                    eprintln!("ACTION t={} partition {a:?} {b:?}", c.now());
                }
                c.partition(&[&a, &b]);
            }
            68..=70 => {
                let (from, to) = (pick(&mut rng), pick(&mut rng));
                if from != to {
                    if verbose {
                        eprintln!("ACTION t={} block {from}->{to}", c.now());
                    }
                    c.block_link(from, to);
                }
            }
            71..=73 => {
                let id = pick(&mut rng);
                if verbose {
                    eprintln!("ACTION t={} disconnect {id}", c.now());
                }
                c.disconnect(id);
            }
            74..=81 => {
                if verbose {
                    eprintln!("ACTION t={} heal", c.now());
                }
                c.heal()
            }
            82..=84 => {
                let faults = match rng.range(0, 3) {
                    0 => NetworkFaults::RELIABLE,
                    1 => NetworkFaults::UNRELIABLE,
                    _ => NetworkFaults::LONG_REORDER,
                };
                if verbose {
                    eprintln!("ACTION t={} faults {faults:?}", c.now());
                }
                c.set_network_faults(faults);
            }
            85..=91 if reconfigure => {
                if let Some(leader) = current_leader(&c) {
                    if let Some(change) = random_change(&c, &mut rng, leader) {
                        let target = c.membership_of(leader).and_then(|m| m.target(&change).ok());
                        let allowed = !liveness
                            || target.as_ref().is_some_and(|t| {
                                let joint = c.membership_of(leader).map(|m| m.transition_to(t));
                                missing.at_most_half_with(None, Some(t))
                                    && joint.as_ref().is_none_or(|j| missing.at_most_half_with(None, Some(j)))
                            });
                        if allowed {
                            let r = c.change_membership(leader, &change);
                            if verbose {
                                eprintln!("ACTION t={} change on {leader}: {change:?} -> {r:?}", c.now());
                            }
                        }
                    }
                }
            }
            92..=95 => {
                if let Some(leader) = current_leader(&c) {
                    let to = if rng.chance(1, 2) { Some(pick(&mut rng)) } else { None };
                    let r = c.transfer_leadership(leader, to);
                    if verbose {
                        eprintln!("ACTION t={} transfer {leader} -> {to:?}: {r:?}", c.now());
                    }
                }
            }
            _ => {}
        }
    }
    c.heal();
    c.set_network_faults(NetworkFaults::RELIABLE);
    for id in &ids {
        c.restart(*id);
    }
    if !liveness {
        c.run_for(4_000);
        if std::env::var("SWEEP_VERBOSE").is_ok() {
            eprintln!("seed {seed}: voters {voters} spares {spares} steps {} msgs {} losses {} acked {} leader {:?} now {}", c.steps(), c.messages_sent(), c.data_losses, c.acknowledged().len(), current_leader(&c), c.now());
        }
        return (c.data_losses, current_leader(&c).is_some(), c.witnessed_grants());
    }
    // Liveness: a write commits after healing.
    let deadline = c.now() + 15_000;
    while c.now() < deadline {
        if let Some(leader) = current_leader(&c) {
            if let Some(h) = c.propose(leader, b"final", false) {
                c.run_until(2_000, |c| {
                    !matches!(c.proposal(h), ProposalState::Pending | ProposalState::Appended(_))
                });
                if matches!(c.proposal(h), ProposalState::Applied(_)) {
                    return (c.data_losses, true, c.witnessed_grants());
                }
            }
            c.run_for(20);
        } else {
            c.run_for(50);
        }
    }
    let statuses: Vec<String> =
        ids.iter().filter_map(|id| c.raft(*id)).map(|r| format!("\n    {:?}", r.status())).collect();
    c.fail(&format!(
        "liveness (review harness): no write committed 15 s after healing; nodes:{}",
        statuses.concat()
    ))
}

/// Seeds per sweep by default: about 3 s each in a debug build.
const SWEEP_SEEDS: u64 = 1_000;

fn seed_range() -> (u64, u64) {
    let start = std::env::var("SWEEP_START").ok().and_then(|s| s.parse().ok()).unwrap_or(0);
    let n = std::env::var("SWEEP_SEEDS").ok().and_then(|s| s.parse().ok()).unwrap_or(SWEEP_SEEDS);
    (start, n)
}

fn sweep(liveness: bool) {
    let (start, n) = seed_range();
    let mut failed = Vec::new();
    let mut losses = 0;
    let mut leaderless = 0;
    let mut witnessed = 0;
    for seed in start..start + n {
        match std::panic::catch_unwind(|| aggressive_run(seed, liveness)) {
            Ok((l, leader, w)) => {
                losses += l;
                leaderless += u64::from(!leader);
                witnessed += w;
            }
            Err(e) => {
                let msg = panic_message(e.as_ref());
                eprintln!("SEED {seed} FAILED (liveness={liveness}): {}", msg.lines().next().unwrap_or(""));
                failed.push(seed);
            }
        }
    }
    eprintln!(
        "aggressive sweep liveness={liveness}: seeds {start}..{}: {} data losses injected, {leaderless} ended leaderless, {witnessed} grants naming witnesses, failed: {failed:?}",
        start + n,
        losses
    );
    assert!(failed.is_empty(), "failed seeds: {failed:?}");
}

/// Seeds of the sweeps that once failed. 1185325 (liveness sweep): a candidate of term 5,
/// cut off, won on votes delayed past the commit of entry 3@7 in term 7; the simulator's
/// leader-completeness check wanted entries committed in later terms too (a false alarm, in
/// the checker since before witnesses: only entries committed in an earlier term must be
/// there).
#[test]
fn sweep_seeds_that_once_failed_pass() {
    let (_, leader, _) = aggressive_run(1_185_325, true);
    assert!(leader, "seed 1185325 ended without a leader");
}

/// Safety only, under unrestricted data loss: no invariant may break, whatever was lost.
#[test]
fn aggressive_safety_sweep() {
    sweep(false);
}

/// Liveness when the nodes missing data are at most half of every voter set.
#[test]
fn aggressive_liveness_sweep() {
    sweep(true);
}

// ---------------------------------------------------------------------------------------
// Found by the aggressive sweep (seed 73085): a simulator-checker false positive, not a
// protocol bug and not caused by bf518e5.
// ---------------------------------------------------------------------------------------

/// A one-voter node elects itself and leads "in name only" before its term is durable
/// (`ProtocolStatus::term_durable`); a crash then loses the term. Another node is later
/// elected in that same term (here the leader that the change removed, campaigning after a
/// restart with the configuration not known committed). The protocol simulator's election
/// safety check counts the first, never-durable leadership and fails the run; the node
/// simulator gates on `term_durable` and would not. Nothing of the lost leadership left the
/// node (see `tests/term_durable.rs`). No data loss is involved.
/// Returns the failure message if the simulator flagged two leaders of one term.
fn one_voter_leader_in_name_only(seed: u64) -> Option<String> {
    let outcome = std::panic::catch_unwind(|| {
        let mut c = Cluster::new(2, seed);
        let a = c.check_one_leader();
        let b = 3 - a;
        c.one(b"x", 2, true);
        // Hand the cluster to b alone: a steps down once {b} commits, and sends b TimeoutNow.
        c.change_membership(a, &MembershipChange::SetVoters([b].into())).expect("change");
        // b elects itself (one voter, one step) and leads before its term is durable.
        let led = c.run_until(3_000, |c| {
            c.raft(b).is_some_and(|r| r.role() == raft_core::Role::Leader && !r.status().term_durable)
        });
        if !led {
            return None;
        }
        let lost_term = c.raft(b).map(|r| r.term()).expect("the node runs");
        // Crash b now, before the write completes (a crash losing nothing durable, i.e. the
        // write in progress is lost whole), and restart a (its commit index starts at 0: it
        // campaigns as a voter of the configuration before the latest).
        c.crash_losing_data(b, 0, false);
        c.crash(a);
        c.restart(a);
        c.run_for(200);
        c.restart(b);
        c.run_for(2_000);
        Some(lost_term)
    });
    match outcome {
        Ok(_) => None,
        Err(e) => Some(panic_message(e.as_ref())),
    }
}

#[test]
fn the_simulator_counts_a_leader_only_once_its_term_is_durable() {
    let flagged: Vec<(u64, String)> =
        (0..200u64).filter_map(|s| one_voter_leader_in_name_only(s).map(|m| (s, m))).collect();
    for (s, m) in flagged.iter().take(3) {
        eprintln!("seed {s}: {}", m.lines().next().unwrap_or(""));
    }
    eprintln!("{} of 200 seeds flagged", flagged.len());
    // The checker's false positive (found by the review; fixed: the protocol simulator counts
    // a leader once its term is durable, as the node simulation does).
    assert!(flagged.is_empty(), "the protocol simulator flagged {} seeds", flagged.len());
}

// ---------------------------------------------------------------------------------------
// Hand-written scenarios (each expected to hold; they document what was tried).
// ---------------------------------------------------------------------------------------

fn applied(c: &mut Cluster, h: Option<(NodeId, raft_core::ProposalId)>) -> raft_core::LogId {
    let h = h.expect("the leader runs");
    assert!(c.run_until(3_000, |c| matches!(c.proposal(h), ProposalState::Applied(_))), "not applied");
    let ProposalState::Applied(id) = c.proposal(h) else { unreachable!() };
    id
}

/// Two of five lose an entry committed by {a, b1, b2}; a goes down. The remaining two lack
/// it and the two recovering nodes only grant unvouched: no leader. When a returns it is the
/// only electable node.
#[test]
fn two_of_five_lose_a_committed_entry_and_no_leader_lacks_it() {
    for seed in 1..=6u64 {
        let mut c = Cluster::new(5, seed);
        let a = c.check_one_leader();
        c.one(b"all", 5, true);
        let others: Vec<NodeId> = c.ids().into_iter().filter(|id| *id != a).collect();
        let (b1, b2, d1, d2) = (others[0], others[1], others[2], others[3]);
        c.disconnect(d1);
        c.disconnect(d2);
        let h = c.propose(a, b"with b1 and b2 only", false);
        let e = applied(&mut c, h);
        c.run_for(100);
        c.crash_losing_data(b1, 1, true);
        c.crash_losing_data(b2, 1, false);
        c.crash(a);
        c.connect(d1);
        c.connect(d2);
        c.restart(b1);
        c.restart(b2);
        assert!(c.raft(b1).expect("the node runs").status().recovering_to.is_some(), "seed {seed}");
        c.run_for(5 * ELECTION_MS);
        c.check_no_leader();
        c.restart(a);
        let l = c.check_one_leader();
        assert_eq!(l, a, "seed {seed}");
        assert!(c.acknowledged().iter().any(|(id, _)| *id == e));
        c.one(b"after", 5, true);
    }
}

/// A recovering candidate vouched for by another recovering node: a (leader) appends two
/// entries only it holds and loses one of them; b loses the last entry committed with a.
/// c lacks it. Only a can be elected: b vouches because a's log reaches b's record.
#[test]
fn a_recovering_candidate_is_vouched_for_by_another_recovering_node() {
    for seed in 21..=26u64 {
        let mut c = Cluster::new(3, seed);
        let a = c.check_one_leader();
        c.one(b"all", 3, true);
        let (b, d) = ((a % 3) + 1, ((a + 1) % 3) + 1);
        c.disconnect(d);
        let h = c.propose(a, b"a and b", false);
        let e = applied(&mut c, h);
        c.run_for(100);
        c.disconnect(b);
        c.propose(a, b"a only 1", false);
        c.propose(a, b"a only 2", false);
        c.run_for(100);
        c.crash_losing_data(a, 1, false);
        c.crash_losing_data(b, 1, true);
        c.connect(b);
        c.connect(d);
        c.restart(a);
        c.restart(b);
        assert!(c.raft(a).expect("the node runs").status().recovering_to.is_some());
        assert!(c.raft(b).expect("the node runs").status().recovering_to.is_some());
        let l = c.check_one_leader();
        assert_eq!(l, a, "seed {seed}");
        assert!(c.acknowledged().iter().any(|(id, _)| *id == e));
        c.one(b"after", 3, true);
        assert!(c.run_until(3_000, |c| c.ids().iter().all(|id| c
            .raft(*id)
            .expect("the node runs")
            .status()
            .recovering_to
            .is_none())));
    }
}

/// Joint configuration, each voter set on its own. Node a (leader of {1,2,3}) appends the
/// joint configuration ({1,2,3,4} / {1,2,3}) while cut off, so only it holds it; the
/// others elect b and commit entries with {b, c}. c then loses those entries and b goes
/// down. a (config joint) can collect grants forming a quorum of both sets: itself, c
/// (recovering, its log behind a's: unvouched) and 4 (empty log: vouches). The vouching
/// voters {a, 4} meet every *quorum* of the joint configuration, but {b, c} is a majority of
/// the outgoing set outside them: a must not be elected (it lacks b's entries).
#[test]
fn a_joint_configuration_needs_vouchers_in_each_voter_set() {
    let mut ran = 0;
    for seed in 31..=40u64 {
        let config = Config { pre_vote: false, ..Config::default() };
        let mut c = Cluster::with_spares(3, 1, seed, config);
        let a = c.check_one_leader();
        c.one(b"all", 3, true);
        c.run_for(100);
        c.disconnect(a);
        c.disconnect(4);
        if c.change_membership(a, &MembershipChange::SetVoters([1, 2, 3, 4].into())).is_err() {
            continue;
        }
        let joint = c.membership_of(a).expect("the node runs");
        assert!(joint.is_joint());
        let b = c.check_one_leader();
        assert_ne!(b, a);
        let d = (1..=3).find(|id| *id != a && *id != b).expect("another node");
        let before = c.durable_log(d).len();
        let h = c.propose(b, b"b and d", false);
        let e = applied(&mut c, h);
        c.run_for(100);
        let gained = c.durable_log(d).len() - before;
        // d forgets everything of b's term (its log ends where a's does, before a's joint
        // entry); b goes down.
        c.crash_losing_data(d, gained + 1, false);
        c.crash(b);
        c.connect(a);
        c.connect(4);
        c.restart(d);
        let d_last = c.durable_last(d);
        let a_last = c.raft(a).expect("the node runs").last_log_id();
        if a_last < d_last || c.raft(d).expect("the node runs").status().recovering_to.is_none() {
            continue;
        }
        ran += 1;
        c.run_for(5 * ELECTION_MS);
        c.check_no_leader();
        c.restart(b);
        let l = c.check_one_leader();
        assert!(c.raft(l).expect("the node runs").term_at(e.index) == Some(e.term));
    }
    assert!(ran >= 3, "scenario set up in only {ran} seeds");
}

/// A node removed by a change (it still runs) loses the entries that removed it: its
/// configuration goes back to one in which it is a voter, and (now that recovering nodes
/// campaign) it campaigns. The members hold newer logs and refuse; the cluster keeps its
/// leader and keeps writing (check-quorum keeps the higher terms out).
#[test]
fn a_removed_node_that_forgets_its_removal_neither_wins_nor_disrupts() {
    for seed in 41..=46u64 {
        let mut c = Cluster::new(3, seed);
        let l = c.check_one_leader();
        c.one(b"all", 3, true);
        let r = (1..=3).find(|id| *id != l).expect("another node");
        let stay: BTreeSet<NodeId> = (1..=3).filter(|id| *id != r).collect();
        let before = c.durable_log(r).len();
        c.change_membership(l, &MembershipChange::SetVoters(stay)).expect("change");
        assert!(c.run_until(3_000, |c| c.membership_of(l).is_some_and(|m| !m.is_joint() && !m.is_voter(r))));
        c.run_for(200);
        let gained = c.durable_log(r).len() - before;
        c.crash_losing_data(r, gained.max(1), true);
        c.restart(r);
        assert!(
            c.membership_of(r).expect("the node runs").is_voter(r),
            "seed {seed}: r still knows it was removed"
        );
        for i in 0..10 {
            c.one(format!("w{i}").as_bytes(), 2, true);
            c.run_for(100);
        }
        let leader = c.check_one_leader();
        assert_ne!(leader, r);
    }
}

/// The tally behind `a_joint_configuration_needs_vouchers_in_each_voter_set`, on one node:
/// node 1 holds the joint configuration ({1,2,3,4} / {1,2,3}); grants from itself, 3
/// (unvouched) and 4 form a quorum of both sets, and the vouchers {1, 4} share a node with
/// every quorum of the joint configuration, but the outgoing set's majority {2, 3} lies
/// outside them. Not elected; with 2 vouching instead of 3 granting, elected.
#[test]
fn the_tally_checks_each_voter_set_on_its_own() {
    use raft_core::{Event, LogId, Message, Payload, Raft, Role};
    let joint = Membership {
        voters: [1, 2, 3, 4].into(),
        outgoing_voters: [1, 2, 3].into(),
        learners: BTreeSet::new(),
    };
    let node = || joint_node::campaigning_under(&joint, false);
    let vote = |n: &mut Raft, from: NodeId, vouches: bool| {
        let term = n.term();
        let m = Message {
            from,
            to: 1,
            term,
            payload: Payload::RequestVoteResponse {
                pre_vote: false,
                granted: true,
                vouches,
                witnesses: None,
            },
        };
        n.step(100_000, Event::Message(m));
        let _ = n.take_ready();
        n.advance();
    };
    let mut n = node();
    vote(&mut n, 3, false);
    vote(&mut n, 4, true);
    assert_ne!(
        n.role(),
        Role::Leader,
        "elected with the outgoing set's majority {{2, 3}} outside the vouchers"
    );
    let mut n = node();
    vote(&mut n, 2, true);
    vote(&mut n, 4, true);
    assert_eq!(n.role(), Role::Leader);
    let _ = LogId::default();
}

/// Three nodes after five writes; a follower `r` of leader `l` restarts having lost its last
/// three entries, its term and its vote. Returns `(cluster, l, r)`.
fn follower_restarted_without_its_last_entries(seed: u64) -> (Cluster, NodeId, NodeId) {
    let mut c = Cluster::new(3, seed);
    let l = c.check_one_leader();
    for i in 0..5 {
        c.one(format!("w{i}").as_bytes(), 3, true);
    }
    let r = (1..=3).find(|id| *id != l).expect("another node");
    c.crash_losing_data(r, 3, true);
    c.restart(r);
    (c, l, r)
}

/// A named leadership transfer to a node that has just restarted having lost data. The
/// leader still holds the target's match index from before the loss, takes it as caught up
/// and sends TimeoutNow at once; the target, which has not heard from a leader since its
/// restart, ignores it, and the transfer is silently abandoned after its deadline (a liveness
/// nit, not a safety issue; not new in bf518e5, which only lets a recovering target act on a
/// TimeoutNow it would previously ignore). Once the target has caught up, a transfer to it
/// completes and it leads whole.
#[test]
fn a_named_transfer_to_a_node_that_lost_data() {
    let mut abandoned = 0;
    for seed in 51..=56u64 {
        let (mut c, l, r) = follower_restarted_without_its_last_entries(seed);
        assert!(c.raft(r).expect("the node runs").status().recovering_to.is_some());
        let _ = c.transfer_leadership(l, Some(r));
        let done = c.run_until(1_000, |c| c.raft(r).is_some_and(|x| x.role() == raft_core::Role::Leader));
        if !done {
            abandoned += 1;
        }
        let leader = c.check_one_leader();
        if leader != r {
            assert!(c.run_until(3_000, |c| c.raft(r).is_some_and(|x| x.status().recovering_to.is_none())));
            c.transfer_leadership(leader, Some(r)).expect("transfer");
            let done = c.run_until(3_000, |c| c.raft(r).is_some_and(|x| x.role() == raft_core::Role::Leader));
            assert!(done, "seed {seed}: transfer to the caught-up node did not complete");
        }
        c.one(b"after", 3, true);
    }
    eprintln!("transfers started right after the restart and abandoned: {abandoned} of 6");
}

/// Minor liveness cost, new in bf518e5 (a recovering node used to ignore TimeoutNow): the
/// target of a named transfer restarted having lost data and has heard the leader's first
/// heartbeat, but its refusal has not reached the leader, which still holds its pre-loss match
/// index, takes it as caught up and sends TimeoutNow. The target now campaigns while recovering
/// (its own vote unvouched), with `leadership_transfer` set, so the voters take its term even
/// within their leases: the leader is deposed by an election the target cannot win (both
/// others hold entries it lacks), and the cluster goes through another election. Safety holds.
/// Failed in every seed tried until a recovering node ignored TimeoutNow again.
#[test]
fn a_transfer_to_a_node_still_recovering_does_not_depose_the_leader() {
    let mut deposed = Vec::new();
    for seed in 60..70u64 {
        let (mut c, l, r) = follower_restarted_without_its_last_entries(seed);
        let term0 = c.raft(l).expect("the node runs").term();
        c.run_until(1_000, |c| c.raft(r).is_some_and(|x| x.leader() == Some(l)));
        assert!(c.raft(r).expect("the node runs").status().recovering_to.is_some());
        let _ = c.transfer_leadership(l, Some(r));
        let campaigned_recovering = c.run_until(500, |c| {
            c.raft(r)
                .is_some_and(|x| x.role() == raft_core::Role::Candidate && x.status().recovering_to.is_some())
        });
        c.run_for(1_000);
        let leader = c.check_one_leader();
        let term = c.raft(leader).expect("the node runs").term();
        if campaigned_recovering && term > term0 + 1 {
            deposed.push((seed, l, leader, term0, term));
        }
    }
    assert!(
        deposed.is_empty(),
        "(seed, old leader, new leader, term before, term after) where a recovering transfer target campaigned in vain: {deposed:?}"
    );
}
