//! In-process benchmarks: raft-core and openraft side by side on the same workload.

pub mod core_cluster;
pub mod openraft_cluster;
pub mod report;

use std::time::Duration;

/// The outcome of one benchmark run.
#[derive(Debug, Clone)]
pub struct BenchReport {
    /// Number of proposals that completed.
    pub ops: usize,
    /// Wall time from the first proposal to the last one applied on the leader.
    pub elapsed: Duration,
    /// Latency of each proposal in microseconds.
    pub latencies_us: Vec<u64>,
}
