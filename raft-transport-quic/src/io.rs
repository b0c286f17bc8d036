//! Reading and writing frames on QUIC streams.

use bytes::BytesMut;
use raft_core::wire::{encode_frame, FrameDecoder, WireError, WireMessage};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::time::Instant;

/// Why no frame could be read.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ReadError {
    /// The peer finished the stream between frames.
    #[error("stream finished")]
    Closed,
    /// The peer finished the stream in the middle of a frame.
    #[error("stream finished inside a frame")]
    Truncated,
    /// The deadline passed.
    #[error("timed out")]
    Timeout,
    /// The bytes are not a valid frame.
    #[error("bad frame: {0}")]
    Wire(#[from] WireError),
    /// The stream failed.
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
}

/// Reads one frame from `stream` into `buf`. `deadline` bounds the whole wait; with `None`,
/// the wait for a frame's first byte is unbounded and `frame_timeout` bounds each frame once
/// it started.
pub(crate) async fn read_frame<R: AsyncRead + Unpin>(
    stream: &mut R,
    buf: &mut BytesMut,
    decoder: &FrameDecoder,
    deadline: Option<Instant>,
    frame_timeout: std::time::Duration,
) -> Result<WireMessage, ReadError> {
    let mut frame_deadline = None;
    loop {
        if let Some(message) = decoder.decode(buf)? {
            return Ok(message);
        }
        if !buf.is_empty() && frame_deadline.is_none() {
            frame_deadline = Some(Instant::now() + frame_timeout);
        }
        let until = match (deadline, frame_deadline) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let read = match until {
            Some(until) => match tokio::time::timeout_at(until, stream.read_buf(buf)).await {
                Ok(read) => read,
                Err(_) => return Err(ReadError::Timeout),
            },
            None => stream.read_buf(buf).await,
        };
        if read? == 0 {
            return Err(if buf.is_empty() { ReadError::Closed } else { ReadError::Truncated });
        }
    }
}

/// Writes one handshake frame.
pub(crate) async fn write_frame(
    stream: &mut quinn::SendStream,
    message: &WireMessage,
    max_frame_bytes: u32,
) -> Result<(), std::io::Error> {
    let mut out = Vec::new();
    encode_frame(message, max_frame_bytes, &mut out).map_err(std::io::Error::other)?;
    stream.write_all(&out).await.map_err(std::io::Error::from)
}
