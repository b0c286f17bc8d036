//! The machine's floor for one write, measured in the benchmark's own run: the median of a
//! 4 KiB write followed by `fdatasync` in the benchmark's data directory, and of a one-byte
//! round trip over loopback TCP. A replicated write needs at least one sync and one round
//! trip between client and leader; the one-connection target is twice their sum.
//!
//! Two kinds of sync are timed: over blocks already written (a log that reuses its files, as
//! raft-node's RocksDB WAL does once it recycles them: the sync writes data only) and at the
//! end of a growing file (a log that appends: the sync also commits the file's new size and
//! blocks to the filesystem's journal; etcd's preallocated WAL segments sit between the two).

use std::io::{Read, Seek, SeekFrom, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde::Serialize;

/// Syncs and round trips timed.
const SAMPLES: usize = 500;
/// The synced file: written 4 KiB at a time through its length and again from the start, as
/// a log that reuses its preallocated files does (no file size change to journal).
const FILE_BYTES: u64 = 1 << 20;
const BLOCK: usize = 4096;

/// What the probe measured, in microseconds (medians, and the 99th percentile).
#[derive(Debug, Clone, Copy, Serialize)]
pub(crate) struct Floor {
    /// Over blocks already written.
    pub fdatasync_p50_us: f64,
    pub fdatasync_p99_us: f64,
    /// At the end of a growing file.
    pub fdatasync_append_p50_us: f64,
    pub fdatasync_append_p99_us: f64,
    pub loopback_rtt_p50_us: f64,
    pub loopback_rtt_p99_us: f64,
}

impl Floor {
    /// Twice the sum of the medians (the sync over written blocks): the one-connection p50
    /// the issue asks for at most.
    pub(crate) fn one_connection_target_ms(&self) -> f64 {
        2.0 * (self.fdatasync_p50_us + self.loopback_rtt_p50_us) / 1e3
    }

    /// The same with the appending sync.
    pub(crate) fn one_connection_target_append_ms(&self) -> f64 {
        2.0 * (self.fdatasync_append_p50_us + self.loopback_rtt_p50_us) / 1e3
    }
}

/// Measures both in `dir` (created if missing; the probe's file is removed after).
pub(crate) fn measure(dir: &Path) -> Result<Floor> {
    std::fs::create_dir_all(dir)?;
    let path = dir.join("fdatasync-probe");
    let syncs = fdatasync_times(&path, false);
    let appends = fdatasync_times(&path, true);
    let _ = std::fs::remove_file(&path);
    let (syncs, appends) = (syncs?, appends?);
    let trips = loopback_round_trips()?;
    Ok(Floor {
        fdatasync_p50_us: quantile_us(&syncs, 0.5),
        fdatasync_p99_us: quantile_us(&syncs, 0.99),
        fdatasync_append_p50_us: quantile_us(&appends, 0.5),
        fdatasync_append_p99_us: quantile_us(&appends, 0.99),
        loopback_rtt_p50_us: quantile_us(&trips, 0.5),
        loopback_rtt_p99_us: quantile_us(&trips, 0.99),
    })
}

/// Times `SAMPLES` writes of 4 KiB each followed by `fdatasync`: over the blocks of a file
/// written and synced before, or (`append`) at the end of a new file.
fn fdatasync_times(path: &Path, append: bool) -> Result<Vec<Duration>> {
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    let block = [0x5a_u8; BLOCK];
    if !append {
        // Written and synced once, so that the timed syncs write data only.
        for _ in 0..FILE_BYTES / BLOCK as u64 {
            file.write_all(&block)?;
        }
    }
    file.sync_all()?;
    let mut times = Vec::with_capacity(SAMPLES);
    for i in 0..SAMPLES as u64 {
        let offset = if append { i * BLOCK as u64 } else { (i * BLOCK as u64) % FILE_BYTES };
        file.seek(SeekFrom::Start(offset))?;
        let began = Instant::now();
        file.write_all(&block)?;
        file.sync_data()?;
        times.push(began.elapsed());
    }
    Ok(times)
}

fn loopback_round_trips() -> Result<Vec<Duration>> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let echo = std::thread::spawn(move || -> std::io::Result<()> {
        let (mut stream, _) = listener.accept()?;
        stream.set_nodelay(true)?;
        let mut byte = [0u8; 1];
        for _ in 0..SAMPLES {
            stream.read_exact(&mut byte)?;
            stream.write_all(&byte)?;
        }
        Ok(())
    });
    let mut stream = TcpStream::connect(addr)?;
    stream.set_nodelay(true)?;
    let mut times = Vec::with_capacity(SAMPLES);
    let mut byte = [7u8; 1];
    for _ in 0..SAMPLES {
        let began = Instant::now();
        stream.write_all(&byte)?;
        stream.read_exact(&mut byte)?;
        times.push(began.elapsed());
    }
    echo.join().map_err(|_| anyhow::anyhow!("the echo thread panicked"))??;
    Ok(times)
}

/// The `q` quantile (nearest rank) of `times`, in µs.
fn quantile_us(times: &[Duration], q: f64) -> f64 {
    if times.is_empty() {
        return 0.0;
    }
    let mut sorted = times.to_vec();
    sorted.sort_unstable();
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1].as_secs_f64() * 1e6
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_are_nearest_ranks() {
        let times: Vec<Duration> = (1..=100).map(Duration::from_micros).collect();
        assert_eq!(quantile_us(&times, 0.5), 50.0);
        assert_eq!(quantile_us(&times, 0.99), 99.0);
        assert_eq!(quantile_us(&[], 0.5), 0.0);
    }

    #[test]
    fn the_probe_measures_a_sync_and_a_round_trip() {
        let dir = std::env::temp_dir().join(format!("probe-test-{}", std::process::id()));
        let floor = measure(&dir).expect("the probe runs");
        let _ = std::fs::remove_dir_all(&dir);
        assert!(floor.fdatasync_p50_us > 0.0 && floor.loopback_rtt_p50_us > 0.0);
        assert!(floor.fdatasync_p99_us >= floor.fdatasync_p50_us);
        assert!(floor.fdatasync_append_p50_us > 0.0);
        assert!(floor.fdatasync_append_p99_us >= floor.fdatasync_append_p50_us);
        assert!(floor.one_connection_target_ms() > 0.0);
    }
}
