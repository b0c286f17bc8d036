//! The async driver on a 3-node in-process cluster (in-memory storage, local transport).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use raft_core::testing::local_transport::LocalNetwork;
use raft_core::{Config, Entry, EntryPayload, Fsm, FsmError, Membership, RaftError, RaftNode, Role};
use raft_storage_mem::MemStorage;

/// Counts applied commands; answers each with the count so far.
#[derive(Default)]
struct Counter {
    count: u64,
}

#[async_trait]
impl Fsm for Counter {
    async fn apply(&mut self, entries: &[Entry]) -> Result<Vec<Bytes>, FsmError> {
        Ok(entries
            .iter()
            .map(|e| match e.payload {
                EntryPayload::Command(_) => {
                    self.count += 1;
                    Bytes::from(self.count.to_string())
                }
                EntryPayload::Blank | EntryPayload::Membership(_) => Bytes::new(),
            })
            .collect())
    }

    async fn snapshot(&mut self) -> Result<Bytes, FsmError> {
        Ok(Bytes::from(self.count.to_string()))
    }

    async fn restore(&mut self, snapshot: &[u8]) -> Result<(), FsmError> {
        let text = std::str::from_utf8(snapshot).map_err(|e| FsmError::BadSnapshot(e.to_string()))?;
        self.count =
            text.parse().map_err(|e: std::num::ParseIntError| FsmError::BadSnapshot(e.to_string()))?;
        Ok(())
    }
}

async fn cluster(n: u64) -> Vec<RaftNode> {
    let network = LocalNetwork::default();
    let members = Membership::with_voters(1..=n);
    let mut nodes = Vec::new();
    for id in 1..=n {
        let node = RaftNode::start(
            id,
            Config::default(),
            members.clone(),
            Arc::new(MemStorage::default()),
            Arc::new(network.transport(id, 4_096)),
            Box::new(Counter::default()),
            id,
        )
        .await
        .expect("node starts");
        nodes.push(node);
    }
    nodes
}

async fn wait_for_leader(nodes: &[RaftNode]) -> usize {
    for _ in 0..500 {
        if let Some(i) = nodes.iter().position(|n| n.status().protocol.role == Role::Leader) {
            return i;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("no leader elected within 5 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proposals_are_applied_in_order_on_every_node() {
    let nodes = cluster(3).await;
    let mut streams: Vec<_> = nodes.iter().map(|n| n.subscribe_committed()).collect();
    let leader = wait_for_leader(&nodes).await;
    for i in 1..=100u64 {
        let applied = nodes[leader].propose(Bytes::from(format!("cmd{i}"))).await.expect("applied");
        assert_eq!(applied.response, Bytes::from(i.to_string()), "responses come from the Fsm in order");
    }
    for stream in &mut streams {
        for i in 1..=100u64 {
            let e = tokio::time::timeout(Duration::from_secs(5), stream.recv())
                .await
                .expect("committed entry in time")
                .expect("stream open");
            assert_eq!(e.command, Bytes::from(format!("cmd{i}")));
        }
    }
    for n in &nodes {
        n.shutdown().await.expect("first shutdown");
        assert_eq!(n.shutdown().await, Err(RaftError::AlreadyShutdown));
        assert_eq!(n.propose(Bytes::from_static(b"late")).await, Err(RaftError::AlreadyShutdown));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_forwards_proposals_to_the_leader() {
    let nodes = cluster(3).await;
    let leader = wait_for_leader(&nodes).await;
    let follower = (leader + 1) % 3;
    // The follower learns of the leader from its first AppendEntries.
    for _ in 0..200 {
        if nodes[follower].status().protocol.leader.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let applied = nodes[follower].propose(Bytes::from_static(b"forwarded")).await.expect("applied");
    assert_eq!(applied.response, Bytes::from_static(b"1"));
    for n in &nodes {
        n.shutdown().await.expect("shutdown");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_proposals_are_batched_and_all_applied() {
    let nodes = Arc::new(cluster(3).await);
    let leader = wait_for_leader(&nodes).await;
    let mut tasks = Vec::new();
    for t in 0..64 {
        let nodes = nodes.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..50 {
                nodes[leader].propose(Bytes::from(format!("{t}-{i}"))).await.expect("applied");
            }
        }));
    }
    for t in tasks {
        t.await.expect("task");
    }
    let status = nodes[leader].status().protocol;
    assert!(status.commit_index > 64 * 50, "no-op plus every proposal committed");
    for n in nodes.iter() {
        n.shutdown().await.expect("shutdown");
    }
}
