//! [`KvStore`], the read side that the HTTP layer queries, and [`KvFsm`], the write side that
//! the Raft driver applies committed entries to: two handles on one state.

use std::collections::VecDeque;
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use async_trait::async_trait;
use bytes::Bytes;
use raft_core::{Entry, Fsm, FsmError, Index, SnapshotReader, SnapshotSource};
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, watch};

use crate::command::KeyValue;
use crate::error::{KvError, WatchError};
use crate::service::{MemberAddress, Service};
use crate::state::{Limits, State};
use crate::watch::{ChangeEvent, History, Notice, Watcher};

/// Largest accepted `watch_channel_capacity`.
pub const MAX_WATCH_CHANNEL_CAPACITY: usize = 1 << 20;
/// Largest accepted `watch_history`.
pub const MAX_WATCH_HISTORY: usize = 1 << 24;

/// Limits of a store. `max_sessions`, `max_session_bytes`, `max_keys`, `max_services` and
/// `max_state_bytes` change what applying a command does, so they **must be equal on every replica** (and a snapshot holding more than a
/// node's limit cannot be restored there); the others are local.
///
/// Deserializable from a config file; missing fields take their defaults.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KvOptions {
    /// Most client sessions kept; a new client evicts the least recently used (by log index).
    /// Memory: up to this many cached responses (each at most about one value).
    pub max_sessions: usize,
    /// Most keys; a `Put` of a new key beyond it is answered `Rejected`.
    pub max_keys: usize,
    /// Most services; registering a new one beyond it is answered `Rejected`.
    pub max_services: usize,
    /// Recent change events retained for watchers that start from an index (0 keeps none).
    pub watch_history: usize,
    /// Live events a watcher may fall behind by before it fails with `Lagged` (1 to
    /// [`MAX_WATCH_CHANNEL_CAPACITY`]).
    pub watch_channel_capacity: usize,
    /// Most pairs one list call returns (at least 1).
    pub max_list: usize,
    /// The quota of the key-value state, in bytes of keys and values (etcd's default, 2 GiB).
    /// A write that would grow the state past it is answered
    /// [`NoSpace`](crate::Response::NoSpace) and raises the alarm, under which no write may
    /// grow the state until it is below 90 % of the quota; deletes and writes that do not grow
    /// it are applied.
    pub max_state_bytes: u64,
    /// Most bytes of cached responses the client sessions keep (a cached response may hold a
    /// whole value: the pair a write replaced, or the current one of a failed swap); least
    /// recently used sessions are evicted past it. Applied like `max_sessions`.
    pub max_session_bytes: u64,
}

/// The default quota of the key-value state: 2 GiB, as etcd's.
pub const DEFAULT_MAX_STATE_BYTES: u64 = 2 << 30;
/// The default bound of the sessions' cached responses: 64 MiB.
pub const DEFAULT_MAX_SESSION_BYTES: u64 = 64 << 20;

impl Default for KvOptions {
    fn default() -> Self {
        Self {
            max_sessions: 10_000,
            max_keys: 1_000_000,
            max_services: 10_000,
            watch_history: 10_000,
            watch_channel_capacity: 1_024,
            max_list: 1_000,
            max_state_bytes: DEFAULT_MAX_STATE_BYTES,
            max_session_bytes: DEFAULT_MAX_SESSION_BYTES,
        }
    }
}

impl KvOptions {
    /// Checks the bounds documented on the fields.
    pub fn validate(&self) -> Result<(), KvError> {
        let bad = |m: &str| Err(KvError::Options(m.to_owned()));
        if self.max_sessions == 0 || self.max_keys == 0 || self.max_services == 0 || self.max_list == 0 {
            return bad("max_sessions, max_keys, max_services and max_list must be at least 1");
        }
        if self.max_state_bytes == 0 || self.max_session_bytes == 0 {
            return bad("max_state_bytes and max_session_bytes must be at least 1");
        }
        if self.watch_channel_capacity == 0 || self.watch_channel_capacity > MAX_WATCH_CHANNEL_CAPACITY {
            return bad("watch_channel_capacity must be between 1 and MAX_WATCH_CHANNEL_CAPACITY");
        }
        if self.watch_history > MAX_WATCH_HISTORY {
            return bad("watch_history must be at most MAX_WATCH_HISTORY");
        }
        Ok(())
    }

    fn limits(&self) -> Limits {
        Limits {
            max_sessions: self.max_sessions,
            max_keys: self.max_keys,
            max_services: self.max_services,
            max_state_bytes: self.max_state_bytes,
            max_session_bytes: self.max_session_bytes,
        }
    }
}

/// A page of [`KvStore::list_page`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ListPage {
    /// The applied index the page was read at.
    pub applied_index: Index,
    /// The pairs, in key order.
    pub items: Vec<KeyValue>,
    /// When more pairs match: the `start_after` of the next page.
    pub next_start_after: Option<String>,
}

/// Numbers about a store, for the status endpoint and metrics.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KvStats {
    /// The last applied log index.
    pub applied_index: Index,
    /// [`KvStore::state_hash`].
    pub state_hash: u64,
    /// Keys held.
    pub keys: usize,
    /// The state's size: the sum of the byte lengths of every key and value.
    pub state_bytes: u64,
    /// Services registered.
    pub services: usize,
    /// Entries in the member address book.
    pub member_addresses: usize,
    /// Client sessions held.
    pub sessions: usize,
    /// Change events retained for watchers.
    pub watch_history_len: usize,
    /// The smallest `from_index` a watcher can start from.
    pub watch_min_from_index: Index,
    /// Live watchers.
    pub watchers: usize,
    /// The quota of `state_bytes` ([`KvOptions::max_state_bytes`]).
    pub quota_bytes: u64,
    /// The quota's alarm is on: no write may grow the state (see
    /// [`Response::NoSpace`](crate::Response::NoSpace)).
    pub no_space: bool,
}

/// The state both handles share.
#[derive(Debug)]
struct Shared {
    inner: RwLock<Inner>,
    options: KvOptions,
}

#[derive(Debug)]
struct Inner {
    state: State,
    history: History,
    /// The live stream; `None` once the [`KvFsm`] is dropped (watchers then end with `Closed`).
    events: Option<broadcast::Sender<Notice>>,
}

impl Shared {
    // Nothing panics while holding the lock, so a poisoned lock still guards a whole state.
    fn read(&self) -> RwLockReadGuard<'_, Inner> {
        self.inner.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> RwLockWriteGuard<'_, Inner> {
        self.inner.write().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Inner {
    fn publish(&mut self, event: ChangeEvent) {
        let event = Arc::new(event);
        self.history.push(event.clone());
        if let Some(events) = &self.events {
            // No receiver is fine: nobody watches.
            let _ = events.send(Notice::Event(event));
        }
    }
}

/// The read side of the replicated state: cheap to clone (an `Arc` inside), safe to share
/// between tasks. Reads are local and reflect the applied index at the time of the call; for a
/// linearizable read, get an index from `RaftNode::read_index`, then
/// [`wait_applied`](Self::wait_applied) it (the driver already waits, so this resolves at
/// once on that node), then read.
#[derive(Clone)]
pub struct KvStore {
    shared: Arc<Shared>,
    applied: watch::Receiver<Index>,
}

impl std::fmt::Debug for KvStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let inner = self.shared.read();
        f.debug_struct("KvStore")
            .field("applied_index", &inner.state.applied_index())
            .field("keys", &inner.state.counts().keys)
            .finish_non_exhaustive()
    }
}

impl KvStore {
    /// An empty store and the state machine that feeds it (give the [`KvFsm`] to
    /// `RaftNode::start`). Fails when the options are invalid.
    pub fn new(options: KvOptions) -> Result<(KvStore, KvFsm), KvError> {
        options.validate()?;
        let (events, _) = broadcast::channel(options.watch_channel_capacity);
        let inner = Inner {
            state: State::new(options.limits()),
            history: History::new(options.watch_history, 0),
            events: Some(events),
        };
        let shared = Arc::new(Shared { inner: RwLock::new(inner), options });
        let (applied_tx, applied_rx) = watch::channel(0);
        Ok((KvStore { shared: shared.clone(), applied: applied_rx }, KvFsm { shared, applied: applied_tx }))
    }

    /// The options the store was made with.
    pub fn options(&self) -> &KvOptions {
        &self.shared.options
    }

    /// The pair of `key`.
    pub fn get(&self, key: &str) -> Option<KeyValue> {
        self.shared.read().state.get(key)
    }

    /// Up to `limit` (at most `max_list`) pairs whose key starts with `prefix`, in key order.
    pub fn list(&self, prefix: &str, limit: usize) -> Vec<KeyValue> {
        self.shared.read().state.list(prefix, None, limit.min(self.shared.options.max_list), usize::MAX)
    }

    /// Like [`list`](Self::list), starting after key `start_after`, with the index the page was
    /// read at (to start a watch from) and where the next page starts. The page also ends
    /// before the pair that would take its keys and values past `max_bytes` (it holds at least
    /// one pair), so that a page of large values stays bounded.
    pub fn list_page(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
        max_bytes: usize,
    ) -> ListPage {
        let limit = limit.min(self.shared.options.max_list);
        let inner = self.shared.read();
        let items = inner.state.list(prefix, start_after, limit, max_bytes);
        let next_start_after =
            items.last().filter(|last| inner.state.has_after(prefix, &last.key)).map(|last| last.key.clone());
        ListPage { applied_index: inner.state.applied_index(), items, next_start_after }
    }

    /// Every registered service, by name (at most `max_services`).
    pub fn services(&self) -> Vec<Service> {
        self.shared.read().state.services()
    }

    /// The service named `name`.
    pub fn service(&self, name: &str) -> Option<Service> {
        self.shared.read().state.service(name)
    }

    /// The member address book, by id.
    pub fn member_addresses(&self) -> Vec<MemberAddress> {
        self.shared.read().state.members()
    }

    /// The last applied log index (0 before anything is applied).
    pub fn applied_index(&self) -> Index {
        self.shared.read().state.applied_index()
    }

    /// Resolves with the applied index once it is at least `index` (at once if it already
    /// is). Fails with [`KvError::Closed`] when the [`KvFsm`] is dropped first. Cancel-safe;
    /// wrap it in a timeout.
    pub async fn wait_applied(&self, index: Index) -> Result<Index, KvError> {
        let mut applied = self.applied.clone();
        let reached = applied.wait_for(|applied| *applied >= index).await.map_err(|_| KvError::Closed)?;
        Ok(*reached)
    }

    /// A stable 64-bit hash of the whole replicated state (keys, services, member addresses,
    /// sessions) and the applied index: equal on two replicas at the same index exactly when
    /// (barring a collision) their states are equal; the same in every process and on every
    /// platform. Maintained incrementally: O(1).
    pub fn state_hash(&self) -> u64 {
        self.shared.read().state.state_hash()
    }

    /// The number of keys.
    pub fn len(&self) -> usize {
        self.shared.read().state.counts().keys
    }

    /// Whether there are no keys.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Numbers about the store.
    pub fn stats(&self) -> KvStats {
        let inner = self.shared.read();
        let counts = inner.state.counts();
        KvStats {
            applied_index: inner.state.applied_index(),
            state_hash: inner.state.state_hash(),
            keys: counts.keys,
            state_bytes: counts.kv_bytes,
            services: counts.services,
            member_addresses: counts.members,
            sessions: counts.sessions,
            watch_history_len: inner.history.len(),
            watch_min_from_index: inner.history.min_from_index(),
            watchers: inner.events.as_ref().map_or(0, |e| e.receiver_count()),
            quota_bytes: self.shared.options.max_state_bytes,
            no_space: inner.state.no_space(),
        }
    }

    /// Watches the commit stream: with `from_index`, first every retained event after it, then
    /// live events; without, live events after the current applied index. With `prefix`, only
    /// key-value events whose key starts with it (service and member events are left out).
    ///
    /// Fails with [`WatchError::Compacted`] when events after `from_index` are no longer
    /// retained (read the state with [`list_page`](Self::list_page), then watch from its
    /// `applied_index`), and with [`WatchError::Closed`] when the [`KvFsm`] is gone.
    pub fn watch(&self, from_index: Option<Index>, prefix: Option<String>) -> Result<Watcher, WatchError> {
        let inner = self.shared.read();
        let Some(events) = &inner.events else { return Err(WatchError::Closed) };
        // History and subscription are taken under one lock that every publish also takes:
        // no event is missed or seen twice between them.
        let (backlog, position) = match from_index {
            Some(from) => (inner.history.after(from)?, from),
            None => (VecDeque::new(), inner.state.applied_index()),
        };
        Ok(Watcher::new(backlog, events.subscribe(), prefix, position))
    }

    /// Runs `f` on the service named `name` under the read lock (no copy of the service).
    pub(crate) fn with_service<T>(&self, name: &str, f: impl FnOnce(Option<&Service>) -> T) -> T {
        let inner = self.shared.read();
        f(inner.state.service_ref(name))
    }

    /// Whether a service named `name` exists.
    pub(crate) fn has_service(&self, name: &str) -> bool {
        self.with_service(name, |s| s.is_some())
    }
}

/// The write side: the [`Fsm`] the Raft driver applies committed entries to. Applying updates
/// the shared state, publishes change events and wakes [`KvStore::wait_applied`] callers.
/// Dropping it (the node stopped) ends watchers with `Closed` and fails waiting callers.
pub struct KvFsm {
    shared: Arc<Shared>,
    applied: watch::Sender<Index>,
}

impl std::fmt::Debug for KvFsm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KvFsm").field("applied_index", &*self.applied.borrow()).finish_non_exhaustive()
    }
}

impl Drop for KvFsm {
    fn drop(&mut self) {
        self.shared.write().events = None;
    }
}

#[async_trait]
impl Fsm for KvFsm {
    /// Applies the entries in order. A command that cannot be decoded or is invalid gets a
    /// `Rejected` response; `Err` only when the entries do not continue the applied index (a
    /// broken driver contract), in which case nothing is applied.
    async fn apply(&mut self, entries: &[Entry]) -> Result<Vec<Bytes>, FsmError> {
        let (applied, responses) = {
            let mut inner = self.shared.write();
            let first = inner.state.applied_index().checked_add(1);
            let contiguous =
                entries.iter().zip(0..).all(|(e, i)| first.and_then(|f| f.checked_add(i)) == Some(e.index));
            if !contiguous {
                let indexes: Vec<Index> = entries.iter().map(|e| e.index).take(8).collect();
                return Err(FsmError::Failed(format!(
                    "entries {indexes:?}... do not follow the applied index {}",
                    inner.state.applied_index()
                )));
            }
            let mut responses = Vec::with_capacity(entries.len());
            for entry in entries {
                let (response, event) = inner.state.apply(entry)?;
                if let Some(event) = event {
                    inner.publish(event);
                }
                responses.push(response);
            }
            (inner.state.applied_index(), responses)
        };
        self.applied.send_replace(applied);
        Ok(responses)
    }

    /// A view of the state, taken in O(1) (the maps are persistent); it writes one format
    /// version byte, then the postcard of the whole state and its hash, in chunks.
    async fn snapshot(&mut self) -> Result<Box<dyn SnapshotSource>, FsmError> {
        Ok(Box::new(self.shared.read().state.view()))
    }

    /// Replaces the state with the snapshot's, or fails with `BadSnapshot` leaving it unchanged.
    /// The new state is built beside the old one (reads go on meanwhile), then swapped in.
    /// Clears the event history; live watchers end with `Compacted`.
    async fn restore(&mut self, snapshot: &mut dyn SnapshotReader) -> Result<(), FsmError> {
        let state = State::restore(snapshot, self.shared.options.limits()).await?;
        let index = state.applied_index();
        {
            let mut inner = self.shared.write();
            inner.state = state;
            inner.history.reset(index);
            if let Some(events) = &inner.events {
                let _ = events.send(Notice::Restored { index });
            }
        }
        self.applied.send_replace(index);
        Ok(())
    }

    /// Batches of up to [`INLINE_APPLY_BYTES`] are applied on the driver's task: a write
    /// applies in about a microsecond, in memory, and never waits for IO.
    fn inline_apply_bytes(&self) -> usize {
        INLINE_APPLY_BYTES
    }
}

/// The largest batch (in [`Entry::size_bytes`](raft_core::Entry::size_bytes)) the driver
/// applies on its own task instead of the applier's thread: a few hundred writes of
/// realistic size, some tens of microseconds of the event loop.
pub const INLINE_APPLY_BYTES: usize = 64 << 10;

#[cfg(test)]
mod tests;
