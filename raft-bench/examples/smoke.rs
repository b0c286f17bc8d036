//! Quick single-round run of both sides: `cargo run -p raft-bench --release --example smoke`.
//! For the real comparison (several rounds, medians, ratios) use `cargo xtask bench core`.

use raft_bench::report::summarize;
use raft_bench::{core_cluster, openraft_cluster, Runtimes};

fn main() -> anyhow::Result<()> {
    let rt = Runtimes::new(2, 1)?;
    for (proposers, total) in [(1, 5_000), (256, 100_000)] {
        let ours = summarize(&core_cluster::run(&rt, proposers, total)?);
        let theirs = summarize(&openraft_cluster::run(&rt, proposers, total)?);
        for (name, s) in [("raft-core", ours), ("openraft", theirs)] {
            println!(
                "{name} proposers={proposers}: {:.0} ops/s, p50 {} us, p99 {} us",
                s.ops_per_sec, s.p50_us, s.p99_us
            );
        }
    }
    Ok(())
}
