//! The driver's clock: the protocol's milliseconds, and when tokio should wake the driver for a
//! deadline. Replaceable so that simulations can give each node a clock of its own rate.

use std::time::Duration;

use tokio::time::Instant;

use crate::types::Millis;

/// A node's monotonic clock, as the driver reads it.
///
/// The protocol's lease reads assume that the clocks of any two nodes run at rates within
/// [`Config::max_clock_drift_percent`](crate::Config::max_clock_drift_percent) of each other.
pub trait Clock: Send + Sync {
    /// Milliseconds since the clock started (never goes backwards).
    fn now_ms(&self) -> Millis;

    /// The tokio instant at which this clock reads `ms`.
    fn instant_at(&self, ms: Millis) -> Instant;
}

/// Tokio's clock, started when the node starts (the default).
#[derive(Debug, Clone, Copy)]
pub struct TokioClock {
    started: Instant,
}

impl TokioClock {
    /// A clock that reads 0 now.
    pub fn new() -> Self {
        Self { started: Instant::now() }
    }
}

impl Default for TokioClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for TokioClock {
    fn now_ms(&self) -> Millis {
        self.started.elapsed().as_millis() as Millis
    }

    fn instant_at(&self, ms: Millis) -> Instant {
        self.started + Duration::from_millis(ms)
    }
}

/// A clock that runs `rate_ppm` parts per million faster (positive) or slower (negative) than
/// tokio's, for simulations of clock drift.
#[derive(Debug, Clone, Copy)]
pub struct DriftingClock {
    started: Instant,
    rate_ppm: i64,
}

impl DriftingClock {
    /// A clock that reads 0 now and runs at `1 + rate_ppm / 1e6` times tokio's rate
    /// (`rate_ppm` is clamped to ±500,000).
    pub fn new(rate_ppm: i64) -> Self {
        Self { started: Instant::now(), rate_ppm: rate_ppm.clamp(-500_000, 500_000) }
    }
}

impl Clock for DriftingClock {
    fn now_ms(&self) -> Millis {
        let real = self.started.elapsed().as_micros() as i128;
        let scaled = real * (1_000_000 + self.rate_ppm as i128) / 1_000_000;
        (scaled / 1_000) as Millis
    }

    fn instant_at(&self, ms: Millis) -> Instant {
        // The first real microsecond at which `now_ms` reads at least `ms`.
        let micros = (ms as i128 * 1_000 * 1_000_000).div_euclid(1_000_000 + self.rate_ppm as i128) + 1;
        self.started + Duration::from_micros(micros.max(0) as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_drifting_clock_reaches_its_deadlines_at_the_scaled_time() {
        for rate in [-100_000, 0, 50_000] {
            let clock = DriftingClock::new(rate);
            let at = clock.instant_at(1_000);
            tokio::time::sleep_until(at).await;
            assert!(clock.now_ms() >= 1_000, "rate {rate}: {}", clock.now_ms());
            assert!(clock.now_ms() <= 1_001, "rate {rate}: {}", clock.now_ms());
        }
        let slow = DriftingClock::new(-100_000);
        tokio::time::sleep(Duration::from_millis(1_000)).await;
        assert_eq!(slow.now_ms(), 900);
    }
}
