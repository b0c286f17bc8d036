//! From the final outside review of issue 15 (it failed before the repair's marker): a node
//! repaired once (a `damaged-*` directory kept for inspection) whose store later loses its
//! `CURRENT` file again repairs itself again, into a directory of its own.

#![allow(missing_docs)]

mod common;

use std::path::Path;
use std::time::Duration;

use common::{eventually, TestCluster};
use raft_node::config::StorageKind;
use raft_node::Node;

fn list(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|d| d.filter_map(Result::ok).map(|e| e.file_name().to_string_lossy().to_string()).collect())
        .unwrap_or_default();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_repaired_once_repairs_a_second_lost_current_too() {
    let mut cluster = TestCluster::start_with(3, StorageKind::Rocks, |c| {
        c.raft.snapshot_threshold_entries = 20;
        c.raft.snapshot_keep_entries = 5;
    })
    .await;
    let client = cluster.client();
    for i in 0..80 {
        client.put(&format!("k{i}"), "v").await.expect("put");
    }
    cluster.wait_registered().await;
    let victim = cluster.follower().await;
    let config = cluster.configs[(victim - 1) as usize].clone();
    let dir = cluster.data_dir(victim);
    let mine =
        raft_client::Client::new([config.client_addr.to_string()], Default::default()).expect("client");
    for round in 0..2 {
        cluster.stop(victim).await;
        eprintln!("round {round}: before damage {:?}", list(&dir));
        for d in list(&dir).iter().filter(|n| n.starts_with("damaged-")) {
            eprintln!(
                "  {d}: {:?} snapshots: {:?}",
                list(&dir.join(d)),
                list(&dir.join(d).join("snapshots"))
            );
        }
        eprintln!("  snapshots: {:?}", list(&dir.join("snapshots")));
        std::fs::remove_file(dir.join("CURRENT")).expect("remove CURRENT");
        let mut started = tokio::time::timeout(Duration::from_secs(60), Node::start(config.clone())).await;
        for attempt in 0..3 {
            if let Ok(Err(e)) = &started {
                eprintln!("round {round} attempt {attempt}: {e}");
                tokio::time::sleep(Duration::from_secs(1)).await;
                started = tokio::time::timeout(Duration::from_secs(60), Node::start(config.clone())).await;
            }
        }
        let node = match started {
            Ok(Ok(node)) => node,
            Ok(Err(e)) => panic!(
                "round {round}: node {victim}, whose store lost CURRENT, stays down: {e}; dir {:?}",
                list(&dir)
            ),
            Err(_) => panic!("round {round}: node {victim} did not start within 60 s"),
        };
        let want = 80 * (round + 1);
        eventually("the node to recover every key", || async {
            mine.status().await.is_ok_and(|s| s.keys == want && s.recovering_to_index.is_none())
        })
        .await;
        cluster.nodes[(victim - 1) as usize] = Some(node);
        for i in 0..80 {
            client.put(&format!("r{round}-{i}"), "v").await.expect("put");
        }
        let want = 80 * (round + 2);
        eventually("the node to hold the new keys", || async {
            mine.status().await.is_ok_and(|s| s.keys == want)
        })
        .await;
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    cluster.shutdown().await;
}
