//! Client side of `raft-node`'s HTTP/JSON API: a [`Client`] library and the `raftctl` command
//! line ([`cli`]).
//!
//! - [`api`]: the request and response types of every endpoint, shared with the server.
//! - [`Client`]: typed calls with leader discovery (`421 not_leader` hints and `307`
//!   redirects), retries with capped exponential backoff and jitter, per-attempt timeouts,
//!   and idempotent write sessions (a retried write carries the same client id and sequence
//!   number, so it is applied once).
//! - [`WatchStream`]: committed changes as server-sent events ([`sse`] parses them).
//! - [`SnapshotDownload`]: a node's latest snapshot, streamed (for backups).
//! - [`cli`]: `raftctl`, also reachable from other binaries through [`cli::run`].
//!
//! ```no_run
//! use futures_util::StreamExt;
//! use raft_client::api::{CasRequest, Consistency};
//! use raft_client::{Client, ClientError, ClientOptions};
//!
//! # async fn demo() -> Result<(), ClientError> {
//! let client = Client::new(["127.0.0.1:8081", "127.0.0.1:8082", "127.0.0.1:8083"], ClientOptions::default())?;
//! let written = client.put("config/mode", "active").await?;
//! println!("committed at index {}", written.index);
//!
//! let kv = client.get("config/mode", Some(Consistency::Linearizable)).await?;
//! assert_eq!(kv.map(|kv| kv.value).as_deref(), Some("active"));
//!
//! let swap = CasRequest { expected_version: Some(1), value: Some("standby".into()), ..Default::default() };
//! match client.cas("config/mode", &swap).await {
//!     Ok(_) => println!("swapped"),
//!     Err(ClientError::CasFailed { current }) => println!("lost the race: {current:?}"),
//!     Err(e) => return Err(e),
//! }
//!
//! let mut changes = client.watch("config/", Some(written.index)).await?;
//! while let Some(change) = changes.next().await {
//!     let change = change?;
//!     println!("{} {:?} {}", change.index, change.kind, change.key);
//! }
//! # Ok(())
//! # }
//! ```

pub mod api;
pub mod cli;
mod client;
mod endpoint;
mod error;
mod options;
mod snapshot;
pub mod sse;
mod tls;
mod watch;

pub use client::{Client, ENDPOINTS_MAX};
pub use endpoint::{Endpoint, Scheme, ENDPOINT_BYTES_MAX};
pub use error::{error_code_name, ClientError};
pub use options::{Backoff, ClientOptions, MAX_RETRIES_MAX, RESPONSE_BYTES_MAX_MIN};
pub use snapshot::SnapshotDownload;
pub use tls::ClientTls;
pub use watch::{WatchStream, WATCH_ERROR_EVENT};
