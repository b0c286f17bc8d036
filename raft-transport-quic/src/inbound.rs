//! The accept loop and one task per inbound connection: certificate identity, `Hello`, then
//! one reader per unidirectional stream feeding the inbound channel.

use std::sync::Arc;

use bytes::BytesMut;
use raft_core::wire::{FrameDecoder, RefusalReason, WireMessage, HANDSHAKE_MAX_FRAME_BYTES, WIRE_VERSION};
use raft_core::NodeId;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tracing::{debug, info, warn, Instrument};

use crate::io::{read_frame, write_frame, ReadError};
use crate::stats::Counters;
use crate::tls::peer_node_id;
use crate::{close_codes, InboxSenders, Shared};

/// Accepts connections until the task is aborted; dropping it aborts every connection task.
pub(crate) async fn accept_loop(endpoint: quinn::Endpoint, shared: Arc<Shared>, inbox: InboxSenders) {
    let slots = Arc::new(Semaphore::new(shared.config.max_inbound_connections));
    let mut connections = JoinSet::new();
    while let Some(incoming) = endpoint.accept().await {
        while connections.try_join_next().is_some() {}
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            Counters::add(&shared.counters.rejected_connections, 1);
            warn!(
                peer_addr = %incoming.remote_address(),
                limit = shared.config.max_inbound_connections,
                "connection limit reached; refusing"
            );
            incoming.refuse();
            continue;
        };
        let shared = shared.clone();
        let inbox = inbox.clone();
        let span = tracing::debug_span!("inbound", peer_addr = %incoming.remote_address());
        connections.spawn(
            async move {
                serve(incoming, shared, inbox).await;
                drop(slot);
            }
            .instrument(span),
        );
    }
}

/// Runs one inbound connection to its end.
async fn serve(incoming: quinn::Incoming, shared: Arc<Shared>, inbox: InboxSenders) {
    let config = &shared.config;
    let counters = &shared.counters;
    let addr = incoming.remote_address();
    let deadline = Instant::now() + config.handshake_timeout;
    let connection = match tokio::time::timeout_at(deadline, incoming).await {
        Ok(Ok(connection)) => connection,
        Ok(Err(error)) => {
            // Untrusted, expired or missing client certificate, or the client refused ours.
            Counters::add(&counters.refused_tls, 1);
            warn!(peer_addr = %addr, %error, "TLS handshake failed");
            return;
        }
        Err(_) => {
            Counters::add(&counters.refused_tls, 1);
            warn!(peer_addr = %addr, "TLS handshake timed out");
            return;
        }
    };
    let peer = match peer_node_id(&connection, &config.cluster_id) {
        Ok(peer) if config.peers.contains_key(&peer) => peer,
        Ok(peer) => {
            refuse_identity(
                &shared,
                &connection,
                &format!("certificate of node {peer}, which is not a peer"),
            );
            return;
        }
        Err(error) => {
            refuse_identity(&shared, &connection, &error.to_string());
            return;
        }
    };
    if !hello(&shared, &connection, peer, deadline).await {
        return;
    }
    // A newer connection from the same node supersedes this one.
    let Some(generations) = shared.generations.get(&peer) else {
        return;
    };
    let mut generation = 0;
    generations.send_modify(|g| {
        *g += 1;
        generation = *g;
    });
    let mut superseded = generations.subscribe();
    debug!(peer, generation, "inbound connection established");
    let mut streams = JoinSet::new();
    loop {
        tokio::select! {
            stream = connection.accept_uni() => match stream {
                Ok(stream) => {
                    while streams.try_join_next().is_some() {}
                    streams.spawn(read_stream(stream, shared.clone(), peer, inbox.clone()));
                }
                Err(error) => {
                    debug!(peer, %error, "connection closed");
                    return;
                }
            },
            _ = superseded.changed() => {
                info!(peer, "a newer connection from the same node replaces this one; closing");
                connection.close(close_codes::SUPERSEDED.into(), b"superseded");
                return;
            }
        }
    }
}

/// Closes a connection whose certificate does not name a known peer of this cluster.
fn refuse_identity(shared: &Shared, connection: &quinn::Connection, reason: &str) {
    Counters::add(&shared.counters.refused_identity, 1);
    warn!(peer_addr = %connection.remote_address(), reason, "peer identity refused; closing");
    connection.close(close_codes::BAD_IDENTITY.into(), reason.as_bytes());
}

/// Runs the `Hello` exchange on the first bidirectional stream; false if the connection was
/// refused or broke (it is closed then).
async fn hello(shared: &Shared, connection: &quinn::Connection, peer: NodeId, deadline: Instant) -> bool {
    let config = &shared.config;
    let counters = &shared.counters;
    let (mut send, mut recv) = match tokio::time::timeout_at(deadline, connection.accept_bi()).await {
        Ok(Ok(streams)) => streams,
        Ok(Err(error)) => {
            debug!(peer, %error, "connection closed before Hello");
            return false;
        }
        Err(_) => {
            warn!(peer, "no Hello in time; closing");
            connection.close(close_codes::PROTOCOL.into(), b"handshake timeout");
            return false;
        }
    };
    let decoder = FrameDecoder::new(HANDSHAKE_MAX_FRAME_BYTES);
    let mut buf = BytesMut::with_capacity(256);
    let refusal = match read_frame(&mut recv, &mut buf, &decoder, Some(deadline), config.handshake_timeout)
        .await
    {
        Ok(WireMessage::Hello { version, cluster_id, node_id }) => {
            if version != WIRE_VERSION {
                Some(RefusalReason::UnsupportedVersion { supported: WIRE_VERSION, got: version })
            } else if cluster_id != config.cluster_id {
                Some(RefusalReason::WrongCluster { expected: config.cluster_id.clone(), got: cluster_id })
            } else if node_id != peer {
                // The certificate names another node than the one speaking.
                Counters::add(&counters.refused_identity, 1);
                warn!(peer, hello_node = node_id, "Hello names another node than the certificate; refusing");
                Some(RefusalReason::UnknownNode(node_id))
            } else {
                None
            }
        }
        Ok(_) => {
            Counters::add(&counters.bad_frames, 1);
            warn!(peer, "expected Hello; closing");
            connection.close(close_codes::PROTOCOL.into(), b"expected Hello");
            return false;
        }
        Err(error) => {
            if matches!(error, ReadError::Wire(_)) {
                Counters::add(&counters.bad_frames, 1);
            }
            debug!(peer, %error, "handshake failed");
            connection.close(close_codes::PROTOCOL.into(), b"handshake failed");
            return false;
        }
    };
    if let Some(reason) = refusal {
        if !matches!(reason, RefusalReason::UnknownNode(_)) {
            Counters::add(&counters.refused_handshakes, 1);
            warn!(peer, %reason, "handshake refused");
        }
        let refused = WireMessage::Refused { reason: reason.clone() };
        let _ = tokio::time::timeout_at(deadline, write_frame(&mut send, &refused, u32::MAX)).await;
        let _ = send.finish();
        // Give the Refused frame a moment to leave before the close overtakes it.
        let _ = tokio::time::timeout_at(deadline, send.stopped()).await;
        connection.close(close_codes::REFUSED.into(), reason.to_string().as_bytes());
        return false;
    }
    let ack = WireMessage::HelloAck { version: WIRE_VERSION, node_id: config.node_id };
    match tokio::time::timeout_at(deadline, write_frame(&mut send, &ack, u32::MAX)).await {
        Ok(Ok(())) => {
            let _ = send.finish();
            true
        }
        Ok(Err(error)) => {
            debug!(peer, %error, "writing HelloAck failed");
            false
        }
        Err(_) => {
            connection.close(close_codes::PROTOCOL.into(), b"handshake timeout");
            false
        }
    }
}

/// Reads frames from one unidirectional stream into the inbound channel until it ends.
async fn read_stream(mut stream: quinn::RecvStream, shared: Arc<Shared>, peer: NodeId, inbox: InboxSenders) {
    let config = &shared.config;
    let counters = &shared.counters;
    let decoder = FrameDecoder::new(config.max_frame_bytes);
    let mut buf = BytesMut::with_capacity(4096);
    let mut warned_misaddressed = false;
    loop {
        match read_frame(&mut stream, &mut buf, &decoder, None, config.frame_timeout).await {
            Ok(WireMessage::Raft(message)) => {
                if message.from != peer || message.to != config.node_id {
                    Counters::add(&counters.dropped_misaddressed, 1);
                    if !warned_misaddressed {
                        warn!(peer, from = message.from, to = message.to, "misaddressed message dropped");
                        warned_misaddressed = true;
                    }
                    continue;
                }
                // Counted first, so the counter is never behind what `recv` returned.
                Counters::add(&counters.received, 1);
                if !inbox.send(message).await {
                    return; // shutting down
                }
            }
            Ok(_) => {
                Counters::add(&counters.bad_frames, 1);
                warn!(peer, "unexpected frame on a message stream; stopping it");
                let _ = stream.stop(close_codes::PROTOCOL.into());
                return;
            }
            Err(ReadError::Closed) => return,
            Err(error) => {
                if matches!(error, ReadError::Wire(_)) {
                    Counters::add(&counters.bad_frames, 1);
                    warn!(peer, %error, "bad frame; stopping the stream");
                } else {
                    debug!(peer, %error, "stream ended");
                }
                let _ = stream.stop(close_codes::PROTOCOL.into());
                return;
            }
        }
    }
}
