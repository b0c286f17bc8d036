//! # raft-storage-rocks
//!
//! Durable [`Storage`](raft_core::Storage) for raft-core on RocksDB.
//!
//! - **Durability**: every write returns only after a synced WAL write; writes that arrive
//!   while a sync is in progress share the next one (group commit, see [`RocksDb`]).
//! - **Recycled WAL files** ([`RocksOptions::recycle_wal_files`], 4): a finished WAL is written
//!   over again rather than deleted, so a sync changes no file size and allocates no block and
//!   ext4 has no journal commit to make (for a 3-node raft-node cluster on one virtual disk,
//!   about 8 % more writes per second and a fifth lower p99; README, "The service path
//!   today").
//!   Replay stops at the end of the new records, or at damage (RocksDB's point-in-time
//!   recovery); what that drops of the acknowledged log or hard state is reported by the
//!   durability record as lost data, never taken silently.
//! - **Atomicity**: an append that replaces a suffix, a truncation, a compaction, and a
//!   snapshot with the log it discards are each one atomic batch.
//! - **Integrity**: every record carries a crc32c checksum; a store is opened only if its format
//!   version, cluster id and node id match and (by default) every record reads back intact.
//!   Damage, a foreign store, a newer format, or a second process on the same directory are
//!   refused with a typed [`OpenError`].
//! - **Faults**: a full disk is [`StorageError::Full`](raft_core::StorageError::Full); after any
//!   failed write the store reopens RocksDB before the next one, so writes work again once
//!   space is freed, and nothing acknowledged is lost. The store keeps headroom allocated on
//!   its disk ([`RocksOptions::headroom_bytes`], 64 MiB) and frees it when the driver asks after
//!   a write failed on a full disk, so that the writes needed to go on can finish; new proposals
//!   are refused until it is allocated again.
//!
//! **With `RaftNode`.** `Arc::new(db.log(0))` is the `storage` argument of
//! [`raft_core::RaftNode::start`]; restarting on the same directory resumes the node. The
//! directory is released once the node has shut down and every handle is dropped.
//! `examples/bank` in the workspace shows a whole node.
//!
//! ```
//! use raft_core::{Entry, EntryPayload, Storage};
//! use raft_storage_rocks::{Identity, RocksDb, RocksOptions};
//!
//! # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
//! let dir = tempfile::tempdir().unwrap();
//! let identity = Identity { cluster_id: "demo".into(), node_id: 1 };
//! let db = RocksDb::open(dir.path(), &identity, RocksOptions::default()).unwrap();
//! let log = db.log(0);
//! log.append(&[Entry { term: 1, index: 1, payload: EntryPayload::Blank }]).await.unwrap();
//! assert_eq!(log.initial_state().await.unwrap().last_index, 1);
//! # });
//! ```

mod codec;
mod db;
mod durability;
mod error;
mod headroom;
mod snapshot_file;
mod staging;
mod storage;

pub use db::{Identity, RocksDb, RocksOptions, DAMAGED_PREFIX, FORMAT_VERSION, HEADROOM_FILE};
pub use durability::FILE_NAME as DURABILITY_FILE;
pub use error::{is_disk_failure, OpenError};
pub use storage::RocksStorage;

#[cfg(test)]
mod tests;
