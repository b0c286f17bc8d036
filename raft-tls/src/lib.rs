//! Mutual TLS for the transports of raft-core (QUIC always, TCP optionally).
//!
//! Every node of a cluster has a certificate signed by the cluster CA whose DNS subject
//! alternative name is its identity `node-<id>.<cluster_id>` ([`node_identity`]). Both sides
//! of a connection present their certificate and verify the other's against the CA (TLS 1.3
//! only, ring as the only crypto provider); the connecting side also checks the server name
//! `node-<peer>.<cluster_id>`, and the accepting side reads the client's node id from its
//! verified certificate ([`node_id_from_chain`]) and compares it with the peer list and the
//! `Hello`.
//!
//! The client API's HTTPS uses the same crate: [`api_server_config`] (optionally requiring
//! client certificates) and [`certificate_names`].
//!
//! [`TlsConfig`] holds a node's PEM files; [`rustls_configs`] turns it into rustls server and
//! client configurations. [`generate_dev_certs`] makes a CA and node certificates for tests
//! and development clusters (`cargo xtask certs`).
//!
//! ```
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use raft_tls::{generate_dev_certs, rustls_configs, TlsConfig};
//!
//! let certs = generate_dev_certs("prod", [1, 2, 3])?;
//! let tls = certs.tls_config(1).expect("node 1 has a certificate");
//! let (server, client) = rustls_configs(&tls, b"raft-tcp/1")?;
//! assert_eq!(server.alpn_protocols, vec![b"raft-tcp/1".to_vec()]);
//! # let _ = client;
//! # Ok(())
//! # }
//! ```

mod api;
mod certs;
mod config;

pub use api::{api_server_config, certificate_names, check_api_certificate, ApiServerTls, API_ALPN};

pub use certs::{
    generate_dev_certs, generate_dev_certs_with_clients, is_valid_cluster_id, node_identity,
    parse_node_identity, CertError, DevCa, DevCerts,
};
pub use config::{
    check_own_material, node_id_from_chain, rustls_configs, IdentityError, TlsConfig, TlsError,
};
