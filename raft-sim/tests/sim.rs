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
/// taking it as evidence for the candidate's log). 627994: node 3 led term 4 and lost its only
/// entry of that term, (4, 45); node 2 holds (3, 50) and the joint configuration {3} /
/// {1, 2, 3}, whose new voter set is node 3 alone, so no grant could ever vouch for it (node 3
/// now names the voters of its configuration {1, 2, 3} as witnesses of what it lost, and
/// node 2 wins with both of them vouching). A change to the simulator's schedule may make a
/// seed exercise something else; the data-loss check says whether it still loses data.
/// 319577 and 627994 stopped losing data when reads began to batch (fewer read rounds and
/// requests change the schedule) and were dropped; their rules are pinned in raft-core by
/// `protocol::tests::a_grant_that_does_not_vouch_counts_for_the_quorum_only` and
/// `protocol::tests::a_voter_set_of_one_recovering_voter_is_met_by_the_witnesses_it_names`
/// (and 627994 rebuilt by hand in `raft-core/tests/witness_review.rs`).
#[test]
fn seeds_that_once_failed_pass() {
    let mut failures = Vec::new();
    for seed in [303_387, 339_292] {
        match run(seed, Options::default()) {
            Ok(report) => assert!(report.coverage.data_losses > 0, "seed {seed} no longer loses data"),
            Err(f) => failures.push(f.to_string()),
        }
    }
    // 4774: a reception replaced within one ready by a delayed copy of an older snapshot's
    // first part, then given up on a new term; the replaced reception's last part was staged
    // after the discard and stopped node 3 (a fatal storage error). The rule is pinned by
    // `protocol::tests::parts_of_a_replaced_reception_are_not_staged_after_the_reception_is_given_up`;
    // a schedule change may make this seed exercise something else.
    if let Err(f) = run(4_774, Options::default()) {
        failures.push(f.to_string());
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
