//! The async driver: a [`RaftNode`] owns a [`Raft`] and its [`Storage`], [`Transport`] and
//! [`Fsm`], feeds it events (client requests, messages, timer ticks) and carries out each
//! [`Ready`](crate::Ready) in the required order.
//!
//! Requests that arrive while a `Ready` is being persisted are batched into the next step, so
//! many proposals share one append and one sync (group commit).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{broadcast, mpsc, oneshot, watch, Mutex};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::config::{Config, ConfigError};
use crate::fsm::{Fsm, FsmError};
use crate::membership::Membership;
use crate::message::{Message, ProposalId};
use crate::protocol::{Event, ProposalRejection, ProtocolStatus, Raft, RestoreError, RestoredState};
use crate::storage::{Storage, StorageError};
use crate::transport::Transport;
use crate::types::{EntryPayload, Index, LogId, NodeId, Term};

/// Most client requests queued for the driver; further calls wait (back-pressure).
const REQUEST_QUEUE_MAX: usize = 4_096;
/// Most inbound messages taken from the transport per step.
const INBOUND_BATCH_MAX: usize = 1_024;
/// Capacity of the committed-entry stream; a slower subscriber skips ahead (`Lagged`).
const COMMITTED_STREAM_MAX: usize = 4_096;

/// An error of a [`RaftNode`] call.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RaftError {
    /// The proposal was refused (not leader, busy, forward timed out).
    #[error(transparent)]
    Rejected(#[from] ProposalRejection),
    /// Another entry was committed at the proposal's position: it was not applied.
    #[error("leadership changed and the proposal was dropped; it was not applied")]
    ProposalDropped,
    /// The outcome cannot be known (the answer arrived after the entry was applied here).
    #[error("outcome unknown")]
    OutcomeUnknown,
    /// Storage failed; the node stopped (it acknowledges nothing it could not persist).
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

/// What a node reports about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeStatus {
    /// The protocol's view (term, role, leader, commit/applied index, followers' progress).
    pub protocol: ProtocolStatus,
    /// The fatal error that stopped the node, if any.
    pub fatal: Option<String>,
}

enum Request {
    Propose { command: Bytes, reply: oneshot::Sender<Result<Applied, RaftError>> },
    Shutdown { reply: oneshot::Sender<()> },
}

/// A running Raft node: a handle to the driver task. Cheap calls; clone the `Arc` to share.
pub struct RaftNode {
    id: NodeId,
    requests: mpsc::Sender<Request>,
    status: watch::Receiver<NodeStatus>,
    committed: broadcast::Sender<CommittedEntry>,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for RaftNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RaftNode").field("id", &self.id).finish_non_exhaustive()
    }
}

impl RaftNode {
    /// Restores the node from `storage` and starts its driver task. `initial_membership` is
    /// used when storage holds no snapshot (a new cluster); `seed` drives election jitter.
    pub async fn start(
        id: NodeId,
        config: Config,
        initial_membership: Membership,
        storage: Arc<dyn Storage>,
        transport: Arc<dyn Transport>,
        mut fsm: Box<dyn Fsm>,
        seed: u64,
    ) -> Result<Self, RaftError> {
        config.validate()?;
        let initial = storage.initial_state().await?;
        let entries = if initial.last_index >= initial.first_index {
            storage.entries(initial.first_index, initial.last_index + 1).await?
        } else {
            Vec::new()
        };
        let snapshot = storage.load_snapshot().await?;
        if let Some(s) = &snapshot {
            fsm.restore(&s.data).await?;
        }
        let restored = RestoredState {
            hard_state: initial.hard_state,
            snapshot,
            entries,
            membership: initial_membership,
        };
        let raft = Raft::new(id, config.clone(), restored, seed, 0)?;
        let (requests, rx) = mpsc::channel(REQUEST_QUEUE_MAX);
        let (status_tx, status) = watch::channel(NodeStatus { protocol: raft.status(), fatal: None });
        let (committed, _) = broadcast::channel(COMMITTED_STREAM_MAX);
        let driver = Driver {
            raft,
            auto_forward: config.auto_forward,
            storage,
            transport,
            fsm,
            requests: rx,
            status: status_tx,
            committed: committed.clone(),
            started: Instant::now(),
            next_id: 0,
            outcome_waiters: BTreeMap::new(),
            apply_waiters: BTreeMap::new(),
            applied: 0,
        };
        let span = tracing::info_span!("raft", node = id);
        let task = tokio::spawn(tracing::Instrument::instrument(driver.run(), span));
        Ok(Self { id, requests, status, committed, task: Mutex::new(Some(task)) })
    }

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.id
    }

    /// Proposes a command; resolves once it is applied on this node, with the state machine's
    /// response. On a follower it is forwarded to the leader when `auto_forward` is on.
    pub async fn propose(&self, command: Bytes) -> Result<Applied, RaftError> {
        let (reply, rx) = oneshot::channel();
        self.requests
            .send(Request::Propose { command, reply })
            .await
            .map_err(|_| RaftError::AlreadyShutdown)?;
        rx.await.map_err(|_| RaftError::AlreadyShutdown)?
    }

    /// The node's current status.
    pub fn status(&self) -> NodeStatus {
        self.status.borrow().clone()
    }

    /// A watch on the status, updated after every step.
    pub fn watch_status(&self) -> watch::Receiver<NodeStatus> {
        self.status.clone()
    }

    /// A stream of committed commands `(index, term, command)`, in order.
    pub fn subscribe_committed(&self) -> broadcast::Receiver<CommittedEntry> {
        self.committed.subscribe()
    }

    /// Stops the node gracefully: pending proposals fail with `AlreadyShutdown`, the transport
    /// is closed. A second call returns `AlreadyShutdown`.
    pub async fn shutdown(&self) -> Result<(), RaftError> {
        let Some(task) = self.task.lock().await.take() else { return Err(RaftError::AlreadyShutdown) };
        let (reply, rx) = oneshot::channel();
        if self.requests.send(Request::Shutdown { reply }).await.is_ok() {
            let _ = rx.await;
        }
        let _ = task.await;
        Ok(())
    }
}

struct Driver {
    raft: Raft,
    auto_forward: bool,
    storage: Arc<dyn Storage>,
    transport: Arc<dyn Transport>,
    fsm: Box<dyn Fsm>,
    requests: mpsc::Receiver<Request>,
    status: watch::Sender<NodeStatus>,
    committed: broadcast::Sender<CommittedEntry>,
    started: Instant,
    next_id: ProposalId,
    /// Proposals waiting for the protocol to place them.
    outcome_waiters: BTreeMap<ProposalId, oneshot::Sender<Result<Applied, RaftError>>>,
    /// Placed proposals waiting to be applied, by index.
    apply_waiters: BTreeMap<Index, (Term, oneshot::Sender<Result<Applied, RaftError>>)>,
    applied: Index,
}

impl Driver {
    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    async fn run(mut self) {
        let mut inbound: Vec<Message> = Vec::with_capacity(INBOUND_BATCH_MAX);
        let mut shutdown_reply = None;
        let fatal = loop {
            let deadline = self.started + Duration::from_millis(self.raft.next_deadline());
            tokio::select! {
                request = self.requests.recv() => match request {
                    None => break None,
                    Some(Request::Shutdown { reply }) => { shutdown_reply = Some(reply); break None; }
                    Some(Request::Propose { command, reply }) => {
                        self.propose(command, reply);
                        // Batch whatever else is queued.
                        let mut stop = None;
                        for _ in 0..REQUEST_QUEUE_MAX {
                            match self.requests.try_recv() {
                                Ok(Request::Propose { command, reply }) => self.propose(command, reply),
                                Ok(Request::Shutdown { reply }) => { stop = Some(reply); break; }
                                Err(_) => break,
                            }
                        }
                        if let Some(reply) = stop { shutdown_reply = Some(reply); break None; }
                    }
                },
                received = self.transport.recv(&mut inbound, INBOUND_BATCH_MAX) => {
                    if received.is_err() { break None; }
                    let now = self.now_ms();
                    for m in inbound.drain(..) {
                        self.raft.step(now, Event::Message(m));
                    }
                }
                _ = tokio::time::sleep_until(deadline) => {
                    let now = self.now_ms();
                    self.raft.step(now, Event::Tick);
                }
            }
            if let Err(e) = self.process_ready().await {
                break Some(e);
            }
            let _ = self.status.send(NodeStatus { protocol: self.raft.status(), fatal: None });
        };
        if let Some(e) = &fatal {
            tracing::error!(error = %e, "node stopped after a fatal error");
            let _ = self.status.send(NodeStatus { protocol: self.raft.status(), fatal: Some(e.to_string()) });
        }
        let error = fatal.unwrap_or(RaftError::AlreadyShutdown);
        for (_, reply) in std::mem::take(&mut self.outcome_waiters) {
            let _ = reply.send(Err(error.clone()));
        }
        for (_, (_, reply)) in std::mem::take(&mut self.apply_waiters) {
            let _ = reply.send(Err(error.clone()));
        }
        self.transport.shutdown().await;
        if let Some(reply) = shutdown_reply {
            let _ = reply.send(());
        }
    }

    fn propose(&mut self, command: Bytes, reply: oneshot::Sender<Result<Applied, RaftError>>) {
        self.next_id += 1;
        let id = self.next_id;
        self.outcome_waiters.insert(id, reply);
        let now = self.now_ms();
        self.raft.step(now, Event::Propose { id, command, forward: self.auto_forward });
    }

    fn send(&self, message: Message) {
        if let Err(e) = self.transport.send(message) {
            tracing::debug!(error = %e, "message not sent");
        }
    }

    /// Carries out every pending `Ready` in the order the protocol requires.
    async fn process_ready(&mut self) -> Result<(), RaftError> {
        while self.raft.has_ready() {
            let ready = self.raft.take_ready();
            for m in ready.messages {
                self.send(m);
            }
            if let Some(hs) = ready.hard_state {
                self.storage.save_hard_state(hs).await?;
            }
            if let Some(snapshot) = &ready.snapshot {
                self.storage.save_snapshot(snapshot.clone()).await?;
            }
            if let Some(from) = ready.truncate_from {
                self.storage.truncate(from).await?;
            }
            if !ready.entries.is_empty() {
                self.storage.append(&ready.entries).await?;
            }
            for m in ready.persisted_messages {
                self.send(m);
            }
            for outcome in ready.proposals {
                let Some(reply) = self.outcome_waiters.remove(&outcome.id) else { continue };
                match outcome.result {
                    Ok(log_id) if log_id.index <= self.applied => {
                        let _ = reply.send(Err(RaftError::OutcomeUnknown));
                    }
                    Ok(log_id) => {
                        self.apply_waiters.insert(log_id.index, (log_id.term, reply));
                    }
                    Err(e) => {
                        let _ = reply.send(Err(e.into()));
                    }
                }
            }
            if let Some(snapshot) = &ready.snapshot {
                self.fsm.restore(&snapshot.data).await?;
                self.applied = snapshot.meta.last_log_id.index;
            }
            if !ready.committed.is_empty() {
                let responses = self.fsm.apply(&ready.committed).await?;
                if responses.len() != ready.committed.len() {
                    return Err(
                        FsmError::Failed("apply returned the wrong number of responses".into()).into()
                    );
                }
                for (entry, response) in ready.committed.iter().zip(responses) {
                    self.applied = entry.index;
                    if let EntryPayload::Command(command) = &entry.payload {
                        let _ = self.committed.send(CommittedEntry {
                            index: entry.index,
                            term: entry.term,
                            command: command.clone(),
                        });
                    }
                    if let Some((term, reply)) = self.apply_waiters.remove(&entry.index) {
                        let result = if term == entry.term {
                            Ok(Applied { log_id: entry.log_id(), response })
                        } else {
                            Err(RaftError::ProposalDropped)
                        };
                        let _ = reply.send(result);
                    }
                }
            }
            self.raft.advance();
        }
        Ok(())
    }
}
