//! A 3-node Raft cluster over QUIC (10 000 concurrent proposals, a follower stopped and
//! restarted on the same port, agreement), and the snapshot stream: a large InstallSnapshot
//! transfer does not hold up small messages sent meanwhile.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use raft_core::testing::transport_suite;
use raft_core::{Config, Entry, EntryPayload, Fsm, FsmError, Membership, NodeId, RaftError, RaftNode, Role};
use raft_storage_mem::MemStorage;
use raft_transport_quic::{generate_dev_certs, DevCerts, QuicConfig, QuicTransport};

/// How long the cluster test waits for a condition before failing.
const WAIT_MAX: Duration = Duration::from_secs(30);

/// Counts applied commands (shared with the test, which reads the count).
#[derive(Default, Clone)]
struct Counter {
    count: Arc<AtomicU64>,
}

#[async_trait]
impl Fsm for Counter {
    async fn apply(&mut self, entries: &[Entry]) -> Result<Vec<Bytes>, FsmError> {
        Ok(entries
            .iter()
            .map(|e| match e.payload {
                EntryPayload::Command(_) => {
                    let count = self.count.fetch_add(1, Ordering::SeqCst) + 1;
                    Bytes::from(count.to_string())
                }
                EntryPayload::Blank | EntryPayload::Membership(_) => Bytes::new(),
            })
            .collect())
    }

    async fn snapshot(&mut self) -> Result<Bytes, FsmError> {
        Ok(Bytes::from(self.count.load(Ordering::SeqCst).to_string()))
    }

    async fn restore(&mut self, snapshot: &[u8]) -> Result<(), FsmError> {
        let text = std::str::from_utf8(snapshot).map_err(|e| FsmError::BadSnapshot(e.to_string()))?;
        let count: u64 =
            text.parse().map_err(|e: std::num::ParseIntError| FsmError::BadSnapshot(e.to_string()))?;
        self.count.store(count, Ordering::SeqCst);
        Ok(())
    }
}

struct Node {
    raft: Arc<RaftNode>,
    fsm: Counter,
}

/// Three nodes on loopback ports, each over its own [`QuicTransport`].
struct QuicCluster {
    addrs: BTreeMap<NodeId, SocketAddr>,
    certs: DevCerts,
    config: Config,
    storages: BTreeMap<NodeId, Arc<MemStorage>>,
    nodes: BTreeMap<NodeId, Node>,
}

impl QuicCluster {
    async fn new(n: u64) -> Self {
        let addrs = transport_suite::free_loopback_addrs(n);
        let certs = generate_dev_certs("cluster-test", 1..=n).expect("certs");
        let config = Config { snapshot_threshold_entries: 4_000, ..Config::default() };
        let mut cluster = Self { addrs, certs, config, storages: BTreeMap::new(), nodes: BTreeMap::new() };
        for id in 1..=n {
            cluster.storages.insert(id, Arc::new(MemStorage::default()));
            cluster.start(id).await;
        }
        cluster
    }

    /// Starts node `id` on its storage with a new transport on its port.
    async fn start(&mut self, id: NodeId) {
        let peers = self.addrs.iter().filter(|(&p, _)| p != id).map(|(&p, &a)| (p, a)).collect();
        let (cert, key) = self.certs.nodes[&id].clone();
        let config =
            QuicConfig::new(id, "cluster-test", self.addrs[&id], peers, &self.certs.ca_cert_pem, cert, key);
        let transport = QuicTransport::start(config).await.expect("transport starts");
        let fsm = Counter::default();
        let raft = RaftNode::start(
            id,
            self.config.clone(),
            Membership::with_voters(self.addrs.keys().copied()),
            self.storages[&id].clone(),
            Arc::new(transport),
            Box::new(fsm.clone()),
            id,
        )
        .await
        .expect("node starts");
        self.nodes.insert(id, Node { raft: Arc::new(raft), fsm });
    }

    async fn stop(&mut self, id: NodeId) {
        let node = self.nodes.remove(&id).expect("node runs");
        node.raft.shutdown().await.expect("shutdown");
    }

    async fn wait_for_leader(&self) -> NodeId {
        let deadline = tokio::time::Instant::now() + WAIT_MAX;
        loop {
            let statuses: Vec<_> = self.nodes.values().map(|n| n.raft.status().protocol).collect();
            let leader =
                statuses.iter().filter(|s| s.role == Role::Leader).max_by_key(|s| s.term).map(|s| s.id);
            if let Some(leader) = leader {
                if statuses.iter().all(|s| s.leader == Some(leader)) {
                    return leader;
                }
            }
            assert!(tokio::time::Instant::now() < deadline, "no leader within {WAIT_MAX:?}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Proposes `n` commands from `tasks` concurrent tasks, retrying refused proposals on the
    /// current leader. Returns the number of proposals whose outcome is unknown.
    async fn propose_concurrently(&self, n: u64, tasks: u64) -> u64 {
        let nodes: Vec<Arc<RaftNode>> = self.nodes.values().map(|n| n.raft.clone()).collect();
        let next = Arc::new(AtomicU64::new(0));
        let mut handles = Vec::new();
        for _ in 0..tasks {
            let nodes = nodes.clone();
            let next = next.clone();
            handles.push(tokio::spawn(async move {
                let mut unknown = 0;
                let deadline = tokio::time::Instant::now() + WAIT_MAX;
                while next.fetch_add(1, Ordering::SeqCst) < n {
                    loop {
                        let leader = nodes
                            .iter()
                            .find(|node| node.status().protocol.role == Role::Leader)
                            .unwrap_or(&nodes[0]);
                        match leader.propose(Bytes::from_static(b"+1")).await {
                            Ok(_) => break,
                            Err(RaftError::OutcomeUnknown) => {
                                unknown += 1;
                                break;
                            }
                            Err(error) => {
                                assert!(tokio::time::Instant::now() < deadline, "proposals fail: {error}");
                                tokio::time::sleep(Duration::from_millis(5)).await;
                            }
                        }
                    }
                }
                unknown
            }));
        }
        let mut unknown = 0;
        for h in handles {
            unknown += h.await.expect("proposer");
        }
        unknown
    }

    /// Waits until every node's state machine holds the same count, at least `min`.
    async fn wait_converged(&self, min: u64) -> u64 {
        let deadline = tokio::time::Instant::now() + WAIT_MAX;
        loop {
            let counts: Vec<u64> = self.nodes.values().map(|n| n.fsm.count.load(Ordering::SeqCst)).collect();
            if counts[0] >= min && counts.iter().all(|&c| c == counts[0]) {
                return counts[0];
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "state machines differ: {counts:?} (want >= {min})"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn shutdown(&mut self) {
        let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
        for id in ids {
            self.stop(id).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_replicate_over_quic_and_a_restarted_node_catches_up() {
    const ENTRIES: u64 = 10_000;
    const PROPOSERS: u64 = 64;
    let mut cluster = QuicCluster::new(3).await;
    let leader = cluster.wait_for_leader().await;

    let started = Instant::now();
    let mut unknown = cluster.propose_concurrently(ENTRIES, PROPOSERS).await;
    let elapsed = started.elapsed();
    let count = cluster.wait_converged(ENTRIES).await;
    eprintln!(
        "{ENTRIES} proposals from {PROPOSERS} tasks in {elapsed:?}: {:.0} entries/s",
        ENTRIES as f64 / elapsed.as_secs_f64()
    );
    assert!(count <= ENTRIES + unknown, "{count} applied for {ENTRIES} proposals ({unknown} unknown)");

    // A follower stops; the others go on; it restarts on the same port with its storage.
    let follower = cluster.nodes.keys().copied().find(|&id| id != leader).expect("a follower");
    cluster.stop(follower).await;
    unknown += cluster.propose_concurrently(1_000, 16).await;
    cluster.start(follower).await;
    unknown += cluster.propose_concurrently(1_000, 16).await;
    let count = cluster.wait_converged(ENTRIES + 2_000).await;
    assert!(count <= ENTRIES + 2_000 + unknown, "{count} applied ({unknown} unknown)");
    let restarted = cluster.nodes[&follower].raft.status().protocol;
    assert!(restarted.applied_index > ENTRIES, "restarted node applied only {}", restarted.applied_index);
    cluster.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// Snapshots on their own stream.

/// 50 MB of `InstallSnapshot` chunks (512 KiB each, queued as fast as the snapshot queue
/// takes them) go from node 1 to node 2 while node 1 also sends a small message every 5 ms.
/// The small messages travel on their own stream, so they must not wait behind the chunks.
///
/// Measured on loopback (debug build, 2 busy cores): see the printed figures; the bound here
/// (250 ms) is generous on purpose so a loaded CI machine does not flake, while head-of-line
/// blocking behind the chunks would cost about the whole transfer time (seconds).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_transfer_does_not_delay_small_messages() {
    use raft_core::{LogId, Message, Payload, SendError, SnapshotMeta, Transport};

    const CHUNK: usize = 512 * 1024;
    const TOTAL: usize = 50 * 1024 * 1024;
    const TICK: Duration = Duration::from_millis(5);
    let addrs = transport_suite::free_loopback_addrs(2);
    let certs = generate_dev_certs("snap", 1..=2).expect("certs");
    let start = |id: NodeId| {
        let peers = addrs.iter().filter(|(&p, _)| p != id).map(|(&p, &a)| (p, a)).collect();
        let (cert, key) = certs.nodes[&id].clone();
        QuicTransport::start(QuicConfig::new(id, "snap", addrs[&id], peers, &certs.ca_cert_pem, cert, key))
    };
    let sender = Arc::new(start(1).await.expect("node 1"));
    let receiver = Arc::new(start(2).await.expect("node 2"));

    // Wait until the connection is up.
    let probe = |seq| Message { from: 1, to: 2, term: 1, payload: Payload::ReadIndexRequest { id: seq } };
    let deadline = Instant::now() + WAIT_MAX;
    let mut buf = Vec::new();
    loop {
        let _ = sender.send(probe(u64::MAX));
        if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_millis(100), receiver.recv(&mut buf, 16)).await
        {
            break;
        }
        assert!(Instant::now() < deadline, "no connection");
    }

    let epoch = Instant::now();
    let sent_at = Arc::new(std::sync::Mutex::new(Vec::<Duration>::new()));
    let snapshot_done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let chunks = {
        let sender = sender.clone();
        let snapshot_done = snapshot_done.clone();
        tokio::spawn(async move {
            let data = Bytes::from(vec![0x5a; CHUNK]);
            let meta =
                SnapshotMeta { last_log_id: LogId::new(1, 1), membership: Membership::with_voters([1, 2]) };
            let mut offset = 0;
            while offset < TOTAL {
                let done = offset + CHUNK >= TOTAL;
                let chunk = Message {
                    from: 1,
                    to: 2,
                    term: 1,
                    payload: Payload::InstallSnapshot {
                        meta: meta.clone(),
                        offset: offset as u64,
                        data: data.clone(),
                        done,
                    },
                };
                match sender.send(chunk) {
                    Ok(()) => offset += CHUNK,
                    Err(SendError::QueueFull(_)) => tokio::time::sleep(Duration::from_millis(1)).await,
                    Err(error) => panic!("{error}"),
                }
            }
            snapshot_done.store(true, Ordering::SeqCst);
        })
    };
    let ticks = {
        let sender = sender.clone();
        let sent_at = sent_at.clone();
        let snapshot_done = snapshot_done.clone();
        tokio::spawn(async move {
            let mut interval = tokio::time::interval(TICK);
            let mut seq = 0;
            while !snapshot_done.load(Ordering::SeqCst) {
                interval.tick().await;
                sent_at.lock().expect("lock").push(epoch.elapsed());
                sender.send(probe(seq)).expect("small message queued");
                seq += 1;
            }
            seq
        })
    };
    let mut arrivals: Vec<(u64, Duration)> = Vec::new();
    let mut bytes = 0;
    let deadline = Instant::now() + Duration::from_secs(120);
    while bytes < TOTAL {
        buf.clear();
        match tokio::time::timeout_at(deadline.into(), receiver.recv(&mut buf, 1024)).await {
            Ok(Ok(_)) => {}
            other => panic!("receiving stopped after {bytes} bytes: {other:?}"),
        }
        let now = epoch.elapsed();
        for message in &buf {
            match &message.payload {
                Payload::InstallSnapshot { data, .. } => bytes += data.len(),
                Payload::ReadIndexRequest { id } if *id != u64::MAX => arrivals.push((*id, now)),
                _ => {}
            }
        }
    }
    let transfer = epoch.elapsed();
    chunks.await.expect("chunks");
    let ticks_sent = ticks.await.expect("ticks");
    let sent_at = sent_at.lock().expect("lock").clone();
    let max_latency = arrivals.iter().map(|&(seq, at)| at.saturating_sub(sent_at[seq as usize])).max();
    let max_gap = arrivals.windows(2).map(|w| w[1].1.saturating_sub(w[0].1)).max();
    eprintln!(
        "{} MB of snapshot chunks in {transfer:?} ({:.0} MB/s); {} of {ticks_sent} small messages arrived \
         meanwhile; max latency {max_latency:?}, max arrival gap {max_gap:?} (sent every {TICK:?})",
        TOTAL / (1024 * 1024),
        TOTAL as f64 / (1024.0 * 1024.0) / transfer.as_secs_f64(),
        arrivals.len(),
    );
    assert!(
        arrivals.len() as u64 * 2 >= ticks_sent.saturating_sub(2),
        "most small messages arrived during the transfer"
    );
    let bound = Duration::from_millis(250);
    assert!(max_latency.is_some_and(|l| l < bound), "max latency {max_latency:?} over {bound:?}");
    sender.shutdown().await;
    receiver.shutdown().await;
}
