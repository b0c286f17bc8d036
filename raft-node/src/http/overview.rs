//! `GET /v1/cluster`: every member's status, gathered by the node asked (for the cluster page
//! and `ctl`): the browser talks to one node only, never across origins.
//!
//! The members are asked with the caller's own token, never the node's: whatever answers at
//! a member's address (a member that is down leaves its port to anyone on its host) learns
//! nothing the caller did not hold. Their answers are not authenticated, so the leader shown
//! is one a majority of the voters agree on, else this node's own view. One gathering at a
//! time, and its result serves every caller for [`VIEW_REUSE`]: callers cannot multiply the
//! questions to the members.

use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::HeaderMap;
use axum::Json;
use raft_client::api::{ClusterMemberView, ClusterView, MemberRole, StatusView};
use raft_client::{Client, ClientOptions, Endpoint};

use super::cluster::status_view;
use super::AppState;
use crate::node::Shared;

/// How long the serving node waits for each member's status.
pub(crate) const MEMBER_STATUS_TIMEOUT: Duration = Duration::from_millis(1_000);
/// How long a gathered view answers later callers.
pub(crate) const VIEW_REUSE: Duration = Duration::from_millis(900);

/// The last view gathered, and when; the lock also makes gatherings one at a time.
pub(crate) type CachedView = tokio::sync::Mutex<Option<(Instant, ClusterView)>>;

/// `GET /v1/cluster`. The other members are asked at once, each within
/// [`MEMBER_STATUS_TIMEOUT`]; one that does not answer is listed with the reason.
pub(crate) async fn cluster(State(shared): State<AppState>, headers: HeaderMap) -> Json<ClusterView> {
    let mut cached = shared.cluster_view.lock().await;
    if let Some((at, view)) = cached.as_ref() {
        if at.elapsed() < VIEW_REUSE {
            return Json(view.clone());
        }
    }
    let token = super::auth::bearer_token(&headers).map(str::to_owned);
    let view = gather(&shared, token).await;
    *cached = Some((Instant::now(), view.clone()));
    Json(view)
}

async fn gather(shared: &Shared, token: Option<String>) -> ClusterView {
    let own = status_view(shared);
    let others: Vec<_> = own.members.iter().filter(|m| m.id != own.id).cloned().collect();
    let addresses: Vec<String> = others.iter().filter_map(|m| m.client_addr.clone()).collect();
    let client = if addresses.is_empty() {
        None
    } else {
        // The caller's token, this node's TLS (its CA, and its certificate where the members
        // require one).
        let options = shared.member_client_options(MEMBER_STATUS_TIMEOUT, 0).map_err(|e| {
            tracing::warn!(error = %e, "this node's TLS material for calling the members is unusable");
            raft_client::ClientError::InvalidOptions(
                "this node's TLS material for calling the members is unusable",
            )
        });
        Some(options.and_then(|options| Client::new(addresses, ClientOptions { token, ..options })))
    };
    let asks = others.iter().map(|member| {
        let client = &client;
        async move {
            let started = Instant::now();
            let answer: Result<StatusView, String> = match (&member.client_addr, client) {
                (None, _) => Err("its HTTP address is unknown".into()),
                (Some(_), Some(Err(e))) => Err(format!("no client: {e}")),
                (Some(addr), Some(Ok(client))) => match Endpoint::parse_as(addr, client.scheme()) {
                    Ok(endpoint) => client.status_of(&endpoint).await.map_err(|e| e.to_string()),
                    Err(e) => Err(e.to_string()),
                },
                (Some(_), None) => Err("no client".into()),
            };
            let answer = answer.and_then(|status| {
                if status.id == member.id {
                    Ok(status)
                } else {
                    Err(format!("node {} answered at this address", status.id))
                }
            });
            let elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
            let (status, error) = match answer {
                Ok(status) => (Some(status), None),
                Err(error) => (None, Some(error)),
            };
            ClusterMemberView {
                id: member.id,
                role: member.role,
                client_addr: member.client_addr.clone(),
                status,
                error,
                elapsed_ms,
            }
        }
    });
    let mut members = futures_util::future::join_all(asks).await;
    if let Some(me) = own.members.iter().find(|m| m.id == own.id) {
        members.push(ClusterMemberView {
            id: own.id,
            role: me.role,
            client_addr: me.client_addr.clone(),
            status: Some(own.clone()),
            error: None,
            elapsed_ms: 0,
        });
    }
    members.sort_by_key(|m| m.id);
    let leader = agreed_leader(&own, &members);
    ClusterView { served_by: own.id, at_unix_ms: crate::recent::unix_ms(), leader, members }
}

/// The leader of the highest term a majority of the voters (of this node's configuration)
/// report the same leader in; else this node's own leader. One answer, true or forged,
/// cannot pick it.
fn agreed_leader(own: &StatusView, members: &[ClusterMemberView]) -> Option<u64> {
    let voters: Vec<u64> = own.members.iter().filter(|m| m.role == MemberRole::Voter).map(|m| m.id).collect();
    let quorum = voters.len() / 2 + 1;
    let reports: Vec<(u64, u64)> = members
        .iter()
        .filter(|m| voters.contains(&m.id))
        .filter_map(|m| m.status.as_ref())
        .filter(|s| voters.contains(&s.id))
        .filter_map(|s| s.leader.map(|leader| (s.term, leader)))
        .collect();
    reports
        .iter()
        .filter(|report| reports.iter().filter(|other| other == report).count() >= quorum)
        .max()
        .map(|&(_, leader)| leader)
        .or(own.leader)
}
