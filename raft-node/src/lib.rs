//! `raft-node`: a replicated key-value and service-registry server built from the workspace's
//! crates, chosen à la carte by a TOML config file.
//!
//! - [`config`]: the config file, overrides and validation.
//! - [`metrics`]: Prometheus metrics.
//! - `node`: wiring ([`Node::start`]), start-up checks, joining, the address book.
//! - [`discovery`]: announcements on the local network (UDP multicast) and join candidates
//!   found in them.
//! - `http`: the HTTP/JSON API (paths and bodies in [`raft_client::api`]).
//! - [`recover`]: offline repairs of a stopped node's data dir (`raft-node recover`).
//!
//! The binary is a thin `main` around [`Node`]; a program can run a node the same way:
//!
//! ```no_run
//! use raft_node::{config::NodeConfig, Node};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! // Reads, overrides and validates the file (every problem is reported at once).
//! let config = NodeConfig::load("node.toml".as_ref(), &["raft.heartbeat_interval_ms=30".into()])?;
//! let node = Node::start(config).await?; // storage, transport, Raft, HTTP API
//! println!("serving on http://{}", node.client_addr());
//! tokio::signal::ctrl_c().await?;
//! node.shutdown().await; // in-flight requests finish, storage is flushed
//! # Ok(())
//! # }
//! ```

pub mod config;
mod http;
pub mod metrics;
mod node;
pub mod recent;
pub mod recover;

pub use http::{hash_token, new_token};
pub use node::{discovery, Node, ReloadError, Reloaded, StartError};
