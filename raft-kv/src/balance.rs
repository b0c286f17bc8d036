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

#[cfg(test)]
mod tests {
    use raft_core::{Entry, EntryPayload, Fsm};

    use super::*;
    use crate::command::{Command, Op};
    use crate::service::tests::{node, service};
    use crate::service::Service;
    use crate::store::{KvFsm, KvOptions};

    /// A store holding `services`, and its state machine (kept to apply more ops).
    async fn store_with(services: Vec<Service>) -> (KvStore, KvFsm) {
        let (store, mut fsm) =
            KvStore::new(KvOptions { max_services: 4, ..KvOptions::default() }).expect("options");
        apply(&store, &mut fsm, services.into_iter().map(Op::RegisterService).collect()).await;
        (store, fsm)
    }

    async fn apply(store: &KvStore, fsm: &mut KvFsm, ops: Vec<Op>) {
        let first = store.applied_index() + 1;
        let entries: Vec<Entry> = (first..)
            .zip(ops)
            .map(|(index, op)| Entry {
                term: 1,
                index,
                payload: EntryPayload::Command(Command::new(op).encode()),
            })
            .collect();
        fsm.apply(&entries).await.expect("applies");
    }

    fn picks(balancer: &Balancer, name: &str, strategy: Strategy, n: usize) -> String {
        (0..n).map(|_| balancer.pick(name, strategy).expect("a live node").id).collect()
    }

    fn count(picks: &str, id: char) -> usize {
        picks.chars().filter(|c| *c == id).count()
    }

    fn web_5_1_1() -> Service {
        service("web", vec![node("a", 5), node("b", 1), node("c", 1)])
    }

    #[tokio::test]
    async fn smooth_weighted_5_1_1_is_exact_and_spread_out() {
        let (store, _fsm) = store_with(vec![web_5_1_1()]).await;
        let balancer = Balancer::new(store, 1);
        let all = picks(&balancer, "web", Strategy::SmoothWeighted, 700);
        assert_eq!((count(&all, 'a'), count(&all, 'b'), count(&all, 'c')), (500, 100, 100));
        // nginx's sequence for 5:1:1, every cycle: the light nodes sit between the heavy one's picks.
        assert_eq!(&all[..14], "aabacaaaabacaa");
        assert_eq!(all, all[..7].repeat(100));
    }

    #[test]
    fn smooth_weighted_alternates_equal_weights_and_skips_standbys() {
        let nodes = [node("a", 1), node("b", 1), node("z", 0), node("c", 1)];
        let mut swrr = SmoothWeighted::default();
        let seq: String = (0..6).filter_map(|_| swrr.pick(&nodes)).map(|n| n.id.as_str()).collect();
        assert_eq!(seq, "abcabc");
    }

    #[tokio::test]
    async fn down_nodes_are_never_picked_and_come_back_when_up() {
        let (store, mut fsm) = store_with(vec![web_5_1_1()]).await;
        let balancer = Balancer::new(store.clone(), 1);
        let down = |down| Op::SetServiceNodeDown { service: "web".into(), node: "a".into(), down };
        apply(&store, &mut fsm, vec![down(true)]).await;
        for strategy in [Strategy::SmoothWeighted, Strategy::WeightedRandom] {
            let all = picks(&balancer, "web", strategy, 600);
            assert_eq!(count(&all, 'a'), 0, "{strategy:?}");
            assert!(count(&all, 'b') > 0 && count(&all, 'c') > 0);
        }
        apply(&store, &mut fsm, vec![down(false)]).await;
        assert_eq!(picks(&balancer, "web", Strategy::SmoothWeighted, 7), "aabacaa", "starts over");
    }

    #[tokio::test]
    async fn the_round_starts_over_when_the_node_list_changes() {
        let (store, mut fsm) = store_with(vec![web_5_1_1()]).await;
        let balancer = Balancer::new(store.clone(), 1);
        assert_eq!(picks(&balancer, "web", Strategy::SmoothWeighted, 3), "aab");
        let changed = service("web", vec![node("a", 1), node("b", 1), node("d", 1)]);
        apply(&store, &mut fsm, vec![Op::RegisterService(changed)]).await;
        assert_eq!(picks(&balancer, "web", Strategy::SmoothWeighted, 6), "abdabd");
    }

    #[tokio::test]
    async fn unknown_services_and_services_without_live_nodes_are_errors() {
        let standby = service("standby", vec![node("a", 0), ServiceNode { down: true, ..node("b", 3) }]);
        let (store, _fsm) = store_with(vec![standby, service("empty", vec![])]).await;
        let balancer = Balancer::new(store, 1);
        for strategy in [Strategy::SmoothWeighted, Strategy::WeightedRandom] {
            assert_eq!(balancer.pick("nope", strategy), Err(BalanceError::UnknownService("nope".into())));
            assert_eq!(balancer.pick("standby", strategy), Err(BalanceError::NoLiveNode("standby".into())));
            assert_eq!(balancer.pick("empty", strategy), Err(BalanceError::NoLiveNode("empty".into())));
        }
    }

    #[tokio::test]
    async fn weighted_random_follows_the_weights_and_replays_from_its_seed() {
        let (store, _fsm) = store_with(vec![web_5_1_1()]).await;
        let (x, y) = (Balancer::new(store.clone(), 42), Balancer::new(store, 42));
        let all = picks(&x, "web", Strategy::WeightedRandom, 70_000);
        assert_eq!(all, picks(&y, "web", Strategy::WeightedRandom, 70_000), "same seed, same picks");
        for (id, expected) in [('a', 50_000.0), ('b', 10_000.0), ('c', 10_000.0)] {
            let got = count(&all, id) as f64;
            assert!((got - expected).abs() < expected * 0.05, "{id}: {got} vs {expected}");
        }
    }

    #[test]
    fn weighted_random_maps_the_whole_range_onto_live_nodes() {
        let nodes = [node("z", 0), node("a", 1), ServiceNode { down: true, ..node("d", 9) }, node("b", 3)];
        let id = |r| pick_weighted_random(&nodes, r).map(|n| n.id.as_str());
        assert_eq!(id(0), Some("a"));
        assert_eq!(id(u64::MAX / 4 - 1), Some("a"));
        assert_eq!(id(u64::MAX / 4 + 1), Some("b"));
        assert_eq!(id(u64::MAX), Some("b"));
        assert_eq!(pick_weighted_random(&nodes[..1], 5), None);
    }

    #[tokio::test]
    async fn per_service_state_stays_bounded_by_the_registered_services() {
        let (store, mut fsm) = store_with(vec![]).await; // max_services: 4
        let balancer = Balancer::new(store.clone(), 1);
        for round in 0..10 {
            let names: Vec<String> = (0..4).map(|i| format!("s{round}-{i}")).collect();
            let register =
                names.iter().map(|n| Op::RegisterService(service(n, vec![node("a", 1)]))).collect();
            apply(&store, &mut fsm, register).await;
            for name in &names {
                balancer.pick(name, Strategy::SmoothWeighted).expect("picks");
            }
            let remove = names.into_iter().map(|name| Op::RemoveService { name }).collect();
            apply(&store, &mut fsm, remove).await;
            let held = balancer.inner.lock().map(|i| i.rounds.len()).unwrap_or(usize::MAX);
            assert!(held <= 5, "round {round}: {held} states held");
        }
    }
}
