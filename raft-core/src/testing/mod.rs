//! Testing kit: conformance suites that every [`Storage`](crate::Storage) and
//! [`Transport`](crate::Transport) implementation runs, a Raft cluster over a real transport
//! (`cluster_suite`), and a deterministic cluster simulator that drives many
//! [`Raft`](crate::Raft) nodes through a simulated clock, network and disk from one seed.

pub mod cluster_suite;
pub mod counter;
pub mod gated;
pub mod local_transport;
pub mod sim;
pub mod snapshot_interference;
pub mod storage_suite;
pub mod transport_bench;
pub mod transport_suite;
