//! Mutual TLS: rustls configurations from PEM and node identities from certificates.

use std::sync::Arc;

use raft_core::NodeId;
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::certs::parse_node_identity;
use crate::QuicError;

/// The ALPN protocol both sides require.
pub(crate) const ALPN: &[u8] = b"raft-quic/1";

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn tls(what: &'static str) -> impl FnOnce(rustls::Error) -> QuicError {
    move |e| QuicError::Tls { what, reason: e.to_string() }
}

fn pem(what: &'static str) -> impl FnOnce(rustls_pki_types::pem::Error) -> QuicError {
    move |e| QuicError::Tls { what, reason: e.to_string() }
}

/// The quinn server and client configurations of a node.
pub(crate) fn configs(
    ca_cert_pem: &str,
    cert_pem: &str,
    key_pem: &str,
    transport: Arc<quinn::TransportConfig>,
) -> Result<(quinn::ServerConfig, quinn::ClientConfig), QuicError> {
    let mut roots = RootCertStore::empty();
    for ca in CertificateDer::pem_slice_iter(ca_cert_pem.as_bytes()) {
        roots.add(ca.map_err(pem("CA certificate"))?).map_err(tls("CA certificate"))?;
    }
    if roots.is_empty() {
        return Err(QuicError::Tls { what: "CA certificate", reason: "no certificate in PEM".to_owned() });
    }
    let roots = Arc::new(roots);
    let chain = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(pem("node certificate"))?;
    if chain.is_empty() {
        return Err(QuicError::Tls { what: "node certificate", reason: "no certificate in PEM".to_owned() });
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(pem("node key"))?;

    let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider())
        .build()
        .map_err(|e| QuicError::Tls { what: "client verifier", reason: e.to_string() })?;
    let mut server = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls("server config"))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain.clone(), key.clone_key())
        .map_err(tls("server certificate"))?;
    server.alpn_protocols = vec![ALPN.to_vec()];
    let server = quinn::crypto::rustls::QuicServerConfig::try_from(server)
        .map_err(|e| QuicError::Tls { what: "server config", reason: e.to_string() })?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(server));
    server.transport_config(transport.clone());

    let mut client = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls("client config"))?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .map_err(tls("client certificate"))?;
    client.alpn_protocols = vec![ALPN.to_vec()];
    let client = quinn::crypto::rustls::QuicClientConfig::try_from(client)
        .map_err(|e| QuicError::Tls { what: "client config", reason: e.to_string() })?;
    let mut client = quinn::ClientConfig::new(Arc::new(client));
    client.transport_config(transport);
    Ok((server, client))
}

/// Why a peer's certificate does not name a node of this cluster.
#[derive(Debug, thiserror::Error)]
pub(crate) enum IdentityError {
    /// The connection has no certificate (cannot happen with client auth required).
    #[error("no peer certificate")]
    NoCertificate,
    /// The certificate could not be parsed.
    #[error("unparsable peer certificate: {0}")]
    Unparsable(String),
    /// No DNS name of the certificate is `node-<id>.<cluster_id>`.
    #[error("certificate names {names:?} carry no node identity of cluster {cluster_id:?}")]
    NoIdentity {
        /// The DNS names the certificate carries.
        names: Vec<String>,
        /// This node's cluster.
        cluster_id: String,
    },
    /// The certificate names several nodes.
    #[error("certificate names several nodes: {0:?}")]
    Ambiguous(Vec<NodeId>),
}

/// The node id the peer's (already verified) certificate carries.
pub(crate) fn peer_node_id(
    connection: &quinn::Connection,
    cluster_id: &str,
) -> Result<NodeId, IdentityError> {
    let identity = connection.peer_identity().ok_or(IdentityError::NoCertificate)?;
    let chain =
        identity.downcast::<Vec<CertificateDer<'static>>>().map_err(|_| IdentityError::NoCertificate)?;
    let leaf = chain.first().ok_or(IdentityError::NoCertificate)?;
    let cert = webpki::EndEntityCert::try_from(leaf).map_err(|e| IdentityError::Unparsable(e.to_string()))?;
    let names: Vec<String> = cert.valid_dns_names().map(str::to_owned).collect();
    let mut ids: Vec<NodeId> = names.iter().filter_map(|n| parse_node_identity(cluster_id, n)).collect();
    ids.sort_unstable();
    ids.dedup();
    match ids.as_slice() {
        [id] => Ok(*id),
        [] => Err(IdentityError::NoIdentity { names, cluster_id: cluster_id.to_owned() }),
        _ => Err(IdentityError::Ambiguous(ids)),
    }
}
