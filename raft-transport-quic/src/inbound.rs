//! The accept loop and one task per inbound connection: certificate identity, `Hello`, then
//! one reader per unidirectional stream feeding the inbound channel.

use std::sync::Arc;

use raft_core::NodeId;
use raft_transport_common::admission::{Admission, Handshake};
use raft_transport_common::handshake::{accept_hello, AcceptHelloError, AcceptPolicy};
use raft_transport_common::inbox::{InboundPeer, InboxSenders, StreamEnd};
use raft_transport_common::peers::Superseded;
use raft_transport_common::{Counters, REFUSALS_LOGGED};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tracing::{debug, info, warn, Instrument};

use crate::tls::peer_node_id;
use crate::{close_codes, Shared};

/// Accepts connections until the task is aborted; dropping it aborts every connection task.
pub(crate) async fn accept_loop(endpoint: quinn::Endpoint, shared: Arc<Shared>, inbox: InboxSenders) {
    let admission = Admission::new(shared.config.max_inbound_connections);
    let mut connections = JoinSet::new();
    while let Some(incoming) = endpoint.accept().await {
        while connections.try_join_next().is_some() {}
        let addr = incoming.remote_address();
        // One Initial packet proves nothing about its source address (UDP is spoofed for
        // free): a stateless retry first, so that only a source that answered it is counted
        // against its address's bound (else a forger could hold a peer's slots with a few
        // packets it never sees the answers to).
        if !incoming.remote_address_validated() {
            if incoming.may_retry() {
                if let Err(error) = incoming.retry() {
                    error.into_incoming().refuse();
                }
            } else {
                incoming.refuse();
            }
            continue;
        }
        // A peer restarting behind its known address gets in however many strangers connect.
        let Some(handshake) = admission.admit_connection(addr, &shared.peers, &shared.counters) else {
            incoming.refuse();
            continue;
        };
        let shared = shared.clone();
        let inbox = inbox.clone();
        let span = tracing::debug_span!("inbound", peer_addr = %addr);
        connections.spawn(serve(incoming, shared, inbox, handshake).instrument(span));
    }
}

/// Runs one inbound connection to its end.
async fn serve(incoming: quinn::Incoming, shared: Arc<Shared>, inbox: InboxSenders, handshake: Handshake) {
    let config = &shared.config;
    let counters = &shared.counters;
    let addr = incoming.remote_address();
    let deadline = Instant::now() + config.handshake_timeout;
    let connection = match tokio::time::timeout_at(deadline, incoming).await {
        Ok(Ok(connection)) => connection,
        // Untrusted, expired or missing client certificate, or the client refused ours.
        Ok(Err(error)) => return counters.tls_refused(addr, Some(&error)),
        Err(_) => return counters.tls_refused(addr, None),
    };
    let peer = match peer_node_id(&connection, &config.cluster_id) {
        Ok(peer) if shared.peers.contains(peer) => peer,
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
    // A newer connection from the same node supersedes this one (registered first, so that
    // the older connection gives its slot up for this one).
    let Some(mut registration) = shared.peers.register_inbound(peer) else {
        connection.close(close_codes::BAD_IDENTITY.into(), b"not a peer");
        return; // removed meanwhile
    };
    let Some(_link) = handshake.establish_by(deadline).await else {
        Counters::add(&counters.rejected_connections, 1);
        connection.close(close_codes::REFUSED.into(), b"connection limit");
        return;
    };
    debug!(peer, generation = registration.generation(), "inbound connection established");
    let mut streams = JoinSet::new();
    loop {
        tokio::select! {
            stream = connection.accept_uni() => match stream {
                Ok(stream) => {
                    while streams.try_join_next().is_some() {}
                    streams.spawn(read_stream(stream, shared.clone(), connection.clone(), peer, inbox.clone()));
                }
                Err(error) => {
                    debug!(peer, %error, "connection closed");
                    return;
                }
            },
            why = registration.superseded() => {
                match why {
                    Superseded::ByNewerConnection => {
                        info!(peer, "a newer connection from the same node replaces this one; closing");
                        connection.close(close_codes::SUPERSEDED.into(), b"superseded");
                    }
                    Superseded::PeerRemoved => {
                        info!(peer, "peer removed; closing its connection");
                        connection.close(close_codes::BAD_IDENTITY.into(), b"peer removed");
                    }
                }
                return;
            }
        }
    }
}

/// Closes a connection whose certificate does not name a known peer of this cluster.
fn refuse_identity(shared: &Shared, connection: &quinn::Connection, reason: &str) {
    Counters::add(&shared.counters.refused_identity, 1);
    if let Some(suppressed) = REFUSALS_LOGGED.admit() {
        warn!(peer_addr = %connection.remote_address(), reason, suppressed, "peer identity refused; closing");
    }
    connection.close(close_codes::BAD_IDENTITY.into(), reason.as_bytes());
}

/// Runs the `Hello` exchange on the first bidirectional stream; false if the connection was
/// refused or broke (it is closed then).
async fn hello(shared: &Shared, connection: &quinn::Connection, peer: NodeId, deadline: Instant) -> bool {
    let config = &shared.config;
    let (mut send, mut recv) = match tokio::time::timeout_at(deadline, connection.accept_bi()).await {
        Ok(Ok(streams)) => streams,
        Ok(Err(error)) => {
            debug!(peer, %error, "connection closed before Hello");
            return false;
        }
        Err(_) => {
            Counters::add(&shared.counters.timeouts, 1);
            if let Some(suppressed) = REFUSALS_LOGGED.admit() {
                warn!(peer, suppressed, "no Hello in time; closing");
            }
            connection.close(close_codes::PROTOCOL.into(), b"handshake timeout");
            return false;
        }
    };
    let policy =
        AcceptPolicy { cluster_id: &config.cluster_id, node_id: config.node_id, certified: Some(peer) };
    let accepted = accept_hello(&mut recv, &mut send, policy, |id| shared.peers.contains(id), deadline).await;
    let _ = send.finish();
    let error = match accepted {
        Ok(_) => return true,
        Err(error) => error,
    };
    error.count(&shared.counters);
    match &error {
        AcceptHelloError::Refused(_) | AcceptHelloError::IdentityMismatch { .. } => {
            warn!(peer, %error, "handshake refused");
            // Give the Refused frame a moment to leave before the close overtakes it.
            let _ = tokio::time::timeout_at(deadline, send.stopped()).await;
            connection.close(close_codes::REFUSED.into(), error.to_string().as_bytes());
        }
        _ => {
            debug!(peer, %error, "handshake failed");
            connection.close(close_codes::PROTOCOL.into(), b"handshake failed");
        }
    }
    false
}

/// Reads frames from one unidirectional stream into the inbound queues until it ends; a bad
/// frame closes the whole connection (the peer broke the protocol).
async fn read_stream(
    mut stream: quinn::RecvStream,
    shared: Arc<Shared>,
    connection: quinn::Connection,
    peer: NodeId,
    inbox: InboxSenders,
) {
    let config = &shared.config;
    let mut messages = InboundPeer::new(peer, config.node_id, &shared.counters, &inbox);
    let end =
        messages.read_messages(&mut stream, config.max_frame_bytes, config.frame_timeout, None, None).await;
    match end {
        StreamEnd::Closed | StreamEnd::ShuttingDown => {}
        StreamEnd::Read(raft_transport_common::io::ReadError::Io(error)) => {
            debug!(peer, %error, "stream ended");
        }
        end => {
            warn!(peer, error = %end, "closing the connection");
            let _ = stream.stop(close_codes::PROTOCOL.into());
            connection.close(close_codes::PROTOCOL.into(), b"bad frame");
        }
    }
}
