//! rustls configurations from PEM, and node identities from verified certificates.

use std::sync::Arc;

use raft_core::NodeId;
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::certs::parse_node_identity;

/// A node's TLS material, PEM-encoded: the cluster CA it trusts, its certificate chain
/// (identity `node-<id>.<cluster_id>`) and its private key.
#[derive(Clone)]
pub struct TlsConfig {
    /// The cluster CA certificate that signs every node certificate.
    pub ca_cert_pem: String,
    /// This node's certificate chain.
    pub cert_pem: String,
    /// This node's private key.
    pub key_pem: String,
}

impl std::fmt::Debug for TlsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The private key stays out of logs.
        f.debug_struct("TlsConfig").finish_non_exhaustive()
    }
}

/// A certificate, key or TLS setting is unusable.
#[derive(Debug, Clone, thiserror::Error)]
#[error("TLS setup failed ({what}): {reason}")]
pub struct TlsError {
    /// Which part (`"CA certificate"`, `"node key"`, ...).
    pub what: &'static str,
    /// What rustls reported.
    pub reason: String,
}

pub(crate) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

pub(crate) fn error<E: std::fmt::Display>(what: &'static str) -> impl FnOnce(E) -> TlsError {
    move |e| TlsError { what, reason: e.to_string() }
}

/// The rustls server and client configurations of a node: TLS 1.3, mutual authentication
/// against the CA of `tls`, ALPN `alpn` required on both sides.
pub fn rustls_configs(
    tls: &TlsConfig,
    alpn: &[u8],
) -> Result<(rustls::ServerConfig, rustls::ClientConfig), TlsError> {
    let mut roots = RootCertStore::empty();
    for ca in CertificateDer::pem_slice_iter(tls.ca_cert_pem.as_bytes()) {
        roots.add(ca.map_err(error("CA certificate"))?).map_err(error("CA certificate"))?;
    }
    if roots.is_empty() {
        return Err(TlsError { what: "CA certificate", reason: "no certificate in PEM".to_owned() });
    }
    let roots = Arc::new(roots);
    let chain = CertificateDer::pem_slice_iter(tls.cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(error("node certificate"))?;
    if chain.is_empty() {
        return Err(TlsError { what: "node certificate", reason: "no certificate in PEM".to_owned() });
    }
    let key = PrivateKeyDer::from_pem_slice(tls.key_pem.as_bytes()).map_err(error("node key"))?;

    let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider())
        .build()
        .map_err(error("client verifier"))?;
    let mut server = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(error("server config"))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain.clone(), key.clone_key())
        .map_err(error("server certificate"))?;
    server.alpn_protocols = vec![alpn.to_vec()];

    let mut client = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(error("client config"))?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .map_err(error("client certificate"))?;
    client.alpn_protocols = vec![alpn.to_vec()];
    Ok((server, client))
}

/// Checks, before anything listens, that `tls` can serve node `node_id` of `cluster_id`: the
/// PEM blocks parse, the key belongs to the certificate, the certificate is valid now, is
/// signed by the CA and names exactly this node. Each mistake would otherwise start a node
/// that no peer accepts, with the reason logged only on the peers.
pub fn check_own_material(tls: &TlsConfig, cluster_id: &str, node_id: NodeId) -> Result<(), TlsError> {
    rustls_configs(tls, b"check")?;
    let mut roots = RootCertStore::empty();
    for ca in CertificateDer::pem_slice_iter(tls.ca_cert_pem.as_bytes()) {
        roots.add(ca.map_err(error("CA certificate"))?).map_err(error("CA certificate"))?;
    }
    let chain = CertificateDer::pem_slice_iter(tls.cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(error("node certificate"))?;
    let (leaf, intermediates) =
        chain.split_first().ok_or(TlsError { what: "node certificate", reason: "no certificate".into() })?;
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
        .build()
        .map_err(error("client verifier"))?;
    verifier
        .verify_client_cert(leaf, intermediates, rustls_pki_types::UnixTime::now())
        .map_err(|e| TlsError { what: "node certificate", reason: format!("not accepted by the CA: {e}") })?;
    match node_id_from_chain(&chain, cluster_id) {
        Ok(id) if id == node_id => Ok(()),
        Ok(id) => Err(TlsError {
            what: "node certificate",
            reason: format!("it names node {id} of cluster {cluster_id:?}, this node is {node_id}"),
        }),
        Err(e) => Err(TlsError { what: "node certificate", reason: e.to_string() }),
    }
}

/// Why a peer's certificate does not name a node of this cluster.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
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

/// The node id that the leaf of a peer's (already verified) certificate `chain` carries.
pub fn node_id_from_chain(chain: &[CertificateDer<'_>], cluster_id: &str) -> Result<NodeId, IdentityError> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generate_dev_certs;

    #[test]
    fn configs_build_and_identities_are_read_from_certificates() {
        let certs = generate_dev_certs("test", [1, 2]).expect("certs");
        let tls = certs.tls_config(1).expect("node 1");
        rustls_configs(&tls, b"x").expect("configs");
        let chain: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(tls.cert_pem.as_bytes()).collect::<Result<_, _>>().expect("pem");
        assert_eq!(node_id_from_chain(&chain, "test"), Ok(1));
        assert!(matches!(node_id_from_chain(&chain, "other"), Err(IdentityError::NoIdentity { .. })));
        let bad = TlsConfig { key_pem: "garbage".into(), ..tls };
        assert_eq!(rustls_configs(&bad, b"x").map(|_| ()).map_err(|e| e.what), Err("node key"));
    }

    #[test]
    fn own_material_must_name_this_node_and_chain_to_the_ca() {
        let certs = generate_dev_certs("test", [1, 2]).expect("certs");
        let one = certs.tls_config(1).expect("node 1");
        let two = certs.tls_config(2).expect("node 2");
        check_own_material(&one, "test", 1).expect("valid");
        let reason = |r: Result<(), TlsError>| r.expect_err("refused").reason;
        assert!(reason(check_own_material(&two, "test", 1)).contains("names node 2"));
        assert!(!reason(check_own_material(&one, "other", 1)).is_empty());
        // Node 2's key with node 1's certificate.
        let mismatched = TlsConfig { key_pem: two.key_pem.clone(), ..one.clone() };
        assert!(check_own_material(&mismatched, "test", 1).is_err());
        // Another cluster's CA.
        let foreign = generate_dev_certs("test", [1]).expect("certs").tls_config(1).expect("node 1");
        let wrong_ca = TlsConfig { ca_cert_pem: foreign.ca_cert_pem, ..one.clone() };
        assert!(reason(check_own_material(&wrong_ca, "test", 1)).contains("not accepted by the CA"));
        // The CA file pointing at the node's own certificate.
        let self_ca = TlsConfig { ca_cert_pem: one.cert_pem.clone(), ..one };
        assert!(check_own_material(&self_ca, "test", 1).is_err());
    }
}
