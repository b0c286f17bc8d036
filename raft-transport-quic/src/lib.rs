//! A QUIC [`Transport`] for raft-core, with mutual TLS.
//!
//! Each node runs one quinn endpoint on its listen address, used both to accept connections
//! and to connect to peers (so traffic leaves from the node's own address). A node keeps one
//! outbound connection per peer; a connection carries traffic in one direction only.
//!
//! **Identity.** Every node has a certificate signed by the cluster CA whose DNS subject
//! alternative name is `node-<id>.<cluster_id>` ([`node_identity`]). The acceptor requires a
//! client certificate signed by the CA and checks that its identity is a known peer of this
//! cluster; the connector verifies the acceptor's certificate against the CA with the server
//! name `node-<peer>.<cluster_id>`. Untrusted, expired and wrong-identity certificates fail
//! the connection, which is closed with a logged reason and counted in [`QuicStats`].
//!
//! **Handshake.** On the first bidirectional stream the connector sends the wire format's
//! `Hello` (version, cluster id, node id, which must match the certificate) and the acceptor
//! answers `HelloAck` or `Refused`, as over TCP ([`raft_core::wire`]).
//!
//! **Streams.** Small Raft messages travel on one long-lived unidirectional stream per
//! connection, `InstallSnapshot` messages on a second one: QUIC's per-stream flow control
//! means a large snapshot transfer does not hold up heartbeats. Frames use the wire format's
//! length prefix and size limit. Each stream class has its own bounded queue per peer
//! (`send` never blocks; a full queue drops and counts). Connections are re-established with
//! capped exponential backoff and jitter; queued messages wait (up to the bound) meanwhile.
//!
//! Dev certificates: [`generate_dev_certs`].
//!
//! ```no_run
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! use std::collections::BTreeMap;
//! use raft_transport_quic::{generate_dev_certs, QuicConfig, QuicTransport};
//!
//! let certs = generate_dev_certs("prod", [1, 2, 3])?;
//! let (cert, key) = certs.nodes[&1].clone();
//! let peers = BTreeMap::from([(2, "10.0.0.2:7000".parse()?), (3, "10.0.0.3:7000".parse()?)]);
//! let config = QuicConfig::new(1, "prod", "10.0.0.1:7000".parse()?, peers, &certs.ca_cert_pem, cert, key);
//! let transport = QuicTransport::start(config).await?;
//! // Hand `transport` to `raft_core::RaftNode::start`.
//! # let _ = transport;
//! # Ok(())
//! # }
//! ```

mod certs;
mod config;
mod inbound;
mod io;
mod outbound;
mod stats;
mod tls;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use raft_core::{Message, NodeId, Payload, SendError, Transport, TransportClosed};
use tokio::sync::{mpsc, watch, Mutex};
use tokio::task::JoinHandle;
use tracing::Instrument;

pub use certs::{generate_dev_certs, node_identity, parse_node_identity, CertError, DevCa, DevCerts};
pub use config::QuicConfig;
pub use stats::QuicStats;

use stats::Counters;

/// QUIC application close codes this transport uses.
pub mod close_codes {
    /// The transport is shutting down.
    pub const SHUTDOWN: u32 = 0;
    /// The peer's certificate does not carry the identity of a known node of this cluster.
    pub const BAD_IDENTITY: u32 = 1;
    /// The `Hello` was refused (wrong cluster, unknown node, unsupported version).
    pub const REFUSED: u32 = 2;
    /// The peer broke the protocol (bad frame, missing handshake, timeout).
    pub const PROTOCOL: u32 = 3;
    /// A newer connection from the same node replaces this one.
    pub const SUPERSEDED: u32 = 4;
}

/// How long `start` retries binding an address still held by a previous endpoint.
const BIND_RETRY_MAX: Duration = Duration::from_secs(5);

/// Why a transport could not start.
#[derive(Debug, thiserror::Error)]
pub enum QuicError {
    /// The configuration is inconsistent.
    #[error("invalid QUIC transport config: {0}")]
    InvalidConfig(&'static str),
    /// A certificate, key or TLS setting is unusable.
    #[error("TLS setup failed ({what}): {reason}")]
    Tls {
        /// Which part.
        what: &'static str,
        /// What rustls reported.
        reason: String,
    },
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
}

/// What the tasks of a transport share.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) config: QuicConfig,
    pub(crate) counters: Counters,
    /// Per peer, the generation of its latest inbound connection; older ones close.
    pub(crate) generations: BTreeMap<NodeId, watch::Sender<u64>>,
}

/// A peer's two outbound queues.
#[derive(Debug)]
struct Queues {
    small: mpsc::Sender<Message>,
    snapshot: mpsc::Sender<Message>,
}

/// The receiving ends of the inbound channels: small messages and `InstallSnapshot` chunks
/// have separate bounds, so queued chunks cannot take the memory of thousands of messages.
#[derive(Debug)]
struct Inbox {
    small: mpsc::Receiver<Message>,
    snapshot: mpsc::Receiver<Message>,
}

/// The sending ends of the inbound channels, one pair shared by every inbound stream.
#[derive(Debug, Clone)]
pub(crate) struct InboxSenders {
    pub(crate) small: mpsc::Sender<Message>,
    pub(crate) snapshot: mpsc::Sender<Message>,
}

impl InboxSenders {
    /// Queues a received message on its channel, waiting while it is full; false once the
    /// transport is shutting down.
    pub(crate) async fn send(&self, message: Message) -> bool {
        let channel = match message.payload {
            Payload::InstallSnapshot { .. } => &self.snapshot,
            _ => &self.small,
        };
        channel.send(message).await.is_ok()
    }
}

/// A [`Transport`] over QUIC with mutual TLS. See the [crate docs](crate).
#[derive(Debug)]
pub struct QuicTransport {
    shared: Arc<Shared>,
    local_addr: SocketAddr,
    endpoint: std::sync::Mutex<Option<quinn::Endpoint>>,
    queues: BTreeMap<NodeId, Queues>,
    inbox: Mutex<Inbox>,
    closed: AtomicBool,
    tasks: std::sync::Mutex<Vec<JoinHandle<()>>>,
}

impl QuicTransport {
    /// Binds the listen address and starts the accept loop and one connection task per peer.
    pub async fn start(config: QuicConfig) -> Result<Self, QuicError> {
        config.validate()?;
        let mut transport = quinn::TransportConfig::default();
        transport
            .keep_alive_interval(Some(config.keep_alive))
            .max_idle_timeout(Some(
                quinn::IdleTimeout::try_from(config.idle_timeout)
                    .map_err(|_| QuicError::InvalidConfig("idle_timeout is too long"))?,
            ))
            // Per connection: the handshake stream, then the two long-lived streams (a few
            // more are tolerated while a reconnecting peer's old streams wind down).
            .max_concurrent_bidi_streams(2u32.into())
            .max_concurrent_uni_streams(8u32.into());
        let (server, client) =
            tls::configs(&config.ca_cert_pem, &config.cert_pem, &config.key_pem, Arc::new(transport))?;
        let listen = config.listen;
        let socket = bind(listen).await?;
        let mut endpoint = quinn::Endpoint::new(
            quinn::EndpointConfig::default(),
            Some(server),
            socket,
            Arc::new(quinn::TokioRuntime),
        )
        .map_err(|source| QuicError::Listen { addr: listen, source })?;
        endpoint.set_default_client_config(client);
        let local_addr =
            endpoint.local_addr().map_err(|source| QuicError::Listen { addr: listen, source })?;
        let span = tracing::info_span!("quic_transport", node = config.node_id, %local_addr);
        let (small_tx, small_rx) = mpsc::channel(config.inbound_queue_max);
        let (snapshot_tx, snapshot_rx) = mpsc::channel(config.snapshot_queue_max);
        let inbox_tx = InboxSenders { small: small_tx, snapshot: snapshot_tx };
        let generations = config.peers.keys().map(|&peer| (peer, watch::Sender::new(0))).collect();
        let shared = Arc::new(Shared { config, counters: Counters::default(), generations });
        let mut tasks = Vec::new();
        let mut queues = BTreeMap::new();
        for (&peer, &addr) in &shared.config.peers {
            let (small, small_rx) = mpsc::channel(shared.config.queue_max);
            let (snapshot, snapshot_rx) = mpsc::channel(shared.config.snapshot_queue_max);
            queues.insert(peer, Queues { small, snapshot });
            tasks.push(tokio::spawn(
                outbound::run(shared.clone(), endpoint.clone(), peer, addr, small_rx, snapshot_rx)
                    .instrument(span.clone()),
            ));
        }
        tasks.push(tokio::spawn(
            inbound::accept_loop(endpoint.clone(), shared.clone(), inbox_tx).instrument(span),
        ));
        Ok(Self {
            shared,
            local_addr,
            endpoint: std::sync::Mutex::new(Some(endpoint)),
            queues,
            inbox: Mutex::new(Inbox { small: small_rx, snapshot: snapshot_rx }),
            closed: AtomicBool::new(false),
            tasks: std::sync::Mutex::new(tasks),
        })
    }

    /// The address the transport listens on (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The transport's counters.
    pub fn stats(&self) -> QuicStats {
        self.shared.counters.snapshot()
    }
}

/// Binds a UDP socket, retrying for a while if a previous endpoint still holds the address.
async fn bind(listen: SocketAddr) -> Result<std::net::UdpSocket, QuicError> {
    let deadline = tokio::time::Instant::now() + BIND_RETRY_MAX;
    loop {
        match std::net::UdpSocket::bind(listen) {
            Ok(socket) => return Ok(socket),
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(source) => return Err(QuicError::Listen { addr: listen, source }),
        }
    }
}

#[async_trait]
impl Transport for QuicTransport {
    fn send(&self, message: Message) -> Result<(), SendError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(SendError::Closed);
        }
        let to = message.to;
        let queues = self.queues.get(&to).ok_or(SendError::UnknownPeer(to))?;
        let (queue, dropped) = match message.payload {
            Payload::InstallSnapshot { .. } => {
                (&queues.snapshot, &self.shared.counters.dropped_snapshot_queue_full)
            }
            _ => (&queues.small, &self.shared.counters.dropped_queue_full),
        };
        queue.try_send(message).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => {
                Counters::add(dropped, 1);
                SendError::QueueFull(to)
            }
            mpsc::error::TrySendError::Closed(_) => SendError::Closed,
        })
    }

    async fn recv(&self, buf: &mut Vec<Message>, max: usize) -> Result<usize, TransportClosed> {
        let mut inbox = self.inbox.lock().await;
        let Inbox { small, snapshot } = &mut *inbox;
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
                // Top up from the other channel so that neither starves the other.
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

    async fn shutdown(&self) {
        self.closed.store(true, Ordering::Release);
        let tasks = match self.tasks.lock() {
            Ok(mut tasks) => std::mem::take(&mut *tasks),
            Err(poisoned) => std::mem::take(&mut *poisoned.into_inner()),
        };
        for task in &tasks {
            task.abort();
        }
        for task in tasks {
            // Aborted tasks drop their connections; one that ended by itself has nothing left.
            let _ = task.await;
        }
        let endpoint = match self.endpoint.lock() {
            Ok(mut endpoint) => endpoint.take(),
            Err(poisoned) => poisoned.into_inner().take(),
        };
        if let Some(endpoint) = endpoint {
            endpoint.close(close_codes::SHUTDOWN.into(), b"shutdown");
            // Let peers learn of the close; bounded, since a peer may be gone.
            let _ = tokio::time::timeout(Duration::from_millis(500), endpoint.wait_idle()).await;
        }
        // Every sender of the inbox was owned by an aborted task, so a pending `recv` returns.
        let mut inbox = self.inbox.lock().await;
        inbox.small.close();
        inbox.snapshot.close();
    }
}

impl Drop for QuicTransport {
    fn drop(&mut self) {
        if let Ok(tasks) = self.tasks.get_mut() {
            for task in tasks.iter() {
                task.abort();
            }
        }
        if let Ok(Some(endpoint)) = self.endpoint.get_mut().map(Option::take) {
            endpoint.close(close_codes::SHUTDOWN.into(), b"dropped");
        }
    }
}
