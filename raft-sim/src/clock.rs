//! Each process's clock: it drifts from tokio's at a rate within the configured bound, the
//! rate can change while the process runs (the nemesis sets the worst case: a slow leader
//! among fast voters), and its deadlines wait while the process is paused.

use std::sync::{Arc, Mutex};

use raft_core::{Clock, Millis, NodeId};
use tokio::time::{Duration, Instant};

use crate::disk::lock;
use crate::net::Network;

/// From `at` on, the clock runs at `1 + rate_ppm / 1e6` times tokio's rate, reading
/// `micros` at `at`.
#[derive(Debug, Clone, Copy)]
struct Segment {
    at: Instant,
    micros: i128,
    rate_ppm: i64,
}

/// A node's clock (one per incarnation, reading 0 at its start).
///
/// A paused process's timers fire when it resumes, and the clock reads the real time then
/// (as a monotonic clock does across a SIGSTOP). A timer armed before the pause began still
/// fires inside it; the driver then runs, but what it sends leaves at the resumption.
pub(crate) struct SimClock {
    id: NodeId,
    net: Arc<Mutex<Network>>,
    segments: Mutex<Vec<Segment>>,
}

impl SimClock {
    /// A clock of node `id` reading 0 now, at `rate_ppm`.
    pub(crate) fn new(id: NodeId, net: Arc<Mutex<Network>>, rate_ppm: i64) -> Self {
        let first = Segment { at: Instant::now(), micros: 0, rate_ppm };
        Self { id, net, segments: Mutex::new(vec![first]) }
    }

    /// From now on, run at `rate_ppm`.
    pub(crate) fn set_rate(&self, rate_ppm: i64) {
        let now = Instant::now();
        let micros = self.micros_at(now);
        lock(&self.segments).push(Segment { at: now, micros, rate_ppm });
    }

    /// What the clock reads (µs) at tokio instant `t`.
    fn micros_at(&self, t: Instant) -> i128 {
        let segments = lock(&self.segments);
        let s = segments.iter().rev().find(|s| s.at <= t).unwrap_or(&segments[0]);
        let real = t.saturating_duration_since(s.at).as_micros() as i128;
        s.micros + real * (1_000_000 + s.rate_ppm as i128) / 1_000_000
    }

    /// The first tokio instant at which the clock reads at least `ms` (for a reading in the
    /// past too: the segments are kept).
    pub(crate) fn instant_of(&self, ms: Millis) -> Instant {
        let target = ms as i128 * 1_000;
        let segments = lock(&self.segments);
        let s = segments.iter().rev().find(|s| s.micros <= target).unwrap_or(&segments[0]);
        let micros = ((target - s.micros) * 1_000_000).div_euclid(1_000_000 + s.rate_ppm as i128) + 1;
        s.at + Duration::from_micros(micros.max(0) as u64)
    }
}

impl Clock for SimClock {
    fn now_ms(&self) -> Millis {
        (self.micros_at(Instant::now()) / 1_000) as Millis
    }

    fn instant_at(&self, ms: Millis) -> Instant {
        let at = self.instant_of(ms);
        match lock(&self.net).paused_until(self.id) {
            Some(resume) => at.max(resume),
            None => at,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_rate_change_keeps_the_clock_monotonic_and_its_past_readable() {
        let net = Arc::new(Mutex::new(Network::new(1, 1)));
        let clock = SimClock::new(1, net, -100_000);
        tokio::time::sleep(Duration::from_millis(1_000)).await;
        assert_eq!(clock.now_ms(), 900);
        clock.set_rate(100_000);
        tokio::time::sleep(Duration::from_millis(1_000)).await;
        assert_eq!(clock.now_ms(), 2_000);
        let start = Instant::now() - Duration::from_millis(2_000);
        // 450 ms on the clock: 500 ms of tokio time into the first segment.
        let at = clock.instant_of(450);
        assert!(at.duration_since(start) >= Duration::from_millis(500));
        assert!(at.duration_since(start) <= Duration::from_millis(501));
        // 1,450 ms: the second segment starts at 900 ms on the clock, 1,000 ms of tokio time;
        // 550 more at 1.1 are 500 ms of tokio time.
        let at = clock.instant_of(1_450).duration_since(start).as_micros();
        assert!((1_500_000..=1_500_001).contains(&at), "{at}");
    }
}
