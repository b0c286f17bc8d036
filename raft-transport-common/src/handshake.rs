//! The `Hello` exchange that opens every connection: the connector sends `Hello` (wire
//! version, cluster id, node id), the acceptor answers `HelloAck` or `Refused` with a typed
//! reason. Handshake frames are limited to [`HANDSHAKE_MAX_FRAME_BYTES`]: until a peer is
//! known it may make the acceptor buffer only a small frame.

use bytes::BytesMut;
use raft_core::wire::{FrameDecoder, RefusalReason, WireMessage, HANDSHAKE_MAX_FRAME_BYTES, WIRE_VERSION};
use raft_core::NodeId;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;

use crate::io::{read_frame, write_frame, ReadError};
use crate::stats::Counters;

/// Why the connecting side's handshake failed.
#[derive(Debug, thiserror::Error)]
pub enum ConnectHelloError {
    /// The peer refused our `Hello`.
    #[error("refused by the peer: {0}")]
    Refused(RefusalReason),
    /// The answer did not come in time.
    #[error("handshake timed out")]
    Timeout,
    /// Writing `Hello` failed.
    #[error("writing Hello failed: {0}")]
    Write(std::io::Error),
    /// Reading the answer failed.
    #[error("reading the answer to Hello failed: {0}")]
    Read(ReadError),
    /// The answer was not a `HelloAck` from the expected node with our version.
    #[error("unexpected answer to Hello: {0}")]
    Unexpected(String),
}

/// Sends `Hello` as node `node_id` of `cluster_id` on `writer` and waits until `deadline` for
/// the `HelloAck` of node `peer` on `reader`.
pub async fn connect_hello<R, W>(
    reader: &mut R,
    writer: &mut W,
    cluster_id: &str,
    node_id: NodeId,
    peer: NodeId,
    deadline: Instant,
) -> Result<(), ConnectHelloError>
where
    R: AsyncRead + Unpin + ?Sized,
    W: AsyncWrite + Unpin + ?Sized,
{
    let hello = WireMessage::Hello { version: WIRE_VERSION, cluster_id: cluster_id.to_owned(), node_id };
    tokio::time::timeout_at(deadline, write_frame(writer, &hello, HANDSHAKE_MAX_FRAME_BYTES))
        .await
        .map_err(|_| ConnectHelloError::Timeout)?
        .map_err(ConnectHelloError::Write)?;
    let reply = match read_handshake_frame(reader, deadline).await {
        Ok(reply) => reply,
        Err(ReadError::Timeout) => return Err(ConnectHelloError::Timeout),
        Err(error) => return Err(ConnectHelloError::Read(error)),
    };
    match reply {
        WireMessage::HelloAck { version: WIRE_VERSION, node_id } if node_id == peer => Ok(()),
        WireMessage::HelloAck { version, node_id } => Err(ConnectHelloError::Unexpected(format!(
            "HelloAck from node {node_id} with version {version}, expected node {peer} with version {WIRE_VERSION}"
        ))),
        WireMessage::Refused { reason } => Err(ConnectHelloError::Refused(reason)),
        other => Err(ConnectHelloError::Unexpected(kind(&other).to_owned())),
    }
}

/// What the accepting side checks a `Hello` against.
#[derive(Debug, Clone, Copy)]
pub struct AcceptPolicy<'a> {
    /// This node's cluster.
    pub cluster_id: &'a str,
    /// This node's id (sent in `HelloAck`; a `Hello` claiming it is refused as unknown).
    pub node_id: NodeId,
    /// The node the connection's certificate names, when the connection is authenticated:
    /// the `Hello` must name the same node.
    pub certified: Option<NodeId>,
}

/// Why the accepting side's handshake failed. `Refused` and `IdentityMismatch` were answered
/// with a `Refused` frame; the others were not answered.
#[derive(Debug, thiserror::Error)]
pub enum AcceptHelloError {
    /// Wrong cluster, unknown (or removed) node, or unsupported version.
    #[error("Hello refused: {0}")]
    Refused(RefusalReason),
    /// The `Hello` names another node than the connection's certificate.
    #[error("Hello names node {hello}, the certificate node {certified}")]
    IdentityMismatch {
        /// The node in `Hello`.
        hello: NodeId,
        /// The node in the certificate.
        certified: NodeId,
    },
    /// The first frame was not a `Hello`.
    #[error("expected Hello, got {0}")]
    NotHello(&'static str),
    /// No valid frame arrived (bad frame, timeout, close).
    #[error("reading Hello failed: {0}")]
    Read(ReadError),
    /// Writing the answer failed or timed out.
    #[error("writing the answer to Hello failed: {0}")]
    Write(std::io::Error),
}

impl AcceptHelloError {
    /// Counts the failure in the counter it belongs to.
    pub fn count(&self, counters: &Counters) {
        let counter = match self {
            Self::Refused(_) => &counters.refused_handshakes,
            Self::IdentityMismatch { .. } => &counters.refused_identity,
            Self::NotHello(_) | Self::Read(ReadError::Wire(_)) => &counters.bad_frames,
            Self::Read(ReadError::Timeout) => &counters.timeouts,
            Self::Read(_) | Self::Write(_) => return,
        };
        Counters::add(counter, 1);
    }
}

/// Reads the `Hello` from `reader` until `deadline`, checks it against `policy` and
/// `is_peer`, and answers on `writer`: `HelloAck` (returning the peer's id) or `Refused`.
pub async fn accept_hello<R, W>(
    reader: &mut R,
    writer: &mut W,
    policy: AcceptPolicy<'_>,
    is_peer: impl Fn(NodeId) -> bool,
    deadline: Instant,
) -> Result<NodeId, AcceptHelloError>
where
    R: AsyncRead + Unpin + ?Sized,
    W: AsyncWrite + Unpin + ?Sized,
{
    let hello = read_handshake_frame(reader, deadline).await.map_err(AcceptHelloError::Read)?;
    let WireMessage::Hello { version, cluster_id, node_id } = hello else {
        return Err(AcceptHelloError::NotHello(kind(&hello)));
    };
    let refusal = if version != WIRE_VERSION {
        Some(AcceptHelloError::Refused(RefusalReason::UnsupportedVersion {
            supported: WIRE_VERSION,
            got: version,
        }))
    } else if cluster_id != policy.cluster_id {
        Some(AcceptHelloError::Refused(RefusalReason::WrongCluster {
            expected: policy.cluster_id.to_owned(),
            got: cluster_id,
        }))
    } else if policy.certified.is_some_and(|certified| certified != node_id) {
        let certified = policy.certified.unwrap_or(node_id);
        Some(AcceptHelloError::IdentityMismatch { hello: node_id, certified })
    } else if node_id == policy.node_id || !is_peer(node_id) {
        Some(AcceptHelloError::Refused(RefusalReason::UnknownNode(node_id)))
    } else {
        None
    };
    let answer = match &refusal {
        Some(AcceptHelloError::Refused(reason)) => WireMessage::Refused { reason: reason.clone() },
        Some(_) => WireMessage::Refused { reason: RefusalReason::UnknownNode(node_id) },
        None => WireMessage::HelloAck { version: WIRE_VERSION, node_id: policy.node_id },
    };
    let written = tokio::time::timeout_at(deadline, write_frame(writer, &answer, u32::MAX))
        .await
        .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()));
    match (refusal, written) {
        (Some(refusal), _) => Err(refusal),
        (None, Err(error)) => Err(AcceptHelloError::Write(error)),
        (None, Ok(())) => Ok(node_id),
    }
}

/// Reads one handshake frame (at most [`HANDSHAKE_MAX_FRAME_BYTES`]) until `deadline`.
async fn read_handshake_frame<R: AsyncRead + Unpin + ?Sized>(
    reader: &mut R,
    deadline: Instant,
) -> Result<WireMessage, ReadError> {
    let decoder = FrameDecoder::new(HANDSHAKE_MAX_FRAME_BYTES);
    let mut buf = BytesMut::with_capacity(256);
    let left = deadline.saturating_duration_since(Instant::now());
    read_frame(reader, &mut buf, &decoder, Some(deadline), left).await
}

/// A short name of a frame's kind, for logs and errors.
pub fn kind(message: &WireMessage) -> &'static str {
    match message {
        WireMessage::Hello { .. } => "Hello",
        WireMessage::HelloAck { .. } => "HelloAck",
        WireMessage::Refused { .. } => "Refused",
        WireMessage::Raft(_) => "Raft",
        WireMessage::KeepAlive { .. } => "KeepAlive",
        WireMessage::KeepAliveAck { .. } => "KeepAliveAck",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    async fn run(
        policy: AcceptPolicy<'static>,
        cluster: &str,
        node: NodeId,
    ) -> (Result<NodeId, AcceptHelloError>, Result<(), ConnectHelloError>) {
        let (client, server) = tokio::io::duplex(4096);
        let (mut client_r, mut client_w) = tokio::io::split(client);
        let (mut server_r, mut server_w) = tokio::io::split(server);
        let deadline = Instant::now() + Duration::from_secs(5);
        let accept = accept_hello(&mut server_r, &mut server_w, policy, |id| id == 2, deadline);
        let connect = connect_hello(&mut client_r, &mut client_w, cluster, node, policy.node_id, deadline);
        tokio::join!(accept, connect)
    }

    #[tokio::test]
    async fn hello_is_accepted_or_refused_with_a_typed_reason() {
        let policy = AcceptPolicy { cluster_id: "c", node_id: 1, certified: None };
        let (accepted, connected) = run(policy, "c", 2).await;
        assert_eq!(accepted.expect("accepted"), 2);
        connected.expect("connected");
        let (accepted, connected) = run(policy, "other", 2).await;
        assert!(matches!(accepted, Err(AcceptHelloError::Refused(RefusalReason::WrongCluster { .. }))));
        assert!(matches!(connected, Err(ConnectHelloError::Refused(RefusalReason::WrongCluster { .. }))));
        let (accepted, _) = run(policy, "c", 3).await;
        assert!(matches!(accepted, Err(AcceptHelloError::Refused(RefusalReason::UnknownNode(3)))));
        let certified = AcceptPolicy { certified: Some(3), ..policy };
        let (accepted, _) = run(certified, "c", 2).await;
        assert!(matches!(accepted, Err(AcceptHelloError::IdentityMismatch { hello: 2, certified: 3 })));
    }
}
