//! Background tasks that keep a node's view of its peers current.
//!
//! The replicated address book (`SetMemberAddress` commands in `raft-kv`) is how a node that
//! joins a running cluster becomes reachable: every node feeds the book into its transport.
//! Each node also writes its own addresses into the book once a leader is known, which is how
//! the cluster later recognizes a member that lost its data.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use raft_core::{NodeId, Role};
use raft_kv::{Command, Op};

use super::Shared;

/// How often the address book and the snapshot are looked at.
const POLL: Duration = Duration::from_millis(250);

/// Applies address-book changes to the transport: new and moved members are set, members
/// removed from the book are removed (unless they are still in the static config).
pub(super) async fn sync_transport_peers(shared: Arc<Shared>, initial: BTreeMap<NodeId, SocketAddr>) {
    let own = shared.config.id;
    let static_peers: BTreeMap<NodeId, SocketAddr> =
        shared.config.peers().map(|m| (m.id, m.raft_addr)).collect();
    let mut known = initial;
    loop {
        let mut wanted = static_peers.clone();
        for m in shared.kv.member_addresses() {
            if m.id == own {
                continue;
            }
            match m.raft_addr.parse::<SocketAddr>() {
                Ok(addr) => {
                    wanted.insert(m.id, addr);
                }
                Err(e) => {
                    tracing::warn!(peer = m.id, addr = %m.raft_addr, error = %e, "ignoring a bad address in the address book")
                }
            }
        }
        for (&id, &addr) in &wanted {
            if known.get(&id) != Some(&addr) {
                match shared.transport.set_peer(id, addr) {
                    Ok(()) => {
                        tracing::info!(peer = id, %addr, "peer address set");
                        known.insert(id, addr);
                    }
                    Err(e) => tracing::warn!(peer = id, %addr, error = %e, "cannot set the peer's address"),
                }
            }
        }
        let gone: Vec<NodeId> = known.keys().filter(|id| !wanted.contains_key(id)).copied().collect();
        for id in gone {
            // A member still in the membership keeps its address (the book entry may be
            // removed before the member is).
            if shared.raft.membership().contains(id) {
                continue;
            }
            if let Err(e) = shared.transport.remove_peer(id) {
                tracing::debug!(peer = id, error = %e, "removing the peer");
            }
            known.remove(&id);
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Writes this node's addresses into the replicated address book (forwarded to the leader),
/// once, and again whenever the book disagrees with the config.
pub(super) async fn register_own_addresses(shared: Arc<Shared>) {
    let c = &shared.config;
    let own = (c.advertised_raft_addr().to_string(), c.client_addr.to_string());
    let mut delay = POLL;
    loop {
        let registered = shared
            .kv
            .member_addresses()
            .into_iter()
            .any(|m| m.id == c.id && (m.raft_addr.clone(), m.client_addr.clone()) == own);
        let status = shared.raft.status();
        let has_leader = status.protocol.leader.is_some() || status.protocol.role == Role::Leader;
        let member = status.protocol.membership.contains(c.id);
        if !registered && has_leader && member {
            let op = Op::SetMemberAddress { id: c.id, raft_addr: own.0.clone(), client_addr: own.1.clone() };
            match shared.raft.propose(Command::new(op).encode()).await {
                Ok(_) => tracing::info!("registered this node's addresses in the address book"),
                Err(e) => {
                    tracing::debug!(error = %e, "registering this node's addresses; will retry");
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        }
        tokio::time::sleep(delay).await;
    }
}

/// Keeps the snapshot metrics current (count and size of the latest snapshot).
pub(super) async fn track_snapshots(shared: Arc<Shared>) {
    let mut last_index = 0;
    let mut taken = 0;
    loop {
        let status = shared.raft.status().protocol;
        if status.snapshot.index != last_index {
            last_index = status.snapshot.index;
            taken += 1;
            shared.metrics.set_snapshot(status.snapshot_bytes, taken);
        }
        tokio::time::sleep(POLL * 4).await;
    }
}
