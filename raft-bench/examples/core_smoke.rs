//! Quick run of the raft-core side: `cargo run -p raft-bench --release --example core_smoke`.

use raft_bench::core_cluster;
use raft_bench::report::summarize;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    for (proposers, total) in [(1, 5_000), (256, 100_000)] {
        let s = summarize(&core_cluster::run(proposers, total).await?);
        println!(
            "raft-core proposers={proposers}: {:.0} ops/s, p50 {} us, p99 {} us",
            s.ops_per_sec, s.p50_us, s.p99_us
        );
    }
    Ok(())
}
