//! The commit stream: every applied change as a [`ChangeEvent`], a bounded history of recent
//! events, and [`Watcher`]s that replay the history from an index and then follow live events.

use std::collections::VecDeque;
use std::sync::Arc;

use raft_core::Index;
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use crate::command::KeyValue;
use crate::error::WatchError;
use crate::service::{MemberAddress, Service};

/// One applied change. At most one event per log entry, so `index` identifies it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangeEvent {
    /// The log index of the entry that made the change.
    pub index: Index,
    /// The change.
    pub change: Change,
}

/// What changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Change {
    /// A key was created or updated (its new state).
    Put(KeyValue),
    /// A key was deleted (its last state before the delete).
    Delete(KeyValue),
    /// A service was registered or replaced (its new state).
    ServiceRegistered(Service),
    /// A service was removed.
    ServiceRemoved {
        /// Its name.
        name: String,
    },
    /// A service node was marked down or up (only emitted when the flag changed).
    ServiceNodeDown {
        /// The service's name.
        service: String,
        /// The node's id.
        node: String,
        /// The new flag.
        down: bool,
    },
    /// A member address was set.
    MemberAddressSet(MemberAddress),
    /// A member address was removed.
    MemberAddressRemoved {
        /// The Raft node id.
        id: u64,
    },
}

impl ChangeEvent {
    /// The key of a key-value event (`Put` or `Delete`); `None` for service and member events.
    pub fn key(&self) -> Option<&str> {
        match &self.change {
            Change::Put(kv) | Change::Delete(kv) => Some(&kv.key),
            _ => None,
        }
    }

    /// Whether a watcher with this prefix filter receives the event: every event without a
    /// filter; only key-value events whose key starts with the prefix with one.
    pub fn matches(&self, prefix: Option<&str>) -> bool {
        match prefix {
            None => true,
            Some(p) => self.key().is_some_and(|k| k.starts_with(p)),
        }
    }
}

/// What the live stream carries.
#[derive(Debug, Clone)]
pub(crate) enum Notice {
    /// An applied change.
    Event(Arc<ChangeEvent>),
    /// A snapshot at `index` was restored: history before it is gone.
    Restored { index: Index },
}

/// The retained recent events.
#[derive(Debug)]
pub(crate) struct History {
    events: VecDeque<Arc<ChangeEvent>>,
    capacity: usize,
    /// Every event with an index above this one is retained (or not applied yet).
    complete_after: Index,
}

impl History {
    /// An empty history keeping at most `capacity` events, complete after `index`.
    pub(crate) fn new(capacity: usize, index: Index) -> Self {
        Self { events: VecDeque::with_capacity(capacity.min(1024)), capacity, complete_after: index }
    }

    /// Retains `event`, dropping the oldest when full.
    pub(crate) fn push(&mut self, event: Arc<ChangeEvent>) {
        if self.capacity == 0 {
            self.complete_after = event.index;
            return;
        }
        if self.events.len() >= self.capacity {
            if let Some(oldest) = self.events.pop_front() {
                self.complete_after = oldest.index;
            }
        }
        self.events.push_back(event);
    }

    /// Drops everything: history restarts after `index` (a restored snapshot).
    pub(crate) fn reset(&mut self, index: Index) {
        self.events.clear();
        self.complete_after = index;
    }

    /// The retained events after `from_index`, or `Compacted` when some are no longer retained.
    pub(crate) fn after(&self, from_index: Index) -> Result<VecDeque<Arc<ChangeEvent>>, WatchError> {
        if from_index < self.complete_after {
            return Err(WatchError::Compacted { min_from_index: self.complete_after });
        }
        let start = self.events.partition_point(|e| e.index <= from_index);
        Ok(self.events.range(start..).cloned().collect())
    }

    /// The number of retained events.
    pub(crate) fn len(&self) -> usize {
        self.events.len()
    }

    /// The smallest `from_index` served from history.
    pub(crate) fn min_from_index(&self) -> Index {
        self.complete_after
    }
}

/// A subscription to the commit stream, from [`KvStore::watch`](crate::KvStore::watch): first
/// the retained events after the requested index, then live ones, in index order, each once.
///
/// Live events wait in a bounded channel (`watch_channel_capacity`); a watcher that falls
/// further behind fails with [`WatchError::Lagged`]. Errors are terminal: every later call
/// returns the same error.
#[derive(Debug)]
pub struct Watcher {
    backlog: VecDeque<Arc<ChangeEvent>>,
    live: broadcast::Receiver<Notice>,
    prefix: Option<String>,
    position: Index,
    failed: Option<WatchError>,
}

impl Watcher {
    pub(crate) fn new(
        backlog: VecDeque<Arc<ChangeEvent>>,
        live: broadcast::Receiver<Notice>,
        prefix: Option<String>,
        position: Index,
    ) -> Self {
        Self { backlog, live, prefix, position, failed: None }
    }

    /// The next event that passes the filter. Cancel-safe.
    pub async fn recv(&mut self) -> Result<Arc<ChangeEvent>, WatchError> {
        loop {
            if let Some(e) = &self.failed {
                return Err(e.clone());
            }
            let event = match self.backlog.pop_front() {
                Some(event) => event,
                None => match self.live.recv().await {
                    Ok(Notice::Event(event)) => event,
                    // Nothing after this watcher's position was lost.
                    Ok(Notice::Restored { index }) if index <= self.position => continue,
                    Ok(Notice::Restored { index }) => {
                        self.failed = Some(WatchError::Compacted { min_from_index: index });
                        continue;
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        self.failed = Some(WatchError::Lagged { resume_from: self.position });
                        continue;
                    }
                    Err(broadcast::error::RecvError::Closed) => {
                        self.failed = Some(WatchError::Closed);
                        continue;
                    }
                },
            };
            // Live events at or below the start index (when watching from an index not applied
            // yet) are skipped.
            if event.index <= self.position {
                continue;
            }
            self.position = event.index;
            if event.matches(self.prefix.as_deref()) {
                return Ok(event);
            }
        }
    }

    /// The index of the last event examined (delivered or filtered out); the `from_index` to
    /// resume from.
    pub fn position(&self) -> Index {
        self.position
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(index: Index) -> Arc<ChangeEvent> {
        let kv = KeyValue {
            key: format!("k{index}"),
            value: String::new(),
            version: 1,
            create_index: index,
            mod_index: index,
        };
        Arc::new(ChangeEvent { index, change: Change::Put(kv) })
    }

    #[test]
    fn history_keeps_the_newest_events_and_knows_where_it_is_complete() {
        let mut h = History::new(3, 0);
        for i in [2, 4, 5, 9] {
            h.push(event(i));
        }
        assert_eq!(h.len(), 3);
        assert_eq!(h.min_from_index(), 2);
        assert_eq!(h.after(1), Err(WatchError::Compacted { min_from_index: 2 }));
        let idx = |v: VecDeque<Arc<ChangeEvent>>| v.iter().map(|e| e.index).collect::<Vec<_>>();
        assert_eq!(idx(h.after(2).unwrap()), vec![4, 5, 9]);
        assert_eq!(idx(h.after(5).unwrap()), vec![9]);
        assert_eq!(idx(h.after(100).unwrap()), Vec::<Index>::new());
        h.reset(20);
        assert_eq!(h.len(), 0);
        assert_eq!(h.after(19), Err(WatchError::Compacted { min_from_index: 20 }));
    }

    #[test]
    fn history_of_capacity_zero_retains_nothing() {
        let mut h = History::new(0, 0);
        h.push(event(3));
        assert_eq!(h.len(), 0);
        assert_eq!(h.after(2), Err(WatchError::Compacted { min_from_index: 3 }));
        assert!(h.after(3).unwrap().is_empty());
    }

    #[test]
    fn prefix_filter_applies_to_key_value_events_only() {
        let e = event(1);
        assert!(e.matches(None));
        assert!(e.matches(Some("k")));
        assert!(!e.matches(Some("x")));
        let s = ChangeEvent { index: 2, change: Change::ServiceRemoved { name: "k".into() } };
        assert!(s.matches(None));
        assert!(!s.matches(Some("k")));
    }
}
