//! `cargo xtask sim`: seeded simulations of the protocol (`raft_core::testing::sim`) and of
//! whole clusters of real nodes (`raft-sim`), with their coverage totals.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use anyhow::{bail, Result};
use raft_core::testing::sim::random::{self, RandomRunOptions};
use raft_sim::Coverage;

use crate::flag;

/// `sim --seeds N [--start S] | --seed S`, `--protocol` or `--node` for one kind only.
pub(crate) fn sim(args: &[String]) -> Result<()> {
    let (start, count) = match (flag(args, "--seed")?, flag(args, "--seeds")?) {
        (Some(seed), _) => (seed, 1),
        (None, Some(n)) => (flag(args, "--start")?.unwrap_or(0), n),
        (None, None) => (0, 500),
    };
    let protocol_only = args.iter().any(|a| a == "--protocol");
    let node_only = args.iter().any(|a| a == "--node");
    let mut failed = Vec::new();
    if !node_only {
        failed.extend(protocol_sim(start, count).into_iter().map(|s| format!("protocol seed {s}")));
    }
    if !protocol_only {
        failed.extend(node_sim(start, count).into_iter().map(|s| format!("node seed {s}")));
    }
    if !failed.is_empty() {
        bail!("failing seeds: {failed:?}");
    }
    Ok(())
}

/// The protocol-level simulator (the protocol driven by the simulator's own loop).
fn protocol_sim(start: u64, count: u64) -> Vec<u64> {
    let options = RandomRunOptions::default();
    let began = Instant::now();
    let mut steps = 0u64;
    let (mut acked, mut reads, mut changes, mut installs) = (0usize, 0u64, 0u64, 0u64);
    let mut failed = Vec::new();
    for seed in start..start + count {
        match std::panic::catch_unwind(|| random::run(seed, options)) {
            Ok(report) => {
                steps += report.steps;
                acked += report.acknowledged;
                reads += report.reads_served;
                changes += report.membership_changes;
                installs += report.snapshots_installed;
                if count == 1 {
                    println!("{report:?}");
                }
            }
            Err(_) => {
                eprintln!("seed {seed} FAILED; replay with: cargo xtask sim --protocol --seed {seed}");
                failed.push(seed);
            }
        }
    }
    let secs = began.elapsed().as_secs_f64();
    println!(
        "protocol simulation: {} passed, {} failed: {count} seeds from {start} in {secs:.1}s, {steps} simulated steps ({:.0} steps/s)",
        count as usize - failed.len(),
        failed.len(),
        steps as f64 / secs.max(1e-9)
    );
    println!(
        "  acknowledged writes {acked}, linearizable reads served {reads}, membership changes {changes}, snapshots installed from a leader {installs}"
    );
    failed
}

/// Log timestamps in simulated milliseconds (the runtime's paused clock) for seed replays.
struct SimulatedTime;

impl tracing_subscriber::fmt::time::FormatTime for SimulatedTime {
    fn format_time(&self, w: &mut tracing_subscriber::fmt::format::Writer<'_>) -> std::fmt::Result {
        thread_local! {
            static ORIGIN: tokio::time::Instant = tokio::time::Instant::now();
        }
        let ms = ORIGIN.with(|origin| tokio::time::Instant::now().duration_since(*origin).as_millis());
        write!(w, "{ms:>8}ms")
    }
}

/// Totals of the node simulation's seeds.
#[derive(Default)]
struct NodeTotals {
    coverage: Coverage,
    passed: u64,
    operations: u64,
    messages: u64,
    simulated_ms: u64,
    /// Seeds with at least one snapshot installed / membership change / leader removal /
    /// transfer.
    seeds_installing: u64,
    seeds_changing: u64,
    seeds_removing_leader: u64,
    seeds_transferring: u64,
    /// The sum of the seeds' trace hashes: equal for equal runs (replay check).
    traces: u64,
    failed: Vec<u64>,
}

/// Whole clusters of real `RaftNode`s (`raft-sim`), seeds spread over the machine's cores.
fn node_sim(start: u64, count: u64) -> Vec<u64> {
    if count == 1 && std::env::var_os("RUST_LOG").is_some() {
        // Replaying one seed: the nodes' logs, stamped with simulated time.
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_timer(SimulatedTime)
            .with_ansi(false)
            .try_init();
    }
    let began = Instant::now();
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get()).min(count.max(1) as usize);
    let next = AtomicU64::new(start);
    let totals = Mutex::new(NodeTotals::default());
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| loop {
                let seed = next.fetch_add(1, Ordering::Relaxed);
                if seed >= start + count {
                    return;
                }
                let outcome = std::panic::catch_unwind(|| raft_sim::run(seed, raft_sim::Options::default()));
                let mut t = totals.lock().unwrap_or_else(|p| p.into_inner());
                match outcome {
                    Ok(Ok(report)) => {
                        if count == 1 {
                            println!("{report:?}");
                        }
                        let c = &report.coverage;
                        t.passed += 1;
                        t.traces = t.traces.wrapping_add(report.trace_hash);
                        t.operations += report.operations as u64;
                        t.messages += report.messages;
                        t.simulated_ms += report.simulated_ms;
                        t.seeds_installing += u64::from(c.snapshots_installed > 0);
                        t.seeds_changing += u64::from(c.membership_changes > 0);
                        t.seeds_removing_leader += u64::from(c.leader_removals > 0);
                        t.seeds_transferring += u64::from(c.transfers > 0);
                        t.coverage.add(c);
                    }
                    Ok(Err(failure)) => {
                        eprintln!("{failure}");
                        t.failed.push(seed);
                    }
                    Err(_) => {
                        eprintln!("node simulation seed {seed} panicked; replay: cargo xtask sim --node --seed {seed}");
                        t.failed.push(seed);
                    }
                }
            });
        }
    });
    let t = totals.into_inner().unwrap_or_else(|p| p.into_inner());
    let secs = began.elapsed().as_secs_f64().max(1e-9);
    let c = &t.coverage;
    let per_seed = |x: u64| x as f64 / count.max(1) as f64;
    println!(
        "node simulation: {} passed, {} failed: {count} seeds from {start} in {secs:.1}s on {threads} threads; {:.0} simulated s, {} messages ({:.0} messages/s), {} client operations",
        t.passed,
        t.failed.len(),
        t.simulated_ms as f64 / 1e3,
        t.messages,
        t.messages as f64 / secs,
        t.operations,
    );
    println!(
        "  coverage: acknowledged writes {} ({:.0}/seed), unknown writes {}, reads served {} (asked in lease mode {}, answered by a lease {}), client operations {:.0}/seed",
        c.acknowledged_writes,
        per_seed(c.acknowledged_writes),
        c.unknown_writes,
        c.reads_served,
        c.lease_reads,
        c.lease_reads_answered,
        per_seed(t.operations),
    );
    println!(
        "  snapshots saved {}, installed {} (seeds with an install: {}; receptions resumed after a crash {}), membership changes {} (joint {}, removing the leader {}; seeds with a change: {}, removing the leader: {}), transfers {} (seeds: {})",
        c.snapshots_saved,
        c.snapshots_installed,
        t.seeds_installing,
        c.staged_resumes,
        c.membership_changes,
        c.joint_changes,
        c.leader_removals,
        t.seeds_changing,
        t.seeds_removing_leader,
        c.transfers,
        t.seeds_transferring,
    );
    println!(
        "  crashes {} (interrupting a snapshot install or save {}, between a snapshot and its compaction {}), torn appends {}, disks that lost durable data {}, process pauses {}, storage errors {}, unreadable entries on the leader {} ({} reads failed), terms with a leader {}; trace {:016x}",
        c.crashes,
        c.installs_interrupted,
        c.crashes_before_compaction,
        c.torn_writes,
        c.data_losses,
        c.pauses,
        c.storage_errors,
        c.read_faults,
        c.reads_failed,
        c.terms_led,
        t.traces
    );
    t.failed
}
