//! Wiring: a [`Node`] builds the transport and storage the config names (as trait objects),
//! the key-value state machine and the Raft driver, then serves the HTTP API until it is shut
//! down.
//!
//! - `startup.rs`: checks before anything on disk is touched (ports), the amnesia probe of a
//!   node with an empty data dir, joining a running cluster;
//! - `peers.rs`: keeps the transport's peer addresses in step with the replicated address book,
//!   and registers this node's own addresses in it;
//! - [`discovery`]: announcements on the local network and finding join candidates in them.

pub mod discovery;
mod peers;
mod probe;
mod reload;

pub use reload::{ReloadError, Reloaded};
mod startup;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use raft_core::{Membership, NodeId, RaftError, RaftNode, Storage, Transport};
use raft_kv::{Balancer, KvStore};
use raft_storage_rocks::{Identity, RocksDb};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinHandle;

use crate::config::{NodeConfig, StorageKind, TransportKind};
use crate::metrics::{Metrics, TransportCounters};

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// An address is taken or cannot be bound (checked before the data dir is touched).
    #[error("cannot listen on {addr} ({what}): {source}")]
    Bind {
        /// Which address (`client_addr`, `raft_addr`).
        what: &'static str,
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// The data dir cannot be opened: locked by another process, damaged, of another cluster
    /// or node, or of a newer format.
    #[error("cannot open the data dir: {0}")]
    Storage(#[from] raft_storage_rocks::OpenError),
    /// Reading the stored state failed.
    #[error("cannot read the stored state: {0}")]
    StoredState(#[from] raft_core::StorageError),
    /// A TLS file cannot be read.
    #[error("cannot read {path}: {source}")]
    TlsFile {
        /// The file.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The client API's HTTPS material is unusable.
    #[error("cannot serve HTTPS on the client API: {0}")]
    ApiTls(String),
    /// The transport could not start.
    #[error("cannot start the {kind} transport: {message}")]
    Transport {
        /// `tcp` or `quic`.
        kind: &'static str,
        /// Its error.
        message: String,
    },
    /// The data dir is damaged and the cluster could not say what this node had (nothing was
    /// changed).
    #[error(
        "the data dir {dir} is damaged ({reason}) and cannot be repaired from the cluster: {why}. \
         Start the node again once the other members are reachable, or remove it from the cluster \
         and start it with an empty data dir and `join`"
    )]
    Damaged {
        /// The data dir.
        dir: String,
        /// What is damaged.
        reason: String,
        /// Why the cluster could not repair it.
        why: String,
    },
    /// The data dir is empty but the cluster knows this node as a voter, and not every other
    /// voter answered: what it may have acknowledged is unknown, so it must not vote.
    #[error(
        "node {id} has an empty data dir but the cluster already knows it ({evidence}): its data was lost. \
         Start it again once every other voter is reachable (it then recovers by itself), or remove it \
         (`raftctl members remove {id}`) and start it with `join` to rejoin as a new member"
    )]
    LostData {
        /// This node.
        id: NodeId,
        /// What the cluster reported.
        evidence: String,
    },
    /// The data dir holds a snapshot but no term: `raft-node recover --seed-snapshot` stopped
    /// between storing the snapshot and its term.
    #[error(
        "the data dir {0} holds a snapshot but no term: a `raft-node recover --seed-snapshot` was interrupted; run it again (it finishes the seed)"
    )]
    InterruptedSeed(String),
    /// A member refused this node's token (`auth.token_file`) while it checked whether the
    /// cluster already knows it: that check keeps a node that lost its data from voting, so
    /// the node does not start without it.
    #[error("{endpoint} refused this node's token ({message}): check auth.token_file")]
    Refused {
        /// The member that refused.
        endpoint: String,
        /// Its answer.
        message: String,
    },
    /// The discovery socket could not be opened (bound to the group's port, joined to it).
    #[error("cannot open the discovery socket ({group}, interface {interface}): {source}")]
    DiscoverySocket {
        /// The configured group.
        group: SocketAddr,
        /// The interface, as configured or taken from `raft_addr`.
        interface: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// A new node with neither `members` nor `join` heard no member of its cluster.
    #[error(
        "no node of cluster {cluster:?} announced itself via {via} within {listen_ms} ms: start members \
         with [discovery] enabled (same group and interface network), or set members or join"
    )]
    NothingDiscovered {
        /// The cluster looked for.
        cluster: String,
        /// The channel listened on.
        via: String,
        /// How long it listened.
        listen_ms: u64,
    },
    /// Joining a running cluster failed.
    #[error("cannot join the cluster through {through}: {message}")]
    Join {
        /// The addresses tried.
        through: String,
        /// Why.
        message: String,
    },
    /// The key-value options are invalid.
    #[error("invalid key-value limits: {0}")]
    Kv(#[from] raft_kv::KvError),
    /// The Raft node could not start.
    #[error("cannot start Raft: {0}")]
    Raft(#[from] RaftError),
}

impl StartError {
    /// Whether the same start may succeed later without anyone changing anything: the disk
    /// failed (EIO) or is full. The binary exits 1 for these (its supervisor tries again) and
    /// 2 for every other refusal, which needs an operator.
    pub fn is_transient(&self) -> bool {
        use raft_storage_rocks::is_disk_failure;
        match self {
            Self::Storage(e) => e.is_transient(),
            Self::StoredState(raft_core::StorageError::Io(m)) => is_disk_failure(m),
            Self::StoredState(raft_core::StorageError::Full) => true,
            Self::Raft(RaftError::Storage(raft_core::StorageError::Io(m))) => is_disk_failure(m),
            Self::Raft(RaftError::Storage(raft_core::StorageError::Full)) => true,
            _ => false,
        }
    }
}

/// What the HTTP handlers and background tasks share.
pub(crate) struct Shared {
    pub(crate) config: NodeConfig,
    /// The config of the credentials now in effect (`config` until a reload): this node's own
    /// calls to the members read their TLS files and token file from it.
    pub(crate) credentials: std::sync::RwLock<Arc<NodeConfig>>,
    /// One reload at a time.
    pub(crate) reloading: std::sync::Mutex<()>,
    /// The client API's tokens and certificate roles (`None`: an open API); reloadable.
    pub(crate) auth: Option<Arc<crate::http::Auth>>,
    /// The client API's HTTPS configuration (`None`: plain HTTP); reloadable.
    pub(crate) api_tls: Option<Arc<crate::http::ApiTls>>,
    pub(crate) raft: RaftNode,
    pub(crate) kv: KvStore,
    pub(crate) balancer: Balancer,
    pub(crate) storage: Arc<dyn Storage>,
    pub(crate) transport: Arc<dyn Transport>,
    pub(crate) transport_stats: Box<dyn Fn() -> TransportCounters + Send + Sync>,
    pub(crate) peer_tls_reload: PeerTlsReload,
    pub(crate) metrics: Metrics,
    /// Bounds the number of open watch streams.
    pub(crate) watchers: Arc<Semaphore>,
    /// The client requests served at once (`limits.max_concurrent_requests`).
    pub(crate) request_slots: Arc<Semaphore>,
    /// Snapshot downloads streaming at once (`GET /v1/snapshot`).
    pub(crate) snapshot_downloads: Arc<Semaphore>,
    /// Flips to `true` when the node starts shutting down (watch streams end).
    pub(crate) stopping: watch::Receiver<bool>,
    /// Change events encoded once for every watch stream.
    pub(crate) encoded_events: crate::http::EncodedEvents,
    /// The latest changes of term or leader this node saw.
    pub(crate) leader_changes: crate::recent::LeaderChanges,
    /// The last `GET /v1/cluster` view, reused for a moment.
    pub(crate) cluster_view: crate::http::CachedView,
}

impl Shared {
    /// Options of this node's own calls to the other members (its token and TLS, as last
    /// reloaded); `Err` when its TLS material is unusable (the call is then not made).
    pub(crate) fn member_client_options(
        &self,
        request_timeout: Duration,
        max_retries: u32,
    ) -> Result<raft_client::ClientOptions, String> {
        let credentials = self.credentials.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
        credentials.member_client_options(request_timeout, max_retries)
    }

    /// The client (HTTP) address of `id`: from the replicated address book, else the config.
    pub(crate) fn client_addr_of(&self, id: NodeId) -> Option<String> {
        self.kv
            .member_addresses()
            .into_iter()
            .find(|m| m.id == id)
            .map(|m| m.client_addr)
            .or_else(|| self.config.members.iter().find(|m| m.id == id).map(|m| m.client_addr.to_string()))
    }

    /// The Raft address of `id`: from the replicated address book, else the config.
    pub(crate) fn raft_addr_of(&self, id: NodeId) -> Option<String> {
        self.kv
            .member_addresses()
            .into_iter()
            .find(|m| m.id == id)
            .map(|m| m.raft_addr)
            .or_else(|| self.config.members.iter().find(|m| m.id == id).map(|m| m.raft_addr.to_string()))
    }
}

/// The longest a stopping leader waits for the voter it hands leadership to (systemd's and
/// Kubernetes' stop timeouts must cover it and the drain of in-flight requests).
const HAND_OVER_WAIT_MAX: Duration = Duration::from_secs(10);

/// A running node: Raft, its state machine and the HTTP API.
pub struct Node {
    shared: Arc<Shared>,
    client_addr: SocketAddr,
    stop: watch::Sender<bool>,
    http: Option<JoinHandle<()>>,
    background: Vec<JoinHandle<()>>,
    rocks: Option<RocksDb>,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("id", &self.shared.config.id)
            .field("client_addr", &self.client_addr)
            .finish()
    }
}

impl Node {
    /// Starts a node from a validated config: binds the client address, opens storage, starts
    /// the transport and Raft, and serves the HTTP API. With `[discovery]` on, it opens the
    /// multicast socket first, and a new node with neither `members` nor `join` finds its
    /// cluster there.
    pub async fn start(config: NodeConfig) -> Result<Self, StartError> {
        Self::start_inner(config, None).await
    }

    /// Like [`Node::start`], but discovery datagrams (when `[discovery]` is on) go through
    /// `channel` instead of the configured multicast socket: an in-process
    /// [`discovery::MemoryBus`] in tests, or any network the embedder provides.
    pub async fn start_with_discovery_channel(
        config: NodeConfig,
        channel: Arc<dyn discovery::DiscoveryChannel>,
    ) -> Result<Self, StartError> {
        Self::start_inner(config, Some(channel)).await
    }

    async fn start_inner(
        config: NodeConfig,
        channel: Option<Arc<dyn discovery::DiscoveryChannel>>,
    ) -> Result<Self, StartError> {
        // Ports first: a taken port is refused before the data dir is created or opened.
        let http_listener = tokio::net::TcpListener::bind(config.client_addr)
            .await
            .map_err(|source| StartError::Bind { what: "client_addr", addr: config.client_addr, source })?;
        startup::check_raft_addr_free(&config)?;
        let api_tls = match config.api_server_tls().map_err(StartError::ApiTls)? {
            Some(material) => Some(Arc::new(
                crate::http::ApiTls::new(&material).map_err(|e| StartError::ApiTls(e.to_string()))?,
            )),
            None => None,
        };
        let discovery = match (config.discovery.enabled, channel) {
            (false, _) => None,
            (true, Some(channel)) => Some(channel),
            (true, None) => {
                let channel =
                    discovery::open_configured(&config).map_err(|source| StartError::DiscoverySocket {
                        group: config.discovery.group,
                        interface: config
                            .discovery
                            .interface_for(config.raft_addr)
                            .map_or_else(|| "none".into(), |ip| ip.to_string()),
                        source,
                    })?;
                Some(Arc::new(channel) as Arc<dyn discovery::DiscoveryChannel>)
            }
        };
        let metrics = Metrics::new();

        let (storage, rocks): (Arc<dyn Storage>, Option<RocksDb>) = match config.storage {
            StorageKind::Rocks => {
                let identity = Identity { cluster_id: config.cluster.clone(), node_id: config.id };
                if let Err(e) = startup::finish_interrupted_repair(&config) {
                    return Err(StartError::Damaged {
                        dir: config.data_dir.display().to_string(),
                        reason: "a repair was interrupted".into(),
                        why: format!("cannot finish moving the damaged files aside: {e}"),
                    });
                }
                let db = match RocksDb::open(&config.data_dir, &identity, config.rocks_options()) {
                    Ok(db) => db,
                    // Damage (checksums, a torn or missing MANIFEST, a lost CURRENT): repaired from
                    // the cluster when it can say what this node had.
                    Err(raft_storage_rocks::OpenError::Corrupt(reason))
                        if config.repair_damaged_data_dir
                            && (!config.members.is_empty() || !config.join.is_empty()) =>
                    {
                        let answering = probe::StartingServer::start(
                            &http_listener,
                            &config,
                            api_tls.clone(),
                            raft_client::api::StartingView::HadData,
                        )
                        .map_err(|source| StartError::Bind {
                            what: "client_addr",
                            addr: config.client_addr,
                            source,
                        })?;
                        let moved = startup::move_damaged_dir_aside(&config, &reason).await;
                        answering.stop().await;
                        moved?;
                        RocksDb::open(&config.data_dir, &identity, config.rocks_options())?
                    }
                    Err(e) => return Err(e.into()),
                };
                (Arc::new(db.log(0)), Some(db))
            }
            StorageKind::Mem => (Arc::new(raft_storage_mem::MemStorage::default()), None),
        };
        let initial = storage.initial_state().await?;
        if initial.hard_state == raft_core::HardState::default()
            && initial.snapshot.as_ref().is_some_and(|s| s.membership == Membership::with_voters([config.id]))
            && initial.last_index < initial.first_index
        {
            return Err(StartError::InterruptedSeed(config.data_dir.display().to_string()));
        }
        let fresh =
            initial.hard_state.current_term == 0 && initial.snapshot.is_none() && initial.last_index == 0;

        let plan = if !config.members.is_empty() {
            let lost_dir = if fresh {
                let had_data = startup::repaired_before(&config);
                let holds = if had_data {
                    raft_client::api::StartingView::HadData
                } else {
                    raft_client::api::StartingView::Empty
                };
                let answering =
                    probe::StartingServer::start(&http_listener, &config, api_tls.clone(), holds).map_err(
                        |source| StartError::Bind { what: "client_addr", addr: config.client_addr, source },
                    )?;
                let known = startup::check_if_known(&config, had_data).await;
                answering.stop().await;
                known?
            } else {
                None
            };
            let voters = config.members.iter().map(|m| m.id);
            let peers = config.peers().map(|m| (m.id, m.raft_addr)).collect();
            startup::Plan {
                membership: Membership::with_voters(voters),
                peers,
                join_through: Vec::new(),
                lost_dir,
            }
        } else if !config.join.is_empty() {
            startup::plan_join(&config, config.join.clone(), fresh).await?
        } else if let Some(channel) = &discovery {
            let found = discovery::find_members(channel.as_ref(), &config, &metrics).await;
            if found.is_empty() {
                if fresh {
                    return Err(StartError::NothingDiscovered {
                        cluster: config.cluster.clone(),
                        via: channel.describe(),
                        listen_ms: config.discovery.listen_ms,
                    });
                }
                tracing::warn!("no member announced itself; restarting with the stored state only");
                startup::Plan::stored_state_only()
            } else {
                let through: Vec<String> = found.values().map(|a| a.client_addr.to_string()).collect();
                tracing::info!(members = ?found.keys().collect::<Vec<_>>(), through = ?through, "discovered members of the cluster");
                startup::plan_join(&config, through, fresh).await?
            }
        } else {
            // Neither members, join nor discovery: refused by validation; only stored state.
            startup::Plan::stored_state_only()
        };
        let new_cluster_at_term =
            plan.lost_dir.as_ref().filter(|l| l.recorded_last == raft_core::LogId::default());
        if let (Some(lost), None) = (new_cluster_at_term, &rocks) {
            // A new cluster that has held elections, on in-memory storage: only the vote.
            storage.save_hard_state(lost.hard_state).await?;
            tracing::info!(id = config.id, term = lost.hard_state.current_term, "starting in a new cluster");
        } else if let Some(lost) = &plan.lost_dir {
            // A voter whose data dir was lost whole: it starts recovering (votes only for logs
            // reaching what it may have acknowledged, no campaigning) until the leader has sent
            // it everything again. Only a durable store can keep that promise across restarts.
            let Some(db) = &rocks else {
                return Err(StartError::LostData {
                    id: config.id,
                    evidence: format!("{} (and in-memory storage cannot recover)", lost.evidence),
                });
            };
            db.log(0).record_lost_data(lost.hard_state, lost.recorded_last).await?;
            if lost.recorded_last == raft_core::LogId::default() {
                tracing::info!(id = config.id, evidence = %lost.evidence, term = lost.hard_state.current_term, "starting in a new cluster");
            } else {
                tracing::warn!(
                    id = config.id,
                    evidence = %lost.evidence,
                    term = lost.hard_state.current_term,
                    recovering_to = %lost.recorded_last,
                    "this voter lost its data dir: recovering from the cluster"
                );
            }
        } else if fresh {
            tracing::info!(id = config.id, cluster = %config.cluster, join = !plan.join_through.is_empty(), "starting with an empty data dir");
        }

        let (transport, transport_stats, peer_tls_reload) =
            build_transport(&config, plan.peers.clone()).await?;
        let (kv, fsm) = KvStore::new(crate::recover::kv_options(&config))?;
        // Forwarding between nodes is always on; `raft.auto_forward` decides whether the HTTP
        // API forwards a write or answers with a redirect to the leader.
        let raft_config = raft_core::Config { auto_forward: true, ..config.raft.clone() };
        let seed = startup::seed(config.id);
        let raft = RaftNode::start(
            config.id,
            raft_config,
            plan.membership,
            storage.clone(),
            transport.clone(),
            Box::new(fsm),
            seed,
        )
        .await?;

        let (stop, stopping) = watch::channel(false);
        let nofile = crate::http::open_file_limit();
        let max_connections = crate::http::connection_cap(config.limits.max_connections, nofile);
        // Watch streams never end: at most half the connections, so the rest stay usable.
        let max_watchers = config.limits.max_watchers.min((max_connections / 2).max(1));
        let auth = config.auth.as_ref().map(|a| Arc::new(crate::http::Auth::new(a)));
        let shared = Arc::new(Shared {
            credentials: std::sync::RwLock::new(Arc::new(config.clone())),
            reloading: std::sync::Mutex::new(()),
            auth,
            api_tls,
            balancer: Balancer::new(kv.clone(), seed),
            watchers: Arc::new(Semaphore::new(max_watchers)),
            request_slots: Arc::new(Semaphore::new(config.limits.max_concurrent_requests)),
            snapshot_downloads: Arc::new(Semaphore::new(crate::http::SNAPSHOT_DOWNLOADS_MAX)),
            config,
            raft,
            kv,
            storage,
            transport,
            transport_stats,
            peer_tls_reload,
            metrics,
            stopping,
            encoded_events: crate::http::EncodedEvents::default(),
            leader_changes: crate::recent::LeaderChanges::default(),
            cluster_view: crate::http::CachedView::default(),
        });
        let mut background = vec![
            tokio::spawn(peers::sync_transport_peers(shared.clone(), plan.peers)),
            tokio::spawn(peers::register_own_addresses(shared.clone())),
            tokio::spawn(peers::track_snapshots(shared.clone())),
            tokio::spawn(peers::track_leader_changes(shared.clone())),
        ];
        if fresh && !plan.join_through.is_empty() {
            background.push(tokio::spawn(startup::request_membership(shared.clone(), plan.join_through)));
        }
        if let Some(channel) = discovery {
            background.push(tokio::spawn(discovery::announce(shared.clone(), channel)));
        }

        let client_addr = http_listener.local_addr().unwrap_or(shared.config.client_addr);
        let router = crate::http::router(shared.clone());
        let stop_rx = stop.subscribe();
        let limits = &shared.config.limits;
        if max_connections < limits.max_connections {
            tracing::warn!(
                configured = limits.max_connections,
                max_connections,
                open_file_limit = nofile,
                "client connections capped to fit the open-file limit (raise it with ulimit -n)"
            );
        }
        let server_limits = crate::http::ServerLimits {
            max_connections,
            header_read_timeout: Duration::from_millis(limits.header_read_timeout_ms),
            stop_grace: Duration::from_millis(limits.request_timeout_ms),
            watch_nice: Some(limits.watch_nice),
        };
        let http = tokio::spawn(crate::http::serve(
            http_listener,
            router,
            shared.api_tls.clone(),
            server_limits,
            stop_rx,
        ));
        tracing::info!(id = shared.config.id, %client_addr, raft_addr = %shared.config.raft_addr, peers = ?shared.config.peer_security(), "node started");
        for warning in shared.config.warnings() {
            tracing::warn!("INSECURE: {warning}");
        }
        Ok(Self { shared, client_addr, stop, http: Some(http), background, rocks })
    }

    /// The address the HTTP API listens on.
    pub fn client_addr(&self) -> SocketAddr {
        self.client_addr
    }

    /// The Raft node (for embedding and tests).
    pub fn raft(&self) -> &RaftNode {
        &self.shared.raft
    }

    /// The key-value store's read side.
    pub fn kv(&self) -> &KvStore {
        &self.shared.kv
    }

    /// A leader that stops hands leadership to its most caught-up voter among those that
    /// answered its last two heartbeats (it waits for them first: a follower that stopped a
    /// moment ago holds as much of the log as a live one), and waits (up to twice the
    /// longest election timeout, at most [`HAND_OVER_WAIT_MAX`]) until that voter leads, so
    /// that a rolling restart costs no election timeout. Nothing to do on a follower, a lone
    /// voter, or when no other voter answers.
    async fn hand_over_leadership(&self) {
        let raft = &self.shared.raft;
        if raft.status().protocol.role != raft_core::Role::Leader {
            return;
        }
        let heartbeat_ms = self.shared.config.raft.heartbeat_interval_ms;
        tokio::time::sleep(Duration::from_millis(heartbeat_ms.saturating_mul(2).saturating_add(20))).await;
        let status = raft.status().protocol;
        if status.role != raft_core::Role::Leader {
            return;
        }
        let target = status
            .followers
            .iter()
            .filter(|f| f.id != status.id && status.membership.is_voter(f.id))
            .filter(|f| f.last_contact_ago_ms.is_some_and(|ago| ago < heartbeat_ms.saturating_mul(2)))
            .max_by_key(|f| {
                (f.match_index, std::cmp::Reverse(f.last_contact_ago_ms), std::cmp::Reverse(f.id))
            })
            .map(|f| f.id);
        let Some(target) = target else {
            if status.membership.members().iter().any(|&id| id != status.id && status.membership.is_voter(id))
            {
                tracing::warn!("stopping: no other voter answered lately; leadership is not handed over");
            }
            return;
        };
        let wait = Duration::from_millis(self.shared.config.raft.election_timeout_max_ms.saturating_mul(2))
            .min(HAND_OVER_WAIT_MAX);
        match tokio::time::timeout(wait, raft.transfer_leadership(Some(target))).await {
            Ok(Ok(to)) => tracing::info!(to, "stopping: leadership handed over"),
            Ok(Err(e)) => tracing::warn!(target, error = %e, "stopping: leadership could not be handed over"),
            Err(_) => {
                tracing::warn!(target, waited_ms = wait.as_millis() as u64, "stopping: no new leader in time")
            }
        }
    }

    /// Shuts down gracefully: stops accepting requests, lets in-flight ones finish (up to the
    /// request timeout), hands leadership over if it leads, stops Raft and the transport, and
    /// flushes storage.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        if let Some(http) = self.http.take() {
            let grace =
                Duration::from_millis(self.shared.config.limits.request_timeout_ms) + Duration::from_secs(1);
            match tokio::time::timeout(grace, http).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!(error = %e, "the HTTP server task failed"),
                Err(_) => tracing::warn!("in-flight requests did not finish in time"),
            }
        }
        for task in self.background.drain(..) {
            task.abort();
        }
        self.hand_over_leadership().await;
        if let Err(e) = self.shared.raft.shutdown().await {
            tracing::debug!(error = %e, "raft was already stopped");
        }
        self.shared.transport.shutdown().await;
        if let Some(db) = self.rocks.take() {
            if let Err(e) = db.flush() {
                tracing::warn!(error = %e, "flushing storage failed (the WAL still holds every acknowledged write)");
            }
            db.stop_background_work();
        }
        tracing::info!(id = self.shared.config.id, "node stopped");
    }
}

/// Replaces the peer transport's TLS material (a reload).
pub(crate) type PeerTlsReload = Box<dyn Fn(&raft_tls::TlsConfig) -> Result<(), String> + Send + Sync>;

/// The transport, a way to read its counters, and one to replace its TLS material.
type BuiltTransport = (Arc<dyn Transport>, Box<dyn Fn() -> TransportCounters + Send + Sync>, PeerTlsReload);

/// Builds the transport the config names, with a way to read its counters and one to reload
/// its TLS material.
async fn build_transport(
    config: &NodeConfig,
    peers: BTreeMap<NodeId, SocketAddr>,
) -> Result<BuiltTransport, StartError> {
    let tls = match &config.tls {
        Some(tls) => Some(startup::read_tls(tls)?),
        None => None,
    };
    let n = &config.network;
    match config.transport {
        TransportKind::Tcp => {
            let mut tcp = raft_transport_tcp::TcpConfig::new(
                config.id,
                config.cluster.clone(),
                config.raft_addr,
                peers,
            );
            tcp.max_frame_bytes = n.max_frame_bytes;
            tcp.queue_max = n.peer_queue_max;
            tcp.tls = tls;
            tcp.keep_alive = Duration::from_millis(n.keep_alive_ms);
            tcp.idle_timeout = Duration::from_millis(n.idle_timeout_ms);
            let t = raft_transport_tcp::TcpTransport::start(tcp)
                .await
                .map_err(|e| StartError::Transport { kind: "tcp", message: e.to_string() })?;
            let t = Arc::new(t);
            let stats_of = t.clone();
            let reload_of = t.clone();
            Ok((
                t,
                Box::new(move || counters(&stats_of.stats())),
                Box::new(move |tls| reload_of.reload_tls(tls).map_err(|e| e.to_string())),
            ))
        }
        TransportKind::Quic => {
            let tls = tls
                .ok_or_else(|| StartError::Transport { kind: "quic", message: "[tls] is required".into() })?;
            let mut quic = raft_transport_quic::QuicConfig::new(
                config.id,
                config.cluster.clone(),
                config.raft_addr,
                peers,
                tls.ca_cert_pem,
                tls.cert_pem,
                tls.key_pem,
            );
            quic.max_frame_bytes = n.max_frame_bytes;
            quic.queue_max = n.peer_queue_max;
            quic.keep_alive = Duration::from_millis(n.keep_alive_ms);
            quic.idle_timeout = Duration::from_millis(n.idle_timeout_ms);
            let t = raft_transport_quic::QuicTransport::start(quic)
                .await
                .map_err(|e| StartError::Transport { kind: "quic", message: e.to_string() })?;
            let t = Arc::new(t);
            let stats_of = t.clone();
            let reload_of = t.clone();
            Ok((
                t,
                Box::new(move || counters(&stats_of.stats())),
                Box::new(move |tls| reload_of.reload_tls(tls).map_err(|e| e.to_string())),
            ))
        }
    }
}

fn counters(s: &raft_transport_common::TransportStats) -> TransportCounters {
    TransportCounters {
        sent: s.sent,
        received: s.received,
        dropped_queue_full: s.dropped_queue_full,
        dropped_other: s.dropped_oversized + s.dropped_misaddressed,
        refused: s.refused_handshakes + s.rejected_connections,
        bad_frames: s.bad_frames,
    }
}
