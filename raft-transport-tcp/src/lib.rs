//! A TCP [`Transport`] for raft-core.
//!
//! Each node listens on one address and keeps one long-lived outbound connection to each peer;
//! a connection carries traffic in one direction only (connector to acceptor). Frames use the
//! wire format of [`raft_core::wire`]. A connection starts with a handshake: the connecting
//! node sends `Hello` (wire version, cluster id, node id) and the acceptor answers `HelloAck`
//! or `Refused` with a typed reason.
//!
//! Limits: a bounded queue per peer (`send` never blocks; a full queue drops the message), a
//! bounded inbound channel, a hard frame size checked before allocating (a message whose frame
//! would exceed it is dropped by the writer and counted in [`TcpStats::dropped_oversized`]),
//! a connection limit, and timeouts for connecting, handshakes, frames and writes. Messages
//! queued while a peer is unreachable stay queued (up to the bound) until it is back; a batch
//! being written when a connection breaks is lost, which Raft tolerates.
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

mod config;
mod inbound;
mod io;
mod outbound;
mod stats;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use raft_core::{Message, NodeId, SendError, Transport, TransportClosed};
use tokio::net::TcpSocket;
use tokio::sync::{mpsc, watch, Mutex};
use tokio::task::JoinHandle;
use tracing::Instrument;

pub use config::{TcpConfig, CLUSTER_ID_BYTES_MAX};
pub use stats::TcpStats;

use stats::Counters;

/// The listen backlog.
const LISTEN_BACKLOG: u32 = 1_024;

/// Why a transport could not start.
#[derive(Debug, thiserror::Error)]
pub enum TcpError {
    /// The configuration is inconsistent.
    #[error("invalid TCP transport config: {0}")]
    InvalidConfig(&'static str),
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
    pub(crate) config: TcpConfig,
    pub(crate) counters: Counters,
    /// Per peer, the generation of its latest inbound connection; older ones close.
    pub(crate) generations: BTreeMap<NodeId, watch::Sender<u64>>,
}

/// A [`Transport`] over TCP. See the [crate docs](crate).
#[derive(Debug)]
pub struct TcpTransport {
    shared: Arc<Shared>,
    local_addr: SocketAddr,
    queues: BTreeMap<NodeId, mpsc::Sender<Message>>,
    inbox: Mutex<mpsc::Receiver<Message>>,
    closed: AtomicBool,
    tasks: std::sync::Mutex<Vec<JoinHandle<()>>>,
}

impl TcpTransport {
    /// Binds the listen address and starts the accept loop and one writer per peer.
    pub async fn start(config: TcpConfig) -> Result<Self, TcpError> {
        config.validate()?;
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
        let (inbox_tx, inbox_rx) = mpsc::channel(config.inbound_queue_max);
        let generations = config.peers.keys().map(|&peer| (peer, watch::Sender::new(0))).collect();
        let shared = Arc::new(Shared { config, counters: Counters::default(), generations });
        let mut tasks = Vec::new();
        let mut queues = BTreeMap::new();
        for (&peer, &addr) in &shared.config.peers {
            let (tx, rx) = mpsc::channel(shared.config.queue_max);
            queues.insert(peer, tx);
            tasks.push(tokio::spawn(
                outbound::writer(shared.clone(), peer, addr, rx).instrument(span.clone()),
            ));
        }
        tasks.push(tokio::spawn(inbound::accept_loop(listener, shared.clone(), inbox_tx).instrument(span)));
        Ok(Self {
            shared,
            local_addr,
            queues,
            inbox: Mutex::new(inbox_rx),
            closed: AtomicBool::new(false),
            tasks: std::sync::Mutex::new(tasks),
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
}

#[async_trait]
impl Transport for TcpTransport {
    fn send(&self, message: Message) -> Result<(), SendError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(SendError::Closed);
        }
        let to = message.to;
        let queue = self.queues.get(&to).ok_or(SendError::UnknownPeer(to))?;
        queue.try_send(message).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => {
                Counters::add(&self.shared.counters.dropped_queue_full, 1);
                SendError::QueueFull(to)
            }
            mpsc::error::TrySendError::Closed(_) => SendError::Closed,
        })
    }

    async fn recv(&self, buf: &mut Vec<Message>, max: usize) -> Result<usize, TransportClosed> {
        let mut inbox = self.inbox.lock().await;
        match inbox.recv_many(buf, max.max(1)).await {
            0 => Err(TransportClosed),
            n => Ok(n),
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
            // Aborted tasks drop their sockets and the listener; a task that ended by itself
            // (or panicked) has nothing left to clean up.
            let _ = task.await;
        }
        // Every sender of the inbox was owned by an aborted task, so a pending `recv` returns.
        self.inbox.lock().await.close();
    }
}

impl Drop for TcpTransport {
    fn drop(&mut self) {
        if let Ok(tasks) = self.tasks.get_mut() {
            for task in tasks.iter() {
                task.abort();
            }
        }
    }
}
