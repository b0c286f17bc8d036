//! `GET /v1/watch?prefix=&from_index=`: the commit stream as server-sent events.
//!
//! Each event's `data` is a [`WatchEvent`] in JSON. `from_index` is inclusive: the stream
//! starts with every retained change at or after it, then follows live changes; without it,
//! only changes after the request. A watcher that falls behind, or asks for changes no longer
//! retained, gets one `event: error` whose data is an [`ApiError`] (`compacted`, with the index
//! to resume from in the message) and the stream ends; resume from the last index seen + 1.
//! Keep-alive comments are sent every 15 s. The number of open streams is bounded
//! (`limits.max_watchers`); more are refused with `busy`. Each event's frame is encoded once for
//! every stream that sends it ([`EncodedEvents`]) and shared, not copied; the events a stream
//! finds already waiting go out in one write.

use std::convert::Infallible;
use std::sync::Arc;

use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use bytes::{Bytes, BytesMut};
use futures_util::stream;
use futures_util::FutureExt;
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

/// The server-sent-event frames of recent change events (`id`, then the [`WatchEvent`] JSON as
/// `data`), encoded once and shared by every watch stream that sends them: a write seen by
/// 1,000 watchers costs one encoding, not 1,000, and no copy. A ring of slots by
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

/// An event's index and its frame.
type Encoded = (u64, Bytes);

impl EncodedEvents {
    /// `event`'s frame, encoded by the first stream that asks.
    fn get(&self, event: &ChangeEvent) -> Bytes {
        let slot = (event.index % ENCODED_SLOTS as u64) as usize;
        let lock = || self.ring.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((index, data)) = &lock().slots[slot] {
            if *index == event.index {
                return data.clone();
            }
        }
        // Encoded outside the lock; two streams racing both encode, which is harmless.
        let json = serde_json::to_string(&watch_event(event)).unwrap_or_default();
        let data = Bytes::from(format!("id: {}\ndata: {json}\n\n", event.index));
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

/// The frame of the error that ends a stream. (JSON holds no raw line break, so one `data`
/// line carries it, as it does every event.)
fn error_frame(e: &WatchError) -> Bytes {
    let body = ApiError::new(ErrorCode::Compacted, e.to_string());
    let json = serde_json::to_string(&body).unwrap_or_default();
    Bytes::from(format!("event: {ERROR_EVENT}\ndata: {json}\n\n"))
}

/// A comment sent after this long without an event, so that proxies and clients see the
/// stream is alive.
const KEEP_ALIVE: std::time::Duration = std::time::Duration::from_secs(15);
/// The keep-alive comment.
const KEEP_ALIVE_FRAME: &[u8] = b":\n\n";
/// Most events, and most bytes past the first event, one write of a stream carries.
const EVENTS_PER_WRITE: usize = 64;
const BYTES_PER_WRITE: usize = 256 * 1024;

struct Stream_ {
    watcher: Watcher,
    stopping: tokio::sync::watch::Receiver<bool>,
    /// Where the encoded events are shared ([`EncodedEvents`]).
    encoded: AppState,
    _permit: OwnedSemaphorePermit,
    done: bool,
}

impl Stream_ {
    /// The frame of one received event, or of the error that ends the stream (`None`: the
    /// stream ends without one).
    fn frame(&mut self, next: Result<Arc<ChangeEvent>, WatchError>) -> Option<Bytes> {
        match next {
            Ok(event) => Some(self.encoded.encoded_events.get(&event)),
            Err(WatchError::Closed) => {
                self.done = true;
                None
            }
            Err(e) => {
                self.done = true;
                Some(error_frame(&e))
            }
        }
    }

    /// The next write: the next event's frame, with the events already waiting behind it (up
    /// to [`EVENTS_PER_WRITE`] and [`BYTES_PER_WRITE`]); a keep-alive comment after
    /// [`KEEP_ALIVE`] of silence; `None` when the stream ends.
    async fn next_write(&mut self) -> Option<Bytes> {
        if self.done || *self.stopping.borrow() {
            return None;
        }
        let next = tokio::select! {
            next = self.watcher.recv() => next,
            _ = self.stopping.wait_for(|stop| *stop) => return None,
            _ = tokio::time::sleep(KEEP_ALIVE) => return Some(Bytes::from_static(KEEP_ALIVE_FRAME)),
        };
        let first = self.frame(next)?;
        let mut batch: Option<BytesMut> = None;
        for _ in 1..EVENTS_PER_WRITE {
            if self.done || batch.as_ref().is_some_and(|b| b.len() >= BYTES_PER_WRITE) {
                break;
            }
            // Cancel-safe: an event not ready now stays for the next write.
            let Some(next) = self.watcher.recv().now_or_never() else { break };
            let Some(frame) = self.frame(next) else { break };
            batch.get_or_insert_with(|| BytesMut::from(&first[..])).extend_from_slice(&frame);
        }
        Some(batch.map_or(first, BytesMut::freeze))
    }
}

/// `GET /v1/watch`.
pub(crate) async fn watch(
    State(shared): State<AppState>,
    query: Result<Query<WatchQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, HttpError> {
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
    let writes = stream::unfold(state, |mut s| async move {
        let write = s.next_write().await?;
        Some((Ok::<_, Infallible>(write), s))
    });
    let headers = [
        (axum::http::header::CONTENT_TYPE, "text/event-stream"),
        (axum::http::header::CACHE_CONTROL, "no-cache"),
    ];
    Ok((headers, axum::body::Body::from_stream(writes)).into_response())
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
            let text = std::str::from_utf8(&data).expect("utf-8");
            assert!(text.starts_with(&format!("id: {index}\ndata: {{")), "{}", &text[..40]);
            assert!(text.contains(&format!("\"k{index}\"")), "event {index} got another event's JSON");
            assert!(text.ends_with("}\n\n") && text.matches('\n').count() == 3, "one data line");
        }
        let bytes = encoded.ring.lock().expect("lock").bytes;
        assert!(bytes <= ENCODED_BYTES_MAX, "{bytes} bytes kept");
        let small = put(2000, "v".into());
        assert_eq!(
            encoded.get(&small).as_ptr(),
            encoded.get(&small).as_ptr(),
            "a small event is encoded once"
        );
        // Index 2000 + 1024 lands in the same slot: it gets its own JSON, not the older one's.
        let other = encoded.get(&put(3024, "w".into()));
        assert!(std::str::from_utf8(&other).expect("utf-8").contains("\"k3024\""));
    }
}
