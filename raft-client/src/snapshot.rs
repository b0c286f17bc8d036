//! [`SnapshotDownload`]: a node's latest snapshot read as a stream of bytes (for backups).

use std::time::Duration;

use bytes::Bytes;

use crate::api::{SNAPSHOT_INDEX_HEADER, SNAPSHOT_TERM_HEADER};
use crate::error::ClientError;

/// A snapshot being downloaded from `GET /v1/snapshot`: where it ends in the log, its length,
/// and its bytes, pulled with [`next_chunk`](Self::next_chunk). The download is complete only
/// when `next_chunk` has returned `Ok(None)`: a body that ends short of `len` is an error.
#[derive(Debug)]
pub struct SnapshotDownload {
    /// Index of the last log entry the snapshot covers.
    pub index: u64,
    /// Term of that entry.
    pub term: u64,
    /// Length of the snapshot in bytes.
    pub len: u64,
    received: u64,
    response: reqwest::Response,
    endpoint: String,
    idle_timeout: Option<Duration>,
}

impl SnapshotDownload {
    pub(crate) fn new(
        response: reqwest::Response,
        idle_timeout: Option<Duration>,
    ) -> Result<Self, ClientError> {
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok())
                .ok_or_else(|| {
                    ClientError::Decode(format!("the snapshot answer lacks a valid {name} header"))
                })
        };
        let (index, term) = (header(SNAPSHOT_INDEX_HEADER)?, header(SNAPSHOT_TERM_HEADER)?);
        let len = response
            .content_length()
            .ok_or_else(|| ClientError::Decode("the snapshot answer has no Content-Length".into()))?;
        let endpoint = response.url().origin().ascii_serialization();
        Ok(Self { index, term, len, received: 0, response, endpoint, idle_timeout })
    }

    /// The next bytes of the snapshot; `Ok(None)` once all `len` bytes have come. A body
    /// that breaks off, ends short or runs long is an error (the download is worthless).
    pub async fn next_chunk(&mut self) -> Result<Option<Bytes>, ClientError> {
        let read = self.response.chunk();
        let chunk = match self.idle_timeout {
            None => read.await,
            Some(idle) => tokio::time::timeout(idle, read)
                .await
                .map_err(|_| ClientError::Timeout { endpoint: self.endpoint.clone(), after: idle })?,
        }
        .map_err(|source| ClientError::Transport { endpoint: self.endpoint.clone(), source })?;
        match chunk {
            Some(chunk) => {
                self.received = self.received.saturating_add(chunk.len() as u64);
                if self.received > self.len {
                    return Err(ClientError::Decode(format!("the snapshot ran past its {} bytes", self.len)));
                }
                Ok(Some(chunk))
            }
            None if self.received == self.len => Ok(None),
            None => Err(ClientError::Decode(format!(
                "the snapshot ended after {} of {} bytes",
                self.received, self.len
            ))),
        }
    }
}
