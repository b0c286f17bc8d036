//! `raft-node`: a replicated key-value and service-registry server built from the workspace's
//! crates, chosen à la carte by a TOML config file.
//!
//! - [`config`]: the config file, overrides and validation.
//! - [`metrics`]: Prometheus metrics.
//! - `node`: wiring ([`Node::start`]), start-up checks, joining, the address book.
//! - [`discovery`]: announcements on the local network (UDP multicast) and join candidates
//!   found in them.
//! - `http`: the HTTP/JSON API (paths and bodies in [`raft_client::api`]).

pub mod config;
mod http;
pub mod metrics;
mod node;

pub use node::{discovery, Node, StartError};
