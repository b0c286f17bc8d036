//! The async driver runs a 3-node cluster on RocksDB storage in temporary directories, with
//! restarts: acknowledged writes survive, a restarted node resumes from its store.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use raft_core::testing::counter::CounterFsm;
use raft_core::testing::local_transport::LocalNetwork;
use raft_core::{Config, Membership, RaftNode, Role};

use crate::{Identity, RocksDb, RocksOptions};

async fn start(network: &LocalNetwork, id: u64, dir: &std::path::Path, fsm: CounterFsm) -> RaftNode {
    let identity = Identity { cluster_id: "rocks-cluster".into(), node_id: id };
    let db = RocksDb::open(dir, &identity, RocksOptions::default()).expect("open store");
    let config = Config { snapshot_threshold_entries: 40, snapshot_keep_entries: 5, ..Config::default() };
    RaftNode::start(
        id,
        config,
        Membership::with_voters([1, 2, 3]),
        Arc::new(db.log(0)),
        Arc::new(network.transport(id, 4_096)),
        Box::new(fsm),
        raft_core::fresh_seed(),
    )
    .await
    .expect("node starts")
}

async fn leader(nodes: &[Option<RaftNode>]) -> usize {
    for _ in 0..1_000 {
        if let Some(i) =
            nodes.iter().position(|n| n.as_ref().is_some_and(|n| n.status().protocol.role == Role::Leader))
        {
            return i;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("no leader");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_three_node_cluster_on_rocksdb_survives_restarts() {
    let network = LocalNetwork::default();
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().expect("tempdir")).collect();
    let mut fsms: Vec<CounterFsm> = (0..3).map(|_| CounterFsm::default()).collect();
    let mut nodes = Vec::new();
    for id in 1..=3u64 {
        let i = id as usize - 1;
        nodes.push(Some(start(&network, id, dirs[i].path(), fsms[i].clone()).await));
    }
    let mut acknowledged = 0u64;
    for round in 0..3 {
        let l = leader(&nodes).await;
        for _ in 0..50 {
            let node = nodes[l].as_ref().expect("leader runs");
            if node.propose(Bytes::from_static(b"+1")).await.is_ok() {
                acknowledged += 1;
            }
        }
        // Restart one node (the leader every other round) from its store.
        let victim = if round % 2 == 0 { l } else { (l + 1) % 3 };
        if let Some(node) = nodes[victim].take() {
            node.shutdown().await.expect("shutdown");
        }
        fsms[victim] = CounterFsm::default();
        let id = victim as u64 + 1;
        nodes[victim] = Some(start(&network, id, dirs[victim].path(), fsms[victim].clone()).await);
    }
    let l = leader(&nodes).await;
    let last =
        nodes[l].as_ref().expect("leader").propose(Bytes::from_static(b"+1")).await.expect("final write");
    acknowledged += 1;
    assert_eq!(last.response, Bytes::from(acknowledged.to_string()), "no acknowledged write was lost");
    for (i, node) in nodes.iter().enumerate() {
        let node = node.as_ref().expect("runs");
        for _ in 0..500 {
            if node.status().protocol.applied_index >= last.log_id.index {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(fsms[i].count(), acknowledged, "node {} converged", i + 1);
        assert!(node.status().protocol.snapshot.index > 0, "node {} snapshotted into RocksDB", i + 1);
    }
    for node in nodes.into_iter().flatten() {
        node.shutdown().await.expect("shutdown");
    }
}
