//! Outside review of issue 15 ("a missing `CURRENT` or deleted SSTs were refused clearly, but
//! a refused node stays down until an operator removes it and rejoins it"): a follower whose
//! store lost one kind of RocksDB file (the rest intact) is repaired from the cluster by
//! itself. Before the fix a lost `CURRENT` (`OpenError::MissingCurrent`) and a lost MANIFEST
//! (an IO error) kept the node down.

#![allow(missing_docs)]

mod common;

use std::path::Path;
use std::time::Duration;

use common::{eventually, TestCluster};
use raft_node::config::StorageKind;
use raft_node::Node;

/// Three nodes take 80 writes; a follower stops, `damage` removes files of its store, and it
/// starts again: it must come up and hold every key.
async fn a_follower_recovers_after(what: &str, damage: impl Fn(&Path) -> usize) {
    let mut cluster = TestCluster::start(3, StorageKind::Rocks).await;
    let client = cluster.client();
    for i in 0..80 {
        client.put(&format!("k{i}"), "v").await.expect("put");
    }
    cluster.wait_registered().await;
    let victim = cluster.follower().await;
    cluster.stop(victim).await;
    let dir = cluster.data_dir(victim);
    assert!(dir.join("durability.rec").exists(), "the store keeps a record");
    assert!(damage(&dir) > 0, "the store had {what}");
    let config = cluster.configs[(victim - 1) as usize].clone();
    let started = tokio::time::timeout(Duration::from_secs(60), Node::start(config.clone())).await;
    let node = match started {
        Ok(Ok(node)) => node,
        Ok(Err(e)) => panic!("node {victim}, whose store lost {what}, stays down: {e}"),
        Err(_) => panic!("node {victim} did not start within 60 s"),
    };
    let mine =
        raft_client::Client::new([config.client_addr.to_string()], Default::default()).expect("client");
    eventually("the node to recover every key", || async {
        mine.status().await.is_ok_and(|s| s.keys == 80 && s.recovering_to_index.is_none())
    })
    .await;
    node.shutdown().await;
    cluster.shutdown().await;
}

/// Removes the files of `dir` whose names `matches`; returns how many.
fn remove_files(dir: &Path, matches: impl Fn(&str) -> bool) -> usize {
    let mut removed = 0;
    for e in std::fs::read_dir(dir).expect("read dir").filter_map(Result::ok) {
        if matches(&e.file_name().to_string_lossy()) {
            std::fs::remove_file(e.path()).expect("remove");
            removed += 1;
        }
    }
    removed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_lost_only_its_current_file_recovers_from_the_cluster() {
    a_follower_recovers_after("its CURRENT file", |dir| remove_files(dir, |name| name == "CURRENT")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_lost_its_table_files_recovers_from_the_cluster() {
    a_follower_recovers_after("its table files", |dir| remove_files(dir, |name| name.ends_with(".sst")))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_lost_its_manifest_recovers_from_the_cluster() {
    a_follower_recovers_after("its MANIFEST", |dir| remove_files(dir, |name| name.starts_with("MANIFEST-")))
        .await;
}
