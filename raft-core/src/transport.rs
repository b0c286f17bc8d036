//! The `Transport` trait: how a node sends messages to its peers and receives theirs.

use std::net::SocketAddr;

use async_trait::async_trait;

use crate::message::Message;
use crate::types::NodeId;

/// Why a message could not be queued. The protocol tolerates loss, so callers count these
/// and move on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// The peer's outbound queue is full; the message was dropped.
    #[error("outbound queue to node {0} is full; message dropped")]
    QueueFull(NodeId),
    /// The transport does not know this node.
    #[error("unknown node {0}")]
    UnknownPeer(NodeId),
    /// The transport is shut down.
    #[error("transport is closed")]
    Closed,
}

/// The transport is shut down; no more messages will arrive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("transport is closed")]
pub struct TransportClosed;

/// Why a peer could not be added, moved or removed at runtime.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PeerError {
    /// The transport's peers are fixed when it starts.
    #[error("this transport does not change its peers at runtime")]
    Unsupported,
    /// The id is this node's own.
    #[error("node {0} is this node, not a peer")]
    IsSelf(NodeId),
    /// The transport does not know this node (on removal).
    #[error("unknown node {0}")]
    UnknownPeer(NodeId),
    /// The transport is shut down.
    #[error("transport is closed")]
    Closed,
}

/// Message delivery between nodes.
///
/// # Correctness
/// - [`send`](Transport::send) **never blocks**: it queues the message on a bounded per-peer
///   queue and returns; when the queue is full the message is dropped and `QueueFull`
///   returned. Raft tolerates loss, duplication and reordering, but a transport should keep
///   per-peer order when it can (pipelining is faster without reordering).
/// - [`recv`](Transport::recv) is **cancel-safe**: if its future is dropped before it
///   completes, no message is lost.
/// - Messages from unknown nodes or another cluster are never delivered.
/// - Peers changed at runtime ([`set_peer`](Transport::set_peer),
///   [`remove_peer`](Transport::remove_peer)) take effect for messages sent after the call
///   returns. Once `remove_peer` returned, `send` to that node fails with `UnknownPeer`, its
///   connections are closed and new ones refused; messages of it that were already received
///   may still be returned by `recv`.
#[async_trait]
pub trait Transport: Send + Sync {
    /// Queues `message` for `message.to`, without blocking.
    fn send(&self, message: Message) -> Result<(), SendError>;

    /// Waits for at least one inbound message, then moves up to `max` of them into `buf`.
    /// Returns the number received.
    async fn recv(&self, buf: &mut Vec<Message>, max: usize) -> Result<usize, TransportClosed>;

    /// Stops sending and receiving; idempotent.
    async fn shutdown(&self);

    /// Adds peer `id` listening on `addr` (a node joining the cluster), or moves a known peer
    /// to `addr` (its connection is re-established there; queued messages are kept). Without
    /// blocking. The default refuses with [`PeerError::Unsupported`].
    fn set_peer(&self, id: NodeId, addr: SocketAddr) -> Result<(), PeerError> {
        let _ = (id, addr);
        Err(PeerError::Unsupported)
    }

    /// Removes peer `id`: drops its queued messages, closes its connections and refuses its
    /// traffic from now on. Without blocking. The default refuses with
    /// [`PeerError::Unsupported`].
    fn remove_peer(&self, id: NodeId) -> Result<(), PeerError> {
        let _ = id;
        Err(PeerError::Unsupported)
    }
}
