//! The driver task: waits for client requests, inbound messages and timers, steps the
//! protocol, and carries out every `Ready` in the order [`Ready`](crate::Ready) documents.

use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio::time::Instant;

use super::apply::{Applier, ApplyDone};
use super::clock::Clock;
use super::persist::{LogWriter, Persisted, ReadyWrites};
use super::published::{Publisher, Watches};
use super::snapshots::{snapshot_done, SnapshotSchedule, SnapshotTask, Staged, StoredSnapshotReader};
use super::waiters::{NodeView, Reply, Waiters};
use super::{Applied, CommittedEntry, NodeStatus, RaftError, Request, INBOUND_BATCH_MAX, REQUEST_QUEUE_MAX};
use crate::config::Config;
use crate::fsm::Fsm;
use crate::membership::{Membership, MembershipChange};
use crate::message::{Message, ProposalId, ReadId};
use crate::protocol::{Event, ProposalRejection, Raft, ReadMode, RestoredState};
use crate::rng::SeededRng;
use crate::storage::Storage;
use crate::transport::Transport;
use crate::types::{EntryPayload, EntryStub, Index, LogId, Millis, NodeId, Role};

/// How many maximum election timeouts a leadership transfer may take, from its start until
/// this node sees a new leader, before the caller is told it timed out.
const TRANSFER_WAIT_ELECTIONS: u64 = 3;

/// How many `rpc_timeout_ms` a proposal placed in the log may wait to be applied on this node
/// before its caller is told the outcome is unknown.
const PROPOSAL_APPLY_TIMEOUTS: u64 = 10;

/// Answers a request the driver stops before carrying out.
fn refuse(request: Request) {
    match request {
        Request::Propose { reply, .. } => drop(reply.send(Err(RaftError::AlreadyShutdown))),
        Request::Read { reply, .. } => drop(reply.send(Err(RaftError::AlreadyShutdown))),
        Request::ChangeMembership { reply, .. } => drop(reply.send(Err(RaftError::AlreadyShutdown))),
        Request::TransferLeadership { reply, .. } => drop(reply.send(Err(RaftError::AlreadyShutdown))),
        Request::Shutdown { reply } => drop(reply.send(())),
    }
}

/// What woke the driver task.
enum Woke {
    /// Requests were taken into the batch (`false`: the request queue is closed).
    Requests(bool),
    /// `false`: the transport is closed.
    Inbound(bool),
    Timer,
    /// The background snapshot ended.
    SnapshotWritten(Result<crate::storage::Snapshot, RaftError>),
    /// The log writer completed a write.
    Persisted(Result<Persisted, RaftError>),
    /// The applier completed a batch, a view or a restore.
    Applied(Result<ApplyDone, RaftError>),
    /// A read of log entries or of a snapshot part from storage ended (`None`: the task did
    /// not finish).
    Read(Option<ReadDone>),
}

/// A read from storage beside the event loop ended: the event to step, and whether it found
/// this node's own copy damaged.
pub(super) struct ReadDone {
    event: Event,
    damaged: Option<OwnDamage>,
}

/// A copy of data this node holds that a read found unreadable (a checksum failure or an IO
/// error): another node that needs it would wait for it for ever, so a new snapshot of the
/// state machine is taken to send instead (see [`Driver::note_own_damage`]).
#[derive(Debug, Clone, Copy)]
pub(super) enum OwnDamage {
    /// The stored snapshot of this id.
    Snapshot(LogId),
    /// Log entries from this index.
    Entries { from: Index },
}

impl Woke {
    /// What woke the loop, for the log.
    fn name(&self) -> &'static str {
        match self {
            Woke::Requests(_) => "client requests",
            Woke::Inbound(_) => "messages",
            Woke::Timer => "the timer",
            Woke::SnapshotWritten(_) => "a snapshot written",
            Woke::Persisted(_) => "a log write done",
            Woke::Applied(_) => "an apply done",
            Woke::Read(_) => "a storage read done",
        }
    }
}

/// A turn of the event loop (one wake: its step and what the step asked for) that takes
/// longer than this is logged: timers and messages waited meanwhile, and a follower may miss
/// its leader for that long.
const SLOW_TURN: std::time::Duration = std::time::Duration::from_millis(100);

/// What the driver works with besides the protocol.
pub(super) struct Parts {
    pub(super) storage: Arc<dyn Storage>,
    pub(super) transport: Arc<dyn Transport>,
    pub(super) fsm: Box<dyn Fsm>,
    pub(super) requests: mpsc::Receiver<Request>,
    pub(super) committed: broadcast::Sender<CommittedEntry>,
    pub(super) clock: Arc<dyn Clock>,
    /// Mixed into the seed for the request ids' base.
    pub(super) id_entropy: u64,
    /// Where background tasks are registered, so that an abort ends them too.
    pub(super) background: super::snapshots::Background,
    /// Set once a shutdown was asked for.
    pub(super) stopping: Arc<std::sync::atomic::AtomicBool>,
}

/// The state of the driver task.
pub(super) struct Driver {
    pub(super) raft: Raft,
    pub(super) config: Config,
    pub(super) storage: Arc<dyn Storage>,
    transport: Arc<dyn Transport>,
    /// The task that owns the state machine: applies batches, takes views, restores.
    pub(super) applier: Applier,
    requests: mpsc::Receiver<Request>,
    published: Arc<Publisher>,
    committed: broadcast::Sender<CommittedEntry>,
    pub(super) clock: Arc<dyn Clock>,
    next_proposal_id: ProposalId,
    next_read_id: ReadId,
    pub(super) waiters: Waiters,
    /// The last entry the state machine has applied (or the snapshot it was restored from):
    /// behind the protocol's applied index while the applier has work queued.
    pub(super) applied: LogId,
    /// Payload bytes applied since the latest snapshot was started (entries re-applied after a
    /// restart count again, so the count survives restarts).
    pub(super) applied_bytes_since_snapshot: u64,
    /// The snapshot being written in the background, if any.
    pub(super) snapshot_task: Option<SnapshotTask>,
    /// The compaction of the log behind the latest snapshot, while it runs.
    pub(super) compaction: Option<super::snapshots::Compaction>,
    /// The thresholds of the next automatic snapshot.
    pub(super) snapshot_schedule: SnapshotSchedule,
    /// No snapshot starts before this time (ms): one failed on a full disk.
    pub(super) snapshots_paused_until_ms: u64,
    /// The background tasks' abort handles.
    pub(super) background: super::snapshots::Background,
    /// Where the parts of the snapshot being received are.
    pub(super) staged: Staged,
    /// Carries out the readies' log and hard-state writes (polled in the event loop).
    writer: LogWriter,
    /// Set once a shutdown was asked for: a write waiting for space is given up.
    pub(super) stopping: Arc<std::sync::atomic::AtomicBool>,
    /// A received snapshot's install waits for space (counted in the writer's
    /// [`SpaceWaits`](super::persist::SpaceWaits)).
    pub(super) install_waits_for_space: bool,
    /// Reads from storage run beside the event loop: log entries before the protocol's cache
    /// (at most one per follower and one for applying: the protocol asks for no more) and
    /// parts of the snapshot being sent (one per follower in transfer, and one more per
    /// resend after a timeout).
    reads: tokio::task::JoinSet<ReadDone>,
    /// A read found this node's snapshot, or committed entries after it, damaged: the next
    /// snapshot is due at once (see [`Driver::note_own_damage`]).
    pub(super) refresh_snapshot: bool,
}

/// Reads the stored log `range` for a restart, in reads of about `read_bytes`
/// ([`Storage::entries_within`]), as stubs: the payloads stay in storage, and the protocol
/// reads them back when it applies them again or sends them to a follower. The cache fills
/// with the entries appended after the restart. A restart peaks at a state's worth of memory
/// (the snapshot restored) plus what applying the log again holds, so it keeps no cache on top:
/// at most one read is in memory at once, besides a stub per entry.
async fn read_log(
    storage: &dyn Storage,
    range: std::ops::RangeInclusive<Index>,
    read_bytes: usize,
) -> Result<Vec<EntryStub>, crate::storage::StorageError> {
    let mut stubs = Vec::new();
    let (mut from, last) = range.into_inner();
    while from <= last {
        let entries = storage.entries_within(from, last + 1, read_bytes.max(1)).await?;
        let Some(read_to) = entries.last().map(|e| e.index) else {
            return Err(crate::storage::StorageError::Corrupt(format!("log entry {from} could not be read")));
        };
        stubs.extend(entries.iter().map(EntryStub::from));
        from = read_to + 1;
    }
    Ok(stubs)
}

/// The wakes past the timer's deadline in a row after which the timer fires whatever else is
/// ready (each takes one batch of messages, of requests or one completion), once the
/// messages already there are taken (at most [`OVERDUE_INBOUND_BATCHES`] more wakes).
const OVERDUE_WAKES_MAX: u32 = 8;
/// Batches of messages taken, at most, before an overdue timer fires.
const OVERDUE_INBOUND_BATCHES: u32 = 4;

impl Driver {
    /// Restores the protocol and the state machine from storage. Returns the driver and the
    /// watches it publishes to.
    pub(super) async fn restore(
        id: NodeId,
        config: Config,
        initial_membership: Membership,
        mut parts: Parts,
        seed: u64,
    ) -> Result<(Self, Watches), RaftError> {
        config.validate()?;
        let initial = parts.storage.initial_state().await?;
        if let Some(lost) = &initial.lost {
            tracing::warn!(node = id, %lost, "storage lost data it had made durable");
        }
        let stubs = read_log(
            parts.storage.as_ref(),
            initial.first_index..=initial.last_index,
            config.max_bytes_per_append,
        )
        .await?;
        // The state machine reads the snapshot from storage part by part, and the protocol
        // holds only its size: it reads the bytes from storage when it sends them.
        let mut snapshot = None;
        let mut applied = LogId::default();
        if let Some((meta, len)) = parts.storage.snapshot_meta().await? {
            let last = meta.last_log_id;
            let mut reader =
                StoredSnapshotReader::new(parts.storage.clone(), last, len, config.snapshot_chunk_bytes);
            parts.fsm.restore(&mut reader).await?;
            applied = last;
            snapshot =
                Some(crate::storage::Snapshot { meta, data: crate::storage::SnapshotData::stored(len) });
        }
        let restored = RestoredState {
            hard_state: initial.hard_state,
            snapshot,
            stubs,
            entries: Vec::new(),
            membership: initial_membership,
            recorded_last: initial.lost.as_ref().map(|l| l.recorded_last),
            recorded_config: initial.lost.as_ref().and_then(|l| l.recorded_config),
            staged: initial.staged.clone(),
        };
        let raft = Raft::new(id, config.clone(), restored, seed, 0)?;
        // A reception storage kept that the protocol does not resume (the snapshot is older
        // than the one held, say) is dropped: its file may be large.
        let resumed = raft.status().incoming_snapshot.is_some();
        if initial.staged.is_some() && !resumed {
            parts.storage.discard_staged_snapshot().await?;
        }
        // Request ids start at a random point of the 64-bit space, so that ids of this
        // incarnation and of earlier ones (whose answers may still arrive) do not meet.
        let mut ids = SeededRng::new(seed ^ parts.id_entropy ^ 0x1D5E_ED0F_1D5E_ED0F);
        let (first_proposal_id, first_read_id) = (ids.next_u64(), ids.next_u64());
        debug_assert_eq!(raft.applied_index(), applied.index, "the protocol starts at the snapshot");
        let (published, watches) =
            Publisher::new(NodeStatus { protocol: raft.status(), fatal: None, storage_full: false });
        let snapshot_schedule =
            SnapshotSchedule::new(seed, config.snapshot_threshold_entries, config.snapshot_threshold_bytes);
        let writer = LogWriter::new(parts.storage.clone());
        let applier = Applier::start(parts.fsm, applied, |h| parts.background.register(h));
        let driver = Self {
            raft,
            config,
            storage: parts.storage,
            transport: parts.transport,
            applier,
            requests: parts.requests,
            published,
            committed: parts.committed,
            clock: parts.clock,
            next_proposal_id: first_proposal_id,
            next_read_id: first_read_id,
            waiters: Waiters::default(),
            applied,
            applied_bytes_since_snapshot: 0,
            snapshot_task: None,
            compaction: None,
            snapshot_schedule,
            snapshots_paused_until_ms: 0,
            background: parts.background,
            // What storage kept of a reception cut short stays staged: it resumes there.
            staged: if resumed { Staged::InStorage } else { Staged::Nothing },
            writer,
            stopping: parts.stopping,
            install_waits_for_space: false,
            reads: tokio::task::JoinSet::new(),
            refresh_snapshot: false,
        };
        Ok((driver, watches))
    }

    fn now_ms(&self) -> Millis {
        self.clock.now_ms()
    }

    /// The protocol's status, with the index the state machine has applied (the protocol's
    /// counts what was handed to the applier).
    fn protocol_status(&self) -> crate::protocol::ProtocolStatus {
        let mut status = self.raft.status();
        status.applied_index = self.applied.index;
        status
    }

    /// Set while the log writer waits for space on a full disk.
    pub(super) fn storage_full_flag(&self) -> Arc<super::persist::SpaceWaits> {
        self.writer.full_flag()
    }

    /// What the driver publishes to, for whoever must report that this task died.
    pub(super) fn publisher(&self) -> Arc<Publisher> {
        self.published.clone()
    }

    /// The driver task's body: runs until shutdown, a closed transport or a fatal error.
    pub(super) async fn run(mut self) {
        let mut inbound: Vec<Message> = Vec::with_capacity(INBOUND_BATCH_MAX);
        // Requests are taken together, as many as are queued (the queue's permits are given
        // back once per batch, not once per request).
        let mut requests: Vec<Request> = Vec::new();
        let mut shutdown_reply = None;
        let mut clients_first = false;
        let mut was_stalled = false;
        let mut overdue_wakes = 0u32;
        // One timer for the task's life, moved when the deadline moves (a timer made afresh
        // each turn registered and removed an entry in tokio's timer wheel every turn, and
        // showed in the profile at one proposer). `armed` is false once a `Woke::Timer` was
        // taken: the next turn sets it again, even to the same deadline.
        let mut timer = Box::pin(tokio::time::sleep_until(Instant::now()));
        let mut armed = false;
        let fatal = loop {
            let mut deadline_ms = self.raft.next_deadline();
            if let Some(d) = self.waiters.next_deadline() {
                deadline_ms = deadline_ms.min(d);
            }
            // A leader whose own write has not completed for a while (a hung disk) commits
            // nothing, but its heartbeats would keep the followers from electing another
            // leader: it goes quiet (no timer steps: no heartbeats, no quorum check) until its
            // disk answers or it hears of a newer term. Messages are still handled.
            let now_ms = self.now_ms();
            let stall_ms = self.config.disk_stall_ms();
            let disk_stalled =
                self.raft.role() == Role::Leader && self.writer.oldest_wait_ms(now_ms) > stall_ms;
            if disk_stalled != was_stalled {
                if disk_stalled {
                    tracing::warn!(
                        stall_ms,
                        "own log write not done: the leader goes quiet so that another can take over"
                    );
                } else {
                    tracing::info!("own log write done or leadership lost: timers resume");
                }
                was_stalled = disk_stalled;
            }
            if disk_stalled {
                deadline_ms = deadline_ms.max(now_ms + self.config.heartbeat_interval_ms);
            }
            let deadline = self.clock.instant_at(deadline_ms);
            if !armed || timer.deadline() != deadline {
                timer.as_mut().reset(deadline);
                armed = true;
            }
            // No random branch choice (a seeded simulation must replay): timers first when
            // due, then clients and peers in turns, so that neither starves the other.
            clients_first = !clients_first;
            // On the leader, client requests wait while its log write is under way, as they
            // waited for the write when it ran here: they are then taken together, in one step,
            // one AppendEntries per follower and one write (group commit; taken one by one,
            // each would cost every follower a message, a write and an answer). Messages and
            // timers are not held back, so heartbeats go on. The leader's writes come only from
            // its own steps, so requests are never held for long; a follower's come from the
            // leader's stream and could hold them for good, so a follower never holds them.
            // On a full disk the write may wait for long: requests are taken (proposals are
            // refused before they get here; reads, admin calls and shutdown must be answered).
            let disk_full = self.writer.disk_full();
            let take_requests = disk_full || !(self.writer.busy() && self.raft.role() == Role::Leader);
            let overdue = Instant::now() >= deadline;
            overdue_wakes = if overdue { overdue_wakes + 1 } else { 0 };
            let woke = if overdue_wakes > OVERDUE_WAKES_MAX + OVERDUE_INBOUND_BATCHES {
                // Overdue for this many wakes: a stream of work that never ends (a flood of
                // messages, say) must not keep the timer from firing.
                overdue_wakes = 0;
                Woke::Timer
            } else if overdue_wakes > OVERDUE_WAKES_MAX {
                // The timer fires next, but first the messages already there: the followers'
                // answers must count before a quorum check (completions, taken first in the
                // other branches, could otherwise fill every wake).
                tokio::select! {
                    biased;
                    received = self.transport.recv(&mut inbound, INBOUND_BATCH_MAX) => Woke::Inbound(received.is_ok()),
                    () = std::future::ready(()) => {
                        overdue_wakes = 0;
                        Woke::Timer
                    }
                }
            } else if overdue {
                // Overdue (the node was busy): take the messages that arrived meanwhile before
                // the timer fires, so that a stall does not read as a silent leader or quorum;
                // then the clients, then the timer.
                tokio::select! {
                    biased;
                    outcome = snapshot_done(&mut self.snapshot_task) => Woke::SnapshotWritten(outcome),
                    done = self.writer.next_done() => Woke::Persisted(done),
                    done = self.applier.next_done() => Woke::Applied(done),
                    read = self.reads.join_next(), if !self.reads.is_empty() => Woke::Read(read.and_then(Result::ok)),
                    received = self.transport.recv(&mut inbound, INBOUND_BATCH_MAX) => Woke::Inbound(received.is_ok()),
                    taken = self.requests.recv_many(&mut requests, REQUEST_QUEUE_MAX), if take_requests => Woke::Requests(taken > 0),
                    () = std::future::ready(()) => Woke::Timer,
                }
            } else if clients_first {
                tokio::select! {
                    biased;
                    outcome = snapshot_done(&mut self.snapshot_task) => Woke::SnapshotWritten(outcome),
                    done = self.writer.next_done() => Woke::Persisted(done),
                    done = self.applier.next_done() => Woke::Applied(done),
                    read = self.reads.join_next(), if !self.reads.is_empty() => Woke::Read(read.and_then(Result::ok)),
                    taken = self.requests.recv_many(&mut requests, REQUEST_QUEUE_MAX), if take_requests => Woke::Requests(taken > 0),
                    received = self.transport.recv(&mut inbound, INBOUND_BATCH_MAX) => Woke::Inbound(received.is_ok()),
                    () = &mut timer => Woke::Timer,
                }
            } else {
                tokio::select! {
                    biased;
                    // First: it completes once per snapshot, and a busy node must not put off
                    // the compaction it brings.
                    outcome = snapshot_done(&mut self.snapshot_task) => Woke::SnapshotWritten(outcome),
                    done = self.writer.next_done() => Woke::Persisted(done),
                    done = self.applier.next_done() => Woke::Applied(done),
                    read = self.reads.join_next(), if !self.reads.is_empty() => Woke::Read(read.and_then(Result::ok)),
                    received = self.transport.recv(&mut inbound, INBOUND_BATCH_MAX) => Woke::Inbound(received.is_ok()),
                    taken = self.requests.recv_many(&mut requests, REQUEST_QUEUE_MAX), if take_requests => Woke::Requests(taken > 0),
                    () = &mut timer => Woke::Timer,
                }
            };
            let (turn_started, woke_by) = (Instant::now(), woke.name());
            match woke {
                Woke::Requests(false) | Woke::Inbound(false) => break None,
                Woke::Requests(true) => {
                    if let Some(reply) = self.handle_requests(&mut requests) {
                        shutdown_reply = Some(reply);
                        break None;
                    }
                }
                Woke::Inbound(true) => {
                    let now = self.now_ms();
                    for m in inbound.drain(..) {
                        self.raft.step(now, Event::Message(m));
                    }
                }
                Woke::Timer => {
                    armed = false;
                    if !disk_stalled {
                        let now = self.now_ms();
                        self.raft.step(now, Event::Tick);
                    }
                }
                Woke::SnapshotWritten(outcome) => {
                    if let Err(e) = self.on_snapshot_written(outcome).await {
                        break Some(e);
                    }
                }
                Woke::Persisted(Ok(persisted)) => {
                    let event = self.release(&persisted);
                    let now = self.now_ms();
                    self.raft.step(now, event);
                }
                Woke::Persisted(Err(e)) => break Some(e),
                Woke::Applied(Ok(done)) => {
                    if let Err(e) = self.on_apply_done(done) {
                        break Some(e);
                    }
                }
                Woke::Applied(Err(e)) => break Some(e),
                Woke::Read(Some(done)) => {
                    if let Some(damage) = done.damaged {
                        self.note_own_damage(damage);
                    }
                    let now = self.now_ms();
                    self.raft.step(now, done.event);
                }
                // A read task cannot fail but by a panic: the read is not answered, and the
                // node stops like on any other bug.
                Woke::Read(None) => {
                    break Some(RaftError::Storage(crate::storage::StorageError::Io(
                        "a read from storage did not finish".into(),
                    )))
                }
            }
            match self.after_step().await {
                Ok(()) => {}
                // A write that waited for space, given up for the shutdown asked for.
                Err(RaftError::AlreadyShutdown)
                    if self.stopping.load(std::sync::atomic::Ordering::SeqCst) =>
                {
                    break None
                }
                Err(e) => break Some(e),
            }
            let took = turn_started.elapsed();
            if took > SLOW_TURN {
                tracing::warn!(
                    took_ms = u64::try_from(took.as_millis()).unwrap_or(u64::MAX),
                    woke_by,
                    "a turn of the event loop took long"
                );
            }
        };
        // No timer stays registered while the shutdown below awaits (a simulation's paused
        // clock would jump to its deadline).
        drop(timer);
        if let Some(e) = &fatal {
            tracing::error!(error = %e, "node stopped after a fatal error");
            let protocol = self.protocol_status();
            self.published.fail(e.to_string(), |status| {
                status.protocol = protocol;
                status.storage_full = false;
            });
        }
        let failed = fatal.is_some();
        let error = fatal.unwrap_or(RaftError::AlreadyShutdown);
        // Requests still queued never reached the protocol: they were not carried out.
        self.requests.close();
        while let Ok(request) = self.requests.try_recv() {
            refuse(request);
        }
        // Writes already queued finish (a graceful stop loses nothing it was told to keep);
        // what they release is sent. After a storage error there is nothing more to wait for,
        // nor while the disk is full (the write waits for space for as long as it takes: it
        // is given up, unacknowledged, when the writer closes).
        let disk_full = self.writer.disk_full();
        if !failed && !disk_full {
            let _ = self.drain_writes().await;
        }
        // Batches already queued are applied, so their callers get their answers (a view
        // asked for is dropped: no snapshot starts now).
        if !failed {
            while self.applier.busy() {
                match self.applier.next_done().await {
                    Ok(ApplyDone::View { .. }) => {}
                    Ok(done) => {
                        if self.on_apply_done(done).is_err() {
                            break;
                        }
                    }
                    Err(_) => break,
                }
            }
        }
        self.waiters.fail_all(&error);
        // The log write under way ends first: it runs only while polled, and the snapshot
        // task or the compaction may wait for a lock it holds in the store (found by the
        // outside review: a shutdown on a full disk waited for the snapshot task for good).
        self.writer.close().await;
        // A snapshot still being written finishes (storage sees no write cut short); its
        // outcome no longer matters.
        if let Some(mut task) = self.snapshot_task.take() {
            let _ = (&mut task.done).await;
        }
        let _ = self.wait_compaction().await;
        self.applier.close().await;
        self.transport.shutdown().await;
        if let Some(reply) = shutdown_reply {
            let _ = reply.send(());
        }
    }

    /// Carries out the readies, takes a snapshot if one is due, resolves waiters that depend
    /// on the node's role and publishes the status.
    async fn after_step(&mut self) -> Result<(), RaftError> {
        self.check_compaction()?;
        self.process_ready().await?;
        self.maybe_snapshot().await?;
        // Compaction may leave work (a follower now needs the snapshot).
        self.process_ready().await?;
        let now = self.now_ms();
        let mut node = None;
        // Publish first: a caller answered below sees a status at least as new as the answer.
        // Updated in place: what did not change is not cloned again.
        self.published.step(|published| {
            let status = &mut published.protocol;
            self.raft.refresh_status(status);
            status.applied_index = self.applied.index;
            (published.fatal, published.storage_full) = (None, false);
            node = Some(NodeView {
                id: status.id,
                now,
                role: status.role,
                leader: status.leader,
                transfer: status.leadership_transfer,
            });
        });
        if let Some(node) = node {
            self.waiters.on_step(node, self.config.rpc_timeout_ms);
        }
        Ok(())
    }

    /// Handles the batch of requests taken (emptying `requests`). Returns the reply of a
    /// shutdown request, which ends the batch: the requests after it are refused.
    fn handle_requests(&mut self, requests: &mut Vec<Request>) -> Option<oneshot::Sender<()>> {
        // One clock reading for the batch's proposals (a clock read per proposal showed in the
        // profile of a busy leader; a proposal's time only dates its forwarding deadline).
        let now = self.now_ms();
        let mut batch = requests.drain(..);
        while let Some(request) = batch.next() {
            match request {
                Request::Propose { command, reply } => self.propose(now, command, reply),
                // A read is judged against a fresh reading: a lease read must never be
                // checked against a time before it arrived.
                Request::Read { mode, reply } => {
                    let now = self.now_ms();
                    self.read(now, mode, reply)
                }
                Request::ChangeMembership { change, force, reply } => {
                    self.change_membership(&change, force, reply)
                }
                Request::TransferLeadership { to, reply } => self.transfer_leadership(to, reply),
                Request::Shutdown { reply } => {
                    batch.for_each(refuse);
                    return Some(reply);
                }
            }
        }
        None
    }

    fn propose(&mut self, now: Millis, command: Bytes, reply: Reply<Applied>) {
        self.next_proposal_id = self.next_proposal_id.wrapping_add(1);
        let id = self.next_proposal_id;
        self.waiters.add_proposal(id, reply);
        self.raft.step(now, Event::Propose { id, command, forward: self.config.auto_forward });
    }

    fn read(&mut self, now: Millis, mode: ReadMode, reply: Reply<Index>) {
        if self.waiters.pending_reads() >= self.config.max_pending_reads {
            let _ = reply.send(Err(ProposalRejection::Busy.into()));
            return;
        }
        self.next_read_id = self.next_read_id.wrapping_add(1);
        let id = self.next_read_id;
        self.waiters.add_read(id, reply);
        self.raft.step(now, Event::Read { id, mode });
    }

    fn change_membership(&mut self, change: &MembershipChange, force: bool, reply: Reply<Membership>) {
        let now = self.now_ms();
        match self.raft.propose_membership_change(now, change, force) {
            Ok(log_id) => {
                let joint = match self.raft.entry(log_id.index).map(|e| &e.payload) {
                    Some(EntryPayload::Membership(m)) => m.is_joint(),
                    _ => {
                        debug_assert!(false, "no configuration entry at {log_id}");
                        false
                    }
                };
                self.waiters.add_membership(log_id, joint, reply);
            }
            Err(e) => {
                let _ = reply.send(Err(e.into()));
            }
        }
    }

    fn transfer_leadership(&mut self, to: Option<NodeId>, reply: Reply<NodeId>) {
        let now = self.now_ms();
        match self.raft.transfer_leadership(now, to) {
            Ok(target) if target == self.raft.id() => {
                let _ = reply.send(Ok(target));
            }
            Ok(target) => {
                let wait_ms = TRANSFER_WAIT_ELECTIONS * self.config.election_timeout_max_ms;
                self.waiters.add_transfer(target, now + wait_ms, reply);
            }
            Err(e) => {
                let _ = reply.send(Err(e.into()));
            }
        }
    }

    fn send(&self, message: Message) {
        if let Err(e) = self.transport.send(message) {
            tracing::debug!(error = %e, "message not sent");
        }
    }

    /// Carries out every pending `Ready` in the order the protocol requires. Log and
    /// hard-state writes go to the log writer, and what must wait for them is held until they
    /// are durable; a ready with a received snapshot is carried out here, after every queued
    /// write.
    async fn process_ready(&mut self) -> Result<(), RaftError> {
        loop {
            // A full apply queue holds committed entries back in the protocol (the event loop
            // does not wait for the state machine); they are handed out once it has room.
            self.raft.hold_apply(self.applier.is_full());
            if !self.raft.has_ready() {
                break;
            }
            let mut ready = self.raft.take_ready();
            if ready.discard_staged_snapshot {
                self.discard_staged_snapshot().await?;
            }
            let parts = std::mem::take(&mut ready.snapshot_parts);
            let staging_failed = self.stage_snapshot_parts(parts, ready.snapshot.is_some()).await?;
            if staging_failed.is_some() {
                // Given up on a full disk: no part of this ready is acknowledged.
                let acknowledges_a_part = |m: &Message| {
                    matches!(m.payload, crate::Payload::InstallSnapshotResponse { done: false, .. })
                };
                ready.messages.retain(|m| !acknowledges_a_part(m));
                ready.persisted_messages.retain(|m| !acknowledges_a_part(m));
            }
            self.start_snapshot_reads(&ready.snapshot_reads);
            self.start_log_reads(&ready.log_reads);
            for m in std::mem::take(&mut ready.messages) {
                self.send(m);
            }
            // Completed writes met on the way, stepped after `advance`.
            let mut persisted = Vec::new();
            let in_background = ready.snapshot.is_none();
            if in_background {
                if ready.must_persist() {
                    while !self.writer.has_room() {
                        let done = self.writer.next_done().await?;
                        persisted.push(self.release(&done));
                    }
                    let entries = std::mem::take(&mut ready.entries);
                    let writes = ReadyWrites {
                        hard_state: ready.hard_state,
                        truncate_from: ready.truncate_from,
                        entries,
                        last: ready.persist_through,
                    };
                    let now = self.now_ms();
                    self.writer.queue(ready.seq, writes, now)?;
                }
                for m in self.writer.hold(std::mem::take(&mut ready.persisted_messages)) {
                    self.send(m);
                }
                // What the store completed at once is taken now: the messages it held leave in
                // this turn, not the next.
                while let Some(done) = self.writer.done_now().await {
                    persisted.push(self.release(&done?));
                }
            } else {
                // The received snapshot replaces the log: every queued write goes first.
                persisted = self.drain_writes().await?;
                // On a full disk each write waits for space: the protocol has moved on already.
                if let Some(hs) = ready.hard_state {
                    self.until_space(|storage| async move { storage.save_hard_state(hs).await }).await?;
                }
                if let Some(snapshot) = &ready.snapshot {
                    self.store_received_snapshot(snapshot).await?;
                }
                if let Some(from) = ready.truncate_from {
                    self.until_space(|storage| async move { storage.truncate(from).await }).await?;
                }
                if !ready.entries.is_empty() {
                    let entries = std::mem::take(&mut ready.entries);
                    self.until_space(|storage| {
                        let entries = entries.clone();
                        async move { storage.append(&entries).await }
                    })
                    .await?;
                }
                for m in std::mem::take(&mut ready.persisted_messages) {
                    self.send(m);
                }
            }
            // Placed proposals wait before this ready's entries are applied.
            let apply_deadline = self.now_ms() + PROPOSAL_APPLY_TIMEOUTS * self.config.rpc_timeout_ms;
            for outcome in ready.proposals {
                self.waiters.on_proposal_outcome(outcome, self.applied.index, apply_deadline);
            }
            if let Some(snapshot) = ready.snapshot {
                self.restore_received_snapshot(snapshot)?;
            }
            if !ready.committed.is_empty() {
                let committed = std::mem::take(&mut ready.committed);
                if let Some(done) = self.applier.apply_here_or_queue(committed).await? {
                    self.on_apply_done(done)?;
                }
            }
            let read_deadline = self.now_ms() + self.config.rpc_timeout_ms;
            for outcome in ready.reads {
                self.waiters.on_read_outcome(outcome, self.applied.index, read_deadline);
            }
            self.waiters.release_reads(self.applied.index);
            if in_background {
                self.raft.advance_unpersisted();
            } else {
                self.raft.advance();
            }
            let now = self.now_ms();
            for event in persisted.into_iter().chain(staging_failed) {
                self.raft.step(now, event);
            }
        }
        Ok(())
    }

    /// Takes in what the applier completed: answers the applied entries' callers and the reads
    /// that waited for them, starts writing a view out, or ends a restore.
    pub(super) fn on_apply_done(&mut self, done: ApplyDone) -> Result<(), RaftError> {
        match done {
            ApplyDone::Entries { entries, responses } => {
                // Published only while someone subscribes (asked once per batch: a send locks
                // the stream even with no receiver, and showed in the profile of a busy
                // leader). A subscriber that arrives during this batch starts with the next.
                let publish = self.committed.receiver_count() > 0;
                for (entry, response) in entries.iter().zip(responses) {
                    self.applied = entry.log_id();
                    self.applied_bytes_since_snapshot += entry.size_bytes() as u64;
                    if let (true, EntryPayload::Command(command)) = (publish, &entry.payload) {
                        let _ = self.committed.send(CommittedEntry {
                            index: entry.index,
                            term: entry.term,
                            command: command.clone(),
                        });
                    }
                    self.waiters.on_applied(entry, response);
                }
                self.waiters.release_reads(self.applied.index);
                Ok(())
            }
            ApplyDone::View { last, source } => self.write_view_out(last, source),
            ApplyDone::Restored { meta } => {
                self.raft.hold_snapshot_install(false);
                self.applied = meta.last_log_id;
                self.applied_bytes_since_snapshot = 0;
                self.waiters.on_snapshot_installed(meta.last_log_id, &meta.membership);
                tracing::debug!(snapshot = %meta.last_log_id, "state machine restored from the received snapshot");
                Ok(())
            }
        }
    }

    /// Records a completed write: sends the messages it releases, and returns the event that
    /// tells the protocol.
    fn release(&mut self, persisted: &Persisted) -> Event {
        for m in self.writer.complete(persisted) {
            self.send(m);
        }
        Event::Persisted { last: persisted.last, seq: persisted.seq }
    }

    /// Waits for every queued write; returns the events to step (after `advance` when called
    /// while a ready is carried out).
    pub(super) async fn drain_writes(&mut self) -> Result<Vec<Event>, RaftError> {
        let mut events = Vec::new();
        while self.writer.busy() {
            let done = self.writer.next_done().await?;
            events.push(self.release(&done));
        }
        Ok(events)
    }

    /// Starts reading the log entries before the protocol's cache that it needs (for a
    /// follower, or to apply them; a message's worth each) beside the event loop: a slow read
    /// holds no heartbeat. Each answers with `Event::LogEntries`; entries that cannot be read
    /// are answered `None` (the protocol then sends the snapshot, or tries again later).
    fn start_log_reads(&mut self, reads: &[crate::protocol::LogRead]) {
        for r in reads.iter().cloned() {
            let storage = self.storage.clone();
            self.reads.spawn(async move {
                let (entries, damaged) = match storage.entries(r.from, r.last.saturating_add(1)).await {
                    Ok(entries) => (Some(entries), None),
                    Err(e) => {
                        tracing::debug!(error = %e, from = r.from, last = r.last, to = r.to, "reading log entries");
                        (None, e.is_damage().then_some(OwnDamage::Entries { from: r.from }))
                    }
                };
                ReadDone { event: Event::LogEntries { to: r.to, from: r.from, entries }, damaged }
            });
        }
    }

    /// Starts reading the parts of this node's snapshot the protocol asked for, beside the
    /// event loop (a slow disk must not hold heartbeats back). A part that cannot be read is
    /// answered `None` (the protocol then sends its current snapshot): a damaged snapshot file
    /// must not stop a leader that can still replicate its log.
    fn start_snapshot_reads(&mut self, reads: &[crate::protocol::SnapshotRead]) {
        for r in reads.iter().cloned() {
            let storage = self.storage.clone();
            self.reads.spawn(async move {
                let (data, damaged) = match storage.read_snapshot_chunk(r.snapshot, r.offset, r.max).await {
                    Ok(data) => (data, None),
                    Err(e) => {
                        tracing::error!(error = %e, snapshot = %r.snapshot, offset = r.offset, "reading the snapshot to send");
                        (None, e.is_damage().then_some(OwnDamage::Snapshot(r.snapshot)))
                    }
                };
                ReadDone { event: Event::SnapshotChunk { to: r.to, snapshot: r.snapshot, offset: r.offset, data }, damaged }
            });
        }
    }
}
