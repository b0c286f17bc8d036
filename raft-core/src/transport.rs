//! The `Transport` trait: how a node sends messages to its peers and receives theirs.

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
#[async_trait]
pub trait Transport: Send + Sync {
    /// Queues `message` for `message.to`, without blocking.
    fn send(&self, message: Message) -> Result<(), SendError>;

    /// Waits for at least one inbound message, then moves up to `max` of them into `buf`.
    /// Returns the number received.
    async fn recv(&self, buf: &mut Vec<Message>, max: usize) -> Result<usize, TransportClosed>;

    /// Stops sending and receiving; idempotent.
    async fn shutdown(&self);
}
