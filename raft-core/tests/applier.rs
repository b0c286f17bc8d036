//! The state machine on a task of its own (`driver/apply.rs`), attacked by an outside review:
//! the bounds of what is committed but not applied, the hold, received snapshots restored
//! beside the event loop, panics, and a state machine that computes without awaiting.
//!
//! Each of `a_stuck_leader_...`, `a_second_snapshot_during_a_slow_restore_...` and
//! `a_leader_whose_state_machine_computes_for_a_while_keeps_leading` failed on the first
//! version of the applier, and `a_stuck_follower_...` on the first version of the log cache.
//! The others are probes that held.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use raft_core::testing::counter::CounterFsm;
use raft_core::testing::gated::{Gate, GatedFsm};
use raft_core::testing::local_transport::{LocalNetwork, LocalTransport};
use raft_core::{
    Config, Entry, EntryPayload, Fsm, FsmError, Index, LogId, Membership, Message, NodeId, Payload,
    ProposalRejection, RaftError, RaftNode, ReadMode, Role, SnapshotMeta, Transport,
};
use raft_storage_mem::MemStorage;

const WAIT_MAX: Duration = Duration::from_secs(10);

async fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT_MAX;
    while !condition() {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

struct Node {
    raft: Arc<RaftNode>,
    fsm: CounterFsm,
}

struct Cluster {
    network: LocalNetwork,
    config: Config,
    initial: Membership,
    nodes: BTreeMap<NodeId, Node>,
    gates: BTreeMap<NodeId, Gate>,
}

impl Cluster {
    async fn new(n: u64, config: Config) -> Self {
        let mut c = Self {
            network: LocalNetwork::default(),
            config,
            initial: Membership::with_voters(1..=n),
            nodes: BTreeMap::new(),
            gates: BTreeMap::new(),
        };
        for id in 1..=n {
            c.start(id, Arc::new(MemStorage::default())).await;
        }
        c
    }

    async fn start(&mut self, id: NodeId, storage: Arc<MemStorage>) {
        let fsm = CounterFsm::default();
        let gate = self.gates.entry(id).or_default().clone();
        let raft = RaftNode::start(
            id,
            self.config.clone(),
            self.initial.clone(),
            storage,
            Arc::new(self.network.transport(id, 4_096)),
            Box::new(GatedFsm { inner: fsm.clone(), gate }),
            raft_core::fresh_seed(),
        )
        .await
        .expect("node starts");
        self.nodes.insert(id, Node { raft: Arc::new(raft), fsm });
    }

    fn node(&self, id: NodeId) -> &RaftNode {
        &self.nodes[&id].raft
    }

    fn gate(&mut self, id: NodeId) -> Gate {
        self.gates.entry(id).or_default().clone()
    }

    async fn wait_for_leader(&self) -> NodeId {
        let deadline = tokio::time::Instant::now() + WAIT_MAX;
        loop {
            let statuses: Vec<_> = self.nodes.values().map(|n| n.raft.status().protocol).collect();
            if let Some(leader) =
                statuses.iter().filter(|s| s.role == Role::Leader).max_by_key(|s| s.term).map(|s| s.id)
            {
                if statuses.iter().all(|s| s.leader == Some(leader)) {
                    return leader;
                }
            }
            assert!(tokio::time::Instant::now() < deadline, "no leader");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn other_than(&self, not: NodeId) -> NodeId {
        *self.nodes.keys().find(|id| **id != not).expect("another node")
    }
}

// ---------------------------------------------------------------------------------------------
// Finding 1: committed entries that are not applied have no bound.
// ---------------------------------------------------------------------------------------------

/// The design bound of the apply queue (driver/apply.rs, APPLY_BYTES_MAX): 16 MiB.
const APPLY_BYTES_MAX: u64 = 16 << 20;

/// The leader's state machine is stuck. The apply queue fills (64 batches), the rest is held
/// back in the protocol (`hold_apply`), and the leader goes on accepting and committing
/// proposals (`max_uncommitted_*` count from the commit index): nothing bounds the
/// committed-but-unapplied entries it holds in memory (no snapshot can be taken either). Here
/// 160 MiB of payload (as counted by `Entry::size_bytes`) pile up on a leader configured with
/// 1 MiB of uncommitted bytes and a 16 MiB apply queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_leader_state_machine_does_not_let_unapplied_committed_entries_grow_without_bound() {
    const PAYLOAD: usize = 256 << 10;
    const PROPOSALS: usize = 640; // 160 MiB
    let config = Config {
        max_uncommitted_entries: 16,
        max_uncommitted_bytes: 1 << 20,
        max_bytes_per_append: 1 << 20,
        rpc_timeout_ms: 60_000,
        ..Config::default()
    };
    let bound = APPLY_BYTES_MAX + config.max_uncommitted_bytes;
    let mut c = Cluster::new(3, config).await;
    let leader = c.wait_for_leader().await;
    let gate = c.gate(leader);
    gate.apply_held.store(true, Ordering::SeqCst);

    let refused = Arc::new(AtomicU64::new(0));
    let payload = Bytes::from(vec![b'x'; PAYLOAD]);
    // A client that proposes one command at a time as the leader takes them (retrying on
    // Busy), for at most 10 s. A proposal is answered only once applied: never, here.
    let give_up = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut appended = 0;
    while appended < PROPOSALS && tokio::time::Instant::now() < give_up {
        let node = c.nodes[&leader].raft.clone();
        let before = node.status().protocol.last_log_id.index;
        let (p, refused) = (payload.clone(), refused.clone());
        let task = tokio::spawn(async move {
            if let Err(RaftError::Rejected(ProposalRejection::Busy)) = node.propose(p).await {
                refused.fetch_add(1, Ordering::SeqCst);
            }
        });
        let node = c.node(leader);
        for _ in 0..200 {
            if node.status().protocol.last_log_id.index > before {
                appended += 1;
                break;
            }
            if task.is_finished() {
                tokio::time::sleep(Duration::from_millis(5)).await;
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    let node = c.node(leader);
    wait_until("the leader commits what it appended", || {
        let s = node.status().protocol;
        s.commit_index == s.last_log_id.index
    })
    .await;
    let s = node.status().protocol;
    let unapplied_entries = s.commit_index - s.applied_index;
    let unapplied_bytes = unapplied_entries * PAYLOAD as u64;
    eprintln!(
        "leader: commit {} applied {} ({} MiB committed, not applied); refused {} times",
        s.commit_index,
        s.applied_index,
        unapplied_bytes >> 20,
        refused.load(Ordering::SeqCst)
    );
    gate.apply_held.store(false, Ordering::SeqCst);
    assert!(
        unapplied_bytes <= bound,
        "the leader holds {} MiB of committed entries its state machine has not applied (bound: {} MiB): \
         nothing stops it accepting proposals while its state machine is stuck",
        unapplied_bytes >> 20,
        bound >> 20
    );
    for n in c.nodes.values() {
        let _ = n.raft.shutdown().await;
    }
}

/// The follower's version: its state machine is stuck, the leader (whose own state machine is
/// fine) goes on committing, and the follower accepts and persists every entry. What it cannot
/// hand out (the apply queue is full) must not all stay in memory: the log's cache drops the
/// payloads of committed, durable entries past `log_cache_bytes`, and they are read back from
/// storage when applying goes on. 320 MiB are committed here (first version of the applier:
/// all of it stayed in memory).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_follower_state_machine_does_not_let_unapplied_committed_entries_grow_without_bound() {
    const PAYLOAD: usize = 256 << 10;
    const PROPOSALS: usize = 1_280; // 320 MiB
                                    // The log cache of a later commit (ba0de7e) defaults to 64 MiB.
    const LOG_CACHE_BYTES: u64 = 64 << 20;
    let config = Config { rpc_timeout_ms: 60_000, ..Config::default() };
    let bound = APPLY_BYTES_MAX + LOG_CACHE_BYTES + config.max_uncommitted_bytes;
    let mut c = Cluster::new(3, config).await;
    let leader = c.wait_for_leader().await;
    let follower = c.other_than(leader);
    let gate = c.gate(follower);
    gate.apply_held.store(true, Ordering::SeqCst);
    let payload = Bytes::from(vec![b'x'; PAYLOAD]);
    let mut proposals = Vec::new();
    for _ in 0..PROPOSALS {
        let (node, p) = (c.nodes[&leader].raft.clone(), payload.clone());
        proposals.push(tokio::spawn(async move { node.propose(p).await }));
        if proposals.len() % 64 == 0 {
            for p in proposals.drain(..) {
                p.await.expect("joined").expect("applied on the leader");
            }
        }
    }
    for p in proposals {
        p.await.expect("joined").expect("applied on the leader");
    }
    let last = c.node(leader).status().protocol.last_log_id.index;
    let f = c.node(follower);
    wait_until("the follower learns the commit", || f.status().protocol.commit_index >= last).await;
    let s = f.status().protocol;
    let unapplied_bytes = (s.commit_index - s.applied_index) * PAYLOAD as u64;
    eprintln!(
        "follower: commit {} applied {} ({} MiB committed, not applied; {} MiB held by the log)",
        s.commit_index,
        s.applied_index,
        unapplied_bytes >> 20,
        s.log_cached_bytes >> 20
    );
    assert!(unapplied_bytes > bound, "the test commits more than the bound while the follower is stuck");
    // Held in memory: the apply queue's batches (at most its bound) and the log's payloads.
    let held = APPLY_BYTES_MAX + s.log_cached_bytes;
    gate.apply_held.store(false, Ordering::SeqCst);
    let fsm = c.nodes[&follower].fsm.clone();
    wait_until("the follower applies everything once released", || fsm.count() == PROPOSALS as u64).await;
    for n in c.nodes.values() {
        let _ = n.raft.shutdown().await;
    }
    assert!(
        held <= bound,
        "the follower holds {} MiB of committed entries its state machine has not applied (bound: {} MiB)",
        held >> 20,
        bound >> 20
    );
}

// ---------------------------------------------------------------------------------------------
// Finding 2: a second received snapshot while the first one's restore runs stops the event loop.
// ---------------------------------------------------------------------------------------------

/// CounterFsm's snapshot of count `index`: `index` as 7 decimal digits, in one part.
fn snapshot_message(from: NodeId, term: u64, snapshot: LogId) -> Message {
    let data = Bytes::from(format!("{:07}", snapshot.index));
    let meta = SnapshotMeta { last_log_id: snapshot, membership: Membership::with_voters([1, 2, 3]) };
    Message { from, to: 1, term, payload: Payload::InstallSnapshot { meta, offset: 0, data, done: true } }
}

fn heartbeat(from: NodeId, term: u64, prev: LogId, commit: Index, read_seq: u64) -> Message {
    Message {
        from,
        to: 1,
        term,
        payload: Payload::AppendEntries {
            prev_log_id: prev,
            entries: Vec::new(),
            leader_commit: commit,
            read_seq,
        },
    }
}

/// Waits up to `within` for an answer from the follower to `leader` that `matches`.
async fn answered(leader: &LocalTransport, within: Duration, matches: impl Fn(&Message) -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let mut buf = Vec::new();
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match tokio::time::timeout(left, leader.recv(&mut buf, 100)).await {
            Ok(Ok(_)) => {
                if buf.iter().any(&matches) {
                    return true;
                }
            }
            _ => return false,
        }
    }
}

/// Node 1 is a follower fed by hand by "leader" 2. Its state machine's restore is slow (held).
/// The first snapshot's restore runs beside the event loop, as the issue asks: heartbeats are
/// answered. A second snapshot arriving before that restore ends makes the driver wait for it
/// inside `store_received_snapshot`, on the event loop: from then on the follower answers
/// nothing (heartbeats, votes, reads, even `shutdown`) until the first restore ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_snapshot_during_a_slow_restore_does_not_stop_the_event_loop() {
    let network = LocalNetwork::default();
    let leader = network.transport(2, 10_000);
    let _other = network.transport(3, 10_000);
    let fsm = CounterFsm::default();
    let gate = Gate::default();
    gate.restore_held.store(true, Ordering::SeqCst);
    let config = Config {
        election_timeout_min_ms: 100_000,
        election_timeout_max_ms: 200_000,
        snapshot_threshold_entries: 0,
        ..Config::default()
    };
    let node = RaftNode::start(
        1,
        config,
        Membership::with_voters([1, 2, 3]),
        Arc::new(MemStorage::default()),
        Arc::new(network.transport(1, 10_000)),
        Box::new(GatedFsm { inner: fsm.clone(), gate: gate.clone() }),
        7,
    )
    .await
    .expect("starts");

    let s1 = LogId::new(1, 5);
    leader.send(snapshot_message(2, 1, s1)).expect("send");
    let done = |snap: LogId| move |m: &Message| matches!(m.payload, Payload::InstallSnapshotResponse { snapshot, done: true, .. } if snapshot == snap);
    assert!(answered(&leader, Duration::from_secs(2), done(s1)).await, "the first snapshot is stored");
    leader.send(heartbeat(2, 1, s1, 5, 1)).expect("send");
    let ack = |seq: u64| move |m: &Message| matches!(m.payload, Payload::AppendEntriesResponse { read_seq, .. } if read_seq == seq);
    assert!(
        answered(&leader, Duration::from_secs(1), ack(1)).await,
        "a heartbeat is answered while the first restore runs"
    );

    // The leader has compacted past what the follower holds: a second snapshot.
    let s2 = LogId::new(1, 10);
    leader.send(snapshot_message(2, 1, s2)).expect("send");
    tokio::time::sleep(Duration::from_millis(50)).await;
    leader.send(heartbeat(2, 1, s2, 10, 2)).expect("send");
    let heard = answered(&leader, Duration::from_secs(2), ack(2)).await;

    gate.restore_held.store(false, Ordering::SeqCst);
    wait_until("the first snapshot restored", || fsm.count() == 5).await;
    // The second snapshot's last part was refused while the first restore ran; a leader sends
    // it again (an election timeout later), as here.
    let mut installed = false;
    for _ in 0..50 {
        leader.send(snapshot_message(2, 1, s2)).expect("send");
        if answered(&leader, Duration::from_millis(200), done(s2)).await {
            installed = true;
            break;
        }
    }
    assert!(installed, "the second snapshot is taken once the first restore is done");
    wait_until("the second snapshot restored", || fsm.count() == 10).await;
    tokio::time::timeout(Duration::from_secs(5), node.shutdown()).await.expect("shutdown returns").ok();
    assert!(
        heard,
        "the follower stopped answering heartbeats for as long as the first snapshot's restore ran"
    );
}

// ---------------------------------------------------------------------------------------------
// Probes that held (kept as regression tests).
// ---------------------------------------------------------------------------------------------

/// A follower whose state machine is held gets far more than 64 batches (the hold kicks in);
/// reads on it time out rather than being answered early; once released it applies every
/// entry once, in order, and serves reads that cover the writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_follower_fills_its_queue_then_catches_up_exactly() {
    let config = Config { rpc_timeout_ms: 300, ..Config::default() };
    let mut c = Cluster::new(3, config).await;
    let leader = c.wait_for_leader().await;
    let follower = c.other_than(leader);
    let gate = c.gate(follower);
    gate.apply_held.store(true, Ordering::SeqCst);
    let calls_before = gate.apply_calls.load(Ordering::SeqCst);
    let mut last = 0;
    for i in 0..300u64 {
        last = c.node(leader).propose(Bytes::from(format!("w{i}"))).await.expect("applied").log_id.index;
    }
    let f = c.node(follower);
    wait_until("the follower knows the commit", || f.status().protocol.commit_index >= last).await;
    // Only one batch reached the held state machine.
    assert!(gate.apply_calls.load(Ordering::SeqCst) <= calls_before + 1);
    assert_eq!(c.nodes[&follower].fsm.count(), 0);
    let read = f.read_index(ReadMode::ReadIndex).await;
    assert_eq!(read, Err(RaftError::Rejected(ProposalRejection::Timeout)), "a read answered before apply");
    gate.apply_held.store(false, Ordering::SeqCst);
    let fsm = c.nodes[&follower].fsm.clone();
    wait_until("the follower applies everything", || fsm.count() == 300).await;
    let index = f.read_index(ReadMode::ReadIndex).await.expect("read");
    assert!(index >= last);
    assert_eq!(fsm.count(), 300);
    assert_eq!(fsm.commands_applied(), 300, "every command applied exactly once");
    assert_eq!(f.status().fatal, None);
    for n in c.nodes.values() {
        let _ = n.raft.shutdown().await;
    }
}

// ---------------------------------------------------------------------------------------------
// Finding 4: a state machine whose apply is CPU work (no await inside, like raft-kv's KvFsm)
// still stops the leader's event loop: the applier wakes the driver task into its worker's
// LIFO slot (which other workers cannot steal) and goes straight on with the next queued batch.
// ---------------------------------------------------------------------------------------------

/// How a slow batch spends its time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Work {
    /// Computing, without awaiting (a real state machine's apply: decoding, map updates).
    Cpu,
    /// Awaiting a timer (the existing tests' GatedFsm and the simulator's SimFsm).
    Sleep,
}

/// A CounterFsm whose batches on node `slow` (0: none) take `BATCH_MS` each.
struct BusyFsm {
    id: NodeId,
    slow: Arc<AtomicU64>,
    work: Work,
    inner: CounterFsm,
}

const BATCH_MS: u64 = 150;

#[async_trait]
impl Fsm for BusyFsm {
    async fn apply(&mut self, entries: &[Entry]) -> Result<Vec<Bytes>, FsmError> {
        if self.slow.load(Ordering::SeqCst) == self.id {
            match self.work {
                Work::Cpu => {
                    let until = std::time::Instant::now() + Duration::from_millis(BATCH_MS);
                    let mut x = 0u64;
                    while std::time::Instant::now() < until {
                        x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
                    }
                }
                Work::Sleep => tokio::time::sleep(Duration::from_millis(BATCH_MS)).await,
            }
        }
        self.inner.apply(entries).await
    }

    async fn snapshot(&mut self) -> Result<Box<dyn raft_core::SnapshotSource>, FsmError> {
        self.inner.snapshot().await
    }

    async fn restore(&mut self, snapshot: &mut dyn raft_core::SnapshotReader) -> Result<(), FsmError> {
        self.inner.restore(snapshot).await
    }
}

/// Three nodes; the leader's batches take 60 ms each and clients keep a backlog queued at its
/// applier for 3 s. Returns the elections seen meanwhile (term changes), and how many writes
/// were acknowledged.
async fn elections_while_the_leader_applies_slowly(work: Work) -> (u64, u64) {
    let network = LocalNetwork::default();
    let slow = Arc::new(AtomicU64::new(0));
    let mut nodes = BTreeMap::new();
    for id in 1..=3 {
        let fsm = BusyFsm { id, slow: slow.clone(), work, inner: CounterFsm::default() };
        let raft = RaftNode::start(
            id,
            Config::default(),
            Membership::with_voters(1..=3),
            Arc::new(MemStorage::default()),
            Arc::new(network.transport(id, 4_096)),
            Box::new(fsm),
            raft_core::fresh_seed(),
        )
        .await
        .expect("starts");
        nodes.insert(id, Arc::new(raft));
    }
    let leader = loop {
        let leaders: Vec<_> =
            nodes.values().filter(|n| n.status().protocol.role == Role::Leader).map(|n| n.id()).collect();
        if let [leader] = leaders[..] {
            if nodes.values().all(|n| n.status().protocol.leader == Some(leader)) {
                break leader;
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    nodes[&leader].propose(Bytes::from_static(b"first")).await.expect("applied");
    let term = nodes[&leader].status().protocol.term;
    slow.store(leader, Ordering::SeqCst);
    let acknowledged = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    for c in 0..32 {
        let (node, acknowledged, stop) = (nodes[&leader].clone(), acknowledged.clone(), stop.clone());
        clients.push(tokio::spawn(async move {
            let mut i = 0;
            while !stop.load(Ordering::SeqCst) {
                i += 1;
                if node.propose(Bytes::from(format!("{c}-{i}"))).await.is_ok() {
                    acknowledged.fetch_add(1, Ordering::SeqCst);
                } else {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        }));
    }
    let mut watch = nodes[&leader].watch_status();
    let gap_ms = Arc::new(AtomicU64::new(0));
    let watcher = {
        let (gap_ms, stop) = (gap_ms.clone(), stop.clone());
        tokio::spawn(async move {
            let mut last = std::time::Instant::now();
            while !stop.load(Ordering::SeqCst) {
                if tokio::time::timeout(Duration::from_millis(100), watch.changed()).await.is_ok() {
                    let now = std::time::Instant::now();
                    gap_ms.fetch_max((now - last).as_millis() as u64, Ordering::SeqCst);
                    last = now;
                } else {
                    gap_ms.fetch_max((std::time::Instant::now() - last).as_millis() as u64, Ordering::SeqCst);
                }
            }
        })
    };
    let mut max_term = term;
    let until = tokio::time::Instant::now() + Duration::from_secs(3);
    while tokio::time::Instant::now() < until {
        for n in nodes.values() {
            max_term = max_term.max(n.status().protocol.term);
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    stop.store(true, Ordering::SeqCst);
    slow.store(0, Ordering::SeqCst);
    let _ = watcher.await;
    eprintln!(
        "{work:?}: longest the leader's driver went without a step: {} ms",
        gap_ms.load(Ordering::SeqCst)
    );
    for c in clients {
        let _ = c.await;
    }
    for n in nodes.values() {
        let _ = n.shutdown().await;
    }
    (max_term - term, acknowledged.load(Ordering::SeqCst))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_whose_state_machine_computes_for_a_while_keeps_leading() {
    let (elections, acknowledged) = elections_while_the_leader_applies_slowly(Work::Cpu).await;
    eprintln!("cpu-bound apply: {elections} elections, {acknowledged} writes acknowledged");
    assert_eq!(elections, 0, "the leader's CPU-bound apply batches stopped its heartbeats");
}

/// The control: the same load with batches that await a timer instead: no election.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_a_leader_whose_state_machine_sleeps_keeps_leading() {
    let (elections, acknowledged) = elections_while_the_leader_applies_slowly(Work::Sleep).await;
    eprintln!("sleeping apply: {elections} elections, {acknowledged} writes acknowledged");
    assert_eq!(elections, 0);
}

/// A follower restores the leader's snapshot slowly. A read and a forwarded proposal made on it
/// meanwhile are not answered before the state machine holds their index; once it does, the
/// read covers every write acknowledged before it, and the proposal's response comes from the
/// state machine after the restore.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_and_proposals_on_a_restoring_follower_wait_for_the_restore() {
    let config = Config {
        snapshot_threshold_entries: 50,
        snapshot_keep_entries: 10,
        rpc_timeout_ms: 5_000,
        ..Config::default()
    };
    let mut c = Cluster::new(3, config).await;
    let leader = c.wait_for_leader().await;
    let follower = c.other_than(leader);
    let stopped = c.nodes.remove(&follower).expect("running");
    stopped.raft.shutdown().await.expect("shutdown");
    let mut last = 0;
    for i in 0..120u64 {
        last = c.node(leader).propose(Bytes::from(format!("w{i}"))).await.expect("applied").log_id.index;
    }
    let gate = c.gate(follower);
    gate.restore_held.store(true, Ordering::SeqCst);
    c.start(follower, Arc::new(MemStorage::default())).await;
    let f = c.nodes[&follower].raft.clone();
    let snapshot = c.node(leader).status().protocol.snapshot.index;
    wait_until("the follower takes the snapshot", || f.status().protocol.commit_index >= snapshot).await;
    let (reader, proposer) = (f.clone(), f.clone());
    let read = tokio::spawn(async move { reader.read_index(ReadMode::ReadIndex).await });
    let proposal = tokio::spawn(async move { proposer.propose(Bytes::from_static(b"during restore")).await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!read.is_finished(), "a read answered before the restore: {:?}", read.await);
    assert!(!proposal.is_finished(), "a proposal answered before the restore");
    let fsm = c.nodes[&follower].fsm.clone();
    assert_eq!(fsm.count(), 0);
    gate.restore_held.store(false, Ordering::SeqCst);
    let index = read.await.expect("joined").expect("read served after the restore");
    assert!(index >= last);
    assert!(fsm.count() >= 120, "the read's state machine holds {} of 120 writes", fsm.count());
    let applied = proposal.await.expect("joined").expect("applied");
    assert_eq!(applied.response, Bytes::from_static(b"121"));
    for n in c.nodes.values() {
        let _ = n.raft.shutdown().await;
    }
}

/// A hand-fed follower whose state machine is held gets 100 entries committed one by one (the
/// apply queue fills, the rest is held back), then a snapshot past them, then entries after
/// the snapshot. Once released it applies the queued batches, restores, and applies the rest:
/// the state is the snapshot's plus the later entries, nothing the snapshot covers is applied
/// after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_installed_while_the_apply_queue_is_full_is_restored_in_order() {
    let network = LocalNetwork::default();
    let leader = network.transport(2, 100_000);
    let _other = network.transport(3, 10_000);
    let fsm = CounterFsm::default();
    let storage = Arc::new(MemStorage::default());
    let gate = Gate::default();
    gate.apply_held.store(true, Ordering::SeqCst);
    let config = Config {
        election_timeout_min_ms: 100_000,
        election_timeout_max_ms: 200_000,
        snapshot_threshold_entries: 7,
        snapshot_keep_entries: 0,
        ..Config::default()
    };
    let node = RaftNode::start(
        1,
        config,
        Membership::with_voters([1, 2, 3]),
        storage.clone(),
        Arc::new(network.transport(1, 100_000)),
        Box::new(GatedFsm { inner: fsm.clone(), gate: gate.clone() }),
        9,
    )
    .await
    .expect("starts");
    let command =
        |index: Index| Entry { term: 1, index, payload: EntryPayload::Command(Bytes::from_static(b"c")) };
    let append = |prev: Index, entries: Vec<Entry>, commit: Index| Message {
        from: 2,
        to: 1,
        term: 1,
        payload: Payload::AppendEntries {
            prev_log_id: LogId::new(if prev == 0 { 0 } else { 1 }, prev),
            entries,
            leader_commit: commit,
            read_seq: 0,
        },
    };
    for k in 1..=100 {
        leader.send(append(k - 1, vec![command(k)], k)).expect("send");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    wait_until("the follower commits 100", || node.status().protocol.commit_index == 100).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(gate.apply_calls.load(Ordering::SeqCst), 1, "one batch reached the held state machine");
    leader.send(snapshot_message(2, 1, LogId::new(1, 150))).expect("send");
    wait_until("the snapshot is installed", || node.status().protocol.commit_index == 150).await;
    leader.send(append(150, (151..=170).map(command).collect(), 170)).expect("send");
    wait_until("the follower commits 170", || node.status().protocol.commit_index == 170).await;
    gate.apply_held.store(false, Ordering::SeqCst);
    wait_until("the follower applies 170", || node.status().protocol.applied_index == 170).await;
    assert_eq!(fsm.count(), 170);
    assert_eq!(fsm.restored(), 150);
    assert!(fsm.commands_applied() <= 100 + 20);
    assert_eq!(node.status().fatal, None);
    // Its own snapshot (7+ entries past 150) is taken on the restored state.
    wait_until("an own snapshot past the received one", || node.status().protocol.snapshot.index > 150).await;
    let own = raft_core::Storage::load_snapshot(&*storage).await.expect("load").expect("stored");
    let count: u64 = std::str::from_utf8(&own.data.to_bytes()).expect("utf-8").parse().expect("a count");
    assert_eq!(count, own.meta.last_log_id.index, "the view covers exactly the entries up to its index");
    node.shutdown().await.expect("shutdown");
}
