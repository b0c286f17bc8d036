//! In-process benchmarks: raft-core and openraft side by side on the same workload.
//!
//! Both systems run three voters in one process on the same two tokio runtimes ([`Runtimes`]):
//! the nodes on a server runtime, the proposers on a client runtime, the split openraft's own
//! `benchmarks/minimal` uses.
//!
//! ```no_run
//! # fn main() -> anyhow::Result<()> {
//! let rt = raft_bench::Runtimes::new(2, 1)?;
//! let ours = raft_bench::core_cluster::run(&rt, 256, 10_000)?;
//! let theirs = raft_bench::openraft_cluster::run(&rt, 256, 10_000)?;
//! println!("{:?} {:?}", ours.elapsed, theirs.elapsed);
//! # Ok(())
//! # }
//! ```

pub mod core_cluster;
pub mod floor;
pub mod openraft_cluster;
pub mod openraft_own;
pub mod openraft_store;
pub mod report;

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::runtime::{Builder, Runtime};

/// The outcome of one benchmark run.
#[derive(Debug, Clone)]
pub struct BenchReport {
    /// Number of operations that completed.
    pub ops: usize,
    /// Wall time from the first operation to the last one's answer (for a proposal: once the
    /// leader applied it).
    pub elapsed: Duration,
    /// Latencies in microseconds: of every proposal, or of a sample (see [`TIMED_EVERY`]).
    pub latencies_us: Vec<u64>,
}

/// The two runtimes a write benchmark runs on: the cluster's nodes on `server`, the proposers on
/// `client`.
pub struct Runtimes {
    /// Runs every node's tasks.
    pub server: Runtime,
    /// Runs the proposer tasks.
    pub client: Runtime,
}

impl Runtimes {
    /// Multi-threaded runtimes with `server_workers` and `client_workers` worker threads.
    ///
    /// # Errors
    ///
    /// Fails if the operating system refuses a thread.
    pub fn new(server_workers: usize, client_workers: usize) -> std::io::Result<Self> {
        let build = |workers: usize, name: &str| {
            Builder::new_multi_thread().worker_threads(workers).thread_name(name).enable_all().build()
        };
        Ok(Self {
            server: build(server_workers, "bench-server")?,
            client: build(client_workers, "bench-client")?,
        })
    }
}

/// One operation in this many is timed by [`run_concurrently`] (two clock reads each):
/// openraft's own benchmark times none, and at hundreds of thousands of operations a second
/// the clock reads of every one would cost a few percent of the run.
pub const TIMED_EVERY: usize = 8;

/// Runs `op` `total` times from `tasks` concurrent tasks on the current runtime, the
/// operations numbered in the order they are claimed and every [`TIMED_EVERY`]th one timed,
/// the first error ending the run.
/// Each task gets a clone of `state`, which `op` takes and gives back (nothing is cloned per
/// operation).
///
/// # Errors
///
/// The first error of `op`, or a task that panicked.
pub async fn run_concurrently<S, F, Fut>(
    tasks: usize,
    total: usize,
    state: S,
    op: F,
) -> anyhow::Result<BenchReport>
where
    S: Clone + Send + 'static,
    F: Fn(S) -> Fut + Copy + Send + 'static,
    Fut: Future<Output = anyhow::Result<S>> + Send,
{
    let claimed = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut handles = Vec::new();
    for _ in 0..tasks {
        let (mut state, claimed) = (state.clone(), claimed.clone());
        handles.push(tokio::spawn(async move {
            let (mut latencies, mut done) = (Vec::new(), 0usize);
            loop {
                let n = claimed.fetch_add(1, Ordering::Relaxed);
                if n >= total {
                    break;
                }
                let t = (n % TIMED_EVERY == 0).then(Instant::now);
                state = match op(state).await {
                    Ok(state) => state,
                    Err(e) => {
                        // The other tasks stop at their next claim.
                        claimed.store(total, Ordering::Relaxed);
                        return Err(e);
                    }
                };
                if let Some(t) = t {
                    latencies.push(u64::try_from(t.elapsed().as_micros()).unwrap_or(u64::MAX));
                }
                done += 1;
            }
            anyhow::Ok((done, latencies))
        }));
    }
    let (mut ops, mut latencies_us) = (0, Vec::with_capacity(total.div_ceil(TIMED_EVERY)));
    let mut first_error = None;
    for h in handles {
        match h.await.map_err(anyhow::Error::from).and_then(|outcome| outcome) {
            Ok((done, latencies)) => {
                ops += done;
                latencies_us.extend(latencies);
            }
            // Every task is joined: none is left running on the runtime after an error.
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    let elapsed = started.elapsed();
    match first_error {
        Some(e) => Err(e),
        None => Ok(BenchReport { ops, elapsed, latencies_us }),
    }
}
