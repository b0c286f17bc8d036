//! The demo scenario as a test: three nodes over TCP on 127.0.0.1, each on RocksDB in its own
//! directory. Transfers through every node, an overdraft refused, the leader stopped, the
//! cluster serving under a new leader, the stopped node restarted from its directory and
//! caught up; every node ends with the balances of a local replay of the acknowledged
//! commands, and the total never changes.

use std::collections::BTreeMap;
use std::time::Duration;

use raft_core::{Config, NodeId, Role};
use raft_example_bank::{free_local_addrs, BankError, BankNode, BankNodeConfig, Command, Ledger, Rejection};

const WAIT: Duration = Duration::from_secs(10);
const ACCOUNTS: [&str; 3] = ["alice", "bob", "carol"];
const DEPOSIT: u64 = 1_000;

struct Cluster {
    configs: BTreeMap<NodeId, BankNodeConfig>,
    nodes: BTreeMap<NodeId, BankNode>,
    /// Every acknowledged command, applied locally.
    model: Ledger,
    _dir: tempfile::TempDir,
}

impl Cluster {
    async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let addrs: BTreeMap<NodeId, _> = (1..=3).zip(free_local_addrs(3).unwrap()).collect();
        let raft = Config { snapshot_threshold_entries: 20, snapshot_keep_entries: 5, ..Config::default() };
        let mut configs = BTreeMap::new();
        let mut nodes = BTreeMap::new();
        for (&id, &listen) in &addrs {
            let peers = addrs.iter().filter(|(&p, _)| p != id).map(|(&p, &a)| (p, a)).collect();
            let data_dir = dir.path().join(id.to_string());
            let config = BankNodeConfig {
                raft: raft.clone(),
                ..BankNodeConfig::new(id, "bank-test", listen, peers, data_dir)
            };
            nodes.insert(id, BankNode::start(config.clone()).await.unwrap());
            configs.insert(id, config);
        }
        Self { configs, nodes, model: Ledger::default(), _dir: dir }
    }

    fn node(&self, id: NodeId) -> &BankNode {
        &self.nodes[&id]
    }

    /// Waits until every running node knows the same leader, other than `not`.
    async fn leader(&self, not: Option<NodeId>) -> NodeId {
        let mut leaders = Vec::new();
        for node in self.nodes.values() {
            leaders.push(node.wait_for_leader(WAIT, not).await.unwrap());
        }
        leaders.dedup();
        assert_eq!(leaders.len(), 1, "the nodes agree on the leader");
        let leader = leaders[0];
        let status = self.node(leader).wait_for_status(WAIT, |s| s.protocol.role == Role::Leader).await;
        assert!(status.is_ok(), "node {leader} leads");
        leader
    }

    /// Proposes `command` through `via`; its outcome must be the model's.
    async fn execute(&mut self, via: NodeId, command: Command) {
        let got = self.node(via).execute(&command).await;
        let want = self.model.apply(&command);
        match (got, want) {
            (Ok(got), Ok(want)) => assert_eq!(got, want, "{command:?}"),
            (Err(BankError::Rejected(got)), Err(want)) => assert_eq!(got, want, "{command:?}"),
            (got, want) => panic!("{command:?} through node {via}: got {got:?}, expected {want:?}"),
        }
    }

    /// `count` transfers around the ring of accounts, each through the next of `via`.
    async fn transfers(&mut self, via: &[NodeId], count: usize) {
        for i in 0..count {
            let (from, to) = (ACCOUNTS[i % 3], ACCOUNTS[(i + 1) % 3]);
            let command =
                Command::Transfer { from: from.into(), to: to.into(), amount: 1 + (i as u64 * 37) % 200 };
            self.execute(via[i % via.len()], command).await;
        }
    }

    /// Reads every node's ledger linearizably; each must match the model.
    async fn check_every_node(&self) {
        for (id, node) in &self.nodes {
            let ledger = node.ledger().await.unwrap();
            assert_eq!(ledger.balances(), self.model.balances(), "node {id}");
            assert_eq!(ledger.total(), DEPOSIT * 3, "node {id}: money is conserved");
            assert_eq!(ledger.balances().values().sum::<u64>(), DEPOSIT * 3, "node {id}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_nodes_survive_the_leader_stopping_and_the_restarted_node_catches_up() {
    let mut cluster = Cluster::start().await;
    let leader = cluster.leader(None).await;
    for account in ACCOUNTS {
        cluster.execute(leader, Command::Open { account: account.into() }).await;
        cluster.execute(leader, Command::Deposit { account: account.into(), amount: DEPOSIT }).await;
    }
    cluster.transfers(&[1, 2, 3], 15).await;

    // An overdraft is refused on every node alike, and changes nothing.
    let overdraft = Command::Transfer { from: "alice".into(), to: "bob".into(), amount: DEPOSIT * 3 + 1 };
    let follower = *cluster.nodes.keys().find(|&&id| id != leader).unwrap();
    let refused = cluster.node(follower).execute(&overdraft).await;
    assert!(
        matches!(refused, Err(BankError::Rejected(Rejection::InsufficientFunds { ref account, .. })) if account == "alice"),
        "{refused:?}"
    );
    cluster.check_every_node().await;

    // Stop the leader: the other two elect a new one and keep serving.
    let stopped = leader;
    cluster.nodes.remove(&stopped).unwrap().shutdown().await.unwrap();
    let leader = cluster.leader(Some(stopped)).await;
    assert_ne!(leader, stopped);
    let survivors: Vec<NodeId> = cluster.nodes.keys().copied().collect();
    cluster.transfers(&survivors, 40).await;
    cluster.check_every_node().await;
    let leader_applied = cluster.node(leader).ledger().await.unwrap().applied_index();

    // Restart the stopped node from its data directory: it catches up (past a snapshot).
    let restarted = BankNode::start(cluster.configs[&stopped].clone()).await.unwrap();
    restarted.wait_for_leader(WAIT, None).await.unwrap();
    let caught_up = restarted.ledger().await.unwrap();
    assert!(caught_up.applied_index() >= leader_applied, "node {stopped} caught up");
    assert_eq!(caught_up.balances(), cluster.model.balances());
    cluster.nodes.insert(stopped, restarted);
    assert_eq!(cluster.leader(None).await, leader, "the restarted node does not disrupt the leader");

    // All three serve writes again, and agree.
    cluster.transfers(&[1, 2, 3], 9).await;
    cluster.check_every_node().await;
    for node in cluster.nodes.values() {
        assert!(
            node.raft().status().protocol.snapshot.index > 0,
            "node {} took or received a snapshot",
            node.id()
        );
    }
    for (_, node) in std::mem::take(&mut cluster.nodes) {
        node.shutdown().await.unwrap();
    }
}
