//! `cargo bench -p raft-storage-rocks`: synced appends per second and p99 latency with 1, 16 and
//! 256 concurrent appenders (each appending one entry at a time to its own log in one store, so
//! that queued appends share a sync: group commit), entries of 64 B and 4 KiB, with the
//! durability record on (the default) and off, alternating over three rounds (medians). Beside
//! it, in the same run and directory, the disk's own bound: one thread appending to a plain
//! file with an `fdatasync` after each write.

use std::io::Write;
use std::time::{Duration, Instant};

use bytes::Bytes;
use raft_core::{Entry, EntryPayload, Storage};
use raft_storage_rocks::{Identity, RocksDb, RocksOptions};

const RUN: Duration = Duration::from_secs(3);

fn quantile(sorted: &[u64], q: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1]
}

/// Appends per second and p99 in microseconds.
async fn rocks(appenders: u64, size: usize, durability_record: bool) -> anyhow::Result<(f64, u64)> {
    let dir = tempfile::tempdir_in(".")?;
    let identity = Identity { cluster_id: "bench".into(), node_id: 1 };
    let options = RocksOptions { durability_record, ..RocksOptions::default() };
    let db = RocksDb::open(dir.path(), &identity, options)?;
    let payload = Bytes::from(vec![7u8; size]);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for group in 0..appenders {
        let log = db.log(group);
        let payload = payload.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut index = 1;
            while started.elapsed() < RUN {
                let entry = Entry { term: 1, index, payload: EntryPayload::Command(payload.clone()) };
                let t = Instant::now();
                log.append(&[entry]).await?;
                latencies.push(t.elapsed().as_micros() as u64);
                index += 1;
            }
            anyhow::Ok(latencies)
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await??);
    }
    let secs = started.elapsed().as_secs_f64();
    all.sort_unstable();
    Ok((all.len() as f64 / secs, quantile(&all, 0.99)))
}

/// A plain file, one `write` + `fdatasync` per entry: what one synced write costs here.
fn plain_file(size: usize) -> anyhow::Result<(f64, u64)> {
    let dir = tempfile::tempdir_in(".")?;
    let mut file = std::fs::File::create(dir.path().join("log"))?;
    let buf = vec![7u8; size];
    let started = Instant::now();
    let mut latencies = Vec::new();
    while started.elapsed() < RUN {
        let t = Instant::now();
        file.write_all(&buf)?;
        file.sync_data()?;
        latencies.push(t.elapsed().as_micros() as u64);
    }
    let secs = started.elapsed().as_secs_f64();
    latencies.sort_unstable();
    Ok((latencies.len() as f64 / secs, quantile(&latencies, 0.99)))
}

/// The medians of three rounds' rates and p99s.
fn median(v: &[(f64, u64)]) -> (f64, u64) {
    let mut rates: Vec<f64> = v.iter().map(|x| x.0).collect();
    rates.sort_by(f64::total_cmp);
    let mut p99: Vec<u64> = v.iter().map(|x| x.1).collect();
    p99.sort_unstable();
    (rates[rates.len() / 2], p99[p99.len() / 2])
}

fn main() -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    println!(
        "| entry | appenders | appends/s, record on | p99 us | appends/s, record off | p99 us | on / off | plain write+fdatasync/s | on / fdatasyncs |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for size in [64usize, 4_096] {
        let (disk, _) = plain_file(size)?;
        for appenders in [1u64, 16, 256] {
            let (mut on, mut off) = (Vec::new(), Vec::new());
            for _ in 0..3 {
                on.push(runtime.block_on(rocks(appenders, size, true))?);
                off.push(runtime.block_on(rocks(appenders, size, false))?);
            }
            let ((on_rate, on_p99), (off_rate, off_p99)) = (median(&on), median(&off));
            println!(
                "| {size} B | {appenders} | {on_rate:.0} | {on_p99} | {off_rate:.0} | {off_p99} | {:.2} | {disk:.0} | {:.2} |",
                on_rate / off_rate,
                on_rate / disk
            );
        }
    }
    Ok(())
}
