//! Smoke run of the openraft side of the benchmark: a 3-node in-process openraft cluster,
//! first with a single proposer, then with 256 concurrent proposers.
//!
//! `cargo run -p raft-bench --release --example openraft_smoke`

use raft_bench::openraft_cluster;
use raft_bench::BenchReport;

/// Returns the `per_mille`/1000 quantile of `sorted` (nearest rank); 0 when empty.
fn quantile(sorted: &[u64], per_mille: usize) -> u64 {
    let rank = (sorted.len() * per_mille).div_ceil(1000).max(1);
    sorted.get(rank - 1).copied().unwrap_or(0)
}

/// Prints throughput and latency percentiles of one run.
fn print_report(label: &str, report: &BenchReport) {
    let mut lat = report.latencies_us.clone();
    lat.sort_unstable();
    let secs = report.elapsed.as_secs_f64();
    let ops_per_sec = if secs > 0.0 { report.ops as f64 / secs } else { 0.0 };
    println!(
        "{label}: {} ops in {:.3} s = {:.0} ops/s; latency p50 {} us, p99 {} us, max {} us",
        report.ops,
        secs,
        ops_per_sec,
        quantile(&lat, 500),
        quantile(&lat, 990),
        lat.last().copied().unwrap_or(0),
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    for (proposers, total) in [(1, 2_000), (256, 50_000)] {
        let report = openraft_cluster::run(proposers, total).await?;
        print_report(&format!("openraft proposers={proposers} total={total}"), &report);
    }
    Ok(())
}
