//! `cargo xtask bench watchers`: the leader's write latency at a fixed rate with and without
//! many watchers of every key (server-sent events, all on the leader), in alternating rounds,
//! and the elections meanwhile.
//!
//! The writes are open-loop: write `i` is due at `i / rate` seconds and its latency counts
//! from then (a write held up by a slow one before it counts the wait), through a pool of
//! keep-alive connections. Each watcher is a raw TCP connection reading its stream; the events
//! it received are counted (an event ends with a blank line). The watchers run in a process of
//! their own ([`readers`]), at nice value 10 by default (`--watchers-nice`): on this one
//! machine they stand for clients on other machines, and in the load generator's runtime
//! their 100,000 reads a second delayed the very writes it timed.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::Serialize;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};

use super::histogram::Histogram;
use super::load::{Api, Connection, Requests};
use super::Options;
use crate::cluster::{find_leader, status_client, LocalCluster};

/// Keep-alive connections the writes share.
const WRITE_CONNECTIONS: usize = 16;

/// One round's figures.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Round {
    /// Watchers open during the round.
    pub(crate) watchers: usize,
    /// Writes answered 200.
    pub(crate) ok: u64,
    /// Writes that failed (any other answer or an error).
    pub(crate) failed: u64,
    /// Latency quantiles of the writes answered, ms.
    pub(crate) p50_ms: f64,
    pub(crate) p99_ms: f64,
    pub(crate) max_ms: f64,
    /// Terms started during the round (elections), and whether the leader changed.
    pub(crate) elections: u64,
    pub(crate) leader_changed: bool,
    /// Events received per watcher (lines `id: `): the fewest and the mean.
    pub(crate) events_min: u64,
    pub(crate) events_mean: f64,
}

/// What `bench watchers` reports.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct WatchersReport {
    pub(crate) rounds: Vec<Round>,
    /// Median p99 with watchers / median p99 without.
    pub(crate) p99_ratio: f64,
    /// Every watcher received an event for every write answered 200, in every round with
    /// watchers (a watcher cut off for lagging would not).
    pub(crate) every_event_delivered: bool,
}

/// Opens `n` watch streams of every key on `addr` and counts their events; each counter is
/// one watcher's. Fails unless every stream is answered 200.
async fn open_watchers(
    addr: &str,
    n: usize,
) -> Result<(Vec<tokio::task::JoinHandle<()>>, Vec<Arc<AtomicU64>>)> {
    let mut tasks = Vec::with_capacity(n);
    let mut counters = Vec::with_capacity(n);
    for i in 0..n {
        let mut stream =
            tokio::net::TcpStream::connect(addr).await.with_context(|| format!("watcher {i}"))?;
        let request = format!("GET /v1/watch HTTP/1.1\r\nhost: {addr}\r\naccept: text/event-stream\r\n\r\n");
        stream.write_all(request.as_bytes()).await?;
        let mut head = vec![0u8; 4096];
        let n = stream.read(&mut head).await?;
        let head = String::from_utf8_lossy(&head[..n]).to_string();
        if !head.starts_with("HTTP/1.1 200") {
            bail!("watcher {i} refused: {}", head.lines().next().unwrap_or_default());
        }
        let counter = Arc::new(AtomicU64::new(0));
        let count = counter.clone();
        tasks.push(tokio::spawn(async move {
            let mut buf = vec![0u8; 64 * 1024];
            let mut lines = DataLines::default();
            loop {
                let Ok(n) = stream.read(&mut buf).await else { return };
                if n == 0 {
                    return;
                }
                count.fetch_add(lines.count(&buf[..n]), Ordering::Relaxed);
            }
        }));
        counters.push(counter);
    }
    Ok((tasks, counters))
}

/// Counts the events of a stream read in pieces: the lines that start with `id: ` (each
/// change event has one; keep-alive comments and the error event that ends a stream do not).
#[derive(Default)]
struct DataLines {
    /// Bytes of `id: ` matched at the start of the current line (`None`: not at a line start).
    matched: Option<usize>,
}

impl DataLines {
    const PREFIX: &'static [u8] = b"id: ";

    fn count(&mut self, piece: &[u8]) -> u64 {
        let mut events = 0;
        for &b in piece {
            self.matched = match self.matched {
                _ if b == b'\n' => Some(0),
                Some(n) if n < Self::PREFIX.len() && Self::PREFIX[n] == b => {
                    events += u64::from(n + 1 == Self::PREFIX.len());
                    Some(n + 1)
                }
                _ => None,
            };
        }
        events
    }
}

/// The hidden subcommand that reads the watch streams in a process of its own.
pub(crate) const READERS_COMMAND: &str = "bench-watch-readers";

/// `xtask bench-watch-readers ADDR N NICE`: the watchers of a round, in a process of their own
/// at nice value `NICE` (so that their reading competes with the servers as the operating
/// system decides, not inside the load generator's runtime, where it delayed the writes it
/// measures). Prints `ready` once every stream is open, then, when its standard input
/// closes, the events each watcher received as one JSON line.
pub(crate) fn readers(args: &[String]) -> Result<()> {
    let [addr, n, nice] = args else { bail!("usage: {READERS_COMMAND} ADDR WATCHERS NICE") };
    let n: usize = n.parse().context("WATCHERS")?;
    let nice: i32 = nice.parse().context("NICE")?;
    if nice != 0 {
        // Before the runtime starts: its threads inherit this thread's nice value. Relative to
        // this process's own (raising it needs no privilege).
        let own = rustix::process::getpriority_process(None).context("this process's nice value")?;
        rustix::process::setpriority_process(None, own.saturating_add(nice).min(19))
            .context("setting the readers' nice value")?;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async {
        let (tasks, counters) = open_watchers(addr, n).await?;
        println!("ready");
        tokio::task::spawn_blocking(|| std::io::Read::read_to_end(&mut std::io::stdin(), &mut Vec::new()))
            .await??;
        let events: Vec<u64> = counters.iter().map(|c| c.load(Ordering::Relaxed)).collect();
        for task in tasks {
            task.abort();
        }
        println!("{}", serde_json::to_string(&events)?);
        Ok(())
    })
}

/// The watchers of a round in their own process ([`readers`]).
struct Readers {
    child: tokio::process::Child,
    stdout: tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
}

impl Readers {
    /// Starts `n` watchers of `addr` at nice value `nice` and waits until they are open.
    async fn start(addr: &str, n: usize, nice: i32) -> Result<Self> {
        let exe = std::env::current_exe().context("this program's path")?;
        let mut child = tokio::process::Command::new(exe)
            .args([READERS_COMMAND, addr, &n.to_string(), &nice.to_string()])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("starting the watcher process")?;
        let stdout = child.stdout.take().context("the watcher process's output")?;
        let mut stdout = tokio::io::BufReader::new(stdout).lines();
        match tokio::time::timeout(Duration::from_secs(60), stdout.next_line()).await {
            Ok(Ok(Some(line))) if line == "ready" => Ok(Self { child, stdout }),
            other => bail!("the watcher process did not open its streams: {other:?}"),
        }
    }

    /// Ends the watchers and returns how many events each received.
    async fn finish(mut self) -> Result<Vec<u64>> {
        drop(self.child.stdin.take());
        let line = tokio::time::timeout(Duration::from_secs(30), self.stdout.next_line())
            .await
            .context("the watcher process did not report")??
            .context("the watcher process ended without a report")?;
        self.child.wait().await?;
        Ok(serde_json::from_str(&line)?)
    }
}

/// One round: `watchers` streams on the leader, then `rate` writes/s for `duration`.
async fn round(cluster: &LocalCluster, o: &Options, watchers: usize, first_key: u64) -> Result<Round> {
    let endpoints = cluster.endpoints();
    let status = status_client(&endpoints)?;
    let before = find_leader(&status).await.context("no leader before the round")?;
    let addr = endpoints[(before.id - 1) as usize].clone();
    let readers = match watchers {
        0 => None,
        n => Some(Readers::start(&addr, n, o.watchers_nice).await?),
    };
    // The pool: a connection is taken from the channel for a write and given back after it.
    let (give_back, take) = tokio::sync::mpsc::channel::<Connection>(WRITE_CONNECTIONS);
    for _ in 0..WRITE_CONNECTIONS {
        give_back.send(Connection::open(&addr).await.map_err(anyhow::Error::msg)?).await.ok();
    }
    let take = Arc::new(tokio::sync::Mutex::new(take));
    let requests = Arc::new(Requests::new(Api::Raft, o.value_bytes));
    let writes = (o.rate * o.duration_s).round() as u64;
    let start = Instant::now();
    let mut pending = Vec::with_capacity(writes as usize);
    for i in 0..writes {
        let due = start + Duration::from_secs_f64(i as f64 / o.rate);
        tokio::time::sleep_until(due.into()).await;
        let (take, give_back, requests) = (take.clone(), give_back.clone(), requests.clone());
        pending.push(tokio::spawn(async move {
            let mut connection = take.lock().await.recv().await?;
            let (method, path, body) = requests.put(&Requests::key(first_key + i));
            let answer = connection.send(method, &path, body).await;
            let latency = due.elapsed();
            give_back.send(connection).await.ok();
            Some((answer.map(|(status, _)| status.as_u16()), latency))
        }));
    }
    let mut histogram = Histogram::default();
    let (mut ok, mut failed) = (0, 0);
    for task in pending {
        match task.await.ok().flatten() {
            Some((Ok(200), latency)) => {
                ok += 1;
                histogram.record_duration(latency);
            }
            _ => failed += 1,
        }
    }
    // Let the last events reach the watchers before counting.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let events = match readers {
        Some(readers) => readers.finish().await?,
        None => Vec::new(),
    };
    let after = find_leader(&status).await;
    let ms = |ns: u64| ns as f64 / 1e6;
    Ok(Round {
        watchers,
        ok,
        failed,
        p50_ms: ms(histogram.quantile(0.5)),
        p99_ms: ms(histogram.quantile(0.99)),
        max_ms: ms(histogram.max()),
        elections: after.as_ref().map_or(1, |a| a.term.saturating_sub(before.term)),
        leader_changed: after.as_ref().is_none_or(|a| a.id != before.id),
        events_min: events.iter().copied().min().unwrap_or(0),
        events_mean: if events.is_empty() {
            0.0
        } else {
            events.iter().sum::<u64>() as f64 / events.len() as f64
        },
    })
}

/// Alternates rounds without and with `o.watchers` watchers, `o.runs` of each.
pub(crate) async fn run(cluster: &LocalCluster, o: &Options) -> Result<WatchersReport> {
    let mut rounds = Vec::new();
    let writes_per_round = (o.rate * o.duration_s).round() as u64 + 1;
    if o.warmup_s > 0.0 {
        // Not counted: the cluster has just started (connections, caches).
        let warmup = Options { duration_s: o.warmup_s, ..o.clone() };
        let result = round(cluster, &warmup, 0, 1 << 40).await?;
        println!("  warm-up ({} s, not counted): p99 {:.1} ms", o.warmup_s, result.p99_ms);
    }
    for r in 0..o.runs * 2 {
        let watchers = if r % 2 == 0 { 0 } else { o.watchers };
        let result = round(cluster, o, watchers, r as u64 * writes_per_round).await?;
        println!(
            "  round {}: {:>5} watchers: {} writes ok, {} failed, p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms, \
             {} election(s){}, events per watcher min {} mean {:.0}",
            r + 1,
            result.watchers,
            result.ok,
            result.failed,
            result.p50_ms,
            result.p99_ms,
            result.max_ms,
            result.elections,
            if result.leader_changed { " (leader changed)" } else { "" },
            result.events_min,
            result.events_mean
        );
        rounds.push(result);
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let median = |with: bool| {
        let mut p99: Vec<f64> =
            rounds.iter().filter(|r| (r.watchers > 0) == with).map(|r| r.p99_ms).collect();
        p99.sort_by(f64::total_cmp);
        match p99.len() {
            0 => 0.0,
            n if n % 2 == 1 => p99[n / 2],
            n => (p99[n / 2 - 1] + p99[n / 2]) / 2.0,
        }
    };
    let p99_ratio = if median(false) > 0.0 { median(true) / median(false) } else { 0.0 };
    let every_event_delivered = rounds.iter().filter(|r| r.watchers > 0).all(|r| r.events_min >= r.ok);
    Ok(WatchersReport { rounds, p99_ratio, every_event_delivered })
}

#[cfg(test)]
mod tests {
    use super::DataLines;

    #[test]
    fn events_are_counted_by_their_id_lines_whatever_the_pieces() {
        let stream: &[u8] =
            b"4a\r\nid: 1\ndata: {\"key\":\"a\"}\n\nid: 2\ndata: {\"v\":\"id: 3\"}\n\n\r\n3\r\n:\n\n\r\n\
            20\r\nevent: error\ndata: {\"code\":\"compacted\"}\n\n\r\n";
        for size in [1, 2, 3, 5, 7, stream.len()] {
            let mut lines = DataLines::default();
            let counted: u64 = stream.chunks(size).map(|piece| lines.count(piece)).sum();
            assert_eq!(counted, 2, "pieces of {size} bytes");
        }
    }
}
