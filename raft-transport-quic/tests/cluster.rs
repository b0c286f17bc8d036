//! The snapshot stream of the QUIC transport: a large InstallSnapshot transfer does not hold
//! up small messages sent meanwhile.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use raft_core::testing::transport_suite;
use raft_core::{Membership, NodeId};
use raft_transport_quic::{generate_dev_certs, QuicConfig, QuicTransport};

/// How long the test waits for the connection.
const WAIT_MAX: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------------------------
// Snapshots on their own stream.

/// 50 MB of `InstallSnapshot` chunks (512 KiB each, queued as fast as the snapshot queue
/// takes them) go from node 1 to node 2 while node 1 also sends a small message every 5 ms.
/// The small messages travel on their own stream, so they must not wait behind the chunks.
///
/// Measured on loopback (debug build, 2 busy cores): see the printed figures; the bound here
/// (250 ms) is generous on purpose so a loaded CI machine does not flake, while head-of-line
/// blocking behind the chunks would cost about the whole transfer time (seconds).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_transfer_does_not_delay_small_messages() {
    use raft_core::{LogId, Message, Payload, SendError, SnapshotMeta, Transport};

    const CHUNK: usize = 512 * 1024;
    const TOTAL: usize = 50 * 1024 * 1024;
    const TICK: Duration = Duration::from_millis(5);
    let addrs = transport_suite::free_loopback_addrs(2);
    let certs = generate_dev_certs("snap", 1..=2).expect("certs");
    let start = |id: NodeId| {
        let peers = addrs.iter().filter(|(&p, _)| p != id).map(|(&p, &a)| (p, a)).collect();
        let (cert, key) = certs.nodes[&id].clone();
        QuicTransport::start(QuicConfig::new(id, "snap", addrs[&id], peers, &certs.ca_cert_pem, cert, key))
    };
    let sender = Arc::new(start(1).await.expect("node 1"));
    let receiver = Arc::new(start(2).await.expect("node 2"));

    // Wait until the connection is up.
    let probe = |seq| Message { from: 1, to: 2, term: 1, payload: Payload::ReadIndexRequest { id: seq } };
    let deadline = Instant::now() + WAIT_MAX;
    let mut buf = Vec::new();
    loop {
        let _ = sender.send(probe(u64::MAX));
        if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_millis(100), receiver.recv(&mut buf, 16)).await
        {
            break;
        }
        assert!(Instant::now() < deadline, "no connection");
    }

    let epoch = Instant::now();
    let sent_at = Arc::new(std::sync::Mutex::new(Vec::<Duration>::new()));
    let snapshot_done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let chunks = {
        let sender = sender.clone();
        let snapshot_done = snapshot_done.clone();
        tokio::spawn(async move {
            let data = Bytes::from(vec![0x5a; CHUNK]);
            let meta =
                SnapshotMeta { last_log_id: LogId::new(1, 1), membership: Membership::with_voters([1, 2]) };
            let mut offset = 0;
            while offset < TOTAL {
                let done = offset + CHUNK >= TOTAL;
                let chunk = Message {
                    from: 1,
                    to: 2,
                    term: 1,
                    payload: Payload::InstallSnapshot {
                        meta: meta.clone(),
                        offset: offset as u64,
                        data: data.clone(),
                        done,
                    },
                };
                match sender.send(chunk) {
                    Ok(()) => offset += CHUNK,
                    Err(SendError::QueueFull(_)) => tokio::time::sleep(Duration::from_millis(1)).await,
                    Err(error) => panic!("{error}"),
                }
            }
            snapshot_done.store(true, Ordering::SeqCst);
        })
    };
    let ticks = {
        let sender = sender.clone();
        let sent_at = sent_at.clone();
        let snapshot_done = snapshot_done.clone();
        tokio::spawn(async move {
            let mut interval = tokio::time::interval(TICK);
            let mut seq = 0;
            while !snapshot_done.load(Ordering::SeqCst) {
                interval.tick().await;
                sent_at.lock().expect("lock").push(epoch.elapsed());
                sender.send(probe(seq)).expect("small message queued");
                seq += 1;
            }
            seq
        })
    };
    let mut arrivals: Vec<(u64, Duration)> = Vec::new();
    let mut bytes = 0;
    let deadline = Instant::now() + Duration::from_secs(120);
    while bytes < TOTAL {
        buf.clear();
        match tokio::time::timeout_at(deadline.into(), receiver.recv(&mut buf, 1024)).await {
            Ok(Ok(_)) => {}
            other => panic!("receiving stopped after {bytes} bytes: {other:?}"),
        }
        let now = epoch.elapsed();
        for message in &buf {
            match &message.payload {
                Payload::InstallSnapshot { data, .. } => bytes += data.len(),
                Payload::ReadIndexRequest { id } if *id != u64::MAX => arrivals.push((*id, now)),
                _ => {}
            }
        }
    }
    let transfer = epoch.elapsed();
    chunks.await.expect("chunks");
    let ticks_sent = ticks.await.expect("ticks");
    let sent_at = sent_at.lock().expect("lock").clone();
    let max_latency = arrivals.iter().map(|&(seq, at)| at.saturating_sub(sent_at[seq as usize])).max();
    let max_gap = arrivals.windows(2).map(|w| w[1].1.saturating_sub(w[0].1)).max();
    eprintln!(
        "{} MB of snapshot chunks in {transfer:?} ({:.0} MB/s); {} of {ticks_sent} small messages arrived \
         meanwhile; max latency {max_latency:?}, max arrival gap {max_gap:?} (sent every {TICK:?})",
        TOTAL / (1024 * 1024),
        TOTAL as f64 / (1024.0 * 1024.0) / transfer.as_secs_f64(),
        arrivals.len(),
    );
    assert!(
        arrivals.len() as u64 * 2 >= ticks_sent.saturating_sub(2),
        "most small messages arrived during the transfer"
    );
    let bound = Duration::from_millis(250);
    assert!(max_latency.is_some_and(|l| l < bound), "max latency {max_latency:?} over {bound:?}");
    sender.shutdown().await;
    receiver.shutdown().await;
}
