//! [`QuicFactory`]: QUIC transports with default settings for raft-core's testing kit (the
//! cluster suite, the snapshot measurement, the transport benchmark).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use async_trait::async_trait;
use raft_core::testing::transport_suite::{Capabilities, TransportFactory};
use raft_core::{NodeId, Transport};
use raft_tls::DevCerts;

use crate::{QuicConfig, QuicTransport};

/// Starts [`QuicTransport`]s with [`QuicConfig::new`]'s defaults and the certificates of
/// `certs` (which must cover every node started).
#[derive(Debug, Clone)]
pub struct QuicFactory {
    /// The cluster's certificates; their cluster id is the transports'.
    pub certs: DevCerts,
}

impl QuicFactory {
    /// The configuration of node `id` among `addrs`; `None` without a certificate for it.
    pub fn config(&self, id: NodeId, addrs: &BTreeMap<NodeId, SocketAddr>) -> Option<QuicConfig> {
        let peers = addrs.iter().filter(|(&p, _)| p != id).map(|(&p, &a)| (p, a)).collect();
        let (cert, key) = self.certs.nodes.get(&id)?.clone();
        let certs = &self.certs;
        Some(QuicConfig::new(id, &certs.cluster_id, addrs[&id], peers, &certs.ca_cert_pem, cert, key))
    }
}

#[async_trait]
impl TransportFactory for QuicFactory {
    fn capabilities(&self) -> Capabilities {
        Capabilities { max_frame_bytes: Some(raft_core::wire::DEFAULT_MAX_FRAME_BYTES), raw_tcp: None }
    }

    /// Panics when the transport cannot start (it is for tests and benchmarks).
    async fn start(&self, id: NodeId, addrs: &BTreeMap<NodeId, SocketAddr>) -> Arc<dyn Transport> {
        let Some(config) = self.config(id, addrs) else {
            panic!("no certificate for node {id}");
        };
        match QuicTransport::start(config).await {
            Ok(transport) => Arc::new(transport),
            Err(error) => panic!("QUIC transport of node {id} does not start: {error}"),
        }
    }
}
