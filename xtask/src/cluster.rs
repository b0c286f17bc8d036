//! `cargo xtask cluster up|down|status|kill N|restart N`: a local cluster of `raft-node`
//! processes on 127.0.0.1, with configs, data, logs and pid files under `target/cluster/`.
//!
//! Ports: node N's Raft transport listens on 7000+N, its HTTP API on 8080+N (the defaults of
//! `raftctl`'s `--endpoints` for three nodes).
//!
//! The same code starts the clusters of `cargo xtask bench` ([`LocalCluster`], in another
//! directory on other ports: a [`Layout`], its processes owned and stopped on drop) and writes
//! the configs of `cargo xtask chaos` ([`NodeSpec`], [`ConfigCommon`], [`spawn_node`]).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use raft_client::api::{RoleView, StatusView};
use raft_client::{Client, ClientOptions, ClientTls};

use crate::procs::{self, Children};

/// Where a local cluster lives: its directory and its nodes' ports (node N listens on the
/// bases + N, on 127.0.0.1).
#[derive(Debug, Clone)]
pub(crate) struct Layout {
    /// Configs, data directories, logs and pid files.
    pub dir: PathBuf,
    /// Node N's Raft transport listens on `raft_port_base + N`.
    pub raft_port_base: u16,
    /// Node N's HTTP API listens on `http_port_base + N`.
    pub http_port_base: u16,
}

impl Layout {
    /// The layout of `cargo xtask cluster`: `target/cluster/`, ports 7000+N and 8080+N.
    fn cli(root: &Path) -> Self {
        Self { dir: root.join("target").join("cluster"), raft_port_base: 7000, http_port_base: 8080 }
    }

    fn raft_addr(&self, id: u64) -> String {
        format!("127.0.0.1:{}", u64::from(self.raft_port_base) + id)
    }

    /// Node `id`'s HTTP address.
    pub(crate) fn client_addr(&self, id: u64) -> String {
        format!("127.0.0.1:{}", u64::from(self.http_port_base) + id)
    }

    fn spec(&self, id: u64) -> NodeSpec {
        NodeSpec {
            id,
            raft_addr: self.raft_addr(id),
            client_addr: self.client_addr(id),
            raft_advertise_addr: None,
            data_dir: self.dir.join(format!("data{id}")),
        }
    }

    fn pid_file(&self, id: u64) -> PathBuf {
        self.dir.join(format!("node{id}.pid"))
    }

    fn config_file(&self, id: u64) -> PathBuf {
        self.dir.join(format!("node{id}.toml"))
    }

    fn log_file(&self, id: u64) -> PathBuf {
        self.dir.join(format!("node{id}.log"))
    }

    /// A node started by an earlier xtask that is still running.
    fn running_pid(&self, id: u64) -> Option<u32> {
        let pid: u32 = std::fs::read_to_string(self.pid_file(id)).ok()?.trim().parse().ok()?;
        procs::exists(pid).then_some(pid)
    }

    fn node_ids(&self) -> Vec<u64> {
        (1..=9).filter(|&id| self.config_file(id).exists()).collect()
    }

    fn binary_path(&self) -> Result<PathBuf> {
        let path = std::fs::read_to_string(self.dir.join("binary"))
            .context("no cluster here; run `cargo xtask cluster up`")?;
        Ok(PathBuf::from(path.trim()))
    }
}

/// What `up` builds and starts.
#[derive(Debug, Clone)]
pub(crate) struct ClusterOptions {
    /// Number of nodes, 1 to 9.
    pub nodes: u64,
    /// `tcp` or `quic`.
    pub transport: String,
    /// `rocks` or `mem`.
    pub storage: String,
    /// Build and run the release binary.
    pub release: bool,
    /// Remove the directory first: start from empty data.
    pub clean: bool,
    /// Plaintext Raft peers (`--insecure`) instead of mutual TLS with dev certificates.
    pub insecure: bool,
    /// A client API without tokens (`--insecure`, and the benchmarks' load generators)
    /// instead of an admin token in `admin.token`.
    pub open_api: bool,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        Self {
            nodes: 3,
            transport: "tcp".into(),
            storage: "rocks".into(),
            release: true,
            clean: false,
            insecure: false,
            open_api: false,
        }
    }
}

impl ClusterOptions {
    /// Checks the values that `parse_options` does not.
    pub(crate) fn validate(&self) -> Result<()> {
        if !(1..=9).contains(&self.nodes) {
            bail!("--nodes must be 1 to 9");
        }
        if !["tcp", "quic"].contains(&self.transport.as_str())
            || !["rocks", "mem"].contains(&self.storage.as_str())
        {
            bail!("--transport tcp|quic, --storage rocks|mem");
        }
        if self.insecure && self.transport == "quic" {
            bail!("--insecure: QUIC always uses mutual TLS");
        }
        Ok(())
    }
}

fn parse_options(args: &[String]) -> Result<ClusterOptions> {
    let mut o = ClusterOptions::default();
    let mut i = 0;
    while i < args.len() {
        let value = || args.get(i + 1).cloned().with_context(|| format!("{} needs a value", args[i]));
        match args[i].as_str() {
            "--nodes" => {
                o.nodes = value()?.parse().context("--nodes: not a number")?;
                i += 1;
            }
            "--transport" => {
                o.transport = value()?;
                i += 1;
            }
            "--storage" => {
                o.storage = value()?;
                i += 1;
            }
            "--debug" => o.release = false,
            "--clean" => o.clean = true,
            "--insecure" => {
                o.insecure = true;
                o.open_api = true;
            }
            other => bail!("unknown option {other}"),
        }
        i += 1;
    }
    o.validate()?;
    Ok(o)
}

const USAGE: &str = "usage: cargo xtask cluster up [--nodes N] [--transport tcp|quic] [--storage rocks|mem] [--debug] [--clean] [--insecure] \
                     | down [--clean] | status | kill N | restart N";

/// Runs a `cluster` subcommand.
pub fn cluster(root: &Path, args: &[String]) -> Result<()> {
    let layout = Layout::cli(root);
    // A running cluster's clients present its admin token (an open cluster has none).
    let token = std::fs::read_to_string(layout.dir.join("admin.token")).ok();
    use_token(token.map(|t| t.trim().to_string()).filter(|t| !t.is_empty()));
    use_tls(ClientTls::from_files(&layout.dir.join(API_CA_FILE), None).ok());
    match args.first().map(String::as_str) {
        Some("up") => up(root, &layout, &parse_options(&args[1..])?),
        Some("down") => down(&layout, args.iter().any(|a| a == "--clean")),
        Some("status") => status(&layout),
        Some("kill") => kill(&layout, node_arg(args)?),
        Some("restart") => restart(&layout, node_arg(args)?),
        _ => bail!(USAGE),
    }
}

fn node_arg(args: &[String]) -> Result<u64> {
    args.get(1).with_context(|| USAGE.to_string())?.parse().context("the node id must be a number")
}

fn up(root: &Path, layout: &Layout, o: &ClusterOptions) -> Result<()> {
    let (cluster, leader) = LocalCluster::up(root, layout, o, Children::default())?;
    let endpoints = cluster.endpoints();
    let binary = cluster.binary.clone();
    cluster.detach();
    println!(
        "\ncluster \"local\" is up: {} nodes ({}, {}), leader: node {leader}",
        o.nodes, o.transport, o.storage
    );
    let api_ca = layout.dir.join(API_CA_FILE);
    let https = api_ca.exists();
    let scheme = if https { "https" } else { "http" };
    for id in 1..=o.nodes {
        println!(
            "  node {id}: {scheme}://{}  raft {}  log {}",
            layout.client_addr(id),
            layout.raft_addr(id),
            layout.log_file(id).display()
        );
    }
    let ctl = format!("{} ctl --endpoints {}", binary.display(), endpoints.join(","));
    println!("\ntry:\n  {ctl} put greeting hello\n  {ctl} get greeting\n  {ctl} status");
    let auth = if o.open_api {
        String::new()
    } else {
        format!(" -H \"Authorization: Bearer $(cat {})\"", layout.dir.join("admin.token").display())
    };
    let cacert = if https { format!(" --cacert {}", api_ca.display()) } else { String::new() };
    println!(
        "  curl -s{cacert}{auth} {scheme}://{}/v1/status\n  cargo xtask cluster kill 1 | restart 1 | status | down",
        layout.client_addr(1)
    );
    let token = if o.open_api {
        String::new()
    } else {
        format!(" (it asks for a token: the one in {})", layout.dir.join("admin.token").display())
    };
    let trust = if https {
        format!(
            "\n  (the browser does not know the dev CA: import {} or accept the warning)",
            api_ca.display()
        )
    } else {
        String::new()
    };
    println!(
        "\nthe cluster page, live, from any node: {scheme}://{}/ui{token}{trust}",
        layout.client_addr(1)
    );
    Ok(())
}

/// A cluster of `raft-node` processes started by this xtask. Dropping it stops them (SIGTERM,
/// then SIGKILL), unless it was [`detach`](LocalCluster::detach)ed.
pub(crate) struct LocalCluster {
    layout: Layout,
    binary: PathBuf,
    nodes: u64,
    children: Children,
    /// Left running on drop.
    detached: bool,
    /// What every node's config shares (when this command wrote the configs).
    common: Option<ConfigCommon>,
}

impl LocalCluster {
    /// Builds `raft-node`, writes the configs and starts the nodes under `layout`, then waits
    /// for a leader that has committed an entry; returns the cluster and the leader's id. The
    /// nodes' handles go into `children` (which the caller may have registered with
    /// [`procs::stop_on_ctrl_c`]).
    pub(crate) fn up(
        root: &Path,
        layout: &Layout,
        o: &ClusterOptions,
        children: Children,
    ) -> Result<(Self, u64)> {
        o.validate()?;
        if layout.node_ids().iter().any(|&id| layout.running_pid(id).is_some()) {
            bail!(
                "a cluster is already running from {}; `cargo xtask cluster down` first",
                layout.dir.display()
            );
        }
        let binary = build_raft_node(root, o.release)?;
        let dir = &layout.dir;
        if o.clean && dir.exists() {
            std::fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))?;
        }
        std::fs::create_dir_all(dir)?;
        std::fs::write(dir.join("binary"), binary.display().to_string())?;
        let tls_dir = if o.insecure {
            println!(
                "peers: INSECURE plaintext (--insecure): anyone who reaches a Raft port can act as a member"
            );
            None
        } else {
            let certs_dir = dir.join("certs");
            raft_tls::generate_dev_certs("local", 1..=9)?.write_dev_certs(&certs_dir)?;
            println!("peers: mutual TLS, dev certificates in {}", certs_dir.display());
            Some(certs_dir)
        };
        for id in 1..=o.nodes {
            for addr in [layout.raft_addr(id), layout.client_addr(id)] {
                if std::net::TcpListener::bind(&addr).is_err() {
                    bail!("{addr} is in use; is another cluster running? (`cargo xtask cluster down`)");
                }
            }
        }
        let members: Vec<NodeSpec> = (1..=o.nodes).map(|id| layout.spec(id)).collect();
        let token_file = if o.open_api {
            println!("client API: INSECURE, no tokens (--insecure): anyone who reaches it can write and administer");
            None
        } else {
            let file = write_admin_token(dir)?;
            println!(
                "client API: tokens; the admin token is in {} (`raft-node ctl` run from the repository \
                 finds it; curl: -H \"Authorization: Bearer $(cat {})\")",
                file.display(),
                file.display()
            );
            Some(file)
        };
        // HTTPS whenever clients present a token, so that it never travels in clear.
        let api_tls = tls_dir.is_some() && token_file.is_some();
        let api_ca = dir.join(API_CA_FILE);
        let _ = std::fs::remove_file(&api_ca);
        match &tls_dir {
            Some(certs) if api_tls => {
                std::fs::copy(certs.join("ca.pem"), &api_ca)?;
                use_tls(Some(ClientTls::from_files(&api_ca, None).map_err(anyhow::Error::msg)?));
                println!("client API: HTTPS, certificates signed by the dev CA {}", api_ca.display());
            }
            _ => {
                use_tls(None);
                println!("client API: plain HTTP");
            }
        }
        let common = ConfigCommon {
            cluster: "local".into(),
            transport: o.transport.clone(),
            storage: o.storage.clone(),
            tls_dir,
            api_tls,
            token_file,
            extra_toml: String::new(),
            written_by: "cargo xtask cluster".into(),
        };
        for node in &members {
            std::fs::write(layout.config_file(node.id), common.node_config(node, &members, None))?;
        }
        // Stale configs of a bigger cluster would be taken for members.
        for id in o.nodes + 1..=9 {
            let _ = std::fs::remove_file(layout.config_file(id));
        }
        let cluster = Self {
            layout: layout.clone(),
            binary,
            nodes: o.nodes,
            children,
            detached: false,
            common: Some(common),
        };
        for id in 1..=o.nodes {
            cluster.start_node(id)?;
        }
        let leader = runtime()?
            .block_on(leader_elected(&cluster.endpoints(), Duration::from_secs(30)))
            .with_context(|| format!("see the node logs in {}", dir.display()))?;
        Ok((cluster, leader))
    }

    /// The nodes' HTTP addresses, node 1 first.
    pub(crate) fn endpoints(&self) -> Vec<String> {
        (1..=self.nodes).map(|id| self.layout.client_addr(id)).collect()
    }

    /// Starts (or restarts, after [`kill`](Self::kill)) node `id` from its config.
    pub(crate) fn start_node(&self, id: u64) -> Result<()> {
        let layout = &self.layout;
        let child = spawn_node(Command::new(&self.binary), &layout.config_file(id), &layout.log_file(id))?;
        std::fs::write(layout.pid_file(id), child.id().to_string())?;
        println!("started node {id} (pid {})", child.id());
        self.children.insert(&node_name(id), child);
        Ok(())
    }

    /// Empties the data directory of (stopped) node `id` and rewrites its config so that it
    /// joins the running cluster through the other nodes' HTTP addresses: a wiped node comes
    /// back as a new member (it was removed first), never with its old identity.
    pub(crate) fn wipe_for_rejoin(&self, id: u64) -> Result<()> {
        let common = self.common.as_ref().context("the cluster's configs were not written here")?;
        let spec = self.layout.spec(id);
        if spec.data_dir.exists() {
            std::fs::remove_dir_all(&spec.data_dir)
                .with_context(|| format!("removing {}", spec.data_dir.display()))?;
        }
        let members: Vec<NodeSpec> = (1..=self.nodes).map(|i| self.layout.spec(i)).collect();
        let through: Vec<String> =
            (1..=self.nodes).filter(|&i| i != id).map(|i| self.layout.client_addr(i)).collect();
        std::fs::write(self.layout.config_file(id), common.node_config(&spec, &members, Some(&through)))?;
        Ok(())
    }

    /// The log file of node `id`.
    pub(crate) fn log_path(&self, id: u64) -> PathBuf {
        self.layout.log_file(id)
    }

    /// The process id of running node `id`, from its pid file.
    pub(crate) fn pid(&self, id: u64) -> Option<u32> {
        std::fs::read_to_string(self.layout.pid_file(id)).ok()?.trim().parse().ok()
    }

    /// SIGKILLs node `id`; returns the instant just before the signal.
    pub(crate) fn kill(&self, id: u64) -> Result<Instant> {
        let at = self.children.kill(&node_name(id))?;
        let _ = std::fs::remove_file(self.layout.pid_file(id));
        Ok(at)
    }

    /// Stops every node (SIGTERM, then SIGKILL after a grace period).
    pub(crate) fn stop(&self) {
        self.children.stop_all();
        for id in 1..=self.nodes {
            let _ = std::fs::remove_file(self.layout.pid_file(id));
        }
    }

    /// Leaves the nodes running after this xtask exits (`cargo xtask cluster up`); the pid
    /// files let `down`, `kill` and `restart` find them.
    fn detach(mut self) {
        // Dropping a `Child` neither kills nor waits for it.
        self.detached = true;
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        if !self.detached {
            self.stop();
        }
    }
}

fn node_name(id: u64) -> String {
    format!("node{id}")
}

/// Builds `raft-node` (release or debug) and returns the binary's path; with `RAFT_NODE_BINARY`
/// set, returns that binary instead, unbuilt (to measure two builds one after the other:
/// `RAFT_NODE_BINARY=/tmp/a/raft-node cargo xtask bench ...`).
pub fn build_raft_node(root: &Path, release: bool) -> Result<PathBuf> {
    if let Some(binary) = std::env::var_os("RAFT_NODE_BINARY").map(PathBuf::from) {
        anyhow::ensure!(binary.is_file(), "RAFT_NODE_BINARY={} is not a file", binary.display());
        println!("raft-node: {} (RAFT_NODE_BINARY, not built)", binary.display());
        return Ok(binary);
    }
    crate::setup::ensure(crate::setup::Needs::Build)?;
    let target =
        std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| root.join("target"));
    let profile = if release { "release" } else { "debug" };
    let binary = target.join(profile).join("raft-node");
    if !binary.is_file() {
        println!(
            "building raft-node ({profile}): the first build compiles RocksDB's C++ sources and takes about 15 minutes on 2 cores (30 with a cold crate cache); later builds take seconds"
        );
    }
    let mut build = vec!["build", "-p", "raft-node"];
    if release {
        build.push("--release");
    }
    crate::cargo(&build)?;
    Ok(binary)
}

/// One node of a local cluster: where it listens and where it keeps its data.
#[derive(Debug, Clone)]
pub struct NodeSpec {
    /// Node id.
    pub id: u64,
    /// `ip:port` of its Raft transport.
    pub raft_addr: String,
    /// `ip:port` of its HTTP API.
    pub client_addr: String,
    /// `ip:port` the other nodes dial for its Raft transport, when not `raft_addr` (a proxy in
    /// front of it).
    pub raft_advertise_addr: Option<String>,
    /// RocksDB's directory.
    pub data_dir: PathBuf,
}

impl NodeSpec {
    /// The address the other nodes dial for its Raft transport.
    pub fn advertised_raft_addr(&self) -> &str {
        self.raft_advertise_addr.as_deref().unwrap_or(&self.raft_addr)
    }
}

/// What every node's config file of a local cluster has in common.
#[derive(Debug, Clone)]
pub struct ConfigCommon {
    /// The cluster id.
    pub cluster: String,
    /// `tcp` or `quic`.
    pub transport: String,
    /// `rocks` or `mem`.
    pub storage: String,
    /// Dev certificates (`ca.pem`, `node-<id>.pem`, `node-<id>-key.pem`) for mutual TLS
    /// between peers; `None` writes `insecure_plaintext_peers = true`.
    pub tls_dir: Option<PathBuf>,
    /// HTTPS on the client API with the dev certificates of `tls_dir` (`api-<id>.pem`).
    pub api_tls: bool,
    /// The admin token's file (see [`write_admin_token`]): client authentication with it as
    /// the only token, and each node's own token for joining; `None` writes
    /// `insecure_open_client_api = true`.
    pub token_file: Option<PathBuf>,
    /// TOML appended to every file (`[raft]`, `[limits]` sections, ...).
    pub extra_toml: String,
    /// Named in the header comment.
    pub written_by: String,
}

impl ConfigCommon {
    /// The config file of `node`: a member of a new cluster of `members`, or, with `join`,
    /// a node that joins the running cluster through these HTTP addresses.
    pub fn node_config(&self, node: &NodeSpec, members: &[NodeSpec], join: Option<&[String]>) -> String {
        let mut text = format!(
            "# Written by `{}`; see raft-node/node.example.toml for every key.\n\
             cluster = \"{}\"\nid = {}\nraft_addr = \"{}\"\nclient_addr = \"{}\"\ndata_dir = \"{}\"\n\
             transport = \"{}\"\nstorage = \"{}\"\n",
            self.written_by,
            self.cluster,
            node.id,
            node.raft_addr,
            node.client_addr,
            node.data_dir.display(),
            self.transport,
            self.storage,
        );
        if let Some(advertised) = &node.raft_advertise_addr {
            text.push_str(&format!("raft_advertise_addr = \"{advertised}\"\n"));
        }
        if self.tls_dir.is_none() {
            // A top-level key: before the [[members]] tables.
            text.push_str("# Plaintext Raft peers: for an isolated test network only.\ninsecure_plaintext_peers = true\n");
        }
        if self.token_file.is_none() {
            text.push_str("# No client authentication: for an isolated test network only.\ninsecure_open_client_api = true\n");
        }
        match join {
            Some(through) => {
                let list: Vec<String> = through.iter().map(|a| format!("\"{a}\"")).collect();
                text.push_str(&format!("join = [{}]\n\n", list.join(", ")));
            }
            None => {
                text.push('\n');
                for m in members {
                    text.push_str(&format!(
                        "[[members]]\nid = {}\nraft_addr = \"{}\"\nclient_addr = \"{}\"\n\n",
                        m.id,
                        m.advertised_raft_addr(),
                        m.client_addr
                    ));
                }
            }
        }
        if let Some(certs) = &self.tls_dir {
            text.push_str(&format!(
                "[tls]\nca_cert = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\n\n",
                certs.join("ca.pem").display(),
                certs.join(format!("node-{}.pem", node.id)).display(),
                certs.join(format!("node-{}-key.pem", node.id)).display()
            ));
        }
        if let (true, Some(certs)) = (self.api_tls, &self.tls_dir) {
            text.push_str(&format!(
                "[api_tls]\ncert = \"{}\"\nkey = \"{}\"\n\n",
                certs.join(format!("api-{}.pem", node.id)).display(),
                certs.join(format!("api-{}-key.pem", node.id)).display()
            ));
        }
        if let Some(file) = &self.token_file {
            let token = std::fs::read_to_string(file).unwrap_or_default();
            text.push_str(&format!(
                "[auth]\ntoken_file = \"{}\"\n\n[[auth.tokens]]\nname = \"admin\"\nrole = \"admin\"\nsha256 = \"{}\"\n\n",
                file.display(),
                hex(ring::digest::digest(&ring::digest::SHA256, token.trim().as_bytes()).as_ref())
            ));
        }
        text.push_str(&self.extra_toml);
        text
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// What xtask's own clients present to the cluster it started: its token (none for an open
/// API) and, for an HTTPS API, the CA that signs the nodes' API certificates.
static CLUSTER_ACCESS: std::sync::Mutex<(Option<String>, Option<ClientTls>)> =
    std::sync::Mutex::new((None, None));

/// The copy of the dev CA that an HTTPS local cluster's clients trust (`raft-node ctl` finds
/// it, as it finds `admin.token`); absent for a plain HTTP cluster.
pub const API_CA_FILE: &str = "api-ca.pem";

/// Writes a new random admin token to `dir/admin.token` (readable by its owner only) and
/// makes xtask's clients present it. Returns the file.
pub fn write_admin_token(dir: &Path) -> Result<PathBuf> {
    use ring::rand::SecureRandom;
    use std::os::unix::fs::OpenOptionsExt;
    let mut bytes = [0u8; 32];
    ring::rand::SystemRandom::new().fill(&mut bytes).map_err(|_| anyhow::anyhow!("no random bytes"))?;
    let token = hex(&bytes);
    let file = dir.join("admin.token");
    let _ = std::fs::remove_file(&file);
    let mut out = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&file)
        .with_context(|| format!("writing {}", file.display()))?;
    std::io::Write::write_all(&mut out, format!("{token}\n").as_bytes())?;
    use_token(Some(token));
    Ok(file)
}

/// Makes xtask's clients present `token` (or none).
pub fn use_token(token: Option<String>) {
    CLUSTER_ACCESS.lock().unwrap_or_else(std::sync::PoisonError::into_inner).0 = token;
}

/// Makes xtask's clients speak HTTPS with `tls` (or plain HTTP with `None`).
pub fn use_tls(tls: Option<ClientTls>) {
    CLUSTER_ACCESS.lock().unwrap_or_else(std::sync::PoisonError::into_inner).1 = tls;
}

/// `options` with the token and TLS of the cluster xtask started.
pub fn with_credentials(options: ClientOptions) -> ClientOptions {
    let (token, tls) = CLUSTER_ACCESS.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
    ClientOptions { token, tls, ..options }
}

/// Starts `raft-node run --config CONFIG` through `command` (the binary itself, or a wrapper
/// whose arguments end with it), output appended to `log`, in its own process group (Ctrl-C
/// in the terminal does not reach it; its owner stops it).
pub fn spawn_node(mut command: Command, config: &Path, log: &Path) -> Result<std::process::Child> {
    use std::os::unix::process::CommandExt;
    let log_file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("opening {}", log.display()))?;
    command
        .args(["run", "--config"])
        .arg(config)
        .stdin(Stdio::null())
        .stdout(log_file.try_clone()?)
        .stderr(log_file)
        .process_group(0)
        .spawn()
        .with_context(|| format!("starting {:?}", command.get_program()))
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread().enable_all().build().context("starting tokio")
}

/// A client for status polling: short timeout, no retries.
pub(crate) fn status_client(endpoints: &[String]) -> Result<Client> {
    let options =
        ClientOptions { request_timeout: Duration::from_millis(500), max_retries: 0, ..Default::default() };
    Ok(Client::new(endpoints, with_credentials(options))?)
}

/// The leader's status, if one of the nodes answers as a leader that has committed an entry
/// of its term (its no-op is committed: it can serve writes and reads).
pub(crate) async fn find_leader(client: &Client) -> Option<StatusView> {
    client
        .statuses()
        .await
        .into_iter()
        .filter_map(|(_, status)| status.ok())
        .find(|s| s.role == RoleView::Leader && s.commit_index > 0)
}

/// Waits (polling every node's `/v1/status`) for a leader that has committed an entry; its id.
pub async fn leader_elected(endpoints: &[String], within: Duration) -> Result<u64> {
    let client = status_client(endpoints)?;
    let deadline = Instant::now() + within;
    loop {
        if let Some(leader) = find_leader(&client).await {
            return Ok(leader.id);
        }
        if Instant::now() > deadline {
            bail!("no leader after {within:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until `pid` is gone; false if it still runs after `within`.
pub fn wait_gone(pid: u32, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while procs::exists(pid) {
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    true
}

fn down(layout: &Layout, clean: bool) -> Result<()> {
    for id in layout.node_ids() {
        if let Some(pid) = layout.running_pid(id) {
            procs::signal(pid, "-TERM")?;
            if !wait_gone(pid, Duration::from_secs(10)) {
                procs::signal(pid, "-KILL")?;
                wait_gone(pid, Duration::from_secs(5));
            }
            println!("stopped node {id} (pid {pid})");
        }
        let _ = std::fs::remove_file(layout.pid_file(id));
    }
    if clean && layout.dir.exists() {
        std::fs::remove_dir_all(&layout.dir)?;
        println!("removed {}", layout.dir.display());
    }
    Ok(())
}

fn kill(layout: &Layout, id: u64) -> Result<()> {
    let pid = layout.running_pid(id).with_context(|| format!("node {id} is not running"))?;
    procs::signal(pid, "-KILL")?;
    wait_gone(pid, Duration::from_secs(5));
    println!("killed node {id} (pid {pid}) with SIGKILL");
    Ok(())
}

fn restart(layout: &Layout, id: u64) -> Result<()> {
    if let Some(pid) = layout.running_pid(id) {
        procs::signal(pid, "-TERM")?;
        wait_gone(pid, Duration::from_secs(10));
    }
    let cluster = LocalCluster {
        layout: layout.clone(),
        binary: layout.binary_path()?,
        nodes: layout.node_ids().len() as u64,
        children: Children::default(),
        // The node outlives this command, like the others.
        detached: true,
        common: None,
    };
    cluster.start_node(id)
}

fn status(layout: &Layout) -> Result<()> {
    let ids = layout.node_ids();
    if ids.is_empty() {
        bail!("no cluster in {}; run `cargo xtask cluster up`", layout.dir.display());
    }
    println!(
        "{:<5} {:<7} {:<22} {:<10} {:>6} {:>8} {:>8} {:<18}",
        "node", "pid", "http", "role", "term", "commit", "applied", "state hash"
    );
    runtime()?.block_on(async {
        for id in ids {
            let pid = layout.running_pid(id).map_or("-".to_string(), |p| p.to_string());
            let addr = layout.client_addr(id);
            match status_client(std::slice::from_ref(&addr))?.status().await {
                Ok(s) => println!(
                    "{:<5} {:<7} {:<22} {:<10} {:>6} {:>8} {:>8} {:<18}",
                    id,
                    pid,
                    addr,
                    format!("{:?}", s.role).to_lowercase(),
                    s.term,
                    s.commit_index,
                    s.applied_index,
                    s.state_hash
                ),
                Err(_) => println!("{:<5} {:<7} {:<22} down", id, pid, addr),
            }
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plaintext_peers_are_chosen_at_the_top_level_not_inside_a_member() {
        let spec = |id: u64| NodeSpec {
            id,
            raft_addr: format!("127.0.0.1:700{id}"),
            client_addr: format!("127.0.0.1:808{id}"),
            raft_advertise_addr: None,
            data_dir: PathBuf::from(format!("d{id}")),
        };
        let members = [spec(1), spec(2)];
        let mut common = ConfigCommon {
            cluster: "t".into(),
            transport: "tcp".into(),
            storage: "mem".into(),
            tls_dir: None,
            api_tls: false,
            token_file: None,
            extra_toml: String::new(),
            written_by: "test".into(),
        };
        let text = common.node_config(&members[0], &members, None);
        let key = text.find("insecure_plaintext_peers = true").expect("plaintext chosen");
        assert!(key < text.find("[[members]]").expect("members"), "{text}");
        common.tls_dir = Some(PathBuf::from("certs"));
        let text = common.node_config(&members[0], &members, None);
        assert!(!text.contains("insecure_plaintext_peers") && text.contains("[tls]"), "{text}");
    }
}
