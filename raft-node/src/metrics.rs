//! Prometheus metrics: the protocol's state (refreshed at each scrape), request latencies and
//! transport counters, served as text on `/metrics`.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use std::time::{Duration, Instant};

use prometheus_client::registry::Registry;
use raft_client::api::ActivityView;
use raft_core::{NodeStatus, Role};

use crate::recent::{RecentRequests, RequestKind};

/// Transport counters, whatever the transport.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TransportCounters {
    /// Messages sent.
    pub sent: u64,
    /// Messages received.
    pub received: u64,
    /// Messages dropped because a peer's queue was full.
    pub dropped_queue_full: u64,
    /// Messages dropped for another reason (oversized, misaddressed).
    pub dropped_other: u64,
    /// Connections refused (handshake, TLS, identity, limit).
    pub refused: u64,
    /// Inbound connections closed for a bad frame.
    pub bad_frames: u64,
}

/// Labels of per-peer gauges.
#[derive(Debug, Clone, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
struct PeerLabel {
    peer: u64,
}

/// Labels of per-operation histograms.
#[derive(Debug, Clone, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
struct OpLabel {
    op: &'static str,
}

/// Labels of the discovery counter.
#[derive(Debug, Clone, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
struct OutcomeLabel {
    outcome: &'static str,
}

/// The node's metrics.
pub struct Metrics {
    registry: Registry,
    term: Gauge,
    is_leader: Gauge,
    role: Gauge,
    commit_index: Gauge,
    applied_index: Gauge,
    last_log_index: Gauge,
    snapshot_index: Gauge,
    snapshot_bytes: Gauge,
    snapshots: Gauge,
    follower_match_lag: Family<PeerLabel, Gauge>,
    keys: Gauge,
    state_bytes: Gauge,
    sessions: Gauge,
    transport_sent: Gauge,
    transport_received: Gauge,
    transport_dropped_queue_full: Gauge,
    transport_dropped_other: Gauge,
    transport_refused: Gauge,
    transport_bad_frames: Gauge,
    /// Absurd Raft messages the protocol dropped.
    dropped_messages: Gauge,
    /// 1 while the node recovers from data its storage lost.
    recovering: Gauge,
    /// 1 while writes are refused for lack of disk space.
    storage_full: Gauge,
    proposal_seconds: Family<OpLabel, Histogram>,
    read_seconds: Family<OpLabel, Histogram>,
    request_errors: Family<OpLabel, Counter>,
    discovery_datagrams: Family<OutcomeLabel, Counter>,
    /// The requests of the last seconds, for `/v1/status` and the cluster page.
    recent: RecentRequests,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

fn latency_histogram() -> Histogram {
    // 100 µs .. ~6.5 s.
    Histogram::new(exponential_buckets(0.000_1, 2.0, 17))
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("raft");
        let metrics = Self {
            term: Gauge::default(),
            is_leader: Gauge::default(),
            role: Gauge::default(),
            commit_index: Gauge::default(),
            applied_index: Gauge::default(),
            last_log_index: Gauge::default(),
            snapshot_index: Gauge::default(),
            snapshot_bytes: Gauge::default(),
            snapshots: Gauge::default(),
            follower_match_lag: Family::default(),
            keys: Gauge::default(),
            state_bytes: Gauge::default(),
            sessions: Gauge::default(),
            transport_sent: Gauge::default(),
            transport_received: Gauge::default(),
            transport_dropped_queue_full: Gauge::default(),
            transport_dropped_other: Gauge::default(),
            transport_refused: Gauge::default(),
            transport_bad_frames: Gauge::default(),
            dropped_messages: Gauge::default(),
            recovering: Gauge::default(),
            storage_full: Gauge::default(),
            proposal_seconds: Family::new_with_constructor(latency_histogram),
            read_seconds: Family::new_with_constructor(latency_histogram),
            request_errors: Family::default(),
            discovery_datagrams: Family::default(),
            recent: RecentRequests::default(),
            registry: Registry::default(),
        };
        let r = &mut registry;
        r.register("term", "Current term", metrics.term.clone());
        r.register(
            "protocol_dropped_messages",
            "Absurd Raft messages dropped since start (a term past the limit, misaddressed, malformed)",
            metrics.dropped_messages.clone(),
        );
        r.register(
            "recovering",
            "1 while the node recovers from data its storage lost (its votes vouch only for logs reaching what it had)",
            metrics.recovering.clone(),
        );
        r.register(
            "storage_full",
            "1 while the disk is full: proposals are refused and the headroom reserve is released \
             (cleared by itself once space returns and the reserve is taken again)",
            metrics.storage_full.clone(),
        );
        r.register("is_leader", "1 on the leader, else 0", metrics.is_leader.clone());
        r.register("role", "Role: 0 follower, 1 pre-candidate, 2 candidate, 3 leader", metrics.role.clone());
        r.register("commit_index", "Highest committed index known", metrics.commit_index.clone());
        r.register("applied_index", "Last index applied to the state machine", metrics.applied_index.clone());
        r.register("last_log_index", "Last index in the log", metrics.last_log_index.clone());
        r.register(
            "snapshot_index",
            "Last index covered by the latest snapshot",
            metrics.snapshot_index.clone(),
        );
        r.register("snapshot_bytes", "Size of the latest snapshot", metrics.snapshot_bytes.clone());
        r.register("snapshots", "Snapshots taken or installed since start", metrics.snapshots.clone());
        r.register(
            "follower_lag_entries",
            "Leader only: entries between the leader's last index and a follower's match index",
            metrics.follower_match_lag.clone(),
        );
        r.register("kv_keys", "Keys in the store", metrics.keys.clone());
        r.register(
            "kv_state_bytes",
            "The state's size: the sum of the byte lengths of every key and value",
            metrics.state_bytes.clone(),
        );
        r.register("kv_sessions", "Client sessions remembered", metrics.sessions.clone());
        r.register("transport_sent", "Messages sent to peers", metrics.transport_sent.clone());
        r.register("transport_received", "Messages received from peers", metrics.transport_received.clone());
        r.register(
            "transport_dropped_queue_full",
            "Messages dropped because a peer's queue was full",
            metrics.transport_dropped_queue_full.clone(),
        );
        r.register(
            "transport_dropped_other",
            "Messages dropped as oversized or misaddressed",
            metrics.transport_dropped_other.clone(),
        );
        r.register("transport_refused", "Connections refused", metrics.transport_refused.clone());
        r.register(
            "transport_bad_frames",
            "Connections closed for a bad frame",
            metrics.transport_bad_frames.clone(),
        );
        r.register(
            "proposal_seconds",
            "Time from receiving a write to its answer (committed and applied)",
            metrics.proposal_seconds.clone(),
        );
        r.register("read_seconds", "Time from receiving a read to its answer", metrics.read_seconds.clone());
        r.register(
            "request_errors",
            "Client requests answered with an error, by code",
            metrics.request_errors.clone(),
        );
        r.register(
            "discovery_datagrams",
            "Discovery datagrams by outcome: sent, send_failed, member, same_id, other_cluster, malformed, oversized",
            metrics.discovery_datagrams.clone(),
        );
        Self { registry, ..metrics }
    }

    /// Records a write's latency.
    pub fn observe_proposal(&self, op: &'static str, latency: Duration) {
        self.proposal_seconds.get_or_create(&OpLabel { op }).observe(latency.as_secs_f64());
        self.recent.record(RequestKind::Write, latency, Instant::now());
    }

    /// Records a read's latency.
    pub fn observe_read(&self, op: &'static str, latency: Duration) {
        self.read_seconds.get_or_create(&OpLabel { op }).observe(latency.as_secs_f64());
        self.recent.record(RequestKind::Read, latency, Instant::now());
    }

    /// The requests answered in the last [`crate::recent::WINDOW_SECONDS`].
    pub fn activity(&self) -> ActivityView {
        self.recent.view(Instant::now())
    }

    /// Counts an error answer by its code.
    pub fn count_error(&self, code: &'static str) {
        self.request_errors.get_or_create(&OpLabel { op: code }).inc();
    }

    /// Counts a discovery datagram sent or received, by outcome.
    pub fn count_discovery(&self, outcome: &'static str) {
        self.discovery_datagrams.get_or_create(&OutcomeLabel { outcome }).inc();
    }

    /// How many discovery datagrams had `outcome` (0 when none).
    pub fn discovery_count(&self, outcome: &'static str) -> u64 {
        self.discovery_datagrams.get(&OutcomeLabel { outcome }).map(|c| c.get()).unwrap_or(0)
    }

    /// Records the latest snapshot.
    pub fn set_snapshot(&self, bytes: u64, taken: u64) {
        self.snapshot_bytes.set(clamp(bytes));
        self.snapshots.set(clamp(taken));
    }

    /// Refreshes the gauges and encodes everything in the Prometheus text format.
    pub fn render(&self, status: &NodeStatus, kv: &raft_kv::KvStats, transport: TransportCounters) -> String {
        let p = &status.protocol;
        self.term.set(clamp(p.term));
        self.dropped_messages.set(clamp(p.dropped_messages));
        self.recovering.set(i64::from(p.recovering_to.is_some()));
        self.storage_full.set(i64::from(status.storage_full));
        let leader = p.role == Role::Leader;
        self.is_leader.set(i64::from(leader));
        self.role.set(role_number(p.role));
        self.commit_index.set(clamp(p.commit_index));
        self.applied_index.set(clamp(p.applied_index));
        self.last_log_index.set(clamp(p.last_log_id.index));
        self.snapshot_index.set(clamp(p.snapshot.index));
        self.follower_match_lag.clear();
        for f in &p.followers {
            let lag = p.last_log_id.index.saturating_sub(f.match_index);
            self.follower_match_lag.get_or_create(&PeerLabel { peer: f.id }).set(clamp(lag));
        }
        self.keys.set(clamp(kv.keys as u64));
        self.state_bytes.set(clamp(kv.state_bytes));
        self.sessions.set(clamp(kv.sessions as u64));
        self.transport_sent.set(clamp(transport.sent));
        self.transport_received.set(clamp(transport.received));
        self.transport_dropped_queue_full.set(clamp(transport.dropped_queue_full));
        self.transport_dropped_other.set(clamp(transport.dropped_other));
        self.transport_refused.set(clamp(transport.refused));
        self.transport_bad_frames.set(clamp(transport.bad_frames));
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

fn clamp(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn role_number(role: Role) -> i64 {
    match role {
        Role::Follower => 0,
        Role::PreCandidate => 1,
        Role::Candidate => 2,
        Role::Leader => 3,
    }
}
