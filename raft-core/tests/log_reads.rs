//! The bounded log cache's reads from storage, attacked by an outside review, at the driver
//! level: slow and failing reads for a lagging follower (they once ran inline on the event
//! loop and stalled the leader), and the log read at a restart (once the whole log at once);
//! slow snapshot-part reads and compactions (once on the event loop too).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use raft_core::testing::counter::CounterFsm;
use raft_core::testing::local_transport::LocalNetwork;
use raft_core::{
    Config, Entry, EntryPayload, HardState, Index, Membership, NodeId, RaftNode, Role, Storage, Term,
};

mod common;
use common::SlowReads;

/// Memory storage whose `entries` can be made slow (a cold read on a busy disk) and which
/// records the largest read it served.
struct Cluster {
    network: LocalNetwork,
    config: Config,
    storages: BTreeMap<NodeId, Arc<SlowReads>>,
    nodes: BTreeMap<NodeId, Arc<RaftNode>>,
}

impl Cluster {
    async fn new(n: u64, config: Config) -> Self {
        let mut c = Self {
            network: LocalNetwork::default(),
            config,
            storages: BTreeMap::new(),
            nodes: BTreeMap::new(),
        };
        for id in 1..=n {
            c.storages.insert(id, Arc::new(SlowReads::default()));
            c.start(id).await;
        }
        c
    }

    async fn start(&mut self, id: NodeId) {
        let raft = RaftNode::start(
            id,
            self.config.clone(),
            Membership::with_voters(1..=3),
            self.storages[&id].clone(),
            Arc::new(self.network.transport(id, 4_096)),
            Box::new(CounterFsm::default()),
            raft_core::fresh_seed(),
        )
        .await
        .expect("node starts");
        self.nodes.insert(id, Arc::new(raft));
    }

    async fn stop(&mut self, id: NodeId) {
        let node = self.nodes.remove(&id).expect("running");
        node.shutdown().await.expect("shutdown");
    }

    async fn leader(&self) -> NodeId {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let statuses: Vec<_> = self.nodes.values().map(|n| n.status().protocol).collect();
            if let Some(l) = statuses.iter().filter(|s| s.role == Role::Leader).max_by_key(|s| s.term) {
                if statuses.iter().all(|s| s.leader == Some(l.id)) {
                    return l.id;
                }
            }
            assert!(Instant::now() < deadline, "no leader");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn shutdown(&mut self) {
        let ids: Vec<_> = self.nodes.keys().copied().collect();
        for id in ids {
            self.stop(id).await;
        }
    }
}

/// Proposes `n` commands of `size` bytes, 32 at a time; returns the last index applied.
async fn propose_many(node: &Arc<RaftNode>, n: u64, size: usize) -> Index {
    let mut last = 0;
    for chunk in 0..n.div_ceil(32) {
        let mut tasks = Vec::new();
        for _ in 0..32.min(n - chunk * 32) {
            let node = node.clone();
            tasks.push(tokio::spawn(async move {
                node.propose(Bytes::from(vec![b'x'; size])).await.expect("applied").log_id.index
            }));
        }
        for t in tasks {
            last = last.max(t.await.expect("task"));
        }
    }
    last
}

/// How the leader did while something went on: the longest a proposal took, and whether the
/// watching follower lost sight of the leader meanwhile.
struct LeaderProbe {
    worst: Duration,
    lost_leader: bool,
}

/// Proposes on `leader` one at a time, `pause` apart, while `go_on()` holds (at most
/// `for_at_most`), with `watcher` (if any) checking every 2 ms that it still follows `leader`.
/// A proposal that fails fails the test when `must_apply`.
async fn probe_leader(
    c: &Cluster,
    leader: NodeId,
    watcher: Option<NodeId>,
    (pause, for_at_most, must_apply): (Duration, Duration, bool),
    mut go_on: impl FnMut() -> bool,
) -> LeaderProbe {
    let watching = Arc::new(AtomicBool::new(true));
    let watch = watcher.map(|id| {
        let (watcher, watching) = (c.nodes[&id].clone(), watching.clone());
        tokio::spawn(async move {
            let mut lost = false;
            while watching.load(Ordering::Relaxed) {
                lost |= watcher.status().protocol.leader != Some(leader);
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            lost
        })
    });
    let node = c.nodes[&leader].clone();
    let started = Instant::now();
    let mut worst = Duration::ZERO;
    while started.elapsed() < for_at_most && go_on() {
        let t = Instant::now();
        let outcome = node.propose(Bytes::from_static(b"p")).await;
        if must_apply {
            outcome.expect("applied");
        }
        worst = worst.max(t.elapsed());
        tokio::time::sleep(pause).await;
    }
    watching.store(false, Ordering::Relaxed);
    let lost_leader = match watch {
        Some(w) => w.await.expect("watcher"),
        None => false,
    };
    LeaderProbe { worst, lost_leader }
}

/// The leader reads a lagging follower's entries from storage inside its event loop, one
/// awaited read per AppendEntries (up to the in-flight window at once), before it sends
/// anything else of the ready. A read that takes 25 ms (a cold read on a busy disk; the
/// log writer runs in the background precisely so that such a disk does not stall the
/// loop) holds every other follower's heartbeats and every proposal behind it: the healthy
/// follower stops hearing from the leader for longer than an election timeout and loses its
/// leader, and proposals on the leader wait for hundreds of ms.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_log_reads_for_a_lagging_follower_stall_the_leader() {
    let config = Config {
        log_cache_bytes: 0,
        snapshot_threshold_entries: 0,
        snapshot_threshold_bytes: 0,
        max_entries_per_append: 8,
        ..Config::default()
    };
    let mut c = Cluster::new(3, config.clone()).await;
    let leader = c.leader().await;
    let lagging = *c.nodes.keys().find(|id| **id != leader).expect("a follower");
    let healthy = *c.nodes.keys().find(|id| **id != leader && **id != lagging).expect("another");
    c.stop(lagging).await;
    let last = propose_many(&c.nodes[&leader], 3_000, 16).await;
    let delay: u64 = std::env::var("REVIEW_READ_DELAY_MS").ok().and_then(|v| v.parse().ok()).unwrap_or(25);
    c.storages[&leader].delay_ms.store(delay, Ordering::Relaxed);
    c.start(lagging).await;

    // While the follower catches up: proposals on the leader, one at a time, and the healthy
    // follower's view of the leader.
    let lagging_node = c.nodes[&lagging].clone();
    let probing = (Duration::from_millis(5), Duration::from_secs(3), true);
    let LeaderProbe { worst, lost_leader } = probe_leader(&c, leader, Some(healthy), probing, || {
        lagging_node.status().protocol.commit_index < last
    })
    .await;
    c.storages[&leader].delay_ms.store(0, Ordering::Relaxed);
    c.shutdown().await;
    assert!(
        worst < Duration::from_millis(config.election_timeout_min_ms),
        "while a follower caught up from {delay} ms reads, a proposal on the leader took up to {worst:?} \
         (the healthy follower lost its leader meanwhile: {lost_leader})"
    );
}

/// A restart reads the log since the snapshot in bounded reads and keeps its payloads in
/// storage (it was once one `Storage::entries` call of the whole log, all of it handed to the
/// protocol); the entries are read back to be applied, a bounded read at a time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_reads_the_log_in_bounded_reads() {
    let config = Config {
        log_cache_bytes: 4 * 1024,
        max_bytes_per_append: 16 * 1024,
        snapshot_threshold_entries: 0,
        snapshot_threshold_bytes: 0,
        ..Config::default()
    };
    let mut c = Cluster::new(3, config.clone()).await;
    let leader = c.leader().await;
    propose_many(&c.nodes[&leader], 2_000, 1024).await;
    let follower = *c.nodes.keys().find(|id| **id != leader).expect("a follower");
    c.stop(follower).await;
    c.storages[&follower].largest_read.store(0, Ordering::Relaxed);
    c.start(follower).await;
    let largest = c.storages[&follower].largest_read.load(Ordering::Relaxed);
    c.shutdown().await;
    // Generous: the cache, what a leader may hold unapplied, and a message.
    let bound = config.log_cache_bytes + 64 * 1024 + config.max_bytes_per_append as u64;
    assert!(
        largest <= bound,
        "the restart read {largest} bytes of entries at once; the configuration allows about {bound}"
    );
}

/// A log read that fails (here: a damaged record, `StorageError::Corrupt`, which every other
/// storage path treats as fatal) is swallowed, and the fallback sends the leader's snapshot
/// even when the follower already holds everything it covers: the follower answers "done"
/// at once, the leader asks for the same entries again, the read fails again, and the
/// snapshot's first part is read and sent again, once per round trip, for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_log_read_resends_a_useless_snapshot_once_per_round_trip() {
    let config = Config {
        log_cache_bytes: 0,
        snapshot_threshold_entries: 100,
        snapshot_threshold_bytes: 0,
        snapshot_keep_entries: 10_000,
        ..Config::default()
    };
    let mut c = Cluster::new(3, config.clone()).await;
    let leader = c.leader().await;
    propose_many(&c.nodes[&leader], 160, 16).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while c.nodes[&leader].status().protocol.snapshot.index == 0 {
        assert!(Instant::now() < deadline, "the leader took no snapshot");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let lagging = *c.nodes.keys().find(|id| **id != leader).expect("a follower");
    c.stop(lagging).await;
    propose_many(&c.nodes[&leader], 40, 16).await;
    let storage = c.storages[&leader].clone();
    storage.fail_reads.store(true, Ordering::Relaxed);
    c.start(lagging).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (reads0, chunks0) =
        (storage.entries_calls.load(Ordering::Relaxed), storage.chunk_calls.load(Ordering::Relaxed));
    tokio::time::sleep(Duration::from_secs(1)).await;
    let reads = storage.entries_calls.load(Ordering::Relaxed) - reads0;
    let chunks = storage.chunk_calls.load(Ordering::Relaxed) - chunks0;
    let still_leader = c.nodes[&leader].status().protocol.role == Role::Leader;
    c.shutdown().await;
    assert!(
        reads <= 2 * 1000 / config.heartbeat_interval_ms && chunks <= 10,
        "in one second the leader (still leading: {still_leader}) failed {reads} log reads and \
         read {chunks} parts of its snapshot to send again"
    );
}

/// Parts of the snapshot a leader sends are read from storage beside the event loop: a part
/// read that takes longer than an election timeout (here 400 ms, one byte per part) once held
/// every proposal and heartbeat of the leader for as long.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_snapshot_part_reads_do_not_stall_the_leader() {
    let config = Config {
        // One snapshot (at 250 to 312: the threshold is jittered by up to a quarter) before
        // the follower restarts, none while it catches up (a snapshot the leader replaced is
        // read no more, and the transfer starts over).
        snapshot_threshold_entries: 250,
        snapshot_threshold_bytes: 0,
        snapshot_keep_entries: 5,
        snapshot_chunk_bytes: 1,
        ..Config::default()
    };
    let mut c = Cluster::new(3, config.clone()).await;
    let leader = c.leader().await;
    let lagging = *c.nodes.keys().find(|id| **id != leader).expect("a follower");
    c.stop(lagging).await;
    let last = propose_many(&c.nodes[&leader], 360, 16).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while c.nodes[&leader].status().protocol.snapshot.index < 200 {
        assert!(Instant::now() < deadline, "the leader took no snapshot");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    c.storages[&leader].chunk_delay_ms.store(400, Ordering::Relaxed);
    let chunks_before = c.storages[&leader].chunk_calls.load(Ordering::Relaxed);
    c.start(lagging).await;
    let lagging_node = c.nodes[&lagging].clone();
    let probing = (Duration::from_millis(20), Duration::from_secs(5), true);
    let LeaderProbe { worst, .. } =
        probe_leader(&c, leader, None, probing, || lagging_node.status().protocol.commit_index < last).await;
    let caught_up = c.nodes[&lagging].status().protocol.commit_index >= last;
    let chunks = c.storages[&leader].chunk_calls.load(Ordering::Relaxed) - chunks_before;
    c.storages[&leader].chunk_delay_ms.store(0, Ordering::Relaxed);
    c.shutdown().await;
    assert!(chunks > 0 && caught_up, "the follower caught up ({caught_up}) after {chunks} part reads");
    assert!(
        worst < Duration::from_millis(config.election_timeout_min_ms),
        "while the leader read {chunks} snapshot parts at 400 ms each, a proposal took up to {worst:?}"
    );
}

fn sized_command(term: Term, index: Index, len: usize) -> Entry {
    Entry { term, index, payload: EntryPayload::Command(Bytes::from(vec![b'x'; len])) }
}

/// Outside review: a restart's read sized by the previous read's entries (small ones, then
/// 64 KiB ones) returned 64 MiB at once; reads are now bounded in bytes
/// (`Storage::entries_within`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_read_after_small_entries_overshoots_the_read_bound() {
    let config = Config {
        log_cache_bytes: 1024 * 1024,
        max_bytes_per_append: 1024 * 1024,
        snapshot_threshold_entries: 0,
        snapshot_threshold_bytes: 0,
        ..Config::default()
    };
    let storage = Arc::new(SlowReads::default());
    storage.save_hard_state(HardState { current_term: 1, voted_for: None }).await.expect("hard state");
    // 16 tiny entries, then 1,024 entries of 64 KiB (64 MiB in all).
    let mut entries: Vec<Entry> = (1..=16).map(|i| sized_command(1, i, 1)).collect();
    entries.extend((17..=16 + 1024).map(|i| sized_command(1, i, 64 * 1024)));
    storage.append(&entries).await.expect("append");
    drop(entries);
    storage.largest_read.store(0, Ordering::Relaxed);
    let network = LocalNetwork::default();
    let node = RaftNode::start(
        1,
        config.clone(),
        Membership::with_voters([1, 2, 3]),
        storage.clone(),
        Arc::new(network.transport(1, 4_096)),
        Box::new(CounterFsm::default()),
        7,
    )
    .await
    .expect("node starts");
    let largest = storage.largest_read.load(Ordering::Relaxed);
    node.shutdown().await.expect("shutdown");
    let bound = 2 * config.max_bytes_per_append as u64 + 64 * 1024;
    assert!(
        largest <= bound,
        "one restart read returned {largest} bytes ({} MiB); reads are meant to be about \
         max_bytes_per_append = {} bytes (bound used: {bound})",
        largest / (1024 * 1024),
        config.max_bytes_per_append
    );
}

/// Outside review: compaction after a snapshot ran on the event loop (after draining the log
/// writer): a compaction of 600 ms held the leader's proposals for as long and cost an
/// election. It now runs beside the loop, concurrently with log writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_compaction_after_a_snapshot_stalls_the_leader() {
    let config = Config {
        snapshot_threshold_entries: 200,
        snapshot_threshold_bytes: 0,
        snapshot_keep_entries: 10,
        ..Config::default()
    };
    let mut c = Cluster::new(3, config.clone()).await;
    let leader = c.leader().await;
    let delay = 600;
    c.storages[&leader].compact_delay_ms.store(delay, Ordering::Relaxed);
    let follower = *c.nodes.keys().find(|id| **id != leader).expect("a follower");
    let storage = c.storages[&leader].clone();
    let probing = (Duration::ZERO, Duration::from_secs(4), false);
    let LeaderProbe { worst, lost_leader: lost } = probe_leader(&c, leader, Some(follower), probing, || {
        storage.compact_calls.load(Ordering::Relaxed) < 2
    })
    .await;
    let compactions = c.storages[&leader].compact_calls.load(Ordering::Relaxed);
    let term = c.nodes[&leader].status().protocol.term;
    c.shutdown().await;
    assert!(compactions > 0, "no compaction happened on the leader");
    assert!(
        worst < Duration::from_millis(config.election_timeout_min_ms) && !lost,
        "with a {delay} ms compaction on the leader ({compactions} compactions), a proposal took up \
         to {worst:?}; the follower lost its leader: {lost} (leader's term now {term})"
    );
}
