//! The applier: a task of its own that owns the state machine and carries out, in the order
//! they were queued, the driver's apply batches, snapshot views and restores from a received
//! snapshot. The driver task keeps stepping the protocol (heartbeats, messages, reads) while a
//! large batch is applied or a snapshot of gigabytes is restored.
//!
//! Order is the contract: a view is taken after every batch queued before it (so it covers
//! exactly the entries applied so far), and a restore replaces the state after them; batches
//! queued after a restore apply on the restored state.
//!
//! On a multi-threaded runtime the applier runs on a thread of its own (tokio's blocking pool),
//! so a state machine that computes without awaiting never delays the driver task.
//!
//! A state machine that applies small batches in microseconds may ask for them on the driver
//! task ([`Fsm::inline_apply_bytes`]): a batch within that size is applied there when the
//! applier has nothing queued or under way, so order holds, and the batch saves the two
//! hand-offs between threads (to the applier and back) that dominate a small write's latency.
//! The state machine and the last entry it holds are shared by both under one lock
//! ([`Machine`]), which the applier holds only while it carries a job out.
//!
//! Bounds: at most [`APPLY_BATCHES_MAX`] batches or [`APPLY_BYTES_MAX`] bytes of entries are
//! queued or under way; past either, the driver holds committed entries back in the protocol
//! ([`Raft::hold_apply`](crate::Raft::hold_apply)) instead of waiting, so a slow state machine
//! never stops the event loop. On top of the batches, at most one view and one restore are
//! queued (the driver asks for a view only when none is pending, and waits for a restore
//! before it stores the next received snapshot).

use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::{mpsc, Mutex};

use super::RaftError;
use crate::fsm::{Fsm, FsmError, SnapshotReader, SnapshotSource};
use crate::storage::SnapshotMeta;
use crate::types::{Entry, LogId};

/// Most apply batches queued or under way.
pub(super) const APPLY_BATCHES_MAX: usize = 64;
/// Most bytes ([`Entry::size_bytes`]) of entries queued or under way (one batch may pass it:
/// a batch is at most 16 AppendEntries' worth). Enough to keep a state machine busy between
/// two turns of the driver; a node catching up holds the rest in the log's cache or reads it
/// back, so a larger queue would only add to its peak memory (a restored follower's queue
/// used to fill while the restore ran, 64 MiB on top of the cache).
pub(super) const APPLY_BYTES_MAX: usize = 16 << 20;

/// Work for the applier.
enum Job {
    Apply(Vec<Entry>),
    View,
    Restore { meta: SnapshotMeta, reader: Box<dyn SnapshotReader> },
}

/// Work the applier completed, in the order it was queued.
pub(super) enum ApplyDone {
    /// A batch was applied: the entries and one response each.
    Entries { entries: Vec<Entry>, responses: Vec<Bytes> },
    /// A view of the state covering every entry up to `last` (see [`Fsm::snapshot`]).
    View { last: LogId, source: Box<dyn SnapshotSource> },
    /// The state was replaced by the snapshot of `meta`.
    Restored { meta: SnapshotMeta },
}

/// The state machine and the last entry its state covers: moved by the applier, and by the
/// driver task for a batch it applies itself.
struct Machine {
    fsm: Box<dyn Fsm>,
    applied: LogId,
}

/// The driver's end of the applier.
pub(super) struct Applier {
    jobs: mpsc::Sender<Job>,
    done: mpsc::Receiver<Result<ApplyDone, RaftError>>,
    /// Batches queued or under way, and their bytes.
    batches: usize,
    bytes: usize,
    /// A view was asked for and has not been handed back.
    view_pending: bool,
    /// A restore is queued or under way.
    restoring: bool,
    task: tokio::task::JoinHandle<()>,
    /// The state machine, shared with the applier task.
    machine: Arc<Mutex<Machine>>,
    /// The largest batch applied on the driver task ([`Fsm::inline_apply_bytes`]).
    inline_bytes: usize,
}

/// The error when the applier task is gone (it stopped after a failure, or was aborted).
fn stopped() -> RaftError {
    RaftError::Fsm(FsmError::Failed("the applier stopped".into()))
}

impl Applier {
    /// Starts the applier task on `fsm`, whose state covers the entries up to `applied`;
    /// `register` gets its abort handle (a crash ends it with the driver).
    pub(super) fn start(
        fsm: Box<dyn Fsm>,
        applied: LogId,
        register: impl FnOnce(tokio::task::AbortHandle),
    ) -> Self {
        // The batches, one view and one restore.
        let capacity = APPLY_BATCHES_MAX + 2;
        let (jobs, rx) = mpsc::channel(capacity);
        let (done_tx, done) = mpsc::channel(capacity);
        let inline_bytes = fsm.inline_apply_bytes();
        let machine = Arc::new(Mutex::new(Machine { fsm, applied }));
        let work = apply_loop(machine.clone(), rx, done_tx);
        let runtime = tokio::runtime::Handle::current();
        let task = if runtime.runtime_flavor() == tokio::runtime::RuntimeFlavor::CurrentThread {
            // One thread runs everything (a simulation, a test): a task, which yields between
            // jobs so that the driver gets its turns.
            tokio::spawn(work)
        } else {
            // A thread of its own: a state machine that computes (no await) for long never
            // holds a runtime worker, and so never the driver task, which tokio may have
            // queued on that worker when the applier woke it.
            tokio::task::spawn_blocking(move || runtime.block_on(work))
        };
        register(task.abort_handle());
        Self {
            jobs,
            done,
            batches: 0,
            bytes: 0,
            view_pending: false,
            restoring: false,
            task,
            machine,
            inline_bytes,
        }
    }

    /// Whether the batches queued reach a bound: committed entries are then held back.
    pub(super) fn is_full(&self) -> bool {
        self.batches >= APPLY_BATCHES_MAX || self.bytes >= APPLY_BYTES_MAX
    }

    /// Whether any work is queued or under way.
    pub(super) fn busy(&self) -> bool {
        self.batches > 0 || self.view_pending || self.restoring
    }

    /// Whether a restore is queued or under way.
    pub(super) fn restoring(&self) -> bool {
        self.restoring
    }

    /// Whether a view was asked for and not yet handed back.
    pub(super) fn view_pending(&self) -> bool {
        self.view_pending
    }

    fn send(&mut self, job: Job) -> Result<(), RaftError> {
        match self.jobs.try_send(job) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(_)) => {
                Err(RaftError::Fsm(FsmError::Failed("the applier's queue is full (a bug)".into())))
            }
            // It stopped on a failure: that failure (a panic's message) is the reason.
            Err(mpsc::error::TrySendError::Closed(_)) => {
                while let Ok(done) = self.done.try_recv() {
                    done?;
                }
                Err(stopped())
            }
        }
    }

    /// Queues a batch of committed entries (the caller keeps within the bounds, see
    /// [`is_full`](Self::is_full): one batch may overshoot the byte bound).
    fn apply(&mut self, entries: Vec<Entry>) -> Result<(), RaftError> {
        let bytes: usize = entries.iter().map(Entry::size_bytes).sum();
        self.send(Job::Apply(entries))?;
        self.batches += 1;
        self.bytes += bytes;
        Ok(())
    }

    /// Applies `entries` on the caller's task and returns what was done, when the applier has
    /// nothing queued or under way and the batch is within [`Fsm::inline_apply_bytes`];
    /// otherwise queues them (see [`apply`](Self::apply)) and returns `None`. An error is
    /// fatal, as the applier's are.
    pub(super) async fn apply_here_or_queue(
        &mut self,
        entries: Vec<Entry>,
    ) -> Result<Option<ApplyDone>, RaftError> {
        if self.inline_bytes > 0 && !self.busy() {
            let bytes: usize = entries.iter().map(Entry::size_bytes).sum();
            if bytes <= self.inline_bytes {
                // Free: the applier lets go before it hands a job back, and nothing is queued.
                // (Queued otherwise, as a second guard of the order.)
                if let Ok(mut machine) = self.machine.try_lock() {
                    return carry_out_caught(&mut machine, Job::Apply(entries)).await.map(Some);
                }
            }
        }
        self.apply(entries)?;
        Ok(None)
    }

    /// Asks for a view of the state once the batches queued so far are applied.
    pub(super) fn request_view(&mut self) -> Result<(), RaftError> {
        debug_assert!(!self.view_pending, "one view at a time");
        self.send(Job::View)?;
        self.view_pending = true;
        Ok(())
    }

    /// Queues a restore from `reader` (the snapshot of `meta`), after the batches queued so
    /// far. The snapshot's bytes must stay readable until it is [`Restored`](ApplyDone::Restored).
    pub(super) fn restore(
        &mut self,
        meta: SnapshotMeta,
        reader: Box<dyn SnapshotReader>,
    ) -> Result<(), RaftError> {
        debug_assert!(!self.restoring, "one restore at a time");
        self.send(Job::Restore { meta, reader })?;
        self.restoring = true;
        Ok(())
    }

    /// The next completed piece of work (pending forever when none is queued: for a
    /// `select!` branch). An error is fatal: the task has stopped.
    pub(super) async fn next_done(&mut self) -> Result<ApplyDone, RaftError> {
        if !self.busy() {
            return std::future::pending().await;
        }
        let done = self.done.recv().await.unwrap_or_else(|| Err(stopped()))?;
        match &done {
            ApplyDone::Entries { entries, .. } => {
                let bytes: usize = entries.iter().map(Entry::size_bytes).sum();
                self.batches = self.batches.saturating_sub(1);
                self.bytes = self.bytes.saturating_sub(bytes);
            }
            ApplyDone::View { .. } => self.view_pending = false,
            ApplyDone::Restored { .. } => self.restoring = false,
        }
        Ok(done)
    }

    /// Ends the task once it has carried out what is queued, and waits for it.
    pub(super) async fn close(self) {
        let Self { jobs, done, task, .. } = self;
        drop(jobs);
        drop(done);
        let _ = task.await;
    }
}

/// The applier task: carries the jobs out in order; stops at the first failure (the node
/// stops: applying is deterministic, so a failure here would recur on every node).
async fn apply_loop(
    machine: Arc<Mutex<Machine>>,
    mut jobs: mpsc::Receiver<Job>,
    done: mpsc::Sender<Result<ApplyDone, RaftError>>,
) {
    while let Some(job) = jobs.recv().await {
        // Let go before handing the outcome back: the driver may then apply on its own task.
        let outcome = carry_out_caught(&mut *machine.lock().await, job).await;
        let failed = outcome.is_err();
        if done.send(outcome).await.is_err() || failed {
            return;
        }
        tokio::task::yield_now().await;
    }
}

/// Carries one job out on `machine`; a panic in the state machine (a bug) stops the node like
/// a failure, saying why.
async fn carry_out_caught(machine: &mut Machine, job: Job) -> Result<ApplyDone, RaftError> {
    let Machine { fsm, applied } = machine;
    let work = std::panic::AssertUnwindSafe(carry_out(fsm.as_mut(), applied, job));
    futures_util::FutureExt::catch_unwind(work).await.unwrap_or_else(|panic| {
        let what = super::panic_message(panic.as_ref());
        Err(FsmError::Failed(format!("the state machine panicked: {what}")).into())
    })
}

/// Carries one job out on `fsm`, whose state covers the entries up to `applied`.
async fn carry_out(fsm: &mut dyn Fsm, applied: &mut LogId, job: Job) -> Result<ApplyDone, RaftError> {
    match job {
        Job::Apply(entries) => match fsm.apply(&entries).await {
            Ok(responses) if responses.len() == entries.len() => {
                if let Some(last) = entries.last() {
                    *applied = last.log_id();
                }
                Ok(ApplyDone::Entries { entries, responses })
            }
            Ok(responses) => Err(FsmError::Failed(format!(
                "apply returned {} responses for {} entries",
                responses.len(),
                entries.len()
            ))
            .into()),
            Err(e) => Err(e.into()),
        },
        Job::View => {
            let source = fsm.snapshot().await?;
            Ok(ApplyDone::View { last: *applied, source })
        }
        Job::Restore { meta, mut reader } => match fsm.restore(reader.as_mut()).await {
            Ok(()) => {
                *applied = meta.last_log_id;
                Ok(ApplyDone::Restored { meta })
            }
            Err(e) => Err(e.into()),
        },
    }
}
