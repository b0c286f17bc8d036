//! # raft-sim
//!
//! Deterministic simulation of whole clusters of the **real** [`raft_core::RaftNode`] driver
//! (event loop, waiters, automatic snapshots and compaction, proposal and read answers), not a
//! copy of it. Each seed runs on its own single-threaded tokio runtime with a paused clock, so
//! time only moves when every task waits and the run replays exactly:
//!
//! - a simulated network (`net`): random delays, loss, duplication, reordering, partitions of
//!   any shape and one-way links; messages to a node that is down may reach its next
//!   incarnation, as a peer's TCP queue would deliver them;
//! - simulated disks (`disk`) with a crash model: a write in progress survives in part (a torn
//!   append) or not at all; injected EIO and disk-full errors stop the node; injected read
//!   faults make a leader's next reads of log entries fail as unreadable (a rotted block);
//! - crashes abort the driver task ([`raft_core::RaftNode::abort`]) and a restart builds a
//!   new one from the disk: a new incarnation with a new seed, as a real process restart;
//! - clients propose writes (each with a unique value and a (client, sequence) pair, so that a
//!   command applied twice is detected) and linearizable reads (ReadIndex and lease) on random
//!   nodes; each operation is recorded with its simulated call and return time and outcome
//!   (ok, failed, unknown) and the history is checked with [`raft_linearizability::check`];
//! - a nemesis crashes nodes (the leader too), restarts them, partitions, changes membership
//!   (learners, promotions, joint voter changes, removing the leader) and transfers leadership;
//! - checks on every apply and status: the same entry at an index everywhere, the same state
//!   after an index (applied or restored from a snapshot), only durable entries applied, one
//!   leader per term, the hard state never rolled back; after healing, a write must reach
//!   every member (liveness).
//!
//! ```
//! let report = raft_sim::run(7, raft_sim::Options { chaos_ms: 1_000, liveness_ms: 10_000 })
//!     .expect("seed 7 passes");
//! assert!(report.operations > 0);
//! // The same seed replays the same run.
//! let again = raft_sim::run(7, raft_sim::Options { chaos_ms: 1_000, liveness_ms: 10_000 }).expect("passes");
//! assert_eq!(report.trace_hash, again.trace_hash);
//! ```

mod checks;
mod clock;
mod disk;
mod fsm;
mod net;
mod run;

pub use run::{run, Coverage, Failure, Options, Report};
