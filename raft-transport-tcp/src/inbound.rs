//! The accept loop and one task per inbound connection: handshake, then frames into the
//! inbound channel.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::BytesMut;
use raft_core::wire::{FrameDecoder, RefusalReason, WireMessage, HANDSHAKE_MAX_FRAME_BYTES, WIRE_VERSION};
use raft_core::{Message, NodeId};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tracing::{debug, info, warn, Instrument};

use crate::io::{read_frame, write_frame, ReadError};
use crate::stats::Counters;
use crate::Shared;

/// Accepts connections until the task is aborted; dropping it aborts every connection task.
pub(crate) async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, inbox: mpsc::Sender<Message>) {
    let slots = Arc::new(Semaphore::new(shared.config.max_inbound_connections));
    let mut connections = JoinSet::new();
    loop {
        while connections.try_join_next().is_some() {}
        let (stream, addr) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                // Out of file descriptors and the like: back off instead of spinning.
                warn!(%error, "accept failed");
                tokio::time::sleep(shared.config.backoff_min).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            Counters::add(&shared.counters.rejected_connections, 1);
            warn!(peer_addr = %addr, limit = shared.config.max_inbound_connections, "connection limit reached; closing");
            drop(stream);
            continue;
        };
        let shared = shared.clone();
        let inbox = inbox.clone();
        let span = tracing::debug_span!("inbound", peer_addr = %addr);
        connections.spawn(
            async move {
                serve(stream, addr, &shared, &inbox).await;
                drop(slot);
            }
            .instrument(span),
        );
    }
}

/// Runs one inbound connection to its end.
async fn serve(mut stream: TcpStream, addr: SocketAddr, shared: &Shared, inbox: &mpsc::Sender<Message>) {
    let config = &shared.config;
    let counters = &shared.counters;
    if let Err(error) = stream.set_nodelay(true) {
        debug!(%error, "set_nodelay failed");
    }
    let mut buf = BytesMut::with_capacity(4096);
    let deadline = Instant::now() + config.handshake_timeout;
    // Until the peer is known, it may make us buffer only a small frame.
    let handshake_decoder = FrameDecoder::new(HANDSHAKE_MAX_FRAME_BYTES);
    let hello =
        read_frame(&mut stream, &mut buf, &handshake_decoder, Some(deadline), config.handshake_timeout).await;
    let peer = match hello {
        Ok(WireMessage::Hello { version, cluster_id, node_id }) => {
            match check_hello(shared, version, cluster_id, node_id) {
                Ok(()) => node_id,
                Err(reason) => {
                    Counters::add(&counters.refused_handshakes, 1);
                    warn!(peer_addr = %addr, %reason, "handshake refused");
                    let refused = WireMessage::Refused { reason };
                    let _ =
                        tokio::time::timeout_at(deadline, write_frame(&mut stream, &refused, u32::MAX)).await;
                    let _ = stream.shutdown().await;
                    return;
                }
            }
        }
        Ok(other) => {
            Counters::add(&counters.bad_frames, 1);
            warn!(peer_addr = %addr, kind = kind(&other), "expected Hello");
            return;
        }
        Err(error) => {
            count_read_error(counters, &error);
            debug!(peer_addr = %addr, %error, "handshake failed");
            return;
        }
    };
    let ack = WireMessage::HelloAck { version: WIRE_VERSION, node_id: config.node_id };
    match tokio::time::timeout_at(deadline, write_frame(&mut stream, &ack, u32::MAX)).await {
        Ok(Ok(())) => {}
        Ok(Err(error)) => {
            debug!(peer = peer, %error, "writing HelloAck failed");
            return;
        }
        Err(_) => {
            Counters::add(&counters.timeouts, 1);
            return;
        }
    }
    // A newer connection from the same node supersedes this one: a peer that restarted
    // behind a half-open connection must not leave it holding a connection slot forever.
    let Some(generations) = shared.generations.get(&peer) else {
        return; // not a peer; `check_hello` refused it already
    };
    let mut generation = 0;
    generations.send_modify(|g| {
        *g += 1;
        generation = *g;
    });
    let mut superseded = generations.subscribe();
    debug!(peer = peer, generation, "inbound connection established");
    let decoder = FrameDecoder::new(config.max_frame_bytes);
    let mut warned_misaddressed = false;
    loop {
        let frame = tokio::select! {
            frame = read_frame(&mut stream, &mut buf, &decoder, None, config.frame_timeout) => frame,
            _ = superseded.changed() => {
                info!(peer = peer, "a newer connection from the same node replaces this one; closing");
                return;
            }
        };
        match frame {
            Ok(WireMessage::Raft(message)) => {
                if message.from != peer || message.to != config.node_id {
                    Counters::add(&counters.dropped_misaddressed, 1);
                    if warned_misaddressed {
                        debug!(
                            peer = peer,
                            from = message.from,
                            to = message.to,
                            "misaddressed message dropped"
                        );
                    } else {
                        warn!(
                            peer = peer,
                            from = message.from,
                            to = message.to,
                            "misaddressed message dropped"
                        );
                        warned_misaddressed = true;
                    }
                    continue;
                }
                // Counted first, so the counter is never behind what `recv` returned.
                Counters::add(&counters.received, 1);
                if inbox.send(message).await.is_err() {
                    return; // shutting down
                }
            }
            Ok(other) => {
                Counters::add(&counters.bad_frames, 1);
                warn!(peer = peer, kind = kind(&other), "unexpected frame; closing");
                return;
            }
            Err(ReadError::Closed) => {
                debug!(peer = peer, "peer closed the connection");
                return;
            }
            Err(error) => {
                count_read_error(counters, &error);
                warn!(peer = peer, %error, "closing inbound connection");
                return;
            }
        }
    }
}

/// Checks a `Hello` against this node's settings.
fn check_hello(
    shared: &Shared,
    version: u16,
    cluster_id: String,
    node_id: NodeId,
) -> Result<(), RefusalReason> {
    if version != WIRE_VERSION {
        return Err(RefusalReason::UnsupportedVersion { supported: WIRE_VERSION, got: version });
    }
    if cluster_id != shared.config.cluster_id {
        return Err(RefusalReason::WrongCluster {
            expected: shared.config.cluster_id.clone(),
            got: cluster_id,
        });
    }
    if !shared.config.peers.contains_key(&node_id) {
        return Err(RefusalReason::UnknownNode(node_id));
    }
    Ok(())
}

fn count_read_error(counters: &Counters, error: &ReadError) {
    match error {
        ReadError::Wire(_) => Counters::add(&counters.bad_frames, 1),
        ReadError::Timeout => Counters::add(&counters.timeouts, 1),
        ReadError::Closed | ReadError::Truncated | ReadError::Io(_) => {}
    }
}

/// A short name of a frame's kind, for logs.
fn kind(message: &WireMessage) -> &'static str {
    match message {
        WireMessage::Hello { .. } => "hello",
        WireMessage::HelloAck { .. } => "hello_ack",
        WireMessage::Refused { .. } => "refused",
        WireMessage::Raft(_) => "raft",
    }
}
