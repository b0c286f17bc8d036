//! The inbound side shared by every connection of a transport: two bounded queues (small
//! messages, and `InstallSnapshot` chunks, so that queued chunks cannot take the memory of
//! thousands of messages), the checks on each received message, and `recv`, which drains
//! both queues.

use std::time::Duration;

use bytes::BytesMut;
use raft_core::wire::{FrameDecoder, WireMessage};
use raft_core::{Message, NodeId, Payload, TransportClosed};
use tokio::io::AsyncRead;
use tokio::sync::{mpsc, Mutex};
use tracing::{debug, warn};

use crate::handshake::kind;
use crate::io::{read_frame, ReadError};
use crate::stats::Counters;

/// Makes the inbound queues: up to `small_max` small messages and `snapshot_max`
/// `InstallSnapshot` messages wait for `recv`. Both must be positive.
pub fn inbox(small_max: usize, snapshot_max: usize) -> (InboxSenders, Inbox) {
    let (small_tx, small_rx) = mpsc::channel(small_max.max(1));
    let (snapshot_tx, snapshot_rx) = mpsc::channel(snapshot_max.max(1));
    (
        InboxSenders { small: small_tx, snapshot: snapshot_tx },
        Inbox { queues: Mutex::new(Queues { small: small_rx, snapshot: snapshot_rx }) },
    )
}

/// The sending ends of the inbound queues, cloned into every inbound connection.
#[derive(Debug, Clone)]
pub struct InboxSenders {
    small: mpsc::Sender<Message>,
    snapshot: mpsc::Sender<Message>,
}

impl InboxSenders {
    /// Queues a received message on its queue, waiting while that queue is full (the
    /// connection stops reading, and TCP or QUIC flow control pushes back on the sender);
    /// false once the transport is shutting down.
    pub async fn send(&self, message: Message) -> bool {
        let queue = match message.payload {
            Payload::InstallSnapshot { .. } => &self.snapshot,
            _ => &self.small,
        };
        queue.send(message).await.is_ok()
    }
}

#[derive(Debug)]
struct Queues {
    small: mpsc::Receiver<Message>,
    snapshot: mpsc::Receiver<Message>,
}

/// The receiving ends of the inbound queues: what `Transport::recv` reads.
#[derive(Debug)]
pub struct Inbox {
    queues: Mutex<Queues>,
}

impl Inbox {
    /// Waits for at least one message, then moves up to `max` into `buf`, from both queues so
    /// that neither starves the other. Cancel-safe. Fails once both queues are closed and
    /// empty.
    pub async fn recv(&self, buf: &mut Vec<Message>, max: usize) -> Result<usize, TransportClosed> {
        let mut queues = self.queues.lock().await;
        let Queues { small, snapshot } = &mut *queues;
        let max = max.max(1);
        let start = buf.len();
        let (mut small_open, mut snapshot_open) = (true, true);
        let mut chunks = Vec::new();
        loop {
            // Both `recv_many`s are cancel-safe, so dropping the losing branch loses nothing.
            let first_was_small = tokio::select! {
                biased;
                n = small.recv_many(buf, max), if small_open => {
                    small_open = n > 0;
                    true
                }
                n = snapshot.recv_many(&mut chunks, max), if snapshot_open => {
                    snapshot_open = n > 0;
                    buf.append(&mut chunks);
                    false
                }
                else => return Err(TransportClosed),
            };
            if buf.len() > start {
                let other = if first_was_small { &mut *snapshot } else { &mut *small };
                while buf.len() - start < max {
                    match other.try_recv() {
                        Ok(message) => buf.push(message),
                        Err(_) => break,
                    }
                }
                return Ok(buf.len() - start);
            }
        }
    }

    /// Closes both queues: `recv` returns what is queued, then [`TransportClosed`].
    pub async fn close(&self) {
        let mut queues = self.queues.lock().await;
        queues.small.close();
        queues.snapshot.close();
    }
}

/// What became of a received message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// Queued for `recv`.
    Delivered,
    /// Dropped: its `from` is not the connection's peer or its `to` is not this node.
    Misaddressed,
    /// The transport is shutting down.
    Closed,
}

/// The messages of one authenticated inbound connection (or stream) from `peer`: checks each
/// one and queues it for `recv`.
#[derive(Debug)]
pub struct InboundPeer<'a> {
    peer: NodeId,
    node_id: NodeId,
    counters: &'a Counters,
    inbox: &'a InboxSenders,
    warned_misaddressed: bool,
}

impl<'a> InboundPeer<'a> {
    /// Messages from `peer` to `node_id`, counted in `counters`, queued on `inbox`.
    pub fn new(peer: NodeId, node_id: NodeId, counters: &'a Counters, inbox: &'a InboxSenders) -> Self {
        Self { peer, node_id, counters, inbox, warned_misaddressed: false }
    }

    /// Delivers `message` unless it claims another sender or is meant for another node (it is
    /// dropped and counted; the first drop per connection is a warning).
    pub async fn deliver(&mut self, message: Message) -> Delivery {
        if message.from != self.peer || message.to != self.node_id {
            Counters::add(&self.counters.dropped_misaddressed, 1);
            let (peer, from, to) = (self.peer, message.from, message.to);
            if self.warned_misaddressed {
                debug!(peer, from, to, "misaddressed message dropped");
            } else {
                warn!(peer, from, to, "misaddressed message dropped");
                self.warned_misaddressed = true;
            }
            return Delivery::Misaddressed;
        }
        // Counted first, so the counter is never behind what `recv` returned.
        Counters::add(&self.counters.received, 1);
        if self.inbox.send(message).await {
            Delivery::Delivered
        } else {
            Delivery::Closed
        }
    }
}

/// Why [`InboundPeer::read_messages`] stopped.
#[derive(Debug, thiserror::Error)]
pub enum StreamEnd {
    /// The peer closed the stream between frames.
    #[error("closed by the peer")]
    Closed,
    /// The transport is shutting down.
    #[error("transport shutting down")]
    ShuttingDown,
    /// A frame other than `Raft` arrived (counted in `bad_frames`).
    #[error("unexpected {0} frame")]
    Unexpected(&'static str),
    /// Reading failed: a bad frame (counted in `bad_frames`), a timeout (counted in
    /// `timeouts`), a truncated frame or an IO error.
    #[error("{0}")]
    Read(ReadError),
}

impl<'a> InboundPeer<'a> {
    /// Reads `Raft` frames of at most `max_frame_bytes` from `stream` and delivers them until
    /// the stream ends or misbehaves. A started frame must complete within `frame_timeout`;
    /// with `idle_timeout`, a gap of that long without any frame ends the stream too.
    /// `KeepAlive` frames are handed to `on_keep_alive`; without it they are unexpected.
    pub async fn read_messages<R: AsyncRead + Unpin + ?Sized>(
        &mut self,
        stream: &mut R,
        max_frame_bytes: u32,
        frame_timeout: Duration,
        idle_timeout: Option<Duration>,
        mut on_keep_alive: Option<&mut (dyn FnMut(u64) + Send)>,
    ) -> StreamEnd {
        let decoder = FrameDecoder::new(max_frame_bytes);
        let mut buf = BytesMut::with_capacity(4096);
        loop {
            if let (true, Some(idle)) = (buf.is_empty(), idle_timeout) {
                // Between frames: the next one must start within `idle_timeout`.
                match tokio::time::timeout(idle, tokio::io::AsyncReadExt::read_buf(stream, &mut buf)).await {
                    Ok(Ok(0)) => return StreamEnd::Closed,
                    Ok(Ok(_)) => {}
                    Ok(Err(error)) => return StreamEnd::Read(ReadError::Io(error)),
                    Err(_) => {
                        Counters::add(&self.counters.timeouts, 1);
                        return StreamEnd::Read(ReadError::Timeout);
                    }
                }
            }
            let end = match read_frame(stream, &mut buf, &decoder, None, frame_timeout).await {
                Ok(WireMessage::Raft(message)) => match self.deliver(message).await {
                    Delivery::Closed => StreamEnd::ShuttingDown,
                    Delivery::Delivered | Delivery::Misaddressed => continue,
                },
                Ok(WireMessage::KeepAlive { seq }) if on_keep_alive.is_some() => {
                    if let Some(on_keep_alive) = on_keep_alive.as_mut() {
                        on_keep_alive(seq);
                    }
                    continue;
                }
                Ok(other) => StreamEnd::Unexpected(kind(&other)),
                Err(ReadError::Closed) => StreamEnd::Closed,
                Err(error) => StreamEnd::Read(error),
            };
            match &end {
                StreamEnd::Unexpected(_) | StreamEnd::Read(ReadError::Wire(_)) => {
                    Counters::add(&self.counters.bad_frames, 1)
                }
                StreamEnd::Read(ReadError::Timeout) => Counters::add(&self.counters.timeouts, 1),
                _ => {}
            }
            return end;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use raft_core::{LogId, Membership, SnapshotMeta};

    fn small(from: NodeId, id: u64) -> Message {
        Message { from, to: 1, term: 1, payload: Payload::ReadIndexRequest { id } }
    }

    fn chunk() -> Message {
        let meta =
            SnapshotMeta { last_log_id: LogId::new(1, 1), membership: Membership::with_voters([1, 2]) };
        Message {
            from: 2,
            to: 1,
            term: 1,
            payload: Payload::InstallSnapshot { meta, offset: 0, data: Bytes::new(), done: true },
        }
    }

    #[tokio::test]
    async fn recv_drains_both_queues_and_misaddressed_messages_are_dropped() {
        let (senders, inbox) = inbox(8, 1);
        let counters = Counters::default();
        let mut peer = InboundPeer::new(2, 1, &counters, &senders);
        assert_eq!(peer.deliver(chunk()).await, Delivery::Delivered);
        assert_eq!(peer.deliver(small(2, 1)).await, Delivery::Delivered);
        assert_eq!(peer.deliver(small(3, 2)).await, Delivery::Misaddressed);
        let mut buf = Vec::new();
        assert_eq!(inbox.recv(&mut buf, 10).await, Ok(2));
        assert_eq!(counters.snapshot().received, 2);
        assert_eq!(counters.snapshot().dropped_misaddressed, 1);
        drop(senders);
        inbox.close().await;
        assert_eq!(inbox.recv(&mut buf, 10).await, Err(TransportClosed));
    }
}
