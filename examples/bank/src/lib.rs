//! # raft-example-bank
//!
//! How to embed raft-core à la carte: pick a [`Storage`](raft_core::Storage) (here
//! `raft-storage-rocks`), a [`Transport`](raft_core::Transport) (here `raft-transport-tcp`)
//! and write your own [`Fsm`](raft_core::Fsm), then hand all three to
//! [`RaftNode::start`](raft_core::RaftNode::start). The application is a small replicated bank.
//!
//! - [`Ledger`] (`ledger.rs`): accounts and balances; [`Command`]s open an account, deposit,
//!   and transfer between accounts. A command the ledger cannot carry out (insufficient
//!   funds, unknown account, ...) gets a [`Rejection`] *response*, the same on every node; it
//!   is never an `Err` of the state machine. Snapshots are a format byte and the postcard of
//!   the whole ledger, checked on restore.
//! - [`LedgerFsm`] (`fsm.rs`): the `Fsm` that applies committed entries to a shared ledger,
//!   and [`LedgerView`], its read side.
//! - [`BankNode`] (`node.rs`): starts one node (RocksDB in a data directory, TCP on an
//!   address, the ledger) and offers [`transfer`](BankNode::transfer),
//!   [`deposit`](BankNode::deposit) and linearizable [`balances`](BankNode::balances).
//!
//! `cargo run -p raft-example-bank` runs three nodes in one process: it transfers money,
//! stops the leader, keeps serving under a new one, restarts the stopped node from its data
//! directory and checks that every node ends with the same balances and the same total.
//!
//! ```no_run
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! use std::collections::BTreeMap;
//! use raft_example_bank::{BankNode, BankNodeConfig};
//!
//! let peers = BTreeMap::from([(2, "10.0.0.2:7000".parse()?), (3, "10.0.0.3:7000".parse()?)]);
//! let config = BankNodeConfig::new(1, "bank", "10.0.0.1:7000".parse()?, peers, "/var/lib/bank/1");
//! let node = BankNode::start(config).await?;
//! node.open("alice").await?;
//! node.deposit("alice", 100).await?;
//! let balances = node.balances().await?; // linearizable
//! # let _ = balances;
//! # Ok(())
//! # }
//! ```

mod fsm;
mod ledger;
mod node;

pub use fsm::{LedgerFsm, LedgerView};
pub use ledger::{
    decode_response, encode_response, Command, Ledger, Outcome, Rejection, Response, SnapshotError,
    ACCOUNTS_MAX, ACCOUNT_NAME_BYTES_MAX, SNAPSHOT_FORMAT,
};
pub use node::{BankError, BankNode, BankNodeConfig, StartError};

/// Reserves `count` distinct free TCP addresses on 127.0.0.1 (for demos and tests): binds
/// them all on port 0, reads the ports, then releases them. Another process could take a
/// port before the node binds it; with the kernel's ephemeral port rotation that is rare.
pub fn free_local_addrs(count: usize) -> std::io::Result<Vec<std::net::SocketAddr>> {
    let listeners = (0..count)
        .map(|_| std::net::TcpListener::bind(("127.0.0.1", 0)))
        .collect::<std::io::Result<Vec<_>>>()?;
    listeners.iter().map(std::net::TcpListener::local_addr).collect()
}
