//! How a large snapshot transfer affects small messages on the same transport:
//! [`measure`] sends 50 MB of `InstallSnapshot` chunks from node 1 to node 2 while node 1 also
//! sends a small message every millisecond (the first one just before the first chunk), and
//! reports how late the small messages arrived. Each
//! transport's tests assert what its design promises (separate streams: a small delay; one
//! ordered connection: head-of-line blocking).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::testing::transport_suite::{free_loopback_addrs, TransportFactory};
use crate::{LogId, Membership, Message, Payload, SendError, SnapshotMeta};

/// The size of one `InstallSnapshot` chunk.
pub const CHUNK_BYTES: usize = 512 * 1024;
/// The whole transfer.
pub const TOTAL_BYTES: usize = 50 * 1024 * 1024;
/// How often a small message is sent during the transfer.
pub const TICK: Duration = Duration::from_millis(1);
/// How long the measurement may take before it fails.
const WAIT_MAX: Duration = Duration::from_secs(120);

/// What [`measure`] saw.
#[derive(Debug, Clone, Copy)]
pub struct SnapshotInterference {
    /// From the first chunk queued to the last one received.
    pub transfer: Duration,
    /// Small messages sent while the transfer ran (one per [`TICK`] until the last chunk arrived).
    pub small_sent: u64,
    /// Of those, how many arrived before the transfer's last chunk.
    pub small_arrived: u64,
    /// The longest time a small message took from `send` to `recv` (all of them are waited
    /// for, also those that arrive after the last chunk).
    pub max_latency: Duration,
    /// The longest gap between two small messages' arrivals.
    pub max_gap: Duration,
    /// Small messages sent after at least one chunk was queued.
    pub sent_after_chunks: u64,
    /// The most chunk bytes a small message overtook: queued before it was sent, received
    /// after it. On one ordered connection this is at most what the receiver's inbound queues
    /// hold (a small message can only pass chunks already taken off the wire), whatever the
    /// timing: head-of-line blocking. A stream of its own for snapshots lets small messages
    /// pass the whole transfer.
    pub max_overtaken_bytes: usize,
}

impl SnapshotInterference {
    /// The transfer's throughput, in MB/s.
    pub fn mb_per_sec(&self) -> f64 {
        TOTAL_BYTES as f64 / (1024.0 * 1024.0) / self.transfer.as_secs_f64()
    }
}

impl std::fmt::Display for SnapshotInterference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} MB of snapshot chunks in {:?} ({:.0} MB/s); {} of {} small messages arrived before the \
             last chunk; max latency {:?}, max arrival gap {:?} (sent every {TICK:?}); {} of them sent \
             after chunks were queued; a small message overtook at most {} KiB of chunks",
            TOTAL_BYTES / (1024 * 1024),
            self.transfer,
            self.mb_per_sec(),
            self.small_arrived,
            self.small_sent,
            self.max_latency,
            self.max_gap,
            self.sent_after_chunks,
            self.max_overtaken_bytes / 1024,
        )
    }
}

fn probe(seq: u64) -> Message {
    Message { from: 1, to: 2, term: 1, payload: Payload::ReadIndexRequest { id: seq } }
}

/// Runs the measurement on two transports made by `factory` (chunks are queued as fast as the
/// sender's queues take them). Panics when the transfer does not complete.
pub async fn measure(factory: &impl TransportFactory) -> SnapshotInterference {
    let addrs = free_loopback_addrs(2);
    let sender = factory.start(1, &addrs).await;
    let receiver = factory.start(2, &addrs).await;

    // Wait until the connection is up.
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
    // Let probes sent while connecting arrive, so they do not count as small messages.
    while let Ok(Ok(_)) = tokio::time::timeout(Duration::from_millis(100), receiver.recv(&mut buf, 16)).await
    {
    }

    let epoch = Instant::now();
    // Per small message: when it was sent, and how many chunk bytes had been queued before.
    let sent_at = Arc::new(Mutex::new(Vec::<(Duration, usize)>::new()));
    let queued = Arc::new(AtomicUsize::new(0));
    let transfer_done = Arc::new(AtomicBool::new(false));
    let first_tick = Arc::new(tokio::sync::Notify::new());
    let chunks = {
        let sender = sender.clone();
        let first_tick = first_tick.clone();
        let queued = queued.clone();
        tokio::spawn(async move {
            first_tick.notified().await;
            let data = Bytes::from(vec![0x5a; CHUNK_BYTES]);
            let meta =
                SnapshotMeta { last_log_id: LogId::new(1, 1), membership: Membership::with_voters([1, 2]) };
            let mut offset = 0;
            while offset < TOTAL_BYTES {
                let done = offset + CHUNK_BYTES >= TOTAL_BYTES;
                let payload = Payload::InstallSnapshot {
                    meta: meta.clone(),
                    offset: offset as u64,
                    data: data.clone(),
                    done,
                };
                match sender.send(Message { from: 1, to: 2, term: 1, payload }) {
                    Ok(()) => {
                        offset += CHUNK_BYTES;
                        queued.fetch_add(CHUNK_BYTES, Ordering::SeqCst);
                    }
                    Err(SendError::QueueFull(_)) => tokio::time::sleep(Duration::from_millis(1)).await,
                    Err(error) => panic!("{error}"),
                }
            }
        })
    };
    let ticks = {
        let sender = sender.clone();
        let sent_at = sent_at.clone();
        let transfer_done = transfer_done.clone();
        tokio::spawn(async move {
            let mut interval = tokio::time::interval(TICK);
            let mut seq = 0;
            while !transfer_done.load(Ordering::SeqCst) {
                interval.tick().await;
                let queued_before = queued.load(Ordering::SeqCst);
                sent_at.lock().expect("lock").push((epoch.elapsed(), queued_before));
                sender.send(probe(seq)).expect("small message queued");
                if seq == 0 {
                    first_tick.notify_one();
                }
                seq += 1;
            }
            seq
        })
    };
    // Per small message: its number, when it arrived, and the chunk bytes received before it.
    let mut arrivals: Vec<(u64, Duration, usize)> = Vec::new();
    let mut bytes = 0;
    let deadline = Instant::now() + WAIT_MAX;
    while bytes < TOTAL_BYTES {
        buf.clear();
        match tokio::time::timeout_at(deadline.into(), receiver.recv(&mut buf, 1024)).await {
            Ok(Ok(_)) => {}
            other => panic!("receiving stopped after {bytes} bytes: {other:?}"),
        }
        let now = epoch.elapsed();
        for message in &buf {
            match &message.payload {
                Payload::InstallSnapshot { data, .. } => bytes += data.len(),
                Payload::ReadIndexRequest { id } if *id != u64::MAX => arrivals.push((*id, now, bytes)),
                _ => {}
            }
        }
    }
    let transfer = epoch.elapsed();
    transfer_done.store(true, Ordering::SeqCst);
    let small_arrived = arrivals.len() as u64;
    chunks.await.expect("chunks");
    let small_sent = ticks.await.expect("ticks");
    // Small messages still behind the transfer.
    while (arrivals.len() as u64) < small_sent {
        buf.clear();
        match tokio::time::timeout_at(deadline.into(), receiver.recv(&mut buf, 1024)).await {
            Ok(Ok(_)) => {}
            other => panic!("{} of {small_sent} small messages arrived: {other:?}", arrivals.len()),
        }
        let now = epoch.elapsed();
        for message in &buf {
            if let Payload::ReadIndexRequest { id } = message.payload {
                arrivals.push((id, now, TOTAL_BYTES));
            }
        }
    }
    let sent_at = sent_at.lock().expect("lock").clone();
    let max_latency = arrivals
        .iter()
        .filter_map(|&(seq, at, _)| sent_at.get(seq as usize).map(|(sent, _)| at.saturating_sub(*sent)))
        .max()
        .unwrap_or(transfer);
    let max_gap = arrivals.windows(2).map(|w| w[1].1.saturating_sub(w[0].1)).max().unwrap_or(transfer);
    let sent_after_chunks = sent_at.iter().filter(|(_, queued_before)| *queued_before > 0).count() as u64;
    let max_overtaken_bytes = arrivals
        .iter()
        .filter_map(|&(seq, _, received)| {
            sent_at.get(seq as usize).map(|&(_, queued)| queued.saturating_sub(received))
        })
        .max()
        .unwrap_or(0);
    sender.shutdown().await;
    receiver.shutdown().await;
    SnapshotInterference {
        transfer,
        small_sent,
        small_arrived,
        max_latency,
        max_gap,
        sent_after_chunks,
        max_overtaken_bytes,
    }
}
