//! The bank example's tests: the ledger on its own (`ledger.rs`) and the three-node demo
//! scenario over TCP and RocksDB (`cluster.rs`).

// Test helpers outside `#[test]` functions unwrap too: a failure there is a test failure.
#![allow(clippy::unwrap_used)]

mod cluster;
mod ledger;
