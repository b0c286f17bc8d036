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
//! **Peers at runtime.** [`Transport::set_peer`] adds a peer or moves one to a new address;
//! [`Transport::remove_peer`] drops its queues, closes its connections and refuses its
//! traffic (a certificate of a node that is not a peer is refused).
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

mod config;
mod factory;
mod inbound;
mod outbound;
mod tls;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use raft_core::{Message, NodeId, Payload, PeerError, SendError, Transport, TransportClosed};
use raft_transport_common::inbox::{inbox, Inbox};
use raft_transport_common::peers::{check_change, queued, OwnedTask, PeerChange, PeerTable};
use raft_transport_common::Counters;
use tokio::sync::mpsc;
use tracing::{info, Instrument};

pub use config::QuicConfig;
pub use factory::QuicFactory;
pub use raft_tls::{
    generate_dev_certs, node_identity, parse_node_identity, CertError, DevCa, DevCerts, IdentityError,
    TlsConfig, TlsError,
};
pub use raft_transport_common::TransportStats;
pub use tls::QUIC_ALPN;

/// The counters of a [`QuicTransport`] (the shared [`TransportStats`]).
pub type QuicStats = TransportStats;

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

/// A peer's outbound side: its two queues and the task that connects and writes them.
#[derive(Debug)]
pub(crate) struct PeerOutbound {
    small: mpsc::Sender<Message>,
    snapshot: mpsc::Sender<Message>,
    task: OwnedTask,
}

impl From<TlsError> for QuicError {
    fn from(error: TlsError) -> Self {
        Self::Tls { what: error.what, reason: error.reason }
    }
}

/// What the tasks of a transport share.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) config: QuicConfig,
    /// The client side of new connections (replaced by [`QuicTransport::reload_tls`]).
    pub(crate) client_config: std::sync::RwLock<quinn::ClientConfig>,
    /// The QUIC transport settings both sides' configurations carry.
    transport_config: Arc<quinn::TransportConfig>,
    pub(crate) counters: Counters,
    pub(crate) peers: PeerTable<PeerOutbound>,
    span: tracing::Span,
    /// The runtime the transport started on: peers added later get their tasks there.
    runtime: tokio::runtime::Handle,
}

impl Shared {
    /// Adds `peer` at `addr` with new queues and a connection task, or moves a known one.
    fn set_peer(self: &Arc<Self>, endpoint: &quinn::Endpoint, peer: NodeId, addr: SocketAddr) -> PeerChange {
        self.peers.set(peer, addr, |addr| {
            let (small, small_rx) = mpsc::channel(self.config.queue_max);
            let (snapshot, snapshot_rx) = mpsc::channel(self.config.snapshot_queue_max);
            let task = outbound::run(self.clone(), endpoint.clone(), peer, addr, small_rx, snapshot_rx);
            let task = OwnedTask::new(self.runtime.spawn(task.instrument(self.span.clone())));
            PeerOutbound { small, snapshot, task }
        })
    }
}

/// A [`Transport`] over QUIC with mutual TLS. See the [crate docs](crate).
#[derive(Debug)]
pub struct QuicTransport {
    shared: Arc<Shared>,
    local_addr: SocketAddr,
    endpoint: std::sync::Mutex<Option<quinn::Endpoint>>,
    inbox: Inbox,
    closed: AtomicBool,
    acceptor: std::sync::Mutex<Option<OwnedTask>>,
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
        let tls = TlsConfig {
            ca_cert_pem: config.ca_cert_pem.clone(),
            cert_pem: config.cert_pem.clone(),
            key_pem: config.key_pem.clone(),
        };
        let transport_config = Arc::new(transport);
        let (server, client) = tls::configs(&tls, transport_config.clone())?;
        let listen = config.listen;
        let socket = bind(listen).await?;
        let mut endpoint = quinn::Endpoint::new(
            quinn::EndpointConfig::default(),
            Some(server),
            socket,
            Arc::new(quinn::TokioRuntime),
        )
        .map_err(|source| QuicError::Listen { addr: listen, source })?;
        endpoint.set_default_client_config(client.clone());
        let local_addr =
            endpoint.local_addr().map_err(|source| QuicError::Listen { addr: listen, source })?;
        let span = tracing::info_span!("quic_transport", node = config.node_id, %local_addr);
        let (inbox_tx, inbox) = inbox(config.inbound_queue_max, config.snapshot_queue_max);
        let peers = config.peers.clone();
        let shared = Arc::new(Shared {
            config,
            client_config: std::sync::RwLock::new(client),
            transport_config,
            counters: Counters::default(),
            peers: PeerTable::default(),
            span,
            runtime: tokio::runtime::Handle::current(),
        });
        for (peer, addr) in peers {
            shared.set_peer(&endpoint, peer, addr);
        }
        let acceptor = tokio::spawn(
            inbound::accept_loop(endpoint.clone(), shared.clone(), inbox_tx).instrument(shared.span.clone()),
        );
        Ok(Self {
            shared,
            local_addr,
            endpoint: std::sync::Mutex::new(Some(endpoint)),
            inbox,
            closed: AtomicBool::new(false),
            acceptor: std::sync::Mutex::new(Some(OwnedTask::new(acceptor))),
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

    /// Replaces the TLS material (rotated certificates, key or CA) for every connection made
    /// or accepted from now on; open connections keep their session.
    pub fn reload_tls(&self, tls: &TlsConfig) -> Result<(), QuicError> {
        let (server, client) = tls::configs(tls, self.shared.transport_config.clone())?;
        if let Some(endpoint) =
            self.endpoint.lock().unwrap_or_else(std::sync::PoisonError::into_inner).as_ref()
        {
            endpoint.set_server_config(Some(server));
        }
        *self.shared.client_config.write().unwrap_or_else(std::sync::PoisonError::into_inner) = client;
        Ok(())
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
        let counters = &self.shared.counters;
        let sent = self.shared.peers.with_outbound(to, |peer| {
            let (queue, dropped) = match message.payload {
                Payload::InstallSnapshot { .. } => (&peer.snapshot, &counters.dropped_snapshot_queue_full),
                _ => (&peer.small, &counters.dropped_queue_full),
            };
            match queue.try_send(message) {
                Ok(()) => Ok(()),
                Err(mpsc::error::TrySendError::Full(_)) => {
                    Counters::add(dropped, 1);
                    Err(SendError::QueueFull(to))
                }
                Err(mpsc::error::TrySendError::Closed(_)) => Err(SendError::Closed),
            }
        });
        sent.unwrap_or(Err(SendError::UnknownPeer(to)))
    }

    async fn recv(&self, buf: &mut Vec<Message>, max: usize) -> Result<usize, TransportClosed> {
        self.inbox.recv(buf, max).await
    }

    async fn shutdown(&self) {
        self.closed.store(true, Ordering::Release);
        let acceptor = self.acceptor.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take();
        if let Some(acceptor) = acceptor {
            // Aborting the accept loop drops every inbound connection task.
            acceptor.stop().await;
        }
        for peer in self.shared.peers.drain() {
            peer.task.stop().await;
        }
        let endpoint = self.endpoint.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take();
        if let Some(endpoint) = endpoint {
            endpoint.close(close_codes::SHUTDOWN.into(), b"shutdown");
            // Let peers learn of the close; bounded, since a peer may be gone.
            let _ = tokio::time::timeout(Duration::from_millis(500), endpoint.wait_idle()).await;
        }
        // Every sender of the inbox was owned by a stopped task, so a pending `recv` returns.
        self.inbox.close().await;
    }

    fn set_peer(&self, id: NodeId, addr: SocketAddr) -> Result<(), PeerError> {
        check_change(self.closed.load(Ordering::Acquire), self.shared.config.node_id, id)?;
        let endpoint = self.endpoint.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
        let endpoint = endpoint.ok_or(PeerError::Closed)?;
        let change = self.shared.set_peer(&endpoint, id, addr);
        info!(peer = id, %addr, ?change, "peer set");
        Ok(())
    }

    fn remove_peer(&self, id: NodeId) -> Result<(), PeerError> {
        check_change(self.closed.load(Ordering::Acquire), self.shared.config.node_id, id)?;
        // Dropping the outbound side aborts its task (closing its connection); the peer's
        // inbound connection sees the removal and closes.
        let removed = self.shared.peers.remove(id).ok_or(PeerError::UnknownPeer(id))?;
        let dropped = queued(&removed.small) + queued(&removed.snapshot);
        Counters::add(&self.shared.counters.dropped_peer_removed, dropped);
        info!(peer = id, "peer removed");
        Ok(())
    }
}

impl Drop for QuicTransport {
    fn drop(&mut self) {
        // Dropping the handles aborts the tasks (which hold the shared state: no cycle left).
        drop(self.shared.peers.drain());
        drop(self.acceptor.get_mut().map(Option::take));
        if let Ok(Some(endpoint)) = self.endpoint.get_mut().map(Option::take) {
            endpoint.close(close_codes::SHUTDOWN.into(), b"dropped");
        }
    }
}
