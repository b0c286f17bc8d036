//! The HTTP/JSON API (axum), version 1. Paths and bodies are [`raft_client::api`]'s.
//!
//! - `kv.rs`: get, put, delete, compare-and-swap, list by prefix;
//! - `cluster.rs`: status, leader, members, leadership transfer, log view;
//! - `services.rs`: the service registry and `balance`;
//! - `watch.rs`: the commit stream as server-sent events;
//! - `ops.rs`: `/health`, `/ready`, `/metrics`;
//! - `overview.rs`: `/v1/cluster`, every member's status gathered by the node asked;
//! - `ui.rs`: the cluster page (`/ui`), static files embedded in the binary;
//! - `snapshot.rs`: the latest snapshot as a download, for backups;
//! - `error.rs`: errors as JSON with stable codes;
//! - `auth.rs`: bearer tokens with roles (`[auth]`), checked before anything else.
//!
//! Writes run through [`write`]: the session headers, the request timeout, forwarding or a
//! redirect to the leader, the mapping of the state machine's answer. Reads run through
//! [`read_barrier`]: ReadIndex (or the lease, or nothing for `local`), then wait until the
//! state machine has applied that index.

mod auth;
mod cluster;
mod error;
mod kv;
mod ops;
mod overview;
mod parse_errors;
mod server;
mod services;
mod snapshot;
mod ui;
mod watch;
mod watch_threads;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::HeaderMap;
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use raft_client::api::{Consistency, ErrorCode, LeaderView, CLIENT_ID_HEADER, SEQ_HEADER};
use raft_core::{Applied, ReadMode, Role};
use raft_kv::{Command, InvalidCommand, Op, Response as KvResponse, Session};
use tokio::sync::Semaphore;

use crate::node::Shared;
pub(crate) use auth::Auth;
pub use auth::{hash_token, new_token};
pub(crate) use error::HttpError;
pub(crate) use overview::CachedView;
pub(crate) use server::{connection_cap, open_file_limit, serve, ApiTls, ServerLimits};
pub(crate) use snapshot::SNAPSHOT_DOWNLOADS_MAX;
pub(crate) use watch::EncodedEvents;

type AppState = Arc<Shared>;

/// The API's routes over a node's shared state.
pub(crate) fn router(shared: Arc<Shared>) -> Router {
    let limit = Arc::new(Slots {
        semaphore: shared.request_slots.clone(),
        wait: Duration::from_millis(shared.config.limits.slot_wait_ms),
        body_read: Duration::from_millis(shared.config.limits.body_read_timeout_ms),
        body_limit: shared.config.limits.max_body_bytes,
    });
    let body_limit = shared.config.limits.max_body_bytes;
    let api = Router::new()
        .route("/v1/kv", get(kv::list))
        .route("/v1/kv/{*key}", get(kv::get).put(kv::put).delete(kv::delete))
        .route("/v1/cas/{*key}", post(kv::cas))
        .route("/v1/status", get(cluster::status))
        .route("/v1/cluster", get(overview::cluster))
        .route("/v1/leader", get(cluster::leader))
        .route("/v1/members", get(cluster::members).post(cluster::add_member))
        .route("/v1/members/{id}", axum::routing::delete(cluster::remove_member))
        .route("/v1/members/{id}/promote", post(cluster::promote_member))
        .route("/v1/transfer-leader", post(cluster::transfer_leader))
        .route("/v1/log", get(cluster::log))
        .route("/v1/snapshot", get(snapshot::download))
        .route("/v1/services", get(services::list))
        .route("/v1/services/{name}", get(services::get).put(services::register).delete(services::remove))
        .route("/v1/services/{name}/nodes/{node}/down", post(services::set_down))
        .route("/v1/balance/{name}", get(services::balance))
        .layer(middleware::from_fn_with_state(limit, limit_concurrency));
    let routes = Router::new()
        .merge(api)
        .route("/v1/watch", get(watch::watch))
        .route("/health", get(ops::health))
        .route("/ready", get(ops::ready))
        .route("/metrics", get(ops::metrics))
        .route("/", get(ui::root))
        .route("/ui", get(ui::index))
        .route("/ui/", get(ui::index))
        .route("/ui/app.js", get(ui::script))
        .route("/ui/style.css", get(ui::style))
        .fallback(|| async { HttpError::not_found("no such endpoint") })
        .layer(DefaultBodyLimit::max(body_limit));
    // Outside the request slots and the body read: an unauthenticated request costs neither.
    let routes = match &shared.auth {
        Some(auth) => routes.layer(middleware::from_fn_with_state(auth.clone(), auth::authorize)),
        None => routes,
    };
    routes.layer(middleware::from_fn(json_errors)).with_state(shared)
}

/// The routes a node answers before it starts: `GET /v1/status` with `view` (whose `starting`
/// says what it holds), `/health`; anything else is 503 `unavailable`. Behind the same
/// authentication as the API. Every answer closes its connection, so no later question is
/// answered from this server once the node runs.
pub(crate) fn starting_router(
    config: &crate::config::NodeConfig,
    view: raft_client::api::StatusView,
) -> Router {
    use axum::response::IntoResponse;
    let routes = Router::new()
        .route("/v1/status", get(move || std::future::ready(axum::Json(view.clone()))))
        .route("/health", get(|| std::future::ready("starting")))
        .fallback(|| async {
            HttpError::new(
                ErrorCode::Unavailable,
                "the node is starting: it is asking the other members about the cluster",
            )
            .into_response()
        });
    let routes = match &config.auth {
        Some(auth) => {
            routes.layer(middleware::from_fn_with_state(Arc::new(auth::Auth::new(auth)), auth::authorize))
        }
        None => routes,
    };
    routes.layer(middleware::from_fn(json_errors)).layer(middleware::map_response(
        |mut r: Response| async move {
            r.headers_mut()
                .insert(axum::http::header::CONNECTION, axum::http::HeaderValue::from_static("close"));
            r
        },
    ))
}

/// Longest body of a non-JSON error answer kept as the JSON error's message.
const PLAIN_ERROR_BYTES: usize = 1024;

/// Every error answer is JSON with a stable code: the framework's own refusals (405 for a
/// method the path does not take, 400/415/422 from path, query and body extractors, 413)
/// become an `ApiError` with the same status and their text as the message.
async fn json_errors(request: Request, next: Next) -> Response {
    use axum::response::IntoResponse;
    let response = next.run(request).await;
    let status = response.status();
    let is_json = response
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if status.as_u16() < 400 || is_json {
        return response;
    }
    let (parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, PLAIN_ERROR_BYTES).await.unwrap_or_default();
    let text = String::from_utf8_lossy(&text).trim().to_owned();
    let message =
        if text.is_empty() { status.canonical_reason().unwrap_or("error").to_owned() } else { text };
    let mut answer = HttpError::new(ErrorCode::for_status(status.as_u16()), message).into_response();
    *answer.status_mut() = status;
    if let Some(allow) = parts.headers.get(axum::http::header::ALLOW) {
        answer.headers_mut().insert(axum::http::header::ALLOW, allow.clone());
    }
    answer
}

/// The request slots of the API.
struct Slots {
    semaphore: Arc<Semaphore>,
    /// How long a request waits for a slot before `busy`.
    wait: Duration,
    /// How long its body may take to arrive.
    body_read: Duration,
    /// The largest body.
    body_limit: usize,
}

/// Bounds the requests served at once. The body is read first, within `body_read` and
/// `body_limit` (a `Content-Length` over the limit is refused unread), so a slow sender holds
/// no slot; then the request waits at most `wait` for a slot, else 503 `busy`.
async fn limit_concurrency(State(slots): State<Arc<Slots>>, request: Request, next: Next) -> Response {
    use axum::response::IntoResponse;
    let (parts, body) = request.into_parts();
    let declared = parts
        .headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > slots.body_limit as u64) {
        let message = format!("the body is over the limit of {} bytes", slots.body_limit);
        return HttpError::new(ErrorCode::TooLarge, message).into_response();
    }
    let body = match tokio::time::timeout(slots.body_read, axum::body::to_bytes(body, slots.body_limit)).await
    {
        Ok(Ok(bytes)) => bytes,
        Ok(Err(e)) => {
            // Over the limit (a chunked body, or a Content-Length that lied) or malformed.
            let over_limit = std::error::Error::source(&e)
                .is_some_and(|cause| cause.is::<http_body_util::LengthLimitError>());
            let code = if over_limit { ErrorCode::TooLarge } else { ErrorCode::BadRequest };
            return HttpError::new(code, format!("reading the body: {e}")).into_response();
        }
        Err(_) => {
            let message = format!("the body did not arrive within {} ms", slots.body_read.as_millis());
            return HttpError::bad_request(message).into_response();
        }
    };
    let request = Request::from_parts(parts, axum::body::Body::from(body));
    match tokio::time::timeout(slots.wait, slots.semaphore.acquire()).await {
        Ok(Ok(_permit)) => next.run(request).await,
        Ok(Err(_)) => HttpError::new(ErrorCode::Unavailable, "shutting down").into_response(),
        Err(_) => {
            HttpError::new(ErrorCode::Busy, "every request slot is taken; retry shortly").into_response()
        }
    }
}

impl Shared {
    /// The request timeout.
    pub(crate) fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.config.limits.request_timeout_ms)
    }

    /// The leader as this node knows it.
    pub(crate) fn leader_view(&self) -> LeaderView {
        let status = self.raft.status().protocol;
        LeaderView {
            leader: status.leader,
            client_addr: status.leader.and_then(|id| self.client_addr_of(id)),
            term: status.term,
        }
    }

    /// Whether this node leads.
    pub(crate) fn is_leader(&self) -> bool {
        self.raft.status().protocol.role == Role::Leader
    }

    /// The error for a request that only the leader serves.
    pub(crate) fn not_leader(&self) -> HttpError {
        HttpError::not_leader(Some(self.leader_view()))
    }

    /// Maps a driver error, filling in the leader.
    pub(crate) fn raft_error(&self, e: raft_core::RaftError) -> HttpError {
        HttpError::from_raft(e, || Some(self.leader_view()))
    }
}

/// The session of a write, from the [`CLIENT_ID_HEADER`] and [`SEQ_HEADER`] headers (both or
/// neither).
fn session_of(headers: &HeaderMap) -> Result<Option<Session>, HttpError> {
    let number = |name: &str| -> Result<Option<u64>, HttpError> {
        match headers.get(name) {
            None => Ok(None),
            Some(v) => v
                .to_str()
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
                .map(Some)
                .ok_or_else(|| HttpError::bad_request(format!("header {name} must be a decimal u64"))),
        }
    };
    match (number(CLIENT_ID_HEADER)?, number(SEQ_HEADER)?) {
        (None, None) => Ok(None),
        (Some(client_id), Some(seq)) if client_id != 0 && seq != 0 => Ok(Some(Session { client_id, seq })),
        (Some(_), Some(_)) => Err(HttpError::bad_request("client id and sequence number must be non-zero")),
        _ => {
            Err(HttpError::bad_request(format!("send both {CLIENT_ID_HEADER} and {SEQ_HEADER}, or neither")))
        }
    }
}

/// Proposes `op` (in the request's session) and returns the state machine's answer and the
/// entry's index. On a follower the write is forwarded to the leader when `auto_forward` is
/// on, else answered with a redirect to the leader.
pub(crate) async fn write(
    shared: &Shared,
    headers: &HeaderMap,
    uri: &axum::http::Uri,
    label: &'static str,
    op: Op,
) -> Result<(KvResponse, u64), HttpError> {
    let started = Instant::now();
    let command = Command { session: session_of(headers)?, op };
    command.validate().map_err(|e| match e {
        InvalidCommand::TooLong { .. } | InvalidCommand::TooMany { .. } => {
            HttpError::new(ErrorCode::TooLarge, e.to_string())
        }
        _ => HttpError::bad_request(e.to_string()),
    })?;
    if !shared.config.raft.auto_forward && !shared.is_leader() {
        let leader = shared.leader_view();
        let mut e = HttpError::not_leader(Some(leader.clone()));
        if let Some(addr) = leader.client_addr {
            let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
            let scheme = if shared.api_tls.is_some() { "https" } else { "http" };
            e.redirect = Some(format!("{scheme}://{addr}{path}"));
        }
        return Err(e);
    }
    let proposal = shared.raft.propose(command.encode());
    let applied: Applied = match tokio::time::timeout(shared.request_timeout(), proposal).await {
        Ok(Ok(applied)) => applied,
        Ok(Err(e)) => return Err(shared.raft_error(e)),
        Err(_) => return Err(HttpError::timeout("the write")),
    };
    let response = KvResponse::decode(&applied.response)
        .map_err(|e| HttpError::new(ErrorCode::Internal, format!("undecodable state machine answer: {e}")))?;
    shared.metrics.observe_proposal(label, started.elapsed());
    match response {
        KvResponse::StaleSequence { last_seq } => Err(HttpError::new(
            ErrorCode::StaleSequence,
            format!("this session already applied sequence number {last_seq}; send one write at a time"),
        )),
        KvResponse::SessionExpired { client_id } => Err(HttpError::new(
            ErrorCode::SessionExpired,
            format!("session {client_id} is not known (expired, or its first write was not applied); start a new one"),
        )),
        KvResponse::Rejected(reason) => Err(HttpError::bad_request(reason)),
        KvResponse::NoSpace { quota_bytes, state_bytes } => {
            let mut e = HttpError::new(
                ErrorCode::NoSpace,
                format!(
                    "the write would take the state (now {state_bytes} bytes of keys and values) past its \
                     quota of {quota_bytes} (limits.max_state_bytes); at 90 % of the quota or more, writes \
                     that grow it are refused until it is below 90 %; deletes and writes that do not grow \
                     it still work"
                ),
            );
            e.body.quota = Some(raft_client::api::QuotaView { quota_bytes, state_bytes });
            Err(e)
        }
        other => Ok((other, applied.log_id.index)),
    }
}

/// Waits until this node may serve a read of the given consistency: for `linearizable` and
/// `lease`, until its state machine has applied the index a leader confirmed.
pub(crate) async fn read_barrier(shared: &Shared, consistency: Consistency) -> Result<u64, HttpError> {
    let mode = match consistency {
        Consistency::Local => return Ok(shared.kv.applied_index()),
        Consistency::Linearizable => ReadMode::ReadIndex,
        Consistency::Lease => ReadMode::Lease,
    };
    let barrier =
        async {
            let index = shared.raft.read_index(mode).await.map_err(|e| shared.raft_error(e))?;
            shared.kv.wait_applied(index).await.map_err(|e| {
                HttpError::new(ErrorCode::Unavailable, format!("the state machine stopped: {e}"))
            })
        };
    match tokio::time::timeout(shared.request_timeout(), barrier).await {
        Ok(result) => result,
        Err(_) => Err(HttpError::timeout("the read")),
    }
}
