//! `cargo bench -p raft-bench --bench core`: raft-core and openraft, same workload, same run.
//! 3 nodes in one process, in-memory storage, small commands; 1, 256 and 4096 proposers. Each
//! configuration runs `ROUNDS` times alternating the two systems; the median is reported with
//! the ratio raft-core / openraft.

use raft_bench::report::{summarize, Summary};
use raft_bench::{core_cluster, openraft_cluster};

const ROUNDS: usize = 3;

fn median(mut xs: Vec<Summary>) -> Summary {
    xs.sort_by(|a, b| a.ops_per_sec.total_cmp(&b.ops_per_sec));
    xs[xs.len() / 2]
}

fn main() -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    println!("| proposers | total | raft-core ops/s | p50 us | p99 us | openraft ops/s | p50 us | p99 us | ratio |");
    println!("|---|---|---|---|---|---|---|---|---|");
    for (proposers, total) in [(1usize, 5_000usize), (256, 200_000), (4096, 400_000)] {
        let mut ours = Vec::new();
        let mut theirs = Vec::new();
        for _ in 0..ROUNDS {
            ours.push(summarize(&runtime.block_on(core_cluster::run(proposers, total))?));
            theirs.push(summarize(&runtime.block_on(openraft_cluster::run(proposers, total))?));
        }
        let (a, b) = (median(ours), median(theirs));
        println!(
            "| {proposers} | {total} | {:.0} | {} | {} | {:.0} | {} | {} | {:.2} |",
            a.ops_per_sec,
            a.p50_us,
            a.p99_us,
            b.ops_per_sec,
            b.p50_us,
            b.p99_us,
            a.ops_per_sec / b.ops_per_sec
        );
    }
    Ok(())
}
