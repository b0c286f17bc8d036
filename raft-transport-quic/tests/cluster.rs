//! The snapshot stream of the QUIC transport: a large InstallSnapshot transfer does not hold
//! up small messages sent meanwhile.

use std::time::Duration;

use raft_core::testing::snapshot_interference;
use raft_transport_quic::{generate_dev_certs, QuicFactory};

/// 50 MB of `InstallSnapshot` chunks (512 KiB each, queued as fast as the snapshot queue
/// takes them) go from node 1 to node 2 while node 1 also sends a small message every 5 ms
/// ([`snapshot_interference::measure`]). The small messages travel on their own stream, so
/// they must not wait behind the chunks.
///
/// Measured on loopback (debug build, 2 busy cores): see the printed figures; the bound here
/// (250 ms) is generous on purpose so a loaded CI machine does not flake, while head-of-line
/// blocking behind the chunks would cost about the whole transfer time (seconds).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_transfer_does_not_delay_small_messages() {
    let certs = generate_dev_certs("snap", 1..=2).expect("certs");
    let seen = snapshot_interference::measure(&QuicFactory { certs }).await;
    eprintln!("QUIC: {seen}");
    assert!(
        seen.small_arrived * 2 >= seen.small_sent.saturating_sub(2),
        "most small messages arrived during the transfer"
    );
    let bound = Duration::from_millis(250);
    assert!(seen.max_latency < bound, "max latency {:?} over {bound:?}", seen.max_latency);
}
