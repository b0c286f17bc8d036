//! Background tasks that keep a node's view of its peers current.
//!
//! The replicated address book (`SetMemberAddress` commands in `raft-kv`) is how a node that
//! joins a running cluster becomes reachable: every node feeds the book into its transport.
//! Each node also writes its own addresses into the book once a leader is known, which is how
//! the cluster later recognizes a member that lost its data.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

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
///
/// A node that restarted at other addresses (a rescheduled pod) may never hear a leader: the
/// others still send to its old addresses. Once a member has heard none for
/// [`UNHEARD_BEFORE_REPORTING`] (doubling after each report, up to a minute) and its book does
/// not show its addresses, it reports them through the other members' client APIs
/// (`POST /v1/members?force=true`, with its own token); the leader records them if they
/// changed and reaches it there.
pub(super) async fn register_own_addresses(shared: Arc<Shared>) {
    let c = &shared.config;
    let own = (c.advertised_raft_addr().to_string(), c.client_addr.to_string());
    let mut delay = POLL;
    let mut leaderless_since: Option<Instant> = None;
    let mut report_after = UNHEARD_BEFORE_REPORTING;
    loop {
        let book = shared.kv.member_addresses();
        let registered =
            book.iter().any(|m| m.id == c.id && (m.raft_addr.clone(), m.client_addr.clone()) == own);
        let status = shared.raft.status();
        let has_leader = status.protocol.leader.is_some() || status.protocol.role == Role::Leader;
        let member = status.protocol.membership.contains(c.id);
        if has_leader {
            leaderless_since = None;
            report_after = UNHEARD_BEFORE_REPORTING;
        } else if leaderless_since.is_none() {
            leaderless_since = Some(Instant::now());
        }
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
        // Not known at these addresses as far as this node knows: a restarted node has applied
        // nothing yet (its commit index comes from the leader), so its book may be empty.
        let moved = !registered;
        let unheard = leaderless_since.is_some_and(|since| since.elapsed() >= report_after);
        if moved && unheard && member {
            let voter = status.protocol.membership.is_voter(c.id);
            match report_moved(&shared, &own, voter).await {
                Ok(()) => {
                    tracing::info!(raft_addr = %own.0, client_addr = %own.1, "no leader reached this node: reported its addresses through the other members' API");
                    // Reported again, less often, until a leader is heard (the addresses may
                    // have been right: the silence has another cause).
                    leaderless_since = Some(Instant::now());
                    report_after = (report_after * 2).min(Duration::from_secs(60));
                }
                Err(e) => {
                    tracing::warn!(error = %e, retry_in_s = report_after.as_secs() * 2, "no leader reaches this node, and reporting its addresses through the other members' API failed");
                    leaderless_since = Some(Instant::now());
                    report_after = (report_after * 2).min(Duration::from_secs(60));
                }
            }
        }
        tokio::time::sleep(delay).await;
    }
}

/// How long a node that moved waits for a leader before it reports its new addresses itself.
const UNHEARD_BEFORE_REPORTING: Duration = Duration::from_secs(3);

/// Asks the other members (their addresses from the config and the book) to record this
/// node's new addresses.
async fn report_moved(shared: &Shared, own: &(String, String), voter: bool) -> Result<(), String> {
    let c = &shared.config;
    let mut endpoints: Vec<String> = c.peers().map(|m| m.client_addr.to_string()).collect();
    for m in shared.kv.member_addresses() {
        if m.id != c.id && !endpoints.contains(&m.client_addr) {
            endpoints.push(m.client_addr);
        }
    }
    let options = shared.member_client_options(Duration::from_secs(2), 3)?;
    let client = raft_client::Client::new(endpoints, options).map_err(|e| e.to_string())?;
    let request = raft_client::api::AddMemberRequest {
        id: c.id,
        raft_addr: own.0.clone(),
        client_addr: own.1.clone(),
        role: if voter { raft_client::api::MemberRole::Voter } else { raft_client::api::MemberRole::Learner },
    };
    client.add_member_with_force(&request, true).await.map(|_| ()).map_err(|e| e.to_string())
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

/// Notes every change of term or leader the driver publishes (for `/v1/status` and the
/// cluster page).
pub(super) async fn track_leader_changes(shared: Arc<Shared>) {
    let mut view = shared.raft.watch_leader();
    loop {
        let seen = *view.borrow_and_update();
        shared.leader_changes.observe(seen.term, seen.leader);
        if view.changed().await.is_err() {
            return;
        }
    }
}
