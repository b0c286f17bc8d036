//! quinn configurations from the shared mutual-TLS set-up of `raft-tls`, and the node id of a
//! connection's verified peer certificate.

use std::sync::Arc;

use raft_core::NodeId;
use raft_tls::{node_id_from_chain, rustls_configs, IdentityError, TlsConfig};
use rustls_pki_types::CertificateDer;

use crate::QuicError;

/// The ALPN protocol both sides of a connection require.
pub const QUIC_ALPN: &[u8] = b"raft-quic/1";

/// The quinn server and client configurations of a node.
pub(crate) fn configs(
    tls: &TlsConfig,
    transport: Arc<quinn::TransportConfig>,
) -> Result<(quinn::ServerConfig, quinn::ClientConfig), QuicError> {
    let (server, client) = rustls_configs(tls, QUIC_ALPN)?;
    let quic = |what: &'static str| {
        move |e: quinn::crypto::rustls::NoInitialCipherSuite| QuicError::Tls { what, reason: e.to_string() }
    };
    let server = quinn::crypto::rustls::QuicServerConfig::try_from(server).map_err(quic("server config"))?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(server));
    server.transport_config(transport.clone());
    let client = quinn::crypto::rustls::QuicClientConfig::try_from(client).map_err(quic("client config"))?;
    let mut client = quinn::ClientConfig::new(Arc::new(client));
    client.transport_config(transport);
    Ok((server, client))
}

/// The node id the peer's (already verified) certificate carries.
pub(crate) fn peer_node_id(
    connection: &quinn::Connection,
    cluster_id: &str,
) -> Result<NodeId, IdentityError> {
    let identity = connection.peer_identity().ok_or(IdentityError::NoCertificate)?;
    let chain =
        identity.downcast::<Vec<CertificateDer<'static>>>().map_err(|_| IdentityError::NoCertificate)?;
    node_id_from_chain(&chain, cluster_id)
}
