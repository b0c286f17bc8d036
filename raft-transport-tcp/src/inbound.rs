//! The accept loop and one task per inbound connection: handshake, then frames into the
//! inbound queues.

use std::net::SocketAddr;
use std::sync::Arc;

use raft_core::wire::WireMessage;
use raft_core::NodeId;
use raft_transport_common::admission::{Admission, Handshake};
use raft_transport_common::handshake::{accept_hello, AcceptHelloError, AcceptPolicy};
use raft_transport_common::inbox::{InboundPeer, InboxSenders, StreamEnd};
use raft_transport_common::io::write_frame;
use raft_transport_common::peers::Superseded;
use raft_transport_common::{Counters, REFUSALS_LOGGED};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tracing::{debug, info, warn, Instrument};

use crate::tls::{BoxStream, TlsAcceptError};
use crate::Shared;

/// Accepts connections until the task is aborted; dropping it aborts every connection task.
pub(crate) async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, inbox: InboxSenders) {
    let admission = Admission::new(shared.config.max_inbound_connections);
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
        // A peer restarting behind its known address gets in however many strangers connect.
        let Some(handshake) = admission.admit_connection(addr, &shared.peers, &shared.counters) else {
            drop(stream);
            continue;
        };
        let shared = shared.clone();
        let inbox = inbox.clone();
        let span = tracing::debug_span!("inbound", peer_addr = %addr);
        connections.spawn(serve(stream, addr, shared, inbox, handshake).instrument(span));
    }
}

/// Runs one inbound connection to its end.
async fn serve(
    stream: TcpStream,
    addr: SocketAddr,
    shared: Arc<Shared>,
    inbox: InboxSenders,
    handshake: Handshake,
) {
    let (shared, inbox) = (&*shared, &inbox);
    let config = &shared.config;
    let counters = &shared.counters;
    if let Err(error) =
        stream.set_nodelay(true).and_then(|()| crate::set_keepalive(&stream, config.keep_alive))
    {
        debug!(%error, "setting socket options failed");
    }
    let deadline = Instant::now() + config.handshake_timeout;
    let (stream, certified): (BoxStream, Option<NodeId>) = match &shared.tls {
        None => (Box::new(stream), None),
        Some(tls) => match tokio::time::timeout_at(deadline, tls.accept(stream, &config.cluster_id)).await {
            Ok(Ok((stream, peer))) if shared.peers.contains(peer) => (stream, Some(peer)),
            Ok(Ok((mut stream, peer))) => {
                Counters::add(&counters.refused_identity, 1);
                if let Some(suppressed) = REFUSALS_LOGGED.admit() {
                    warn!(peer_addr = %addr, peer, suppressed, "certificate of a node that is not a peer; closing");
                }
                let _ = tokio::time::timeout_at(deadline, stream.shutdown()).await;
                return;
            }
            Ok(Err(error @ TlsAcceptError::Identity(_))) => {
                Counters::add(&counters.refused_identity, 1);
                if let Some(suppressed) = REFUSALS_LOGGED.admit() {
                    warn!(peer_addr = %addr, %error, suppressed, "peer identity refused; closing");
                }
                return;
            }
            Ok(Err(error)) => return counters.tls_refused(addr, Some(&error)),
            Err(_) => return counters.tls_refused(addr, None),
        },
    };
    let (mut reader, mut writer) = tokio::io::split(stream);
    let policy = AcceptPolicy { cluster_id: &config.cluster_id, node_id: config.node_id, certified };
    let accepted =
        accept_hello(&mut reader, &mut writer, policy, |id| shared.peers.contains(id), deadline).await;
    let peer = match accepted {
        Ok(peer) => peer,
        Err(error) => {
            error.count(counters);
            match error {
                AcceptHelloError::Refused(_)
                | AcceptHelloError::IdentityMismatch { .. }
                | AcceptHelloError::NotHello(_) => {
                    if let Some(suppressed) = REFUSALS_LOGGED.admit() {
                        warn!(peer_addr = %addr, %error, suppressed, "handshake refused; closing")
                    }
                }
                _ => debug!(peer_addr = %addr, %error, "handshake failed"),
            }
            let _ = tokio::time::timeout_at(deadline, writer.shutdown()).await;
            return;
        }
    };
    // A newer connection from the same node supersedes this one: a peer that restarted
    // behind a half-open connection must not leave it holding a connection slot forever.
    // Registered first, so that the older connection gives its slot up for this one.
    let Some(mut registration) = shared.peers.register_inbound(peer) else {
        return; // removed meanwhile
    };
    let Some(_link) = handshake.establish_by(deadline).await else {
        Counters::add(&counters.rejected_connections, 1);
        if let Some(suppressed) = REFUSALS_LOGGED.admit() {
            let limit = config.max_inbound_connections;
            warn!(peer_addr = %addr, peer, limit, suppressed, "established-connection limit reached; closing");
        }
        let _ = tokio::time::timeout_at(deadline, writer.shutdown()).await;
        return;
    };
    debug!(peer, generation = registration.generation(), "inbound connection established");
    let mut messages = InboundPeer::new(peer, config.node_id, counters, inbox);
    // Keep-alives are answered by a concurrent writer of the latest one's number.
    let (keep_alive_tx, mut keep_alive_rx) = watch::channel(0u64);
    let mut on_keep_alive = |seq| {
        keep_alive_tx.send_replace(seq);
    };
    let answers = async {
        while keep_alive_rx.changed().await.is_ok() {
            let ack = WireMessage::KeepAliveAck { seq: *keep_alive_rx.borrow_and_update() };
            match tokio::time::timeout(config.write_timeout, write_frame(&mut writer, &ack, u32::MAX)).await {
                Ok(Ok(())) => {}
                Ok(Err(error)) => return error.to_string(),
                Err(_) => return "timed out".to_owned(),
            }
        }
        "closed".to_owned()
    };
    let idle_timeout = Some(config.idle_timeout);
    let end = tokio::select! {
        end = messages.read_messages(&mut reader, config.max_frame_bytes, config.frame_timeout, idle_timeout, Some(&mut on_keep_alive)) => end,
        error = answers => {
            debug!(peer, %error, "answering a keep-alive failed; closing");
            return;
        }
        why = registration.superseded() => {
            match why {
                Superseded::ByNewerConnection => info!(peer, "a newer connection from the same node replaces this one; closing"),
                Superseded::PeerRemoved => info!(peer, "peer removed; closing its connection"),
            }
            return;
        }
    };
    match end {
        StreamEnd::Closed => debug!(peer, "peer closed the connection"),
        StreamEnd::ShuttingDown => {}
        end => warn!(peer, error = %end, "closing inbound connection"),
    }
}
