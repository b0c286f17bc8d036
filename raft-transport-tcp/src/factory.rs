//! [`TcpFactory`]: TCP transports with default settings for raft-core's testing kit (the
//! cluster suite, the snapshot measurement, the transport benchmark).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use async_trait::async_trait;
use raft_core::testing::transport_suite::{Capabilities, TransportFactory};
use raft_core::{NodeId, Transport};
use raft_tls::DevCerts;

use crate::{TcpConfig, TcpTransport};

/// Starts [`TcpTransport`]s with [`TcpConfig::new`]'s defaults, over TLS when `certs` is set.
#[derive(Debug, Clone)]
pub struct TcpFactory {
    /// The cluster id (with TLS, the one the certificates name).
    pub cluster_id: String,
    /// Certificates for every node started, or `None` for plaintext.
    pub certs: Option<DevCerts>,
}

impl TcpFactory {
    /// The configuration of node `id` among `addrs`.
    pub fn config(&self, id: NodeId, addrs: &BTreeMap<NodeId, SocketAddr>) -> TcpConfig {
        let peers = addrs.iter().filter(|(&p, _)| p != id).map(|(&p, &a)| (p, a)).collect();
        let tls = self.certs.as_ref().and_then(|certs| certs.tls_config(id));
        TcpConfig { tls, ..TcpConfig::new(id, self.cluster_id.clone(), addrs[&id], peers) }
    }
}

#[async_trait]
impl TransportFactory for TcpFactory {
    fn capabilities(&self) -> Capabilities {
        Capabilities { max_frame_bytes: Some(raft_core::wire::DEFAULT_MAX_FRAME_BYTES), raw_tcp: None }
    }

    /// Panics when the transport cannot start (it is for tests and benchmarks).
    async fn start(&self, id: NodeId, addrs: &BTreeMap<NodeId, SocketAddr>) -> Arc<dyn Transport> {
        match TcpTransport::start(self.config(id, addrs)).await {
            Ok(transport) => Arc::new(transport),
            Err(error) => panic!("TCP transport of node {id} does not start: {error}"),
        }
    }
}
