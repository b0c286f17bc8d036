//! The counters of a transport: [`Counters`] (live, shared by its tasks) and
//! [`TransportStats`] (a snapshot for callers).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

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
        let Some(suppressed) = REFUSALS_LOGGED.admit() else { return };
        match error {
            Some(error) => tracing::warn!(%peer_addr, %error, suppressed, "TLS handshake failed"),
            None => tracing::warn!(%peer_addr, suppressed, "TLS handshake timed out"),
        }
    }
}

/// Lets through at most one log line per interval; the lines held back are counted and
/// reported with the next one. Refused connections are logged through
/// [`REFUSALS_LOGGED`]: a flood of connections from anyone who reaches the port must not
/// flood the log (and the disk under it); the counters still count every one.
#[derive(Debug)]
pub struct LogGate {
    interval: Duration,
    /// Milliseconds since the process's first gate use at the last line let through, plus 1
    /// (0: never).
    last_ms: AtomicU64,
    held_back: AtomicU64,
}

/// The gate of every transport's refused-connection warnings in this process: one per second.
pub static REFUSALS_LOGGED: LogGate = LogGate::new(Duration::from_secs(1));

impl LogGate {
    /// A gate that lets one line through per `interval`.
    pub const fn new(interval: Duration) -> Self {
        Self { interval, last_ms: AtomicU64::new(0), held_back: AtomicU64::new(0) }
    }

    /// `Some(lines held back since the last one)` if a line may be logged now, else `None`
    /// (and this line is counted as held back).
    pub fn admit(&self) -> Option<u64> {
        static ORIGIN: OnceLock<Instant> = OnceLock::new();
        let now = u64::try_from(ORIGIN.get_or_init(Instant::now).elapsed().as_millis()).unwrap_or(u64::MAX);
        let stamp = now.saturating_add(1);
        let last = self.last_ms.load(Ordering::Relaxed);
        let interval = u64::try_from(self.interval.as_millis()).unwrap_or(u64::MAX);
        let due = last == 0 || stamp >= last.saturating_add(interval);
        if due && self.last_ms.compare_exchange(last, stamp, Ordering::Relaxed, Ordering::Relaxed).is_ok() {
            Some(self.held_back.swap(0, Ordering::Relaxed))
        } else {
            self.held_back.fetch_add(1, Ordering::Relaxed);
            None
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

    #[test]
    fn a_log_gate_lets_one_line_through_per_interval_and_counts_the_rest() {
        let gate = LogGate::new(Duration::from_secs(3600));
        assert_eq!(gate.admit(), Some(0));
        for _ in 0..1000 {
            assert_eq!(gate.admit(), None);
        }
        let open = LogGate::new(Duration::ZERO);
        assert_eq!(open.admit(), Some(0));
        assert_eq!(open.admit(), Some(0));
    }
}
