//! Key-value endpoints: `GET|PUT|DELETE /v1/kv/{key}`, `POST /v1/cas/{key}`, `GET /v1/kv`.

use std::time::Instant;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, Uri};
use axum::Json;
use raft_client::api::{CasRequest, Consistency, ErrorCode, KeyList, KeyValue, PutRequest, WriteResult};
use raft_kv::{Expected, Op, Response as KvResponse};
use serde::Deserialize;

use super::{read_barrier, write, AppState, HttpError};
use crate::node::Shared;

/// Query of reads.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ReadQuery {
    #[serde(default)]
    consistency: Consistency,
}

/// Query of `GET /v1/kv`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ListQuery {
    #[serde(default)]
    prefix: String,
    limit: Option<usize>,
    /// List the keys after this one (the previous page's `next_start_after`).
    start_after: Option<String>,
    #[serde(default)]
    consistency: Consistency,
}

pub(crate) fn key_view(kv: raft_kv::KeyValue) -> KeyValue {
    KeyValue {
        key: kv.key,
        value: kv.value,
        version: kv.version,
        create_index: kv.create_index,
        mod_index: kv.mod_index,
    }
}

fn check_key(shared: &Shared, key: &str) -> Result<(), HttpError> {
    let max = shared.config.limits.max_key_bytes;
    if key.is_empty() {
        return Err(HttpError::bad_request("the key must not be empty"));
    }
    if key.len() > max {
        return Err(HttpError::new(
            ErrorCode::TooLarge,
            format!("the key is {} bytes, over the limit of {max}", key.len()),
        ));
    }
    Ok(())
}

fn check_value(shared: &Shared, value: &str) -> Result<(), HttpError> {
    let max = shared.config.limits.max_value_bytes;
    if value.len() > max {
        return Err(HttpError::new(
            ErrorCode::TooLarge,
            format!("the value is {} bytes, over the limit of {max}", value.len()),
        ));
    }
    Ok(())
}

/// A JSON body (whatever its content type, so that `curl -d` works), with malformed JSON
/// answered as `bad_request` and a body over `limits.max_body_bytes` as `too_large`.
pub(crate) fn json_body<T: serde::de::DeserializeOwned>(
    body: Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<T, HttpError> {
    let bytes = body.map_err(|e| {
        if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
            HttpError::new(ErrorCode::TooLarge, e.body_text())
        } else {
            HttpError::bad_request(e.body_text())
        }
    })?;
    serde_json::from_slice(&bytes).map_err(|e| HttpError::bad_request(format!("malformed JSON body: {e}")))
}

/// `GET /v1/kv/{key}`.
pub(crate) async fn get(
    State(shared): State<AppState>,
    Path(key): Path<String>,
    query: Result<Query<ReadQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<KeyValue>, HttpError> {
    let Query(query) = query.map_err(|e| HttpError::bad_request(e.body_text()))?;
    check_key(&shared, &key)?;
    let started = Instant::now();
    read_barrier(&shared, query.consistency).await?;
    let found = shared.kv.get(&key);
    shared.metrics.observe_read("get", started.elapsed());
    found.map(|kv| Json(key_view(kv))).ok_or_else(|| HttpError::not_found(format!("no key {key:?}")))
}

/// `GET /v1/kv?prefix=&limit=&start_after=`: one page, at most `limit` (and
/// `limits.max_list`) pairs and `limits.max_list_bytes` of keys and values. Each page is read
/// at its own index (linearizable on its own with the default consistency); a listing of many
/// pages is not one point in time (`index` says where each page was read).
pub(crate) async fn list(
    State(shared): State<AppState>,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<KeyList>, HttpError> {
    let Query(query) = query.map_err(|e| HttpError::bad_request(e.body_text()))?;
    let max = shared.config.limits.max_list;
    let limit = query.limit.unwrap_or(max).min(max);
    if limit == 0 {
        return Err(HttpError::bad_request("limit must be at least 1"));
    }
    let started = Instant::now();
    read_barrier(&shared, query.consistency).await?;
    let page = shared.kv.list_page(
        &query.prefix,
        query.start_after.as_deref(),
        limit,
        shared.config.limits.max_list_bytes,
    );
    shared.metrics.observe_read("list", started.elapsed());
    Ok(Json(KeyList {
        items: page.items.into_iter().map(key_view).collect(),
        truncated: page.next_start_after.is_some(),
        index: page.applied_index,
        next_start_after: page.next_start_after,
    }))
}

/// `PUT /v1/kv/{key}`.
pub(crate) async fn put(
    State(shared): State<AppState>,
    Path(key): Path<String>,
    headers: HeaderMap,
    uri: Uri,
    body: Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Json<WriteResult>, HttpError> {
    check_key(&shared, &key)?;
    let body = json_body::<PutRequest>(body)?;
    check_value(&shared, &body.value)?;
    let op = Op::Put { key: key.clone(), value: body.value.clone() };
    let (response, index) = write(&shared, &headers, &uri, "put", op).await?;
    key_result(&shared, &key, Some(body.value), response, index)
}

/// `DELETE /v1/kv/{key}`.
pub(crate) async fn delete(
    State(shared): State<AppState>,
    Path(key): Path<String>,
    headers: HeaderMap,
    uri: Uri,
) -> Result<Json<WriteResult>, HttpError> {
    check_key(&shared, &key)?;
    let (response, index) = write(&shared, &headers, &uri, "delete", Op::Delete { key: key.clone() }).await?;
    key_result(&shared, &key, None, response, index)
}

/// `POST /v1/cas/{key}`.
pub(crate) async fn cas(
    State(shared): State<AppState>,
    Path(key): Path<String>,
    headers: HeaderMap,
    uri: Uri,
    body: Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Json<WriteResult>, HttpError> {
    check_key(&shared, &key)?;
    let body = json_body::<CasRequest>(body)?;
    let expected = match (body.expected_version, body.expected_value) {
        (Some(v), None) => Expected::Version(v),
        (None, Some(v)) => {
            if let Some(v) = &v {
                check_value(&shared, v)?;
            }
            Expected::Value(v)
        }
        (Some(_), Some(_)) => {
            return Err(HttpError::bad_request("give expected_version or expected_value, not both"))
        }
        (None, None) => return Err(HttpError::bad_request("give expected_version or expected_value")),
    };
    if let Some(v) = &body.value {
        check_value(&shared, v)?;
    }
    let op = Op::Cas { key: key.clone(), expected, value: body.value.clone() };
    let (response, index) = write(&shared, &headers, &uri, "cas", op).await?;
    key_result(&shared, &key, body.value, response, index)
}

/// The answer to a key write; `written` is the value a put or swap stored.
///
/// A retried write answered from its session carries the first attempt's response, but its own
/// (later) log entry: the key's `mod_index` is read back from the store when the key is still
/// at the answered version, so `current` shows where the write really took effect.
fn key_result(
    shared: &Shared,
    key: &str,
    written: Option<String>,
    response: KvResponse,
    index: u64,
) -> Result<Json<WriteResult>, HttpError> {
    match response {
        KvResponse::Put { version, prev } => {
            let stored = shared.kv.get(key).filter(|kv| kv.version == version);
            let current = written.map(|value| KeyValue {
                key: key.to_string(),
                value,
                version,
                create_index: stored
                    .as_ref()
                    .map_or(prev.as_ref().map_or(index, |p| p.create_index), |kv| kv.create_index),
                mod_index: stored.as_ref().map_or(index, |kv| kv.mod_index),
            });
            Ok(Json(WriteResult { index, current, prev: prev.map(key_view) }))
        }
        KvResponse::Deleted { prev } => {
            Ok(Json(WriteResult { index, current: None, prev: prev.map(key_view) }))
        }
        KvResponse::CasFailed { current } => {
            let mut e = HttpError::new(ErrorCode::CasFailed, format!("the key {key:?} is not as expected"));
            e.body.current = current.map(key_view);
            Err(e)
        }
        other => {
            Err(HttpError::new(ErrorCode::Internal, format!("unexpected state machine answer {other:?}")))
        }
    }
}
