//! The parts that the TCP and QUIC transports of raft-core share.
//!
//! Both transports speak the same wire format ([`raft_core::wire`]) over byte streams: a TCP
//! connection (plain or TLS) or a QUIC stream. What does not depend on the kind of stream lives
//! here, once:
//!
//! - [`io`]: reading a frame with deadlines from any [`tokio::io::AsyncRead`], writing one to
//!   any [`tokio::io::AsyncWrite`];
//! - [`handshake`]: the `Hello` exchange, on the connecting and on the accepting side;
//! - [`inbox`]: the two bounded inbound queues (small messages, `InstallSnapshot` chunks) that
//!   `recv` drains together, and the checks on each received message;
//! - [`outbound`]: coalescing queued messages into one write, and reconnection backoff;
//! - [`peers`]: the table of peers and their addresses, and which inbound connection of a
//!   peer is the current one;
//! - [`stats`]: the counters of a transport.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use bytes::BytesMut;
//! use raft_core::wire::{FrameDecoder, WireMessage, WIRE_VERSION};
//! use raft_transport_common::io::{read_frame, write_frame};
//!
//! let (mut a, mut b) = tokio::io::duplex(4096);
//! let ack = WireMessage::HelloAck { version: WIRE_VERSION, node_id: 2 };
//! write_frame(&mut a, &ack, u32::MAX).await?;
//! let mut buf = BytesMut::new();
//! let timeout = std::time::Duration::from_secs(1);
//! let got = read_frame(&mut b, &mut buf, &FrameDecoder::default(), None, timeout).await?;
//! assert_eq!(got, ack);
//! # Ok(())
//! # }
//! ```
//!
//! **Why a crate and not a module of `raft_core::wire`.** `raft-core` holds the protocol and
//! the wire *format*, which is pure data (encode, decode, limits). This crate is IO plumbing
//! with tokio tasks, queues and clocks in it; keeping it out of `raft-core` keeps that crate's
//! surface what a Raft user needs, and lets the transports change their plumbing together
//! without touching the protocol crate. It is not meant for applications: it is the
//! transports' shared implementation, published as a crate only so both can use it.

pub mod admission;
pub mod handshake;
pub mod inbox;
pub mod io;
pub mod outbound;
pub mod peers;
pub mod stats;

pub use stats::{Counters, LogGate, TransportStats, REFUSALS_LOGGED};
