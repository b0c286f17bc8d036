//! A Raft cluster over a real transport, for every [`Transport`](crate::Transport)
//! implementation: `raft_core::testing::cluster_suite::run_all(&factory, storage).await`.
//!
//! Three [`RaftNode`]s on loopback ports, each over a transport made by the
//! [`TransportFactory`]: 10 000 proposals from 64 concurrent tasks (refused ones retried on
//! the current leader), then a follower is stopped while proposals go on and restarted on the
//! same port with its storage; every state machine must converge, and nothing may be applied
//! more often than it was proposed. A failure panics with what was wrong.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::testing::counter::CounterFsm;
use crate::testing::transport_suite::{free_loopback_addrs, TransportFactory};
use crate::{Config, Membership, NodeId, RaftError, RaftNode, Role, Storage};

/// How long the suite waits for a condition before failing.
const WAIT_MAX: Duration = Duration::from_secs(30);

/// Runs every case of the suite over transports made by `factory`, each node on a storage made
/// once by `storage` (kept across the node's restart).
pub async fn run_all(factory: &impl TransportFactory, storage: impl Fn(NodeId) -> Arc<dyn Storage>) {
    three_nodes_replicate_and_a_restarted_node_catches_up(factory, storage).await;
}

struct Node {
    raft: Arc<RaftNode>,
    fsm: CounterFsm,
}

/// Nodes on loopback ports, each over its own transport.
struct Cluster<'a, F> {
    factory: &'a F,
    addrs: BTreeMap<NodeId, SocketAddr>,
    config: Config,
    storages: BTreeMap<NodeId, Arc<dyn Storage>>,
    nodes: BTreeMap<NodeId, Node>,
}

impl<'a, F: TransportFactory> Cluster<'a, F> {
    async fn new(factory: &'a F, n: u64, storage: impl Fn(NodeId) -> Arc<dyn Storage>) -> Self {
        let addrs = free_loopback_addrs(n);
        let config = Config { snapshot_threshold_entries: 4_000, ..Config::default() };
        let storages = addrs.keys().map(|&id| (id, storage(id))).collect();
        let mut cluster = Self { factory, addrs, config, storages, nodes: BTreeMap::new() };
        for id in 1..=n {
            cluster.start(id).await;
        }
        cluster
    }

    /// Starts node `id` on its storage with a new transport on its port.
    async fn start(&mut self, id: NodeId) {
        let transport = self.factory.start(id, &self.addrs).await;
        let fsm = CounterFsm::default();
        let raft = RaftNode::start(
            id,
            self.config.clone(),
            Membership::with_voters(self.addrs.keys().copied()),
            self.storages[&id].clone(),
            transport,
            Box::new(fsm.clone()),
            crate::fresh_seed(),
        )
        .await
        .expect("node starts");
        self.nodes.insert(id, Node { raft: Arc::new(raft), fsm });
    }

    async fn stop(&mut self, id: NodeId) {
        let node = self.nodes.remove(&id).expect("node runs");
        node.raft.shutdown().await.expect("shutdown");
    }

    async fn wait_for_leader(&self) -> NodeId {
        let deadline = tokio::time::Instant::now() + WAIT_MAX;
        loop {
            let statuses: Vec<_> = self.nodes.values().map(|n| n.raft.status().protocol).collect();
            let leader =
                statuses.iter().filter(|s| s.role == Role::Leader).max_by_key(|s| s.term).map(|s| s.id);
            if let Some(leader) = leader {
                if statuses.iter().all(|s| s.leader == Some(leader)) {
                    return leader;
                }
            }
            assert!(tokio::time::Instant::now() < deadline, "no leader within {WAIT_MAX:?}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Proposes `n` commands from `tasks` concurrent tasks, retrying refused proposals on the
    /// current leader. Returns the number of proposals whose outcome is unknown.
    async fn propose_concurrently(&self, n: u64, tasks: u64) -> u64 {
        let nodes: Vec<Arc<RaftNode>> = self.nodes.values().map(|n| n.raft.clone()).collect();
        let next = Arc::new(AtomicU64::new(0));
        let mut handles = Vec::new();
        for _ in 0..tasks {
            let nodes = nodes.clone();
            let next = next.clone();
            handles.push(tokio::spawn(async move {
                let mut unknown = 0;
                let deadline = tokio::time::Instant::now() + WAIT_MAX;
                while next.fetch_add(1, Ordering::SeqCst) < n {
                    loop {
                        let leader = nodes
                            .iter()
                            .find(|node| node.status().protocol.role == Role::Leader)
                            .unwrap_or(&nodes[0]);
                        match leader.propose(Bytes::from_static(b"+1")).await {
                            Ok(_) => break,
                            Err(RaftError::OutcomeUnknown) => {
                                unknown += 1;
                                break;
                            }
                            Err(error) => {
                                assert!(tokio::time::Instant::now() < deadline, "proposals fail: {error}");
                                tokio::time::sleep(Duration::from_millis(5)).await;
                            }
                        }
                    }
                }
                unknown
            }));
        }
        let mut unknown = 0;
        for h in handles {
            unknown += h.await.expect("proposer");
        }
        unknown
    }

    /// Waits until every node's state machine holds the same count, at least `min`.
    async fn wait_converged(&self, min: u64) -> u64 {
        let deadline = tokio::time::Instant::now() + WAIT_MAX;
        loop {
            let counts: Vec<u64> = self.nodes.values().map(|n| n.fsm.count()).collect();
            if counts[0] >= min && counts.iter().all(|&c| c == counts[0]) {
                return counts[0];
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "state machines differ: {counts:?} (want >= {min})"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn shutdown(&mut self) {
        let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
        for id in ids {
            self.stop(id).await;
        }
    }
}

/// 10 000 proposals from 64 tasks on three nodes, then a follower stopped and restarted on the
/// same port with its storage; the state machines converge.
async fn three_nodes_replicate_and_a_restarted_node_catches_up(
    factory: &impl TransportFactory,
    storage: impl Fn(NodeId) -> Arc<dyn Storage>,
) {
    const ENTRIES: u64 = 10_000;
    const PROPOSERS: u64 = 64;
    let mut cluster = Cluster::new(factory, 3, storage).await;
    let leader = cluster.wait_for_leader().await;

    let started = Instant::now();
    let mut unknown = cluster.propose_concurrently(ENTRIES, PROPOSERS).await;
    let elapsed = started.elapsed();
    let count = cluster.wait_converged(ENTRIES).await;
    eprintln!(
        "{ENTRIES} proposals from {PROPOSERS} tasks in {elapsed:?}: {:.0} entries/s",
        ENTRIES as f64 / elapsed.as_secs_f64()
    );
    assert!(count <= ENTRIES + unknown, "{count} applied for {ENTRIES} proposals ({unknown} unknown)");

    // A follower stops; the others go on; it restarts on the same port with its storage.
    let follower = cluster.nodes.keys().copied().find(|&id| id != leader).expect("a follower");
    cluster.stop(follower).await;
    unknown += cluster.propose_concurrently(1_000, 16).await;
    cluster.start(follower).await;
    unknown += cluster.propose_concurrently(1_000, 16).await;
    let count = cluster.wait_converged(ENTRIES + 2_000).await;
    assert!(count <= ENTRIES + 2_000 + unknown, "{count} applied ({unknown} unknown)");
    let restarted = cluster.nodes[&follower].raft.status().protocol;
    assert!(restarted.applied_index > ENTRIES, "restarted node applied only {}", restarted.applied_index);
    cluster.shutdown().await;
}
