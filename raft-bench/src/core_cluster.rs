//! The raft-core side of the benchmark: a 3-node cluster of [`RaftNode`]s in one process,
//! in-memory storage, messages delivered through in-process channels (no serialization).
//! Proposals, linearizable reads (ReadIndex and lease), and the catch-up of a follower that is
//! far behind (by snapshot, or by log replay when snapshots are off).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::bail;
use async_trait::async_trait;
use bytes::Bytes;
use raft_core::testing::local_transport::LocalNetwork;
use raft_core::{
    read_to_end, BufferSource, Config, Entry, EntryPayload, Fsm, FsmError, Membership, NodeId, RaftNode,
    ReadMode, Role, SnapshotReader, SnapshotSource,
};
use raft_storage_mem::MemStorage;

use crate::{BenchReport, Runtimes};

/// A state machine that only counts what it applies (the benchmark measures replication).
#[derive(Default)]
struct CountingFsm {
    applied: u64,
}

#[async_trait]
impl Fsm for CountingFsm {
    async fn apply(&mut self, entries: &[Entry]) -> Result<Vec<Bytes>, FsmError> {
        self.applied += entries.len() as u64;
        Ok(vec![Bytes::new(); entries.len()])
    }

    async fn snapshot(&mut self) -> Result<Box<dyn SnapshotSource>, FsmError> {
        Ok(Box::new(BufferSource::new(self.applied.to_le_bytes().to_vec())))
    }

    async fn restore(&mut self, snapshot: &mut dyn SnapshotReader) -> Result<(), FsmError> {
        let snapshot = read_to_end(snapshot, 8).await?;
        let bytes: [u8; 8] = snapshot[..].try_into().map_err(|_| FsmError::BadSnapshot("length".into()))?;
        self.applied = u64::from_le_bytes(bytes);
        Ok(())
    }

    /// Counting takes nanoseconds: every batch is applied on the driver's task.
    fn inline_apply_bytes(&self) -> usize {
        usize::MAX
    }
}

/// A state machine that keeps every command it applied (16 bytes each), so that its snapshot
/// has a realistic size for the catch-up benchmark.
#[derive(Default)]
struct LogFsm {
    state: Vec<u8>,
}

#[async_trait]
impl Fsm for LogFsm {
    async fn apply(&mut self, entries: &[Entry]) -> Result<Vec<Bytes>, FsmError> {
        for e in entries {
            if let EntryPayload::Command(c) = &e.payload {
                self.state.extend_from_slice(c);
            }
        }
        Ok(vec![Bytes::new(); entries.len()])
    }

    async fn snapshot(&mut self) -> Result<Box<dyn SnapshotSource>, FsmError> {
        Ok(Box::new(BufferSource::new(self.state.clone())))
    }

    async fn restore(&mut self, snapshot: &mut dyn SnapshotReader) -> Result<(), FsmError> {
        self.state = read_to_end(snapshot, usize::MAX).await?;
        Ok(())
    }

    /// Appending 16 bytes a command: batches of up to 1 MiB are applied on the driver's task.
    fn inline_apply_bytes(&self) -> usize {
        1 << 20
    }
}

async fn start_node(
    network: &LocalNetwork,
    id: NodeId,
    config: &Config,
    fsm: Box<dyn Fsm>,
) -> anyhow::Result<Arc<RaftNode>> {
    let members = Membership::with_voters([1, 2, 3]);
    let node = RaftNode::start(
        id,
        config.clone(),
        members,
        Arc::new(MemStorage::default()),
        Arc::new(network.transport(id, 65_536)),
        fsm,
        id,
    )
    .await?;
    Ok(Arc::new(node))
}

async fn wait_for_leader(nodes: &[Arc<RaftNode>]) -> anyhow::Result<Arc<RaftNode>> {
    for _ in 0..500 {
        if let Some(n) = nodes.iter().find(|n| n.status().protocol.role == Role::Leader) {
            return Ok(n.clone());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    bail!("no leader elected")
}

/// raft-core's defaults (heartbeat 20 ms, election 150-300 ms, 8 appends in flight per
/// follower, a snapshot every 10 000 entries): each system runs as it recommends itself.
fn bench_config() -> Config {
    Config::default()
}

/// Runs `total` 16-byte proposals through a 3-node cluster (nodes on the server runtime) with
/// `proposers` concurrent tasks on the client runtime; returns when the leader has applied all
/// of them (each `propose` resolves on apply).
///
/// # Errors
///
/// Fails if a node cannot start, no leader is elected, or a proposal fails.
pub fn run(rt: &Runtimes, proposers: usize, total: usize) -> anyhow::Result<BenchReport> {
    let (nodes, leader) = rt.server.block_on(async {
        let network = LocalNetwork::default();
        let mut nodes = Vec::new();
        for id in 1..=3u64 {
            nodes.push(start_node(&network, id, &bench_config(), Box::new(CountingFsm::default())).await?);
        }
        let leader = wait_for_leader(&nodes).await?;
        anyhow::Ok((nodes, leader))
    })?;
    let before = leader.status().protocol.last_log_id.index;
    let report = rt.client.block_on(propose_concurrently(&leader, proposers, total));
    // The status is published after the turn that answered the last proposal.
    let after = rt.server.block_on(async {
        let mut status = leader.watch_status();
        let applied = status.wait_for(|s| s.protocol.applied_index >= s.protocol.last_log_id.index);
        let outcome = match tokio::time::timeout(Duration::from_secs(10), applied).await {
            Ok(Ok(s)) => Ok(s.protocol.clone()),
            _ => Err(anyhow::anyhow!("the leader did not apply its log within 10 s")),
        };
        outcome
    })?;
    rt.server.block_on(async {
        for n in &nodes {
            n.shutdown().await?;
        }
        anyhow::Ok(())
    })?;
    let report = report?;
    // Every proposal answered was placed in the log once (nothing else was proposed; a change
    // of leader would have failed a proposal), and all of it was applied.
    let placed = after.last_log_id.index - before;
    anyhow::ensure!(placed == total as u64, "{placed} entries placed for {total} proposals");
    Ok(report)
}

/// `total` proposals from `proposers` tasks on `leader`, with each one's latency.
async fn propose_concurrently(
    leader: &Arc<RaftNode>,
    proposers: usize,
    total: usize,
) -> anyhow::Result<BenchReport> {
    crate::run_concurrently(proposers, total, leader.clone(), |leader| async move {
        leader.propose(Bytes::from_static(&[7u8; 16])).await?;
        Ok(leader)
    })
    .await
}

/// Runs `total` linearizable reads on the leader from `readers` concurrent tasks, in `mode`
/// (leases are enabled, so `Lease` answers without a heartbeat round while the lease holds).
pub async fn run_reads(mode: ReadMode, readers: usize, total: usize) -> anyhow::Result<BenchReport> {
    let network = LocalNetwork::default();
    let config = Config { lease_read: true, ..bench_config() };
    let mut nodes = Vec::new();
    for id in 1..=3u64 {
        nodes.push(start_node(&network, id, &config, Box::new(CountingFsm::default())).await?);
    }
    let leader = wait_for_leader(&nodes).await?;
    leader.propose(Bytes::from_static(b"first")).await?;
    let report = crate::run_concurrently(readers, total, leader, move |leader| async move {
        leader.read_index(mode).await?;
        Ok(leader)
    })
    .await;
    for n in &nodes {
        n.shutdown().await?;
    }
    report
}

/// What [`catch_up`] measured.
#[derive(Debug, Clone, Copy)]
pub struct CatchUp {
    /// From starting the empty follower until it applied everything the leader had.
    pub elapsed: Duration,
    /// The last index the leader's snapshot covered when the follower started (0 when
    /// snapshots are off); the snapshot holds 16 bytes per command up to there.
    pub snapshot_index: u64,
    /// Whether the follower installed a snapshot on the way.
    pub installed_snapshot: bool,
}

/// Two of three voters commit `behind` 16-byte entries; then the third starts with empty
/// storage. Returns the time until it has applied all of them: by snapshot (taken every
/// `snapshot_every` entries, a tenth of that kept behind it) or, with `snapshot_every` 0, by
/// replaying the log.
pub async fn catch_up(behind: usize, snapshot_every: u64) -> anyhow::Result<CatchUp> {
    let network = LocalNetwork::default();
    let by_snapshot = snapshot_every > 0;
    let config = Config {
        snapshot_threshold_entries: snapshot_every,
        snapshot_keep_entries: snapshot_every / 10,
        ..bench_config()
    };
    let mut nodes = Vec::new();
    for id in 1..=2u64 {
        nodes.push(start_node(&network, id, &config, Box::new(LogFsm::default())).await?);
    }
    let leader = wait_for_leader(&nodes).await?;
    propose_concurrently(&leader, 256, behind).await?;
    let target = leader.status().protocol.applied_index;
    let snapshot_index = leader.status().protocol.snapshot.index;
    if by_snapshot && leader.status().protocol.first_log_index <= 1 {
        bail!("the leader did not compact its log");
    }
    let started = Instant::now();
    let follower = start_node(&network, 3, &config, Box::new(LogFsm::default())).await?;
    let mut status = follower.watch_status();
    let mut installed_at = None;
    while status.borrow().protocol.applied_index < target {
        if installed_at.is_none() && status.borrow().protocol.snapshot.index > 0 {
            installed_at = Some(started.elapsed());
        }
        if tokio::time::timeout(Duration::from_secs(60), status.changed()).await.is_err() {
            bail!("the follower did not catch up within 60 s");
        }
    }
    let elapsed = started.elapsed();
    if std::env::var_os("CATCH_UP_DEBUG").is_some() {
        eprintln!("catch-up: snapshot installed after {installed_at:?}, caught up after {elapsed:?}");
    }
    nodes.push(follower);
    for n in &nodes {
        n.shutdown().await?;
    }
    let installed_snapshot = installed_at.is_some() || status.borrow().protocol.snapshot.index > 0;
    Ok(CatchUp { elapsed, snapshot_index, installed_snapshot })
}
