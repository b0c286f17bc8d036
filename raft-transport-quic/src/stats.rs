//! Counters of a [`QuicTransport`](crate::QuicTransport).

use std::sync::atomic::{AtomicU64, Ordering};

/// A snapshot of a transport's counters since it started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QuicStats {
    /// Messages written to a peer's stream.
    pub sent: u64,
    /// Small messages dropped because the peer's queue was full.
    pub dropped_queue_full: u64,
    /// `InstallSnapshot` messages dropped because the peer's snapshot queue was full.
    pub dropped_snapshot_queue_full: u64,
    /// Messages dropped because their frame exceeded `max_frame_bytes`.
    pub dropped_oversized: u64,
    /// Messages received and delivered to `recv`.
    pub received: u64,
    /// Received messages dropped because `from` or `to` did not match the connection.
    pub dropped_misaddressed: u64,
    /// Inbound connections whose TLS handshake failed (untrusted, expired or missing certificate).
    pub refused_tls: u64,
    /// Inbound connections refused because the certificate's identity is not a known peer
    /// of this cluster, or does not match the node id in `Hello`.
    pub refused_identity: u64,
    /// Inbound `Hello`s refused (wrong cluster, unknown node, unsupported version).
    pub refused_handshakes: u64,
    /// Outbound connection attempts that failed (TLS, identity, refusal, timeout).
    pub connect_failures: u64,
    /// Inbound streams closed for a bad frame (too large, empty, undecodable, unexpected).
    pub bad_frames: u64,
    /// Inbound connections refused at once because the connection limit was reached.
    pub rejected_connections: u64,
    /// Outbound connections established after the first one to the same peer.
    pub reconnects: u64,
}

/// The live counters.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) sent: AtomicU64,
    pub(crate) dropped_queue_full: AtomicU64,
    pub(crate) dropped_snapshot_queue_full: AtomicU64,
    pub(crate) dropped_oversized: AtomicU64,
    pub(crate) received: AtomicU64,
    pub(crate) dropped_misaddressed: AtomicU64,
    pub(crate) refused_tls: AtomicU64,
    pub(crate) refused_identity: AtomicU64,
    pub(crate) refused_handshakes: AtomicU64,
    pub(crate) connect_failures: AtomicU64,
    pub(crate) bad_frames: AtomicU64,
    pub(crate) rejected_connections: AtomicU64,
    pub(crate) reconnects: AtomicU64,
}

impl Counters {
    /// Adds `n` to `counter`.
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// The current values.
    pub(crate) fn snapshot(&self) -> QuicStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        QuicStats {
            sent: get(&self.sent),
            dropped_queue_full: get(&self.dropped_queue_full),
            dropped_snapshot_queue_full: get(&self.dropped_snapshot_queue_full),
            dropped_oversized: get(&self.dropped_oversized),
            received: get(&self.received),
            dropped_misaddressed: get(&self.dropped_misaddressed),
            refused_tls: get(&self.refused_tls),
            refused_identity: get(&self.refused_identity),
            refused_handshakes: get(&self.refused_handshakes),
            connect_failures: get(&self.connect_failures),
            bad_frames: get(&self.bad_frames),
            rejected_connections: get(&self.rejected_connections),
            reconnects: get(&self.reconnects),
        }
    }
}
