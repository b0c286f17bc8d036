//! Picking a node of a service, weighted by priority: [`SmoothWeighted`] round-robin (nginx's
//! smooth weighted round-robin), [`pick_weighted_random`], and the [`Balancer`] that keeps one
//! round-robin state per service. Local to a node: nothing here is replicated.

use std::collections::BTreeMap;
use std::sync::{Mutex, PoisonError};

use raft_core::SeededRng;

use crate::error::BalanceError;
use crate::hash::StableHasher;
use crate::service::ServiceNode;
use crate::store::KvStore;

/// How the [`Balancer`] picks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Strategy {
    /// Smooth weighted round-robin: exact proportions over every cycle of `Σ priorities`
    /// picks, with the picks of each node spread out (5:1:1 gives `a a b a c a a`).
    #[default]
    SmoothWeighted,
    /// Each pick independent, node `i` with probability `priority_i / Σ priorities`.
    WeightedRandom,
}

/// Smooth weighted round-robin over a node list (nginx's algorithm): every live node's current
/// weight grows by its priority; the node with the highest current weight (the first on a tie)
/// is picked and loses the total. Down nodes and nodes of priority 0 are skipped.
///
/// The state belongs to one node list: [`pick`](Self::pick) starts over when the list's length
/// changes; callers reset it ([`reset`](Self::reset)) when the list changes otherwise.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SmoothWeighted {
    current: Vec<i64>,
}

impl SmoothWeighted {
    /// Picks the next node; `None` when no node is live.
    pub fn pick<'a>(&mut self, nodes: &'a [ServiceNode]) -> Option<&'a ServiceNode> {
        if self.current.len() != nodes.len() {
            self.current = vec![0; nodes.len()];
        }
        let mut total: i64 = 0;
        let mut best: Option<usize> = None;
        for (i, node) in nodes.iter().enumerate() {
            if !node.is_live() {
                continue;
            }
            let weight = i64::from(node.priority);
            self.current[i] = self.current[i].saturating_add(weight);
            total = total.saturating_add(weight);
            if best.is_none_or(|b| self.current[i] > self.current[b]) {
                best = Some(i);
            }
        }
        let best = best?;
        self.current[best] = self.current[best].saturating_sub(total);
        Some(&nodes[best])
    }

    /// Starts over (every current weight back to 0).
    pub fn reset(&mut self) {
        self.current.clear();
    }
}

/// Picks a live node with probability proportional to its priority, from 64 random bits
/// (`random`, e.g. from a seeded generator); `None` when no node is live.
pub fn pick_weighted_random(nodes: &[ServiceNode], random: u64) -> Option<&ServiceNode> {
    let total: u64 = nodes.iter().filter(|n| n.is_live()).map(|n| u64::from(n.priority)).sum();
    if total == 0 {
        return None;
    }
    // Maps `random` onto [0, total) without the bias of a modulo.
    let mut target = ((u128::from(random) * u128::from(total)) >> 64) as u64;
    for node in nodes.iter().filter(|n| n.is_live()) {
        let weight = u64::from(node.priority);
        if target < weight {
            return Some(node);
        }
        target -= weight;
    }
    None
}

/// Picks nodes of the services in a [`KvStore`]. One smooth round-robin state per service,
/// started over when the service's node list (ids, addresses, priorities, down flags) changes;
/// states of removed services are dropped, so it holds at most one per registered service.
/// Share it (`Arc`) between request handlers; picks are serialized by a mutex.
#[derive(Debug)]
pub struct Balancer {
    store: KvStore,
    inner: Mutex<BalancerInner>,
}

#[derive(Debug)]
struct BalancerInner {
    rounds: BTreeMap<String, Round>,
    rng: SeededRng,
}

/// The round-robin state of one service and the node list it belongs to.
#[derive(Debug)]
struct Round {
    fingerprint: u64,
    swrr: SmoothWeighted,
}

impl Balancer {
    /// A balancer over `store`'s services; `seed` drives [`Strategy::WeightedRandom`] (the same
    /// seed replays the same picks).
    pub fn new(store: KvStore, seed: u64) -> Self {
        Self {
            store,
            inner: Mutex::new(BalancerInner { rounds: BTreeMap::new(), rng: SeededRng::new(seed) }),
        }
    }

    /// Picks a node of service `name`.
    pub fn pick(&self, name: &str, strategy: Strategy) -> Result<ServiceNode, BalanceError> {
        let mut guard = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let inner = &mut *guard;
        let picked = self.store.with_service(name, |service| {
            let Some(service) = service else { return Err(BalanceError::UnknownService(name.to_owned())) };
            let node = match strategy {
                Strategy::WeightedRandom => pick_weighted_random(&service.nodes, inner.rng.next_u64()),
                Strategy::SmoothWeighted => {
                    let fingerprint = fingerprint(&service.nodes);
                    let round = inner
                        .rounds
                        .entry(name.to_owned())
                        .or_insert_with(|| Round { fingerprint, swrr: SmoothWeighted::default() });
                    if round.fingerprint != fingerprint {
                        round.fingerprint = fingerprint;
                        round.swrr.reset();
                    }
                    round.swrr.pick(&service.nodes)
                }
            };
            node.cloned().ok_or_else(|| BalanceError::NoLiveNode(name.to_owned()))
        });
        if matches!(picked, Err(BalanceError::UnknownService(_))) {
            inner.rounds.remove(name);
        }
        // Drop the states of services removed since (bounded by the registered services).
        if inner.rounds.len() > self.store.options().max_services {
            inner.rounds.retain(|n, _| self.store.has_service(n));
        }
        picked
    }
}

/// Identifies a node list: ids, addresses, priorities and down flags, in order.
fn fingerprint(nodes: &[ServiceNode]) -> u64 {
    let mut h = StableHasher::new(0);
    for n in nodes {
        h.str(&n.id).str(&n.address).u64(u64::from(n.priority)).bool(n.down);
    }
    h.finish()
}
