//! One catch-up run of each kind: `cargo run -p raft-bench --release --example catch_up`.

use raft_bench::core_cluster;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    for every in [10_000u64, 0] {
        let r = core_cluster::catch_up(100_000, every).await?;
        println!("snapshot every {every}: {:?} (snapshot up to {})", r.elapsed, r.snapshot_index);
    }
    Ok(())
}
