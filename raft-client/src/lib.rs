//! Client side of `raft-node`'s HTTP/JSON API.
//!
//! - [`api`]: the request and response types of every endpoint, shared with the server.

pub mod api;
