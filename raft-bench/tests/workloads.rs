//! The benchmark workloads run end to end at a small size (correctness only; speed is measured
//! by `cargo xtask bench core`, never asserted here).

use raft_bench::{core_cluster, floor, openraft_cluster, Runtimes};
use raft_core::ReadMode;

/// Each run checks what its system did (raft-core: every proposal placed once and applied;
/// openraft: the leader applied the last answered index; the floor: every request answered
/// once) and fails otherwise; here they only have to succeed. One operation in
/// `TIMED_EVERY` is timed: the 0th, 8th, ... of 300.
#[test]
fn every_system_completes_the_write_workload() {
    let rt = Runtimes::new(2, 1).expect("runtimes");
    let timed = 300usize.div_ceil(raft_bench::TIMED_EVERY);
    for proposers in [1, 64] {
        let ours = core_cluster::run(&rt, proposers, 300).expect("raft-core proposals");
        assert_eq!(ours.latencies_us.len(), timed);
        let theirs = openraft_cluster::run(&rt, proposers, 300).expect("openraft proposals");
        assert_eq!(theirs.latencies_us.len(), timed);
        let hand_offs = floor::run(&rt, proposers, 300).expect("the floor's hand-offs");
        assert_eq!(hand_offs.latencies_us.len(), timed);
    }
    // More proposers than a batch and than the request queue: batching and its bounds.
    floor::run(&rt, 5_000, 20_000).expect("the floor's hand-offs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_read_modes_complete() {
    for mode in [ReadMode::ReadIndex, ReadMode::Lease] {
        let report = core_cluster::run_reads(mode, 8, 500).await.expect("reads");
        assert_eq!(report.latencies_us.len(), 500usize.div_ceil(raft_bench::TIMED_EVERY), "{mode:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_far_behind_follower_catches_up_by_snapshot_and_by_log() {
    let by_snapshot = core_cluster::catch_up(3_000, 500).await.expect("by snapshot");
    // Snapshots start every 500 to 625 entries (jittered), so the latest one done covers at
    // least half of the 3,000.
    assert!(by_snapshot.installed_snapshot, "the follower did not install a snapshot");
    assert!(by_snapshot.snapshot_index >= 1_500, "{}", by_snapshot.snapshot_index);
    let by_log = core_cluster::catch_up(3_000, 0).await.expect("by log");
    assert_eq!(by_log.snapshot_index, 0);
    assert!(!by_log.installed_snapshot);
}
