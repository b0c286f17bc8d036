//! One task per peer: connects (TLS, then `Hello`), then writes the small-message queue and
//! the snapshot queue on two separate unidirectional streams; reconnects with capped
//! exponential backoff and jitter. Messages stay queued while the peer is unreachable, up to
//! the queue bounds.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::BytesMut;
use raft_core::wire::{
    encode_frame, FrameDecoder, RefusalReason, WireError, WireMessage, HANDSHAKE_MAX_FRAME_BYTES,
    WIRE_VERSION,
};
use raft_core::{Message, NodeId, SeededRng};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::certs::node_identity;
use crate::io::{read_frame, write_frame};
use crate::stats::Counters;
use crate::{close_codes, Shared};

/// The most bytes of small messages coalesced into one stream write.
const WRITE_BATCH_BYTES_MAX: usize = 256 * 1024;

/// Why a connection attempt failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ConnectError {
    /// The connection could not be started.
    #[error("cannot connect: {0}")]
    Connect(#[from] quinn::ConnectError),
    /// The QUIC or TLS handshake failed, or the connection broke during `Hello`.
    #[error("connection failed: {0}")]
    Connection(#[from] quinn::ConnectionError),
    /// Connecting took longer than `handshake_timeout`.
    #[error("timed out")]
    Timeout,
    /// The peer refused our `Hello`.
    #[error("refused by the peer: {0}")]
    Refused(RefusalReason),
    /// The `Hello` exchange failed.
    #[error("handshake failed: {0}")]
    Handshake(String),
}

/// Why a connection's writers stopped.
enum Stopped {
    /// The transport is shutting down (a queue closed).
    Shutdown,
    /// The connection or a stream failed.
    Broken(String),
}

/// Runs the connection to `peer` until its queues close or the task is aborted.
pub(crate) async fn run(
    shared: Arc<Shared>,
    endpoint: quinn::Endpoint,
    peer: NodeId,
    addr: SocketAddr,
    mut small: mpsc::Receiver<Message>,
    mut snapshot: mpsc::Receiver<Message>,
) {
    let config = &shared.config;
    let mut rng = SeededRng::new(jitter_seed(config.node_id, peer));
    let mut backoff = config.backoff_min;
    let mut connected_before = false;
    let mut small_buf = Vec::with_capacity(64 * 1024);
    let mut snapshot_buf = Vec::new();
    loop {
        let connection = match connect(&shared, &endpoint, peer, addr).await {
            Ok(connection) => connection,
            Err(error) => {
                Counters::add(&shared.counters.connect_failures, 1);
                match &error {
                    // Refusals by the peer (its Hello check, its certificate checks, our check
                    // of its certificate) are configuration problems: say so loudly.
                    ConnectError::Refused(_)
                    | ConnectError::Connection(
                        quinn::ConnectionError::TransportError(_)
                        | quinn::ConnectionError::ConnectionClosed(_)
                        | quinn::ConnectionError::ApplicationClosed(_),
                    ) => warn!(peer, %addr, %error, "connection refused"),
                    _ => debug!(peer, %addr, %error, ?backoff, "connect failed"),
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
        let stopped = tokio::select! {
            stopped = write_stream(&shared, peer, &connection, &mut small, &mut small_buf, true) => stopped,
            stopped = write_stream(&shared, peer, &connection, &mut snapshot, &mut snapshot_buf, false) => stopped,
            error = connection.closed() => Stopped::Broken(error.to_string()),
        };
        match stopped {
            Stopped::Shutdown => {
                connection.close(close_codes::SHUTDOWN.into(), b"shutdown");
                return;
            }
            Stopped::Broken(reason) => debug!(peer, %reason, "connection lost"),
        }
        // Do not reconnect in a tight loop to a peer that accepts and closes at once.
        tokio::time::sleep(config.backoff_min).await;
    }
}

/// Writes one queue onto its own unidirectional stream of `connection` until either fails.
/// Small messages are coalesced into batches; snapshot messages are written one at a time.
async fn write_stream(
    shared: &Shared,
    peer: NodeId,
    connection: &quinn::Connection,
    queue: &mut mpsc::Receiver<Message>,
    buf: &mut Vec<u8>,
    coalesce: bool,
) -> Stopped {
    let mut stream = match connection.open_uni().await {
        Ok(stream) => stream,
        Err(error) => return Stopped::Broken(error.to_string()),
    };
    loop {
        buf.clear();
        if buf.capacity() > 4 * WRITE_BATCH_BYTES_MAX {
            // A large message grew the buffer: give the memory back.
            buf.shrink_to(WRITE_BATCH_BYTES_MAX);
        }
        let Some(first) = queue.recv().await else {
            let _ = stream.finish();
            return Stopped::Shutdown;
        };
        let mut batched = encode(shared, peer, first, buf);
        while coalesce && buf.len() < WRITE_BATCH_BYTES_MAX {
            match queue.try_recv() {
                Ok(message) => batched += encode(shared, peer, message, buf),
                Err(_) => break,
            }
        }
        if buf.is_empty() {
            continue;
        }
        // A stalled peer is detected by the connection's idle timeout, which fails the write.
        match stream.write_all(buf).await {
            Ok(()) => Counters::add(&shared.counters.sent, batched),
            Err(error) => {
                debug!(peer, %error, dropped = batched, "write failed");
                return Stopped::Broken(error.to_string());
            }
        }
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

/// Connects to `peer`, verifying its certificate against the CA with the server name
/// `node-<peer>.<cluster_id>`, and completes the `Hello` exchange.
pub(crate) async fn connect(
    shared: &Shared,
    endpoint: &quinn::Endpoint,
    peer: NodeId,
    addr: SocketAddr,
) -> Result<quinn::Connection, ConnectError> {
    let config = &shared.config;
    let deadline = Instant::now() + config.handshake_timeout;
    let connecting = endpoint.connect(addr, &node_identity(&config.cluster_id, peer))?;
    let connection =
        tokio::time::timeout_at(deadline, connecting).await.map_err(|_| ConnectError::Timeout)??;
    let result = hello(shared, &connection, peer, deadline).await;
    if result.is_err() {
        connection.close(close_codes::PROTOCOL.into(), b"handshake failed");
    }
    result.map(|()| connection)
}

async fn hello(
    shared: &Shared,
    connection: &quinn::Connection,
    peer: NodeId,
    deadline: Instant,
) -> Result<(), ConnectError> {
    let config = &shared.config;
    let (mut send, mut recv) = tokio::time::timeout_at(deadline, connection.open_bi())
        .await
        .map_err(|_| ConnectError::Timeout)??;
    let hello = WireMessage::Hello {
        version: WIRE_VERSION,
        cluster_id: config.cluster_id.clone(),
        node_id: config.node_id,
    };
    tokio::time::timeout_at(deadline, write_frame(&mut send, &hello, HANDSHAKE_MAX_FRAME_BYTES))
        .await
        .map_err(|_| ConnectError::Timeout)?
        .map_err(|e| ConnectError::Handshake(e.to_string()))?;
    let _ = send.finish();
    let decoder = FrameDecoder::new(HANDSHAKE_MAX_FRAME_BYTES);
    let mut buf = BytesMut::with_capacity(256);
    let reply = read_frame(&mut recv, &mut buf, &decoder, Some(deadline), config.handshake_timeout)
        .await
        .map_err(|e| match connection.close_reason() {
            Some(closed) => ConnectError::Connection(closed),
            None => ConnectError::Handshake(e.to_string()),
        })?;
    match reply {
        WireMessage::HelloAck { version: WIRE_VERSION, node_id } if node_id == peer => Ok(()),
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
