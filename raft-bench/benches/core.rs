//! `cargo bench -p raft-bench --bench core` (or `cargo xtask bench core [--openraft DIR]`):
//! raft-core and openraft, same workload, same run.
//!
//! Writes: 3 voters in one process, in-memory storage, the nodes on a 2-thread server runtime
//! and the proposers on a 1-thread client runtime (openraft's own `benchmarks/minimal` split);
//! 1, 256 and 4096 proposers. Each configuration runs `ROUNDS` times, the systems alternating
//! within a round: raft-core, openraft through this crate's glue, and, when
//! `OPENRAFT_BENCH_BIN` names it, openraft's own `benchmarks/minimal` binary with the same
//! threads. Medians are reported with the spread of the rounds ((max - min) / median).
//! Then raft-core alone: linearizable reads per second (ReadIndex against lease), and the time a
//! follower 100 000 entries behind takes to catch up by snapshot against by log replay.

use std::path::PathBuf;
use std::time::Duration;

use raft_bench::report::{summarize, Summary};
use raft_bench::{core_cluster, floor, openraft_cluster, openraft_own, Runtimes};
use raft_core::ReadMode;

const ROUNDS: usize = 5;
const SERVER_WORKERS: usize = 2;
const CLIENT_WORKERS: usize = 1;

fn median(mut xs: Vec<Summary>) -> Summary {
    xs.sort_by(|a, b| a.ops_per_sec.total_cmp(&b.ops_per_sec));
    xs[xs.len() / 2]
}

/// (max - min) / median of the rounds' throughputs, in percent.
fn spread(xs: &[f64]) -> f64 {
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    match (v.first(), v.get(v.len() / 2), v.last()) {
        (Some(min), Some(mid), Some(max)) if *mid > 0.0 => (max - min) / mid * 100.0,
        _ => 0.0,
    }
}

fn main() -> anyhow::Result<()> {
    let rt = Runtimes::new(SERVER_WORKERS, CLIENT_WORKERS)?;
    let own_bin = std::env::var_os("OPENRAFT_BENCH_BIN").map(PathBuf::from);
    println!(
        "writes: 3 voters in one process, {SERVER_WORKERS} server + {CLIENT_WORKERS} client threads for every \
         system; medians of {ROUNDS} rounds, the order rotating; spread = (max - min) / median"
    );
    println!(
        "raft-core: its defaults (heartbeat 20 ms, election 150-300 ms, 8 appends in flight per follower, \
         a snapshot every 10 000 entries), 16-byte proposals, in-memory storage, channel transport; \
         one proposal in 8 timed (two clock reads)"
    );
    println!(
        "openraft (glue): openraft-rt-tokio, benchmarks/minimal's config (heartbeat 50 ms, election \
         200-2000 ms, max_payload_entries and purge_batch_size 1024, one AppendEntries in flight, a \
         snapshot every 5 000 entries), empty proposals, log and state machine as Rust values, \
         direct calls; one proposal in 8 timed"
    );
    println!(
        "openraft (own binary): benchmarks/minimal as built from openraft's repository (its own \
         version and features), empty proposals, nothing timed per proposal"
    );
    println!(
        "floor: no Raft, only the hand-offs of a replicated proposal (proposer -> leader task -> two \
         follower tasks -> leader -> proposer, bounded tokio channels, batched, 8 batches out) on the \
         same threads; at 1 proposer the four hand-offs raft-core's proposals take (a bound for a \
         library with a leader task and follower tasks), with many a reference only (batching \
         differs); one proposal in 8 timed"
    );
    println!();
    let mut floor_rows = Vec::new();
    println!(
        "| proposers | total | raft-core ops/s | p50 us | p99 us | spread | openraft (glue) ops/s | p50 us | p99 us | \
         spread | openraft (own binary) ops/s | spread | raft-core / openraft glue | raft-core / openraft own |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for (proposers, total) in [(1usize, 20_000usize), (256, 400_000), (4096, 800_000)] {
        let mut ours = Vec::new();
        let mut glue = Vec::new();
        let mut own = Vec::new();
        let mut floors = Vec::new();
        for round in 0..ROUNDS {
            // Each round starts with another system, so that no system always runs first.
            for turn in 0..4 {
                match (round + turn) % 4 {
                    0 => ours.push(summarize(&core_cluster::run(&rt, proposers, total)?)),
                    1 => glue.push(summarize(&openraft_cluster::run(&rt, proposers, total)?)),
                    2 => floors.push(summarize(&floor::run(&rt, proposers, total)?)),
                    _ => {
                        if let Some(bin) = &own_bin {
                            own.push(openraft_own::run(
                                bin,
                                SERVER_WORKERS,
                                CLIENT_WORKERS,
                                proposers,
                                total,
                            )?);
                        }
                    }
                }
            }
        }
        let throughputs = |xs: &[Summary]| xs.iter().map(|s| s.ops_per_sec).collect::<Vec<_>>();
        let ours_spread = spread(&throughputs(&ours));
        let glue_spread = spread(&throughputs(&glue));
        let floor_spread = spread(&throughputs(&floors));
        // The floor against openraft's own binary round by round (the two ran in the same round).
        let per_round: Vec<f64> = floors.iter().zip(&own).map(|(f, o)| f.ops_per_sec / o).collect();
        let (a, b, f) = (median(ours), median(glue), median(floors));
        let (own_cell, own_spread, own_ratio, own_floor) = if own.is_empty() {
            ("not run".to_string(), "-".to_string(), "-".to_string(), "- | -".to_string())
        } else {
            let m = median_of(&own);
            let lowest = per_round.iter().copied().fold(f64::INFINITY, f64::min);
            let highest = per_round.iter().copied().fold(0.0, f64::max);
            (
                format!("{m:.0}"),
                format!("{:.0} %", spread(&own)),
                format!("{:.3}", a.ops_per_sec / m),
                format!("{:.3} | {lowest:.3}-{highest:.3}", f.ops_per_sec / m),
            )
        };
        println!(
            "| {proposers} | {total} | {:.0} | {} | {} | {ours_spread:.0} % | {:.0} | {} | {} | {glue_spread:.0} % | \
             {own_cell} | {own_spread} | {:.3} | {own_ratio} |",
            a.ops_per_sec,
            a.p50_us,
            a.p99_us,
            b.ops_per_sec,
            b.p50_us,
            b.p99_us,
            a.ops_per_sec / b.ops_per_sec,
        );
        floor_rows.push(format!(
            "| {proposers} | {total} | {:.0} | {} | {} | {floor_spread:.0} % | {:.3} | {own_floor} |",
            f.ops_per_sec,
            f.p50_us,
            f.p99_us,
            a.ops_per_sec / f.ops_per_sec
        ));
    }
    println!();
    println!(
        "| proposers | total | floor ops/s | p50 us | p99 us | spread | raft-core / floor | floor / openraft own \
         (medians) | floor / openraft own (each round, min-max) |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for row in floor_rows {
        println!("{row}");
    }
    let runtime = &rt.server;

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

/// The median of `xs` (the upper one of an even count).
fn median_of(xs: &[f64]) -> f64 {
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

fn median_duration(mut xs: Vec<Duration>) -> Duration {
    xs.sort();
    xs[xs.len() / 2]
}
