//! Summaries of benchmark runs: throughput and latency percentiles.

use crate::BenchReport;

/// Throughput and latency percentiles of one run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Summary {
    /// Proposals per second.
    pub ops_per_sec: f64,
    /// Median latency in microseconds.
    pub p50_us: u64,
    /// 99th-percentile latency in microseconds.
    pub p99_us: u64,
}

/// The `per_mille`/1000 quantile of `sorted` (nearest rank); 0 when empty.
pub fn quantile(sorted: &[u64], per_mille: usize) -> u64 {
    let rank = (sorted.len() * per_mille).div_ceil(1000).max(1);
    sorted.get(rank - 1).copied().unwrap_or(0)
}

/// Summarizes a report.
pub fn summarize(report: &BenchReport) -> Summary {
    let mut lat = report.latencies_us.clone();
    lat.sort_unstable();
    let secs = report.elapsed.as_secs_f64();
    Summary {
        ops_per_sec: if secs > 0.0 { report.ops as f64 / secs } else { 0.0 },
        p50_us: quantile(&lat, 500),
        p99_us: quantile(&lat, 990),
    }
}
