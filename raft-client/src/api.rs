//! The HTTP/JSON API of `raft-node`, version 1: paths, request and response bodies, and error
//! codes. The server (`raft-node`) and the client ([`Client`](crate::Client)) both use these
//! types, so the two cannot drift apart.
//!
//! | method | path | body | answer |
//! |---|---|---|---|
//! | GET | `/v1/kv/{key}?consistency=` | | [`KeyValue`] |
//! | PUT | `/v1/kv/{key}` | [`PutRequest`] | [`WriteResult`] |
//! | DELETE | `/v1/kv/{key}` | | [`WriteResult`] |
//! | POST | `/v1/cas/{key}` | [`CasRequest`] | [`WriteResult`], or 409 `cas_failed` |
//! | GET | `/v1/kv?prefix=&limit=&consistency=` | | [`KeyList`] |
//! | GET | `/v1/status` | | [`StatusView`] |
//! | GET | `/v1/leader` | | [`LeaderView`] |
//! | GET | `/v1/members` | | [`MembersView`] |
//! | POST | `/v1/members?force=` | [`AddMemberRequest`] | [`MembersView`] |
//! | POST | `/v1/members/{id}/promote?force=` | | [`MembersView`] |
//! | DELETE | `/v1/members/{id}?force=` | | [`MembersView`] |
//! | POST | `/v1/transfer-leader` | [`TransferRequest`] | [`LeaderView`] |
//! | GET | `/v1/log?from=&limit=` | | [`LogView`] |
//! | GET | `/v1/services` | | [`ServiceList`] |
//! | GET, PUT, DELETE | `/v1/services/{name}` | [`ServiceSpec`] (PUT) | [`Service`] / [`WriteResult`] |
//! | POST | `/v1/services/{name}/nodes/{node}/down` | [`NodeDownRequest`] | [`WriteResult`] |
//! | GET | `/v1/balance/{name}?strategy=` | | [`BalanceView`] |
//! | GET | `/v1/watch?prefix=&from_index=` | | server-sent events of [`WatchEvent`] |
//! | GET | `/health`, `/ready`, `/metrics` | | text |
//!
//! Writes may carry a session in the [`CLIENT_ID_HEADER`] and [`SEQ_HEADER`] headers: a
//! retried write with the same client id and sequence number is applied once, and the retry
//! gets the first attempt's answer.
//!
//! Every error is an [`ApiError`] body with a stable [`ErrorCode`].

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Header carrying the client id of a write's session (a random `u64`, decimal).
pub const CLIENT_ID_HEADER: &str = "raft-client-id";
/// Header carrying the sequence number of a write within its session (decimal, from 1).
pub const SEQ_HEADER: &str = "raft-seq";
/// Response header of `GET /v1/snapshot`: the index of the last entry the snapshot covers.
pub const SNAPSHOT_INDEX_HEADER: &str = "raft-snapshot-index";
/// Response header of `GET /v1/snapshot`: the term of the last entry the snapshot covers.
pub const SNAPSHOT_TERM_HEADER: &str = "raft-snapshot-term";

/// How a read is served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Consistency {
    /// Linearizable through ReadIndex (a heartbeat round to a quorum); the default.
    #[default]
    Linearizable,
    /// Linearizable through the leader's lease (needs `lease_read` in the node's config;
    /// falls back to ReadIndex otherwise).
    Lease,
    /// This node's state as it is, without asking anyone: may be stale.
    Local,
}

/// A stored key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyValue {
    /// The key.
    pub key: String,
    /// The value.
    pub value: String,
    /// 1 when created, +1 on every change.
    pub version: u64,
    /// Log index of the write that created the key.
    pub create_index: u64,
    /// Log index of the last write to the key.
    pub mod_index: u64,
}

/// Body of `PUT /v1/kv/{key}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PutRequest {
    /// The new value.
    pub value: String,
}

/// Body of `POST /v1/cas/{key}`: the write happens only if the key is as expected.
///
/// Give `expected_version` (0: the key must not exist) or `expected_value` (`null`: the key
/// must not exist), not both. `value: null` deletes the key.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CasRequest {
    /// The version the key must have.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected_version: Option<u64>,
    /// The value the key must have (`Some(None)`: absent).
    #[serde(default, with = "double_option", skip_serializing_if = "Option::is_none")]
    pub expected_value: Option<Option<String>>,
    /// The new value; `None` deletes the key.
    #[serde(default)]
    pub value: Option<String>,
}

/// The answer to a write.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WriteResult {
    /// Log index of the entry that carried this request. A retried write that the server
    /// answers from its session (it was already applied) has an entry of its own: see
    /// `current.mod_index` for where the write took effect.
    pub index: u64,
    /// The key after the write (`None` after a delete or for non-key writes).
    #[serde(default)]
    pub current: Option<KeyValue>,
    /// The key before the write.
    #[serde(default)]
    pub prev: Option<KeyValue>,
}

/// Answer to `GET /v1/kv?prefix=`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyList {
    /// The keys, in order.
    pub items: Vec<KeyValue>,
    /// More keys match than this page holds (past `limit` or the page's byte bound).
    pub truncated: bool,
    /// The applied index the list was read at.
    pub index: u64,
    /// When `truncated`: the `start_after` of the next page (the last key of this one).
    #[serde(default)]
    pub next_start_after: Option<String>,
}

/// A node's role in the protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RoleView {
    /// Following a leader (or waiting for one).
    Follower,
    /// Running a pre-vote round.
    PreCandidate,
    /// Campaigning.
    Candidate,
    /// The leader.
    Leader,
    /// A non-voting member.
    Learner,
}

/// A member's place in the configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MemberRole {
    /// Votes (in the current configuration, or in either half of a joint one).
    Voter,
    /// Receives the log, does not vote.
    Learner,
}

/// One member of the cluster as a node sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberView {
    /// Node id.
    pub id: u64,
    /// Voter or learner.
    pub role: MemberRole,
    /// Address of its Raft transport, when known.
    pub raft_addr: Option<String>,
    /// Address of its HTTP API, when known.
    pub client_addr: Option<String>,
    /// Its addresses are in the replicated address book: it has run as a member of this
    /// cluster (a node registers itself once started).
    #[serde(default)]
    pub registered: bool,
    /// The leader's next index for it (only on the leader).
    pub next_index: Option<u64>,
    /// The highest index known replicated on it (only on the leader).
    pub match_index: Option<u64>,
    /// How far behind the leader's last index it is (only on the leader).
    pub lag: Option<u64>,
    /// How long ago it last answered the leader, in ms (only on the leader).
    #[serde(default)]
    pub last_contact_ms: Option<u64>,
}

/// Answer to `GET /v1/status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusView {
    /// The cluster id.
    pub cluster: String,
    /// This node.
    pub id: u64,
    /// Current term.
    pub term: u64,
    /// Current role.
    pub role: RoleView,
    /// The leader this node follows.
    pub leader: Option<u64>,
    /// Highest committed index known.
    pub commit_index: u64,
    /// Last index applied to the state machine.
    pub applied_index: u64,
    /// Last index in the log.
    pub last_log_index: u64,
    /// The term of the last entry in the log (0 from nodes that do not report it).
    #[serde(default)]
    pub last_log_term: u64,
    /// Last index covered by the latest snapshot.
    pub snapshot_index: u64,
    /// A hash of the replicated state at `applied_index` (equal on nodes at the same index).
    pub state_hash: String,
    /// Number of keys.
    pub keys: u64,
    /// The state's size: the sum of the byte lengths of every key and value (0 from nodes
    /// that do not report it).
    #[serde(default)]
    pub state_bytes: u64,
    /// Every member.
    pub members: Vec<MemberView>,
    /// A membership change is in progress (joint configuration).
    pub joint: bool,
    /// Target of a leadership transfer in progress.
    pub leadership_transfer: Option<u64>,
    /// The fatal error that stopped the node, if any.
    pub fatal: Option<String>,
    /// How this node's Raft peers are authenticated.
    #[serde(default)]
    pub peer_security: PeerSecurity,
    /// Configuration choices an operator should know about (plaintext peers, ...).
    #[serde(default)]
    pub warnings: Vec<String>,
    /// Set while the node recovers from data its storage lost: the index of the last entry it
    /// had made durable, which its log does not reach yet. Meanwhile it votes only for logs
    /// that reach it and does not campaign; it clears once the leader has sent the entries
    /// again.
    #[serde(default)]
    pub recovering_to_index: Option<u64>,
    /// Set while the node has not started yet: it found an empty data dir and asks the other
    /// members whether the cluster has run before it does anything else. A minimal server
    /// answers meanwhile; the other fields hold nothing (term 0, empty log, no members).
    #[serde(default)]
    pub starting: Option<StartingView>,
    /// The quota of `state_bytes` (`limits.max_state_bytes`; 0 from nodes that do not report
    /// it).
    #[serde(default)]
    pub quota_bytes: u64,
    /// The quota's alarm is on: writes that grow the state get 507 `no_space` until it is
    /// below 90 % of the quota.
    #[serde(default)]
    pub no_space: bool,
    /// The client requests this node answered lately (absent from nodes that do not report
    /// it).
    #[serde(default)]
    pub activity: Option<ActivityView>,
    /// The latest changes of term or leader this node saw, oldest first (at most 16).
    #[serde(default)]
    pub leader_changes: Vec<LeaderChangeView>,
}

/// The client requests a node answered in its last `window_ms` (`StatusView::activity`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActivityView {
    /// The length of the window, in ms (shorter just after the node started).
    pub window_ms: u64,
    /// Writes this node answered once applied, in the window.
    pub writes: u64,
    /// Reads this node answered, in the window.
    pub reads: u64,
    /// Median write latency, in µs (0 without writes).
    pub write_p50_us: u64,
    /// 99th percentile write latency, in µs.
    pub write_p99_us: u64,
    /// Median read latency, in µs (0 without reads).
    pub read_p50_us: u64,
    /// 99th percentile read latency, in µs.
    pub read_p99_us: u64,
}

/// A change of term or leader a node saw (`StatusView::leader_changes`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaderChangeView {
    /// The term from then on.
    pub term: u64,
    /// The leader from then on (`None`: no leader known, e.g. an election is on).
    pub leader: Option<u64>,
    /// When, in ms since the Unix epoch, by this node's clock.
    pub at_unix_ms: u64,
}

/// Answer to `GET /v1/cluster`: every member's status, gathered by the node asked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterView {
    /// The node that gathered the answers.
    pub served_by: u64,
    /// When it gathered them, in ms since the Unix epoch, by its clock.
    pub at_unix_ms: u64,
    /// The leader of the highest term any reachable member reports.
    pub leader: Option<u64>,
    /// One row per member of the serving node's configuration, by id.
    pub members: Vec<ClusterMemberView>,
}

/// One member in a [`ClusterView`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterMemberView {
    /// Node id.
    pub id: u64,
    /// Voter or learner, as the serving node's configuration says.
    pub role: MemberRole,
    /// The HTTP address asked (`None`: unknown).
    pub client_addr: Option<String>,
    /// Its status, when it answered.
    pub status: Option<StatusView>,
    /// Why it did not answer.
    pub error: Option<String>,
    /// How long the question took, in ms.
    pub elapsed_ms: u64,
}

/// What a node that has not started yet holds (`StatusView::starting`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StartingView {
    /// Nothing: its data dir is empty and never held data this node can see.
    Empty,
    /// Its data dir is empty now but held data before (a repair moved damaged files aside).
    HadData,
}

/// How a node's Raft peers are authenticated (`/v1/status`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PeerSecurity {
    /// Mutual TLS: each peer proves its node id with a certificate of the cluster's CA.
    #[default]
    MutualTls,
    /// Plaintext (`insecure_plaintext_peers = true`): anyone who reaches the Raft port can act
    /// as a member.
    InsecurePlaintext,
}

/// Answer to `GET /v1/leader` and `POST /v1/transfer-leader`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaderView {
    /// The leader's id, when known.
    pub leader: Option<u64>,
    /// The leader's HTTP address, when known.
    pub client_addr: Option<String>,
    /// The term.
    pub term: u64,
}

/// Answer to the members endpoints.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MembersView {
    /// Every member.
    pub members: Vec<MemberView>,
    /// A membership change is in progress (joint configuration).
    pub joint: bool,
}

/// Body of `POST /v1/members`: add (or update the addresses of) a member.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddMemberRequest {
    /// The new member's id.
    pub id: u64,
    /// Address of its Raft transport.
    pub raft_addr: String,
    /// Address of its HTTP API.
    pub client_addr: String,
    /// Add it as a voter (it is first added as a learner and promoted once caught up) or
    /// keep it a learner.
    #[serde(default = "default_member_role")]
    pub role: MemberRole,
}

fn default_member_role() -> MemberRole {
    MemberRole::Learner
}

/// Body of `POST /v1/transfer-leader`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransferRequest {
    /// The node to hand leadership to; `None` picks the most caught-up voter.
    #[serde(default)]
    pub to: Option<u64>,
}

/// One log entry, summarized.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogEntryView {
    /// Index.
    pub index: u64,
    /// Term.
    pub term: u64,
    /// `blank`, `command` or `membership`.
    pub kind: String,
    /// A readable summary of the payload.
    pub summary: String,
}

/// Answer to `GET /v1/log`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogView {
    /// The entries, in order.
    pub entries: Vec<LogEntryView>,
    /// First index still in the log (earlier ones are compacted into the snapshot).
    pub first_index: u64,
    /// Last index in the log.
    pub last_index: u64,
    /// Commit index.
    pub commit_index: u64,
}

/// One node of a service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceNode {
    /// Node name, unique within the service.
    pub id: String,
    /// Where it is reached.
    pub address: String,
    /// Balancing weight; 0 is never picked.
    #[serde(default = "default_priority")]
    pub priority: u32,
    /// Free-form attributes.
    #[serde(default)]
    pub attributes: BTreeMap<String, String>,
    /// Marked down: never picked.
    #[serde(default)]
    pub down: bool,
}

fn default_priority() -> u32 {
    1
}

/// Body of `PUT /v1/services/{name}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceSpec {
    /// The service's type.
    #[serde(rename = "type")]
    pub kind: String,
    /// Its nodes.
    pub nodes: Vec<ServiceNode>,
}

/// A registered service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Service {
    /// Name.
    pub name: String,
    /// The service's type.
    #[serde(rename = "type")]
    pub kind: String,
    /// Its nodes.
    pub nodes: Vec<ServiceNode>,
}

/// Answer to `GET /v1/services`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceList {
    /// Every service, by name.
    pub services: Vec<Service>,
}

/// Body of `POST /v1/services/{name}/nodes/{node}/down`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeDownRequest {
    /// Mark it down (`true`) or up again (`false`).
    pub down: bool,
}

/// How `balance` picks a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BalanceStrategy {
    /// Smooth weighted round-robin (deterministic, evenly interleaved).
    #[default]
    RoundRobin,
    /// Weighted random.
    Random,
}

/// Answer to `GET /v1/balance/{name}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BalanceView {
    /// The service.
    pub service: String,
    /// The node picked.
    pub node: ServiceNode,
}

/// What a watch event reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WatchKind {
    /// A key was written.
    Put,
    /// A key was deleted.
    Delete,
    /// A service was registered or updated.
    ServiceRegistered,
    /// A service was removed.
    ServiceRemoved,
    /// A member's addresses changed.
    MemberAddress,
}

/// One committed change, as streamed by `GET /v1/watch` (the event's `data`, in JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatchEvent {
    /// Log index of the change.
    pub index: u64,
    /// What changed.
    pub kind: WatchKind,
    /// The key or service name.
    pub key: String,
    /// The new value (puts).
    #[serde(default)]
    pub value: Option<String>,
    /// The key's version after the change (puts).
    #[serde(default)]
    pub version: Option<u64>,
}

/// A stable error code; new codes may be added, existing ones keep their meaning.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// This node is not the leader and did not forward (HTTP 421, or a 307 redirect).
    NotLeader,
    /// No leader is known (HTTP 503).
    NoLeader,
    /// No quorum confirmed the request in time (HTTP 503).
    NoQuorum,
    /// The request timed out; a write's outcome is unknown (HTTP 504).
    Timeout,
    /// Too many requests in flight (HTTP 503): retry later.
    Busy,
    /// The write may or may not have been applied (the node stopped or lost contact with the
    /// leader after the write left it; HTTP 503). Retry it in the same session: a session
    /// write is applied at most once.
    UnknownOutcome,
    /// Malformed request (HTTP 400).
    BadRequest,
    /// The path exists but not with this method (HTTP 405, with `Allow`).
    MethodNotAllowed,
    /// The key or value is over the configured limit (HTTP 413).
    TooLarge,
    /// No such key, service, member or node (HTTP 404).
    NotFound,
    /// The compare-and-swap's expectation did not hold (HTTP 409).
    CasFailed,
    /// Another membership change or leadership transfer is in progress (HTTP 409).
    Conflict,
    /// The node to make a voter has not caught up with the leader, or does not answer it
    /// (HTTP 409); retry once it has.
    NotCaughtUp,
    /// The membership change would leave fewer than a majority of the voters caught up and
    /// answering the leader (HTTP 409); `force=true` does it anyway.
    UnsafeChange,
    /// A write with this session's older sequence number (HTTP 409).
    StaleSequence,
    /// The server no longer remembers this session (it was evicted, or the session's first
    /// write was never applied): the write was not applied, but an earlier write of the session
    /// may have been. Start a new session (HTTP 409).
    SessionExpired,
    /// The watch fell behind or asked for changes no longer kept (HTTP 410).
    Compacted,
    /// The node is shutting down or stopped (HTTP 503).
    Unavailable,
    /// No token, or one the node does not know (HTTP 401): set `ClientOptions::token`.
    Unauthenticated,
    /// The token's role does not allow this request (HTTP 403); the message names the role
    /// it needs.
    Forbidden,
    /// The node's disk is full (HTTP 507): the write was not proposed. The node goes on by
    /// itself once space returns; another node may take the write meanwhile.
    NoSpace,
    /// Anything else (HTTP 500).
    Internal,
    /// A code this client does not know (sent by a newer server); the HTTP status tells more.
    #[serde(other)]
    Unknown,
}

impl ErrorCode {
    /// The HTTP status the server answers this code with.
    pub fn http_status(self) -> u16 {
        match self {
            ErrorCode::NotLeader => 421,
            ErrorCode::NoLeader
            | ErrorCode::NoQuorum
            | ErrorCode::Busy
            | ErrorCode::UnknownOutcome
            | ErrorCode::Unavailable => 503,
            ErrorCode::Timeout => 504,
            ErrorCode::BadRequest => 400,
            ErrorCode::MethodNotAllowed => 405,
            ErrorCode::TooLarge => 413,
            ErrorCode::NotFound => 404,
            ErrorCode::CasFailed
            | ErrorCode::Conflict
            | ErrorCode::NotCaughtUp
            | ErrorCode::UnsafeChange
            | ErrorCode::StaleSequence
            | ErrorCode::SessionExpired => 409,
            ErrorCode::Compacted => 410,
            ErrorCode::NoSpace => 507,
            ErrorCode::Unauthenticated => 401,
            ErrorCode::Forbidden => 403,
            ErrorCode::Internal | ErrorCode::Unknown => 500,
        }
    }

    /// The code an HTTP status stands for, for answers that carry no `ApiError` (a proxy's
    /// error page, or an HTTP-level refusal).
    pub fn for_status(status: u16) -> ErrorCode {
        match status {
            421 => ErrorCode::NotLeader,
            503 => ErrorCode::Unavailable,
            502 | 504 => ErrorCode::Timeout,
            429 => ErrorCode::Busy,
            413 => ErrorCode::TooLarge,
            404 => ErrorCode::NotFound,
            405 => ErrorCode::MethodNotAllowed,
            410 => ErrorCode::Compacted,
            507 => ErrorCode::NoSpace,
            409 => ErrorCode::Conflict,
            401 => ErrorCode::Unauthenticated,
            403 => ErrorCode::Forbidden,
            400..=499 => ErrorCode::BadRequest,
            _ => ErrorCode::Internal,
        }
    }

    /// Whether a client may retry the request elsewhere or later (with the same session
    /// sequence number for writes).
    pub fn is_retryable(self) -> bool {
        matches!(
            self,
            ErrorCode::NotLeader
                | ErrorCode::NoLeader
                | ErrorCode::NoQuorum
                | ErrorCode::Timeout
                | ErrorCode::Busy
                | ErrorCode::UnknownOutcome
                | ErrorCode::Unavailable
                | ErrorCode::NotCaughtUp
                | ErrorCode::NoSpace
        )
    }
}

/// The body of every error answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiError {
    /// Stable code.
    pub code: ErrorCode,
    /// Human-readable explanation.
    pub message: String,
    /// The leader, when the code is `not_leader` and it is known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leader: Option<LeaderView>,
    /// The key's current state, for `cas_failed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current: Option<KeyValue>,
    /// For `no_space` from the state's quota (not a full disk): the quota and the state's
    /// size. Trying again does not help (the refusal was applied by every replica); delete or
    /// shrink data first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quota: Option<QuotaView>,
}

/// The state's quota and size, in a `no_space` refusal ([`ApiError::quota`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuotaView {
    /// The quota, in bytes of keys and values.
    pub quota_bytes: u64,
    /// The state's size when the write was refused.
    pub state_bytes: u64,
}

impl ApiError {
    /// An error with a code and message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self { code, message: message.into(), leader: None, current: None, quota: None }
    }

    /// Whether trying the request again may succeed: the code is retryable and the error is
    /// not a quota refusal.
    pub fn is_retryable(&self) -> bool {
        self.code.is_retryable() && self.quota.is_none()
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: {}",
            serde_json::to_string(&self.code).unwrap_or_default().trim_matches('"'),
            self.message
        )
    }
}

/// Serde helper telling a missing field (`None`) from an explicit `null` (`Some(None)`).
mod double_option {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(value: &Option<Option<String>>, s: S) -> Result<S::Ok, S::Error> {
        value.serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Option<String>>, D::Error> {
        Option::<String>::deserialize(d).map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cas_request_tells_missing_from_null() {
        let missing: CasRequest = serde_json::from_str(r#"{"value":"x"}"#).expect("parses");
        assert_eq!(missing.expected_value, None);
        let null: CasRequest =
            serde_json::from_str(r#"{"expected_value":null,"value":"x"}"#).expect("parses");
        assert_eq!(null.expected_value, Some(None));
        let some: CasRequest = serde_json::from_str(r#"{"expected_value":"a"}"#).expect("parses");
        assert_eq!(some.expected_value, Some(Some("a".into())));
        assert_eq!(some.value, None);
        let back = serde_json::to_string(&null).expect("serializes");
        assert_eq!(serde_json::from_str::<CasRequest>(&back).expect("parses"), null);
    }

    #[test]
    fn error_codes_are_snake_case_and_map_to_statuses() {
        let e = ApiError::new(ErrorCode::NotLeader, "follower");
        let json = serde_json::to_string(&e).expect("serializes");
        assert!(json.contains(r#""code":"not_leader""#), "{json}");
        assert_eq!(ErrorCode::CasFailed.http_status(), 409);
        assert_eq!(ErrorCode::TooLarge.http_status(), 413);
        assert!(ErrorCode::NoQuorum.is_retryable());
        assert!(!ErrorCode::CasFailed.is_retryable());
        assert_eq!(e.to_string(), "not_leader: follower");
    }

    #[test]
    fn unknown_fields_are_refused() {
        assert!(serde_json::from_str::<PutRequest>(r#"{"value":"a","vlaue":"b"}"#).is_err());
    }
}
