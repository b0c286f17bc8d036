//! The raft-core side of the benchmark: a 3-node cluster of [`RaftNode`]s in one process,
//! in-memory storage, messages delivered through in-process channels (no serialization).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use async_trait::async_trait;
use bytes::Bytes;
use raft_core::testing::local_transport::LocalNetwork;
use raft_core::{Config, Entry, Fsm, FsmError, Membership, RaftNode, Role};
use raft_storage_mem::MemStorage;

use crate::BenchReport;

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

    async fn snapshot(&mut self) -> Result<Bytes, FsmError> {
        Ok(Bytes::from(self.applied.to_le_bytes().to_vec()))
    }

    async fn restore(&mut self, snapshot: &[u8]) -> Result<(), FsmError> {
        let bytes: [u8; 8] = snapshot.try_into().map_err(|_| FsmError::BadSnapshot("length".into()))?;
        self.applied = u64::from_le_bytes(bytes);
        Ok(())
    }
}

/// Runs `total` 16-byte proposals through a 3-node cluster with `proposers` concurrent tasks;
/// returns when the leader has applied all of them (each `propose` resolves on apply).
pub async fn run(proposers: usize, total: usize) -> anyhow::Result<BenchReport> {
    let network = LocalNetwork::default();
    let members = Membership::with_voters([1, 2, 3]);
    let mut nodes = Vec::new();
    for id in 1..=3u64 {
        let node = RaftNode::start(
            id,
            Config { max_in_flight_appends: 16, ..Config::default() },
            members.clone(),
            Arc::new(MemStorage::default()),
            Arc::new(network.transport(id, 65_536)),
            Box::new(CountingFsm::default()),
            id,
        )
        .await?;
        nodes.push(Arc::new(node));
    }
    let mut leader = None;
    for _ in 0..500 {
        leader = nodes.iter().find(|n| n.status().protocol.role == Role::Leader).cloned();
        if leader.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let leader = leader.context("no leader elected")?;
    let claimed = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..proposers {
        let leader = leader.clone();
        let claimed = claimed.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            while claimed.fetch_add(1, Ordering::Relaxed) < total {
                let t = Instant::now();
                leader.propose(Bytes::from_static(&[7u8; 16])).await?;
                latencies.push(t.elapsed().as_micros() as u64);
            }
            anyhow::Ok(latencies)
        }));
    }
    let mut latencies_us = Vec::with_capacity(total);
    for t in tasks {
        latencies_us.extend(t.await??);
    }
    let elapsed = started.elapsed();
    for n in &nodes {
        n.shutdown().await?;
    }
    if latencies_us.len() != total {
        bail!("{} of {total} proposals completed", latencies_us.len());
    }
    Ok(BenchReport { ops: total, elapsed, latencies_us })
}
