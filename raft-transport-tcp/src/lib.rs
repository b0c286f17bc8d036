//! A TCP [`Transport`] for raft-core.
//!
//! Each node listens on one address and keeps one long-lived outbound connection to each peer;
//! a connection carries traffic in one direction only (connector to acceptor). Frames use the
//! wire format of [`raft_core::wire`]. A connection starts with a handshake: the connecting
//! node sends `Hello` (wire version, cluster id, node id) and the acceptor answers `HelloAck`
//! or `Refused` with a typed reason.
//!
//! **TLS (optional).** With [`TcpConfig::tls`] set, every connection is mutual TLS 1.3 (rustls
//! with ring, ALPN [`TLS_ALPN`]) with the QUIC transport's certificate rules (see `raft-tls`):
//! the connector verifies the acceptor as `node-<peer>.<cluster_id>` against the cluster CA;
//! the acceptor requires a client certificate from that CA whose identity is a known peer and
//! matches the node in `Hello`. Plaintext, untrusted, expired and wrong-identity connections
//! are closed and counted (`refused_tls`, `refused_identity`).
//!
//! **Liveness.** The connector sends a `KeepAlive` frame every [`TcpConfig::keep_alive`] and
//! the acceptor answers it; a connection that hears nothing for [`TcpConfig::idle_timeout`]
//! is dropped and re-established (the peer stopped reading, or its host is gone), and the
//! acceptor closes a connection silent that long. Both sockets also get kernel keep-alive
//! probes.
//!
//! **Peers at runtime.** [`Transport::set_peer`] adds a peer or moves one to a new address;
//! [`Transport::remove_peer`] drops its queue, closes its connections and refuses its traffic.
//!
//! Limits: a bounded queue per peer (`send` never blocks; a full queue drops the message), a
//! bounded inbound channel, a hard frame size checked before allocating (a message whose frame
//! would exceed it is dropped by the writer and counted in [`TcpStats::dropped_oversized`]),
//! a connection limit, and timeouts for connecting, handshakes, frames and writes. Messages
//! queued while a peer is unreachable stay queued (up to the bound) until it is back; a batch
//! being written when a connection breaks is lost, which Raft tolerates.
//!
//! **With `RaftNode`.** Start the transport, wrap it in an `Arc` and pass it as the
//! `transport` argument of [`raft_core::RaftNode::start`]; the node closes it on shutdown.
//! `examples/bank` in the workspace shows a whole node.
//!
//! ```no_run
//! # async fn example() -> Result<(), raft_transport_tcp::TcpError> {
//! use std::collections::BTreeMap;
//! use raft_transport_tcp::{TcpConfig, TcpTransport};
//!
//! let peers = BTreeMap::from([(2, "10.0.0.2:7000".parse().unwrap()), (3, "10.0.0.3:7000".parse().unwrap())]);
//! let transport = TcpTransport::start(TcpConfig::new(1, "prod", "10.0.0.1:7000".parse().unwrap(), peers)).await?;
//! // Hand `transport` to `raft_core::RaftNode::start`.
//! # let _ = transport;
//! # Ok(())
//! # }
//! ```
//!
//! With TLS:
//!
//! ```no_run
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! use std::collections::BTreeMap;
//! use raft_transport_tcp::{generate_dev_certs, TcpConfig, TcpTransport};
//!
//! let certs = generate_dev_certs("prod", [1, 2, 3])?;
//! let peers = BTreeMap::from([(2, "10.0.0.2:7000".parse()?), (3, "10.0.0.3:7000".parse()?)]);
//! let config = TcpConfig { tls: certs.tls_config(1), ..TcpConfig::new(1, "prod", "10.0.0.1:7000".parse()?, peers) };
//! let transport = TcpTransport::start(config).await?;
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

use async_trait::async_trait;
use raft_core::{Message, NodeId, PeerError, SendError, Transport, TransportClosed};
use raft_transport_common::inbox::{inbox, Inbox};
use raft_transport_common::peers::{check_change, queued, OwnedTask, PeerChange, PeerTable};
use raft_transport_common::Counters;
use tokio::net::TcpSocket;
use tokio::sync::mpsc;
use tracing::{info, Instrument};

pub use config::{TcpConfig, CLUSTER_ID_BYTES_MAX};
pub use factory::TcpFactory;
pub use raft_tls::{generate_dev_certs, node_identity, DevCa, DevCerts, TlsConfig, TlsError};
pub use raft_transport_common::TransportStats;
pub use tls::TLS_ALPN;

/// The counters of a [`TcpTransport`] (the shared [`TransportStats`]; the TLS counters stay 0
/// without TLS, and `dropped_snapshot_queue_full` always does: TCP has one queue per peer).
pub type TcpStats = TransportStats;

/// The listen backlog.
const LISTEN_BACKLOG: u32 = 1_024;

/// Why a transport could not start.
#[derive(Debug, thiserror::Error)]
pub enum TcpError {
    /// The configuration is inconsistent.
    #[error("invalid TCP transport config: {0}")]
    InvalidConfig(&'static str),
    /// A certificate, key or TLS setting is unusable.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
}

/// Turns on TCP keep-alive probes on `stream`: the kernel probes an idle connection after
/// `interval` and then every `interval`, and fails it when the peer's host no longer answers
/// (the transport's own keep-alive frames also catch a peer process that stopped reading).
/// The kernel counts in whole seconds: shorter intervals are rounded up to one second.
pub(crate) fn set_keepalive(
    stream: &tokio::net::TcpStream,
    interval: std::time::Duration,
) -> std::io::Result<()> {
    let interval = interval.max(std::time::Duration::from_secs(1));
    let keepalive = socket2::TcpKeepalive::new().with_time(interval).with_interval(interval);
    socket2::SockRef::from(stream).set_tcp_keepalive(&keepalive)
}

/// A peer's outbound side: its queue and the writer task that drains it.
#[derive(Debug)]
pub(crate) struct PeerOutbound {
    queue: mpsc::Sender<Message>,
    writer: OwnedTask,
}

/// What the tasks of a transport share.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) config: TcpConfig,
    pub(crate) counters: Counters,
    pub(crate) peers: PeerTable<PeerOutbound>,
    /// The TLS acceptor and connector, when TLS is on.
    pub(crate) tls: Option<tls::Tls>,
    span: tracing::Span,
    /// The runtime the transport started on: peers added later get their tasks there.
    runtime: tokio::runtime::Handle,
}

impl Shared {
    /// Adds `peer` at `addr` with a new queue and writer task, or moves a known one.
    fn set_peer(self: &Arc<Self>, peer: NodeId, addr: SocketAddr) -> PeerChange {
        self.peers.set(peer, addr, |addr| {
            let (queue, rx) = mpsc::channel(self.config.queue_max);
            let writer = self
                .runtime
                .spawn(outbound::writer(self.clone(), peer, addr, rx).instrument(self.span.clone()));
            PeerOutbound { queue, writer: OwnedTask::new(writer) }
        })
    }
}

/// A [`Transport`] over TCP. See the [crate docs](crate).
#[derive(Debug)]
pub struct TcpTransport {
    shared: Arc<Shared>,
    local_addr: SocketAddr,
    inbox: Inbox,
    closed: AtomicBool,
    acceptor: std::sync::Mutex<Option<OwnedTask>>,
}

impl TcpTransport {
    /// Binds the listen address and starts the accept loop and one writer per peer.
    pub async fn start(config: TcpConfig) -> Result<Self, TcpError> {
        config.validate()?;
        let tls = config.tls.as_ref().map(tls::Tls::new).transpose()?;
        let listen = config.listen;
        let listener = (|| {
            let socket = if listen.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
            socket.set_reuseaddr(true)?;
            socket.bind(listen)?;
            socket.listen(LISTEN_BACKLOG)
        })()
        .map_err(|source| TcpError::Listen { addr: listen, source })?;
        let local_addr = listener.local_addr().map_err(|source| TcpError::Listen { addr: listen, source })?;
        let span = tracing::info_span!("tcp_transport", node = config.node_id, %local_addr);
        let (inbox_tx, inbox) = inbox(config.inbound_queue_max, config.snapshot_queue_max);
        let peers = config.peers.clone();
        let shared = Arc::new(Shared {
            config,
            counters: Counters::default(),
            peers: PeerTable::default(),
            tls,
            span,
            runtime: tokio::runtime::Handle::current(),
        });
        for (peer, addr) in peers {
            shared.set_peer(peer, addr);
        }
        let acceptor = tokio::spawn(
            inbound::accept_loop(listener, shared.clone(), inbox_tx).instrument(shared.span.clone()),
        );
        Ok(Self {
            shared,
            local_addr,
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
    pub fn stats(&self) -> TcpStats {
        self.shared.counters.snapshot()
    }

    /// Replaces the TLS material (rotated certificates, key or CA) for every connection made
    /// or accepted from now on; open connections keep their session. Refused with
    /// [`TcpError::InvalidConfig`] on a transport started without TLS.
    pub fn reload_tls(&self, tls: &TlsConfig) -> Result<(), TcpError> {
        match &self.shared.tls {
            Some(current) => Ok(current.replace(tls)?),
            None => Err(TcpError::InvalidConfig("the transport was started without TLS")),
        }
    }
}

#[async_trait]
impl Transport for TcpTransport {
    fn send(&self, message: Message) -> Result<(), SendError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(SendError::Closed);
        }
        let to = message.to;
        let sent = self.shared.peers.with_outbound(to, |peer| match peer.queue.try_send(message) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(_)) => {
                Counters::add(&self.shared.counters.dropped_queue_full, 1);
                Err(SendError::QueueFull(to))
            }
            Err(mpsc::error::TrySendError::Closed(_)) => Err(SendError::Closed),
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
            // Aborting the accept loop drops the listener and every inbound connection task.
            acceptor.stop().await;
        }
        for peer in self.shared.peers.drain() {
            peer.writer.stop().await;
        }
        // Every sender of the inbox was owned by a stopped task, so a pending `recv` returns.
        self.inbox.close().await;
    }

    fn set_peer(&self, id: NodeId, addr: SocketAddr) -> Result<(), PeerError> {
        check_change(self.closed.load(Ordering::Acquire), self.shared.config.node_id, id)?;
        let change = self.shared.set_peer(id, addr);
        info!(peer = id, %addr, ?change, "peer set");
        Ok(())
    }

    fn remove_peer(&self, id: NodeId) -> Result<(), PeerError> {
        check_change(self.closed.load(Ordering::Acquire), self.shared.config.node_id, id)?;
        // Dropping the outbound side aborts its writer (closing its connection); the peer's
        // inbound connection sees the removal and closes.
        let removed = self.shared.peers.remove(id).ok_or(PeerError::UnknownPeer(id))?;
        Counters::add(&self.shared.counters.dropped_peer_removed, queued(&removed.queue));
        info!(peer = id, "peer removed");
        Ok(())
    }
}

impl Drop for TcpTransport {
    fn drop(&mut self) {
        // Dropping the handles aborts the tasks (which hold the shared state: no cycle left).
        drop(self.shared.peers.drain());
        drop(self.acceptor.get_mut().map(Option::take));
    }
}
