//! `GET /v1/watch?prefix=&from_index=`: the commit stream as server-sent events.
//!
//! Each event's `data` is a [`WatchEvent`] in JSON. `from_index` is inclusive: the stream
//! starts with every retained change at or after it, then follows live changes; without it,
//! only changes after the request. A watcher that falls behind, or asks for changes no longer
//! retained, gets one `event: error` whose data is an [`ApiError`] (`compacted`, with the index
//! to resume from in the message) and the stream ends; resume from the last index seen + 1.
//! Keep-alive comments are sent every 15 s. The number of open streams is bounded
//! (`limits.max_watchers`); more are refused with `busy`. Each event is encoded once for every
//! stream that sends it ([`EncodedEvents`]).

use std::convert::Infallible;
use std::sync::Arc;

use axum::extract::{Query, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::stream::{self, Stream};
use raft_client::api::{ApiError, ErrorCode, WatchEvent, WatchKind};
use raft_kv::{Change, ChangeEvent, WatchError, Watcher};
use serde::Deserialize;
use tokio::sync::OwnedSemaphorePermit;

use super::{AppState, HttpError};

/// Query of `GET /v1/watch`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct WatchQuery {
    prefix: Option<String>,
    from_index: Option<u64>,
}

/// The SSE `event` name of the error that ends a stream.
pub(crate) const ERROR_EVENT: &str = "error";

fn watch_event(event: &ChangeEvent) -> WatchEvent {
    let index = event.index;
    let (kind, key, value, version) = match &event.change {
        Change::Put(kv) => (WatchKind::Put, kv.key.clone(), Some(kv.value.clone()), Some(kv.version)),
        Change::Delete(kv) => (WatchKind::Delete, kv.key.clone(), None, None),
        Change::ServiceRegistered(s) => (WatchKind::ServiceRegistered, s.name.clone(), None, None),
        Change::ServiceRemoved { name } => (WatchKind::ServiceRemoved, name.clone(), None, None),
        Change::ServiceNodeDown { service, node, down } => (
            WatchKind::ServiceRegistered,
            service.clone(),
            Some(format!("{node} {}", if *down { "down" } else { "up" })),
            None,
        ),
        Change::MemberAddressSet(m) => {
            (WatchKind::MemberAddress, m.id.to_string(), Some(m.raft_addr.clone()), None)
        }
        Change::MemberAddressRemoved { id } => (WatchKind::MemberAddress, id.to_string(), None, None),
    };
    WatchEvent { index, kind, key, value, version }
}

/// Slots of [`EncodedEvents`]: more than a watcher may lag behind in one burst of changes
/// being sent out (past the live channel's capacity it is cut off anyway).
const ENCODED_SLOTS: usize = 1024;
/// Most bytes of encodings [`EncodedEvents`] keeps; an encoding that does not fit is not kept
/// (each stream then encodes that event itself).
const ENCODED_BYTES_MAX: usize = 32 << 20;

/// The JSON of recent change events, encoded once and shared by every watch stream that sends
/// them: a write seen by 1,000 watchers costs one encoding, not 1,000. A ring of slots by
/// index (an index is one change) within [`ENCODED_BYTES_MAX`], so memory stays bounded
/// whatever the rate and the values.
#[derive(Default)]
pub(crate) struct EncodedEvents {
    ring: std::sync::Mutex<Ring>,
}

struct Ring {
    slots: Vec<Option<Encoded>>,
    /// Bytes of the encodings held.
    bytes: usize,
}

impl Default for Ring {
    fn default() -> Self {
        Self { slots: vec![None; ENCODED_SLOTS], bytes: 0 }
    }
}

/// An event's index and its JSON.
type Encoded = (u64, Arc<str>);

impl EncodedEvents {
    /// `event`'s [`WatchEvent`] JSON, encoded by the first stream that asks.
    fn get(&self, event: &ChangeEvent) -> Arc<str> {
        let slot = (event.index % ENCODED_SLOTS as u64) as usize;
        let lock = || self.ring.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((index, data)) = &lock().slots[slot] {
            if *index == event.index {
                return data.clone();
            }
        }
        // Encoded outside the lock; two streams racing both encode, which is harmless.
        let data: Arc<str> = serde_json::to_string(&watch_event(event)).unwrap_or_default().into();
        let mut ring = lock();
        let old = ring.slots[slot].as_ref().map_or(0, |(_, d)| d.len());
        let bytes = ring.bytes - old + data.len();
        if bytes <= ENCODED_BYTES_MAX {
            ring.slots[slot] = Some((event.index, data.clone()));
            ring.bytes = bytes;
        }
        data
    }
}

fn error_event(e: &WatchError) -> Event {
    let body = ApiError::new(ErrorCode::Compacted, e.to_string());
    Event::default().event(ERROR_EVENT).data(serde_json::to_string(&body).unwrap_or_default())
}

struct Stream_ {
    watcher: Watcher,
    stopping: tokio::sync::watch::Receiver<bool>,
    /// Where the encoded events are shared ([`EncodedEvents`]).
    encoded: AppState,
    _permit: OwnedSemaphorePermit,
    done: bool,
}

/// `GET /v1/watch`.
pub(crate) async fn watch(
    State(shared): State<AppState>,
    query: Result<Query<WatchQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, HttpError> {
    let Query(query) = query.map_err(|e| HttpError::bad_request(e.body_text()))?;
    let permit = Arc::clone(&shared.watchers)
        .try_acquire_owned()
        .map_err(|_| HttpError::new(ErrorCode::Busy, "too many watch streams are open"))?;
    let from = query.from_index.map(|i| i.saturating_sub(1));
    let watcher = shared.kv.watch(from, query.prefix).map_err(|e| match e {
        WatchError::Compacted { .. } | WatchError::Lagged { .. } => {
            HttpError::new(ErrorCode::Compacted, e.to_string())
        }
        WatchError::Closed => HttpError::new(ErrorCode::Unavailable, e.to_string()),
    })?;
    let state = Stream_ {
        watcher,
        stopping: shared.stopping.clone(),
        encoded: shared.clone(),
        _permit: permit,
        done: false,
    };
    let events = stream::unfold(state, |mut s| async move {
        if s.done || *s.stopping.borrow() {
            return None;
        }
        let next = tokio::select! {
            next = s.watcher.recv() => next,
            _ = s.stopping.wait_for(|stop| *stop) => return None,
        };
        let event = match next {
            Ok(event) => {
                let data = s.encoded.encoded_events.get(&event);
                Event::default().id(event.index.to_string()).data(&*data)
            }
            Err(WatchError::Closed) => return None,
            Err(e) => {
                s.done = true;
                error_event(&e)
            }
        };
        Some((Ok(event), s))
    });
    Ok(Sse::new(events).keep_alive(KeepAlive::default()))
}

#[cfg(test)]
mod tests {
    use raft_kv::KeyValue;

    use super::*;

    fn put(index: u64, value: String) -> ChangeEvent {
        let kv =
            KeyValue { key: format!("k{index}"), value, version: 1, create_index: index, mod_index: index };
        ChangeEvent { index, change: Change::Put(kv) }
    }

    /// Found by review: the ring kept up to 1,024 encodings whatever their size (64 events of
    /// 1 MiB values held 400 MB). It keeps at most `ENCODED_BYTES_MAX`, and every stream still
    /// gets each event's own JSON.
    #[test]
    fn the_encoded_ring_stays_within_its_byte_bound_and_answers_each_index_with_its_event() {
        let encoded = EncodedEvents::default();
        for index in 1..=64 {
            let value = "\u{1}".repeat(1 << 20);
            let data = encoded.get(&put(index, value));
            assert!(data.contains(&format!("\"k{index}\"")), "event {index} got another event's JSON");
        }
        let bytes = encoded.ring.lock().expect("lock").bytes;
        assert!(bytes <= ENCODED_BYTES_MAX, "{bytes} bytes kept");
        let small = put(2000, "v".into());
        assert!(Arc::ptr_eq(&encoded.get(&small), &encoded.get(&small)), "a small event is encoded once");
        // Index 2000 + 1024 lands in the same slot: it gets its own JSON, not the older one's.
        assert!(encoded.get(&put(3024, "w".into())).contains("\"k3024\""));
    }
}
