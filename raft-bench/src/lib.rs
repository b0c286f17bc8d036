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
pub mod openraft_cluster;
pub mod openraft_own;
pub mod openraft_store;
pub mod report;

use std::time::Duration;

use tokio::runtime::{Builder, Runtime};

/// The outcome of one benchmark run.
#[derive(Debug, Clone)]
pub struct BenchReport {
    /// Number of proposals that completed.
    pub ops: usize,
    /// Wall time from the first proposal to the last one applied on the leader.
    pub elapsed: Duration,
    /// Latency of each proposal in microseconds.
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
