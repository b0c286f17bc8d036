//! `raft-node`: a replicated key-value and service-registry server built from the workspace's
//! crates, chosen à la carte by a TOML config file.
//!
//! - [`config`]: the config file, overrides and validation.
//! - [`metrics`]: Prometheus metrics.

pub mod config;
pub mod metrics;
