//! A restart hands the protocol stubs only (no log cache): attacks by an outside review, at the
//! driver level, with a state machine that records every applied entry and flags any apply
//! that is not the next index (applied twice, skipped, out of order):
//! - a single-node cluster restarted (it leads at once, every entry a stub of an older term),
//!   with and without a snapshot in the middle;
//! - a whole 3-node cluster restarted after membership changes and with an uncommitted tail
//!   of the previous term on the old leader, which is made the only possible winner;
//! - a restarted node whose stub tail conflicts with the new leader's log (truncated);
//! - a restarted follower whose apply reads are slow or failing, also while the leader
//!   installs a snapshot on it. A failed read for applying was once retried only at the next
//!   tick, which a follower hearing its leader never reaches: it stopped applying for good.

use std::collections::{BTreeMap, BTreeSet};
use std::hash::{Hash, Hasher};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use raft_core::testing::local_transport::{LocalNetwork, LocalTransport};
use raft_core::{
    read_to_end, BufferSource, Config, Entry, EntryPayload, Fsm, FsmError, Index, Membership, Message,
    NodeId, RaftNode, Role, SendError, SnapshotReader, SnapshotSource, Term, Transport, TransportClosed,
};

mod common;
use common::SlowReads;

// ---------------------------------------------------------------- recording state machine

fn digest(e: &Entry) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    match &e.payload {
        EntryPayload::Command(c) => {
            0u8.hash(&mut h);
            c.as_ref().hash(&mut h);
        }
        EntryPayload::Blank => 1u8.hash(&mut h),
        EntryPayload::Membership(m) => {
            2u8.hash(&mut h);
            format!("{m:?}").hash(&mut h);
        }
    }
    h.finish()
}

#[derive(Default)]
struct RecState {
    /// Last index applied (or restored).
    last: Index,
    /// Every entry this incarnation applied: index -> (term, digest).
    applied: BTreeMap<Index, (Term, u64)>,
    /// Payloads applied (commands only), as text.
    commands: Vec<String>,
    violations: Vec<String>,
}

#[derive(Clone, Default)]
struct Rec(Arc<Mutex<RecState>>);

impl Rec {
    fn last(&self) -> Index {
        self.0.lock().expect("not poisoned").last
    }
    fn applied(&self) -> BTreeMap<Index, (Term, u64)> {
        self.0.lock().expect("not poisoned").applied.clone()
    }
    fn violations(&self) -> Vec<String> {
        self.0.lock().expect("not poisoned").violations.clone()
    }
    fn commands(&self) -> Vec<String> {
        self.0.lock().expect("not poisoned").commands.clone()
    }
}

#[async_trait]
impl Fsm for Rec {
    async fn apply(&mut self, entries: &[Entry]) -> Result<Vec<Bytes>, FsmError> {
        let mut s = self.0.lock().expect("not poisoned");
        for e in entries {
            if e.index != s.last + 1 {
                let v = format!("applied index {} right after {}", e.index, s.last);
                s.violations.push(v);
            }
            s.last = e.index;
            s.applied.insert(e.index, (e.term, digest(e)));
            if let EntryPayload::Command(c) = &e.payload {
                s.commands.push(String::from_utf8_lossy(c).into_owned());
            }
        }
        Ok(entries.iter().map(|_| Bytes::new()).collect())
    }

    async fn snapshot(&mut self) -> Result<Box<dyn SnapshotSource>, FsmError> {
        Ok(Box::new(BufferSource::new(self.last().to_string())))
    }

    async fn restore(&mut self, snapshot: &mut dyn SnapshotReader) -> Result<(), FsmError> {
        let data = read_to_end(snapshot, 64).await?;
        let last: Index = std::str::from_utf8(&data).expect("utf-8").parse().expect("an index");
        let mut s = self.0.lock().expect("not poisoned");
        if last < s.last {
            let v = format!("restored a snapshot at {last} below the applied {}", s.last);
            s.violations.push(v);
        }
        s.last = last;
        Ok(())
    }
}

// ---------------------------------------------------------------- partitionable transport

#[derive(Clone, Default)]
struct Cuts(Arc<Mutex<BTreeSet<(NodeId, NodeId)>>>);

impl Cuts {
    fn isolate(&self, id: NodeId, others: &[NodeId]) {
        let mut c = self.0.lock().expect("not poisoned");
        for o in others {
            c.insert((id, *o));
            c.insert((*o, id));
        }
    }
    fn cut(&self, a: NodeId, b: NodeId) {
        let mut c = self.0.lock().expect("not poisoned");
        c.insert((a, b));
        c.insert((b, a));
    }
    fn heal(&self) {
        self.0.lock().expect("not poisoned").clear();
    }
}

struct Cuttable {
    inner: LocalTransport,
    cuts: Cuts,
}

#[async_trait]
impl Transport for Cuttable {
    fn send(&self, message: Message) -> Result<(), SendError> {
        if self.cuts.0.lock().expect("not poisoned").contains(&(message.from, message.to)) {
            return Ok(());
        }
        self.inner.send(message)
    }
    async fn recv(&self, buf: &mut Vec<Message>, max: usize) -> Result<usize, TransportClosed> {
        self.inner.recv(buf, max).await
    }
    async fn shutdown(&self) {
        self.inner.shutdown().await
    }
}

// ---------------------------------------------------------------- cluster

struct Cluster {
    network: LocalNetwork,
    cuts: Cuts,
    config: Config,
    voters: Vec<NodeId>,
    storages: BTreeMap<NodeId, Arc<SlowReads>>,
    nodes: BTreeMap<NodeId, Arc<RaftNode>>,
    fsms: BTreeMap<NodeId, Rec>,
    /// Every incarnation's applied entries, for the cross-check.
    history: Vec<(NodeId, Rec)>,
}

impl Cluster {
    async fn new(voters: &[NodeId], config: Config) -> Self {
        let mut c = Self {
            network: LocalNetwork::default(),
            cuts: Cuts::default(),
            config,
            voters: voters.to_vec(),
            storages: BTreeMap::new(),
            nodes: BTreeMap::new(),
            fsms: BTreeMap::new(),
            history: Vec::new(),
        };
        for &id in voters {
            c.storages.insert(id, Arc::new(SlowReads::default()));
            c.start(id).await;
        }
        c
    }

    async fn start(&mut self, id: NodeId) {
        let rec = Rec::default();
        let transport = Cuttable { inner: self.network.transport(id, 4_096), cuts: self.cuts.clone() };
        let raft = RaftNode::start(
            id,
            self.config.clone(),
            Membership::with_voters(self.voters.iter().copied()),
            self.storages[&id].clone(),
            Arc::new(transport),
            Box::new(rec.clone()),
            raft_core::fresh_seed(),
        )
        .await
        .expect("node starts");
        self.nodes.insert(id, Arc::new(raft));
        self.fsms.insert(id, rec.clone());
        self.history.push((id, rec));
    }

    async fn stop(&mut self, id: NodeId) {
        let node = self.nodes.remove(&id).expect("running");
        node.shutdown().await.expect("shutdown");
    }

    async fn leader_among(&self, ids: &[NodeId]) -> NodeId {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let statuses: Vec<_> = ids.iter().map(|id| self.nodes[id].status().protocol).collect();
            if let Some(l) = statuses.iter().filter(|s| s.role == Role::Leader).max_by_key(|s| s.term) {
                if statuses.iter().all(|s| s.leader == Some(l.id)) {
                    return l.id;
                }
            }
            assert!(Instant::now() < deadline, "no leader among {ids:?}: {statuses:?}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn leader(&self) -> NodeId {
        let ids: Vec<_> = self.nodes.keys().copied().collect();
        self.leader_among(&ids).await
    }

    /// Waits until every running node applied `index` (its fsm's last).
    async fn wait_applied(&self, index: Index) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if self.nodes.keys().all(|id| self.fsms[id].last() >= index) {
                return;
            }
            let lasts: Vec<_> = self
                .nodes
                .iter()
                .map(|(id, n)| {
                    (*id, self.fsms[id].last(), n.status().protocol.commit_index, n.status().fatal)
                })
                .collect();
            if Instant::now() >= deadline {
                for n in self.nodes.values() {
                    eprintln!("{:?}", n.status());
                }
                for (id, rec) in &self.history {
                    let a = rec.applied();
                    eprintln!(
                        "incarnation of {id}: last {} applied {} entries, first {:?}, last {:?}, violations {:?}",
                        rec.last(),
                        a.len(),
                        a.keys().next(),
                        a.keys().next_back(),
                        rec.violations()
                    );
                }
            }
            assert!(Instant::now() < deadline, "not applied {index} everywhere: {lasts:?}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// No incarnation applied out of order, and no two applied different entries at one index.
    fn check(&self) -> BTreeMap<Index, (Term, u64)> {
        let mut truth: BTreeMap<Index, (Term, u64, NodeId)> = BTreeMap::new();
        for (id, rec) in &self.history {
            let v = rec.violations();
            assert!(v.is_empty(), "node {id} apply order violated: {v:?}");
            for (index, (term, d)) in rec.applied() {
                match truth.get(&index) {
                    Some((t, dd, other)) => assert_eq!(
                        (*t, *dd),
                        (term, d),
                        "node {id} and node {other} applied different entries at {index}"
                    ),
                    None => {
                        truth.insert(index, (term, d, *id));
                    }
                }
            }
        }
        truth.into_iter().map(|(i, (t, d, _))| (i, (t, d))).collect()
    }

    async fn shutdown(&mut self) {
        let ids: Vec<_> = self.nodes.keys().copied().collect();
        for id in ids {
            self.stop(id).await;
        }
    }
}

async fn propose_n(node: &Arc<RaftNode>, prefix: &str, n: u64) -> Index {
    let mut last = 0;
    for i in 0..n {
        let size = 1 + (i as usize * 37) % 3000;
        let mut payload = format!("{prefix}-{i}-").into_bytes();
        payload.resize(payload.len() + size, b'x');
        let applied = node.propose(Bytes::from(payload)).await.expect("applied");
        last = last.max(applied.log_id.index);
    }
    last
}

fn small_config() -> Config {
    Config {
        log_cache_bytes: 8 * 1024,
        max_bytes_per_append: 16 * 1024,
        max_entries_per_append: 16,
        snapshot_threshold_entries: 0,
        snapshot_threshold_bytes: 0,
        ..Config::default()
    }
}

// ---------------------------------------------------------------- tests

async fn single_node_restart(config: Config) {
    let mut c = Cluster::new(&[1], config).await;
    c.leader().await;
    let mut before = propose_n(&c.nodes[&1], "a", 300).await;
    // Snapshot thresholds are jittered: one may have covered the last entry, leaving no tail
    // to apply again. One more entry each time (a snapshot being written covers at most what
    // was applied when it started) until the latest snapshot is settled below the last entry.
    let mut extra = 0;
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        if c.nodes[&1].status().protocol.snapshot.index < before {
            break;
        }
        before = propose_n(&c.nodes[&1], &format!("a{extra}"), 1).await;
        extra += 1;
    }
    let first = c.fsms[&1].applied();
    c.stop(1).await;
    c.start(1).await;
    assert_eq!(c.leader().await, 1);
    // The restarted node leads at once: every entry is a stub of an older term.
    c.wait_applied(before).await;
    let after = propose_n(&c.nodes[&1], "b", 50).await;
    c.wait_applied(after).await;
    let second = c.fsms[&1].applied();
    let snapshot_index = c.nodes[&1].status().protocol.snapshot.index;
    for (index, entry) in &first {
        if let Some(again) = second.get(index) {
            assert_eq!(again, entry, "entry {index} applied differently after the restart");
        }
    }
    let lowest_again = second.keys().next().copied().unwrap_or(0);
    assert!(lowest_again <= before, "nothing of the old log applied again (lowest {lowest_again})");
    let cmds = c.fsms[&1].commands();
    assert_eq!(cmds.iter().filter(|c| c.starts_with("b-")).count(), 50, "the 50 new commands, once each");
    c.check();
    eprintln!("single node: before {before} ({extra} extra), after {after}, reapplied from {lowest_again}, snapshot {snapshot_index}");
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_node_restart_reapplies_stubs_once_in_order() {
    single_node_restart(small_config()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_node_restart_with_a_snapshot_reapplies_the_tail_once() {
    let config = Config { snapshot_threshold_entries: 64, snapshot_keep_entries: 10, ..small_config() };
    single_node_restart(config).await;
}

/// A whole cluster restarts after membership changes, with an uncommitted tail of the previous
/// term on the old leader; the other two cannot vote for each other, so the old leader (all
/// stubs) wins, replicates its stub tail from storage and commits it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whole_cluster_restart_old_leader_with_uncommitted_stub_tail_wins() {
    let mut c = Cluster::new(&[1, 2, 3], small_config()).await;
    let leader = c.leader().await;
    let others: Vec<NodeId> = [1, 2, 3].into_iter().filter(|id| *id != leader).collect();
    propose_n(&c.nodes[&leader], "a", 40).await;
    // Configuration entries in the log: remove a follower, add it back.
    let victim = others[1];
    c.nodes[&leader].remove_node(victim).await.expect("removed");
    c.nodes[&leader].add_learner(victim).await.expect("learner");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match c.nodes[&leader].promote_learner(victim).await {
            Ok(_) => break,
            Err(e) => {
                assert!(Instant::now() < deadline, "promote: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    let committed = propose_n(&c.nodes[&leader], "b", 40).await;
    c.wait_applied(committed).await;
    // Uncommitted tail on the leader: cut it off and propose.
    c.cuts.isolate(leader, &others);
    let mut doomed = Vec::new();
    for i in 0..20 {
        let node = c.nodes[&leader].clone();
        doomed.push(tokio::spawn(async move {
            let _ = node.propose(Bytes::from(format!("tail-{i}"))).await;
        }));
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while c.nodes[&leader].status().protocol.persisted_index < committed + 20 {
        assert!(Instant::now() < deadline, "tail not persisted");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let old_last = c.nodes[&leader].status().protocol.last_log_id;
    c.shutdown().await;
    for t in doomed {
        let _ = t.await;
    }
    // Restart all; the two others can't reach each other: only the old leader can win.
    c.cuts.heal();
    c.cuts.cut(others[0], others[1]);
    for id in [1, 2, 3] {
        c.start(id).await;
    }
    let new_leader = c.leader().await;
    assert_eq!(new_leader, leader, "only the old leader can win");
    let status = c.nodes[&leader].status().protocol;
    assert_eq!(status.membership, Membership::with_voters([1, 2, 3]), "membership from stubs");
    c.cuts.heal();
    let more = propose_n(&c.nodes[&leader], "c", 30).await;
    assert!(more > old_last.index);
    c.wait_applied(more).await;
    let truth = c.check();
    for id in [1, 2, 3] {
        let cmds = c.fsms[&id].commands();
        let tails = cmds.iter().filter(|c| c.starts_with("tail-")).count();
        assert_eq!(
            tails, 20,
            "node {id} applied {tails} of the old leader's 20 uncommitted (now committed) entries"
        );
        assert_eq!(c.fsms[&id].last(), more);
    }
    assert!(truth.contains_key(&old_last.index));
    c.shutdown().await;
}

/// A node with an uncommitted stub tail restarts into a cluster that moved on: its stubs are
/// truncated by the new leader's entries, which it must apply (never its own).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_node_truncates_a_conflicting_stub_tail() {
    let mut c = Cluster::new(&[1, 2, 3], small_config()).await;
    let leader = c.leader().await;
    let others: Vec<NodeId> = [1, 2, 3].into_iter().filter(|id| *id != leader).collect();
    let committed = propose_n(&c.nodes[&leader], "a", 60).await;
    c.wait_applied(committed).await;
    c.cuts.isolate(leader, &others);
    let mut doomed = Vec::new();
    for i in 0..25 {
        let node = c.nodes[&leader].clone();
        doomed.push(tokio::spawn(async move {
            let _ = node.propose(Bytes::from(format!("doomed-{i}"))).await;
        }));
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while c.nodes[&leader].status().protocol.persisted_index < committed + 25 {
        assert!(Instant::now() < deadline, "doomed tail not persisted");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    c.stop(leader).await;
    for t in doomed {
        let _ = t.await;
    }
    let new_leader = c.leader().await;
    let moved = propose_n(&c.nodes[&new_leader], "new", 80).await;
    c.cuts.heal();
    c.start(leader).await;
    let more = propose_n(&c.nodes[&new_leader], "newer", 10).await;
    assert!(more > moved);
    c.wait_applied(more).await;
    c.check();
    for id in [1, 2, 3] {
        let cmds = c.fsms[&id].commands();
        assert!(!cmds.iter().any(|c| c.starts_with("doomed-")), "node {id} applied a truncated entry");
    }
    let restarted = c.fsms[&leader].commands();
    assert_eq!(restarted.iter().filter(|c| c.starts_with("new-")).count(), 80);
    assert_eq!(restarted.iter().filter(|c| c.starts_with("newer-")).count(), 10);
    c.shutdown().await;
}

/// A follower restarts with a long stub log while its reads are slow and fail for a while,
/// and the leader has compacted past it (it installs a snapshot meanwhile).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_with_failing_apply_reads_racing_a_snapshot_install() {
    restart_racing_install(100, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_with_slow_apply_reads_racing_a_snapshot_install() {
    restart_racing_install(100, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_racing_a_snapshot_install_no_faults() {
    restart_racing_install(0, false).await;
}

async fn restart_racing_install(delay: u64, fail: bool) {
    let config = Config { snapshot_threshold_entries: 50, snapshot_keep_entries: 5, ..small_config() };
    let mut c = Cluster::new(&[1, 2, 3], config).await;
    let leader = c.leader().await;
    let follower = [1, 2, 3].into_iter().find(|id| *id != leader).expect("a follower");
    let first = propose_n(&c.nodes[&leader], "a", 45).await;
    c.wait_applied(first).await;
    c.stop(follower).await;
    let second = propose_n(&c.nodes[&leader], "b", 200).await;
    assert!(
        c.nodes[&leader].status().protocol.snapshot.index > first,
        "the leader compacted past the follower"
    );
    c.storages[&follower].delay_ms.store(delay, Ordering::Relaxed);
    c.start(follower).await;
    c.storages[&follower].fail_reads.store(fail, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(700)).await;
    c.storages[&follower].fail_reads.store(false, Ordering::Relaxed);
    c.storages[&follower].delay_ms.store(0, Ordering::Relaxed);
    let third = propose_n(&c.nodes[&leader], "c", 20).await;
    assert!(third > second);
    c.wait_applied(third).await;
    c.check();
    let s = c.nodes[&follower].status();
    assert!(s.fatal.is_none(), "{:?}", s.fatal);
    c.shutdown().await;
}

/// A follower restarted with a stub log is told to truncate it before any of it was applied
/// again: same as above but the follower had received (uncommitted) entries of a leader that
/// then lost; here: both followers cut from each other, the leader cut after replicating to
/// only one follower.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_restarts_under_load_keep_apply_order() {
    let config = Config { snapshot_threshold_entries: 40, snapshot_keep_entries: 8, ..small_config() };
    let mut c = Cluster::new(&[1, 2, 3], config).await;
    let mut total = 0;
    for round in 0..6u64 {
        let leader = c.leader().await;
        let victim = if round % 2 == 0 {
            leader
        } else {
            [1, 2, 3].into_iter().find(|id| *id != leader).expect("a follower")
        };
        let node = c.nodes[&leader].clone();
        let load = tokio::spawn(async move {
            for i in 0..30 {
                let _ = node.propose(Bytes::from(format!("r{round}-{i}"))).await;
            }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        c.stop(victim).await;
        let _ = load.await;
        c.start(victim).await;
        let l = c.leader().await;
        total = propose_n(&c.nodes[&l], &format!("s{round}"), 10).await;
    }
    c.wait_applied(total).await;
    c.check();
    c.shutdown().await;
}

/// A follower restarts (default `log_cache_bytes`: its whole log would have fit the cache
/// before this change) and the first reads of its log back for applying hit a transient error
/// (reads fail for 300 ms). It must apply its log once reads work again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follower_restart_with_a_transient_read_error_applies_again() {
    let config = Config { snapshot_threshold_entries: 0, snapshot_threshold_bytes: 0, ..Config::default() };
    let mut c = Cluster::new(&[1, 2, 3], config).await;
    let leader = c.leader().await;
    let follower = [1, 2, 3].into_iter().find(|id| *id != leader).expect("a follower");
    let first = propose_n(&c.nodes[&leader], "a", 100).await;
    c.wait_applied(first).await;
    c.stop(follower).await;
    // Each read takes 50 ms; reads fail from just after the restart for 300 ms.
    c.storages[&follower].delay_ms.store(50, Ordering::Relaxed);
    c.start(follower).await;
    c.storages[&follower].fail_reads.store(true, Ordering::Relaxed);
    eprintln!("after restart: {:?}", c.nodes[&follower].status().protocol);
    tokio::time::sleep(Duration::from_millis(300)).await;
    c.storages[&follower].fail_reads.store(false, Ordering::Relaxed);
    c.storages[&follower].delay_ms.store(0, Ordering::Relaxed);
    let second = propose_n(&c.nodes[&leader], "b", 10).await;
    c.wait_applied(second).await;
    c.check();
    c.shutdown().await;
}
