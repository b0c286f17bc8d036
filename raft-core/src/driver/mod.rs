//! The async driver: a [`RaftNode`] owns a [`Raft`](crate::Raft) and its
//! [`Storage`], [`Transport`] and [`Fsm`], feeds it events (client requests, messages, timer
//! ticks) and carries out each [`Ready`](crate::Ready) in the required order.
//!
//! Storage writes run beside the driver's event loop (the call under way is a future it polls;
//! the store does the IO on its own thread) while the driver keeps stepping the protocol;
//! writes queued meanwhile are merged into one append and one sync (group commit).
//! The state machine runs on another: a large apply batch or the restore of a received
//! snapshot does not stop heartbeats.
//!
//! - `event_loop.rs`: the driver task (requests, messages, timers, carrying out readies);
//! - `persist.rs`: the log writer (the readies' storage writes, in order, one call at a time,
//!   polled beside the event loop);
//! - `apply.rs`: the applier task (owns the state machine: applies committed entries, takes
//!   snapshot views, restores received snapshots, in order, off the driver task);
//! - `snapshots.rs`: automatic snapshots and compaction, installing the leader's snapshot;
//! - `waiters.rs`: callers parked until their request completes (proposals, reads,
//!   membership changes, leadership transfers).

mod apply;
mod clock;
mod event_loop;
mod persist;
mod published;
mod snapshots;
mod waiters;

use std::collections::BTreeSet;
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::{broadcast, mpsc, oneshot, watch, Mutex};
use tokio::task::JoinHandle;

use crate::config::{Config, ConfigError};
use crate::fsm::{Fsm, FsmError};
use crate::membership::{Membership, MembershipChange};
use crate::protocol::{ProposalRejection, ProtocolStatus, ReadMode, RestoreError, TransferError};
use crate::storage::{Storage, StorageError};
use crate::transport::Transport;
use crate::types::{Index, LogId, NodeId, Term};
pub use clock::{Clock, DriftingClock, TokioClock};
use event_loop::Driver;
pub use published::LeaderView;
use waiters::Reply;

/// Most client requests queued for the driver; further calls wait (back-pressure).
const REQUEST_QUEUE_MAX: usize = 4_096;
/// Most inbound messages taken from the transport per step.
const INBOUND_BATCH_MAX: usize = 1_024;
/// Capacity of the committed-entry stream; a slower subscriber skips ahead (`Lagged`).
const COMMITTED_STREAM_MAX: usize = 4_096;

/// An error of a [`RaftNode`] call.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RaftError {
    /// The request was refused (not leader, busy, forward timed out, membership change in
    /// progress or invalid).
    #[error(transparent)]
    Rejected(#[from] ProposalRejection),
    /// The leadership transfer was refused or did not complete.
    #[error(transparent)]
    Transfer(#[from] TransferError),
    /// Another entry was committed at the proposal's position: it was not applied.
    #[error("leadership changed and the proposal was dropped; it was not applied")]
    ProposalDropped,
    /// The outcome cannot be known (the entry's position was covered by a snapshot, or the
    /// node lost leadership and did not learn the outcome in time).
    #[error("outcome unknown")]
    OutcomeUnknown,
    /// Storage failed; the node stopped (it acknowledges nothing it could not persist). From
    /// [`RaftNode::propose`], `Storage(Full)` means the disk is full: nothing was proposed,
    /// and the node goes on by itself once space returns ([`NodeStatus::storage_full`]).
    #[error("storage failed: {0}")]
    Storage(#[from] StorageError),
    /// The state machine failed; the node stopped.
    #[error("state machine failed: {0}")]
    Fsm(#[from] FsmError),
    /// The config is invalid.
    #[error("invalid config: {0}")]
    Config(#[from] ConfigError),
    /// The stored state cannot be restored (the config is invalid or storage is inconsistent).
    #[error("cannot restore the node: {0}")]
    Restore(#[from] RestoreError),
    /// The node was shut down (or stopped after a fatal error).
    #[error("the node is shut down")]
    AlreadyShutdown,
}

/// A proposal that was committed and applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    /// Where the entry was committed.
    pub log_id: LogId,
    /// The state machine's response.
    pub response: Bytes,
}

/// A committed command, as published on [`RaftNode::subscribe_committed`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommittedEntry {
    /// Index of the entry.
    pub index: Index,
    /// Term of the entry.
    pub term: Term,
    /// The command.
    pub command: Bytes,
}

/// The message a panic carried (`"a panic"` when it carried none).
fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic".to_string())
}

/// What a node reports about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeStatus {
    /// The protocol's view (term, role, leader, commit/applied index, followers' progress).
    pub protocol: ProtocolStatus,
    /// The fatal error that stopped the node, if any.
    pub fatal: Option<String>,
    /// The disk is full: a write waits for space (tried again until it succeeds) and new
    /// proposals are refused with `Storage(Full)`. Clears by itself once space returns.
    pub storage_full: bool,
}

/// A client request to the driver task.
enum Request {
    Propose { command: Bytes, reply: Reply<Applied> },
    Read { mode: ReadMode, reply: Reply<Index> },
    ChangeMembership { change: MembershipChange, force: bool, reply: Reply<Membership> },
    TransferLeadership { to: Option<NodeId>, reply: Reply<NodeId> },
    Shutdown { reply: oneshot::Sender<()> },
}

/// What a node is started with besides its id, config and seed.
struct StartParts {
    storage: Arc<dyn Storage>,
    transport: Arc<dyn Transport>,
    fsm: Box<dyn Fsm>,
    clock: Arc<dyn Clock>,
    id_entropy: u64,
}

/// A running Raft node: a handle to the driver task. Cheap calls; clone the `Arc` to share.
pub struct RaftNode {
    id: NodeId,
    requests: mpsc::Sender<Request>,
    status: watch::Receiver<NodeStatus>,
    /// Changes only with the term or the leader.
    leader: watch::Receiver<LeaderView>,
    /// Set once, when the node stops on a fatal error.
    fatal: watch::Receiver<Option<String>>,
    committed: broadcast::Sender<CommittedEntry>,
    task: Mutex<Option<JoinHandle<()>>>,
    /// The driver's background tasks, aborted with it.
    background: snapshots::Background,
    /// Set while the log writer waits for space on a full disk.
    storage_full: Arc<persist::SpaceWaits>,
    /// Set once a shutdown was asked for (a write waiting for space is given up).
    stopping: Arc<std::sync::atomic::AtomicBool>,
}

impl std::fmt::Debug for RaftNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RaftNode").field("id", &self.id).finish_non_exhaustive()
    }
}

impl RaftNode {
    /// Restores the node from `storage` and starts its driver task. `initial_membership` is
    /// used when storage holds no snapshot (a new cluster).
    ///
    /// `seed` drives election jitter. The ids that match peers' answers to this node's
    /// forwarded proposals and reads start at a point drawn from the seed and the OS, so that
    /// answers addressed to an earlier process of this node (still queued in a peer's
    /// transport) never match the new one's requests, even when a restart reuses the seed.
    ///
    /// When storage holds a snapshot, `fsm` is restored from it and entries at or below its
    /// index are not applied again.
    pub async fn start(
        id: NodeId,
        config: Config,
        initial_membership: Membership,
        storage: Arc<dyn Storage>,
        transport: Arc<dyn Transport>,
        fsm: Box<dyn Fsm>,
        seed: u64,
    ) -> Result<Self, RaftError> {
        let clock = Arc::new(TokioClock::new());
        let parts = StartParts { storage, transport, fsm, clock, id_entropy: crate::fresh_seed() };
        Self::start_parts(id, config, initial_membership, parts, seed).await
    }

    /// [`start`](Self::start) with the given clock instead of tokio's (a simulation gives
    /// each node a clock that drifts), fully determined by `seed`: unlike `start`, nothing
    /// from the OS is mixed into the request ids, so `seed` **must** differ on every start.
    #[allow(clippy::too_many_arguments)]
    pub async fn start_with_clock(
        id: NodeId,
        config: Config,
        initial_membership: Membership,
        storage: Arc<dyn Storage>,
        transport: Arc<dyn Transport>,
        fsm: Box<dyn Fsm>,
        seed: u64,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, RaftError> {
        let parts = StartParts { storage, transport, fsm, clock, id_entropy: 0 };
        Self::start_parts(id, config, initial_membership, parts, seed).await
    }

    async fn start_parts(
        id: NodeId,
        config: Config,
        initial_membership: Membership,
        start: StartParts,
        seed: u64,
    ) -> Result<Self, RaftError> {
        let (requests, rx) = mpsc::channel(REQUEST_QUEUE_MAX);
        let (committed, _) = broadcast::channel(COMMITTED_STREAM_MAX);
        let background = snapshots::Background::default();
        let stopping = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let parts = event_loop::Parts {
            storage: start.storage,
            transport: start.transport,
            fsm: start.fsm,
            requests: rx,
            committed: committed.clone(),
            clock: start.clock,
            id_entropy: start.id_entropy,
            background: background.clone(),
            stopping: stopping.clone(),
        };
        let (driver, watches) = Driver::restore(id, config, initial_membership, parts, seed).await?;
        let storage_full = driver.storage_full_flag();
        let span = tracing::info_span!("raft", node = id);
        let publisher = driver.publisher();
        let run = async move {
            use futures_util::FutureExt;
            // A panic (a bug) stops the node like a fatal error: it says so in its status
            // (health checks see it) and every caller gets an answer, instead of a node that
            // looks alive and answers nothing.
            if let Err(panic) = std::panic::AssertUnwindSafe(driver.run()).catch_unwind().await {
                let what = panic_message(panic.as_ref());
                tracing::error!(error = %what, "the driver panicked; the node has stopped");
                publisher.fail(format!("the driver panicked: {what}"), |_| {});
            }
        };
        let task = tokio::spawn(tracing::Instrument::instrument(run, span));
        Ok(Self {
            id,
            requests,
            status: watches.status,
            leader: watches.leader,
            fatal: watches.fatal,
            committed,
            task: Mutex::new(Some(task)),
            background,
            storage_full,
            stopping,
        })
    }

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.id
    }

    /// Proposes a command; resolves once it is applied on this node, with the state machine's
    /// response. On a follower it is forwarded to the leader when `auto_forward` is on.
    ///
    /// Fails with `OutcomeUnknown` when the command may or may not be applied: the node
    /// stopped or lost its answer after the command left it (its entry may commit on the
    /// other nodes), or it was placed in the log but not applied here within ten
    /// `rpc_timeout_ms`. Other errors mean it was not applied.
    pub async fn propose(&self, command: Bytes) -> Result<Applied, RaftError> {
        if self.storage_full.any() {
            // Nothing new while a write waits for space: the caller learns it at once.
            return Err(RaftError::Storage(StorageError::Full));
        }
        self.call(|reply| Request::Propose { command, reply }, RaftError::OutcomeUnknown).await
    }

    /// Confirms a linearizable read: resolves with a read index once this node's state machine
    /// has applied at least that index. The caller then reads its own state machine, which
    /// reflects every write acknowledged (anywhere) before this call began.
    ///
    /// Works on the leader and on followers (which ask the leader for the index).
    /// [`ReadMode::Lease`] skips the heartbeat round while the leader's lease holds (needs
    /// `lease_read`). Fails with `Rejected(Busy)` past `max_pending_reads` waiting reads, and
    /// with `Rejected(NotLeader)`, `Rejected(Timeout)` (a leader that cannot reach a quorum)
    /// or `Rejected(ForwardTimeout)` (a follower whose leader does not answer) when no leader
    /// confirms it within `rpc_timeout_ms`.
    pub async fn read_index(&self, mode: ReadMode) -> Result<Index, RaftError> {
        self.call(|reply| Request::Read { mode, reply }, RaftError::AlreadyShutdown).await
    }

    /// Changes the cluster's membership (on the leader). Resolves once the change is complete
    /// on this node, with the configuration it led to: for a voter change, once the final
    /// (non-joint) configuration after the joint one is applied here; for a learner change,
    /// once its entry is applied.
    ///
    /// Fails with `Rejected` when refused (not the leader, another change in progress, an
    /// invalid change, a new voter that has not caught up (`NotCaughtUp`, retry later), a
    /// new voter set without a majority of caught-up, answering nodes (`NoLiveQuorum`)),
    /// `ProposalDropped` when the change was lost with this node's leadership, and
    /// `OutcomeUnknown` when this node lost leadership and did not see the change complete
    /// within `rpc_timeout_ms` (it may still complete).
    pub async fn change_membership(&self, change: MembershipChange) -> Result<Membership, RaftError> {
        let request = |reply| Request::ChangeMembership { change, force: false, reply };
        self.call(request, RaftError::OutcomeUnknown).await
    }

    /// [`change_membership`](Self::change_membership) without the checks that the new voters
    /// are caught up and that a majority of them answer: for replacing nodes that are gone
    /// for good. The cluster stays safe, but may be left unable to elect until they return.
    pub async fn force_membership_change(&self, change: MembershipChange) -> Result<Membership, RaftError> {
        let request = |reply| Request::ChangeMembership { change, force: true, reply };
        self.call(request, RaftError::OutcomeUnknown).await
    }

    /// Adds a learner: a member that receives the log but does not vote.
    pub async fn add_learner(&self, id: NodeId) -> Result<Membership, RaftError> {
        self.change_membership(MembershipChange::AddLearner(id)).await
    }

    /// Makes a learner a voter (through a joint configuration).
    pub async fn promote_learner(&self, id: NodeId) -> Result<Membership, RaftError> {
        self.change_membership(MembershipChange::PromoteLearner(id)).await
    }

    /// Removes a voter or a learner; removing the leader makes it step down once the change
    /// commits.
    pub async fn remove_node(&self, id: NodeId) -> Result<Membership, RaftError> {
        self.change_membership(MembershipChange::RemoveNode(id)).await
    }

    /// Replaces the voter set (see [`MembershipChange::SetVoters`]).
    pub async fn set_voters(
        &self,
        voters: impl IntoIterator<Item = NodeId>,
    ) -> Result<Membership, RaftError> {
        let voters: BTreeSet<NodeId> = voters.into_iter().collect();
        self.change_membership(MembershipChange::SetVoters(voters)).await
    }

    /// The membership in force on this node (the latest configuration in its log).
    pub fn membership(&self) -> Membership {
        self.status.borrow().protocol.membership.clone()
    }

    /// Hands leadership over to `to`, or to the most caught-up voter when `None` (on the
    /// leader). Resolves with the new leader once this node sees another node lead; with this
    /// node's id at once when `to` is this node (and it leads).
    ///
    /// Fails with `Transfer(e)` when refused at once (not the leader, not a voter, a transfer
    /// in progress) and with `Transfer(TimedOut(target))` when the transfer was abandoned
    /// (after `election_timeout_max_ms`) or no new leader showed up in time.
    pub async fn transfer_leadership(&self, to: Option<NodeId>) -> Result<NodeId, RaftError> {
        self.call(|reply| Request::TransferLeadership { to, reply }, RaftError::AlreadyShutdown).await
    }

    /// The node's current status, published after every step (an answer given while the
    /// step's `Ready` is carried out may be ahead of it).
    pub fn status(&self) -> NodeStatus {
        let mut status = self.status.borrow().clone();
        // Read here, not from the driver's last publication: the driver may be waiting for
        // the writer.
        status.storage_full = self.storage_full.any();
        status
    }

    /// A watch on the status, updated after every step: a busy node wakes its watchers
    /// thousands of times a second. To wait for a change of leader or for a fatal error, use
    /// [`Self::watch_leader`] or [`Self::watch_fatal`].
    pub fn watch_status(&self) -> watch::Receiver<NodeStatus> {
        self.status.clone()
    }

    /// A watch on the term and the leader this node knows of, changed only when one of them
    /// changes.
    pub fn watch_leader(&self) -> watch::Receiver<LeaderView> {
        self.leader.clone()
    }

    /// A watch on the fatal error that stopped the node (`None` while it runs), changed only
    /// when it stops on one. The driver task's end without an error closes it.
    pub fn watch_fatal(&self) -> watch::Receiver<Option<String>> {
        self.fatal.clone()
    }

    /// A stream of committed commands `(index, term, command)`, in order.
    pub fn subscribe_committed(&self) -> broadcast::Receiver<CommittedEntry> {
        self.committed.subscribe()
    }

    /// Stops the node gracefully: pending reads and transfers fail with `AlreadyShutdown`,
    /// pending proposals and membership changes with `OutcomeUnknown`; the transport is
    /// closed. A second call returns `AlreadyShutdown`.
    pub async fn shutdown(&self) -> Result<(), RaftError> {
        let Some(task) = self.task.lock().await.take() else { return Err(RaftError::AlreadyShutdown) };
        self.stopping.store(true, std::sync::atomic::Ordering::SeqCst);
        let (reply, rx) = oneshot::channel();
        if self.requests.send(Request::Shutdown { reply }).await.is_ok() {
            let _ = rx.await;
        }
        let _ = task.await;
        Ok(())
    }

    /// Stops the driver task at once, as a process crash would: nothing more is written or
    /// sent, callers waiting for an answer get `OutcomeUnknown` (proposals, membership
    /// changes) or `AlreadyShutdown`, and the transport is not shut down. For crash tests
    /// and simulations; use [`shutdown`](Self::shutdown) to stop a node.
    pub fn abort(&self) {
        if let Ok(mut task) = self.task.try_lock() {
            if let Some(task) = task.take() {
                task.abort();
            }
        }
        // A process crash ends its background work too (a snapshot being written).
        self.background.abort_all();
    }

    /// Queues a request and waits for its answer; `lost` is the answer when the driver stops
    /// without giving one.
    async fn call<T>(
        &self,
        request: impl FnOnce(Reply<T>) -> Request,
        lost: RaftError,
    ) -> Result<T, RaftError> {
        let (reply, rx) = oneshot::channel();
        self.requests.send(request(reply)).await.map_err(|_| RaftError::AlreadyShutdown)?;
        rx.await.map_err(|_| lost)?
    }
}
