//! Discovery of peers on the local network (`[discovery]`, off by default).
//!
//! Every node with discovery on sends a small [`Announcement`] (cluster, id, Raft and client
//! addresses) every `interval_ms` to a UDP multicast group and listens there. A node that
//! starts with an empty data dir and neither `members` nor `join` listens for announcements of
//! its own cluster for up to `listen_ms` (`find_members`) and uses the client addresses it
//! heard as its `join` candidates: from there the ordinary join path runs (learner, promoted
//! once caught up).
//!
//! The datagram is `"RNDA"`, a version byte and a postcard body, at most
//! [`MAX_DATAGRAM_BYTES`]. Anything else that arrives (other clusters, undecodable or oversized
//! datagrams, this node's own announcements) is counted in the
//! `raft_discovery_datagrams_total{outcome}` metric, logged at debug level and otherwise
//! ignored.
//!
//! Datagrams travel through a [`DiscoveryChannel`]: [`MulticastChannel`] (a UDP socket joined
//! to the group, multicast loop on, TTL 1) for real nodes, [`MemoryBus`] (in-process) for tests
//! and for hosts without multicast.
//!
//! Announcements are not authenticated: they only decide whom a new node asks to join. The
//! join itself and, with `[tls]`, every Raft connection are checked as usual.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use raft_core::NodeId;
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, Mutex};
use tokio::time::Instant;

use super::Shared;
use crate::config::NodeConfig;
use crate::metrics::Metrics;

/// The first bytes of every discovery datagram.
pub const DATAGRAM_MAGIC: [u8; 4] = *b"RNDA";
/// The datagram format version this node speaks; others are ignored.
pub const DATAGRAM_VERSION: u8 = 1;
/// Hard limit on one datagram, in bytes (an announcement takes well under 150).
pub const MAX_DATAGRAM_BYTES: usize = 512;
/// Most join candidates kept from one listening period.
pub const CANDIDATES_MAX: usize = 64;
/// Longest cluster id an announcement may carry (the config's limit).
const CLUSTER_BYTES_MAX: usize = 64;

/// What a node announces about itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Announcement {
    /// The cluster id.
    pub cluster: String,
    /// The node's id.
    pub id: NodeId,
    /// Where its Raft transport listens.
    pub raft_addr: SocketAddr,
    /// Where its HTTP API listens (the join candidate).
    pub client_addr: SocketAddr,
}

/// Why a datagram is not an announcement this node understands.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DatagramError {
    /// Longer than [`MAX_DATAGRAM_BYTES`].
    #[error("the datagram is over the {MAX_DATAGRAM_BYTES}-byte limit")]
    Oversized,
    /// It does not start with [`DATAGRAM_MAGIC`] and a version byte.
    #[error("not a discovery datagram")]
    NotDiscovery,
    /// Another format version.
    #[error("unsupported discovery datagram version {0}")]
    Version(u8),
    /// The body does not decode, has trailing bytes, or holds impossible values.
    #[error("malformed announcement: {0}")]
    Malformed(String),
}

impl Announcement {
    /// This node's announcement.
    pub fn of(config: &NodeConfig) -> Self {
        Self {
            cluster: config.cluster.clone(),
            id: config.id,
            raft_addr: config.advertised_raft_addr(),
            client_addr: config.client_addr,
        }
    }

    /// The datagram: magic, version, postcard body. Fails only if it would not fit in
    /// [`MAX_DATAGRAM_BYTES`] or break the rules [`Announcement::decode`] checks.
    pub fn encode(&self) -> Result<Vec<u8>, DatagramError> {
        self.check()?;
        let mut out = Vec::with_capacity(128);
        out.extend_from_slice(&DATAGRAM_MAGIC);
        out.push(DATAGRAM_VERSION);
        let out = postcard::to_extend(self, out).map_err(|e| DatagramError::Malformed(e.to_string()))?;
        if out.len() > MAX_DATAGRAM_BYTES {
            return Err(DatagramError::Oversized);
        }
        Ok(out)
    }

    /// Decodes a received datagram, whatever its bytes: never panics, and reserves nothing
    /// beyond the datagram's own size.
    pub fn decode(bytes: &[u8]) -> Result<Self, DatagramError> {
        if bytes.len() > MAX_DATAGRAM_BYTES {
            return Err(DatagramError::Oversized);
        }
        let body = match bytes.strip_prefix(&DATAGRAM_MAGIC) {
            Some([DATAGRAM_VERSION, body @ ..]) => body,
            Some([version, ..]) => return Err(DatagramError::Version(*version)),
            _ => return Err(DatagramError::NotDiscovery),
        };
        let (announcement, rest) =
            postcard::take_from_bytes::<Self>(body).map_err(|e| DatagramError::Malformed(e.to_string()))?;
        if !rest.is_empty() {
            return Err(DatagramError::Malformed(format!("{} trailing bytes", rest.len())));
        }
        announcement.check()?;
        Ok(announcement)
    }

    fn check(&self) -> Result<(), DatagramError> {
        let bad = |what: &str| Err(DatagramError::Malformed(what.to_string()));
        if self.cluster.is_empty() || self.cluster.len() > CLUSTER_BYTES_MAX {
            return bad("the cluster id must be 1 to 64 bytes");
        }
        if self.id == 0 {
            return bad("the node id must be non-zero");
        }
        for addr in [self.raft_addr, self.client_addr] {
            if addr.ip().is_unspecified() || addr.ip().is_multicast() || addr.port() == 0 {
                return bad("an address must be a specific unicast IP and a non-zero port");
            }
        }
        Ok(())
    }
}

/// What a received datagram turned out to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Heard {
    /// Another node of this cluster.
    Member(Announcement),
    /// A node of this cluster with this node's id: this node's own announcement (looped back)
    /// or, when the addresses differ, a misconfigured node.
    SameId(Announcement),
    /// A node of another cluster.
    OtherCluster(Announcement),
    /// Not a valid announcement.
    Bad(DatagramError),
}

impl Heard {
    /// Classifies `datagram` as heard by node `id` of `cluster`.
    pub fn classify(datagram: &[u8], cluster: &str, id: NodeId) -> Self {
        match Announcement::decode(datagram) {
            Err(e) => Self::Bad(e),
            Ok(a) if a.cluster != cluster => Self::OtherCluster(a),
            Ok(a) if a.id == id => Self::SameId(a),
            Ok(a) => Self::Member(a),
        }
    }

    /// The `outcome` label this datagram is counted under.
    pub fn outcome(&self) -> &'static str {
        match self {
            Self::Member(_) => "member",
            Self::SameId(_) => "same_id",
            Self::OtherCluster(_) => "other_cluster",
            Self::Bad(DatagramError::Oversized) => "oversized",
            Self::Bad(_) => "malformed",
        }
    }
}

/// Carries discovery datagrams between the nodes of a network.
///
/// # Correctness
///
/// Datagrams may be lost, duplicated or reordered, and a node may or may not receive its
/// own: discovery copes with all of it. `recv` must be cancel-safe (it is raced against a
/// timer) and must not return a datagram longer than `buf` (a longer one is truncated to
/// `buf.len()`, which the caller treats as oversized).
#[async_trait]
pub trait DiscoveryChannel: Send + Sync + 'static {
    /// Sends `datagram` to every node listening on the channel.
    async fn send(&self, datagram: &[u8]) -> std::io::Result<()>;
    /// Waits for the next datagram, copies it into `buf` and returns its length.
    async fn recv(&self, buf: &mut [u8]) -> std::io::Result<usize>;
    /// Where the channel sends, for logs and errors.
    fn describe(&self) -> String;
}

/// A UDP socket bound to a multicast group's port and joined to the group on one interface;
/// it receives its own datagrams back (multicast loop), and sends with TTL 1.
#[derive(Debug)]
pub struct MulticastChannel {
    socket: tokio::net::UdpSocket,
    group: SocketAddrV4,
    interface: Ipv4Addr,
}

impl MulticastChannel {
    /// Opens the socket: address reuse (several nodes on one host share the port), bound to
    /// the group's port, joined to `group` on `interface`, which also sends. Must be called
    /// inside a tokio runtime.
    pub fn open(group: SocketAddrV4, interface: Ipv4Addr) -> std::io::Result<Self> {
        use socket2::{Domain, Protocol, Socket, Type};
        let socket = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
        socket.set_reuse_address(true)?;
        socket.set_nonblocking(true)?;
        // Bound to the group's address, the socket receives only that group's datagrams (on
        // Windows a multicast address cannot be bound: any address, and decode filters).
        let bind_ip = if cfg!(windows) { Ipv4Addr::UNSPECIFIED } else { *group.ip() };
        socket.bind(&SocketAddr::from((bind_ip, group.port())).into())?;
        socket.join_multicast_v4(group.ip(), &interface)?;
        socket.set_multicast_if_v4(&interface)?;
        socket.set_multicast_loop_v4(true)?;
        socket.set_multicast_ttl_v4(1)?;
        let socket = tokio::net::UdpSocket::from_std(socket.into())?;
        Ok(Self { socket, group, interface })
    }
}

#[async_trait]
impl DiscoveryChannel for MulticastChannel {
    async fn send(&self, datagram: &[u8]) -> std::io::Result<()> {
        self.socket.send_to(datagram, self.group).await.map(drop)
    }

    async fn recv(&self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.socket.recv(buf).await
    }

    fn describe(&self) -> String {
        format!("udp multicast {} on {}", self.group, self.interface)
    }
}

/// An in-process stand-in for a multicast group: every channel made from one bus receives
/// what any of them sends (its own datagrams included). Slow receivers lose datagrams, as
/// with UDP.
#[derive(Debug, Clone)]
pub struct MemoryBus {
    tx: broadcast::Sender<Arc<[u8]>>,
}

impl Default for MemoryBus {
    fn default() -> Self {
        Self { tx: broadcast::channel(1024).0 }
    }
}

impl MemoryBus {
    /// A new channel on this bus.
    pub fn channel(&self) -> Arc<dyn DiscoveryChannel> {
        Arc::new(MemoryChannel { tx: self.tx.clone(), rx: Mutex::new(self.tx.subscribe()) })
    }
}

struct MemoryChannel {
    tx: broadcast::Sender<Arc<[u8]>>,
    rx: Mutex<broadcast::Receiver<Arc<[u8]>>>,
}

#[async_trait]
impl DiscoveryChannel for MemoryChannel {
    async fn send(&self, datagram: &[u8]) -> std::io::Result<()> {
        // No receiver is not an error (nobody listens yet), as with UDP.
        let _ = self.tx.send(datagram.into());
        Ok(())
    }

    async fn recv(&self, buf: &mut [u8]) -> std::io::Result<usize> {
        let mut rx = self.rx.lock().await;
        loop {
            match rx.recv().await {
                Ok(datagram) => {
                    let n = datagram.len().min(buf.len());
                    buf[..n].copy_from_slice(&datagram[..n]);
                    return Ok(n);
                }
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => {
                    return Err(std::io::ErrorKind::BrokenPipe.into());
                }
            }
        }
    }

    fn describe(&self) -> String {
        "in-process bus".into()
    }
}

/// Opens the multicast channel the config names.
pub(super) fn open_configured(config: &NodeConfig) -> std::io::Result<MulticastChannel> {
    let invalid = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidInput, what.to_string());
    let SocketAddr::V4(group) = config.discovery.group else {
        return Err(invalid("the group must be an IPv4 multicast address"));
    };
    let interface =
        config.discovery.interface_for(config.raft_addr).ok_or_else(|| invalid("no IPv4 interface"))?;
    MulticastChannel::open(group, interface)
}

/// Receives one datagram (bounded by [`MAX_DATAGRAM_BYTES`]) and classifies it, counting the
/// outcome. `None` when the channel failed (logged).
async fn hear(channel: &dyn DiscoveryChannel, config: &NodeConfig, metrics: &Metrics) -> Option<Heard> {
    let mut buf = [0u8; MAX_DATAGRAM_BYTES + 1];
    match channel.recv(&mut buf).await {
        Ok(n) => {
            let heard = Heard::classify(&buf[..n], &config.cluster, config.id);
            metrics.count_discovery(heard.outcome());
            match &heard {
                Heard::Member(a) => {
                    tracing::debug!(peer = a.id, client_addr = %a.client_addr, "heard a member")
                }
                Heard::SameId(a) if a != &Announcement::of(config) => tracing::warn!(
                    raft_addr = %a.raft_addr,
                    client_addr = %a.client_addr,
                    "another node announces this node's id"
                ),
                Heard::SameId(_) => {}
                Heard::OtherCluster(a) => {
                    tracing::debug!(cluster = %a.cluster, peer = a.id, "ignoring another cluster's announcement")
                }
                Heard::Bad(e) => tracing::debug!(bytes = n, error = %e, "ignoring a datagram"),
            }
            Some(heard)
        }
        Err(e) => {
            tracing::debug!(error = %e, "receiving a discovery datagram failed");
            None
        }
    }
}

/// Listens for members of this node's cluster for up to `listen_ms`, and returns what they
/// announced, by id (at most [`CANDIDATES_MAX`]). Once one is heard, it listens two more
/// intervals (every member announces once per interval) and stops.
pub(super) async fn find_members(
    channel: &dyn DiscoveryChannel,
    config: &NodeConfig,
    metrics: &Metrics,
) -> BTreeMap<NodeId, Announcement> {
    let d = &config.discovery;
    let settle = Duration::from_millis(d.interval_ms.saturating_mul(2));
    let mut deadline = Instant::now() + Duration::from_millis(d.listen_ms);
    let mut found = BTreeMap::new();
    tracing::info!(via = %channel.describe(), listen_ms = d.listen_ms, "listening for members of the cluster");
    loop {
        let heard = match tokio::time::timeout_at(deadline, hear(channel, config, metrics)).await {
            Err(_elapsed) => return found,
            Ok(Some(heard)) => heard,
            // A failing socket: do not spin; keep trying until the deadline.
            Ok(None) => {
                tokio::time::sleep_until(deadline.min(Instant::now() + Duration::from_millis(100))).await;
                continue;
            }
        };
        if let Heard::Member(a) = heard {
            if found.is_empty() {
                deadline = deadline.min(Instant::now() + settle);
            }
            if found.len() < CANDIDATES_MAX || found.contains_key(&a.id) {
                found.insert(a.id, a);
            }
        }
    }
}

/// The background task of a running node: announces it every `interval_ms` while it is a
/// member of the configuration in force (a node still joining does not send others to
/// itself), and keeps hearing (and counting) the others' announcements.
pub(super) async fn announce(shared: Arc<Shared>, channel: Arc<dyn DiscoveryChannel>) {
    let config = &shared.config;
    let datagram = match Announcement::of(config).encode() {
        Ok(datagram) => datagram,
        Err(e) => {
            tracing::error!(error = %e, "this node's announcement cannot be encoded; discovery is off");
            return;
        }
    };
    let mut ticker = tokio::time::interval(Duration::from_millis(config.discovery.interval_ms));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tracing::info!(via = %channel.describe(), "announcing this node for discovery");
    loop {
        tokio::select! {
            _ = ticker.tick() => {
                if !shared.raft.membership().contains(config.id) {
                    continue;
                }
                match channel.send(&datagram).await {
                    Ok(()) => shared.metrics.count_discovery("sent"),
                    Err(e) => {
                        shared.metrics.count_discovery("send_failed");
                        tracing::debug!(error = %e, "sending the announcement failed");
                    }
                }
            }
            heard = hear(channel.as_ref(), config, &shared.metrics) => {
                if heard.is_none() {
                    // A failing socket: wait for the next tick rather than spin.
                    ticker.tick().await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
