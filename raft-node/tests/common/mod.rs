//! An in-process cluster of `raft-node` nodes started from configs (real HTTP, real TCP).

#![allow(dead_code, clippy::unwrap_used, missing_docs)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use raft_client::api::{RoleView, StatusView};
use raft_client::{Client, ClientOptions};
use raft_node::config::{AuthConfig, ClientRole, MemberConfig, NodeConfig, StorageKind, TokenConfig};
use raft_node::discovery::MemoryBus;
use raft_node::Node;

/// A free port on loopback, checked by binding it (TCP and UDP) for a moment.
///
/// Ports come from below the kernel's ephemeral range, so no outgoing connection of another
/// test can take one between this check and the node's own bind (a port from `bind(":0")` can
/// be, and once was, handed to another test's client socket in that window). Each test process
/// starts at its own offset in that range so that concurrent processes rarely try the same one.
pub fn free_addr() -> SocketAddr {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32_768);
    const LOW: u32 = 10_000;
    if ephemeral_low <= LOW + 1_000 {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        return l.local_addr().unwrap();
    }
    let span = ephemeral_low - LOW;
    let start = std::process::id().wrapping_mul(2_654_435_761) % span;
    for _ in 0..span {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = (LOW + (start + n) % span) as u16;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        if std::net::TcpListener::bind(addr).is_ok() && std::net::UdpSocket::bind(addr).is_ok() {
            return addr;
        }
    }
    panic!("no free port below the ephemeral range")
}

/// Configs for an `n`-node cluster under `dir`, with fast timeouts.
pub fn configs(n: u64, dir: &Path, storage: StorageKind) -> Vec<NodeConfig> {
    let members: Vec<MemberConfig> =
        (1..=n).map(|id| MemberConfig { id, raft_addr: free_addr(), client_addr: free_addr() }).collect();
    members.iter().map(|m| config_for(m, members.clone(), dir, storage)).collect()
}

/// A config for member `m`.
pub fn config_for(
    m: &MemberConfig,
    members: Vec<MemberConfig>,
    dir: &Path,
    storage: StorageKind,
) -> NodeConfig {
    let text = format!(
        "cluster = \"test\"\nid = {}\nraft_addr = \"{}\"\nclient_addr = \"{}\"\ndata_dir = \"{}\"\n",
        m.id,
        m.raft_addr,
        m.client_addr,
        dir.join(format!("node{}", m.id)).display()
    );
    // Plaintext peers unless a test sets [tls]; an open client API unless it sets [auth].
    let overrides = [
        "join=[\"x\"]".into(),
        "insecure_plaintext_peers=true".into(),
        "insecure_open_client_api=true".into(),
    ];
    let mut config = NodeConfig::parse(&text, "test.toml", &overrides).unwrap();
    config.join.clear();
    config.members = members;
    config.storage = storage;
    config.raft.election_timeout_min_ms = 150;
    config.raft.election_timeout_max_ms = 300;
    config.raft.heartbeat_interval_ms = 30;
    config
}

pub struct TestCluster {
    pub dir: tempfile::TempDir,
    pub configs: Vec<NodeConfig>,
    pub nodes: Vec<Option<Node>>,
}

impl TestCluster {
    pub async fn start(n: u64, storage: StorageKind) -> Self {
        Self::start_with(n, storage, |_| {}).await
    }

    pub async fn start_with(n: u64, storage: StorageKind, tweak: impl Fn(&mut NodeConfig)) -> Self {
        Self::start_on(n, storage, tweak, None).await
    }

    /// Like `start_with`; with a bus, discovery datagrams go through it instead of multicast.
    pub async fn start_on(
        n: u64,
        storage: StorageKind,
        tweak: impl Fn(&mut NodeConfig),
        bus: Option<&MemoryBus>,
    ) -> Self {
        // A port can still be taken by a concurrent test process between `free_addr`'s check and
        // the node's bind: then the whole cluster starts again on other ports.
        let mut attempts = 0;
        'attempt: loop {
            attempts += 1;
            let dir = tempfile::tempdir().unwrap();
            let mut configs = configs(n, dir.path(), storage);
            for c in &mut configs {
                tweak(c);
                assert!(c.problems().is_empty(), "{:?}", c.problems());
            }
            // Together: a node with an empty data dir starts only once every member answered.
            let starts = configs.iter().map(|c| async move {
                match bus {
                    Some(bus) => Node::start_with_discovery_channel(c.clone(), bus.channel()).await,
                    None => Node::start(c.clone()).await,
                }
            });
            // The first failure drops the other starts (they would wait for it forever).
            let nodes = match futures_util::future::try_join_all(starts).await {
                Ok(nodes) => nodes.into_iter().map(Some).collect(),
                Err(e @ raft_node::StartError::Bind { .. }) if attempts < 5 => {
                    eprintln!("starting again on other ports: {e}");
                    continue 'attempt;
                }
                Err(e) => panic!("a node did not start: {e}"),
            };
            let cluster = Self { dir, configs, nodes };
            cluster.wait_for_leader().await;
            return cluster;
        }
    }

    pub fn endpoint(&self, id: u64) -> String {
        self.configs[(id - 1) as usize].client_addr.to_string()
    }

    pub fn endpoints(&self) -> Vec<String> {
        self.configs.iter().map(|c| c.client_addr.to_string()).collect()
    }

    /// The token the nodes present to each other (`auth.token_file`), which the test's
    /// clients present too; `None` with an open API.
    pub fn token(&self) -> Option<String> {
        self.configs[0].own_token()
    }

    /// The TLS the nodes use towards each other's APIs (with `[api_tls]`), which the test's
    /// clients use too; `None` with plain HTTP.
    pub fn client_tls(&self) -> Option<raft_client::ClientTls> {
        self.configs[0].member_client_tls().unwrap()
    }

    pub fn client(&self) -> Client {
        let options =
            ClientOptions { token: self.token(), tls: self.client_tls(), ..ClientOptions::default() };
        Client::new(self.endpoints(), options).unwrap()
    }

    /// A client that only talks to node `id`.
    pub fn client_of(&self, id: u64) -> Client {
        let options = ClientOptions {
            max_retries: 0,
            token: self.token(),
            tls: self.client_tls(),
            ..ClientOptions::default()
        };
        Client::new([self.endpoint(id)], options).unwrap()
    }

    pub async fn statuses(&self) -> Vec<StatusView> {
        let mut out = Vec::new();
        for (i, node) in self.nodes.iter().enumerate() {
            if node.is_some() {
                if let Ok(s) = self.client_of(i as u64 + 1).status().await {
                    out.push(s);
                }
            }
        }
        out
    }

    pub async fn wait_for_leader(&self) -> u64 {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let statuses = self.statuses().await;
            if let Some(leader) = statuses.iter().find(|s| s.role == RoleView::Leader) {
                // Wait until the leader committed its first entry (it can serve reads).
                if leader.commit_index > 0 && statuses.iter().all(|s| s.leader == Some(leader.id)) {
                    return leader.id;
                }
            }
            assert!(Instant::now() < deadline, "no leader: {statuses:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn leader(&self) -> u64 {
        self.wait_for_leader().await
    }

    /// Some node that is not the leader.
    pub async fn follower(&self) -> u64 {
        let leader = self.leader().await;
        (1..=self.configs.len() as u64)
            .find(|&id| id != leader && self.nodes[(id - 1) as usize].is_some())
            .unwrap()
    }

    /// Waits until every running node has applied the same index with the same state hash.
    pub async fn wait_converged(&self) -> Vec<StatusView> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let s = self.statuses().await;
            let running = self.nodes.iter().filter(|n| n.is_some()).count();
            if s.len() == running
                && s.windows(2)
                    .all(|w| w[0].applied_index == w[1].applied_index && w[0].state_hash == w[1].state_hash)
                && s.iter().all(|x| x.applied_index >= x.commit_index)
            {
                return s;
            }
            assert!(Instant::now() < deadline, "nodes did not converge: {s:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn stop(&mut self, id: u64) {
        if let Some(node) = self.nodes[(id - 1) as usize].take() {
            node.shutdown().await;
        }
    }

    pub async fn restart(&mut self, id: u64) {
        self.stop(id).await;
        let node = Node::start(self.configs[(id - 1) as usize].clone()).await.unwrap();
        self.nodes[(id - 1) as usize] = Some(node);
    }

    pub async fn shutdown(mut self) {
        for id in 1..=self.nodes.len() as u64 {
            self.stop(id).await;
        }
    }

    pub fn data_dir(&self, id: u64) -> PathBuf {
        self.configs[(id - 1) as usize].data_dir.clone()
    }

    /// Waits until every node has registered its addresses in the replicated address book.
    pub async fn wait_registered(&self) {
        let client = self.client();
        eventually("every node to register", || async {
            client.members().await.map(|m| m.members.iter().all(|m| m.registered)).unwrap_or(false)
        })
        .await;
    }
}

/// Flips bytes in the middle of every table (SST) file of a stopped node's data dir `dir`
/// (its stop flushed the memtables into them).
pub fn damage_table_files(dir: &Path) {
    let mut damaged = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|x| x == "sst") {
            let mut bytes = std::fs::read(&path).unwrap();
            let (mid, len) = (bytes.len() / 2, bytes.len());
            for b in &mut bytes[mid..(mid + 16).min(len)] {
                *b ^= 0xA5;
            }
            std::fs::write(&path, bytes).unwrap();
            damaged += 1;
        }
    }
    assert!(damaged > 0, "no table file to damage in {}", dir.display());
}

/// Polls `check` until it holds (or panics after 20 s).
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(20);
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `[auth]` with `tokens` as (name, role, token) entries, only their hashes kept; the first
/// token is also the nodes' own (`token_file`, written under `dir`).
pub fn auth_config(dir: &Path, tokens: &[(&str, ClientRole, &str)], open_ops: bool) -> AuthConfig {
    let token_file = dir.join("admin.token");
    std::fs::write(&token_file, format!("{}\n", tokens[0].2)).unwrap();
    AuthConfig {
        tokens: tokens
            .iter()
            .map(|&(name, role, token)| TokenConfig {
                name: name.into(),
                role,
                sha256: raft_node::hash_token(token),
            })
            .collect(),
        certificates: Vec::new(),
        open_ops,
        token_file: Some(token_file),
    }
}

/// A plain-HTTP reqwest client for raw API calls. reqwest is built with
/// `rustls-no-provider` (raft-client gives it ring explicitly), so its default constructors
/// would find no TLS provider: this one gets a ring configuration that trusts nothing.
pub fn plain_http() -> reqwest::ClientBuilder {
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    reqwest::Client::builder().tls_backend_preconfigured(tls)
}
