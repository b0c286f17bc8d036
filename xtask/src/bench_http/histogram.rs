//! A latency histogram with log-linear buckets, in the manner of HdrHistogram: values below
//! 2^[`SUB_BUCKET_BITS`] are exact, larger ones fall in buckets whose width is 1/128 of their
//! lower bound or less, so every quantile is within 0.8% of the recorded value. Fixed size
//! (7424 counters), no allocation while recording; per-worker histograms are merged at the end.

use std::time::Duration;

/// Bits of a value kept exactly: the top 8 significant bits (the leading one and 7 more).
const SUB_BUCKET_BITS: u32 = 8;
const SUB_BUCKETS: u64 = 1 << SUB_BUCKET_BITS;
const HALF: u64 = SUB_BUCKETS / 2;
/// Exact buckets for 0..256, then 128 buckets for each power of two from 2^8 to 2^63.
const BUCKETS: usize = SUB_BUCKETS as usize + (64 - SUB_BUCKET_BITS as usize) * HALF as usize;

/// Counts of values (nanoseconds here) in log-linear buckets.
#[derive(Clone)]
pub(crate) struct Histogram {
    counts: Box<[u64]>,
    total: u64,
    min: u64,
    max: u64,
    sum: u128,
}

impl std::fmt::Debug for Histogram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Histogram")
            .field("count", &self.total)
            .field("min", &self.min)
            .field("max", &self.max)
            .finish()
    }
}

impl Default for Histogram {
    fn default() -> Self {
        Self { counts: vec![0; BUCKETS].into_boxed_slice(), total: 0, min: u64::MAX, max: 0, sum: 0 }
    }
}

fn bucket_of(value: u64) -> usize {
    if value < SUB_BUCKETS {
        return value as usize;
    }
    // The highest set bit is at `top` ≥ 8; keep the 8 bits from there down.
    let top = 63 - value.leading_zeros();
    let shift = top + 1 - SUB_BUCKET_BITS;
    let mantissa = value >> shift; // in HALF..SUB_BUCKETS
    (SUB_BUCKETS + (u64::from(shift) - 1) * HALF + (mantissa - HALF)) as usize
}

/// The largest value that falls in bucket `index`.
fn bucket_high(index: usize) -> u64 {
    let index = index as u64;
    if index < SUB_BUCKETS {
        return index;
    }
    let shift = (index - SUB_BUCKETS) / HALF + 1;
    let mantissa = (index - SUB_BUCKETS) % HALF + HALF;
    // Written so that the top bucket does not overflow: (m << s) + (2^s - 1).
    (mantissa << shift) + ((1u64 << shift) - 1)
}

impl Histogram {
    /// Counts one value.
    pub(crate) fn record(&mut self, value: u64) {
        self.counts[bucket_of(value)] += 1;
        self.total += 1;
        self.min = self.min.min(value);
        self.max = self.max.max(value);
        self.sum += u128::from(value);
    }

    /// Counts one duration, in nanoseconds.
    pub(crate) fn record_duration(&mut self, duration: Duration) {
        self.record(u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX));
    }

    /// Adds another histogram's counts.
    pub(crate) fn merge(&mut self, other: &Histogram) {
        for (mine, theirs) in self.counts.iter_mut().zip(other.counts.iter()) {
            *mine += theirs;
        }
        self.total += other.total;
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
        self.sum += other.sum;
    }

    /// Number of values recorded.
    pub(crate) fn count(&self) -> u64 {
        self.total
    }

    /// Largest value recorded (0 when empty).
    pub(crate) fn max(&self) -> u64 {
        self.max
    }

    /// Mean of the values recorded (0 when empty).
    pub(crate) fn mean(&self) -> u64 {
        if self.total == 0 {
            0
        } else {
            (self.sum / u128::from(self.total)) as u64
        }
    }

    /// The value at quantile `q` (0..=1): the smallest bucket bound with at least `q` of the
    /// values at or below it, capped by the largest value seen (0 when empty).
    pub(crate) fn quantile(&self, q: f64) -> u64 {
        if self.total == 0 {
            return 0;
        }
        let rank = ((q.clamp(0.0, 1.0) * self.total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (index, &count) in self.counts.iter().enumerate() {
            seen += count;
            if seen >= rank {
                return bucket_high(index).min(self.max).max(self.min);
            }
        }
        self.max
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_contiguous_and_tight() {
        // Every bucket starts right after the previous one ends and is at most 1/128 wide.
        let mut low = 0u64;
        for index in 0..BUCKETS {
            let high = bucket_high(index);
            assert_eq!(bucket_of(low), index, "low end of bucket {index}");
            assert_eq!(bucket_of(high), index, "high end of bucket {index}");
            if low >= SUB_BUCKETS {
                assert!((high - low) <= low / 128, "bucket {index} [{low}, {high}] too wide");
            }
            if index + 1 < BUCKETS {
                low = high + 1;
            }
        }
        assert_eq!(bucket_high(BUCKETS - 1), u64::MAX);
        assert_eq!(bucket_of(u64::MAX), BUCKETS - 1);
    }

    #[test]
    fn small_values_are_exact() {
        let mut h = Histogram::default();
        for v in 1..=100 {
            h.record(v);
        }
        assert_eq!(h.count(), 100);
        assert_eq!(h.quantile(0.5), 50);
        assert_eq!(h.quantile(0.99), 99);
        assert_eq!(h.quantile(1.0), 100);
        assert_eq!(h.quantile(0.0), 1);
        assert_eq!(h.mean(), 50);
    }

    #[test]
    fn quantiles_of_large_values_are_within_one_percent() {
        let mut h = Histogram::default();
        // 1 µs .. 10 s in nanoseconds, 10 000 values spread logarithmically.
        let values: Vec<u64> =
            (0..10_000).map(|i| (1_000.0 * 10f64.powf(i as f64 / 1_428.6)) as u64).collect();
        for &v in &values {
            h.record(v);
        }
        for q in [0.5, 0.9, 0.99, 0.999] {
            let exact = values[(q * values.len() as f64).ceil() as usize - 1];
            let got = h.quantile(q);
            let error = (got as f64 - exact as f64).abs() / exact as f64;
            assert!(error < 0.01, "q{q}: {got} vs {exact}");
        }
        assert_eq!(h.max(), *values.last().unwrap_or(&0));
    }

    #[test]
    fn merge_adds_counts() {
        let (mut a, mut b) = (Histogram::default(), Histogram::default());
        a.record(1_000);
        b.record(3_000_000);
        b.record(5);
        a.merge(&b);
        assert_eq!(a.count(), 3);
        assert_eq!(a.max(), 3_000_000);
        assert_eq!(a.quantile(0.0), 5);
        assert!(a.quantile(0.5) >= 1_000 && a.quantile(0.5) <= 1_008);
        assert_eq!(Histogram::default().quantile(0.5), 0);
    }
}
