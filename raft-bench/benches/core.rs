//! `cargo bench -p raft-bench --bench core`: raft-core and openraft, same workload, same run.
//! 3 nodes in one process, in-memory storage, small commands; 1, 256 and 4096 proposers. Each
//! configuration runs `ROUNDS` times alternating the two systems; the median is reported with
//! the ratio raft-core / openraft. Then raft-core alone: linearizable reads per second
//! (ReadIndex against lease, with the ratio), and the time a follower 100 000 entries behind
//! takes to catch up by snapshot against by log replay.

use std::time::Duration;

use raft_bench::report::{summarize, Summary};
use raft_bench::{core_cluster, openraft_cluster};
use raft_core::ReadMode;

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

    println!();
    println!("| readers | total | ReadIndex reads/s | p50 us | p99 us | lease reads/s | p50 us | p99 us | lease / ReadIndex |");
    println!("|---|---|---|---|---|---|---|---|---|");
    for (readers, total) in [(1usize, 20_000usize), (256, 400_000)] {
        let mut index_runs = Vec::new();
        let mut lease_runs = Vec::new();
        for _ in 0..ROUNDS {
            index_runs.push(summarize(&runtime.block_on(core_cluster::run_reads(
                ReadMode::ReadIndex,
                readers,
                total,
            ))?));
            lease_runs.push(summarize(&runtime.block_on(core_cluster::run_reads(
                ReadMode::Lease,
                readers,
                total,
            ))?));
        }
        let (a, b) = (median(index_runs), median(lease_runs));
        println!(
            "| {readers} | {total} | {:.0} | {} | {} | {:.0} | {} | {} | {:.2} |",
            a.ops_per_sec,
            a.p50_us,
            a.p99_us,
            b.ops_per_sec,
            b.p50_us,
            b.p99_us,
            b.ops_per_sec / a.ops_per_sec
        );
    }

    println!();
    println!(
        "| follower behind by | by snapshot (ms) | snapshot covers up to | by log replay (ms) | snapshot / log |"
    );
    println!("|---|---|---|---|---|");
    let behind = 100_000;
    let mut by_snapshot = Vec::new();
    let mut by_log = Vec::new();
    let mut snapshot_index = 0;
    for _ in 0..ROUNDS {
        let s = runtime.block_on(core_cluster::catch_up(behind, 10_000))?;
        snapshot_index = s.snapshot_index;
        by_snapshot.push(s.elapsed);
        by_log.push(runtime.block_on(core_cluster::catch_up(behind, 0))?.elapsed);
    }
    let (s, l) = (median_duration(by_snapshot), median_duration(by_log));
    println!(
        "| {behind} | {:.1} | {snapshot_index} | {:.1} | {:.2} |",
        s.as_secs_f64() * 1e3,
        l.as_secs_f64() * 1e3,
        s.as_secs_f64() / l.as_secs_f64()
    );
    Ok(())
}

fn median_duration(mut xs: Vec<Duration>) -> Duration {
    xs.sort();
    xs[xs.len() / 2]
}
