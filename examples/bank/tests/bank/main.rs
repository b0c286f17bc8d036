//! The bank example's tests: the ledger on its own (`ledger.rs`) and the three-node demo
//! scenario over TCP and RocksDB (`cluster.rs`).

mod ledger;
