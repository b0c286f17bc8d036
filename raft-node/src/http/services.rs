//! Service registry endpoints and `balance`.

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, Uri};
use axum::Json;
use raft_client::api::{
    BalanceStrategy, BalanceView, ErrorCode, NodeDownRequest, Service, ServiceList, ServiceNode, ServiceSpec,
    WriteResult,
};
use raft_kv::{BalanceError, Op, Response as KvResponse, Strategy};
use serde::Deserialize;

use super::kv::json_body;
use super::{read_barrier, write, AppState, HttpError};

fn node_view(n: raft_kv::ServiceNode) -> ServiceNode {
    ServiceNode { id: n.id, address: n.address, priority: n.priority, attributes: n.attributes, down: n.down }
}

fn service_view(s: raft_kv::Service) -> Service {
    Service { name: s.name, kind: s.kind, nodes: s.nodes.into_iter().map(node_view).collect() }
}

/// Query of service reads.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ServiceQuery {
    #[serde(default)]
    consistency: raft_client::api::Consistency,
}

/// `GET /v1/services`.
pub(crate) async fn list(
    State(shared): State<AppState>,
    query: Result<Query<ServiceQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<ServiceList>, HttpError> {
    let Query(query) = query.map_err(|e| HttpError::bad_request(e.body_text()))?;
    read_barrier(&shared, query.consistency).await?;
    Ok(Json(ServiceList { services: shared.kv.services().into_iter().map(service_view).collect() }))
}

/// `GET /v1/services/{name}`.
pub(crate) async fn get(
    State(shared): State<AppState>,
    Path(name): Path<String>,
    query: Result<Query<ServiceQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Service>, HttpError> {
    let Query(query) = query.map_err(|e| HttpError::bad_request(e.body_text()))?;
    read_barrier(&shared, query.consistency).await?;
    shared
        .kv
        .service(&name)
        .map(|s| Json(service_view(s)))
        .ok_or_else(|| HttpError::not_found(format!("no service {name:?}")))
}

fn write_result(name: &str, response: KvResponse, index: u64) -> Result<Json<WriteResult>, HttpError> {
    match response {
        KvResponse::ServiceRegistered { .. } | KvResponse::Ok => {
            Ok(Json(WriteResult { index, current: None, prev: None }))
        }
        KvResponse::NotFound => {
            Err(HttpError::not_found(format!("no service {name:?} (or no such node in it)")))
        }
        other => {
            Err(HttpError::new(ErrorCode::Internal, format!("unexpected state machine answer {other:?}")))
        }
    }
}

/// `PUT /v1/services/{name}`: registers or replaces a service.
pub(crate) async fn register(
    State(shared): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    uri: Uri,
    body: Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Json<WriteResult>, HttpError> {
    let spec = json_body::<ServiceSpec>(body)?;
    let nodes = spec
        .nodes
        .into_iter()
        .map(|n| raft_kv::ServiceNode {
            id: n.id,
            address: n.address,
            priority: n.priority,
            attributes: n.attributes,
            down: n.down,
        })
        .collect();
    let op = Op::RegisterService(raft_kv::Service { name: name.clone(), kind: spec.kind, nodes });
    let (response, index) = write(&shared, &headers, &uri, "register_service", op).await?;
    write_result(&name, response, index)
}

/// `DELETE /v1/services/{name}`.
pub(crate) async fn remove(
    State(shared): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    uri: Uri,
) -> Result<Json<WriteResult>, HttpError> {
    let op = Op::RemoveService { name: name.clone() };
    let (response, index) = write(&shared, &headers, &uri, "remove_service", op).await?;
    write_result(&name, response, index)
}

/// `POST /v1/services/{name}/nodes/{node}/down`.
pub(crate) async fn set_down(
    State(shared): State<AppState>,
    Path((name, node)): Path<(String, String)>,
    headers: HeaderMap,
    uri: Uri,
    body: Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Json<WriteResult>, HttpError> {
    let request = json_body::<NodeDownRequest>(body)?;
    let op = Op::SetServiceNodeDown { service: name.clone(), node, down: request.down };
    let (response, index) = write(&shared, &headers, &uri, "set_service_node_down", op).await?;
    write_result(&name, response, index)
}

/// Query of `GET /v1/balance/{name}`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct BalanceQuery {
    #[serde(default)]
    strategy: BalanceStrategy,
}

/// `GET /v1/balance/{name}`: one live node of the service, weighted by priority. Served from
/// this node's state (the registry changes rarely; a pick is a hint, not a lock).
pub(crate) async fn balance(
    State(shared): State<AppState>,
    Path(name): Path<String>,
    query: Result<Query<BalanceQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<BalanceView>, HttpError> {
    let Query(query) = query.map_err(|e| HttpError::bad_request(e.body_text()))?;
    let strategy = match query.strategy {
        BalanceStrategy::RoundRobin => Strategy::SmoothWeighted,
        BalanceStrategy::Random => Strategy::WeightedRandom,
    };
    match shared.balancer.pick(&name, strategy) {
        Ok(node) => Ok(Json(BalanceView { service: name, node: node_view(node) })),
        Err(e @ BalanceError::UnknownService(_)) => Err(HttpError::not_found(e.to_string())),
        Err(e) => Err(HttpError::new(ErrorCode::Unavailable, e.to_string())),
    }
}
