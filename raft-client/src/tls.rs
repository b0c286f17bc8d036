//! HTTPS towards the nodes: the CA the client trusts and its own certificate, as rustls
//! configuration (TLS 1.2 and 1.3, ring, ALPN `http/1.1`).

use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::error::ClientError;

/// The TLS material of a client of nodes that serve HTTPS, PEM-encoded. Its `Debug` output
/// never shows the key.
#[derive(Clone, PartialEq, Eq)]
pub struct ClientTls {
    /// The CA certificate (or several) that signs the nodes' API certificates.
    pub ca_cert_pem: String,
    /// The client's certificate chain and private key, for nodes that require client
    /// certificates; `None` presents none.
    pub identity: Option<(String, String)>,
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientTls").field("identity", &self.identity.as_ref().map(|_| "<redacted>")).finish()
    }
}

impl ClientTls {
    /// Reads the PEM files: `ca` and, for a client certificate, `cert` with `key`.
    pub fn from_files(
        ca: &std::path::Path,
        identity: Option<(&std::path::Path, &std::path::Path)>,
    ) -> Result<Self, String> {
        let read = |path: &std::path::Path| {
            std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
        };
        let identity = match identity {
            Some((cert, key)) => Some((read(cert)?, read(key)?)),
            None => None,
        };
        Ok(Self { ca_cert_pem: read(ca)?, identity })
    }

    /// Checks that the PEM material parses and the key fits the certificate.
    pub fn validate(&self) -> Result<(), ClientError> {
        self.rustls_config().map(|_| ())
    }

    /// The rustls configuration, or [`ClientError::InvalidOptions`] naming the bad part.
    pub(crate) fn rustls_config(&self) -> Result<rustls::ClientConfig, ClientError> {
        let invalid = ClientError::InvalidOptions;
        let mut roots = rustls::RootCertStore::empty();
        for ca in CertificateDer::pem_slice_iter(self.ca_cert_pem.as_bytes()) {
            let ca = ca.map_err(|_| invalid("tls.ca_cert_pem is not PEM"))?;
            roots.add(ca).map_err(|_| invalid("tls.ca_cert_pem holds an unusable certificate"))?;
        }
        if roots.is_empty() {
            return Err(invalid("tls.ca_cert_pem holds no certificate"));
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|_| invalid("no TLS protocol version"))?
            .with_root_certificates(roots);
        let mut config = match &self.identity {
            Some((cert, key)) => {
                let chain = CertificateDer::pem_slice_iter(cert.as_bytes())
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|_| invalid("the client certificate is not PEM"))?;
                if chain.is_empty() {
                    return Err(invalid("the client certificate file holds no certificate"));
                }
                let key = PrivateKeyDer::from_pem_slice(key.as_bytes())
                    .map_err(|_| invalid("the client key is not a PEM private key"))?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|_| invalid("the client key does not fit the client certificate"))?
            }
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(config)
    }
}

/// The rustls configuration of a client without TLS options: it trusts nothing (such a
/// client speaks plain HTTP only; reqwest still wants a TLS backend to be built, and the ring
/// provider is given explicitly so that none needs to be installed process-wide).
pub(crate) fn trusting_nothing() -> Result<rustls::ClientConfig, ClientError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|_| ClientError::InvalidOptions("no TLS protocol version"))?
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth())
}
