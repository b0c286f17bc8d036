//! `GET /v1/snapshot`: the node's latest snapshot, streamed from storage for backups.
//!
//! The body is the state machine's snapshot (raft-kv's format) exactly as stored, read in
//! parts of [`PART_BYTES`]: the node never holds more than one part of it for the download.
//! The headers say which log entry it ends at ([`SNAPSHOT_INDEX_HEADER`],
//! [`SNAPSHOT_TERM_HEADER`]) and its length. Should the node replace the snapshot while it is
//! being downloaded and drop the old one, the body ends short of its `Content-Length`, which
//! every HTTP client reports as an error: a download is complete or it is an error.

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use raft_client::api::{ErrorCode, SNAPSHOT_INDEX_HEADER, SNAPSHOT_TERM_HEADER};

use super::{AppState, HttpError};

/// Bytes read from storage and sent at a time.
pub(crate) const PART_BYTES: usize = 1 << 20;
/// Downloads streaming at once; more are refused with `busy` (each holds an open file and up
/// to two parts for as long as the client takes).
pub(crate) const SNAPSHOT_DOWNLOADS_MAX: usize = 2;

/// `GET /v1/snapshot`: 200 with the latest snapshot; 404 when the node has none yet.
pub(crate) async fn download(State(shared): State<AppState>) -> Result<Response, HttpError> {
    let status = shared.raft.status();
    let last = status.protocol.snapshot;
    let len = status.protocol.snapshot_bytes;
    if last.index == 0 {
        return Err(HttpError::not_found("this node has taken or received no snapshot yet"));
    }
    let permit =
        shared.snapshot_downloads.clone().try_acquire_owned().map_err(|_| {
            HttpError::new(ErrorCode::Busy, "too many snapshot downloads at once; retry later")
        })?;
    let unavailable = |why: String| HttpError::new(ErrorCode::Unavailable, why);
    // The first part is read before answering, so that a snapshot replaced in between gets a
    // clear error (try again) rather than a truncated body.
    let first = shared
        .storage
        .read_snapshot_chunk(last, 0, PART_BYTES)
        .await
        .map_err(|e| unavailable(format!("reading the snapshot: {e}")))?
        .ok_or_else(|| unavailable("the snapshot was just replaced; try again".into()))?;
    let storage = shared.storage.clone();
    let parts = futures_util::stream::unfold(Some((first, 0u64)), move |state| {
        let storage = storage.clone();
        // The permit goes with the body: released when the download ends or is dropped.
        let _permit = &permit;
        async move {
            let (part, offset) = state?;
            let next = offset + part.len() as u64;
            let following = if part.is_empty() || next >= len {
                None
            } else {
                match storage.read_snapshot_chunk(last, next, PART_BYTES).await {
                    Ok(Some(p)) if !p.is_empty() => Some((p, next)),
                    Ok(_) => {
                        tracing::warn!(snapshot = %last, offset = next, "snapshot replaced during a download; ending it short");
                        None
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, snapshot = %last, offset = next, "reading the snapshot for a download");
                        None
                    }
                }
            };
            Some((Ok::<_, std::io::Error>(part), following))
        }
    });
    let mut response = Body::from_stream(parts).into_response();
    *response.status_mut() = StatusCode::OK;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    headers.insert(SNAPSHOT_INDEX_HEADER, HeaderValue::from(last.index));
    headers.insert(SNAPSHOT_TERM_HEADER, HeaderValue::from(last.term));
    Ok(response)
}
