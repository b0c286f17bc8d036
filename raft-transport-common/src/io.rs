//! Reading and writing frames of the wire format on tokio byte streams.

use bytes::BytesMut;
use raft_core::wire::{encode_frame, FrameDecoder, WireError, WireMessage};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;

/// Why no frame could be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The peer closed the stream between frames.
    #[error("stream closed")]
    Closed,
    /// The peer closed the stream in the middle of a frame.
    #[error("stream closed inside a frame")]
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
/// it started. The decoder checks a declared length before anything is reserved for it.
pub async fn read_frame<R: AsyncRead + Unpin + ?Sized>(
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
            // `None` for a timeout too long to represent: the frame is then bounded by
            // `deadline` alone.
            frame_deadline = Instant::now().checked_add(frame_timeout);
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

/// Writes one frame and flushes it (handshakes and keep-alives; Raft traffic is coalesced by
/// the writers).
pub async fn write_frame<W: AsyncWrite + Unpin + ?Sized>(
    stream: &mut W,
    message: &WireMessage,
    max_frame_bytes: u32,
) -> Result<(), std::io::Error> {
    let mut out = Vec::new();
    encode_frame(message, max_frame_bytes, &mut out).map_err(std::io::Error::other)?;
    stream.write_all(&out).await?;
    stream.flush().await
}

#[cfg(test)]
mod tests {
    use super::*;
    use raft_core::wire::WIRE_VERSION;
    use std::time::Duration;

    #[tokio::test]
    async fn a_frame_round_trips_and_a_close_between_frames_is_closed() {
        let (mut a, mut b) = tokio::io::duplex(1024);
        let hello = WireMessage::HelloAck { version: WIRE_VERSION, node_id: 3 };
        write_frame(&mut a, &hello, u32::MAX).await.expect("write");
        drop(a);
        let mut buf = BytesMut::new();
        let decoder = FrameDecoder::default();
        let got = read_frame(&mut b, &mut buf, &decoder, None, Duration::from_secs(1)).await;
        assert_eq!(got.expect("frame"), hello);
        let end = read_frame(&mut b, &mut buf, &decoder, None, Duration::from_secs(1)).await;
        assert!(matches!(end, Err(ReadError::Closed)), "{end:?}");
    }

    #[tokio::test]
    async fn a_huge_length_is_refused_and_a_started_frame_times_out() {
        let (mut a, mut b) = tokio::io::duplex(1024);
        a.write_all(&u32::MAX.to_be_bytes()).await.expect("write");
        let mut buf = BytesMut::new();
        let decoder = FrameDecoder::new(4096);
        let got = read_frame(&mut b, &mut buf, &decoder, None, Duration::from_secs(1)).await;
        assert!(matches!(got, Err(ReadError::Wire(_))), "{got:?}");
        let (mut a, mut b) = tokio::io::duplex(1024);
        a.write_all(&[0, 0, 0, 9, 1]).await.expect("write");
        let mut buf = BytesMut::new();
        let got = read_frame(&mut b, &mut buf, &decoder, None, Duration::from_millis(50)).await;
        assert!(matches!(got, Err(ReadError::Timeout)), "{got:?}");
        drop(a);
    }
}
