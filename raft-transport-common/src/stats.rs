//! The counters of a transport: [`Counters`] (live, shared by its tasks) and
//! [`TransportStats`] (a snapshot for callers).

use std::sync::atomic::{AtomicU64, Ordering};

/// Declares the counters once: the snapshot struct, the live struct and the copy between them.
macro_rules! counters {
    ($( $(#[doc = $doc:literal])* $name:ident, )*) => {
        /// A snapshot of a transport's counters since it started. A counter that does not
        /// apply to a transport (say, TLS refusals of a plaintext TCP transport) stays 0.
        #[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
        pub struct TransportStats {
            $( $(#[doc = $doc])* pub $name: u64, )*
        }

        /// The live counters, updated by a transport's tasks.
        #[derive(Debug, Default)]
        pub struct Counters {
            $( $(#[doc = $doc])* pub $name: AtomicU64, )*
        }

        impl Counters {
            /// The current values.
            pub fn snapshot(&self) -> TransportStats {
                TransportStats { $( $name: self.$name.load(Ordering::Relaxed), )* }
            }
        }
    };
}

counters! {
    /// Messages written to a peer's connection or stream.
    sent,
    /// Small messages dropped because the peer's queue was full.
    dropped_queue_full,
    /// `InstallSnapshot` messages dropped because the peer's snapshot queue was full.
    dropped_snapshot_queue_full,
    /// Messages dropped because their frame exceeded `max_frame_bytes`.
    dropped_oversized,
    /// Messages dropped because their peer was removed while they were queued.
    dropped_peer_removed,
    /// Messages received and delivered to `recv`.
    received,
    /// Received messages dropped because `from` or `to` did not match the connection.
    dropped_misaddressed,
    /// Inbound connections whose TLS handshake failed (untrusted, expired or missing
    /// certificate, plaintext on a TLS port).
    refused_tls,
    /// Inbound connections refused because the certificate's identity is not a known peer of
    /// this cluster, or does not match the node id in `Hello`.
    refused_identity,
    /// Inbound `Hello`s refused (wrong cluster, unknown or removed node, unsupported version).
    refused_handshakes,
    /// Outbound connection attempts that failed (refused, TLS, identity, timeout, unreachable).
    connect_failures,
    /// Inbound connections or streams closed for a bad frame (too large, empty, undecodable,
    /// unexpected).
    bad_frames,
    /// Connections closed for a timeout (handshake, frame, idle).
    timeouts,
    /// Inbound connections closed at once because the connection limit was reached.
    rejected_connections,
    /// Outbound connections established after the first one to the same peer.
    reconnects,
}

impl Counters {
    /// Adds `n` to `counter`.
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Counts and logs an inbound TLS handshake from `peer_addr` that failed with `error`, or
    /// timed out (`None`).
    pub fn tls_refused(&self, peer_addr: std::net::SocketAddr, error: Option<&dyn std::fmt::Display>) {
        Self::add(&self.refused_tls, 1);
        match error {
            Some(error) => tracing::warn!(%peer_addr, %error, "TLS handshake failed"),
            None => tracing::warn!(%peer_addr, "TLS handshake timed out"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_copies_every_counter() {
        let counters = Counters::default();
        Counters::add(&counters.sent, 3);
        Counters::add(&counters.reconnects, 1);
        let stats = counters.snapshot();
        assert_eq!((stats.sent, stats.reconnects, stats.received), (3, 1, 0));
    }
}
