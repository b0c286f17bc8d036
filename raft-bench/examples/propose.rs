//! One system, one configuration, for profilers: `cargo run -p raft-bench --release --example
//! propose -- [core|openraft|floor] PROPOSERS TOTAL ROUNDS` (defaults: core 256 400000 3).

use raft_bench::report::summarize;
use raft_bench::{core_cluster, floor, openraft_cluster, Runtimes};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let system = args.first().map_or("core", String::as_str).to_string();
    let number = |i: usize, default: usize| args.get(i).map_or(Ok(default), |a| a.parse::<usize>());
    let (proposers, total, rounds) = (number(1, 256)?, number(2, 400_000)?, number(3, 3)?);
    let rt = Runtimes::new(2, 1)?;
    for _ in 0..rounds {
        let report = match system.as_str() {
            "openraft" => openraft_cluster::run(&rt, proposers, total)?,
            "floor" => floor::run(&rt, proposers, total)?,
            _ => core_cluster::run(&rt, proposers, total)?,
        };
        let s = summarize(&report);
        println!(
            "{system} proposers={proposers}: {:.0} ops/s, p50 {} us, p99 {} us",
            s.ops_per_sec, s.p50_us, s.p99_us
        );
    }
    Ok(())
}
