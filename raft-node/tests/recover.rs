//! The documented ways out when no member holds the data any more (`raft-node recover`):
//! forcing a new one-voter cluster from the survivor of a lost majority, and seeding a new
//! cluster from a snapshot backup. Each runs on the real node's store, then the real node
//! starts from it, serves what it had, and takes members back through `join`.

#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::time::Duration;

use common::{config_for, eventually, free_addr, TestCluster};
use raft_client::api::{Consistency, MemberRole, RoleView};
use raft_node::config::{MemberConfig, NodeConfig, StorageKind};
use raft_node::recover::{self, RecoverError};
use raft_node::Node;

/// Snapshots every 50 entries, keeping 5 behind them.
fn snapshot_often(c: &mut NodeConfig) {
    c.raft.snapshot_threshold_entries = 50;
    c.raft.snapshot_keep_entries = 5;
}

/// A client of one node only.
fn client_of(config: &NodeConfig) -> raft_client::Client {
    raft_client::Client::new([config.client_addr.to_string()], Default::default()).unwrap()
}

/// Waits until the single node of `config` leads and answers a linearizable read.
async fn wait_leading(config: &NodeConfig) -> raft_client::Client {
    let client = client_of(config);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let leads = client.status_of(&client.endpoints()[0]).await.is_ok_and(|s| s.role == RoleView::Leader);
        if leads && client.get("k0", Some(Consistency::Linearizable)).await.is_ok() {
            return client;
        }
        assert!(std::time::Instant::now() < deadline, "node {} did not lead", config.id);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A node with an empty data dir that joins through `through`, with its old id and addresses.
fn rejoining(config: &NodeConfig, through: String) -> NodeConfig {
    let mut config = config.clone();
    config.members.clear();
    config.join = vec![through];
    assert!(config.problems().is_empty(), "{:?}", config.problems());
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_survivor_of_a_lost_majority_forces_a_new_cluster_and_takes_the_others_back() {
    let mut cluster = TestCluster::start_with(3, StorageKind::Rocks, snapshot_often).await;
    let client = cluster.client();
    for i in 0..120 {
        client.put(&format!("k{i}"), &format!("v{i}")).await.unwrap();
    }
    cluster.wait_converged().await;
    let configs = cluster.configs.clone();
    for id in 1..=3 {
        cluster.stop(id).await;
    }
    // Nodes 2 and 3 are lost for good.
    for id in [2, 3] {
        std::fs::remove_dir_all(cluster.data_dir(id)).unwrap();
    }
    // A data dir with nothing in it has nothing to force a cluster from.
    match recover::force_new_cluster(&configs[1]).await {
        Err(RecoverError::NothingToKeep(_)) => {}
        other => panic!("an empty data dir was forced into a cluster: {other:?}"),
    }
    assert!(!cluster.data_dir(2).exists(), "a refused force created a store");

    let forced = recover::force_new_cluster(&configs[0]).await.unwrap();
    assert_eq!(forced.previous.voters.iter().copied().collect::<Vec<_>>(), vec![1, 2, 3]);
    assert_eq!(forced.membership_entry.index, forced.kept_last.index + 1);
    assert!(forced.membership_entry.term > forced.kept_last.term, "{forced:?}");

    // Node 1 starts as the only voter (its config still lists three members) and serves
    // every write it had.
    let node1 = Node::start(configs[0].clone()).await.unwrap();
    let one = wait_leading(&configs[0]).await;
    for i in [0, 57, 119] {
        let got = one.get(&format!("k{i}"), Some(Consistency::Linearizable)).await.unwrap();
        assert_eq!(got.map(|kv| kv.value), Some(format!("v{i}")), "k{i}");
    }
    one.put("after", "forced").await.unwrap();
    let members = one.members().await.unwrap();
    let voters: Vec<u64> =
        members.members.iter().filter(|m| m.role == MemberRole::Voter).map(|m| m.id).collect();
    assert_eq!(voters, vec![1], "{members:?}");

    // Nodes 2 and 3 come back with empty data dirs through `join`, and catch up.
    let node2 = Node::start(rejoining(&configs[1], cluster.endpoint(1))).await.unwrap();
    let node3 = Node::start(rejoining(&configs[2], cluster.endpoint(1))).await.unwrap();
    eventually("nodes 2 and 3 to become voters", || async {
        let m = one.members().await.unwrap();
        !m.joint && m.members.iter().filter(|m| m.role == MemberRole::Voter).count() == 3
    })
    .await;
    for config in &configs[1..] {
        let mine = client_of(config);
        eventually("a rejoined node to catch up", || async {
            mine.get("after", Some(Consistency::Local)).await.ok().flatten().is_some()
        })
        .await;
        assert_eq!(
            mine.get("k119", Some(Consistency::Local)).await.unwrap().map(|kv| kv.value),
            Some("v119".into())
        );
    }
    // The three again survive the loss of one: node 1 stops, the others elect and write.
    node1.shutdown().await;
    let rest =
        raft_client::Client::new([cluster.endpoint(2), cluster.endpoint(3)], Default::default()).unwrap();
    eventually("nodes 2 and 3 to take a write without node 1", || async {
        rest.put("without-1", "ok").await.is_ok()
    })
    .await;
    node2.shutdown().await;
    node3.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_cluster_is_seeded_from_a_snapshot_backup() {
    let cluster = TestCluster::start_with(3, StorageKind::Rocks, snapshot_often).await;
    let client = cluster.client();
    for i in 0..120 {
        client.put(&format!("k{i}"), &format!("v{i}")).await.unwrap();
    }
    cluster.wait_converged().await;
    let old = client.get("k7", Some(Consistency::Linearizable)).await.unwrap().unwrap();
    // The backup: `raftctl snapshot save`'s download, to a file.
    let dir = tempfile::tempdir().unwrap();
    let backup = dir.path().join("backup.snap");
    let mut download = client.snapshot().await.unwrap();
    let mut bytes = Vec::new();
    while let Some(chunk) = download.next_chunk().await.unwrap() {
        bytes.extend_from_slice(&chunk);
    }
    std::fs::write(&backup, &bytes).unwrap();
    // What the backup holds: the keys written at or before its index.
    let mut in_backup = Vec::new();
    for i in 0..120 {
        let kv = client.get(&format!("k{i}"), Some(Consistency::Linearizable)).await.unwrap().unwrap();
        in_backup.push(kv.mod_index <= download.index);
    }
    assert!(in_backup[7] && in_backup.iter().filter(|&&b| b).count() > 50, "{in_backup:?}");
    cluster.shutdown().await;

    // A new cluster elsewhere: node 1 of it, in an empty data dir.
    let me = MemberConfig { id: 1, raft_addr: free_addr(), client_addr: free_addr() };
    let second = MemberConfig { id: 2, raft_addr: free_addr(), client_addr: free_addr() };
    let config = config_for(&me, vec![me.clone()], dir.path(), StorageKind::Rocks);

    // A damaged backup is refused, and the data dir stays usable.
    let damaged = dir.path().join("damaged.snap");
    std::fs::write(&damaged, &bytes[..bytes.len() / 2]).unwrap();
    match recover::seed_from_snapshot(&config, &damaged).await {
        Err(RecoverError::BadSnapshot { .. }) => {}
        other => panic!("a truncated backup was seeded: {other:?}"),
    }
    assert!(!config.data_dir.exists(), "a refused backup left a store behind");
    let mut flipped = bytes.clone();
    let mid = flipped.len() / 2;
    flipped[mid] ^= 0x5A;
    std::fs::write(&damaged, &flipped).unwrap();
    match recover::seed_from_snapshot(&config, &damaged).await {
        Err(RecoverError::BadSnapshot { .. }) => {}
        other => panic!("a backup with a flipped byte was seeded: {other:?}"),
    }

    let seeded = recover::seed_from_snapshot(&config, &backup).await.unwrap();
    // One entry after the backup's index per old member address removed (three).
    assert_eq!(seeded.snapshot.index, download.index + 3, "{seeded:?}");
    assert_eq!(seeded.keys, in_backup.iter().filter(|&&b| b).count());
    assert!(seeded.bytes > 0);
    // A seed interrupted after the snapshot, before its term was saved, is done again.
    {
        use raft_core::Storage as _;
        let identity = raft_storage_rocks::Identity { cluster_id: config.cluster.clone(), node_id: 1 };
        let db = raft_storage_rocks::RocksDb::open(&config.data_dir, &identity, Default::default()).unwrap();
        db.log(0).save_hard_state(raft_core::HardState::default()).await.unwrap();
    }
    match Node::start(config.clone()).await {
        Err(raft_node::StartError::InterruptedSeed(_)) => {}
        other => panic!("a node started on an interrupted seed: {:?}", other.map(|_| "started")),
    }
    // Redone from another backup, it is refused (its snapshot would be kept, or would go
    // back): found by review.
    let smaller = dir.path().join("smaller.snap");
    {
        let (kv, mut fsm) = raft_kv::KvStore::new(Default::default()).unwrap();
        use raft_core::Fsm as _;
        let put = |i: u64| raft_core::Entry {
            term: 1,
            index: i,
            payload: raft_core::EntryPayload::Command(
                raft_kv::Command::new(raft_kv::Op::Put { key: format!("s{i}"), value: "v".into() }).encode(),
            ),
        };
        fsm.apply(&(1..=5).map(put).collect::<Vec<_>>()).await.unwrap();
        let mut source = fsm.snapshot().await.unwrap();
        let mut out = Vec::new();
        while let Some(chunk) = source.next_chunk(1 << 16).unwrap() {
            out.extend_from_slice(&chunk);
        }
        assert_eq!(kv.applied_index(), 5);
        std::fs::write(&smaller, out).unwrap();
    }
    match recover::seed_from_snapshot(&config, &smaller).await {
        Err(RecoverError::OtherInterruptedSeed { .. }) => {}
        other => panic!("an interrupted seed was redone from another backup: {other:?}"),
    }
    let again = recover::seed_from_snapshot(&config, &backup).await.unwrap();
    assert_eq!(again.snapshot.index, seeded.snapshot.index);
    let seeded = again;
    // Seeding twice is refused: the dir holds a cluster now.
    match recover::seed_from_snapshot(&config, &backup).await {
        Err(RecoverError::NotEmpty(_)) => {}
        other => panic!("a data dir was seeded twice: {other:?}"),
    }

    let node1 = Node::start(config.clone()).await.unwrap();
    let one = wait_leading(&config).await;
    let got = one.get("k7", Some(Consistency::Linearizable)).await.unwrap().unwrap();
    assert_eq!((got.value.as_str(), got.mod_index), ("v7", old.mod_index), "keys keep their revisions");
    one.put("k7", "new").await.unwrap();
    let after = one.get("k7", Some(Consistency::Linearizable)).await.unwrap().unwrap();
    assert!(after.mod_index > seeded.snapshot.index, "{after:?} after {seeded:?}");

    // A second member joins the seeded cluster at once and receives the state. (With the
    // backup's address book, node 1's old address was given to it, which it could never
    // answer: the seed removes the old members' addresses.)
    let config2 = rejoining(
        &config_for(&second, Vec::new(), dir.path(), StorageKind::Rocks),
        config.client_addr.to_string(),
    );
    let node2 = Node::start(config2.clone()).await.unwrap();
    let two = client_of(&config2);
    eventually("the second member to catch up", || async {
        two.get("k7", Some(Consistency::Local)).await.ok().flatten().is_some_and(|kv| kv.value == "new")
    })
    .await;
    for (i, held) in in_backup.iter().enumerate() {
        let got = two.get(&format!("k{i}"), Some(Consistency::Local)).await.unwrap().map(|kv| kv.value);
        let expected = match i {
            7 => Some("new".to_owned()),
            _ => held.then(|| format!("v{i}")),
        };
        assert_eq!(got, expected, "k{i}");
    }
    let registered = one.members().await.unwrap();
    let addresses: Vec<_> =
        registered.members.iter().map(|m| (m.id, m.registered, m.raft_addr.clone())).collect();
    assert_eq!(
        addresses,
        vec![(1, true, Some(config.raft_addr.to_string())), (2, true, Some(config2.raft_addr.to_string()))]
    );
    node2.shutdown().await;
    node1.shutdown().await;
}

/// A store for node 1 whose log holds `payloads` from index 1, in term 1 (hard state term 1).
async fn store_with(config: &NodeConfig, payloads: Vec<raft_core::EntryPayload>, term: u64) {
    use raft_core::Storage as _;
    let identity = raft_storage_rocks::Identity { cluster_id: config.cluster.clone(), node_id: config.id };
    let db = raft_storage_rocks::RocksDb::open(&config.data_dir, &identity, Default::default()).unwrap();
    let log = db.log(0);
    log.initial_state().await.unwrap();
    log.save_hard_state(raft_core::HardState { current_term: term, voted_for: None }).await.unwrap();
    let entries: Vec<_> = payloads
        .into_iter()
        .zip(1..)
        .map(|(payload, index)| raft_core::Entry { term: 1, index, payload })
        .collect();
    log.append(&entries).await.unwrap();
}

/// Found by review: leader 1 removed itself ({1,2,3} -> joint -> {2,3}, the last uncommitted)
/// and then 2 and 3 were lost; raft-core lets node 1 campaign on the older configuration, and
/// force refused it as a non-voter. A voter of the configuration before the newest is taken;
/// a node in neither is refused.
#[tokio::test]
async fn force_takes_a_voter_of_the_configuration_before_the_newest() {
    use raft_core::{EntryPayload, Membership};
    let dir = tempfile::tempdir().unwrap();
    let me = MemberConfig { id: 1, raft_addr: free_addr(), client_addr: free_addr() };
    let config = config_for(&me, vec![me.clone()], dir.path(), StorageKind::Rocks);
    let mut joint = Membership::with_voters([2, 3]);
    joint.outgoing_voters = [1, 2, 3].into_iter().collect();
    store_with(
        &config,
        vec![
            EntryPayload::Membership(Box::new(Membership::with_voters([1, 2, 3]))),
            EntryPayload::Blank,
            EntryPayload::Membership(Box::new(joint)),
            EntryPayload::Membership(Box::new(Membership::with_voters([2, 3]))),
        ],
        1,
    )
    .await;
    let forced = recover::force_new_cluster(&config).await.unwrap();
    assert_eq!(forced.kept_last.index, 4);

    let dir = tempfile::tempdir().unwrap();
    let config = config_for(&me, vec![me.clone()], dir.path(), StorageKind::Rocks);
    let payloads = vec![
        EntryPayload::Membership(Box::new(Membership::with_voters([1, 2, 3]))),
        EntryPayload::Membership(Box::new(Membership::with_voters([2, 3]))),
        EntryPayload::Membership(Box::new(Membership::with_voters([2, 3, 4]))),
    ];
    store_with(&config, payloads, 1).await;
    match recover::force_new_cluster(&config).await {
        Err(RecoverError::NotAVoter { id: 1, .. }) => {}
        other => panic!("a node out of the last two configurations was forced: {other:?}"),
    }
}

/// Found by review: a stored term near the protocol's limit (raft-core adopts terms up to
/// it) gave a forced term past it, which every peer then dropped. Refused instead.
#[tokio::test]
async fn force_refuses_a_term_the_protocol_would_drop() {
    let dir = tempfile::tempdir().unwrap();
    let me = MemberConfig { id: 1, raft_addr: free_addr(), client_addr: free_addr() };
    let config = config_for(&me, vec![me.clone()], dir.path(), StorageKind::Rocks);
    let payloads =
        vec![raft_core::EntryPayload::Membership(Box::new(raft_core::Membership::with_voters([1])))];
    store_with(&config, payloads, raft_core::TERM_LIMIT).await;
    match recover::force_new_cluster(&config).await {
        Err(RecoverError::TermExhausted(t)) => assert_eq!(t, raft_core::TERM_LIMIT),
        other => panic!("a term past the limit was made: {other:?}"),
    }
}

/// A one-voter cluster whose store lost entries it had acknowledged can elect nobody (no other
/// member holds them): the node stays up, and `/ready` says what happened and what the
/// operator can do, instead of only "no leader is known".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_lost_data_nobody_else_holds_says_why_it_is_not_ready() {
    use raft_core::{EntryPayload, Membership};
    let dir = tempfile::tempdir().unwrap();
    let me = MemberConfig { id: 1, raft_addr: free_addr(), client_addr: free_addr() };
    let config = config_for(&me, vec![me.clone()], dir.path(), StorageKind::Rocks);
    store_with(
        &config,
        vec![EntryPayload::Membership(Box::new(Membership::with_voters([1]))), EntryPayload::Blank],
        1,
    )
    .await;
    {
        let identity = raft_storage_rocks::Identity { cluster_id: config.cluster.clone(), node_id: 1 };
        let db = raft_storage_rocks::RocksDb::open(&config.data_dir, &identity, Default::default()).unwrap();
        let hard_state = raft_core::HardState { current_term: 1, voted_for: Some(1) };
        db.log(0).record_lost_data(hard_state, raft_core::LogId::new(1, 10)).await.unwrap();
    }
    let node = Node::start(config.clone()).await.unwrap();
    let url = format!("http://{}/ready", config.client_addr);
    let http = common::plain_http().build().unwrap();
    let mut last = String::new();
    for _ in 0..50 {
        let answer = http.get(&url).send().await.unwrap();
        assert_eq!(answer.status().as_u16(), 503, "a node that cannot elect a leader is not ready");
        last = answer.text().await.unwrap();
        if last.contains("lost data") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        last.contains("lost data it had acknowledged (up to 10@1)") && last.contains("--force-new-cluster"),
        "{last}"
    );
    node.shutdown().await;
}
