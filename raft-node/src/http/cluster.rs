//! Cluster endpoints: status, leader, members (list, add, promote, remove), leadership
//! transfer, log view.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use axum::extract::{Path, Query, State};
use axum::Json;
use raft_client::api::{
    AddMemberRequest, ErrorCode, LeaderView, LogEntryView, LogView, MemberRole, MemberView, MembersView,
    RoleView, StatusView, TransferRequest,
};
use raft_core::{
    Entry, EntryPayload, Membership, MembershipChange, NodeId, ProposalRejection, ProtocolStatus, Role,
};
use raft_kv::{Command, Op};
use serde::Deserialize;

use super::kv::json_body;
use super::{AppState, HttpError};
use crate::node::Shared;

/// How long `add member` waits for a new voter to catch up, and for another membership change
/// in progress to end, before it answers with the error.
const CATCH_UP_FOR: Duration = Duration::from_secs(30);
/// Most log entries one log view returns.
const LOG_VIEW_MAX: u64 = 1_000;

fn members_of(shared: &Shared) -> MembersView {
    let status = shared.raft.status().protocol;
    let membership: &Membership = &status.membership;
    let book = shared.kv.member_addresses();
    let last = status.last_log_id.index;
    let members = membership
        .members()
        .into_iter()
        .map(|id| {
            let role = if membership.is_voter(id) { MemberRole::Voter } else { MemberRole::Learner };
            let progress = status.followers.iter().find(|f| f.id == id);
            let (next_index, match_index) = if id == status.id && status.role == Role::Leader {
                (Some(last + 1), Some(last))
            } else {
                (progress.map(|p| p.next_index), progress.map(|p| p.match_index))
            };
            MemberView {
                id,
                role,
                raft_addr: shared.raft_addr_of(id),
                client_addr: shared.client_addr_of(id),
                registered: book.iter().any(|m| m.id == id),
                next_index,
                match_index,
                lag: match_index.map(|m| last.saturating_sub(m)),
                last_contact_ms: if id == status.id && status.role == Role::Leader {
                    Some(0)
                } else {
                    progress.and_then(|p| p.last_contact_ago_ms)
                },
            }
        })
        .collect();
    MembersView { members, joint: membership.is_joint() }
}

/// `GET /v1/status`.
pub(crate) async fn status(State(shared): State<AppState>) -> Json<StatusView> {
    Json(status_view(&shared))
}

/// This node's status as `GET /v1/status` answers it.
pub(crate) fn status_view(shared: &Shared) -> StatusView {
    let node = shared.raft.status();
    let p = &node.protocol;
    let role = match p.role {
        Role::Leader => RoleView::Leader,
        Role::Candidate => RoleView::Candidate,
        Role::PreCandidate => RoleView::PreCandidate,
        Role::Follower if p.membership.contains(p.id) && !p.membership.is_voter(p.id) => RoleView::Learner,
        Role::Follower => RoleView::Follower,
    };
    let members = members_of(shared);
    let kv = shared.kv.stats();
    StatusView {
        cluster: shared.config.cluster.clone(),
        id: p.id,
        term: p.term,
        role,
        leader: p.leader,
        commit_index: p.commit_index,
        applied_index: shared.kv.applied_index(),
        last_log_index: p.last_log_id.index,
        last_log_term: p.last_log_id.term,
        snapshot_index: p.snapshot.index,
        state_hash: format!("{:016x}", shared.kv.state_hash()),
        keys: shared.kv.len() as u64,
        state_bytes: kv.state_bytes,
        joint: members.joint,
        members: members.members,
        leadership_transfer: p.leadership_transfer,
        fatal: node.fatal.clone(),
        peer_security: shared.config.peer_security(),
        warnings: shared.config.warnings(),
        recovering_to_index: p.recovering_to.map(|l| l.index),
        starting: None,
        quota_bytes: kv.quota_bytes,
        no_space: kv.no_space,
        activity: Some(shared.metrics.activity()),
        leader_changes: shared.leader_changes.list(),
    }
}

/// `GET /v1/leader`.
pub(crate) async fn leader(State(shared): State<AppState>) -> Json<LeaderView> {
    Json(shared.leader_view())
}

/// `GET /v1/members`.
pub(crate) async fn members(State(shared): State<AppState>) -> Json<MembersView> {
    Json(members_of(&shared))
}

fn require_leader(shared: &Shared) -> Result<(), HttpError> {
    if shared.is_leader() {
        Ok(())
    } else {
        Err(shared.not_leader())
    }
}

async fn with_timeout<T>(
    shared: &Shared,
    what: &str,
    f: impl std::future::Future<Output = Result<T, raft_core::RaftError>>,
) -> Result<T, HttpError> {
    match tokio::time::timeout(shared.request_timeout(), f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(shared.raft_error(e)),
        Err(_) => Err(HttpError::timeout(what)),
    }
}

fn parse_addr(what: &str, addr: &str) -> Result<SocketAddr, HttpError> {
    addr.parse()
        .map_err(|e| HttpError::bad_request(format!("{what} {addr:?} is not an ip:port address: {e}")))
}

/// `POST /v1/members`: records the new member's addresses in the replicated address book,
/// adds it as a learner, and for a voter waits until it has caught up and promotes it. A
/// membership change in progress (another node joining) is waited for. Idempotent: asking
/// again for a member that is already there answers the membership (a voter asked for as a
/// learner stays a voter).
pub(crate) async fn add_member(
    State(shared): State<AppState>,
    query: ForceParam,
    body: Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Json<MembersView>, HttpError> {
    let Query(ForceQuery { force }) = query.map_err(|e| HttpError::bad_request(e.body_text()))?;
    let request = json_body::<AddMemberRequest>(body)?;
    if request.id == 0 {
        return Err(HttpError::bad_request("node id 0 is reserved"));
    }
    parse_addr("raft_addr", &request.raft_addr)?;
    parse_addr("client_addr", &request.client_addr)?;
    require_leader(&shared)?;

    let book = shared.kv.member_addresses();
    let known = book.iter().find(|m| m.id == request.id);
    // The addresses in force: the book's, else the static config's.
    let current = (shared.raft_addr_of(request.id), shared.client_addr_of(request.id));
    let moved = current != (Some(request.raft_addr.clone()), Some(request.client_addr.clone()));
    if moved && shared.raft.membership().contains(request.id) && !force {
        // Pointing members at wrong addresses cuts them off for good (the fix would need a
        // commit): a member's addresses change when the node itself reports new ones.
        return Err(HttpError::new(
            ErrorCode::Conflict,
            format!(
                "node {} is a member with other addresses; restart it with the new ones (it reports them itself), or add ?force=true",
                request.id
            ),
        ));
    }
    if known.map(|m| (&m.raft_addr, &m.client_addr)) != Some((&request.raft_addr, &request.client_addr)) {
        let op = Op::SetMemberAddress {
            id: request.id,
            raft_addr: request.raft_addr.clone(),
            client_addr: request.client_addr.clone(),
        };
        with_timeout(
            &shared,
            "recording the member's addresses",
            shared.raft.propose(Command::new(op).encode()),
        )
        .await?;
    }
    // One change at a time: a change in progress (another node joining, say) is waited for,
    // not answered with a conflict that would leave a joining node a learner for good. Only a
    // committed membership that is not joint shows this node where it was asked to be: one
    // that is not committed yet is lost if the leader is.
    let deadline = Instant::now() + CATCH_UP_FOR;
    let id = request.id;
    let member = |m: &Membership| m.contains(id);
    while !settled_as(&shared, member) {
        if propose_change(&shared, deadline, member, shared.raft.add_learner(id)).await? {
            tracing::info!(member = id, "added a learner");
            break;
        }
    }
    if request.role == MemberRole::Voter {
        let voter = |m: &Membership| m.is_voter(id);
        while !settled_as(&shared, voter) {
            if !shared.raft.membership().is_voter(id) {
                wait_caught_up(&shared, id, deadline).await?;
            }
            // The leader checks again against its commit index of now, which may have moved on.
            if propose_change(&shared, deadline, voter, shared.raft.promote_learner(id)).await? {
                tracing::info!(member = id, "promoted a learner to voter");
                break;
            }
        }
    }
    Ok(Json(members_of(&shared)))
}

/// Whether the membership in force is committed, not joint, and as `asked` wants it: then it
/// holds whatever becomes of this leader.
fn settled_as(shared: &Shared, asked: impl Fn(&Membership) -> bool) -> bool {
    let status = shared.raft.status().protocol;
    settled(&status) && asked(&status.membership)
}

/// Whether the membership in force is committed and not joint.
fn settled(status: &ProtocolStatus) -> bool {
    !status.membership.is_joint() && status.membership_index <= status.commit_index
}

/// Proposes one membership change: `true` once it is committed, `false` when the caller should
/// look again and maybe ask again. A refusal that passes by itself (another change in progress,
/// as when two nodes join at once; a new voter not caught up yet; too few voters answering for
/// a moment) is waited for until `deadline`. The leader refuses an invalid change only while
/// no other change is in progress: when the membership is already as `asked` wants, the
/// caller sees it settled; otherwise the refusal is the answer.
async fn propose_change(
    shared: &Shared,
    deadline: Instant,
    asked: impl Fn(&Membership) -> bool,
    change: impl std::future::Future<Output = Result<Membership, raft_core::RaftError>>,
) -> Result<bool, HttpError> {
    use raft_core::RaftError::Rejected;
    let pause = || tokio::time::sleep(Duration::from_millis(50));
    let waiting = Instant::now() < deadline;
    match tokio::time::timeout(shared.request_timeout(), change).await {
        Ok(Ok(_)) => Ok(true),
        Ok(Err(e @ Rejected(ProposalRejection::InvalidMembershipChange(_)))) => {
            let status = shared.raft.status().protocol;
            if settled(&status) && asked(&status.membership) {
                Ok(false)
            } else if settled(&status) {
                Err(shared.raft_error(e))
            } else if waiting {
                // Another change began since the refusal (the status is never older than it).
                pause().await;
                Ok(false)
            } else {
                Err(HttpError::new(
                    ErrorCode::Timeout,
                    format!("other membership changes went on for {} s; ask again", CATCH_UP_FOR.as_secs()),
                ))
            }
        }
        Ok(Err(Rejected(
            ProposalRejection::MembershipChangeInProgress
            | ProposalRejection::NotCaughtUp { .. }
            | ProposalRejection::NoLiveQuorum { .. },
        ))) if waiting => {
            pause().await;
            Ok(false)
        }
        Ok(Err(Rejected(
            r @ (ProposalRejection::MembershipChangeInProgress | ProposalRejection::NoLiveQuorum { .. }),
        ))) => Err(HttpError::new(
            ErrorCode::Timeout,
            format!("{r} (waited {} s); ask again", CATCH_UP_FOR.as_secs()),
        )),
        Ok(Err(e)) => Err(shared.raft_error(e)),
        Err(_) => Err(HttpError::timeout("the membership change")),
    }
}

/// Waits until `id`'s match index reaches the leader's commit index as it was when the wait
/// began (so a new voter does not stall commits while it catches up), until `deadline`.
async fn wait_caught_up(shared: &Shared, id: NodeId, deadline: Instant) -> Result<(), HttpError> {
    let target = shared.raft.status().protocol.commit_index;
    // The answer that the learner was added may come before the status shows it (the status
    // is published at the end of the driver's turn): the learner counts as removed only once
    // the status has shown it as a member (found by CI: a false "removed" conflict).
    let mut seen = false;
    loop {
        let status = shared.raft.status().protocol;
        seen |= status.membership.contains(id);
        if status.role != Role::Leader {
            return Err(shared.not_leader());
        }
        if status.followers.iter().any(|f| f.id == id && f.match_index >= target) {
            return Ok(());
        }
        if seen && settled(&status) && !status.membership.contains(id) {
            return Err(HttpError::new(
                ErrorCode::Conflict,
                format!("node {id} was removed while it was being added"),
            ));
        }
        if Instant::now() >= deadline {
            return Err(HttpError::new(
                ErrorCode::Timeout,
                format!(
                    "node {id} was added as a learner but has not caught up yet; ask again to promote it"
                ),
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `?force=true` on a membership change: skip the checks that new voters have caught up and
/// that a majority of the new voters answer the leader.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ForceQuery {
    #[serde(default)]
    force: bool,
}

type ForceParam = Result<Query<ForceQuery>, axum::extract::rejection::QueryRejection>;

/// Proposes `change`, with the operator-safety checks unless `force`.
async fn change_membership(
    shared: &Shared,
    change: MembershipChange,
    force: bool,
) -> Result<Membership, raft_core::RaftError> {
    if force {
        shared.raft.force_membership_change(change).await
    } else {
        shared.raft.change_membership(change).await
    }
}

/// `POST /v1/members/{id}/promote?force=`.
pub(crate) async fn promote_member(
    State(shared): State<AppState>,
    Path(id): Path<u64>,
    query: ForceParam,
) -> Result<Json<MembersView>, HttpError> {
    let Query(ForceQuery { force }) = query.map_err(|e| HttpError::bad_request(e.body_text()))?;
    require_leader(&shared)?;
    let membership = shared.raft.membership();
    if !membership.contains(id) {
        return Err(HttpError::not_found(format!("node {id} is not a member")));
    }
    if !membership.is_voter(id) {
        let call = change_membership(&shared, MembershipChange::PromoteLearner(id), force);
        with_timeout(&shared, "promoting the learner", call).await?;
        tracing::info!(member = id, force, "promoted a learner to voter");
    }
    Ok(Json(members_of(&shared)))
}

/// `DELETE /v1/members/{id}?force=`: removes the member, then its address book entry.
pub(crate) async fn remove_member(
    State(shared): State<AppState>,
    Path(id): Path<u64>,
    query: ForceParam,
) -> Result<Json<MembersView>, HttpError> {
    let Query(ForceQuery { force }) = query.map_err(|e| HttpError::bad_request(e.body_text()))?;
    require_leader(&shared)?;
    if !shared.raft.membership().contains(id) {
        return Err(HttpError::not_found(format!("node {id} is not a member")));
    }
    let call = change_membership(&shared, MembershipChange::RemoveNode(id), force);
    with_timeout(&shared, "removing the member", call).await?;
    tracing::info!(member = id, force, "removed a member");
    if shared.is_leader() {
        let op = Op::RemoveMemberAddress { id };
        if let Err(e) =
            with_timeout(&shared, "forgetting the address", shared.raft.propose(Command::new(op).encode()))
                .await
        {
            tracing::warn!(member = id, error = ?e.body, "the member is removed but its address book entry is not");
        }
    }
    Ok(Json(members_of(&shared)))
}

/// `POST /v1/transfer-leader`.
pub(crate) async fn transfer_leader(
    State(shared): State<AppState>,
    body: Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Json<LeaderView>, HttpError> {
    let request = json_body::<TransferRequest>(body)?;
    let status = shared.raft.status().protocol;
    if request.to == Some(status.id) && status.role == Role::Leader {
        return Ok(Json(shared.leader_view()));
    }
    require_leader(&shared)?;
    if let Some(to) = request.to {
        if !status.membership.contains(to) {
            return Err(HttpError::not_found(format!("node {to} is not a member")));
        }
    }
    let new_leader =
        with_timeout(&shared, "the leadership transfer", shared.raft.transfer_leadership(request.to)).await?;
    Ok(Json(LeaderView {
        leader: Some(new_leader),
        client_addr: shared.client_addr_of(new_leader),
        term: shared.raft.status().protocol.term,
    }))
}

/// Query of `GET /v1/log`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct LogQuery {
    from: Option<u64>,
    limit: Option<u64>,
}

/// `GET /v1/log?from=&limit=`: stored entries with a readable summary. Without `from`, the
/// last `limit` (default 20) entries.
pub(crate) async fn log(
    State(shared): State<AppState>,
    query: Result<Query<LogQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<LogView>, HttpError> {
    let Query(query) = query.map_err(|e| HttpError::bad_request(e.body_text()))?;
    let limit = query.limit.unwrap_or(20).clamp(1, LOG_VIEW_MAX);
    let unavailable =
        |e: raft_core::StorageError| HttpError::new(ErrorCode::Unavailable, format!("reading the log: {e}"));
    let bounds = shared.storage.initial_state().await.map_err(unavailable)?;
    let (first, last) = (bounds.first_index, bounds.last_index);
    let from = query.from.unwrap_or_else(|| last.saturating_sub(limit - 1)).max(first);
    let to = from.saturating_add(limit).min(last + 1);
    let entries =
        if from < to { shared.storage.entries(from, to).await.map_err(unavailable)? } else { Vec::new() };
    let commit_index = shared.raft.status().protocol.commit_index;
    Ok(Json(LogView {
        entries: entries.iter().map(entry_view).collect(),
        first_index: first,
        last_index: last,
        commit_index,
    }))
}

fn entry_view(entry: &Entry) -> LogEntryView {
    let (kind, summary) = match &entry.payload {
        EntryPayload::Blank => ("blank", "leader's no-op".to_string()),
        EntryPayload::Membership(m) => {
            let ids = |s: &std::collections::BTreeSet<u64>| {
                s.iter().map(u64::to_string).collect::<Vec<_>>().join(",")
            };
            let mut text = format!("voters [{}]", ids(&m.voters));
            if m.is_joint() {
                text.push_str(&format!(" joint with [{}]", ids(&m.outgoing_voters)));
            }
            if !m.learners.is_empty() {
                text.push_str(&format!(" learners [{}]", ids(&m.learners)));
            }
            ("membership", text)
        }
        EntryPayload::Command(bytes) => ("command", command_summary(bytes)),
    };
    LogEntryView { index: entry.index, term: entry.term, kind: kind.to_string(), summary }
}

fn command_summary(bytes: &[u8]) -> String {
    let Ok(command) = Command::decode(bytes) else {
        return format!("undecodable command ({} bytes)", bytes.len());
    };
    let op = match &command.op {
        Op::Put { key, value } => format!("put {key:?} ({} bytes)", value.len()),
        Op::Delete { key } => format!("delete {key:?}"),
        Op::Cas { key, value, .. } => match value {
            Some(v) => format!("cas {key:?} ({} bytes)", v.len()),
            None => format!("cas-delete {key:?}"),
        },
        Op::RegisterService(s) => format!("register service {:?} ({} nodes)", s.name, s.nodes.len()),
        Op::RemoveService { name } => format!("remove service {name:?}"),
        Op::SetServiceNodeDown { service, node, down } => {
            format!("mark {service:?}/{node:?} {}", if *down { "down" } else { "up" })
        }
        Op::SetMemberAddress { id, raft_addr, client_addr } => {
            format!("member {id} at raft {raft_addr}, client {client_addr}")
        }
        Op::RemoveMemberAddress { id } => format!("forget member {id}'s addresses"),
    };
    match command.session {
        Some(s) => format!("{op} [client {} seq {}]", s.client_id, s.seq),
        None => op,
    }
}
