//! Development certificates: a cluster CA and one certificate per node, made with `rcgen`.
//!
//! A node's identity is the DNS subject alternative name `node-<id>.<cluster_id>` (see
//! [`node_identity`]); its certificate is signed by the cluster CA. These are for tests and
//! development clusters; production deployments bring their own CA and keys in the same shape.

use std::collections::BTreeMap;
use std::path::Path;

use raft_core::NodeId;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};
use time::{Duration, OffsetDateTime};

/// Why certificates could not be made or written.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// The cluster id cannot be part of a DNS name.
    #[error("cluster id {0:?} is not a DNS name (use lowercase letters, digits, '-' and '.')")]
    BadClusterId(String),
    /// `rcgen` failed.
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    /// A file could not be written.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
}

/// The identity (DNS name) a node's certificate carries: `node-<id>.<cluster_id>`.
pub fn node_identity(cluster_id: &str, node_id: NodeId) -> String {
    format!("node-{node_id}.{cluster_id}")
}

/// Parses an identity made by [`node_identity`] back into a node id, if it belongs to
/// `cluster_id`.
pub fn parse_node_identity(cluster_id: &str, name: &str) -> Option<NodeId> {
    let rest = name.strip_prefix("node-")?;
    let (id, cluster) = rest.split_once('.')?;
    if cluster != cluster_id || id.is_empty() || !id.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    id.parse().ok()
}

/// Whether `cluster_id` can be the suffix of a node identity.
pub fn is_valid_cluster_id(cluster_id: &str) -> bool {
    !cluster_id.is_empty()
        && cluster_id.len() <= 200
        && cluster_id.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        })
}

/// A cluster CA that issues node certificates.
pub struct DevCa {
    cluster_id: String,
    cert: rcgen::Certificate,
    key: KeyPair,
}

impl std::fmt::Debug for DevCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DevCa").field("cluster_id", &self.cluster_id).finish_non_exhaustive()
    }
}

impl DevCa {
    /// A new self-signed CA for `cluster_id`, valid for ten years.
    pub fn new(cluster_id: &str) -> Result<Self, CertError> {
        Self::with_key(cluster_id, KeyPair::generate()?)
    }

    /// The CA of `cluster_id` made earlier by [`DevCa::new`] (and written out with
    /// [`key_pem`](Self::key_pem)), from its private key: the certificates it issues chain to
    /// the CA certificate written then (same subject, same key). For issuing certificates on
    /// the machine that runs a node, such as a pod's API certificate for its address of the
    /// moment. Only for CAs made here: another CA's subject would not match.
    pub fn from_key_pem(cluster_id: &str, key_pem: &str) -> Result<Self, CertError> {
        Self::with_key(cluster_id, KeyPair::from_pem(key_pem)?)
    }

    fn with_key(cluster_id: &str, key: KeyPair) -> Result<Self, CertError> {
        if !is_valid_cluster_id(cluster_id) {
            return Err(CertError::BadClusterId(cluster_id.to_owned()));
        }
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        let mut name = DistinguishedName::new();
        name.push(DnType::CommonName, format!("raft cluster CA {cluster_id}"));
        params.distinguished_name = name;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::days(1);
        params.not_after = now + Duration::days(3650);
        let cert = params.self_signed(&key)?;
        Ok(Self { cluster_id: cluster_id.to_owned(), cert, key })
    }

    /// The CA certificate, PEM-encoded.
    pub fn cert_pem(&self) -> String {
        self.cert.pem()
    }

    /// The CA's private key, PEM-encoded (keep it off the nodes).
    pub fn key_pem(&self) -> String {
        self.key.serialize_pem()
    }

    /// Issues a certificate for `node_id`, valid from a day ago for a year: `(cert_pem, key_pem)`.
    pub fn issue(&self, node_id: NodeId) -> Result<(String, String), CertError> {
        let now = OffsetDateTime::now_utc();
        self.issue_with_validity(
            &node_identity(&self.cluster_id, node_id),
            now - Duration::days(1),
            now + Duration::days(365),
        )
    }

    /// Issues a certificate for an arbitrary DNS `identity` with the given validity (tests use
    /// it for wrong identities and expired certificates): `(cert_pem, key_pem)`.
    pub fn issue_with_validity(
        &self,
        identity: &str,
        not_before: OffsetDateTime,
        not_after: OffsetDateTime,
    ) -> Result<(String, String), CertError> {
        // Nodes are servers and clients of each other.
        let usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        self.sign(&[identity.to_owned()], usages, not_before, not_after)
    }

    /// Issues a certificate of an HTTPS server of the client API for `names` (host names, or
    /// IP addresses such as `127.0.0.1`), valid for a year: `(cert_pem, key_pem)`. It can also
    /// serve as the node's client certificate towards the other members' APIs.
    pub fn issue_server(&self, names: &[String]) -> Result<(String, String), CertError> {
        let now = OffsetDateTime::now_utc();
        let usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        self.sign(names, usages, now - Duration::days(1), now + Duration::days(365))
    }

    /// Issues a client certificate named `name` (a DNS name: the name `[[auth.certificates]]`
    /// gives a role), valid for a year: `(cert_pem, key_pem)`.
    pub fn issue_client(&self, name: &str) -> Result<(String, String), CertError> {
        let now = OffsetDateTime::now_utc();
        let usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.sign(&[name.to_owned()], usages, now - Duration::days(1), now + Duration::days(365))
    }

    fn sign(
        &self,
        names: &[String],
        usages: Vec<ExtendedKeyUsagePurpose>,
        not_before: OffsetDateTime,
        not_after: OffsetDateTime,
    ) -> Result<(String, String), CertError> {
        let mut params = CertificateParams::new(names.to_vec())?;
        let mut name = DistinguishedName::new();
        name.push(DnType::CommonName, names.first().map(String::as_str).unwrap_or("raft"));
        params.distinguished_name = name;
        params.is_ca = IsCa::NoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = usages;
        params.not_before = not_before;
        params.not_after = not_after;
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.cert, &self.key)?;
        Ok((cert.pem(), key.serialize_pem()))
    }
}

/// A development CA and the certificates of a cluster's nodes, all PEM-encoded.
#[derive(Clone)]
pub struct DevCerts {
    /// The cluster id the identities belong to.
    pub cluster_id: String,
    /// The CA certificate every node trusts.
    pub ca_cert_pem: String,
    /// The CA's private key (to issue more node certificates later).
    pub ca_key_pem: String,
    /// Per node, its certificate and private key.
    pub nodes: BTreeMap<NodeId, (String, String)>,
    /// Per node, the certificate and key of its HTTPS client API, for a cluster on this
    /// machine: names `localhost`, `127.0.0.1` and `::1`.
    pub api: BTreeMap<NodeId, (String, String)>,
    /// Client certificates by name (for `[[auth.certificates]]`), if any were asked for.
    pub clients: BTreeMap<String, (String, String)>,
}

impl std::fmt::Debug for DevCerts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DevCerts")
            .field("cluster_id", &self.cluster_id)
            .field("nodes", &self.nodes.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

/// Makes a dev CA for `cluster_id` and one certificate per node in `node_ids`.
pub fn generate_dev_certs(
    cluster_id: &str,
    node_ids: impl IntoIterator<Item = NodeId>,
) -> Result<DevCerts, CertError> {
    generate_dev_certs_with_clients(cluster_id, node_ids, std::iter::empty::<&str>())
}

/// Like [`generate_dev_certs`], with a client certificate (client authentication only) for
/// each of `client_names`, signed by the same CA.
pub fn generate_dev_certs_with_clients<S: AsRef<str>>(
    cluster_id: &str,
    node_ids: impl IntoIterator<Item = NodeId>,
    client_names: impl IntoIterator<Item = S>,
) -> Result<DevCerts, CertError> {
    let ca = DevCa::new(cluster_id)?;
    let mut nodes = BTreeMap::new();
    let mut api = BTreeMap::new();
    let local = ["localhost", "127.0.0.1", "::1"].map(str::to_owned);
    for id in node_ids {
        nodes.insert(id, ca.issue(id)?);
        api.insert(id, ca.issue_server(&local)?);
    }
    let mut clients = BTreeMap::new();
    for name in client_names {
        clients.insert(name.as_ref().to_owned(), ca.issue_client(name.as_ref())?);
    }
    Ok(DevCerts {
        cluster_id: cluster_id.to_owned(),
        ca_cert_pem: ca.cert_pem(),
        ca_key_pem: ca.key_pem(),
        nodes,
        api,
        clients,
    })
}

impl DevCerts {
    /// The TLS material of node `id` (the CA certificate, its certificate and key), if it has
    /// a certificate.
    pub fn tls_config(&self, id: NodeId) -> Option<crate::TlsConfig> {
        let (cert_pem, key_pem) = self.nodes.get(&id)?.clone();
        Some(crate::TlsConfig { ca_cert_pem: self.ca_cert_pem.clone(), cert_pem, key_pem })
    }

    /// Writes `ca.pem`, `ca-key.pem`, `node-<id>.pem` / `node-<id>-key.pem` and
    /// `api-<id>.pem` / `api-<id>-key.pem` per node, and `client-<name>.pem` /
    /// `client-<name>-key.pem` per client, into
    /// `dir` (created if missing). Key files are readable by the owner only on Unix.
    pub fn write_dev_certs(&self, dir: &Path) -> Result<(), CertError> {
        let write = |name: String, contents: &str, secret: bool| -> Result<(), CertError> {
            let path = dir.join(&name);
            let err = |source| CertError::Write { path: path.display().to_string(), source };
            std::fs::write(&path, contents).map_err(err)?;
            #[cfg(unix)]
            if secret {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).map_err(err)?;
            }
            #[cfg(not(unix))]
            let _ = secret;
            Ok(())
        };
        std::fs::create_dir_all(dir)
            .map_err(|source| CertError::Write { path: dir.display().to_string(), source })?;
        write("ca.pem".to_owned(), &self.ca_cert_pem, false)?;
        write("ca-key.pem".to_owned(), &self.ca_key_pem, true)?;
        for (id, (cert, key)) in &self.nodes {
            write(format!("node-{id}.pem"), cert, false)?;
            write(format!("node-{id}-key.pem"), key, true)?;
        }
        for (id, (cert, key)) in &self.api {
            write(format!("api-{id}.pem"), cert, false)?;
            write(format!("api-{id}-key.pem"), key, true)?;
        }
        for (name, (cert, key)) in &self.clients {
            write(format!("client-{name}.pem"), cert, false)?;
            write(format!("client-{name}-key.pem"), key, true)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identities_round_trip() {
        assert_eq!(node_identity("prod", 7), "node-7.prod");
        assert_eq!(parse_node_identity("prod", "node-7.prod"), Some(7));
        assert_eq!(parse_node_identity("prod", "node-7.other"), None);
        assert_eq!(parse_node_identity("prod", "node-x.prod"), None);
        assert!(is_valid_cluster_id("a-b.c1"));
        assert!(!is_valid_cluster_id("Prod"));
        assert!(!is_valid_cluster_id(""));
    }

    /// A CA rebuilt from its key issues certificates that chain to the CA certificate made
    /// with it; another CA's key does not.
    #[test]
    fn a_ca_from_its_key_issues_certificates_of_the_original() {
        let ca = DevCa::new("api.prod").expect("ca");
        let again = DevCa::from_key_pem("api.prod", &ca.key_pem()).expect("from key");
        let (cert_pem, key_pem) =
            again.issue_server(&["10.1.0.7".into(), "pod-0.svc".into()]).expect("issue");
        let tls = crate::ApiServerTls { cert_pem, key_pem, client_ca_pem: None, require_client_cert: false };
        crate::check_api_certificate(&tls, &ca.cert_pem()).expect("chains to the original CA");
        let other = DevCa::new("api.prod").expect("other ca");
        assert!(crate::check_api_certificate(&tls, &other.cert_pem()).is_err(), "chains to another CA");
        assert!(DevCa::from_key_pem("api.prod", "not a key").is_err());
    }

    #[test]
    fn generates_and_writes() {
        let certs = generate_dev_certs_with_clients("test", [1, 2], ["ops"]).expect("certs");
        assert_eq!(certs.nodes.len(), 2);
        assert!(certs.ca_cert_pem.starts_with("-----BEGIN CERTIFICATE-----"));
        let dir = tempfile::tempdir().expect("tempdir");
        certs.write_dev_certs(dir.path()).expect("write");
        for name in [
            "ca.pem",
            "ca-key.pem",
            "node-1.pem",
            "node-2-key.pem",
            "api-1.pem",
            "api-2-key.pem",
            "client-ops.pem",
            "client-ops-key.pem",
        ] {
            assert!(dir.path().join(name).exists(), "{name}");
        }
    }
}
