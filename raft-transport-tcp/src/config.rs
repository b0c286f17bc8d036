//! [`TcpConfig`]: addresses, limits and timeouts of a [`TcpTransport`](crate::TcpTransport).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use raft_core::wire::DEFAULT_MAX_FRAME_BYTES;
use raft_core::NodeId;
use raft_tls::TlsConfig;

use crate::TcpError;

/// The longest cluster id, in bytes (it must fit in a handshake frame).
pub const CLUSTER_ID_BYTES_MAX: usize = 256;

/// The settings of a [`TcpTransport`](crate::TcpTransport). Build with [`TcpConfig::new`] and
/// override limits with struct update syntax.
#[derive(Debug, Clone)]
pub struct TcpConfig {
    /// This node's id.
    pub node_id: NodeId,
    /// The cluster's id; connections from other clusters are refused.
    pub cluster_id: String,
    /// The address this node listens on. Outbound connections are bound to its IP.
    pub listen: SocketAddr,
    /// The other nodes and their listen addresses; only they may connect.
    pub peers: BTreeMap<NodeId, SocketAddr>,
    /// The most messages queued for one peer; more are dropped.
    pub queue_max: usize,
    /// The most received messages waiting for [`recv`](raft_core::Transport::recv); when full,
    /// connections stop reading (TCP pushes back on the senders). Received `InstallSnapshot`
    /// messages wait in a queue of `snapshot_queue_max`.
    pub inbound_queue_max: usize,
    /// The most received `InstallSnapshot` messages waiting for `recv`.
    pub snapshot_queue_max: usize,
    /// The hard limit on a frame's body, in bytes.
    pub max_frame_bytes: u32,
    /// The most bytes one coalesced write holds (a single larger message is written alone).
    pub write_batch_bytes_max: usize,
    /// How long a connection attempt may take.
    pub connect_timeout: Duration,
    /// How long a handshake may take, on either side.
    pub handshake_timeout: Duration,
    /// How long a frame may take to arrive once its first byte has.
    pub frame_timeout: Duration,
    /// How long one coalesced write may take before the connection is dropped.
    pub write_timeout: Duration,
    /// The most established inbound connections, and the most handshakes in progress from
    /// addresses that are not peers' hosts; more are closed at once. Handshakes from one
    /// address are bounded too (see `raft_transport_common::admission`).
    pub max_inbound_connections: usize,
    /// How often the connecting side sends a keep-alive frame (answered by the acceptor), and
    /// the idle time and interval of the kernel's TCP keep-alive probes.
    pub keep_alive: Duration,
    /// How long a connection may stay silent before it is considered dead: the acceptor closes
    /// a connection that sent no frame (message or keep-alive) for this long; the connector
    /// reconnects when no keep-alive answer came for this long (the peer stopped reading, or
    /// its host is gone). A receiver that does not drain `recv` for this long looks dead too.
    pub idle_timeout: Duration,
    /// The first delay before reconnecting to a peer.
    pub backoff_min: Duration,
    /// The longest delay between reconnection attempts.
    pub backoff_max: Duration,
    /// Mutual TLS (the QUIC transport's settings: a cluster CA, each node's certificate
    /// naming `node-<id>.<cluster_id>`), or `None` for plaintext. Every node of a cluster must
    /// use the same choice: a TLS node refuses plaintext connections and the other way round.
    pub tls: Option<TlsConfig>,
}

impl TcpConfig {
    /// A configuration with default limits and timeouts.
    pub fn new(
        node_id: NodeId,
        cluster_id: impl Into<String>,
        listen: SocketAddr,
        peers: BTreeMap<NodeId, SocketAddr>,
    ) -> Self {
        Self {
            node_id,
            cluster_id: cluster_id.into(),
            listen,
            peers,
            queue_max: 4_096,
            inbound_queue_max: 16_384,
            snapshot_queue_max: 16,
            max_frame_bytes: DEFAULT_MAX_FRAME_BYTES,
            write_batch_bytes_max: 1024 * 1024,
            connect_timeout: Duration::from_secs(3),
            handshake_timeout: Duration::from_secs(3),
            frame_timeout: Duration::from_secs(10),
            write_timeout: Duration::from_secs(10),
            max_inbound_connections: 64,
            keep_alive: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(5),
            backoff_min: Duration::from_millis(20),
            backoff_max: Duration::from_secs(2),
            tls: None,
        }
    }

    /// Checks the limits together.
    pub fn validate(&self) -> Result<(), TcpError> {
        let bad = |what: &'static str| Err(TcpError::InvalidConfig(what));
        if self.cluster_id.is_empty() || self.cluster_id.len() > CLUSTER_ID_BYTES_MAX {
            return bad("cluster_id must be 1 to 256 bytes long");
        }
        if self.tls.is_some() && !raft_tls::is_valid_cluster_id(&self.cluster_id) {
            return bad("with TLS, cluster_id must be a DNS name: lowercase letters, digits, '-' and '.'");
        }
        if self.peers.contains_key(&self.node_id) {
            return bad("peers must not contain the node itself");
        }
        if self.queue_max == 0 || self.inbound_queue_max == 0 || self.snapshot_queue_max == 0 {
            return bad("queue_max, inbound_queue_max and snapshot_queue_max must be positive");
        }
        if self.max_frame_bytes < 1024 {
            return bad("max_frame_bytes must be at least 1024");
        }
        if self.write_batch_bytes_max == 0 {
            return bad("write_batch_bytes_max must be positive");
        }
        if self.max_inbound_connections == 0 {
            return bad("max_inbound_connections must be positive");
        }
        let timeouts = [
            self.connect_timeout,
            self.handshake_timeout,
            self.frame_timeout,
            self.write_timeout,
            self.keep_alive,
            self.idle_timeout,
        ];
        if timeouts.iter().any(Duration::is_zero) {
            return bad("timeouts must be positive");
        }
        if self.keep_alive >= self.idle_timeout {
            return bad("keep_alive must be shorter than idle_timeout");
        }
        if self.backoff_min.is_zero() || self.backoff_min > self.backoff_max {
            return bad("backoff_min must be positive and at most backoff_max");
        }
        Ok(())
    }
}
