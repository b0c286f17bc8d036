//! [`ClientOptions`] and the retry [`Backoff`].

use std::time::Duration;

use crate::api::Consistency;
use crate::error::ClientError;

/// How a [`Client`](crate::Client) talks to the cluster. Its `Debug` output never shows the
/// token.
#[derive(Clone, PartialEq, Eq)]
pub struct ClientOptions {
    /// Time limit of one attempt (connect, send, whole answer). Default 5 s.
    pub request_timeout: Duration,
    /// Retries after the first attempt of a call (redirects count). Default 8.
    pub max_retries: u32,
    /// Pause before a retry on another node (not after a redirect to a named leader).
    pub retry_backoff: Backoff,
    /// The consistency of reads that do not name one. Default linearizable.
    pub consistency: Consistency,
    /// The session's client id; `None` draws a random one.
    pub client_id: Option<u64>,
    /// Largest answer body accepted, and largest single watch event, in bytes. Default
    /// 32 MiB.
    pub response_bytes_max: usize,
    /// A watch that receives no byte (event or keep-alive comment) for this long fails with
    /// a timeout; `None` waits forever. Default 60 s (servers send keep-alives every 15 s).
    pub watch_idle_timeout: Option<Duration>,
    /// The bearer token sent with every request (`Authorization: Bearer ...`), for a cluster
    /// with client authentication (`[auth]`); `None` sends none.
    pub token: Option<String>,
    /// HTTPS: the CA to trust and the client's certificate. With it, every endpoint (and
    /// every redirect and leader hint) is `https`; without it, every one is plain `http`.
    pub tls: Option<crate::ClientTls>,
}

impl std::fmt::Debug for ClientOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientOptions")
            .field("request_timeout", &self.request_timeout)
            .field("max_retries", &self.max_retries)
            .field("retry_backoff", &self.retry_backoff)
            .field("consistency", &self.consistency)
            .field("client_id", &self.client_id)
            .field("response_bytes_max", &self.response_bytes_max)
            .field("watch_idle_timeout", &self.watch_idle_timeout)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("tls", &self.tls)
            .finish()
    }
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self {
            request_timeout: Duration::from_secs(5),
            max_retries: 8,
            retry_backoff: Backoff::default(),
            consistency: Consistency::Linearizable,
            client_id: None,
            response_bytes_max: 32 << 20,
            watch_idle_timeout: Some(Duration::from_secs(60)),
            token: None,
            tls: None,
        }
    }
}

/// Upper bound on [`ClientOptions::max_retries`].
pub const MAX_RETRIES_MAX: u32 = 1000;
/// Lower bound on [`ClientOptions::response_bytes_max`].
pub const RESPONSE_BYTES_MAX_MIN: usize = 4096;

impl ClientOptions {
    /// Checks the options against each other.
    pub fn validate(&self) -> Result<(), ClientError> {
        if self.request_timeout.is_zero() {
            return Err(ClientError::InvalidOptions("request_timeout must be positive"));
        }
        if self.max_retries > MAX_RETRIES_MAX {
            return Err(ClientError::InvalidOptions("max_retries must be at most 1000"));
        }
        if self.retry_backoff.initial > self.retry_backoff.max {
            return Err(ClientError::InvalidOptions(
                "retry_backoff.initial must not exceed retry_backoff.max",
            ));
        }
        if self.response_bytes_max < RESPONSE_BYTES_MAX_MIN {
            return Err(ClientError::InvalidOptions("response_bytes_max must be at least 4096"));
        }
        if self.watch_idle_timeout.is_some_and(|t| t.is_zero()) {
            return Err(ClientError::InvalidOptions("watch_idle_timeout must be positive"));
        }
        if let Some(token) = &self.token {
            if token.is_empty() || reqwest::header::HeaderValue::from_str(&format!("Bearer {token}")).is_err()
            {
                return Err(ClientError::InvalidOptions(
                    "token must be non-empty visible ASCII (it goes in a header)",
                ));
            }
        }
        Ok(())
    }
}

/// Capped exponential backoff with jitter: before retry `n` (from 0) the client waits a
/// random duration in `[d/2, d]` where `d = min(initial * 2^n, max)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// The ceiling of the first pause. Default 50 ms.
    pub initial: Duration,
    /// The largest pause. Default 1 s.
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self { initial: Duration::from_millis(50), max: Duration::from_secs(1) }
    }
}

impl Backoff {
    /// The pause before retry `retry` (0 for the first), with `random` a uniformly random
    /// `u64` providing the jitter.
    pub fn delay(&self, retry: u32, random: u64) -> Duration {
        let factor = 1u32.checked_shl(retry.min(31)).unwrap_or(u32::MAX);
        let ceiling = self.initial.saturating_mul(factor).min(self.max);
        let ceiling_nanos = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
        let half = ceiling_nanos / 2;
        let span = ceiling_nanos - half;
        let jitter = if span == 0 { 0 } else { random % (span + 1) };
        Duration::from_nanos(half + jitter)
    }
}

/// SplitMix64 step: a well-mixed `u64` from a counter (not cryptographic; used for jitter and
/// the client id).
pub(crate) fn splitmix64(state: u64) -> u64 {
    let mut z = state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A random `u64` from the standard library's per-process random hash keys and the clock.
pub(crate) fn random_seed() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    RandomState::new().hash_one(nanos)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_is_capped_and_jitters_within_bounds() {
        let b = Backoff { initial: Duration::from_millis(100), max: Duration::from_millis(800) };
        for (retry, ceiling_ms) in [(0u32, 100u64), (1, 200), (2, 400), (3, 800), (4, 800), (40, 800)] {
            let ceiling = Duration::from_millis(ceiling_ms);
            assert_eq!(b.delay(retry, 0), ceiling / 2, "retry {retry}");
            let span = ceiling.as_nanos() as u64 - ceiling.as_nanos() as u64 / 2;
            assert_eq!(b.delay(retry, span), ceiling, "retry {retry}");
            for r in [1u64, 12345, u64::MAX, splitmix64(7)] {
                let d = b.delay(retry, r);
                assert!(d >= ceiling / 2 && d <= ceiling, "retry {retry}: {d:?}");
            }
        }
        let zero = Backoff { initial: Duration::ZERO, max: Duration::ZERO };
        assert_eq!(zero.delay(3, 99), Duration::ZERO);
    }

    #[test]
    fn options_are_validated() {
        assert!(ClientOptions::default().validate().is_ok());
        let bad = [
            ClientOptions { request_timeout: Duration::ZERO, ..Default::default() },
            ClientOptions { max_retries: MAX_RETRIES_MAX + 1, ..Default::default() },
            ClientOptions {
                retry_backoff: Backoff { initial: Duration::from_secs(2), max: Duration::from_secs(1) },
                ..Default::default()
            },
            ClientOptions { response_bytes_max: 10, ..Default::default() },
            ClientOptions { watch_idle_timeout: Some(Duration::ZERO), ..Default::default() },
        ];
        for o in bad {
            assert!(matches!(o.validate(), Err(ClientError::InvalidOptions(_))), "{o:?}");
        }
    }
}
