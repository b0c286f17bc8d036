//! Operations endpoints: `/health` (the process serves requests), `/ready` (a leader is known,
//! this node has applied everything it knows committed, nothing fatal), `/metrics`
//! (Prometheus text).

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;

use super::AppState;

/// `GET /health`: 200 while the process serves requests and Raft runs (503 after a fatal
/// storage or state machine error).
pub(crate) async fn health(State(shared): State<AppState>) -> impl IntoResponse {
    match shared.raft.status().fatal {
        None => (StatusCode::OK, "ok\n".to_string()),
        Some(fatal) => (StatusCode::SERVICE_UNAVAILABLE, format!("stopped: {fatal}\n")),
    }
}

/// `GET /ready`: 200 once a leader is known, this node has applied every entry it knows to be
/// committed and a request slot is free; 503 with the reason otherwise.
pub(crate) async fn ready(State(shared): State<AppState>) -> impl IntoResponse {
    let status = shared.raft.status();
    let p = &status.protocol;
    let applied = shared.kv.applied_index();
    let reason = if let Some(fatal) = &status.fatal {
        Some(format!("stopped: {fatal}"))
    } else if status.storage_full {
        Some("the disk is full: writes wait for space".to_string())
    } else if let (None, Some(lost)) = (p.leader, p.recovering_to) {
        Some(format!(
            "no leader is known, and this node lost data it had acknowledged (up to {lost}): its vote \
             counts only for a log that holds them. If a majority of the voters lost data at once, no \
             leader can be elected: see `raft-node recover --help` (--accept-data-loss, \
             --force-new-cluster) and README, \"Durable storage on RocksDB\""
        ))
    } else if p.leader.is_none() {
        Some("no leader is known".to_string())
    } else if applied < p.commit_index {
        Some(format!("catching up: applied {applied} of {} committed", p.commit_index))
    } else if shared.request_slots.available_permits() == 0 {
        Some(format!(
            "saturated: all {} request slots are taken",
            shared.config.limits.max_concurrent_requests
        ))
    } else {
        None
    };
    match reason {
        None => (StatusCode::OK, format!("ready: leader {:?}, applied {applied}\n", p.leader)),
        Some(reason) => (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {reason}\n")),
    }
}

/// `GET /metrics`.
pub(crate) async fn metrics(State(shared): State<AppState>) -> impl IntoResponse {
    let text = shared.metrics.render(&shared.raft.status(), &shared.kv.stats(), (shared.transport_stats)());
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], text)
}
