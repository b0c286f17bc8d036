//! TLS on TCP connections (optional): the shared mutual-TLS set-up of `raft-tls` through
//! tokio-rustls, and the byte stream type that plain and TLS connections share.

use std::sync::Arc;

use raft_core::NodeId;
use raft_tls::{node_id_from_chain, node_identity, rustls_configs, IdentityError, TlsConfig, TlsError};
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::{TlsAcceptor, TlsConnector};

/// The ALPN protocol both sides of a TLS connection require.
pub const TLS_ALPN: &[u8] = b"raft-tcp/1";

/// A connection's byte stream: plain TCP or TLS over TCP.
pub(crate) trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}

impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// A boxed [`Stream`].
pub(crate) type BoxStream = Box<dyn Stream>;

/// A node's TLS acceptor and connector; a reload replaces both for new connections.
pub(crate) struct Tls {
    current: std::sync::RwLock<(TlsAcceptor, TlsConnector)>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls").finish_non_exhaustive()
    }
}

/// Why a TLS connection to a peer could not be set up.
#[derive(Debug, thiserror::Error)]
pub(crate) enum TlsConnectError {
    /// The peer's identity is not a valid TLS server name (a bad cluster id).
    #[error("invalid server name {0:?}")]
    ServerName(String),
    /// The TLS handshake failed (the peer's certificate is untrusted, expired or names another
    /// node, or the peer refused ours).
    #[error("TLS handshake failed: {0}")]
    Handshake(std::io::Error),
}

/// Why an inbound TLS connection was refused.
#[derive(Debug, thiserror::Error)]
pub(crate) enum TlsAcceptError {
    /// The TLS handshake failed (plaintext, an untrusted, expired or missing certificate).
    #[error("TLS handshake failed: {0}")]
    Handshake(std::io::Error),
    /// The verified certificate names no node of this cluster.
    #[error(transparent)]
    Identity(#[from] IdentityError),
}

impl Tls {
    pub(crate) fn new(config: &TlsConfig) -> Result<Self, TlsError> {
        Ok(Self { current: std::sync::RwLock::new(Self::pair(config)?) })
    }

    fn pair(config: &TlsConfig) -> Result<(TlsAcceptor, TlsConnector), TlsError> {
        let (server, client) = rustls_configs(config, TLS_ALPN)?;
        Ok((TlsAcceptor::from(Arc::new(server)), TlsConnector::from(Arc::new(client))))
    }

    /// Uses `config` for every connection from now on (open ones keep their session).
    pub(crate) fn replace(&self, config: &TlsConfig) -> Result<(), TlsError> {
        let pair = Self::pair(config)?;
        *self.current.write().unwrap_or_else(std::sync::PoisonError::into_inner) = pair;
        Ok(())
    }

    fn acceptor(&self) -> TlsAcceptor {
        self.current.read().unwrap_or_else(std::sync::PoisonError::into_inner).0.clone()
    }

    fn connector(&self) -> TlsConnector {
        self.current.read().unwrap_or_else(std::sync::PoisonError::into_inner).1.clone()
    }

    /// Runs the server side of the handshake; returns the stream and the node id that the
    /// client's verified certificate names.
    pub(crate) async fn accept(
        &self,
        stream: TcpStream,
        cluster_id: &str,
    ) -> Result<(BoxStream, NodeId), TlsAcceptError> {
        let stream = self.acceptor().accept(stream).await.map_err(TlsAcceptError::Handshake)?;
        let chain = stream.get_ref().1.peer_certificates().ok_or(IdentityError::NoCertificate)?;
        let peer = node_id_from_chain(chain, cluster_id)?;
        Ok((Box::new(stream), peer))
    }

    /// Runs the client side of the handshake, verifying the server as
    /// `node-<peer>.<cluster_id>`.
    pub(crate) async fn connect(
        &self,
        stream: TcpStream,
        cluster_id: &str,
        peer: NodeId,
    ) -> Result<BoxStream, TlsConnectError> {
        let name = node_identity(cluster_id, peer);
        let server_name =
            ServerName::try_from(name.clone()).map_err(|_| TlsConnectError::ServerName(name))?;
        let stream =
            self.connector().connect(server_name, stream).await.map_err(TlsConnectError::Handshake)?;
        Ok(Box::new(stream))
    }
}
