//! One task per peer: connects (TLS, then `Hello`), then writes the small-message queue and
//! the snapshot queue on two separate unidirectional streams; reconnects with capped
//! exponential backoff and jitter. Messages stay queued while the peer is unreachable, up to
//! the queue bounds.

use std::net::SocketAddr;
use std::sync::Arc;

use raft_core::{Message, NodeId};
use raft_transport_common::handshake::{connect_hello, ConnectHelloError};
use raft_transport_common::io::ReadError;
use raft_transport_common::outbound::{fill_batch, Backoff, Batching};
use raft_transport_common::peers::moved;
use raft_transport_common::Counters;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::{close_codes, Shared};
use raft_tls::node_identity;

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
    /// The `Hello` exchange failed (refused, timed out, broken).
    #[error(transparent)]
    Hello(#[from] ConnectHelloError),
}

/// Why a connection's writers stopped.
enum Stopped {
    /// The transport is shutting down (a queue closed).
    Shutdown,
    /// The connection or a stream failed.
    Broken(String),
    /// The peer's address changed.
    Moved,
}

/// Runs the connection to `peer` until its queues close or the task is aborted.
pub(crate) async fn run(
    shared: Arc<Shared>,
    endpoint: quinn::Endpoint,
    peer: NodeId,
    mut addr: watch::Receiver<SocketAddr>,
    mut small: mpsc::Receiver<Message>,
    mut snapshot: mpsc::Receiver<Message>,
) {
    let config = &shared.config;
    let mut backoff = Backoff::new(config.node_id, peer, config.backoff_min, config.backoff_max);
    let mut connected_before = false;
    let mut small_buf = Vec::with_capacity(64 * 1024);
    let mut snapshot_buf = Vec::new();
    loop {
        let target = *addr.borrow_and_update();
        let connection = match connect(&shared, &endpoint, peer, target).await {
            Ok(connection) => connection,
            Err(error) => {
                Counters::add(&shared.counters.connect_failures, 1);
                match &error {
                    // Refusals by the peer (its Hello check, its certificate checks, our check
                    // of its certificate) are configuration problems: say so loudly.
                    ConnectError::Hello(ConnectHelloError::Refused(_))
                    | ConnectError::Connection(
                        quinn::ConnectionError::TransportError(_)
                        | quinn::ConnectionError::ConnectionClosed(_)
                        | quinn::ConnectionError::ApplicationClosed(_),
                    ) => warn!(peer, addr = %target, %error, "connection refused"),
                    _ => debug!(peer, addr = %target, %error, "connect failed"),
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
        let small_batching = Batching {
            max_frame_bytes: config.max_frame_bytes,
            batch_bytes_max: WRITE_BATCH_BYTES_MAX,
            coalesce: true,
        };
        let snapshot_batching = Batching { coalesce: false, ..small_batching };
        // Biased: a move is handled before more messages go to the old address.
        let stopped = tokio::select! {
            biased;
            moved = moved(&mut addr) => if moved { Stopped::Moved } else { Stopped::Shutdown },
            stopped = write_stream(&shared, peer, &connection, &mut small, &mut small_buf, small_batching) => stopped,
            stopped = write_stream(&shared, peer, &connection, &mut snapshot, &mut snapshot_buf, snapshot_batching) => stopped,
            error = connection.closed() => Stopped::Broken(error.to_string()),
        };
        match stopped {
            Stopped::Shutdown => {
                connection.close(close_codes::SHUTDOWN.into(), b"shutdown");
                return;
            }
            Stopped::Broken(reason) => debug!(peer, %reason, "connection lost"),
            Stopped::Moved => {
                info!(peer, addr = %*addr.borrow(), "peer moved; reconnecting");
                connection.close(close_codes::SHUTDOWN.into(), b"moved");
            }
        }
        // Do not reconnect in a tight loop to a peer that accepts and closes at once.
        tokio::time::sleep(backoff.min()).await;
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
    batching: Batching,
) -> Stopped {
    let mut stream = match connection.open_uni().await {
        Ok(stream) => stream,
        Err(error) => return Stopped::Broken(error.to_string()),
    };
    loop {
        let Some(first) = queue.recv().await else {
            let _ = stream.finish();
            return Stopped::Shutdown;
        };
        let batched = fill_batch(&shared.counters, batching, peer, first, queue, buf);
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
    let client = shared.client_config.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
    let connecting = endpoint.connect_with(client, addr, &node_identity(&config.cluster_id, peer))?;
    let connection = tokio::time::timeout_at(deadline, connecting)
        .await
        .map_err(|_| ConnectError::Hello(ConnectHelloError::Timeout))??;
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
        .map_err(|_| ConnectError::Hello(ConnectHelloError::Timeout))??;
    let result =
        connect_hello(&mut recv, &mut send, &config.cluster_id, config.node_id, peer, deadline).await;
    let _ = send.finish();
    result.map_err(|error| match (error, connection.close_reason()) {
        // The peer closed the connection (say, it refused our certificate): that says more.
        (
            ConnectHelloError::Read(ReadError::Closed | ReadError::Truncated | ReadError::Io(_)),
            Some(closed),
        ) => ConnectError::Connection(closed),
        (error, _) => ConnectError::Hello(error),
    })
}
