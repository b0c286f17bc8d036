//! The log writer: carries out the readies' storage writes (hard state, truncation, appended
//! entries) in the order the readies were taken, one storage call at a time, beside the
//! driver's event loop: the driver polls the call under way in its `select!` (its IO runs on
//! the store's own thread, or wherever the `Storage` puts it), so it keeps sending heartbeats
//! and handling messages while a write and its sync are in flight, and the store's answer
//! wakes the driver itself (no task in between: two thread hand-offs fewer per write). The
//! driver also polls a call once in the turn that queued it ([`LogWriter::done_now`]): a store
//! that completes at once (in memory) is done within that turn. Writes queued while one is
//! under way are merged into the next storage call (one sync for all of them: group commit).
//!
//! A full disk does not stop the node: the write waits and is tried again until space returns
//! (the driver refuses new proposals meanwhile; see `RaftNode::propose`).
//!
//! Bounds: at most [`WRITES_IN_FLIGHT_MAX`] readies' writes are queued or under way (the
//! driver waits for the oldest before queueing another), and one storage call carries at
//! most [`MERGED_BYTES_MAX`] bytes of entries (past it, writes are not merged).

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::RaftError;
use crate::message::Message;
use crate::storage::{Storage, StorageError};
use crate::types::{Entry, HardState, Index, LogId};

/// Most readies whose writes are queued or under way.
pub(super) const WRITES_IN_FLIGHT_MAX: usize = 64;
/// Most bytes of entries one merged storage call carries.
const MERGED_BYTES_MAX: usize = 16 << 20;
/// Most messages held for writes; past it, further ones are dropped (Raft retransmits what
/// is lost), so a stalled disk cannot make the driver hold an answer per heartbeat for good.
const HELD_MESSAGES_MAX: usize = 16_384;

/// The writes of one ready (or of several, merged).
#[derive(Debug)]
struct Write {
    /// The sequence number of the (latest) ready.
    seq: u64,
    hard_state: Option<HardState>,
    truncate_from: Option<Index>,
    entries: Vec<Entry>,
    /// The log's last entry when the (latest) ready was taken.
    last: LogId,
}

impl Write {
    fn bytes(&self) -> usize {
        self.entries.iter().map(Entry::size_bytes).sum()
    }

    /// Takes `next` into this write when one storage call can carry both in order: `next`
    /// truncates nothing and its entries follow these. Otherwise gives it back.
    fn absorb(&mut self, mut next: Write, bytes: &mut usize) -> Result<(), Write> {
        let follows = match (self.entries.last(), next.entries.first()) {
            (Some(a), Some(b)) => b.index == a.index + 1,
            _ => true,
        };
        let next_bytes = next.bytes();
        if next.truncate_from.is_some() || !follows || *bytes + next_bytes > MERGED_BYTES_MAX {
            return Err(next);
        }
        *bytes += next_bytes;
        self.seq = next.seq;
        self.hard_state = next.hard_state.or(self.hard_state);
        self.entries.append(&mut next.entries);
        self.last = next.last;
        Ok(())
    }

    /// Carries the write out: hard state, truncation, entries, each durable before the next.
    async fn carry_out(&self, storage: &dyn Storage) -> Result<(), RaftError> {
        if let Some(hs) = self.hard_state {
            storage.save_hard_state(hs).await?;
        }
        if let Some(from) = self.truncate_from {
            storage.truncate(from).await?;
        }
        if !self.entries.is_empty() {
            storage.append(&self.entries).await?;
        }
        Ok(())
    }
}

/// What one ready asks to be written.
pub(super) struct ReadyWrites {
    pub(super) hard_state: Option<HardState>,
    pub(super) truncate_from: Option<Index>,
    pub(super) entries: Vec<Entry>,
    /// The ready's `persist_through`.
    pub(super) last: LogId,
}

/// A completed write: every ready up to number `seq` is durable; `last` is that ready's
/// `persist_through`.
#[derive(Debug)]
pub(super) struct Persisted {
    pub(super) seq: u64,
    pub(super) last: LogId,
}

/// A storage call under way.
type Call = Pin<Box<dyn Future<Output = Result<Persisted, RaftError>> + Send>>;

/// The log writer (see the module docs).
pub(super) struct LogWriter {
    storage: Arc<dyn Storage>,
    /// Writes queued behind the call under way, oldest first; merged when the next starts.
    waiting: VecDeque<Write>,
    /// The storage call under way (in a mutex only to be `Sync`, as the driver must be: it
    /// is reached through `&mut` alone, never locked).
    call: Option<std::sync::Mutex<Call>>,
    /// The number of the latest ready queued.
    queued: u64,
    /// Every ready up to this number is durable.
    durable: u64,
    /// Messages that wait for a ready's writes (and every earlier one's): `(seq, message)`.
    held: VecDeque<(u64, Message)>,
    /// The writes queued and not yet durable, oldest first: `(ready number, when queued in ms
    /// of the driver's clock)`.
    pending: VecDeque<(u64, u64)>,
    /// Messages dropped because `HELD_MESSAGES_MAX` were held.
    dropped: u64,
    /// The writes waiting for space on a full disk (see `carry_out_waiting_for_space`).
    full: Arc<SpaceWaits>,
    /// Set once the node closes: a write waiting for space gives up.
    closing: Arc<std::sync::atomic::AtomicBool>,
}

impl LogWriter {
    /// A writer on `storage`, with nothing queued.
    pub(super) fn new(storage: Arc<dyn Storage>) -> Self {
        let full = Arc::new(SpaceWaits::new(storage.clone()));
        Self {
            storage,
            waiting: VecDeque::new(),
            call: None,
            queued: 0,
            durable: 0,
            held: VecDeque::new(),
            pending: VecDeque::new(),
            dropped: 0,
            full,
            closing: Arc::default(),
        }
    }

    /// The writes waiting for space on a full disk.
    pub(super) fn full_flag(&self) -> Arc<SpaceWaits> {
        self.full.clone()
    }

    /// Whether a write waits for space on a full disk now.
    pub(super) fn disk_full(&self) -> bool {
        self.full.any()
    }

    /// Carries out what is queued (up to a failure; a write waiting for space gives up).
    pub(super) async fn close(&mut self) {
        self.closing.store(true, Ordering::SeqCst);
        while self.call.is_some() {
            if self.next_done().await.is_err() {
                break;
            }
        }
    }

    /// Whether writes are queued or under way.
    pub(super) fn busy(&self) -> bool {
        !self.pending.is_empty()
    }

    /// How long (ms of the driver's clock, given `now_ms`) the oldest write not yet durable has
    /// been waiting; 0 when none is.
    pub(super) fn oldest_wait_ms(&self, now_ms: u64) -> u64 {
        self.pending.front().map_or(0, |(_, at)| now_ms.saturating_sub(*at))
    }

    /// Whether another ready's writes may be queued now.
    pub(super) fn has_room(&self) -> bool {
        self.pending.len() < WRITES_IN_FLIGHT_MAX
    }

    /// Queues the writes of ready number `seq` (the caller made sure there is room).
    pub(super) fn queue(&mut self, seq: u64, write: ReadyWrites, now_ms: u64) -> Result<(), RaftError> {
        debug_assert!(self.has_room() && seq > self.queued);
        self.queued = seq;
        self.pending.push_back((seq, now_ms));
        let ReadyWrites { hard_state, truncate_from, entries, last } = write;
        self.waiting.push_back(Write { seq, hard_state, truncate_from, entries, last });
        if self.call.is_none() {
            self.start_next();
        }
        Ok(())
    }

    /// Starts the next storage call: the oldest waiting write, with what follows it merged in.
    /// Like any future, it runs once polled ([`next_done`](Self::next_done)).
    fn start_next(&mut self) {
        let Some(mut write) = self.waiting.pop_front() else { return };
        let mut bytes = write.bytes();
        while let Some(next) = self.waiting.pop_front() {
            if let Err(next) = write.absorb(next, &mut bytes) {
                self.waiting.push_front(next);
                break;
            }
        }
        let (storage, full, closing) = (self.storage.clone(), self.full.clone(), self.closing.clone());
        let call: Call = Box::pin(async move {
            carry_out_waiting_for_space(&write, storage.as_ref(), &full, &closing).await?;
            Ok(Persisted { seq: write.seq, last: write.last })
        });
        self.call = Some(std::sync::Mutex::new(call));
    }

    /// Holds `messages` until every ready queued so far is durable; returns them at once when
    /// none is waiting.
    pub(super) fn hold(&mut self, messages: Vec<Message>) -> Vec<Message> {
        if !self.busy() {
            return messages;
        }
        let seq = self.queued;
        for m in messages {
            if self.held.len() < HELD_MESSAGES_MAX {
                self.held.push_back((seq, m));
            } else {
                self.dropped += 1;
                if self.dropped.is_power_of_two() {
                    tracing::warn!(dropped = self.dropped, "messages dropped while waiting for a slow disk");
                }
            }
        }
        Vec::new()
    }

    /// The next completed write (pending forever when none is under way: for a `select!`
    /// branch, and beside [`done_now`](Self::done_now) in the turn that queues a write;
    /// cancel-safe: the call stays under way when this future is dropped). After a success the
    /// next call starts; an error is fatal.
    pub(super) async fn next_done(&mut self) -> Result<Persisted, RaftError> {
        let Some(call) = self.call.as_mut() else {
            return std::future::pending().await;
        };
        let outcome = call.get_mut().unwrap_or_else(std::sync::PoisonError::into_inner).await;
        self.call = None;
        if outcome.is_ok() {
            self.start_next();
        }
        outcome
    }

    /// The call under way if it is complete when polled now (a store that writes in memory
    /// completes on its first poll): taken in the same turn of the driver as its queueing, its
    /// held messages leave a turn earlier. `None` when it is still under way (it stays so, and
    /// this task is woken when it completes) or none is. After a success the next call starts.
    pub(super) async fn done_now(&mut self) -> Option<Result<Persisted, RaftError>> {
        let call = self.call.as_mut()?.get_mut().unwrap_or_else(std::sync::PoisonError::into_inner);
        let outcome = std::future::poll_fn(|cx| std::task::Poll::Ready(call.as_mut().poll(cx))).await;
        let std::task::Poll::Ready(outcome) = outcome else { return None };
        self.call = None;
        if outcome.is_ok() {
            self.start_next();
        }
        Some(outcome)
    }

    /// Records a completed write; returns the messages it releases.
    pub(super) fn complete(&mut self, persisted: &Persisted) -> Vec<Message> {
        self.durable = self.durable.max(persisted.seq);
        while self.pending.front().is_some_and(|(seq, _)| *seq <= self.durable) {
            self.pending.pop_front();
        }
        let mut released = Vec::new();
        while self.held.front().is_some_and(|(seq, _)| *seq <= self.durable) {
            if let Some((_, m)) = self.held.pop_front() {
                released.push(m);
            }
        }
        released
    }
}

/// The writes waiting for space on a full disk (the log writer's and a received snapshot's
/// install): the node reports a full disk while any waits, or while storage runs on its
/// released headroom ([`Storage::headroom_in_use`]). Each waiter counts itself once, so one
/// that is done cannot clear another's wait.
pub(super) struct SpaceWaits {
    waits: AtomicUsize,
    storage: Arc<dyn Storage>,
}

impl std::fmt::Debug for SpaceWaits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SpaceWaits").field("waits", &self.waits).finish_non_exhaustive()
    }
}

impl SpaceWaits {
    pub(super) fn new(storage: Arc<dyn Storage>) -> Self {
        Self { waits: AtomicUsize::new(0), storage }
    }

    /// Whether a write waits for space now, or storage runs on its released headroom.
    pub(super) fn any(&self) -> bool {
        self.waits.load(Ordering::SeqCst) > 0 || self.storage.headroom_in_use()
    }

    /// A write starts waiting.
    pub(super) fn begin(&self) {
        self.waits.fetch_add(1, Ordering::SeqCst);
    }

    /// A write stops waiting (it succeeded, failed otherwise or was given up).
    pub(super) fn end(&self) {
        let _ = self.waits.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
    }
}

/// The first wait before a write that failed on a full disk is tried again.
pub(super) const FULL_RETRY_FIRST: Duration = Duration::from_millis(50);
/// The longest wait between tries.
pub(super) const FULL_RETRY_MAX: Duration = Duration::from_secs(1);

/// Carries `write` out; on a full disk, tries again at once if storage could free its
/// headroom, else with growing waits (`full` set meanwhile) until space returns or the node
/// closes (`closing`; a driver that is gone drops the call). A failed write left nothing
/// visible (the `Storage` contract) and each of its steps is idempotent, so trying it again
/// is safe.
async fn carry_out_waiting_for_space(
    write: &Write,
    storage: &dyn Storage,
    full: &SpaceWaits,
    closing: &std::sync::atomic::AtomicBool,
) -> Result<(), RaftError> {
    // Counted until this call ends, however it ends (a dropped call included).
    struct Waiting<'a>(Option<&'a SpaceWaits>);
    impl Drop for Waiting<'_> {
        fn drop(&mut self) {
            if let Some(full) = self.0 {
                full.end();
            }
        }
    }
    let mut wait = FULL_RETRY_FIRST;
    let mut waiting = Waiting(None);
    loop {
        match write.carry_out(storage).await {
            Err(RaftError::Storage(StorageError::Full)) if !closing.load(Ordering::SeqCst) => {
                if storage.release_headroom() {
                    continue;
                }
                if waiting.0.is_none() {
                    full.begin();
                    waiting.0 = Some(full);
                    tracing::warn!("the disk is full: writes wait for space (new proposals are refused)");
                }
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(FULL_RETRY_MAX);
            }
            outcome => {
                if waiting.0.is_some() && outcome.is_ok() {
                    tracing::info!("space returned: writes go on");
                }
                return outcome;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::EntryPayload;

    fn entry(index: Index) -> Entry {
        Entry { index, term: 1, payload: EntryPayload::Command(bytes::Bytes::from_static(b"x")) }
    }

    fn write(seq: u64, truncate_from: Option<Index>, indexes: std::ops::RangeInclusive<Index>) -> Write {
        let entries: Vec<Entry> = indexes.map(entry).collect();
        let last = entries.last().map_or(LogId::default(), Entry::log_id);
        Write { seq, hard_state: None, truncate_from, entries, last }
    }

    #[test]
    fn following_writes_merge_and_the_latest_hard_state_wins() {
        let mut a = write(1, None, 1..=3);
        a.hard_state = Some(HardState { current_term: 1, voted_for: Some(1) });
        let mut b = write(2, None, 4..=5);
        b.hard_state = Some(HardState { current_term: 2, voted_for: None });
        let mut bytes = a.bytes();
        assert!(a.absorb(b, &mut bytes).is_ok());
        assert_eq!(a.seq, 2);
        assert_eq!(a.entries.iter().map(|e| e.index).collect::<Vec<_>>(), vec![1, 2, 3, 4, 5]);
        assert_eq!(a.hard_state.map(|h| h.current_term), Some(2));
        assert_eq!(a.last.index, 5);
    }

    #[test]
    fn a_truncation_or_a_gap_is_not_merged() {
        let mut a = write(1, None, 1..=3);
        let mut bytes = a.bytes();
        let back = a.absorb(write(2, Some(3), 3..=4), &mut bytes).unwrap_err();
        assert_eq!(back.seq, 2);
        let back = a.absorb(write(3, None, 5..=6), &mut bytes).unwrap_err();
        assert_eq!(back.seq, 3);
        assert_eq!(a.seq, 1);
        assert_eq!(a.entries.len(), 3);
    }
}
