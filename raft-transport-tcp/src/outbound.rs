//! One writer task per peer: connects (bound to the node's own listen IP), handshakes, then
//! writes queued messages in coalesced batches; reconnects with capped exponential backoff and
//! jitter. Messages stay queued while the peer is unreachable, up to the queue bound.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::BytesMut;
use raft_core::wire::{
    encode_frame, FrameDecoder, WireError, WireMessage, HANDSHAKE_MAX_FRAME_BYTES, WIRE_VERSION,
};
use raft_core::{Message, NodeId, SeededRng};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::io::{read_frame, write_frame};
use crate::stats::Counters;
use crate::Shared;

/// Why a connection attempt failed.
#[derive(Debug, thiserror::Error)]
enum ConnectError {
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    #[error("timed out")]
    Timeout,
    #[error("refused by the peer: {0}")]
    Refused(raft_core::wire::RefusalReason),
    #[error("handshake failed: {0}")]
    Handshake(String),
}

/// Runs the writer of `peer` until its queue closes or the task is aborted.
pub(crate) async fn writer(
    shared: Arc<Shared>,
    peer: NodeId,
    addr: SocketAddr,
    mut queue: mpsc::Receiver<Message>,
) {
    let config = &shared.config;
    let mut rng = SeededRng::new(jitter_seed(config.node_id, peer));
    let mut backoff = config.backoff_min;
    let mut connected_before = false;
    let mut buf = Vec::with_capacity(64 * 1024);
    loop {
        let stream = match connect(&shared, peer, addr).await {
            Ok(stream) => stream,
            Err(error) => {
                debug!(peer, %addr, %error, ?backoff, "connect failed");
                if let ConnectError::Refused(reason) = &error {
                    warn!(peer, %addr, %reason, "peer refused our handshake");
                }
                let jittered = backoff.mul_f64(0.5 + rng.range(0, 1_000) as f64 / 2_000.0);
                tokio::time::sleep(jittered).await;
                backoff = (backoff * 2).min(config.backoff_max);
                continue;
            }
        };
        backoff = config.backoff_min;
        if connected_before {
            Counters::add(&shared.counters.reconnects, 1);
        }
        connected_before = true;
        info!(peer, %addr, "connected");
        let (mut reader, mut writer) = stream.into_split();
        let mut scratch = [0u8; 64];
        loop {
            buf.clear();
            if buf.capacity() > 4 * config.write_batch_bytes_max {
                // A message near the frame limit grew the buffer: give the memory back.
                buf.shrink_to(config.write_batch_bytes_max);
            }
            let first = tokio::select! {
                message = queue.recv() => message,
                // The acceptor sends nothing after HelloAck: any read result means the
                // connection is gone (or the peer misbehaves).
                _ = reader.read(&mut scratch) => {
                    debug!(peer, "connection closed by the peer");
                    break;
                }
            };
            let Some(first) = first else {
                return; // the transport is shutting down
            };
            let mut batched = encode(&shared, peer, first, &mut buf);
            while buf.len() < config.write_batch_bytes_max {
                match queue.try_recv() {
                    Ok(message) => batched += encode(&shared, peer, message, &mut buf),
                    Err(_) => break,
                }
            }
            if buf.is_empty() {
                continue;
            }
            match tokio::time::timeout(config.write_timeout, writer.write_all(&buf)).await {
                Ok(Ok(())) => Counters::add(&shared.counters.sent, batched),
                Ok(Err(error)) => {
                    debug!(peer, %error, dropped = batched, "write failed");
                    break;
                }
                Err(_) => {
                    warn!(peer, dropped = batched, "write timed out");
                    break;
                }
            }
        }
        // Do not reconnect in a tight loop to a peer that accepts and closes at once.
        tokio::time::sleep(config.backoff_min).await;
    }
}

/// Appends `message`'s frame to `buf`; returns 1, or 0 when the message was dropped.
fn encode(shared: &Shared, peer: NodeId, message: Message, buf: &mut Vec<u8>) -> u64 {
    match encode_frame(&WireMessage::Raft(message), shared.config.max_frame_bytes, buf) {
        Ok(()) => 1,
        Err(error @ WireError::FrameTooLarge { .. }) => {
            Counters::add(&shared.counters.dropped_oversized, 1);
            warn!(peer, %error, "message over the frame limit dropped");
            0
        }
        Err(error) => {
            warn!(peer, %error, "message could not be encoded; dropped");
            0
        }
    }
}

/// Connects to `peer` from the node's own listen IP and completes the handshake.
async fn connect(shared: &Shared, peer: NodeId, addr: SocketAddr) -> Result<TcpStream, ConnectError> {
    let config = &shared.config;
    let socket = if addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    socket.set_nodelay(true)?;
    if config.listen.is_ipv4() == addr.is_ipv4() {
        // Traffic leaves from this node's own address on a multi-homed host.
        socket.bind(SocketAddr::new(config.listen.ip(), 0))?;
    }
    let mut stream = tokio::time::timeout(config.connect_timeout, socket.connect(addr))
        .await
        .map_err(|_| ConnectError::Timeout)??;
    let deadline = Instant::now() + config.handshake_timeout;
    let hello = WireMessage::Hello {
        version: WIRE_VERSION,
        cluster_id: config.cluster_id.clone(),
        node_id: config.node_id,
    };
    tokio::time::timeout_at(deadline, write_frame(&mut stream, &hello, HANDSHAKE_MAX_FRAME_BYTES))
        .await
        .map_err(|_| ConnectError::Timeout)??;
    let decoder = FrameDecoder::new(HANDSHAKE_MAX_FRAME_BYTES);
    let mut buf = BytesMut::with_capacity(256);
    let reply = read_frame(&mut stream, &mut buf, &decoder, Some(deadline), config.handshake_timeout)
        .await
        .map_err(|e| ConnectError::Handshake(e.to_string()))?;
    match reply {
        WireMessage::HelloAck { version: WIRE_VERSION, node_id } if node_id == peer => Ok(stream),
        WireMessage::Refused { reason } => Err(ConnectError::Refused(reason)),
        _ => Err(ConnectError::Handshake("unexpected answer to Hello".to_owned())),
    }
}

/// A seed for reconnection jitter that differs between nodes, peers and runs.
fn jitter_seed(node: NodeId, peer: NodeId) -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    nanos ^ node.rotate_left(32) ^ peer.wrapping_mul(0x9E37_79B9_7F4A_7C15)
}
