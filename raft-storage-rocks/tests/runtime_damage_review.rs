//! Outside review of issue 15, item 3 ("a checksum failure ... in a snapshot file makes
//! the node fetch ... the snapshot from a peer that has it"; "corruption on a minority never
//! becomes data loss"): damage that appears while a node runs (bit rot after the checks at
//! open) on the leader's snapshot file. A new member that needs that snapshot must still catch
//! up, from another peer's copy or from a snapshot the leader makes again. The same for a
//! committed entry in the leader's table files ("a checksum failure in a committed log
//! entry"): a follower that needs it must still be caught up.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use raft_core::testing::counter::CounterFsm;
use raft_core::testing::local_transport::LocalNetwork;
use raft_core::{Config, Membership, RaftNode, Role};
use raft_storage_rocks::{Identity, RocksDb, RocksOptions};

fn config() -> Config {
    Config { snapshot_threshold_entries: 40, snapshot_keep_entries: 5, ..Config::default() }
}

async fn start(network: &LocalNetwork, id: u64, dir: &Path) -> RaftNode {
    start_with(network, id, dir, config()).await
}

async fn start_with(network: &LocalNetwork, id: u64, dir: &Path, config: Config) -> RaftNode {
    start_store(network, id, dir, config).await.0
}

/// A voter of {1, 2, 3} on a RocksDB store in `dir`, and the store (to flush it).
async fn start_store(network: &LocalNetwork, id: u64, dir: &Path, config: Config) -> (RaftNode, RocksDb) {
    let identity = Identity { cluster_id: "final-review".into(), node_id: id };
    let db = RocksDb::open(dir, &identity, RocksOptions::default()).expect("open store");
    let node = RaftNode::start(
        id,
        config,
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

/// The position of the node that leads (`None`: not running), waiting up to 10 s.
async fn leader_of(nodes: &[Option<&RaftNode>]) -> usize {
    for _ in 0..1_000 {
        if let Some(i) =
            nodes.iter().position(|n| n.is_some_and(|n| n.status().protocol.role == Role::Leader))
        {
            return i;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("no leader");
}

fn snapshot_files(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir.join("snapshots"))
        .map(|d| {
            d.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    p.extension().is_some_and(|x| x == "snap")
                        && !p.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.'))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Flips one byte of the first chunk's data in place (same inode: an open handle sees it).
fn flip_first_data_byte(file: &Path) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new().read(true).write(true).open(file).expect("open snapshot file");
    let mut byte = [0u8; 1];
    // MAGIC (8) ‖ len (4) ‖ crc (4) ‖ data...
    f.read_exact_at(&mut byte, 16).expect("read");
    byte[0] ^= 0x40;
    f.write_all_at(&byte, 16).expect("write");
    f.sync_all().expect("sync");
}

/// Three voters, 100 writes (each node snapshots and compacts its log), then a learner with an
/// empty store is added: it can only catch up by a snapshot. Returns whether it caught up
/// within `within`, and what it reached.
async fn learner_catches_up(damage_leader_snapshot: bool, within: Duration) -> (bool, String) {
    let network = LocalNetwork::default();
    let dirs: Vec<_> = (0..4).map(|_| tempfile::tempdir().expect("tempdir")).collect();
    let mut nodes = Vec::new();
    for id in 1..=3u64 {
        nodes.push(start(&network, id, dirs[id as usize - 1].path()).await);
    }
    let l = leader_of(&nodes.iter().map(Some).collect::<Vec<_>>()).await;
    let mut last = 0;
    for _ in 0..100 {
        last = nodes[l].propose(Bytes::from_static(b"+1")).await.expect("write").log_id.index;
    }
    // Every node took a snapshot past the first entries and compacted its log.
    let deadline = Instant::now() + Duration::from_secs(20);
    while nodes.iter().any(|n| n.status().protocol.first_log_index <= 1)
        || dirs[..3].iter().any(|d| snapshot_files(d.path()).is_empty())
    {
        assert!(Instant::now() < deadline, "the nodes did not snapshot and compact");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if damage_leader_snapshot {
        for file in snapshot_files(dirs[l].path()) {
            flip_first_data_byte(&file);
        }
    }
    let learner = start(&network, 4, dirs[3].path()).await;
    tokio::time::timeout(Duration::from_secs(10), nodes[l].add_learner(4))
        .await
        .expect("add_learner answers")
        .expect("learner added");
    let deadline = Instant::now() + within;
    loop {
        let s = learner.status().protocol;
        if s.applied_index >= last {
            return (true, format!("learner applied {}", s.applied_index));
        }
        if Instant::now() > deadline {
            let leader = nodes[l].status().protocol;
            return (
                false,
                format!(
                    "learner: applied {} snapshot {} incoming {:?}; leader {}: commit {} snapshot {} first index {}",
                    s.applied_index,
                    s.snapshot,
                    s.incoming_snapshot,
                    leader.id,
                    leader.commit_index,
                    leader.snapshot,
                    leader.first_log_index
                ),
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Control: with intact files the harness works (a learner catches up by snapshot).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_learner_catches_up_by_snapshot_from_an_intact_leader() {
    let (ok, what) = learner_catches_up(false, Duration::from_secs(20)).await;
    assert!(ok, "control failed: {what}");
}

/// The leader's snapshot file rots while it runs (one byte, one node of three: a minority).
/// The two followers hold intact snapshots of the same state, and the leader holds the state
/// itself; the new member must still be caught up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_learner_catches_up_when_the_leaders_snapshot_file_rots_while_it_runs() {
    let (ok, what) = learner_catches_up(true, Duration::from_secs(30)).await;
    assert!(ok, "a minority's damaged snapshot file kept a new member from catching up for 30 s: {what}");
}

/// The whole cluster stalls: a follower was down while the others wrote past the leader's
/// compaction point, comes back needing the snapshot, and the other follower then crashes.
/// The leader's snapshot file rotted meanwhile: the returning follower is never caught up, so
/// nothing commits, and the leader (which hears both heartbeats answered) never steps down.
/// One damaged file plus one crash of three nodes: the cluster must still take writes (the
/// returning follower holds an intact snapshot of its own from before; the leader holds the
/// state to make a new one).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_rotted_snapshot_file_on_the_leader_and_one_crash_stall_the_cluster() {
    let network = LocalNetwork::default();
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().expect("tempdir")).collect();
    let mut nodes: Vec<Option<RaftNode>> = Vec::new();
    for id in 1..=3u64 {
        nodes.push(Some(start(&network, id, dirs[id as usize - 1].path()).await));
    }
    let l = leader_of(&nodes.iter().map(Option::as_ref).collect::<Vec<_>>()).await;
    let (lagging, other) = ((l + 1) % 3, (l + 2) % 3);
    // 50 writes everywhere (every node snapshots), then the lagging follower stops.
    let leader_node = nodes[l].take().expect("leader");
    for _ in 0..50 {
        leader_node.propose(Bytes::from_static(b"+1")).await.expect("write");
    }
    nodes[lagging].take().expect("runs").shutdown().await.expect("shutdown");
    for _ in 0..150 {
        leader_node.propose(Bytes::from_static(b"+1")).await.expect("write");
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while leader_node.status().protocol.snapshot.index < 100
        || leader_node.status().protocol.first_log_index < 60
    {
        assert!(Instant::now() < deadline, "the leader did not snapshot and compact");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!("before damage: leader {:?}", leader_node.status().protocol);
    for file in snapshot_files(dirs[l].path()) {
        flip_first_data_byte(&file);
    }
    // Rot reaches the blocks, whatever their name: the older snapshot a transfer in progress
    // still reads (unlinked, open) rots too.
    let prefix = dirs[l].path().join("snapshots").display().to_string();
    for fd in std::fs::read_dir("/proc/self/fd").expect("fds").filter_map(Result::ok) {
        let Ok(target) = std::fs::read_link(fd.path()) else { continue };
        let target = target.display().to_string();
        if target.starts_with(&prefix) && target.ends_with("(deleted)") {
            eprintln!("damaging open {target}");
            flip_first_data_byte(&fd.path());
        }
    }
    nodes[other].take().expect("runs").shutdown().await.expect("shutdown");
    nodes[lagging] = Some(start(&network, lagging as u64 + 1, dirs[lagging].path()).await);
    let write = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let candidates = [Some(&leader_node), nodes[lagging].as_ref()];
            let leading = candidates.iter().flatten().find(|n| n.status().protocol.role == Role::Leader);
            if let Some(n) = leading {
                if let Ok(done) = n.propose(Bytes::from_static(b"+1")).await {
                    return done;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    let lag = nodes[lagging].as_ref().expect("runs").status().protocol;
    eprintln!("after: lagging {lag:?}");
    let lead = leader_node.status().protocol;
    assert!(
        write.is_ok(),
        "no write committed for 30 s with two of three nodes up; returning follower: applied {} \
         first index {} snapshot {}; leader {} role {:?} term {}: commit {} snapshot {} first index {}",
        lag.applied_index,
        lag.first_log_index,
        lag.snapshot,
        lead.id,
        lead.role,
        lead.term,
        lead.commit_index,
        lead.snapshot,
        lead.first_log_index
    );
}

/// The leader's snapshot holds exactly its last applied entry (a snapshot after every entry)
/// when a returning follower needs it and it is found damaged: nothing new is applied to
/// snapshot, so the leader appends a blank entry and snapshots again once it is applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_snapshot_of_the_last_applied_entry_is_taken_again_after_a_blank_entry() {
    let config = Config { snapshot_threshold_entries: 1, snapshot_keep_entries: 2, ..Config::default() };
    let network = LocalNetwork::default();
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().expect("tempdir")).collect();
    let mut nodes: Vec<Option<RaftNode>> = Vec::new();
    for id in 1..=3u64 {
        nodes.push(Some(start_with(&network, id, dirs[id as usize - 1].path(), config.clone()).await));
    }
    let l = leader_of(&nodes.iter().map(Option::as_ref).collect::<Vec<_>>()).await;
    let lagging = (l + 1) % 3;
    let leader_node = nodes[l].take().expect("leader");
    nodes[lagging].take().expect("runs").shutdown().await.expect("shutdown");
    let mut last = 0;
    for _ in 0..30 {
        last = leader_node.propose(Bytes::from_static(b"+1")).await.expect("write").log_id.index;
    }
    // The snapshot reaches the last applied entry, and the log behind it is compacted.
    let deadline = Instant::now() + Duration::from_secs(20);
    while leader_node.status().protocol.snapshot.index < last
        || leader_node.status().protocol.first_log_index < 10
    {
        assert!(Instant::now() < deadline, "the leader did not snapshot its last entry");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let damaged_at = leader_node.status().protocol.snapshot;
    for file in snapshot_files(dirs[l].path()) {
        flip_first_data_byte(&file);
    }
    let returning = start_with(&network, lagging as u64 + 1, dirs[lagging].path(), config).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while returning.status().protocol.applied_index < last {
        let lead = leader_node.status().protocol;
        assert!(
            Instant::now() < deadline,
            "the returning follower did not catch up: it applied {}; the leader's snapshot {} (damaged at {damaged_at}), last {}",
            returning.status().protocol.applied_index,
            lead.snapshot,
            lead.last_log_id
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Mostly through a new snapshot after a blank entry; a part read before the damage and
    // still held for resending (the follower was down meanwhile) may also have served it.
    eprintln!(
        "caught up; the leader's snapshot is {} (damaged at {damaged_at})",
        leader_node.status().protocol.snapshot
    );
    returning.shutdown().await.expect("shutdown");
    leader_node.shutdown().await.expect("shutdown");
    for n in nodes.into_iter().flatten() {
        n.shutdown().await.expect("shutdown");
    }
}

/// Entries are read back from the store (tiny cache), and no snapshot covers them.
fn entry_config() -> Config {
    Config { log_cache_bytes: 1_024, snapshot_threshold_entries: 1_000_000, ..Config::default() }
}

// A committed entry in the leader's table files rots while the leader runs (after the checks
// at open). A follower that needs it must still be caught up (the other follower holds it),
// or the leader must hand over.

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
        nodes.push(Some(start_store(&network, id, dirs[id as usize - 1].path(), entry_config()).await));
    }
    let l = leader_of(&nodes.iter().map(|n| n.as_ref().map(|(n, _)| n)).collect::<Vec<_>>()).await;
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
    nodes[lagging] =
        Some(start_store(&network, lagging as u64 + 1, dirs[lagging].path(), entry_config()).await);
    // The other follower comes back too: a majority holds every entry intact.
    nodes[other] = Some(start_store(&network, other as u64 + 1, dirs[other].path(), entry_config()).await);
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
