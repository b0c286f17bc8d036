//! [`QuicConfig`]: identity, addresses, limits and timeouts of a [`QuicTransport`](crate::QuicTransport).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use raft_core::wire::DEFAULT_MAX_FRAME_BYTES;
use raft_core::NodeId;

use crate::QuicError;
use raft_tls::is_valid_cluster_id;

/// The settings of a [`QuicTransport`](crate::QuicTransport). Build with [`QuicConfig::new`]
/// and override limits with struct update syntax.
#[derive(Clone)]
pub struct QuicConfig {
    /// This node's id; its certificate must carry the identity `node-<id>.<cluster_id>`.
    pub node_id: NodeId,
    /// The cluster's id (a DNS name suffix); connections from other clusters are refused.
    pub cluster_id: String,
    /// The UDP address this node listens on; outbound connections leave from it too.
    pub listen: SocketAddr,
    /// The other nodes and their listen addresses; only they may connect.
    pub peers: BTreeMap<NodeId, SocketAddr>,
    /// The cluster CA certificate (PEM) that signs every node certificate.
    pub ca_cert_pem: String,
    /// This node's certificate chain (PEM).
    pub cert_pem: String,
    /// This node's private key (PEM).
    pub key_pem: String,
    /// The most small Raft messages queued for one peer; more are dropped.
    pub queue_max: usize,
    /// The most `InstallSnapshot` messages queued for one peer (more are dropped), and the
    /// most received ones waiting for `recv`.
    pub snapshot_queue_max: usize,
    /// The most received small messages waiting for [`recv`](raft_core::Transport::recv);
    /// when full, streams stop reading (QUIC flow control pushes back on the senders).
    /// Received `InstallSnapshot` messages wait in a queue of `snapshot_queue_max`.
    pub inbound_queue_max: usize,
    /// The most inbound connections (including unfinished handshakes) kept at once; more are
    /// refused.
    pub max_inbound_connections: usize,
    /// The hard limit on a frame's body, in bytes.
    pub max_frame_bytes: u32,
    /// How often an idle connection sends a keep-alive.
    pub keep_alive: Duration,
    /// How long a connection may stay silent before it is considered dead.
    pub idle_timeout: Duration,
    /// How long connecting, TLS and the `Hello` exchange may take together.
    pub handshake_timeout: Duration,
    /// How long a frame may take to arrive once its first byte has.
    pub frame_timeout: Duration,
    /// The first delay before reconnecting to a peer.
    pub backoff_min: Duration,
    /// The longest delay between reconnection attempts.
    pub backoff_max: Duration,
}

impl std::fmt::Debug for QuicConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The private key stays out of logs.
        f.debug_struct("QuicConfig")
            .field("node_id", &self.node_id)
            .field("cluster_id", &self.cluster_id)
            .field("listen", &self.listen)
            .field("peers", &self.peers)
            .field("queue_max", &self.queue_max)
            .field("snapshot_queue_max", &self.snapshot_queue_max)
            .field("inbound_queue_max", &self.inbound_queue_max)
            .field("max_inbound_connections", &self.max_inbound_connections)
            .field("max_frame_bytes", &self.max_frame_bytes)
            .field("keep_alive", &self.keep_alive)
            .field("idle_timeout", &self.idle_timeout)
            .field("handshake_timeout", &self.handshake_timeout)
            .field("frame_timeout", &self.frame_timeout)
            .field("backoff_min", &self.backoff_min)
            .field("backoff_max", &self.backoff_max)
            .finish_non_exhaustive()
    }
}

impl QuicConfig {
    /// A configuration with default limits and timeouts.
    pub fn new(
        node_id: NodeId,
        cluster_id: impl Into<String>,
        listen: SocketAddr,
        peers: BTreeMap<NodeId, SocketAddr>,
        ca_cert_pem: impl Into<String>,
        cert_pem: impl Into<String>,
        key_pem: impl Into<String>,
    ) -> Self {
        Self {
            node_id,
            cluster_id: cluster_id.into(),
            listen,
            peers,
            ca_cert_pem: ca_cert_pem.into(),
            cert_pem: cert_pem.into(),
            key_pem: key_pem.into(),
            queue_max: 4_096,
            snapshot_queue_max: 16,
            inbound_queue_max: 16_384,
            max_inbound_connections: 64,
            max_frame_bytes: DEFAULT_MAX_FRAME_BYTES,
            keep_alive: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(5),
            handshake_timeout: Duration::from_secs(3),
            frame_timeout: Duration::from_secs(10),
            backoff_min: Duration::from_millis(20),
            backoff_max: Duration::from_secs(2),
        }
    }

    /// Checks the limits together.
    pub fn validate(&self) -> Result<(), QuicError> {
        let bad = |what: &'static str| Err(QuicError::InvalidConfig(what));
        if !is_valid_cluster_id(&self.cluster_id) {
            return bad("cluster_id must be a DNS name: lowercase letters, digits, '-' and '.'");
        }
        if self.peers.contains_key(&self.node_id) {
            return bad("peers must not contain the node itself");
        }
        if self.queue_max == 0 || self.snapshot_queue_max == 0 || self.inbound_queue_max == 0 {
            return bad("queue_max, snapshot_queue_max and inbound_queue_max must be positive");
        }
        if self.max_inbound_connections == 0 {
            return bad("max_inbound_connections must be positive");
        }
        if self.max_frame_bytes < 1024 {
            return bad("max_frame_bytes must be at least 1024");
        }
        let timeouts = [self.keep_alive, self.idle_timeout, self.handshake_timeout, self.frame_timeout];
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
