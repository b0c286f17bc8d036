//! A voter that lost its data dir, or whose data dir is damaged, while the cluster's other
//! voters hold what it had: it recovers by itself when they can all say what it may have had,
//! and is refused otherwise. The scenarios come from an outside review that lost committed
//! writes with the first version (a peer that had applied nothing answered first; a peer
//! recovering lost data reported its log instead of what it had).

#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::time::Duration;

use common::{damage_table_files, eventually, TestCluster};
use raft_client::api::{Consistency, RoleView};
use raft_node::config::StorageKind;
use raft_node::{Node, StartError};

/// Writes 80 keys and waits until every node registered and holds the same log.
async fn base(cluster: &TestCluster) {
    let client = cluster.client();
    for i in 0..80 {
        client.put(&format!("k{i}"), "v").await.unwrap();
    }
    cluster.wait_registered().await;
    eventually("every log to end at the same entry", || async {
        let s = cluster.statuses().await;
        s.len() == cluster.configs.len() && s.windows(2).all(|w| w[0].last_log_index == w[1].last_log_index)
    })
    .await;
}

async fn wait_any_leader(cluster: &TestCluster) -> u64 {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        for s in cluster.statuses().await {
            if s.role == RoleView::Leader && s.commit_index > 0 {
                return s.id;
            }
        }
        assert!(std::time::Instant::now() < deadline, "no leader: {:?}", cluster.statuses().await);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn read_precious(cluster: &TestCluster) -> Option<String> {
    let client = cluster.client();
    for _ in 0..100 {
        match client.get("precious", Some(Consistency::Linearizable)).await {
            Ok(v) => return v.map(|kv| kv.value),
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
    panic!("no linearizable read within 20 s: {:?}", cluster.statuses().await)
}

/// "precious" is committed on {2, 3} while node 1 is down; after a full restart node 1 is up
/// alone (no leader, nothing applied) when node 3, its dir wiped, starts and asks. Node 2, the
/// only other holder of "precious", is down: node 3 must be refused, not start as new (it then
/// voted node 1 in and "precious" was gone).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wiped_voter_is_refused_while_the_other_holder_of_a_committed_write_is_down() {
    let mut cluster = TestCluster::start(3, StorageKind::Rocks).await;
    base(&cluster).await;
    cluster.stop(1).await;
    cluster.client().put("precious", "committed").await.unwrap();
    cluster.stop(2).await;
    cluster.stop(3).await;
    cluster.restart(1).await;
    std::fs::remove_dir_all(cluster.data_dir(3)).unwrap();
    let err = Node::start(cluster.configs[2].clone()).await.unwrap_err();
    assert!(matches!(err, StartError::LostData { .. }), "{err}");
    assert!(err.to_string().contains("[2]"), "the silent voter is named: {err}");
    // Node 2 returns: node 3 recovers, and "precious" is there.
    cluster.restart(2).await;
    cluster.restart(3).await;
    wait_any_leader(&cluster).await;
    assert_eq!(read_precious(&cluster).await.as_deref(), Some("committed"));
    eventually("node 3 to recover", || async {
        cluster.client_of(3).status().await.is_ok_and(|s| s.recovering_to_index.is_none())
    })
    .await;
    cluster.shutdown().await;
}

/// A second voter loses its dir while the first is still recovering (two of three: possibly
/// a majority): refused, never started with a floor taken from the recovering voter's log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_wiped_voter_is_refused_while_another_is_recovering() {
    let mut cluster = TestCluster::start(3, StorageKind::Rocks).await;
    base(&cluster).await;
    let leader = cluster.leader().await;
    let (first, second) = ((leader % 3) + 1, ((leader + 1) % 3) + 1);
    // No leader from now on (elections ten minutes away): the first wiped voter cannot catch up.
    for id in 1..=3u64 {
        cluster.stop(id).await;
        let c = &mut cluster.configs[(id - 1) as usize];
        c.raft.election_timeout_min_ms = 600_000;
        c.raft.election_timeout_max_ms = 700_000;
    }
    cluster.restart(leader).await;
    cluster.restart(second).await;
    std::fs::remove_dir_all(cluster.data_dir(first)).unwrap();
    cluster.restart(first).await;
    let status = cluster.client_of(first).status().await.unwrap();
    assert!(status.recovering_to_index.is_some(), "the first wiped voter recovers: {status:?}");
    cluster.stop(second).await;
    std::fs::remove_dir_all(cluster.data_dir(second)).unwrap();
    let err = Node::start(cluster.configs[(second - 1) as usize].clone()).await.unwrap_err();
    assert!(err.to_string().contains("recovering"), "{err}");
    cluster.shutdown().await;
}

/// A cluster of 3 after `base`, with a follower stopped: the follower, the highest term, its
/// data dir and an empty `damaged-123` directory made in it.
async fn stopped_with_a_damaged_dir() -> (TestCluster, u64, u64, std::path::PathBuf, std::path::PathBuf) {
    let mut cluster = TestCluster::start(3, StorageKind::Rocks).await;
    base(&cluster).await;
    let victim = cluster.follower().await;
    let term = cluster.statuses().await.iter().map(|s| s.term).max().unwrap();
    cluster.stop(victim).await;
    let dir = cluster.data_dir(victim);
    let aside = dir.join(format!("{}123", raft_storage_rocks::DAMAGED_PREFIX));
    std::fs::create_dir(&aside).unwrap();
    (cluster, victim, term, dir, aside)
}

/// A repair a crash interrupted (only `CURRENT` moved aside yet) is finished at the next start,
/// and the node, which certainly had data, recovers it from the cluster: its term comes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_repair_is_finished_and_the_node_recovers() {
    let (mut cluster, victim, term, dir, aside) = stopped_with_a_damaged_dir().await;
    // The repair's marker: its directory is still being filled.
    std::fs::write(aside.join("MOVING"), b"").unwrap();
    std::fs::rename(dir.join("CURRENT"), aside.join("CURRENT")).unwrap();
    cluster.restart(victim).await;
    let status = cluster.client_of(victim).status().await.unwrap();
    assert!(status.term >= term, "the term it may have voted in came back: {status:?}");
    let left: Vec<String> = std::fs::read_dir(&aside)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    assert!(
        left.iter().any(|n| n.ends_with(".sst") || n == "durability.rec"),
        "the rest was moved too: {left:?}"
    );
    assert!(!left.iter().any(|n| n == "MOVING"), "the repair is marked finished: {left:?}");
    let statuses = cluster.wait_converged().await;
    assert!(statuses.iter().all(|s| s.keys == 80), "{statuses:?}");
    cluster.shutdown().await;
}

/// A repair an older version began (no marker) and a crash interrupted after it moved
/// `CURRENT` and the durability record: the rest goes into a directory of its own (nothing
/// kept is overwritten) and the node recovers (found by the final outside review: the marker
/// alone left such a node refused for good).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repair_an_older_version_began_is_finished_and_the_node_recovers() {
    let (mut cluster, victim, term, dir, old) = stopped_with_a_damaged_dir().await;
    std::fs::rename(dir.join("CURRENT"), old.join("CURRENT")).unwrap();
    let record = raft_storage_rocks::DURABILITY_FILE;
    std::fs::rename(dir.join(record), old.join(record)).unwrap();
    cluster.restart(victim).await;
    let status = cluster.client_of(victim).status().await.unwrap();
    assert!(status.term >= term, "the term it may have voted in came back: {status:?}");
    let names = |d: &std::path::Path| -> Vec<String> {
        std::fs::read_dir(d).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().to_string()).collect()
    };
    let mut kept = names(&old);
    kept.sort();
    assert_eq!(
        kept,
        vec!["CURRENT".to_string(), record.to_string()],
        "the older directory is left as it was"
    );
    let asides: Vec<String> =
        names(&dir).into_iter().filter(|n| n.starts_with(raft_storage_rocks::DAMAGED_PREFIX)).collect();
    assert_eq!(asides.len(), 2, "the rest went into a directory of its own: {asides:?}");
    let statuses = cluster.wait_converged().await;
    assert!(statuses.iter().all(|s| s.keys == 80), "{statuses:?}");
    cluster.shutdown().await;
}

/// The damaged-dir refusal says what happened (nothing nested about an empty dir).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_damaged_dir_refusal_says_what_happened() {
    let mut cluster = TestCluster::start(3, StorageKind::Rocks).await;
    base(&cluster).await;
    let leader = cluster.leader().await;
    let victim = (leader % 3) + 1;
    let away = (victim % 3) + 1;
    cluster.stop(victim).await;
    cluster.stop(away).await;
    damage_table_files(&cluster.data_dir(victim));
    let err = Node::start(cluster.configs[(victim - 1) as usize].clone()).await.unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, StartError::Damaged { .. }), "{text}");
    assert!(text.contains("is damaged") && !text.contains("its data was lost"), "misleading: {text}");
    assert!(text.contains(&format!("[{away}]")), "the silent voter is named: {text}");
    cluster.shutdown().await;
}

/// Stops every node after "precious" is committed on all three and wipes node 3's dir.
async fn committed_then_all_down_and_3_wiped(cluster: &mut TestCluster) {
    base(cluster).await;
    cluster.client().put("precious", "committed").await.unwrap();
    eventually("every node to hold \"precious\"", || async {
        let s = cluster.statuses().await;
        s.len() == 3 && s.windows(2).all(|w| w[0].last_log_index == w[1].last_log_index)
    })
    .await;
    for id in 1..=3 {
        cluster.stop(id).await;
    }
    std::fs::remove_dir_all(cluster.data_dir(3)).unwrap();
}

/// Review 3: a wiped voter that hears from nobody (every other member is down) used to start
/// as a member of a new cluster, vote with an empty log and let a committed write be lost. It
/// waits now, answering that it is starting with an empty dir, until the others are back; then
/// it recovers from them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wiped_voter_that_hears_nobody_waits_instead_of_starting_fresh() {
    let mut cluster = TestCluster::start(3, StorageKind::Rocks).await;
    committed_then_all_down_and_3_wiped(&mut cluster).await;
    let starting = tokio::spawn(Node::start(cluster.configs[2].clone()));
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(!starting.is_finished(), "node 3 started (or gave up) while nobody answered");
    let status = cluster.client_of(3).status().await.unwrap();
    assert_eq!(status.starting, Some(raft_client::api::StartingView::Empty), "{status:?}");
    cluster.restart(1).await;
    cluster.restart(2).await;
    let node = tokio::time::timeout(Duration::from_secs(30), starting).await.unwrap().unwrap().unwrap();
    cluster.nodes[2] = Some(node);
    let status = cluster.client_of(3).status().await.unwrap();
    assert!(status.starting.is_none() && status.term > 0, "{status:?}");
    wait_any_leader(&cluster).await;
    assert_eq!(read_precious(&cluster).await.as_deref(), Some("committed"));
    eventually("node 3 to recover and hold \"precious\"", || async {
        let local = cluster.client_of(3).get("precious", Some(Consistency::Local)).await;
        local.ok().flatten().is_some_and(|kv| kv.value == "committed")
            && cluster.client_of(3).status().await.is_ok_and(|s| s.recovering_to_index.is_none())
    })
    .await;
    cluster.shutdown().await;
}

/// Review 3: a wiped voter that hears only from a member that never ran used to take the
/// cluster for new. Here members 1-3 ran; the operator then listed a planned node 4 in node 3's
/// and node 4's configs, and node 3's dir was wiped. It waits while only node 4 answers; once
/// the members holding data answer it is refused, naming the member that holds nothing (it may
/// be a second wiped voter).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wiped_voter_that_hears_only_a_member_that_never_ran_waits_then_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let four = common::configs(4, dir.path(), StorageKind::Rocks);
    let three: Vec<_> = four[..3]
        .iter()
        .map(|c| {
            let mut c = c.clone();
            c.members.truncate(3);
            c
        })
        .collect();
    let nodes =
        futures_util::future::try_join_all(three.iter().map(|c| Node::start(c.clone()))).await.unwrap();
    let mut cluster = TestCluster { dir, configs: three, nodes: nodes.into_iter().map(Some).collect() };
    cluster.wait_for_leader().await;
    committed_then_all_down_and_3_wiped(&mut cluster).await;
    cluster.configs[2] = four[2].clone();
    cluster.configs.push(four[3].clone());
    cluster.nodes.push(None);
    let third = tokio::spawn(Node::start(cluster.configs[2].clone()));
    let fourth = tokio::spawn(Node::start(cluster.configs[3].clone()));
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(!third.is_finished(), "node 3 started (or gave up) hearing only from node 4, which never ran");
    assert!(!fourth.is_finished(), "node 4 started (or gave up) hearing only from node 3");
    cluster.restart(1).await;
    cluster.restart(2).await;
    for (id, start) in [(3, third), (4, fourth)] {
        match tokio::time::timeout(Duration::from_secs(30), start).await.unwrap().unwrap() {
            Err(e @ StartError::LostData { .. }) => {
                let other = if id == 3 { "[4]" } else { "[3]" };
                assert!(e.to_string().contains(other), "node {id}: the starting voter is named: {e}");
            }
            Err(e) => panic!("node {id} refused for another reason: {e}"),
            Ok(_) => panic!("node {id} started while another voter holds nothing"),
        }
    }
    // Nothing was lost: the two holders still agree on "precious".
    cluster.nodes.truncate(2);
    cluster.configs.truncate(2);
    for id in 1..=2 {
        let got = cluster.client_of(id).get("precious", Some(Consistency::Local)).await.unwrap();
        assert_eq!(got.map(|kv| kv.value).as_deref(), Some("committed"));
    }
    cluster.shutdown().await;
}

/// Review: a wiped node that joined with `join` asked every voter of the view it got, but
/// skipped voters that did not answer: behind a stale view (it was promoted while that member
/// was down) it started fresh as a voter with an empty log. Listed as a member while a voter
/// of the view is silent, it is refused now.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wiped_joined_member_is_refused_while_a_voter_of_its_view_is_silent() {
    use raft_node::config::MemberConfig;
    let mut cluster = TestCluster::start(3, StorageKind::Rocks).await;
    base(&cluster).await;
    let me = MemberConfig { id: 4, raft_addr: common::free_addr(), client_addr: common::free_addr() };
    let mut config = common::config_for(&me, Vec::new(), cluster.dir.path(), StorageKind::Rocks);
    config.members.clear();
    config.join = vec![cluster.endpoint(1)];
    config.join_as_voter = false;
    let four = Node::start(config.clone()).await.unwrap();
    let client = cluster.client();
    eventually("node 4 to be a registered learner", || async {
        client.members().await.is_ok_and(|m| m.members.iter().any(|m| m.id == 4 && m.registered))
    })
    .await;
    four.shutdown().await;
    std::fs::remove_dir_all(&config.data_dir).unwrap();
    cluster.stop(3).await;
    let err = Node::start(config.clone()).await.unwrap_err();
    assert!(matches!(err, StartError::LostData { .. }), "{err}");
    assert!(err.to_string().contains("[3]"), "the silent voter is named: {err}");
    // With every voter answering, a learner that lost its data starts over.
    cluster.restart(3).await;
    let four = Node::start(config).await.unwrap();
    four.shutdown().await;
    cluster.shutdown().await;
}

/// Found by chaos (seed 7): a node that had joined through `join` (no `members`) could never
/// repair a damaged store: the repair asked the configured members, of which it has none. It
/// asks the cluster it joins through now, and recovers as a voter that lost its data.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_joined_voter_whose_store_is_damaged_is_repaired_from_the_cluster() {
    use raft_node::config::MemberConfig;
    let cluster = TestCluster::start(3, StorageKind::Rocks).await;
    base(&cluster).await;
    let me = MemberConfig { id: 4, raft_addr: common::free_addr(), client_addr: common::free_addr() };
    let mut config = common::config_for(&me, Vec::new(), cluster.dir.path(), StorageKind::Rocks);
    config.members.clear();
    config.join = vec![cluster.endpoint(1)];
    config.join_as_voter = true;
    let four = Node::start(config.clone()).await.unwrap();
    let client = cluster.client();
    eventually("node 4 to be a registered voter", || async {
        client.members().await.is_ok_and(|m| {
            m.members
                .iter()
                .any(|m| m.id == 4 && m.registered && m.role == raft_client::api::MemberRole::Voter)
        })
    })
    .await;
    client.put("precious", "committed").await.unwrap();
    let mine = raft_client::Client::new([config.client_addr.to_string()], Default::default()).unwrap();
    eventually("node 4 to hold \"precious\"", || async {
        mine.get("precious", Some(Consistency::Local)).await.ok().flatten().is_some()
    })
    .await;
    four.shutdown().await;
    common::damage_table_files(&config.data_dir);
    let four = Node::start(config.clone()).await.unwrap();
    eventually("node 4 to recover \"precious\"", || async {
        mine.get("precious", Some(Consistency::Local))
            .await
            .ok()
            .flatten()
            .is_some_and(|kv| kv.value == "committed")
            && mine.status().await.is_ok_and(|s| s.recovering_to_index.is_none())
    })
    .await;
    four.shutdown().await;
    cluster.shutdown().await;
}
