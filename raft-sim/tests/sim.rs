//! The node simulation's own tests: seeds pass, a seed replays identically. The 2000-seed run
//! is `cargo xtask sim` (part of `cargo xtask ci`).

use raft_sim::{run, Options};

#[test]
fn a_seed_replays_identically() {
    let options = Options { chaos_ms: 3_000, liveness_ms: 10_000 };
    for seed in [1, 2, 3] {
        let first = run(seed, options).unwrap_or_else(|f| panic!("{f}"));
        let second = run(seed, options).unwrap_or_else(|f| panic!("{f}"));
        assert_eq!(first, second, "seed {seed} did not replay");
    }
}

#[test]
fn seeds_pass_and_exercise_the_node() {
    let mut failures = Vec::new();
    let mut coverage = raft_sim::Coverage::default();
    for seed in 100..120 {
        match run(seed, Options::default()) {
            Ok(report) => coverage.add(&report.coverage),
            Err(f) => failures.push(f.to_string()),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(coverage.acknowledged_writes > 0 && coverage.reads_served > 0, "{coverage:?}");
    assert!(coverage.crashes > 0, "{coverage:?}");
    assert!(coverage.data_losses > 0, "no disk lost data: {coverage:?}");
}

/// Seeds that once failed, kept as regressions. 303387, 319577 and 339292: a node that lost
/// its last durable entries held the only log the others would elect, or its vote was needed
/// by the only node it had to refuse; it neither campaigned nor voted, and no leader was ever
/// elected again (raft-core now counts a recovering node's grant towards the quorum without
/// taking it as evidence for the candidate's log). A change to the simulator's schedule may
/// make a seed exercise something else; the data-loss check says whether it still loses data.
#[test]
fn seeds_that_once_failed_pass() {
    let mut failures = Vec::new();
    for seed in [303_387, 319_577, 339_292] {
        match run(seed, Options::default()) {
            Ok(report) => assert!(report.coverage.data_losses > 0, "seed {seed} no longer loses data"),
            Err(f) => failures.push(f.to_string()),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// A gap still open (issue 15): seed 627994 ends with no leader, but safe. Node 3 led term 4
/// and lost its only entry of that term, (4, 45); node 2 holds (3, 50) and the joint
/// configuration {3} / {1, 2, 3}, so it needs node 3's vote, which cannot vouch for a log
/// behind (4, 45). Nobody else ever held an entry of term 4, so (4, 45) was never committed
/// and electing node 2 would be safe, but node 3 cannot tell that from its own state: it would
/// need the other voters' logs, reported in a term after 4 (a protocol-aware-recovery query).
/// The test pins what holds today: every check passes but liveness. When the gap is closed it
/// fails; move the seed to `seeds_that_once_failed_pass` then.
#[test]
fn a_recovering_node_whose_vote_is_needed_by_a_log_behind_its_record_stays_safe() {
    let failure = match run(627_994, Options::default()) {
        Ok(_) => panic!("seed 627994 passes: the gap is closed, move it to seeds_that_once_failed_pass"),
        Err(f) => f,
    };
    assert!(
        failure.problems.iter().all(|p| p.starts_with("liveness: no write was applied")),
        "seed 627994 fails on more than liveness: {failure}"
    );
    let recovering =
        failure.problems.iter().any(|p| p.contains("recovering_to: Some(LogId { term: 4, index: 45 })"));
    assert!(recovering, "seed 627994 no longer ends on the recovering node's record (4, 45): {failure}");
}
