//! The TCP transport: the transport conformance suite, and a Raft cluster over TCP.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use raft_core::testing::transport_suite::{self, Capabilities, RawTcp, TransportFactory};
use raft_core::{NodeId, Transport};
use raft_transport_tcp::{TcpConfig, TcpTransport};

const CLUSTER_ID: &str = "suite";

/// TCP transports with short timeouts, so the timeout cases run quickly.
struct TcpFactory;

impl TcpFactory {
    fn config(id: NodeId, addrs: &BTreeMap<NodeId, SocketAddr>) -> TcpConfig {
        let peers = addrs.iter().filter(|(&p, _)| p != id).map(|(&p, &a)| (p, a)).collect();
        TcpConfig {
            queue_max: 1_024,
            handshake_timeout: Duration::from_millis(800),
            frame_timeout: Duration::from_millis(800),
            max_inbound_connections: 6,
            backoff_min: Duration::from_millis(10),
            backoff_max: Duration::from_millis(200),
            ..TcpConfig::new(id, CLUSTER_ID, addrs[&id], peers)
        }
    }
}

#[async_trait]
impl TransportFactory for TcpFactory {
    fn capabilities(&self) -> Capabilities {
        let config = Self::config(1, &BTreeMap::from([(1, "127.0.0.1:1".parse().expect("addr"))]));
        Capabilities {
            max_frame_bytes: Some(config.max_frame_bytes),
            raw_tcp: Some(RawTcp {
                cluster_id: CLUSTER_ID.to_owned(),
                handshake_timeout: config.handshake_timeout,
                frame_timeout: config.frame_timeout,
                max_inbound_connections: config.max_inbound_connections,
            }),
        }
    }

    async fn start(&self, id: NodeId, addrs: &BTreeMap<NodeId, SocketAddr>) -> Arc<dyn Transport> {
        Arc::new(TcpTransport::start(Self::config(id, addrs)).await.expect("transport starts"))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_transport_passes_the_conformance_suite() {
    transport_suite::run_all(&TcpFactory).await;
}
