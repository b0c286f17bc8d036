//! [`WatchStream`]: the committed changes streamed by `GET /v1/watch`.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::Stream;

use crate::api::{ApiError, WatchEvent};
use crate::error::ClientError;
use crate::sse::{SseEvent, SseParser};

/// The name of the server-sent event that carries an [`ApiError`] and ends a watch.
pub const WATCH_ERROR_EVENT: &str = "error";

/// A stream of [`WatchEvent`]s from one node, in log order.
///
/// Yields `Ok(event)` for each change; ends when the server closes the stream; on a failure
/// yields one `Err` and then ends: [`ClientError::Api`] for an `error` event from the server
/// (e.g. `compacted`), [`ClientError::Transport`] for a broken connection,
/// [`ClientError::Timeout`] when nothing arrived within the idle timeout, and
/// [`ClientError::Decode`] for a malformed event or one over the size limit.
pub struct WatchStream {
    inner: Pin<Box<dyn Stream<Item = Result<WatchEvent, ClientError>> + Send>>,
}

impl std::fmt::Debug for WatchStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WatchStream").finish_non_exhaustive()
    }
}

struct State {
    response: reqwest::Response,
    endpoint: String,
    parser: SseParser,
    idle_timeout: Option<Duration>,
    done: bool,
}

impl WatchStream {
    pub(crate) fn new(
        response: reqwest::Response,
        event_bytes_max: usize,
        idle_timeout: Option<Duration>,
    ) -> Self {
        let endpoint = response.url().origin().ascii_serialization();
        let state =
            State { response, endpoint, parser: SseParser::new(event_bytes_max), idle_timeout, done: false };
        Self { inner: Box::pin(futures_util::stream::unfold(state, next_item)) }
    }
}

impl Stream for WatchStream {
    type Item = Result<WatchEvent, ClientError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.inner.as_mut().poll_next(cx)
    }
}

async fn next_item(mut state: State) -> Option<(Result<WatchEvent, ClientError>, State)> {
    if state.done {
        return None;
    }
    loop {
        if let Some(event) = state.parser.next_event() {
            let item = convert(event);
            state.done = item.is_err();
            return Some((item, state));
        }
        let chunk = match state.idle_timeout {
            None => state.response.chunk().await,
            Some(idle) => match tokio::time::timeout(idle, state.response.chunk()).await {
                Ok(chunk) => chunk,
                Err(_) => {
                    state.done = true;
                    let error = ClientError::Timeout { endpoint: state.endpoint.clone(), after: idle };
                    return Some((Err(error), state));
                }
            },
        };
        let error = match chunk {
            Ok(None) => return None,
            Ok(Some(bytes)) => match state.parser.push(&bytes) {
                Ok(()) => continue,
                Err(e) => ClientError::Decode(format!("watch stream from {}: {e}", state.endpoint)),
            },
            Err(source) => ClientError::Transport { endpoint: state.endpoint.clone(), source },
        };
        state.done = true;
        return Some((Err(error), state));
    }
}

/// One server-sent event as a watch item.
fn convert(event: SseEvent) -> Result<WatchEvent, ClientError> {
    if event.event == WATCH_ERROR_EVENT {
        return match serde_json::from_str::<ApiError>(&event.data) {
            Ok(error) => Err(ClientError::Api { status: error.code.http_status(), error: Box::new(error) }),
            Err(e) => Err(ClientError::Decode(format!("watch error event: {e}"))),
        };
    }
    serde_json::from_str(&event.data).map_err(|e| ClientError::Decode(format!("watch event: {e}")))
}
