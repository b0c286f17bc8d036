//! `GET /v1/watch?prefix=&from_index=`: the commit stream as server-sent events.
//!
//! Each event's `data` is a [`WatchEvent`] in JSON. `from_index` is inclusive: the stream
//! starts with every retained change at or after it, then follows live changes; without it,
//! only changes after the request. A watcher that falls behind, or asks for changes no longer
//! retained, gets one `event: error` whose data is an [`ApiError`] (`compacted`, with the index
//! to resume from in the message) and the stream ends; resume from the last index seen + 1.
//! Keep-alive comments are sent every 15 s. The number of open streams is bounded
//! (`limits.max_watchers`); more are refused with `busy`.

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

fn error_event(e: &WatchError) -> Event {
    let body = ApiError::new(ErrorCode::Compacted, e.to_string());
    Event::default().event(ERROR_EVENT).data(serde_json::to_string(&body).unwrap_or_default())
}

struct Stream_ {
    watcher: Watcher,
    stopping: tokio::sync::watch::Receiver<bool>,
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
    let state = Stream_ { watcher, stopping: shared.stopping.clone(), _permit: permit, done: false };
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
                let data = serde_json::to_string(&watch_event(&event)).unwrap_or_default();
                Event::default().id(event.index.to_string()).data(data)
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
