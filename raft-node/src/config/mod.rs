//! The node's TOML config file: parsing, single-key overrides and validation.
//!
//! [`NodeConfig::load`] reads the file, applies overrides (`--set key=value` flags and
//! `RAFT_NODE__SECTION__KEY` environment variables), deserializes it (unknown keys are errors)
//! and validates it as a whole: every problem is reported at once, each with its key and
//! reason, and nothing on disk is touched before the config is known to be good.
//! `raft-node/node.example.toml` documents every key.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Prefix of environment variables that override config keys: `RAFT_NODE__RAFT__HEARTBEAT_INTERVAL_MS=30`
/// sets `raft.heartbeat_interval_ms`. Sections are separated by a double underscore.
pub const ENV_PREFIX: &str = "RAFT_NODE__";

/// Which transport carries Raft messages between nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TransportKind {
    /// TCP, optionally with mutual TLS (`[tls]`).
    #[default]
    Tcp,
    /// QUIC with mutual TLS (`[tls]` required).
    Quic,
}

/// Where the log and hard state live.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StorageKind {
    /// RocksDB under `data_dir`, every acknowledged write synced.
    #[default]
    Rocks,
    /// In memory: everything is lost when the process stops (tests and demos only).
    Mem,
}

/// A member of the initial configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemberConfig {
    /// Node id (non-zero, unique).
    pub id: u64,
    /// Address of its Raft transport.
    pub raft_addr: SocketAddr,
    /// Address of its HTTP API.
    pub client_addr: SocketAddr,
}

/// Certificate files for mutual TLS between nodes (PEM). `cargo xtask certs` writes them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// The cluster CA's certificate.
    pub ca_cert: PathBuf,
    /// This node's certificate (identity `node-<id>.<cluster>`), signed by the CA.
    pub cert: PathBuf,
    /// This node's private key.
    pub key: PathBuf,
}

/// HTTPS on the client API (PEM files). `cargo xtask certs` writes dev ones (`api-<id>.pem`,
/// names `localhost`, `127.0.0.1` and `::1`). Certificates, keys and CAs are read again on
/// SIGHUP.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiTlsConfig {
    /// The API's certificate chain: its names are what clients connect to.
    pub cert: PathBuf,
    /// The API's private key.
    pub key: PathBuf,
    /// The CA of the other members' API certificates, which this node trusts when it calls
    /// them (the lost-data check, joining, the cluster page). Unset: `[tls].ca_cert`.
    #[serde(default)]
    pub ca_cert: Option<PathBuf>,
    /// Verify client certificates against this CA: a client that presents one signed by it
    /// gets the role `[[auth.certificates]]` gives its name; one signed by another CA is
    /// refused at the handshake. Clients without a certificate still connect and present
    /// tokens (and `/health`, `/ready`, `/metrics` stay open to probes) unless
    /// `require_client_certificate` is set. This node presents `cert` to the other members.
    #[serde(default)]
    pub client_ca: Option<PathBuf>,
    /// With `client_ca`: refuse, at the TLS handshake, every client without a certificate
    /// from it (probes then need one too). Default `false`.
    #[serde(default)]
    pub require_client_certificate: bool,
}

/// What a client token may do. Each role includes the ones before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientRole {
    /// Reads: keys, services, status, members, leader, watch.
    Read,
    /// Reads and writes of keys and services.
    Write,
    /// Everything: membership changes, leadership transfer, the log view, snapshot downloads.
    Admin,
}

impl std::fmt::Display for ClientRole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ClientRole::Read => "read",
            ClientRole::Write => "write",
            ClientRole::Admin => "admin",
        })
    }
}

/// A client token: its name (in logs), its role, and the SHA-256 of the token (hex), never the
/// token itself. `raft-node new-token` prints a fresh token with its hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    /// Who holds it (logged with every admin operation).
    pub name: String,
    /// What it may do.
    pub role: ClientRole,
    /// SHA-256 of the token, 64 hex digits.
    pub sha256: String,
}

/// A role for the holders of a client certificate (with `[api_tls].client_ca`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertificateRoleConfig {
    /// The certificate's name: one of its DNS subject alternative names, or its common name
    /// when it has none.
    pub name: String,
    /// What its holder may do without a token.
    pub role: ClientRole,
}

/// Client authentication: bearer tokens with roles, and client certificates with roles.
/// Required unless `insecure_open_client_api` is set. Re-read on SIGHUP.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// The tokens the client API accepts.
    #[serde(default)]
    pub tokens: Vec<TokenConfig>,
    /// Roles of client certificates (needs `[api_tls].client_ca`). A request with a token is
    /// judged by the token.
    #[serde(default)]
    pub certificates: Vec<CertificateRoleConfig>,
    /// Serve `/health`, `/ready` and `/metrics` without a token (for probes and scrapers).
    #[serde(default = "default_true")]
    pub open_ops: bool,
    /// A file holding the token this node presents to other members' APIs when it joins a
    /// running cluster (an `admin` token).
    #[serde(default)]
    pub token_file: Option<PathBuf>,
}

/// Limits of the client API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Longest key, in bytes.
    pub max_key_bytes: usize,
    /// Longest value, in bytes.
    pub max_value_bytes: usize,
    /// Largest request body, in bytes.
    pub max_body_bytes: usize,
    /// How long a client request may take before it fails with `timeout`.
    pub request_timeout_ms: u64,
    /// Most keys one list request returns.
    pub max_list: usize,
    /// Most client requests served at once; more wait up to `slot_wait_ms`, then get 503
    /// `busy`.
    pub max_concurrent_requests: usize,
    /// How long a request waits for one of the `max_concurrent_requests` slots.
    pub slot_wait_ms: u64,
    /// Most client connections open at once; more wait in the listen backlog. Lowered at
    /// start to the open-file limit minus 256 descriptors kept for Raft and storage.
    pub max_connections: usize,
    /// A request's headers must arrive within this time (from the connection's start or
    /// the previous response: idle keep-alive connections are closed after it too).
    pub header_read_timeout_ms: u64,
    /// A request's body must arrive within this time; it is read before the request takes
    /// a slot, so slow senders hold none.
    pub body_read_timeout_ms: u64,
    /// Most watch streams open at once.
    /// (At most half the client connections allowed, so that watchers cannot take them all.)
    pub max_watchers: usize,
    /// How much lower than the node's the priority of the threads that send watch streams is,
    /// as a nice increment (0 to 19; the result is at most 19): a connection whose first
    /// request is a watch is served on threads of their own, so that a flood of watch events
    /// gets only the CPU time the Raft path leaves. 0: the node's own priority (the streams
    /// still have threads of their own).
    pub watch_nice: i32,
    /// Most client sessions (idempotent writers) the state machine remembers.
    pub max_sessions: usize,
    /// Committed changes kept for watches that resume from an index.
    pub watch_history: usize,
    /// The quota of the replicated key-value state, in bytes of keys and values (default
    /// 2 GiB, as etcd's). A write that would grow the state past it gets 507 `no_space` and
    /// raises the alarm, under which no write may grow the state until it is below 90 % of
    /// the quota; deletes and writes that do not grow it go on. Enforced where entries are
    /// applied: it **must be equal on every node** (like `max_sessions`).
    pub max_state_bytes: u64,
    /// Most bytes of keys and values one list page returns, as JSON strings (at least one
    /// pair); the page says where the next one starts.
    pub max_list_bytes: usize,
    /// Most bytes of cached responses the client sessions keep (a response may hold a whole
    /// value); least recently used sessions are evicted past it. Like `max_sessions`, it
    /// **must be equal on every node**.
    pub max_session_bytes: u64,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_key_bytes: 4 * 1024,
            max_value_bytes: 1024 * 1024,
            max_body_bytes: 2 * 1024 * 1024,
            request_timeout_ms: 5_000,
            max_list: 10_000,
            max_concurrent_requests: 4_096,
            slot_wait_ms: 1_000,
            max_connections: 4_096,
            header_read_timeout_ms: 10_000,
            body_read_timeout_ms: 10_000,
            max_watchers: 1_024,
            watch_nice: 10,
            max_sessions: 100_000,
            watch_history: 10_000,
            max_state_bytes: raft_kv::DEFAULT_MAX_STATE_BYTES,
            max_list_bytes: 4 * 1024 * 1024,
            max_session_bytes: raft_kv::DEFAULT_MAX_SESSION_BYTES,
        }
    }
}

/// Output format of the logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Logging.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// A `tracing` filter: `info`, `raft_core=debug,info`, ... (`RUST_LOG` wins when set).
    pub level: String,
    /// Text or JSON lines.
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self { level: "info".into(), format: LogFormat::Text }
    }
}

/// Transport tunables (both transports).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NetworkConfig {
    /// Hard limit on one frame, in bytes (snapshot chunks must fit under it).
    pub max_frame_bytes: u32,
    /// Most messages queued for one peer; more are dropped (Raft retries).
    pub peer_queue_max: usize,
    /// Keep-alive interval (TCP keep-alive frames, QUIC keep-alive packets).
    pub keep_alive_ms: u64,
    /// Idle timeout (both transports): a connection silent this long is closed and re-made.
    pub idle_timeout_ms: u64,
}

impl Default for NetworkConfig {
    fn default() -> Self {
        Self {
            max_frame_bytes: 16 * 1024 * 1024,
            peer_queue_max: 4_096,
            keep_alive_ms: 1_000,
            idle_timeout_ms: 10_000,
        }
    }
}

/// Discovery of peers on the local network by UDP multicast (off by default).
///
/// A node with discovery on announces itself (cluster, id, addresses) to `group` every
/// `interval_ms` and listens there. A node that starts with an empty data dir and neither
/// `members` nor `join` listens for up to `listen_ms` and joins through the client addresses
/// of its cluster's nodes that it heard.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DiscoveryConfig {
    /// Announce this node and listen for others.
    pub enabled: bool,
    /// The IPv4 multicast group and UDP port of the announcements.
    pub group: SocketAddr,
    /// The local IPv4 address to send and receive on; unset: the IP of `raft_addr`.
    pub interface: Option<IpAddr>,
    /// How often a node announces itself.
    pub interval_ms: u64,
    /// How long a node with nothing else to join through listens before it gives up.
    pub listen_ms: u64,
}

/// The default discovery group: administratively scoped (239/8), UDP port 7946.
pub const DEFAULT_DISCOVERY_GROUP: SocketAddr =
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(239, 255, 77, 1)), 7946);

impl Default for DiscoveryConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            group: DEFAULT_DISCOVERY_GROUP,
            interface: None,
            interval_ms: 1_000,
            listen_ms: 10_000,
        }
    }
}

impl DiscoveryConfig {
    /// The interface to send and receive on: `interface`, else the IP of `raft_addr` (`None`
    /// when that is not IPv4).
    pub fn interface_for(&self, raft_addr: SocketAddr) -> Option<Ipv4Addr> {
        match self.interface.unwrap_or(raft_addr.ip()) {
            IpAddr::V4(ip) => Some(ip),
            IpAddr::V6(_) => None,
        }
    }

    /// The problems of this section, given the node's own addresses.
    fn problems(&self, raft_addr: SocketAddr, client_addr: SocketAddr, bad: &mut impl FnMut(&str, String)) {
        match self.group {
            SocketAddr::V4(group) if group.ip().is_multicast() && group.port() != 0 => {}
            SocketAddr::V4(group) if group.port() == 0 => {
                bad("discovery.group", "the port must be non-zero".into())
            }
            _ => bad(
                "discovery.group",
                format!(
                    "{} is not an IPv4 multicast address (224.0.0.0/4, e.g. 239.255.77.1:7946)",
                    self.group
                ),
            ),
        }
        match self.interface {
            Some(IpAddr::V6(_)) => bad("discovery.interface", "must be an IPv4 address".into()),
            Some(IpAddr::V4(ip)) if ip.is_multicast() || ip.is_broadcast() => {
                bad("discovery.interface", "must be a local unicast address".into())
            }
            None if self.enabled && self.interface_for(raft_addr).is_none() => bad(
                "discovery.interface",
                "raft_addr is IPv6: set an IPv4 interface to send announcements on".into(),
            ),
            _ => {}
        }
        if !(10..=60_000).contains(&self.interval_ms) {
            bad("discovery.interval_ms", "must be 10 to 60000".into());
        }
        if self.listen_ms < self.interval_ms.saturating_mul(2) || self.listen_ms > 600_000 {
            bad(
                "discovery.listen_ms",
                "must be at least twice discovery.interval_ms (an announcement may be lost) and at most 600000"
                    .into(),
            );
        }
        if self.enabled {
            for (key, addr) in [("raft_addr", raft_addr), ("client_addr", client_addr)] {
                if addr.ip().is_unspecified() {
                    bad(key, format!("{addr} cannot be announced: with discovery on, give a specific IP"));
                }
            }
        }
    }
}

/// The whole config file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// The cluster's id; connections and data dirs of other clusters are refused.
    pub cluster: String,
    /// This node's id (non-zero).
    pub id: u64,
    /// Where the Raft transport listens.
    pub raft_addr: SocketAddr,
    /// The address other nodes dial for this node's Raft transport, when it is not
    /// `raft_addr` (behind NAT, a port mapping or a proxy). This node's `members` entry, its
    /// join request and the address book carry it. Unset: `raft_addr`.
    #[serde(default)]
    pub raft_advertise_addr: Option<SocketAddr>,
    /// Where the HTTP API listens.
    pub client_addr: SocketAddr,
    /// Where RocksDB keeps its files.
    pub data_dir: PathBuf,
    /// TCP or QUIC.
    #[serde(default)]
    pub transport: TransportKind,
    /// RocksDB or memory.
    #[serde(default)]
    pub storage: StorageKind,
    /// The initial members of a new cluster (this node included). Leave empty and set `join`
    /// for a node that joins a running cluster.
    #[serde(default)]
    pub members: Vec<MemberConfig>,
    /// HTTP addresses of running members to join through (as a learner, promoted to voter
    /// once caught up). With neither `members` nor `join`, a node with `[discovery]` on joins
    /// through the members it hears announce themselves.
    #[serde(default)]
    pub join: Vec<String>,
    /// Join as a voter (promoted when caught up) or stay a learner.
    #[serde(default = "default_true")]
    pub join_as_voter: bool,
    /// Mutual TLS between nodes. Required unless `insecure_plaintext_peers` is set (and always
    /// for QUIC): each peer proves its node id with a certificate from the cluster's CA.
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    /// Run the Raft transport in plaintext, without `[tls]`: anyone who reaches `raft_addr`
    /// can then pose as a member, forge AppendEntries and rewrite the data. Only for a
    /// network that nothing else reaches (tests, benchmarks); the node warns at start and in
    /// `/v1/status`.
    #[serde(default)]
    pub insecure_plaintext_peers: bool,
    /// HTTPS on the client API (optionally requiring client certificates). Unset: plain HTTP,
    /// so tokens travel in clear (the node warns unless `client_addr` is loopback).
    #[serde(default)]
    pub api_tls: Option<ApiTlsConfig>,
    /// Client authentication (bearer tokens with roles). Required unless
    /// `insecure_open_client_api` is set.
    #[serde(default)]
    pub auth: Option<AuthConfig>,
    /// Serve the client API without authentication, without `[auth]`: anyone who reaches
    /// `client_addr` can then read, write and change the membership. Only for a network that
    /// nothing else reaches (tests, benchmarks); the node warns at start and in `/v1/status`.
    #[serde(default)]
    pub insecure_open_client_api: bool,
    /// A data dir that RocksDB or a checksum refuses as damaged has its files moved aside (into
    /// `<data_dir>/damaged-<unix seconds>/`, kept for inspection) and the node recovers its data
    /// from the cluster, when every other voter answers (else the node refuses to start, as
    /// with `false`). Needs `members`.
    #[serde(default = "default_true")]
    pub repair_damaged_data_dir: bool,
    /// MiB kept allocated in the data dir (`headroom.reserve`): given up when the disk fills so
    /// that replication, snapshots, log compaction and RocksDB's flushes can finish, while new
    /// proposals are refused (507 `no_space`) until it can be allocated again. 0: none (a full
    /// disk then only waits for space). Default 64.
    #[serde(default = "default_headroom_mb")]
    pub headroom_mb: u64,
    /// Protocol tunables (elections, heartbeats, batching, snapshots, reads).
    #[serde(default)]
    pub raft: raft_core::Config,
    /// Transport tunables.
    #[serde(default)]
    pub network: NetworkConfig,
    /// Client API limits.
    #[serde(default)]
    pub limits: LimitsConfig,
    /// Logging.
    #[serde(default)]
    pub log: LogConfig,
    /// Discovery of peers on the local network (off by default).
    #[serde(default)]
    pub discovery: DiscoveryConfig,
}

fn default_headroom_mb() -> u64 {
    64
}

fn default_true() -> bool {
    true
}

/// One thing wrong with a config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    /// The key (dotted path) it is about; empty for the file as a whole.
    pub key: String,
    /// What is wrong.
    pub reason: String,
}

/// Why a config could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{file}: cannot read the config file: {source}")]
    Read {
        /// The file.
        file: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The file is not valid TOML, or its keys and types do not match the schema.
    #[error("{file}: {message}")]
    Parse {
        /// The file.
        file: String,
        /// The parser's message (with line and column).
        message: String,
    },
    /// An override is malformed (`key=value` expected).
    #[error("bad override {0:?}: expected key.path=value")]
    BadOverride(String),
    /// The config parsed but does not make sense; every problem is listed.
    #[error("{file}: {} problem(s):\n{}", problems.len(), problems.iter().map(|p| format!("  {}: {}", if p.key.is_empty() { "(file)" } else { &p.key }, p.reason)).collect::<Vec<_>>().join("\n"))]
    Invalid {
        /// The file.
        file: String,
        /// Every problem found.
        problems: Vec<ConfigProblem>,
    },
}

impl NodeConfig {
    /// The RocksDB store's options this configuration asks for.
    pub fn rocks_options(&self) -> raft_storage_rocks::RocksOptions {
        raft_storage_rocks::RocksOptions {
            headroom_bytes: self.headroom_mb.saturating_mul(1 << 20),
            ..raft_storage_rocks::RocksOptions::default()
        }
    }

    /// Reads `path`, applies `overrides` (`key.path=value`, after the `RAFT_NODE__*`
    /// environment variables) and validates the result.
    pub fn load(path: &Path, overrides: &[String]) -> Result<Self, ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConfigError::Read { file: file.clone(), source })?;
        let env: Vec<String> = std::env::vars()
            .filter_map(|(k, v)| {
                let key = k.strip_prefix(ENV_PREFIX)?;
                Some(format!("{}={v}", key.to_ascii_lowercase().replace("__", ".")))
            })
            .collect();
        let all: Vec<String> = env.into_iter().chain(overrides.iter().cloned()).collect();
        Self::parse(&text, &file, &all)
    }

    /// Parses TOML `text` (named `file` in errors), applies `overrides` and validates.
    pub fn parse(text: &str, file: &str, overrides: &[String]) -> Result<Self, ConfigError> {
        let parse_err = |message: String| ConfigError::Parse { file: file.to_string(), message };
        let mut table: toml::Table = text.parse().map_err(|e: toml::de::Error| parse_err(e.to_string()))?;
        for o in overrides {
            apply_override(&mut table, o)?;
        }
        let config: NodeConfig =
            toml::Table::try_into(table).map_err(|e: toml::de::Error| parse_err(e.message().to_string()))?;
        let problems = config.problems();
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(ConfigError::Invalid { file: file.to_string(), problems })
        }
    }

    /// Every problem with this config (empty when it is valid).
    pub fn problems(&self) -> Vec<ConfigProblem> {
        let mut out = Vec::new();
        let mut bad = |key: &str, reason: String| out.push(ConfigProblem { key: key.to_string(), reason });
        if self.cluster.is_empty() || self.cluster.len() > 64 {
            bad("cluster", "must be 1 to 64 characters".into());
        } else if !self.cluster.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
            bad(
                "cluster",
                "may hold only ASCII letters, digits and '-' (it is part of TLS identities)".into(),
            );
        }
        if self.id == 0 {
            bad("id", "must be non-zero".into());
        }
        if self.raft_addr == self.client_addr {
            bad("client_addr", "must differ from raft_addr".into());
        }
        if let Some(advertised) = self.raft_advertise_addr {
            if let Some(why) = undialable(advertised) {
                bad("raft_advertise_addr", format!("{advertised} {why}: other nodes dial this address"));
            } else if advertised == self.client_addr {
                bad("raft_advertise_addr", "must differ from client_addr".into());
            }
        }
        // A node that joins or is discovered sends its own addresses to the cluster, which
        // records them as its member entry (with `[[members]]` that entry is checked below).
        if self.members.is_empty() {
            if self.raft_advertise_addr.is_none() {
                if let Some(why) = undialable(self.raft_addr) {
                    bad(
                        "raft_addr",
                        format!(
                            "{} {why}: other nodes dial this address (set raft_advertise_addr to listen here)",
                            self.raft_addr
                        ),
                    );
                }
            }
            if let Some(why) = undialable(self.client_addr) {
                bad(
                    "client_addr",
                    format!("{} {why}: other nodes and clients dial this address", self.client_addr),
                );
            }
        }
        if self.data_dir.as_os_str().is_empty() {
            bad("data_dir", "must not be empty".into());
        }
        let mut ids = BTreeSet::new();
        let mut addrs = BTreeSet::new();
        for (i, m) in self.members.iter().enumerate() {
            let key = format!("members[{i}]");
            if m.id == 0 {
                bad(&format!("{key}.id"), "must be non-zero".into());
            }
            if !ids.insert(m.id) {
                bad(&format!("{key}.id"), format!("node id {} appears twice", m.id));
            }
            for (field, addr) in [("raft_addr", m.raft_addr), ("client_addr", m.client_addr)] {
                if !addrs.insert(addr) {
                    bad(&key, format!("address {addr} is used twice"));
                }
                if let Some(why) = undialable(addr) {
                    bad(&format!("{key}.{field}"), format!("{addr} {why}: other nodes dial this address"));
                }
            }
            if m.id == self.id
                && (m.raft_addr != self.advertised_raft_addr() || m.client_addr != self.client_addr)
            {
                bad(
                    &key,
                    "this node's entry must carry the same raft_addr (raft_advertise_addr when set) and \
                     client_addr as the top level"
                        .into(),
                );
            }
        }
        match (self.members.is_empty(), self.join.is_empty()) {
            (true, true) if !self.discovery.enabled => bad(
                "members",
                "list the initial members (this node included), set join, or enable [discovery]".into(),
            ),
            (false, false) => {
                bad("join", "set either members (a new cluster) or join (a running one), not both".into())
            }
            (false, true) if !ids.contains(&self.id) => {
                bad("members", format!("this node (id {}) is missing from members", self.id))
            }
            _ => {}
        }
        for (i, j) in self.join.iter().enumerate() {
            if j.trim().is_empty() {
                bad(&format!("join[{i}]"), "must be a host:port address".into());
            }
        }
        match (&self.tls, self.insecure_plaintext_peers) {
            (None, false) if self.transport == TransportKind::Tcp => bad(
                "tls",
                "peers must authenticate: configure [tls] (ca_cert, cert, key; `cargo xtask certs` \
                 writes dev certificates), or set insecure_plaintext_peers = true to let anyone who \
                 reaches raft_addr act as a member"
                    .into(),
            ),
            (Some(_), true) => bad(
                "insecure_plaintext_peers",
                "contradicts [tls]: remove one of them (with [tls] peers use mutual TLS)".into(),
            ),
            _ => {}
        }
        match (&self.auth, self.insecure_open_client_api) {
            (None, false) => bad(
                "auth",
                "clients must authenticate: configure [auth] with tokens (`raft-node new-token` \
                 prints one with its hash), or set insecure_open_client_api = true to let anyone \
                 who reaches client_addr read, write and change the membership"
                    .into(),
            ),
            (Some(_), true) => bad(
                "insecure_open_client_api",
                "contradicts [auth]: remove one of them (with [auth] clients present tokens)".into(),
            ),
            _ => {}
        }
        if let Some(auth) = &self.auth {
            if auth.tokens.is_empty() {
                bad(
                    "auth.tokens",
                    "list at least one token (name, role, sha256): the nodes present theirs \
                     (token_file) to each other, also where clients use certificates"
                        .into(),
                );
            }
            let client_ca = self.api_tls.as_ref().is_some_and(|t| t.client_ca.is_some());
            let require = self.api_tls.as_ref().is_some_and(|t| t.require_client_certificate);
            if require && !client_ca {
                bad("api_tls.require_client_certificate", "needs api_tls.client_ca".into());
            }
            if !auth.certificates.is_empty() && !client_ca {
                bad(
                    "auth.certificates",
                    "certificate roles need client certificates: set [api_tls] client_ca".into(),
                );
            }
            let mut cert_names = BTreeSet::new();
            for (i, c) in auth.certificates.iter().enumerate() {
                let key = format!("auth.certificates[{i}].name");
                if c.name.trim().is_empty() || c.name.len() > 253 || c.name.trim() != c.name {
                    bad(&key, "must be 1 to 253 characters, without surrounding spaces".into());
                } else if raft_tls::parse_node_identity(&self.cluster, &c.name).is_some() {
                    bad(
                        &key,
                        format!(
                            "{:?} is a node identity of this cluster (peer certificates carry it): \
                             give clients names of their own",
                            c.name
                        ),
                    );
                } else if !cert_names.insert(c.name.as_str()) {
                    bad(&key, format!("the name {:?} appears twice", c.name));
                }
            }
            let mut names = BTreeSet::new();
            let mut hashes = BTreeSet::new();
            for (i, t) in auth.tokens.iter().enumerate() {
                let key = format!("auth.tokens[{i}]");
                if t.name.trim().is_empty() || t.name.len() > 64 {
                    bad(&format!("{key}.name"), "must be 1 to 64 characters".into());
                } else if !names.insert(t.name.as_str()) {
                    bad(&format!("{key}.name"), format!("the name {:?} appears twice", t.name));
                }
                if t.sha256.len() != 64 || !t.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
                    bad(
                        &format!("{key}.sha256"),
                        "must be the token's SHA-256 as 64 hex digits (not the token itself)".into(),
                    );
                } else if !hashes.insert(t.sha256.to_ascii_lowercase()) {
                    bad(&format!("{key}.sha256"), "the same token is listed twice".into());
                }
            }
            let talks_to_members =
                self.peers().next().is_some() || !self.join.is_empty() || self.discovery.enabled;
            if auth.token_file.is_none() && talks_to_members {
                bad(
                    "auth.token_file",
                    "a node with other members needs a token of its own (an admin one) to ask them \
                     whether they know it and to join: without it, the check that keeps a node that \
                     lost its data from voting could not run"
                        .into(),
                );
            }
            if self.discovery.enabled {
                bad(
                    "discovery.enabled",
                    "discovery announcements are not authenticated: with [auth] a joining node would \
                     hand its token to whoever announces the cluster's name; list the members or \
                     `join` addresses instead"
                        .into(),
                );
            }
            if let Some(path) = &auth.token_file {
                match std::fs::read_to_string(path) {
                    Ok(text) if text.trim().is_empty() => {
                        bad("auth.token_file", format!("{} is empty", path.display()))
                    }
                    Ok(text) if !text.trim().bytes().all(|b| b.is_ascii_graphic()) => bad(
                        "auth.token_file",
                        format!(
                            "{} must hold the token alone (visible ASCII, no spaces, comments or \
                             other lines)",
                            path.display()
                        ),
                    ),
                    Ok(_) => {}
                    Err(e) => bad("auth.token_file", format!("cannot read {}: {e}", path.display())),
                }
            }
        }
        if self.transport == TransportKind::Quic && self.tls.is_none() {
            bad(
                "tls",
                "transport = \"quic\" needs [tls] (ca_cert, cert, key); `cargo xtask certs` writes them"
                    .into(),
            );
        }
        if let Some(tls) = &self.tls {
            // Each file read once; the material is checked only when all three were read.
            let mut read = |key: &str, path: &std::path::Path| match std::fs::read(path) {
                Ok(bytes) => Some(String::from_utf8_lossy(&bytes).into_owned()),
                Err(e) => {
                    bad(key, format!("cannot read {}: {e}", path.display()));
                    None
                }
            };
            let pems =
                (read("tls.ca_cert", &tls.ca_cert), read("tls.cert", &tls.cert), read("tls.key", &tls.key));
            if !raft_tls::is_valid_cluster_id(&self.cluster) {
                bad(
                    "cluster",
                    "with [tls] the cluster id is part of certificate names: lowercase letters, digits, \
                     '-' and '.' only"
                        .into(),
                );
            } else if let (Some(ca_cert_pem), Some(cert_pem), Some(key_pem)) = pems {
                let material = raft_tls::TlsConfig { ca_cert_pem, cert_pem, key_pem };
                if let Err(e) = raft_tls::check_own_material(&material, &self.cluster, self.id) {
                    bad("tls", e.to_string());
                }
            }
        }
        if let Some(api) = &self.api_tls {
            if let Err(e) = self.api_server_tls() {
                bad("api_tls", e);
            }
            let talks_to_members =
                self.peers().next().is_some() || !self.join.is_empty() || self.discovery.enabled;
            if api.ca_cert.is_none() && self.tls.is_none() && talks_to_members {
                bad(
                    "api_tls.ca_cert",
                    "name the CA of the other members' API certificates (this node calls them), or \
                     configure [tls], whose CA is used then"
                        .into(),
                );
            } else if let Err(e) = self.member_client_tls() {
                bad("api_tls.ca_cert", e);
            }
        }
        if let Err(e) = self.raft.validate() {
            bad("raft", e.to_string());
        }
        if self.raft.snapshot_chunk_bytes as u64 + 64 * 1024 > u64::from(self.network.max_frame_bytes) {
            bad("raft.snapshot_chunk_bytes", "must be at least 64 KiB under network.max_frame_bytes".into());
        }
        if self.raft.max_bytes_per_append as u64 + 64 * 1024 > u64::from(self.network.max_frame_bytes) {
            bad("raft.max_bytes_per_append", "must be at least 64 KiB under network.max_frame_bytes".into());
        }
        let l = &self.limits;
        if l.max_key_bytes == 0 || l.max_key_bytes > raft_kv::MAX_KEY_BYTES {
            bad(
                "limits.max_key_bytes",
                format!("must be 1 to {} (the state machine's limit)", raft_kv::MAX_KEY_BYTES),
            );
        }
        if l.max_value_bytes > raft_kv::MAX_VALUE_BYTES {
            bad(
                "limits.max_value_bytes",
                format!("must be at most {} (the state machine's limit)", raft_kv::MAX_VALUE_BYTES),
            );
        }
        if l.max_value_bytes == 0 || l.max_value_bytes + l.max_key_bytes + 4096 > l.max_body_bytes {
            bad("limits.max_value_bytes", "must be positive and fit in max_body_bytes with the key".into());
        }
        // An entry larger than max_bytes_per_append is sent alone, so the frame is the limit.
        if (l.max_value_bytes + l.max_key_bytes) as u64 + 64 * 1024 > u64::from(self.network.max_frame_bytes)
        {
            bad(
                "limits.max_value_bytes",
                "a key and value must fit, with 64 KiB to spare, in network.max_frame_bytes".into(),
            );
        }
        for (key, v) in [
            ("limits.request_timeout_ms", l.request_timeout_ms as usize),
            ("limits.max_list", l.max_list),
            ("limits.max_concurrent_requests", l.max_concurrent_requests),
            ("limits.max_connections", l.max_connections),
            ("limits.header_read_timeout_ms", l.header_read_timeout_ms as usize),
            ("limits.body_read_timeout_ms", l.body_read_timeout_ms as usize),
            ("limits.max_watchers", l.max_watchers),
            ("limits.max_sessions", l.max_sessions),
            ("limits.max_state_bytes", usize::from(l.max_state_bytes > 0)),
            ("limits.max_session_bytes", usize::from(l.max_session_bytes > 0)),
            ("limits.max_list_bytes", l.max_list_bytes),
        ] {
            if v == 0 {
                bad(key, "must be positive".into());
            }
        }
        // Bounds of the runtime: tokio's semaphore panics past its maximum, and anything this
        // large would exhaust memory or descriptors long before it was reached.
        for (key, v, max) in [
            ("limits.max_concurrent_requests", l.max_concurrent_requests, LIMIT_MAX),
            ("limits.max_connections", l.max_connections, LIMIT_MAX),
            ("limits.max_watchers", l.max_watchers, LIMIT_MAX),
            ("limits.max_sessions", l.max_sessions, LIMIT_MAX),
            ("limits.max_list", l.max_list, LIMIT_MAX),
        ] {
            if v > max {
                bad(key, format!("must be at most {max}"));
            }
        }
        if !(0..=19).contains(&l.watch_nice) {
            bad(
                "limits.watch_nice",
                "must be from 0 to 19 (a nice increment: a priority lower than the node's, or its own)"
                    .into(),
            );
        }
        for (key, ms) in [
            ("limits.request_timeout_ms", l.request_timeout_ms),
            ("limits.header_read_timeout_ms", l.header_read_timeout_ms),
            ("limits.body_read_timeout_ms", l.body_read_timeout_ms),
        ] {
            if ms > TIMEOUT_MAX_MS {
                bad(key, format!("must be at most {TIMEOUT_MAX_MS} (one day)"));
            }
        }
        let n = &self.network;
        if n.peer_queue_max == 0 {
            bad("network.peer_queue_max", "must be positive".into());
        }
        if n.keep_alive_ms == 0 || n.keep_alive_ms >= n.idle_timeout_ms {
            bad("network.keep_alive_ms", "must be positive and under network.idle_timeout_ms".into());
        }
        self.discovery.problems(self.raft_addr, self.client_addr, &mut bad);
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.log.level) {
            bad("log.level", format!("not a valid filter: {e}"));
        }
        out
    }

    /// How the Raft peers are authenticated.
    pub fn peer_security(&self) -> raft_client::api::PeerSecurity {
        if self.tls.is_some() {
            raft_client::api::PeerSecurity::MutualTls
        } else {
            raft_client::api::PeerSecurity::InsecurePlaintext
        }
    }

    /// What an operator should be told about this configuration (at start and in
    /// `/v1/status`).
    pub fn warnings(&self) -> Vec<String> {
        let mut warnings = Vec::new();
        if self.tls.is_none() {
            warnings.push(format!(
                "insecure_plaintext_peers: the Raft transport on {} is not authenticated; anyone who \
                 reaches it can act as a member and rewrite the data",
                self.raft_addr
            ));
        }
        if self.auth.is_some() && self.api_tls.is_none() && !self.client_addr.ip().is_loopback() {
            warnings.push(format!(
                "no [api_tls]: client tokens reach {} over plain HTTP, readable by anyone on the path",
                self.client_addr
            ));
        }
        if self.auth.is_none() {
            warnings.push(format!(
                "insecure_open_client_api: the client API on {} is not authenticated; anyone who \
                 reaches it can read, write and change the membership",
                self.client_addr
            ));
        }
        warnings
    }

    /// The token this node presents to other members' APIs (`auth.token_file`), if any.
    pub fn own_token(&self) -> Option<String> {
        let path = self.auth.as_ref()?.token_file.as_ref()?;
        let text = std::fs::read_to_string(path).ok()?;
        Some(text.trim().to_string()).filter(|t| !t.is_empty())
    }

    /// The HTTPS material of the client API (read from the files now), or `None` for plain
    /// HTTP; `Err` says which file or certificate is unusable.
    pub fn api_server_tls(&self) -> Result<Option<raft_tls::ApiServerTls>, String> {
        let Some(api) = &self.api_tls else { return Ok(None) };
        let read = |key: &str, path: &std::path::Path| {
            std::fs::read_to_string(path).map_err(|e| format!("{key}: cannot read {}: {e}", path.display()))
        };
        let tls = raft_tls::ApiServerTls {
            cert_pem: read("api_tls.cert", &api.cert)?,
            key_pem: read("api_tls.key", &api.key)?,
            client_ca_pem: api.client_ca.as_deref().map(|p| read("api_tls.client_ca", p)).transpose()?,
            require_client_cert: api.require_client_certificate,
        };
        raft_tls::api_server_config(&tls).map_err(|e| e.to_string())?;
        // Checked against the CA the members verify it with, when there is one.
        if let Some(ca) = api.ca_cert.as_ref().or(self.tls.as_ref().map(|t| &t.ca_cert)) {
            let ca_pem = read("api_tls.ca_cert", ca)?;
            raft_tls::check_api_certificate(&tls, &ca_pem).map_err(|e| e.to_string())?;
        }
        Ok(Some(tls))
    }

    /// The TLS of this node's own calls to the other members' APIs: their CA
    /// (`api_tls.ca_cert`, else `tls.ca_cert`) and, when they require client certificates,
    /// this node's API certificate. `None` with plain HTTP.
    pub fn member_client_tls(&self) -> Result<Option<raft_client::ClientTls>, String> {
        let Some(api) = &self.api_tls else { return Ok(None) };
        let Some(ca) = api.ca_cert.as_ref().or(self.tls.as_ref().map(|t| &t.ca_cert)) else {
            return Err("no CA for the other members' API certificates (api_tls.ca_cert)".into());
        };
        let identity = api.client_ca.as_ref().map(|_| (api.cert.as_path(), api.key.as_path()));
        let tls = raft_client::ClientTls::from_files(ca, identity)?;
        tls.validate().map_err(|e| format!("api_tls: {e}"))?;
        Ok(Some(tls))
    }

    /// Options of this node's own calls to the other members' APIs: its token
    /// (`auth.token_file`) and TLS ([`Self::member_client_tls`]). With `[api_tls]` and
    /// material that cannot be used (a file mid-rotation), `Err`: the call is not made, never
    /// made in plain HTTP with the token in clear.
    pub fn member_client_options(
        &self,
        request_timeout: Duration,
        max_retries: u32,
    ) -> Result<raft_client::ClientOptions, String> {
        let tls = self.member_client_tls()?;
        Ok(raft_client::ClientOptions {
            request_timeout,
            max_retries,
            token: self.own_token(),
            tls,
            ..raft_client::ClientOptions::default()
        })
    }

    /// The address other nodes dial for this node's Raft transport: `raft_advertise_addr`,
    /// else `raft_addr`.
    pub fn advertised_raft_addr(&self) -> SocketAddr {
        self.raft_advertise_addr.unwrap_or(self.raft_addr)
    }

    /// The other members of the initial configuration.
    pub fn peers(&self) -> impl Iterator<Item = &MemberConfig> {
        self.members.iter().filter(move |m| m.id != self.id)
    }
}

/// The largest count limit accepted (far below tokio's semaphore maximum, which panics).
const LIMIT_MAX: usize = 1 << 20;
/// The longest timeout accepted: one day.
const TIMEOUT_MAX_MS: u64 = 86_400_000;

/// Why other nodes cannot dial `addr`, if they cannot.
fn undialable(addr: SocketAddr) -> Option<&'static str> {
    if addr.port() == 0 {
        return Some("has port 0");
    }
    // An IPv4-mapped IPv6 address (`::ffff:a.b.c.d`) is the IPv4 address it maps.
    let ip = match addr.ip() {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    };
    match ip {
        ip if ip.is_unspecified() => Some("is a wildcard address (0.0.0.0 or ::)"),
        ip if ip.is_multicast() => Some("is a multicast address"),
        IpAddr::V4(v4) if v4.is_broadcast() => Some("is the broadcast address"),
        _ => None,
    }
}

/// Sets `key.path=value` in `table`; the value is read as TOML (`30`, `true`, `"x"`, `[..]`)
/// or, failing that, as a plain string.
fn apply_override(table: &mut toml::Table, spec: &str) -> Result<(), ConfigError> {
    let (path, raw) = spec.split_once('=').ok_or_else(|| ConfigError::BadOverride(spec.to_string()))?;
    let keys: Vec<&str> = path.trim().split('.').collect();
    if keys.iter().any(|k| k.is_empty()) {
        return Err(ConfigError::BadOverride(spec.to_string()));
    }
    let value = format!("v = {raw}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_string()));
    let (last, parents) = keys.split_last().ok_or_else(|| ConfigError::BadOverride(spec.to_string()))?;
    let mut current = table;
    for key in parents {
        let entry = current.entry(key.to_string()).or_insert_with(|| toml::Value::Table(toml::Table::new()));
        current = entry.as_table_mut().ok_or_else(|| ConfigError::BadOverride(spec.to_string()))?;
    }
    current.insert(last.to_string(), value);
    Ok(())
}

#[cfg(test)]
mod tests;
