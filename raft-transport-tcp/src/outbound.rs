//! One writer task per peer: connects (bound to the node's own listen IP), handshakes, then
//! writes queued messages in coalesced batches; reconnects with capped exponential backoff and
//! jitter. Messages stay queued while the peer is unreachable, up to the queue bound.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::BytesMut;
use raft_core::wire::{encode_frame, FrameDecoder, WireMessage, HANDSHAKE_MAX_FRAME_BYTES};
use raft_core::{Message, NodeId};
use raft_transport_common::handshake::{connect_hello, kind, ConnectHelloError};
use raft_transport_common::io::read_frame;
use raft_transport_common::outbound::{fill_batch, Backoff, Batching};
use raft_transport_common::peers::moved;
use raft_transport_common::Counters;
use tokio::io::{AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::TcpSocket;
use tokio::sync::{mpsc, watch};
use tokio::time::{Instant, MissedTickBehavior};
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
        match run_connection(&shared, peer, &mut addr, &mut queue, &mut reader, &mut writer, &mut buf).await {
            Ended::Shutdown => return,
            Ended::Broken => {}
        }
        tokio::time::sleep(backoff.min()).await;
    }
}

/// Why a connection's writer stopped.
enum Ended {
    /// The transport is shutting down or the peer was removed.
    Shutdown,
    /// The connection broke, timed out or the peer moved: reconnect.
    Broken,
}

/// What the writer does next.
enum Next {
    Send(Message),
    KeepAlive,
    Stop(Ended),
}

/// Writes queued messages on one established connection, sends a `KeepAlive` every
/// `keep_alive` and expects the acceptor's `KeepAliveAck`s: a connection that hears nothing
/// for `idle_timeout` (the peer stopped reading, or its host is gone) is dropped.
async fn run_connection(
    shared: &Shared,
    peer: NodeId,
    addr: &mut watch::Receiver<SocketAddr>,
    queue: &mut mpsc::Receiver<Message>,
    reader: &mut ReadHalf<BoxStream>,
    writer: &mut WriteHalf<BoxStream>,
    buf: &mut Vec<u8>,
) -> Ended {
    let config = &shared.config;
    let batching = Batching {
        max_frame_bytes: config.max_frame_bytes,
        batch_bytes_max: config.write_batch_bytes_max,
        coalesce: true,
    };
    let decoder = FrameDecoder::new(HANDSHAKE_MAX_FRAME_BYTES);
    let mut answers = BytesMut::new();
    let mut keep_alive = tokio::time::interval_at(Instant::now() + config.keep_alive, config.keep_alive);
    keep_alive.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut keep_alive_seq = 0u64;
    let mut heard_at = Instant::now();
    loop {
        // Biased: a move or a dead connection is handled before more messages are written
        // to a connection that is about to be dropped.
        let next = tokio::select! {
            biased;
            moved = moved(addr) => {
                if !moved {
                    return Ended::Shutdown; // the peer was removed
                }
                info!(peer, addr = %*addr.borrow(), "peer moved; reconnecting");
                Next::Stop(Ended::Broken)
            }
            // `answers` keeps a partial frame across polls, so losing this race loses nothing.
            answer = read_frame(reader, &mut answers, &decoder, None, config.frame_timeout) => match answer {
                Ok(WireMessage::KeepAliveAck { .. }) => {
                    heard_at = Instant::now();
                    continue;
                }
                Ok(other) => {
                    warn!(peer, kind = kind(&other), "unexpected frame from the acceptor; reconnecting");
                    Next::Stop(Ended::Broken)
                }
                Err(error) => {
                    debug!(peer, %error, "connection closed by the peer");
                    Next::Stop(Ended::Broken)
                }
            },
            _ = keep_alive.tick() => Next::KeepAlive,
            _ = tokio::time::sleep_until(heard_at + config.idle_timeout) => {
                Counters::add(&shared.counters.timeouts, 1);
                warn!(peer, idle_timeout = ?config.idle_timeout, "no answer from the peer; reconnecting");
                Next::Stop(Ended::Broken)
            }
            message = queue.recv() => match message {
                Some(message) => Next::Send(message),
                None => Next::Stop(Ended::Shutdown),
            },
        };
        let batched = match next {
            Next::Stop(ended) => return ended,
            Next::Send(first) => fill_batch(&shared.counters, batching, peer, first, queue, buf),
            Next::KeepAlive => {
                buf.clear();
                keep_alive_seq += 1;
                let frame = WireMessage::KeepAlive { seq: keep_alive_seq };
                if let Err(error) = encode_frame(&frame, HANDSHAKE_MAX_FRAME_BYTES, buf) {
                    warn!(peer, %error, "keep-alive could not be encoded");
                    continue;
                }
                0
            }
        };
        if buf.is_empty() {
            continue;
        }
        let write = async {
            writer.write_all(buf).await?;
            writer.flush().await
        };
        match tokio::time::timeout(config.write_timeout, write).await {
            Ok(Ok(())) => Counters::add(&shared.counters.sent, batched),
            Ok(Err(error)) => {
                debug!(peer, %error, dropped = batched, "write failed");
                return Ended::Broken;
            }
            Err(_) => {
                Counters::add(&shared.counters.timeouts, 1);
                warn!(peer, dropped = batched, "write timed out");
                return Ended::Broken;
            }
        }
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
    crate::set_keepalive(&stream, config.keep_alive)?;
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
