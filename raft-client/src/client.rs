//! [`Client`]: the typed API of a `raft-node` cluster, with leader discovery, retries and
//! idempotent write sessions.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use reqwest::header::{HeaderValue, ACCEPT, AUTHORIZATION, CONTENT_TYPE, LOCATION};
use reqwest::{Method, StatusCode, Url};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tracing::debug;

use crate::api::{
    AddMemberRequest, ApiError, BalanceStrategy, BalanceView, CasRequest, Consistency, ErrorCode, KeyList,
    KeyValue, LeaderView, LogView, MembersView, NodeDownRequest, PutRequest, Service, ServiceList,
    ServiceSpec, StatusView, TransferRequest, WriteResult, CLIENT_ID_HEADER, SEQ_HEADER,
};
use crate::endpoint::{truncate_for_message, Endpoint, Scheme};
use crate::error::{code_for_status, ClientError};
use crate::options::{random_seed, splitmix64, ClientOptions};
use crate::snapshot::SnapshotDownload;
use crate::watch::WatchStream;

/// Most endpoints a client accepts.
pub const ENDPOINTS_MAX: usize = 256;
/// Idle connections kept per node.
const IDLE_CONNECTIONS_PER_NODE_MAX: usize = 8;
/// Idle connections are closed after this long.
const IDLE_CONNECTION_TIMEOUT: Duration = Duration::from_secs(60);

/// A handle on a `raft-node` cluster. Cheap to clone; clones share the connection pool, the
/// known leader and the session.
///
/// # Routing
///
/// Every call starts at the last known leader (or, before one is known, at the endpoint the
/// client last moved to). A `421 not_leader` answer naming the leader, or a `307`/`308`
/// redirect, switches the client to that node at once; a connection error, a timeout, a
/// `503` (`no_leader`, `no_quorum`, `busy`, `unavailable`) or a `504` moves it to the next
/// endpoint after a [`Backoff`](crate::Backoff) pause. Each of these counts as one retry, up to
/// [`ClientOptions::max_retries`]; errors that retrying cannot fix (`bad_request`,
/// `not_found`, `cas_failed`, ...) are returned at once. Redirects are never followed by the
/// HTTP layer itself, so a retry keeps its method, body and session headers.
///
/// # Sessions
///
/// A client has a session: a `client_id` (random unless given in the options) and a sequence
/// number that grows by one for each logical write (`put`, `delete`, `cas` and the service
/// registry writes). Every attempt of the same write carries the same
/// [`CLIENT_ID_HEADER`]/[`SEQ_HEADER`], so a write whose first attempt timed out and that
/// is retried on the new leader is applied once, and the retry gets the first attempt's
/// answer. The server remembers the latest sequence number of each session and refuses older
/// ones with `409 stale_sequence`; to never trigger that, a client sends **one write at a
/// time per session** (concurrent writes of one `Client`, or of its clones, wait for each
/// other) and never reuses a number. For parallel writes, give each task its own session with
/// [`Client::new_session`]. A write that fails (other than with an answer the state machine
/// gave, like `cas_failed`) may or may not have been applied; the client then continues in a
/// new session (a new random client id, sequence numbers from 1), so numbers never have gaps
/// and a later write can never be taken for the failed one.
///
/// Membership changes and leadership transfers carry no session: a retry after an unknown
/// outcome may answer `conflict` or `not_found` for a change that did happen.
#[derive(Debug, Clone)]
pub struct Client {
    shared: Arc<Shared>,
    session: Arc<Session>,
}

#[derive(Debug)]
struct Shared {
    http: reqwest::Client,
    /// For streams (watches, snapshot downloads): keeps no idle connection, so that each
    /// stream opens a connection of its own. A node serves a connection whose first request is
    /// a watch on threads of lower priority than its Raft path; one reused from the pool
    /// would stream at the Raft path's priority.
    streams: reqwest::Client,
    /// `https` with [`ClientOptions::tls`], else `http`: every endpoint, redirect and hint.
    scheme: Scheme,
    endpoints: Vec<Endpoint>,
    options: ClientOptions,
    /// The last node known to lead (it answered a write, or a node named it).
    leader: Mutex<Option<Endpoint>>,
    /// Index (modulo the endpoint count) of the endpoint tried when no leader is known.
    cursor: AtomicUsize,
    /// SplitMix64 counter for jitter.
    rng: AtomicU64,
}

#[derive(Debug)]
struct Session {
    /// `(client_id, last sequence number used)`; held for the whole of a write, so writes of
    /// one session go out one at a time.
    state: tokio::sync::Mutex<(u64, u64)>,
    /// The current client id, readable without waiting for a write.
    client_id: AtomicU64,
}

impl Session {
    fn new(client_id: u64) -> Self {
        Self { state: tokio::sync::Mutex::new((client_id, 0)), client_id: AtomicU64::new(client_id) }
    }
}

/// One API request, rebuilt for every attempt.
struct Call {
    method: Method,
    segments: Vec<String>,
    query: Vec<(&'static str, String)>,
    body: Option<Bytes>,
    /// `(client_id, seq)` of a session write.
    session: Option<(u64, u64)>,
    /// A write: the node that accepts it is the leader.
    write: bool,
    /// Answered with an event stream, not a JSON body.
    streaming: bool,
}

impl Call {
    fn new(method: Method, segments: &[&str]) -> Self {
        Self {
            method,
            segments: segments.iter().map(|s| (*s).to_owned()).collect(),
            query: Vec::new(),
            body: None,
            session: None,
            write: false,
            streaming: false,
        }
    }

    fn write(mut self) -> Self {
        self.write = true;
        self
    }

    fn query(mut self, name: &'static str, value: impl ToString) -> Self {
        self.query.push((name, value.to_string()));
        self
    }

    fn json<T: Serialize>(mut self, body: &T) -> Result<Self, ClientError> {
        let bytes = serde_json::to_vec(body)
            .map_err(|e| ClientError::Decode(format!("cannot encode the request: {e}")))?;
        self.body = Some(Bytes::from(bytes));
        Ok(self)
    }

    fn describe(&self) -> String {
        format!("{} /{}", self.method, self.segments.join("/"))
    }
}

/// What one attempt came to.
enum Attempt {
    /// A 2xx answer with its whole body.
    Body(Bytes),
    /// A 2xx answer to a streaming call, body unread.
    Stream(reqwest::Response),
    /// Go to this node now; `error` is what to report if no retry is left.
    Redirect { to: Endpoint, error: ClientError },
    /// Try another node after a pause.
    Retry(ClientError),
    /// Give up: retrying cannot help.
    Fail(ClientError),
}

enum ExchangeError {
    Http(reqwest::Error),
    TooLarge,
}

impl Client {
    /// A client of the nodes at `endpoints` (`host:port` or `http://host:port`; duplicates
    /// are dropped, order is kept: the first is tried first).
    ///
    /// Fails with [`ClientError::NoEndpoint`] for an empty list,
    /// [`ClientError::InvalidEndpoint`] for an endpoint that does not parse, and
    /// [`ClientError::InvalidOptions`] for inconsistent options or more than
    /// [`ENDPOINTS_MAX`] endpoints.
    pub fn new<I, S>(endpoints: I, options: ClientOptions) -> Result<Self, ClientError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        options.validate()?;
        let scheme = if options.tls.is_some() { Scheme::Https } else { Scheme::Http };
        let mut parsed: Vec<Endpoint> = Vec::new();
        for e in endpoints {
            let endpoint = Endpoint::parse_as(e.as_ref(), scheme)?;
            if !parsed.contains(&endpoint) {
                if parsed.len() == ENDPOINTS_MAX {
                    return Err(ClientError::InvalidOptions("more than 256 endpoints"));
                }
                parsed.push(endpoint);
            }
        }
        if parsed.is_empty() {
            return Err(ClientError::NoEndpoint);
        }
        let build = |idle_per_node: usize| {
            let builder = match &options.tls {
                Some(tls) => reqwest::Client::builder()
                    .tls_backend_preconfigured(tls.rustls_config()?)
                    .https_only(true),
                None => reqwest::Client::builder().tls_backend_preconfigured(crate::tls::trusting_nothing()?),
            };
            builder
                .redirect(reqwest::redirect::Policy::none())
                .no_proxy()
                .connect_timeout(options.request_timeout)
                .pool_max_idle_per_host(idle_per_node)
                .pool_idle_timeout(IDLE_CONNECTION_TIMEOUT)
                .tcp_nodelay(true)
                .user_agent(concat!("raft-client/", env!("CARGO_PKG_VERSION")))
                .build()
                .map_err(|_| ClientError::InvalidOptions("the HTTP client could not be built"))
        };
        let http = build(IDLE_CONNECTIONS_PER_NODE_MAX)?;
        let streams = build(0)?;
        let seed = random_seed();
        let client_id = options.client_id.unwrap_or_else(|| nonzero_random(seed));
        let shared = Shared {
            http,
            streams,
            scheme,
            endpoints: parsed,
            options,
            leader: Mutex::new(None),
            cursor: AtomicUsize::new(0),
            rng: AtomicU64::new(splitmix64(seed ^ 0x5eed)),
        };
        Ok(Self { shared: Arc::new(shared), session: Arc::new(Session::new(client_id)) })
    }

    /// A client sharing this one's connections and known leader, with a new random session:
    /// its writes do not wait for this client's writes.
    pub fn new_session(&self) -> Self {
        let client_id = nonzero_random(self.shared.next_random());
        Self { shared: Arc::clone(&self.shared), session: Arc::new(Session::new(client_id)) }
    }

    /// The session's client id, sent with every write.
    pub fn client_id(&self) -> u64 {
        self.session.client_id.load(Ordering::Relaxed)
    }

    /// The scheme this client speaks to every node (`https` with [`ClientOptions::tls`]).
    pub fn scheme(&self) -> Scheme {
        self.shared.scheme
    }

    /// The endpoints, normalized, in the order they are tried.
    pub fn endpoints(&self) -> &[Endpoint] {
        &self.shared.endpoints
    }

    /// The options the client was built with.
    pub fn options(&self) -> &ClientOptions {
        &self.shared.options
    }

    /// The node this client currently believes leads, if any.
    pub fn known_leader(&self) -> Option<Endpoint> {
        self.shared.leader()
    }

    // ---- keys ----

    /// Reads a key; `None` when it does not exist. `consistency: None` uses the client's
    /// default ([`ClientOptions::consistency`]).
    pub async fn get(
        &self,
        key: &str,
        consistency: Option<Consistency>,
    ) -> Result<Option<KeyValue>, ClientError> {
        let call = Call::new(Method::GET, &["v1", "kv", key])
            .query("consistency", consistency_name(self.consistency(consistency)));
        not_found_as_none(self.read(call).await)
    }

    /// Sets a key.
    pub async fn put(&self, key: &str, value: &str) -> Result<WriteResult, ClientError> {
        let call =
            Call::new(Method::PUT, &["v1", "kv", key]).json(&PutRequest { value: value.to_owned() })?;
        self.session_write(call).await
    }

    /// Deletes a key (deleting an absent key succeeds, with `prev: None`).
    pub async fn delete(&self, key: &str) -> Result<WriteResult, ClientError> {
        self.session_write(Call::new(Method::DELETE, &["v1", "kv", key])).await
    }

    /// Compare-and-swap: writes (or deletes, with `value: None`) only if the key is as
    /// expected; otherwise fails with [`ClientError::CasFailed`] carrying the key's state.
    pub async fn cas(&self, key: &str, request: &CasRequest) -> Result<WriteResult, ClientError> {
        let call = Call::new(Method::POST, &["v1", "cas", key]).json(request)?;
        match self.session_write(call).await {
            Err(ClientError::Api { error, .. }) if error.code == ErrorCode::CasFailed => {
                Err(ClientError::CasFailed { current: error.current })
            }
            other => other,
        }
    }

    /// Lists keys starting with `prefix` in key order, at most `limit` (the server's default
    /// and cap when `None`): the first page (see [`list_after`](Self::list_after)).
    pub async fn list(
        &self,
        prefix: &str,
        limit: Option<u32>,
        consistency: Option<Consistency>,
    ) -> Result<KeyList, ClientError> {
        self.list_page(prefix, None, limit, consistency).await
    }

    /// The page of keys with `prefix` after `start_after` (the previous page's
    /// `next_start_after`): list every key by asking until `next_start_after` is `None`. Each
    /// page is read at its own index.
    pub async fn list_after(
        &self,
        prefix: &str,
        start_after: &str,
        limit: Option<u32>,
        consistency: Option<Consistency>,
    ) -> Result<KeyList, ClientError> {
        self.list_page(prefix, Some(start_after), limit, consistency).await
    }

    async fn list_page(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: Option<u32>,
        consistency: Option<Consistency>,
    ) -> Result<KeyList, ClientError> {
        let mut call = Call::new(Method::GET, &["v1", "kv"])
            .query("prefix", prefix)
            .query("consistency", consistency_name(self.consistency(consistency)));
        if let Some(after) = start_after {
            call = call.query("start_after", after);
        }
        if let Some(limit) = limit {
            call = call.query("limit", limit);
        }
        self.read(call).await
    }

    // ---- cluster ----

    /// The status of the first node that answers (the known leader first).
    pub async fn status(&self) -> Result<StatusView, ClientError> {
        self.read(Call::new(Method::GET, &["v1", "status"])).await
    }

    /// Every member's status as one node sees it (`GET /v1/cluster`: the node asks the others
    /// with this client's token).
    pub async fn cluster(&self) -> Result<crate::api::ClusterView, ClientError> {
        self.read(Call::new(Method::GET, &["v1", "cluster"])).await
    }

    /// The status of one node, asked once, without retries or redirects.
    pub async fn status_of(&self, endpoint: &Endpoint) -> Result<StatusView, ClientError> {
        let call = Call::new(Method::GET, &["v1", "status"]);
        match self.shared.attempt(endpoint, &call).await {
            Attempt::Body(body) => decode(&call, &body),
            Attempt::Stream(_) => Err(ClientError::Decode("unexpected stream".into())),
            Attempt::Redirect { error, .. } | Attempt::Retry(error) | Attempt::Fail(error) => Err(error),
        }
    }

    /// The status of every endpoint, asked at the same time, in endpoint order.
    pub async fn statuses(&self) -> Vec<(Endpoint, Result<StatusView, ClientError>)> {
        let asks = self.shared.endpoints.iter().map(|e| async move { (e.clone(), self.status_of(e).await) });
        futures_util::future::join_all(asks).await
    }

    /// The leader as the first node that answers sees it; remembered for later calls when
    /// its address is known.
    pub async fn leader(&self) -> Result<LeaderView, ClientError> {
        let view: LeaderView = self.read(Call::new(Method::GET, &["v1", "leader"])).await?;
        if let Some(endpoint) =
            view.client_addr.as_deref().and_then(|a| Endpoint::parse_as(a, self.shared.scheme).ok())
        {
            self.shared.set_leader(Some(endpoint));
        }
        Ok(view)
    }

    /// The members of the cluster.
    pub async fn members(&self) -> Result<MembersView, ClientError> {
        self.read(Call::new(Method::GET, &["v1", "members"])).await
    }

    /// Adds a member (or updates its addresses); resolves once the change is complete.
    pub async fn add_member(&self, request: &AddMemberRequest) -> Result<MembersView, ClientError> {
        self.add_member_with_force(request, false).await
    }

    /// Like [`add_member`](Self::add_member); `force` also moves a current member to other
    /// addresses (refused with `conflict` otherwise: wrong addresses cut a member off). A node
    /// that restarted at new addresses reports them this way when no leader reaches it.
    pub async fn add_member_with_force(
        &self,
        request: &AddMemberRequest,
        force: bool,
    ) -> Result<MembersView, ClientError> {
        let mut call = Call::new(Method::POST, &["v1", "members"]).json(request)?;
        if force {
            call = call.query("force", true);
        }
        self.admin_write(call).await
    }

    /// Promotes a learner to voter. Refused with `not_caught_up` (retryable) until it has
    /// caught up, and with `unsafe_change` when a majority of the new voters would not be
    /// caught up and answering; `force` skips both checks.
    pub async fn promote_member(&self, id: u64, force: bool) -> Result<MembersView, ClientError> {
        let id = id.to_string();
        let mut call = Call::new(Method::POST, &["v1", "members", &id, "promote"]);
        if force {
            call = call.query("force", true);
        }
        self.admin_write(call).await
    }

    /// Removes a member. Refused with `unsafe_change` when a majority of the remaining voters
    /// would not be caught up and answering; `force` skips the check.
    pub async fn remove_member(&self, id: u64, force: bool) -> Result<MembersView, ClientError> {
        let id = id.to_string();
        let mut call = Call::new(Method::DELETE, &["v1", "members", &id]);
        if force {
            call = call.query("force", true);
        }
        self.admin_write(call).await
    }

    /// Hands leadership to `to` (`None`: the most caught-up voter); answers the new leader.
    pub async fn transfer_leader(&self, to: Option<u64>) -> Result<LeaderView, ClientError> {
        let call = Call::new(Method::POST, &["v1", "transfer-leader"]).json(&TransferRequest { to })?;
        let view: LeaderView = self.admin_write(call).await?;
        let endpoint =
            view.client_addr.as_deref().and_then(|a| Endpoint::parse_as(a, self.shared.scheme).ok());
        self.shared.set_leader(endpoint);
        Ok(view)
    }

    /// Log entries from index `from` (the first kept when `None`), at most `limit`.
    pub async fn log(&self, from: Option<u64>, limit: Option<u32>) -> Result<LogView, ClientError> {
        let mut call = Call::new(Method::GET, &["v1", "log"]);
        if let Some(from) = from {
            call = call.query("from", from);
        }
        if let Some(limit) = limit {
            call = call.query("limit", limit);
        }
        self.read(call).await
    }

    // ---- services ----

    /// Every registered service.
    pub async fn services(&self) -> Result<ServiceList, ClientError> {
        self.read(Call::new(Method::GET, &["v1", "services"])).await
    }

    /// One service; `None` when it is not registered.
    pub async fn service(&self, name: &str) -> Result<Option<Service>, ClientError> {
        not_found_as_none(self.read(Call::new(Method::GET, &["v1", "services", name])).await)
    }

    /// Registers (or replaces) a service.
    pub async fn register_service(&self, name: &str, spec: &ServiceSpec) -> Result<WriteResult, ClientError> {
        self.session_write(Call::new(Method::PUT, &["v1", "services", name]).json(spec)?).await
    }

    /// Removes a service.
    pub async fn remove_service(&self, name: &str) -> Result<WriteResult, ClientError> {
        self.session_write(Call::new(Method::DELETE, &["v1", "services", name])).await
    }

    /// Marks a node of a service down (never picked by `balance`) or up again.
    pub async fn set_service_node_down(
        &self,
        name: &str,
        node: &str,
        down: bool,
    ) -> Result<WriteResult, ClientError> {
        let call = Call::new(Method::POST, &["v1", "services", name, "nodes", node, "down"])
            .json(&NodeDownRequest { down })?;
        self.session_write(call).await
    }

    /// Picks a node of a service, weighted by priority.
    pub async fn balance(&self, name: &str, strategy: BalanceStrategy) -> Result<BalanceView, ClientError> {
        let strategy = match strategy {
            BalanceStrategy::RoundRobin => "round_robin",
            BalanceStrategy::Random => "random",
        };
        self.read(Call::new(Method::GET, &["v1", "balance", name]).query("strategy", strategy)).await
    }

    /// Downloads the latest snapshot of the first node that answers (any member: snapshots
    /// are per node), for a backup. Fails with `not_found` when that node has none yet. The
    /// bytes are pulled with [`SnapshotDownload::next_chunk`]; no byte for
    /// [`ClientOptions::watch_idle_timeout`] is a timeout.
    pub async fn snapshot(&self) -> Result<SnapshotDownload, ClientError> {
        let mut call = Call::new(Method::GET, &["v1", "snapshot"]);
        call.streaming = true;
        match self.shared.execute(&call).await? {
            Attempt::Stream(response) => {
                SnapshotDownload::new(response, self.shared.options.watch_idle_timeout)
            }
            _ => Err(ClientError::Decode("the snapshot was answered without a body stream".into())),
        }
    }

    /// Streams committed changes to keys (and services) starting with `prefix`, from log
    /// index `from_index` (the server's choice, usually the next change, when `None`).
    ///
    /// Opening the stream is retried like any call; once open, the stream yields events until
    /// the server closes it (the stream ends) or fails (one `Err`, then the end): a
    /// `compacted` error means `from_index` is no longer kept; after a transport error or
    /// [`ClientError::Timeout`] (no byte for [`ClientOptions::watch_idle_timeout`]) watch
    /// again from the last index seen + 1.
    pub async fn watch(&self, prefix: &str, from_index: Option<u64>) -> Result<WatchStream, ClientError> {
        let mut call = Call::new(Method::GET, &["v1", "watch"]).query("prefix", prefix);
        if let Some(from_index) = from_index {
            call = call.query("from_index", from_index);
        }
        call.streaming = true;
        match self.shared.execute(&call).await? {
            Attempt::Stream(response) => Ok(WatchStream::new(
                response,
                self.shared.options.response_bytes_max,
                self.shared.options.watch_idle_timeout,
            )),
            _ => Err(ClientError::Decode("the watch was answered without a stream".into())),
        }
    }

    // ---- plumbing ----

    fn consistency(&self, given: Option<Consistency>) -> Consistency {
        given.unwrap_or(self.shared.options.consistency)
    }

    async fn read<T: DeserializeOwned>(&self, call: Call) -> Result<T, ClientError> {
        let body = self.shared.execute_body(&call).await?;
        decode(&call, &body)
    }

    async fn admin_write<T: DeserializeOwned>(&self, call: Call) -> Result<T, ClientError> {
        let call = call.write();
        let body = self.shared.execute_body(&call).await?;
        decode(&call, &body)
    }

    /// A write with the next sequence number of the session, held (and so the session's
    /// other writes held back) until every attempt is done.
    async fn session_write<T: DeserializeOwned>(&self, call: Call) -> Result<T, ClientError> {
        let mut call = call.write();
        let body = {
            let mut state = self.session.state.lock().await;
            state.1 += 1;
            call.session = Some(*state);
            match self.shared.execute_body(&call).await {
                Ok(body) => body,
                Err(e) => {
                    if !e.was_applied() {
                        // The write failed or its outcome is unknown: continue in a new session,
                        // so that the next write neither leaves a gap the server cannot tell
                        // from an expired session nor could be taken for this one.
                        let client_id = nonzero_random(self.shared.next_random());
                        *state = (client_id, 0);
                        self.session.client_id.store(client_id, Ordering::Relaxed);
                    }
                    return Err(e);
                }
            }
        };
        decode(&call, &body)
    }
}

impl Shared {
    fn leader(&self) -> Option<Endpoint> {
        self.leader.lock().map(|l| l.clone()).unwrap_or_default()
    }

    fn set_leader(&self, endpoint: Option<Endpoint>) {
        if let Ok(mut leader) = self.leader.lock() {
            *leader = endpoint;
        }
    }

    fn forget_leader(&self, endpoint: &Endpoint) {
        if let Ok(mut leader) = self.leader.lock() {
            if leader.as_ref() == Some(endpoint) {
                *leader = None;
            }
        }
    }

    fn next_random(&self) -> u64 {
        splitmix64(self.rng.fetch_add(0x9e37_79b9_7f4a_7c15, Ordering::Relaxed))
    }

    /// Where a call starts: the known leader, else the current endpoint.
    fn first_target(&self) -> Endpoint {
        if let Some(leader) = self.leader() {
            return leader;
        }
        let n = self.endpoints.len();
        self.endpoints[self.cursor.load(Ordering::Relaxed) % n].clone()
    }

    /// The next endpoint after `failed` (another one when there are several).
    fn next_target(&self, failed: &Endpoint) -> Endpoint {
        let n = self.endpoints.len();
        for _ in 0..n {
            let i = self.cursor.fetch_add(1, Ordering::Relaxed).wrapping_add(1) % n;
            if &self.endpoints[i] != failed || n == 1 {
                return self.endpoints[i].clone();
            }
        }
        failed.clone()
    }

    async fn execute_body(&self, call: &Call) -> Result<Bytes, ClientError> {
        match self.execute(call).await? {
            Attempt::Body(body) => Ok(body),
            _ => Err(ClientError::Decode(format!("{}: unexpected stream", call.describe()))),
        }
    }

    /// Runs a call to completion: attempts, redirects, pauses and retries. Returns
    /// `Attempt::Body` or `Attempt::Stream`.
    async fn execute(&self, call: &Call) -> Result<Attempt, ClientError> {
        let max_retries = self.options.max_retries;
        let mut target = self.first_target();
        let mut retries = 0u32;
        let mut pauses = 0u32;
        let mut redirects_in_a_row = 0u32;
        loop {
            let error = match self.attempt(&target, call).await {
                done @ (Attempt::Body(_) | Attempt::Stream(_)) => {
                    if call.write {
                        self.set_leader(Some(target));
                    }
                    return Ok(done);
                }
                Attempt::Fail(error) => return Err(error),
                Attempt::Redirect { to, error } => {
                    debug!(from = %target, to = %to, call = %call.describe(), "redirected to the leader");
                    self.set_leader(Some(to.clone()));
                    target = to;
                    redirects_in_a_row += 1;
                    error
                }
                Attempt::Retry(error) => {
                    debug!(endpoint = %target, error = %error, call = %call.describe(), "retryable failure");
                    self.forget_leader(&target);
                    target = self.next_target(&target);
                    redirects_in_a_row = 0;
                    error
                }
            };
            if retries >= max_retries {
                return Err(ClientError::RetriesExhausted { attempts: retries + 1, last: Box::new(error) });
            }
            retries += 1;
            // A first redirect goes straight to the named leader; anything else (including
            // nodes pointing at each other) waits first.
            if redirects_in_a_row != 1 {
                let pause = self.options.retry_backoff.delay(pauses, self.next_random());
                pauses = pauses.saturating_add(1);
                tokio::time::sleep(pause).await;
            }
        }
    }

    /// One request to one node, classified.
    async fn attempt(&self, target: &Endpoint, call: &Call) -> Attempt {
        let url = target.url(&call.segments.iter().map(String::as_str).collect::<Vec<_>>(), &call.query);
        let timeout = self.options.request_timeout;
        let exchange = self.exchange(url.clone(), call);
        let (status, location, body) = match tokio::time::timeout(timeout, exchange).await {
            Err(_) => {
                return Attempt::Retry(ClientError::Timeout { endpoint: target.to_string(), after: timeout })
            }
            Ok(Err(ExchangeError::Http(e))) if e.is_timeout() => {
                return Attempt::Retry(ClientError::Timeout { endpoint: target.to_string(), after: timeout })
            }
            Ok(Err(ExchangeError::Http(e))) => {
                return Attempt::Retry(ClientError::Transport { endpoint: target.to_string(), source: e })
            }
            Ok(Err(ExchangeError::TooLarge)) => {
                return Attempt::Fail(ClientError::Decode(format!(
                    "{} at {target}: the answer is over {} bytes",
                    call.describe(),
                    self.options.response_bytes_max
                )))
            }
            Ok(Ok(Ok(response))) => return Attempt::Stream(response),
            Ok(Ok(Err(answer))) => answer,
        };
        if status.is_success() {
            return Attempt::Body(body);
        }
        if status == StatusCode::TEMPORARY_REDIRECT || status == StatusCode::PERMANENT_REDIRECT {
            let error = api_error(status, ErrorCode::NotLeader, "redirected");
            return match location.as_deref().map(|l| Endpoint::from_location(l, &url, self.scheme)) {
                Some(Ok(to)) if &to != target => Attempt::Redirect { to, error },
                _ => Attempt::Retry(error),
            };
        }
        let error = parse_api_error(status, &body);
        if error.code == ErrorCode::NotLeader {
            let hint = error.leader.as_ref().and_then(|l| l.client_addr.as_deref());
            let to = hint.and_then(|addr| Endpoint::parse_as(addr, self.scheme).ok());
            let error = ClientError::Api { status: status.as_u16(), error: Box::new(error) };
            return match to {
                Some(to) if &to != target => Attempt::Redirect { to, error },
                _ => Attempt::Retry(error),
            };
        }
        let retryable = error.is_retryable();
        let error = ClientError::Api { status: status.as_u16(), error: Box::new(error) };
        if retryable {
            Attempt::Retry(error)
        } else {
            Attempt::Fail(error)
        }
    }

    /// Sends the request and reads the answer: `Ok(response)` for a successful streaming
    /// call, else `Err((status, location, body))` with the body read up to the limit.
    #[allow(clippy::type_complexity)]
    async fn exchange(
        &self,
        url: Url,
        call: &Call,
    ) -> Result<Result<reqwest::Response, (StatusCode, Option<String>, Bytes)>, ExchangeError> {
        let http = if call.streaming { &self.streams } else { &self.http };
        let mut request = http.request(call.method.clone(), url);
        request = request.header(
            ACCEPT,
            HeaderValue::from_static(if call.streaming { "text/event-stream" } else { "application/json" }),
        );
        if let Some(body) = &call.body {
            request =
                request.header(CONTENT_TYPE, HeaderValue::from_static("application/json")).body(body.clone());
        }
        if let Some((client_id, seq)) = call.session {
            request = request.header(CLIENT_ID_HEADER, client_id).header(SEQ_HEADER, seq);
        }
        if let Some(token) = &self.options.token {
            // Checked by `ClientOptions::validate`; marked sensitive so that it is never logged.
            if let Ok(mut value) = HeaderValue::from_str(&format!("Bearer {token}")) {
                value.set_sensitive(true);
                request = request.header(AUTHORIZATION, value);
            }
        }
        let mut response = request.send().await.map_err(ExchangeError::Http)?;
        let status = response.status();
        if call.streaming && status.is_success() {
            return Ok(Ok(response));
        }
        let location = response.headers().get(LOCATION).and_then(|v| v.to_str().ok()).map(str::to_owned);
        let limit = self.options.response_bytes_max;
        if response.content_length().is_some_and(|len| len > limit as u64) {
            return Err(ExchangeError::TooLarge);
        }
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(ExchangeError::Http)? {
            if body.len() + chunk.len() > limit {
                return Err(ExchangeError::TooLarge);
            }
            body.extend_from_slice(&chunk);
        }
        Ok(Err((status, location, Bytes::from(body))))
    }
}

fn nonzero_random(seed: u64) -> u64 {
    let id = splitmix64(seed);
    if id == 0 {
        1
    } else {
        id
    }
}

fn consistency_name(c: Consistency) -> &'static str {
    match c {
        Consistency::Linearizable => "linearizable",
        Consistency::Lease => "lease",
        Consistency::Local => "local",
    }
}

fn api_error(status: StatusCode, code: ErrorCode, message: &str) -> ClientError {
    ClientError::Api { status: status.as_u16(), error: Box::new(ApiError::new(code, message)) }
}

/// The `ApiError` of an error answer, or one made from the status when the body is not one.
fn parse_api_error(status: StatusCode, body: &[u8]) -> ApiError {
    if let Ok(error) = serde_json::from_slice::<ApiError>(body) {
        return error;
    }
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    let message = if text.is_empty() {
        status.canonical_reason().unwrap_or("no reason given").to_owned()
    } else {
        truncate_for_message(text)
    };
    ApiError::new(code_for_status(status.as_u16()), message)
}

fn decode<T: DeserializeOwned>(call: &Call, body: &[u8]) -> Result<T, ClientError> {
    serde_json::from_slice(body).map_err(|e| ClientError::Decode(format!("{}: {e}", call.describe())))
}

fn not_found_as_none<T>(result: Result<T, ClientError>) -> Result<Option<T>, ClientError> {
    match result {
        Ok(value) => Ok(Some(value)),
        Err(ClientError::Api { error, .. }) if error.code == ErrorCode::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}
