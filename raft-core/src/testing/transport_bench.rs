//! The transport benchmark every network transport runs with one call
//! (`transport_bench::run(&factory, &Workload::default()).await`), so that the figures of
//! different transports compare: two nodes on loopback, node 1 sends to node 2.
//!
//! - **Throughput**, for small (64 B) and large (64 KiB) messages: an `AppendEntries` carrying
//!   one entry of that many payload bytes, sent as fast as the sender's queue takes them
//!   (a full queue is retried after yielding); messages per second and payload MB per second
//!   from the first send to the last message received.
//! - **Round trip**: node 1 sends a small message, node 2 answers it at once, node 1 waits for
//!   the answer before sending the next one; p50 and p99 of the round-trip time.
//!
//! `cargo bench -p raft-bench --bench transports` runs it for TCP, TCP+TLS and QUIC side by
//! side; each transport crate's `cargo bench` runs it for that transport alone.

use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::testing::transport_suite::{free_loopback_addrs, TransportFactory};
use crate::{Entry, EntryPayload, LogId, Message, NodeId, Payload, SendError, Transport};

/// How long any phase may take before the benchmark fails.
const WAIT_MAX: Duration = Duration::from_secs(120);

/// What to measure.
#[derive(Debug, Clone)]
pub struct Workload {
    /// Messages (and payload bytes each) of the throughput runs.
    pub throughput: Vec<(usize, usize)>,
    /// Round trips measured (after as many again to warm up).
    pub round_trips: usize,
}

impl Default for Workload {
    /// 200 000 messages of 64 B, 5 000 of 64 KiB, 5 000 round trips.
    fn default() -> Self {
        Self { throughput: vec![(200_000, 64), (5_000, 64 * 1024)], round_trips: 5_000 }
    }
}

/// One throughput run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Throughput {
    /// Payload bytes per message.
    pub payload_bytes: usize,
    /// Messages sent and received.
    pub messages: usize,
    /// From the first send to the last receive.
    pub elapsed: Duration,
}

impl Throughput {
    /// Messages per second.
    pub fn messages_per_sec(&self) -> f64 {
        self.messages as f64 / self.elapsed.as_secs_f64()
    }

    /// Payload megabytes (10^6 bytes) per second.
    pub fn mb_per_sec(&self) -> f64 {
        (self.messages * self.payload_bytes) as f64 / 1e6 / self.elapsed.as_secs_f64()
    }
}

/// The figures of one run.
#[derive(Debug, Clone, PartialEq)]
pub struct TransportBench {
    /// One entry per [`Workload::throughput`] item.
    pub throughput: Vec<Throughput>,
    /// Median round-trip time, in microseconds.
    pub rtt_p50_us: f64,
    /// 99th-percentile round-trip time, in microseconds.
    pub rtt_p99_us: f64,
}

/// An `AppendEntries` from `from` to `to` with one entry of `payload` bytes.
fn append(from: NodeId, to: NodeId, index: u64, payload: &Bytes) -> Message {
    let entry = Entry { term: 1, index, payload: EntryPayload::Command(payload.clone()) };
    Message {
        from,
        to,
        term: 1,
        payload: Payload::AppendEntries {
            prev_log_id: LogId::new(1, index.saturating_sub(1)),
            entries: vec![entry],
            leader_commit: 0,
            read_seq: 0,
        },
    }
}

/// Sends the message `make` builds, yielding (and building it again) while the queue is full.
async fn send(t: &dyn Transport, make: impl Fn() -> Message) {
    let deadline = Instant::now() + WAIT_MAX;
    loop {
        match t.send(make()) {
            Ok(()) => return,
            Err(SendError::QueueFull(_)) => {
                assert!(Instant::now() < deadline, "queue full for {WAIT_MAX:?}");
                tokio::task::yield_now().await;
            }
            Err(error) => panic!("send failed: {error}"),
        }
    }
}

/// Receives exactly `n` messages.
async fn recv_n(t: &dyn Transport, n: usize) {
    let mut buf = Vec::with_capacity(1024);
    let mut got = 0;
    let deadline = tokio::time::Instant::now() + WAIT_MAX;
    while got < n {
        buf.clear();
        match tokio::time::timeout_at(deadline, t.recv(&mut buf, 1024)).await {
            Ok(Ok(k)) => got += k,
            other => panic!("{got} of {n} messages arrived: {other:?}"),
        }
    }
}

/// A small message numbered `seq`.
fn ping(from: NodeId, to: NodeId, seq: u64) -> Message {
    Message { from, to, term: 1, payload: Payload::ReadIndexRequest { id: seq } }
}

/// The `per_mille`/1000 quantile of sorted `xs` (nearest rank).
fn quantile(xs: &[Duration], per_mille: usize) -> Duration {
    let rank = (xs.len() * per_mille).div_ceil(1000).max(1);
    xs.get(rank - 1).copied().unwrap_or_default()
}

/// Runs `workload` on two transports made by `factory`.
pub async fn run(factory: &impl TransportFactory, workload: &Workload) -> TransportBench {
    let addrs = free_loopback_addrs(2);
    let one = factory.start(1, &addrs).await;
    let two = factory.start(2, &addrs).await;
    // Connected both ways before anything is timed.
    send(one.as_ref(), || ping(1, 2, 0)).await;
    recv_n(two.as_ref(), 1).await;
    send(two.as_ref(), || ping(2, 1, 0)).await;
    recv_n(one.as_ref(), 1).await;

    let mut throughput = Vec::new();
    for &(messages, payload_bytes) in &workload.throughput {
        let payload = Bytes::from(vec![0xa5; payload_bytes]);
        let receiver = {
            let two = two.clone();
            tokio::spawn(async move { recv_n(two.as_ref(), messages).await })
        };
        let started = Instant::now();
        for index in 1..=messages as u64 {
            send(one.as_ref(), || append(1, 2, index, &payload)).await;
        }
        receiver.await.expect("receiver");
        throughput.push(Throughput { payload_bytes, messages, elapsed: started.elapsed() });
    }

    let rounds = workload.round_trips.max(1);
    let echo = {
        let two = two.clone();
        tokio::spawn(async move {
            let mut buf = Vec::new();
            for _ in 0..2 * rounds {
                buf.clear();
                while buf.is_empty() {
                    match tokio::time::timeout(WAIT_MAX, two.recv(&mut buf, 1)).await {
                        Ok(Ok(_)) => {}
                        other => panic!("echo: {other:?}"),
                    }
                }
                let seq = match buf[0].payload {
                    Payload::ReadIndexRequest { id } => id,
                    _ => u64::MAX,
                };
                send(two.as_ref(), || ping(2, 1, seq)).await;
            }
        })
    };
    let mut rtts = Vec::with_capacity(rounds);
    let mut buf = Vec::new();
    for seq in 0..2 * rounds as u64 {
        let started = Instant::now();
        send(one.as_ref(), || ping(1, 2, seq)).await;
        buf.clear();
        while buf.is_empty() {
            match tokio::time::timeout(WAIT_MAX, one.recv(&mut buf, 1)).await {
                Ok(Ok(_)) => {}
                other => panic!("round trip {seq}: {other:?}"),
            }
        }
        if seq >= rounds as u64 {
            rtts.push(started.elapsed());
        }
    }
    echo.await.expect("echo");
    rtts.sort_unstable();
    one.shutdown().await;
    two.shutdown().await;
    TransportBench {
        throughput,
        rtt_p50_us: quantile(&rtts, 500).as_secs_f64() * 1e6,
        rtt_p99_us: quantile(&rtts, 990).as_secs_f64() * 1e6,
    }
}

/// Runs `workload` `rounds` times (each on new transports) and returns the medians.
pub async fn run_median(
    factory: &impl TransportFactory,
    workload: &Workload,
    rounds: usize,
) -> TransportBench {
    let mut runs = Vec::new();
    for _ in 0..rounds.max(1) {
        runs.push(run(factory, workload).await);
    }
    median(&runs).unwrap_or_else(|| unreachable!("at least one run"))
}

/// The median of several runs' figures (each figure's own median).
pub fn median(runs: &[TransportBench]) -> Option<TransportBench> {
    let first = runs.first()?;
    let mid = |mut xs: Vec<f64>| {
        xs.sort_by(f64::total_cmp);
        xs[xs.len() / 2]
    };
    let throughput = (0..first.throughput.len())
        .map(|i| {
            let mut elapsed: Vec<Duration> = runs.iter().map(|r| r.throughput[i].elapsed).collect();
            elapsed.sort_unstable();
            Throughput { elapsed: elapsed[elapsed.len() / 2], ..first.throughput[i] }
        })
        .collect();
    Some(TransportBench {
        throughput,
        rtt_p50_us: mid(runs.iter().map(|r| r.rtt_p50_us).collect()),
        rtt_p99_us: mid(runs.iter().map(|r| r.rtt_p99_us).collect()),
    })
}

/// The header of [`table_row`]'s table (Markdown).
pub fn table_header() -> String {
    "| transport | 64 B msgs/s | 64 B MB/s | 64 KiB msgs/s | 64 KiB MB/s | RTT p50 us | RTT p99 us |\n\
     |---|---|---|---|---|---|---|"
        .to_owned()
}

/// One Markdown table row for `name` (the default workload's two throughput runs).
pub fn table_row(name: &str, bench: &TransportBench) -> String {
    let mut row = format!("| {name} |");
    for t in &bench.throughput {
        row += &format!(" {:.0} | {:.1} |", t.messages_per_sec(), t.mb_per_sec());
    }
    row + &format!(" {:.0} | {:.0} |", bench.rtt_p50_us, bench.rtt_p99_us)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::local_transport::LocalFactory;

    #[tokio::test]
    async fn the_harness_runs_on_the_local_transport() {
        let workload = Workload { throughput: vec![(500, 64), (20, 64 * 1024)], round_trips: 50 };
        let bench = run(&LocalFactory::default(), &workload).await;
        assert_eq!(bench.throughput.len(), 2);
        assert!(bench.rtt_p50_us > 0.0 && bench.rtt_p99_us >= bench.rtt_p50_us);
        let row = table_row("local", &median(&[bench.clone(), bench]).expect("runs"));
        assert!(row.starts_with("| local |"), "{row}");
    }
}
