//! Quick run of the openraft side: `cargo run -p raft-bench --release --example openraft_smoke`.

use raft_bench::openraft_cluster;
use raft_bench::report::summarize;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    for (proposers, total) in [(1, 2_000), (256, 50_000)] {
        let s = summarize(&openraft_cluster::run(proposers, total).await?);
        println!(
            "openraft proposers={proposers}: {:.0} ops/s, p50 {} us, p99 {} us",
            s.ops_per_sec, s.p50_us, s.p99_us
        );
    }
    Ok(())
}
