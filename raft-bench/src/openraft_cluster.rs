//! The openraft side of the in-process benchmark, set up as openraft benchmarks itself.
//!
//! Three [`openraft::Raft`] nodes (openraft `0.10.0-alpha.37`) run on the benchmark's server
//! runtime, each with the store of [`crate::openraft_store`] (log and state machine in memory as
//! Rust values, no serialization, empty requests: the shape of openraft's own
//! `benchmarks/minimal`). They talk through [`InProcessNetwork`], which delivers every RPC by
//! calling the target node's `Raft` handle directly: no sockets, messages moved as values.
//!
//! The Raft configuration is `benchmarks/minimal`'s: heartbeat 50 ms, election timeout
//! 200..2000 ms, `max_payload_entries` and `purge_batch_size` of 1024, every other knob at
//! openraft's default. The proposers run on the client runtime, as in `benchmarks/minimal`.
//!
//! The network implements the unary RPCs of [`RaftNetworkV2`] and keeps openraft's default
//! `stream_append`, which sends `AppendEntries` to a follower one at a time (request, wait for the
//! response, next request), just as `benchmarks/minimal` does through its v1 adapter.

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::future::Future;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::sync::RwLock;
use std::time::Duration;

use anyhow::Context;
use openraft::alias::SnapshotOf;
use openraft::alias::VoteOf;
use openraft::error::RPCError;
use openraft::error::ReplicationClosed;
use openraft::error::StreamingError;
use openraft::error::Unreachable;
use openraft::network::RPCOption;
use openraft::raft::AppendEntriesRequest;
use openraft::raft::AppendEntriesResponse;
use openraft::raft::SnapshotResponse;
use openraft::raft::TransferLeaderRequest;
use openraft::raft::TransferLeaderResponse;
use openraft::raft::VoteRequest;
use openraft::raft::VoteResponse;
use openraft::Config;
use openraft::OptionalSend;
use openraft::Raft;
use openraft::RaftNetworkFactory;
use openraft::RaftNetworkV2;
use openraft::ServerState;

use crate::openraft_store::{BenchTypes, LogStore, Request, SnapshotData, StateMachine};
use crate::{BenchReport, Runtimes};

/// The benchmark's type configuration.
type C = BenchTypes;

/// Node ids of the benchmark cluster.
type MemNodeId = u64;

/// A handle to one openraft node.
type MemRaft = Raft<C, StateMachine>;

/// Number of voters in the benchmark cluster.
const CLUSTER_SIZE: u64 = 3;

/// Upper bound on every wait for cluster state during setup and completion.
const WAIT_TIMEOUT: Duration = Duration::from_secs(30);

/// The Raft configuration used by the benchmark.
///
/// Mirrors openraft's `benchmarks/minimal`: election timeout 200..2000 ms, 1024 entries per
/// `AppendEntries` and per purge batch; heartbeat stays at openraft's default of 50 ms (set
/// explicitly here so that a change of default does not silently change the benchmark).
fn bench_config() -> anyhow::Result<Arc<Config>> {
    let config = Config {
        cluster_name: "raft-bench".to_string(),
        heartbeat_interval: 50,
        election_timeout_min: 200,
        election_timeout_max: 2000,
        max_payload_entries: 1024,
        purge_batch_size: 1024,
        ..Default::default()
    }
    .validate()
    .context("invalid openraft config")?;
    Ok(Arc::new(config))
}

/// The registry of every node in the process, shared by all nodes' networks.
///
/// It is also the [`RaftNetworkFactory`] given to each node: every client it hands out resolves
/// its target in this table.
#[derive(Clone, Default)]
struct Router {
    nodes: Arc<RwLock<BTreeMap<MemNodeId, MemRaft>>>,
}

impl Router {
    /// Registers `raft` as the node `id`.
    fn register(&self, id: MemNodeId, raft: MemRaft) -> anyhow::Result<()> {
        let mut nodes = self.nodes.write().map_err(|_| anyhow::anyhow!("router table lock poisoned"))?;
        nodes.insert(id, raft);
        Ok(())
    }

    /// Returns the handle of node `id`, if registered.
    fn get(&self, id: MemNodeId) -> Option<MemRaft> {
        let nodes = self.nodes.read().ok()?;
        nodes.get(&id).cloned()
    }
}

impl RaftNetworkFactory<C> for Router {
    type Network = InProcessNetwork;

    async fn new_client(&mut self, target: MemNodeId, _node: &()) -> Self::Network {
        InProcessNetwork { target, router: self.clone(), target_raft: None }
    }
}

/// A connection from one node to `target`, delivering RPCs by direct calls on its `Raft` handle.
struct InProcessNetwork {
    target: MemNodeId,
    router: Router,
    /// The target's handle, looked up in the router on first use.
    target_raft: Option<MemRaft>,
}

impl InProcessNetwork {
    /// Returns the target's `Raft` handle, or `Unreachable` if it is not registered.
    fn target_raft(&mut self) -> Result<&MemRaft, Unreachable<C>> {
        if self.target_raft.is_none() {
            self.target_raft = self.router.get(self.target);
        }
        self.target_raft
            .as_ref()
            .ok_or_else(|| Unreachable::from_string(format!("node {} is not registered", self.target)))
    }
}

/// Maps an error returned by the target node (it has stopped) to an `Unreachable` RPC error.
fn unreachable<E: std::error::Error + 'static>(e: E) -> RPCError<C> {
    RPCError::Unreachable(Unreachable::new(&e))
}

impl RaftNetworkV2<C> for InProcessNetwork {
    type SnapshotData = SnapshotData;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<C>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<C>, RPCError<C>> {
        let raft = self.target_raft()?;
        raft.append_entries(rpc).await.map_err(unreachable)
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<C>,
        _option: RPCOption,
    ) -> Result<VoteResponse<C>, RPCError<C>> {
        let raft = self.target_raft()?;
        raft.vote(rpc).await.map_err(unreachable)
    }

    async fn pre_vote(
        &mut self,
        rpc: VoteRequest<C>,
        _option: RPCOption,
    ) -> Result<VoteResponse<C>, RPCError<C>> {
        let raft = self.target_raft()?;
        raft.pre_vote(rpc).await.map_err(unreachable)
    }

    async fn full_snapshot(
        &mut self,
        vote: VoteOf<C>,
        snapshot: SnapshotOf<C, Self::SnapshotData>,
        cancel: impl Future<Output = ReplicationClosed> + OptionalSend + 'static,
        _option: RPCOption,
    ) -> Result<SnapshotResponse<C>, StreamingError<C>> {
        let raft = self.target_raft()?;
        tokio::select! {
            res = raft.install_full_snapshot(vote, snapshot) => {
                res.map_err(|e| StreamingError::Unreachable(Unreachable::new(&e)))
            }
            closed = cancel => Err(StreamingError::Closed(closed)),
        }
    }

    async fn transfer_leader(
        &mut self,
        req: TransferLeaderRequest<C>,
        _option: RPCOption,
    ) -> Result<TransferLeaderResponse<C>, RPCError<C>> {
        let raft = self.target_raft()?;
        raft.handle_transfer_leader(req).await.map_err(unreachable)
    }
}

/// Runs `total` empty proposals through a 3-node openraft cluster in one process (the store of
/// [`crate::openraft_store`], an in-process network that calls the target node's Raft handle
/// directly), with `proposers` concurrent tasks on the client runtime each issuing
/// `client_write` sequentially until `total` are done; returns after the leader has applied all
/// of them. The nodes run on the server runtime and are shut down before returning.
///
/// `elapsed` in the report spans from the first proposal to the return of the last (once the
/// leader applied it); cluster setup and leader election are not included. `latencies_us`
/// holds the time from calling `client_write` to its return of one proposal in
/// [`TIMED_EVERY`](crate::TIMED_EVERY), as for raft-core.
///
/// # Errors
///
/// Fails if `proposers` is 0, if a node cannot be started, initialized or shut down, if no
/// leader is established within 30 s, or if any `client_write` fails (e.g. the leadership moves
/// during the run: proposals are not retried).
pub fn run(rt: &Runtimes, proposers: usize, total: usize) -> anyhow::Result<BenchReport> {
    anyhow::ensure!(proposers > 0, "at least one proposer is needed");

    let nodes = rt.server.block_on(async {
        let router = Router::default();
        let config = bench_config()?;
        let mut nodes = Vec::new();
        for id in 0..CLUSTER_SIZE {
            let raft =
                Raft::new(id, config.clone(), router.clone(), LogStore::default(), StateMachine::default())
                    .await
                    .with_context(|| format!("starting openraft node {id}"))?;
            router.register(id, raft.clone())?;
            nodes.push(raft);
        }
        anyhow::Ok(nodes)
    })?;

    let result = rt
        .server
        .block_on(elect(&nodes))
        .and_then(|leader| rt.client.block_on(bench_on_leader(leader, proposers, total)));

    rt.server.block_on(async {
        for raft in &nodes {
            raft.shutdown().await.context("shutting down openraft node")?;
        }
        anyhow::Ok(())
    })?;
    result
}

/// Initializes the started (pristine) `nodes` as one cluster and returns its leader once every
/// node has applied the leader's first entry.
async fn elect(nodes: &[MemRaft]) -> anyhow::Result<MemRaft> {
    let first = nodes.first().context("no node started")?;
    let members: BTreeSet<MemNodeId> = (0..CLUSTER_SIZE).collect();
    first.initialize(members).await.context("initializing the cluster")?;

    let metrics = first
        .wait(Some(WAIT_TIMEOUT))
        .metrics(|m| m.current_leader.is_some(), "a leader is known")
        .await
        .context("waiting for a leader")?;
    let leader_id = metrics.current_leader.context("no leader after waiting for one")?;
    let leader = nodes
        .iter()
        .find(|n| *n.node_id() == leader_id)
        .context("the leader is not one of the started nodes")?
        .clone();
    leader
        .wait(Some(WAIT_TIMEOUT))
        .state(ServerState::Leader, "leader established")
        .await
        .context("waiting for the leader to take office")?;
    // Log 0 is the initial membership, log 1 the new leader's blank entry: once every node has
    // applied it, the cluster is fully formed and replication is running to every follower.
    for n in nodes {
        n.wait(Some(WAIT_TIMEOUT))
            .applied_index_at_least(Some(1), "initial logs applied")
            .await
            .context("waiting for the initial logs to be applied")?;
    }
    Ok(leader)
}

/// Runs the workload on `leader` from `proposers` tasks of the current runtime (timed as
/// raft-core's: [`crate::run_concurrently`]).
async fn bench_on_leader(leader: MemRaft, proposers: usize, total: usize) -> anyhow::Result<BenchReport> {
    let last_index = Arc::new(AtomicU64::new(0));
    let state = (leader.clone(), last_index.clone());
    let report = crate::run_concurrently(proposers, total, state, |(leader, last)| async move {
        let written = leader.client_write(Request).await.context("client_write failed")?;
        last.fetch_max(written.log_id.index(), Ordering::Relaxed);
        Ok((leader, last))
    })
    .await?;
    // `client_write` returns once the entry is applied on the leader, so this holds already; the
    // wait makes the guarantee explicit rather than relying on that detail.
    leader
        .wait(Some(WAIT_TIMEOUT))
        .applied_index_at_least(Some(last_index.load(Ordering::Relaxed)), "all proposals applied")
        .await
        .context("waiting for the leader to apply every proposal")?;
    Ok(report)
}
