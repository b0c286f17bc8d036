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
    /// With a client CA, a certificate a client presents must be signed by it (its names then
    /// identify the client); `None` asks for no client certificate.
    pub client_ca_pem: Option<String>,
    /// With a client CA: refuse clients that present no certificate (else they connect and
    /// authenticate otherwise, with tokens).
    pub require_client_cert: bool,
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
/// ALPN `http/1.1`; with a client CA, presented client certificates are verified against it
/// (and required with `require_client_cert`).
pub fn api_server_config(tls: &ApiServerTls) -> Result<rustls::ServerConfig, TlsError> {
    let (chain, key) = chain_and_key(&tls.cert_pem, &tls.key_pem, "API certificate")?;
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(error("API server config"))?;
    let builder = match &tls.client_ca_pem {
        Some(ca) => {
            let verifier = WebPkiClientVerifier::builder_with_provider(roots(ca, "client CA")?, provider());
            let verifier = if tls.require_client_cert { verifier } else { verifier.allow_unauthenticated() };
            let verifier = verifier.build().map_err(error("client CA"))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut server = builder.with_single_cert(chain, key).map_err(error("API certificate"))?;
    server.alpn_protocols = vec![API_ALPN.to_vec()];
    Ok(server)
}

/// Checks that the API certificate of `tls` is valid now, is meant for a server, and chains
/// to `ca_pem` (the CA the other members verify it with), so that an expired or foreign
/// certificate is refused at start or reload rather than failing every client's handshake.
pub fn check_api_certificate(tls: &ApiServerTls, ca_pem: &str) -> Result<(), TlsError> {
    let (chain, _) = chain_and_key(&tls.cert_pem, &tls.key_pem, "API certificate")?;
    let cas = CertificateDer::pem_slice_iter(ca_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(error("API CA certificate"))?;
    let anchors = cas
        .iter()
        .map(|ca| webpki::anchor_from_trusted_cert(ca))
        .collect::<Result<Vec<_>, _>>()
        .map_err(error("API CA certificate"))?;
    if anchors.is_empty() {
        return Err(TlsError { what: "API CA certificate", reason: "no certificate in PEM".to_owned() });
    }
    let (leaf, intermediates) = chain
        .split_first()
        .ok_or(TlsError { what: "API certificate", reason: "no certificate".to_owned() })?;
    let cert = webpki::EndEntityCert::try_from(leaf).map_err(error("API certificate"))?;
    let algorithms = provider().signature_verification_algorithms.all;
    cert.verify_for_usage(
        algorithms,
        &anchors,
        intermediates,
        rustls_pki_types::UnixTime::now(),
        webpki::KeyUsage::server_auth(),
        None,
        None,
    )
    .map(|_| ())
    .map_err(|e| TlsError {
        what: "API certificate",
        reason: format!("not usable now with the members' CA (expired, not yet valid, not for a server, or signed by another CA): {e}"),
    })
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

/// The subject common name of a DER certificate (a UTF8String, PrintableString or
/// IA5String), read by walking the subject `Name` as DER: a sequence of sets of
/// (type, value) pairs. `None` when the subject has no common name, more than one, or does
/// not parse: a name is never read out of another attribute's bytes.
fn common_name(leaf: &CertificateDer<'_>) -> Option<String> {
    const CN_OID: &[u8] = &[0x55, 0x04, 0x03];
    let Ok(cert) = webpki::EndEntityCert::try_from(leaf) else { return None };
    // `subject()` is the contents of the Name SEQUENCE: its RelativeDistinguishedName SETs.
    let mut names = Vec::new();
    let mut sets = cert.subject();
    while !sets.is_empty() {
        let (tag, set, rest) = tlv(sets)?;
        sets = rest;
        if tag != 0x31 {
            return None;
        }
        let mut attributes = set;
        while !attributes.is_empty() {
            let (tag, attribute, rest) = tlv(attributes)?;
            attributes = rest;
            if tag != 0x30 {
                return None;
            }
            let (oid_tag, oid, value) = tlv(attribute)?;
            let (value_tag, value, trailing) = tlv(value)?;
            if oid_tag != 0x06 || !trailing.is_empty() {
                return None;
            }
            if oid == CN_OID {
                if !matches!(value_tag, 0x0c | 0x13 | 0x16) {
                    return None;
                }
                names.push(String::from_utf8(value.to_vec()).ok()?);
            }
        }
    }
    match names.as_slice() {
        [one] => Some(one.clone()),
        _ => None,
    }
}

/// One DER element of `input`: its tag, its contents and what follows it (definite lengths
/// only, at most four length bytes).
fn tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, mut rest) = rest.split_first()?;
    let len = if first < 0x80 {
        usize::from(first)
    } else {
        let count = usize::from(first & 0x7f);
        if count == 0 || count > 4 {
            return None;
        }
        let (bytes, after) = (rest.get(..count)?, rest.get(count..)?);
        rest = after;
        bytes.iter().fold(0usize, |acc, b| (acc << 8) | usize::from(*b))
    };
    Some((tag, rest.get(..len)?, rest.get(len..)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::DevCa;

    #[test]
    fn server_and_client_configs_build_from_dev_material() {
        let ca = DevCa::new("test").expect("ca");
        let (cert, key) = ca.issue_server(&["localhost".into(), "127.0.0.1".into()]).expect("server");
        let server = ApiServerTls {
            cert_pem: cert.clone(),
            key_pem: key.clone(),
            client_ca_pem: None,
            require_client_cert: false,
        };
        assert_eq!(api_server_config(&server).expect("server").alpn_protocols, vec![API_ALPN.to_vec()]);
        let mutual = ApiServerTls { client_ca_pem: Some(ca.cert_pem()), ..server.clone() };
        api_server_config(&mutual).expect("server with client CA");
        let bad = ApiServerTls { key_pem: "garbage".into(), ..server };
        assert_eq!(api_server_config(&bad).map(|_| ()).map_err(|e| e.what), Err("API certificate"));
        let no_ca = ApiServerTls { client_ca_pem: Some(String::new()), ..mutual };
        assert_eq!(api_server_config(&no_ca).map(|_| ()).map_err(|e| e.what), Err("client CA"));
    }

    #[test]
    fn an_expired_or_foreign_api_certificate_is_refused_before_use() {
        let ca = DevCa::new("test").expect("ca");
        let (cert, key) = ca.issue_server(&["localhost".into()]).expect("server");
        let good =
            ApiServerTls { cert_pem: cert, key_pem: key, client_ca_pem: None, require_client_cert: false };
        check_api_certificate(&good, &ca.cert_pem()).expect("valid");
        let other = DevCa::new("test").expect("ca");
        assert!(check_api_certificate(&good, &other.cert_pem()).is_err(), "another CA");
        let past = time::OffsetDateTime::now_utc() - time::Duration::days(10);
        let (cert, key) =
            ca.issue_with_validity("localhost", past - time::Duration::days(1), past).expect("expired");
        let expired = ApiServerTls { cert_pem: cert, key_pem: key, ..good.clone() };
        assert!(check_api_certificate(&expired, &ca.cert_pem()).is_err(), "expired");
        let (cert, key) = ca.issue_client("ops").expect("client");
        let client_only = ApiServerTls { cert_pem: cert, key_pem: key, ..good };
        assert!(check_api_certificate(&client_only, &ca.cert_pem()).is_err(), "a client certificate");
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

    fn named(attributes: &[(rcgen::DnType, &str)]) -> Vec<String> {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        let mut name = rcgen::DistinguishedName::new();
        for (kind, value) in attributes {
            name.push(kind.clone(), *value);
        }
        params.distinguished_name = name;
        let key = rcgen::KeyPair::generate().expect("key");
        certificate_names(params.self_signed(&key).expect("cert").der())
    }

    #[test]
    fn a_common_name_is_never_read_out_of_another_attributes_value() {
        // The bytes of a CN attribute smuggled inside an organizational unit's value.
        let smuggled = "\u{6}\u{3}U\u{4}\u{3}\u{c}\u{b}ops-console";
        let ou = rcgen::DnType::OrganizationalUnitName;
        assert_eq!(
            named(&[(rcgen::DnType::CommonName, "contractor-7"), (ou.clone(), smuggled)]),
            vec!["contractor-7"]
        );
        assert!(named(&[(ou, smuggled)]).is_empty(), "no common name: no name");
        assert!(named(&[]).is_empty());
    }
}
