//! Outside review of issue 15, item 3 ("a checksum failure in a committed log entry ...
//! makes the node fetch the entry (by index and term) ... from a peer that has it"; "corruption
//! on a minority never becomes data loss"): a committed entry in the leader's table files rots
//! while the leader runs (after the checks at open). A follower that needs it must still be
//! caught up (the other follower holds it), or the leader must hand over.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use raft_core::testing::counter::CounterFsm;
use raft_core::testing::local_transport::LocalNetwork;
use raft_core::{Config, Membership, RaftNode, Role};
use raft_storage_rocks::{Identity, RocksDb, RocksOptions};

fn config() -> Config {
    // Entries are read back from the store (tiny cache), and no snapshot covers them.
    Config { log_cache_bytes: 1_024, snapshot_threshold_entries: 1_000_000, ..Config::default() }
}

async fn start(network: &LocalNetwork, id: u64, dir: &Path) -> (RaftNode, RocksDb) {
    let identity = Identity { cluster_id: "final-review".into(), node_id: id };
    let db = RocksDb::open(dir, &identity, RocksOptions::default()).expect("open store");
    let node = RaftNode::start(
        id,
        config(),
        Membership::with_voters([1, 2, 3]),
        Arc::new(db.log(0)),
        Arc::new(network.transport(id, 4_096)),
        Box::new(CounterFsm::default()),
        raft_core::fresh_seed(),
    )
    .await
    .expect("node starts");
    (node, db)
}

async fn leader_of(nodes: &[Option<(RaftNode, RocksDb)>]) -> usize {
    for _ in 0..1_000 {
        if let Some(i) = nodes
            .iter()
            .position(|n| n.as_ref().is_some_and(|(n, _)| n.status().protocol.role == Role::Leader))
        {
            return i;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("no leader");
}

fn table_files(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .expect("read dir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "sst"))
        .collect()
}

/// Flips 16 bytes in the middle of `file` in place (same inode, same length).
fn flip_middle(file: &Path) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new().read(true).write(true).open(file).expect("open table file");
    let len = f.metadata().expect("metadata").len();
    let mut bytes = [0u8; 16];
    f.read_exact_at(&mut bytes, len / 2).expect("read");
    for b in &mut bytes {
        *b ^= 0xA5;
    }
    f.write_all_at(&bytes, len / 2).expect("write");
    f.sync_all().expect("sync");
}

/// Control: without the damage the same steps catch the follower up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_a_lagging_follower_is_caught_up_from_the_leaders_table_files() {
    lagging_follower_catches_up(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_committed_entry_rotting_on_the_leader_does_not_keep_a_follower_behind() {
    lagging_follower_catches_up(true).await;
}

async fn lagging_follower_catches_up(damage: bool) {
    let network = LocalNetwork::default();
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().expect("tempdir")).collect();
    let mut nodes: Vec<Option<(RaftNode, RocksDb)>> = Vec::new();
    for id in 1..=3u64 {
        nodes.push(Some(start(&network, id, dirs[id as usize - 1].path()).await));
    }
    let l = leader_of(&nodes).await;
    let (lagging, other) = ((l + 1) % 3, (l + 2) % 3);
    let (leader, leader_db) = nodes[l].take().expect("leader");
    let payload = Bytes::from(vec![b'+'; 200]);
    for _ in 0..10 {
        leader.propose(payload.clone()).await.expect("write");
    }
    let (node, db) = nodes[lagging].take().expect("runs");
    node.shutdown().await.expect("shutdown");
    drop(node);
    drop(db);
    for _ in 0..300 {
        leader.propose(payload.clone()).await.expect("write");
    }
    leader_db.flush().expect("flush");
    let tables = table_files(dirs[l].path());
    let largest = tables
        .iter()
        .max_by_key(|p| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0))
        .expect("a table file");
    if damage {
        flip_middle(largest);
    }
    // Only the leader's copy is damaged: the other follower holds every entry.
    let (node, db) = nodes[other].take().expect("runs");
    node.shutdown().await.expect("shutdown");
    drop(node);
    drop(db);
    nodes[lagging] = Some(start(&network, lagging as u64 + 1, dirs[lagging].path()).await);
    // The other follower comes back too: a majority holds every entry intact.
    nodes[other] = Some(start(&network, other as u64 + 1, dirs[other].path()).await);
    let write = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let candidates = [
                Some(&leader),
                nodes[lagging].as_ref().map(|(n, _)| n),
                nodes[other].as_ref().map(|(n, _)| n),
            ];
            let leading = candidates.iter().flatten().find(|n| n.status().protocol.role == Role::Leader);
            if let Some(n) = leading {
                if let Ok(done) = n.propose(payload.clone()).await {
                    return done;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    assert!(write.is_ok(), "no write for 30 s");
    // Every member catches up (the lagging one from the leader's damaged range).
    let target = write.expect("written").log_id.index;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let lag = nodes[lagging].as_ref().expect("runs").0.status().protocol;
        if lag.applied_index >= target {
            break;
        }
        let lead = leader.status().protocol;
        assert!(
            Instant::now() < deadline,
            "the follower that needs the leader's damaged entries never caught up (30 s), though \
             the other follower holds them: follower applied {} last {}; leader {} role {:?} term {} \
             commit {}",
            lag.applied_index,
            lag.last_log_id,
            lead.id,
            lead.role,
            lead.term,
            lead.commit_index
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
