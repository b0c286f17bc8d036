//! # raft-kv
//!
//! The replicated key-value store and service registry that `raft-node` serves: the commands
//! clients propose, the state machine ([`KvFsm`], a `raft_core::Fsm`) that applies them, the
//! read side ([`KvStore`]) the HTTP layer queries, a commit stream ([`Watcher`]) and a local
//! load balancer ([`Balancer`]). No IO: `raft-node` owns the network.
//!
//! ## The pieces
//!
//! - **Write**: build a [`Command`] (an [`Op`], optionally in a [`Session`] for exactly-once
//!   retries), [`Command::validate`] it, propose [`Command::encode`] with `RaftNode::propose`,
//!   and decode the applied `response` with [`Response::decode`].
//! - **Read**: [`KvStore::get`], [`list`](KvStore::list) / [`list_page`](KvStore::list_page),
//!   [`services`](KvStore::services), [`service`](KvStore::service),
//!   [`member_addresses`](KvStore::member_addresses), [`stats`](KvStore::stats),
//!   [`state_hash`](KvStore::state_hash). For a linearizable read, take an index from
//!   `RaftNode::read_index`, [`wait_applied`](KvStore::wait_applied) it, then read.
//! - **Watch**: [`KvStore::watch`] replays the retained [`ChangeEvent`]s after an index, then
//!   follows live ones; a watcher that cannot be served fails with a [`WatchError`] that says
//!   how to resync.
//! - **Balance**: [`Balancer::pick`] picks a live node of a service by priority
//!   ([`Strategy::SmoothWeighted`] or [`Strategy::WeightedRandom`]).
//!
//! Every key has a version (1 on create, +1 per change) and the log indexes of its creation
//! and latest change ([`KeyValue`]). Applying is deterministic and never fails on a client's
//! input: an undecodable or invalid command gets [`Response::Rejected`]. Snapshots are one format
//! version byte plus the postcard of the whole state and its hash; restoring checks every
//! invariant and fails with a typed error on anything else.
//!
//! ## Example
//!
//! A one-node cluster in one process (in-memory storage, local transport):
//!
//! ```
//! use std::sync::Arc;
//! use raft_core::{testing::local_transport::LocalNetwork, Config, Membership, RaftNode, ReadMode};
//! use raft_kv::{Command, Expected, KvOptions, KvStore, Op, Response};
//! use raft_storage_mem::MemStorage;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let (store, fsm) = KvStore::new(KvOptions::default())?;
//! let node = RaftNode::start(
//!     1,
//!     Config::default(),
//!     Membership::with_voters([1]),
//!     Arc::new(MemStorage::default()),
//!     Arc::new(LocalNetwork::default().transport(1, 1_024)),
//!     Box::new(fsm),
//!     7,
//! )
//! .await?;
//!
//! // A write in client session 42, first sequence number (retries reuse it).
//! let put = Command::in_session(42, 1, Op::Put { key: "greeting".into(), value: "hello".into() });
//! put.validate()?;
//! let mut applied = None;
//! for _ in 0..250 {
//!     // Proposals fail until the node has elected itself (within a few hundred ms).
//!     match node.propose(put.encode()).await {
//!         Ok(a) => applied = Some(a),
//!         Err(_) => tokio::time::sleep(std::time::Duration::from_millis(20)).await,
//!     }
//!     if applied.is_some() {
//!         break;
//!     }
//! }
//! let applied = applied.ok_or("no leader within 5 s")?;
//! assert_eq!(Response::decode(&applied.response)?, Response::Put { version: 1, prev: None });
//!
//! // Compare-and-swap on the version.
//! let cas = Op::Cas { key: "greeting".into(), expected: Expected::Version(1), value: Some("hi".into()) };
//! let applied = node.propose(Command::new(cas).encode()).await?;
//! assert!(matches!(Response::decode(&applied.response)?, Response::Put { version: 2, .. }));
//!
//! // A linearizable read.
//! let index = node.read_index(ReadMode::ReadIndex).await?;
//! store.wait_applied(index).await?;
//! let kv = store.get("greeting").expect("the key exists");
//! assert_eq!((kv.value.as_str(), kv.version, kv.mod_index), ("hi", 2, applied.log_id.index));
//! node.shutdown().await?;
//! # Ok(())
//! # }
//! ```

mod balance;
mod command;
mod error;
mod hash;
mod service;
mod state;
mod store;
mod watch;

pub use balance::{pick_weighted_random, Balancer, SmoothWeighted, Strategy};
pub use command::{Command, Expected, KeyValue, Op, Response, Session, MAX_KEY_BYTES, MAX_VALUE_BYTES};
pub use error::{BalanceError, InvalidCommand, KvError, SnapshotError, WatchError};
pub use service::{
    MemberAddress, Service, ServiceNode, MAX_ADDRESS_BYTES, MAX_ATTRIBUTE_BYTES, MAX_MEMBER_ADDRESSES,
    MAX_NAME_BYTES, MAX_NODE_ATTRIBUTES, MAX_SERVICE_NODES,
};
pub use store::{
    KvFsm, KvOptions, KvStats, KvStore, ListPage, DEFAULT_MAX_SESSION_BYTES, DEFAULT_MAX_STATE_BYTES,
    INLINE_APPLY_BYTES, MAX_WATCH_CHANNEL_CAPACITY, MAX_WATCH_HISTORY,
};
pub use watch::{Change, ChangeEvent, Watcher};
