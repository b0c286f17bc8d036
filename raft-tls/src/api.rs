//! TLS for a node's client API (HTTPS): the server's rustls configuration, optionally
//! requiring client certificates signed by a client CA, and the names a verified client
//! certificate carries. (The client side is `raft-client`'s.)
//!
//! Unlike the peer transports, the API does not read node identities from certificates: a
//! client certificate authenticates a client by name (its DNS subject alternative names, else
//! its common name), which `raft-node` maps to a role.

use std::sync::Arc;

use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::{error, provider};
use crate::TlsError;

/// The ALPN protocol of the client API (HTTP/1.1 only).
pub const API_ALPN: &[u8] = b"http/1.1";

/// The PEM material of a node's HTTPS server.
#[derive(Clone)]
pub struct ApiServerTls {
    /// The server's certificate chain (its names are what clients connect to: a host name or
    /// an IP address).
    pub cert_pem: String,
    /// The server's private key.
    pub key_pem: String,
    /// With a client CA, every client must present a certificate it signed; `None` accepts
    /// clients without certificates (they authenticate with tokens).
    pub client_ca_pem: Option<String>,
}

impl std::fmt::Debug for ApiServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiServerTls")
            .field("client_ca", &self.client_ca_pem.is_some())
            .finish_non_exhaustive()
    }
}

fn roots(pem: &str, what: &'static str) -> Result<Arc<RootCertStore>, TlsError> {
    let mut roots = RootCertStore::empty();
    for ca in CertificateDer::pem_slice_iter(pem.as_bytes()) {
        roots.add(ca.map_err(error(what))?).map_err(error(what))?;
    }
    if roots.is_empty() {
        return Err(TlsError { what, reason: "no certificate in PEM".to_owned() });
    }
    Ok(Arc::new(roots))
}

fn chain_and_key(
    cert_pem: &str,
    key_pem: &str,
    what: &'static str,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), TlsError> {
    let chain = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(error(what))?;
    if chain.is_empty() {
        return Err(TlsError { what, reason: "no certificate in PEM".to_owned() });
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(error(what))?;
    Ok((chain, key))
}

/// The rustls configuration of a node's HTTPS server: TLS 1.2 and 1.3 (browsers and curl),
/// ALPN `http/1.1`, client certificates required when `tls` names a client CA.
pub fn api_server_config(tls: &ApiServerTls) -> Result<rustls::ServerConfig, TlsError> {
    let (chain, key) = chain_and_key(&tls.cert_pem, &tls.key_pem, "API certificate")?;
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(error("API server config"))?;
    let builder = match &tls.client_ca_pem {
        Some(ca) => {
            let verifier = WebPkiClientVerifier::builder_with_provider(roots(ca, "client CA")?, provider())
                .build()
                .map_err(error("client CA"))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut server = builder.with_single_cert(chain, key).map_err(error("API certificate"))?;
    server.alpn_protocols = vec![API_ALPN.to_vec()];
    Ok(server)
}

/// The names a verified client certificate carries: its DNS subject alternative names, or
/// its subject's common name when it has none. Empty for an unparsable certificate.
pub fn certificate_names(leaf: &CertificateDer<'_>) -> Vec<String> {
    let Ok(cert) = webpki::EndEntityCert::try_from(leaf) else { return Vec::new() };
    let names: Vec<String> = cert.valid_dns_names().map(str::to_owned).collect();
    if !names.is_empty() {
        return names;
    }
    common_name(leaf).into_iter().collect()
}

/// The subject common name of a DER certificate (a UTF8String or PrintableString), found by
/// walking the subject's DER: `id-at-commonName` (2.5.4.3) and the string that follows it.
fn common_name(leaf: &CertificateDer<'_>) -> Option<String> {
    let Ok(cert) = webpki::EndEntityCert::try_from(leaf) else { return None };
    let subject = cert.subject();
    const CN_OID: [u8; 5] = [0x06, 0x03, 0x55, 0x04, 0x03];
    let at = subject.windows(CN_OID.len()).rposition(|w| w == CN_OID)?;
    let rest = subject.get(at + CN_OID.len()..)?;
    let (&tag, rest) = rest.split_first()?;
    if tag != 0x0c && tag != 0x13 {
        return None;
    }
    let (&len, rest) = rest.split_first()?;
    let len = usize::from(len);
    if len >= 0x80 {
        return None;
    }
    String::from_utf8(rest.get(..len)?.to_vec()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::DevCa;

    #[test]
    fn server_and_client_configs_build_from_dev_material() {
        let ca = DevCa::new("test").expect("ca");
        let (cert, key) = ca.issue_server(&["localhost".into(), "127.0.0.1".into()]).expect("server");
        let server = ApiServerTls { cert_pem: cert.clone(), key_pem: key.clone(), client_ca_pem: None };
        assert_eq!(api_server_config(&server).expect("server").alpn_protocols, vec![API_ALPN.to_vec()]);
        let mutual = ApiServerTls { client_ca_pem: Some(ca.cert_pem()), ..server.clone() };
        api_server_config(&mutual).expect("server with client CA");
        let bad = ApiServerTls { key_pem: "garbage".into(), ..server };
        assert_eq!(api_server_config(&bad).map(|_| ()).map_err(|e| e.what), Err("API certificate"));
        let no_ca = ApiServerTls { client_ca_pem: Some(String::new()), ..mutual };
        assert_eq!(api_server_config(&no_ca).map(|_| ()).map_err(|e| e.what), Err("client CA"));
    }

    #[test]
    fn a_client_certificate_is_known_by_its_names() {
        let ca = DevCa::new("test").expect("ca");
        let (cert, _) = ca.issue_client("ops-admin").expect("client");
        let leaf = CertificateDer::from_pem_slice(cert.as_bytes()).expect("pem");
        assert_eq!(certificate_names(&leaf), vec!["ops-admin".to_owned()]);
        let (server, _) = ca.issue_server(&["localhost".into(), "127.0.0.1".into()]).expect("server");
        let leaf = CertificateDer::from_pem_slice(server.as_bytes()).expect("pem");
        assert_eq!(certificate_names(&leaf), vec!["localhost".to_owned()]);
        assert!(certificate_names(&CertificateDer::from(vec![1u8, 2, 3])).is_empty());
    }

    #[test]
    fn a_certificate_without_alternative_names_is_known_by_its_common_name() {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        let mut name = rcgen::DistinguishedName::new();
        name.push(rcgen::DnType::OrganizationName, "ops team");
        name.push(rcgen::DnType::CommonName, "backup-job");
        params.distinguished_name = name;
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = params.self_signed(&key).expect("cert");
        assert_eq!(certificate_names(cert.der()), vec!["backup-job".to_owned()]);
    }
}
