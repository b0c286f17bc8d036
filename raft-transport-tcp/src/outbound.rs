//! One writer task per peer: connects (bound to the node's own listen IP), handshakes, then
//! writes queued messages in coalesced batches; reconnects with capped exponential backoff and
//! jitter. Messages stay queued while the peer is unreachable, up to the queue bound.

use std::net::SocketAddr;
use std::sync::Arc;

use raft_core::{Message, NodeId};
use raft_transport_common::handshake::{connect_hello, ConnectHelloError};
use raft_transport_common::outbound::{fill_batch, Backoff, Batching};
use raft_transport_common::peers::moved;
use raft_transport_common::Counters;
use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::TcpSocket;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::tls::{BoxStream, TlsConnectError};
use crate::Shared;

/// Why a connection attempt failed.
#[derive(Debug, thiserror::Error)]
enum ConnectError {
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    #[error("connect timed out")]
    Timeout,
    #[error(transparent)]
    Tls(#[from] TlsConnectError),
    #[error(transparent)]
    Hello(#[from] ConnectHelloError),
}

/// Runs the writer of `peer` until its queue closes or the task is aborted.
pub(crate) async fn writer(
    shared: Arc<Shared>,
    peer: NodeId,
    mut addr: watch::Receiver<SocketAddr>,
    mut queue: mpsc::Receiver<Message>,
) {
    let config = &shared.config;
    let mut backoff = Backoff::new(config.node_id, peer, config.backoff_min, config.backoff_max);
    let mut connected_before = false;
    let mut buf = Vec::with_capacity(64 * 1024);
    let batching = Batching {
        max_frame_bytes: config.max_frame_bytes,
        batch_bytes_max: config.write_batch_bytes_max,
        coalesce: true,
    };
    loop {
        let target = *addr.borrow_and_update();
        let stream = match connect(&shared, peer, target).await {
            Ok(halves) => halves,
            Err(error) => {
                Counters::add(&shared.counters.connect_failures, 1);
                if let ConnectError::Hello(ConnectHelloError::Refused(reason)) = &error {
                    warn!(peer, addr = %target, %reason, "peer refused our handshake");
                } else {
                    debug!(peer, addr = %target, %error, "connect failed");
                }
                tokio::select! {
                    _ = tokio::time::sleep(backoff.failed()) => {}
                    // A new address is worth trying at once.
                    moved = moved(&mut addr) => if !moved { return },
                }
                continue;
            }
        };
        backoff.reset();
        if connected_before {
            Counters::add(&shared.counters.reconnects, 1);
        }
        connected_before = true;
        info!(peer, addr = %target, "connected");
        let (mut reader, mut writer) = stream;
        let mut scratch = [0u8; 64];
        loop {
            let first = tokio::select! {
                message = queue.recv() => message,
                // The acceptor sends nothing after HelloAck: any read result means the
                // connection is gone (or the peer misbehaves).
                _ = reader.read(&mut scratch) => {
                    debug!(peer, "connection closed by the peer");
                    break;
                }
                moved = moved(&mut addr) => {
                    if !moved {
                        return; // the peer was removed
                    }
                    info!(peer, addr = %*addr.borrow(), "peer moved; reconnecting");
                    break;
                }
            };
            let Some(first) = first else {
                return; // the transport is shutting down
            };
            let batched = fill_batch(&shared.counters, batching, peer, first, &mut queue, &mut buf);
            if buf.is_empty() {
                continue;
            }
            let write = async {
                writer.write_all(&buf).await?;
                writer.flush().await
            };
            match tokio::time::timeout(config.write_timeout, write).await {
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
        tokio::time::sleep(backoff.min()).await;
    }
}

/// A connection's two halves.
type Halves = (ReadHalf<BoxStream>, WriteHalf<BoxStream>);

/// Connects to `peer` from the node's own listen IP and completes the TLS handshake (when on)
/// and the `Hello` exchange.
async fn connect(shared: &Shared, peer: NodeId, addr: SocketAddr) -> Result<Halves, ConnectError> {
    let config = &shared.config;
    let socket = if addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    socket.set_nodelay(true)?;
    if config.listen.is_ipv4() == addr.is_ipv4() {
        // Traffic leaves from this node's own address on a multi-homed host.
        socket.bind(SocketAddr::new(config.listen.ip(), 0))?;
    }
    let stream = tokio::time::timeout(config.connect_timeout, socket.connect(addr))
        .await
        .map_err(|_| ConnectError::Timeout)??;
    let deadline = Instant::now() + config.handshake_timeout;
    let stream: BoxStream = match &shared.tls {
        None => Box::new(stream),
        Some(tls) => tokio::time::timeout_at(deadline, tls.connect(stream, &config.cluster_id, peer))
            .await
            .map_err(|_| ConnectError::Timeout)??,
    };
    let (mut reader, mut writer) = tokio::io::split(stream);
    connect_hello(&mut reader, &mut writer, &config.cluster_id, config.node_id, peer, deadline).await?;
    Ok((reader, writer))
}
