//! Counters of a [`TcpTransport`](crate::TcpTransport).

use std::sync::atomic::{AtomicU64, Ordering};

/// A snapshot of a transport's counters since it started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TcpStats {
    /// Messages written to a peer's socket.
    pub sent: u64,
    /// Messages dropped because the peer's queue was full.
    pub dropped_queue_full: u64,
    /// Messages dropped because their frame exceeded `max_frame_bytes`.
    pub dropped_oversized: u64,
    /// Messages received and delivered to `recv`.
    pub received: u64,
    /// Received messages dropped because `from` or `to` did not match the connection.
    pub dropped_misaddressed: u64,
    /// Inbound handshakes refused (wrong cluster, unknown node, unsupported version).
    pub refused_handshakes: u64,
    /// Inbound connections closed for a bad frame (too large, empty, undecodable, unexpected).
    pub bad_frames: u64,
    /// Inbound connections closed for a timeout (handshake or frame).
    pub timeouts: u64,
    /// Inbound connections closed at once because the connection limit was reached.
    pub rejected_connections: u64,
    /// Outbound connections established after the first one to the same peer.
    pub reconnects: u64,
}

/// The live counters.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) sent: AtomicU64,
    pub(crate) dropped_queue_full: AtomicU64,
    pub(crate) dropped_oversized: AtomicU64,
    pub(crate) received: AtomicU64,
    pub(crate) dropped_misaddressed: AtomicU64,
    pub(crate) refused_handshakes: AtomicU64,
    pub(crate) bad_frames: AtomicU64,
    pub(crate) timeouts: AtomicU64,
    pub(crate) rejected_connections: AtomicU64,
    pub(crate) reconnects: AtomicU64,
}

impl Counters {
    /// Adds `n` to `counter`.
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// The current values.
    pub(crate) fn snapshot(&self) -> TcpStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        TcpStats {
            sent: get(&self.sent),
            dropped_queue_full: get(&self.dropped_queue_full),
            dropped_oversized: get(&self.dropped_oversized),
            received: get(&self.received),
            dropped_misaddressed: get(&self.dropped_misaddressed),
            refused_handshakes: get(&self.refused_handshakes),
            bad_frames: get(&self.bad_frames),
            timeouts: get(&self.timeouts),
            rejected_connections: get(&self.rejected_connections),
            reconnects: get(&self.reconnects),
        }
    }
}
