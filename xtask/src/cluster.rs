//! `cargo xtask cluster up|down|status|kill N|restart N`: a local cluster of `raft-node`
//! processes on 127.0.0.1, with configs, data, logs and pid files under `target/cluster/`.
//!
//! Ports: node N's Raft transport listens on 7000+N, its HTTP API on 8080+N (the defaults of
//! `raftctl`'s `--endpoints` for three nodes).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use raft_client::api::RoleView;
use raft_client::{Client, ClientOptions};

/// What `up` builds and starts.
struct Options {
    nodes: u64,
    transport: String,
    storage: String,
    release: bool,
    clean: bool,
}

fn parse_options(args: &[String]) -> Result<Options> {
    let mut o =
        Options { nodes: 3, transport: "tcp".into(), storage: "rocks".into(), release: true, clean: false };
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
            other => bail!("unknown option {other}"),
        }
        i += 1;
    }
    if !(1..=9).contains(&o.nodes) {
        bail!("--nodes must be 1 to 9");
    }
    if !["tcp", "quic"].contains(&o.transport.as_str()) || !["rocks", "mem"].contains(&o.storage.as_str()) {
        bail!("--transport tcp|quic, --storage rocks|mem");
    }
    Ok(o)
}

const USAGE: &str = "usage: cargo xtask cluster up [--nodes N] [--transport tcp|quic] [--storage rocks|mem] [--debug] [--clean] \
                     | down [--clean] | status | kill N | restart N";

/// Runs a `cluster` subcommand.
pub fn cluster(root: &Path, args: &[String]) -> Result<()> {
    let dir = root.join("target").join("cluster");
    match args.first().map(String::as_str) {
        Some("up") => up(root, &dir, &parse_options(&args[1..])?),
        Some("down") => down(&dir, args.iter().any(|a| a == "--clean")),
        Some("status") => status(&dir),
        Some("kill") => kill(&dir, node_arg(args)?),
        Some("restart") => restart(&dir, node_arg(args)?),
        _ => bail!(USAGE),
    }
}

fn node_arg(args: &[String]) -> Result<u64> {
    args.get(1).with_context(|| USAGE.to_string())?.parse().context("the node id must be a number")
}

fn raft_addr(id: u64) -> String {
    format!("127.0.0.1:{}", 7000 + id)
}

fn client_addr(id: u64) -> String {
    format!("127.0.0.1:{}", 8080 + id)
}

fn pid_file(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("node{id}.pid"))
}

fn running_pid(dir: &Path, id: u64) -> Option<u32> {
    let pid: u32 = std::fs::read_to_string(pid_file(dir, id)).ok()?.trim().parse().ok()?;
    Path::new(&format!("/proc/{pid}")).exists().then_some(pid)
}

fn node_ids(dir: &Path) -> Vec<u64> {
    (1..=9).filter(|id| dir.join(format!("node{id}.toml")).exists()).collect()
}

fn binary_path(dir: &Path) -> Result<PathBuf> {
    let path = std::fs::read_to_string(dir.join("binary"))
        .context("no cluster here; run `cargo xtask cluster up`")?;
    Ok(PathBuf::from(path.trim()))
}

fn up(root: &Path, dir: &Path, o: &Options) -> Result<()> {
    if node_ids(dir).iter().any(|&id| running_pid(dir, id).is_some()) {
        bail!("a cluster is already running from {}; `cargo xtask cluster down` first", dir.display());
    }
    let binary = build_raft_node(root, o.release)?;

    if o.clean && dir.exists() {
        std::fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join("binary"), binary.display().to_string())?;
    let tls = if o.transport == "quic" {
        let certs_dir = dir.join("certs");
        raft_tls::generate_dev_certs("local", 1..=o.nodes)?.write_dev_certs(&certs_dir)?;
        Some(certs_dir)
    } else {
        None
    };
    for id in 1..=o.nodes {
        for addr in [raft_addr(id), client_addr(id)] {
            if std::net::TcpListener::bind(&addr).is_err() {
                bail!("{addr} is in use; is another cluster running? (`cargo xtask cluster down`)");
            }
        }
    }
    let members: Vec<NodeSpec> = (1..=o.nodes)
        .map(|id| NodeSpec {
            id,
            raft_addr: raft_addr(id),
            client_addr: client_addr(id),
            data_dir: dir.join(format!("data{id}")),
        })
        .collect();
    let common = ConfigCommon {
        cluster: "local".into(),
        transport: o.transport.clone(),
        storage: o.storage.clone(),
        tls_dir: tls,
        extra_toml: String::new(),
        written_by: "cargo xtask cluster up".into(),
    };
    for node in &members {
        let text = common.node_config(node, &members, None);
        std::fs::write(dir.join(format!("node{}.toml", node.id)), text)?;
    }
    // Stale configs of a bigger cluster would be taken for members.
    for id in o.nodes + 1..=9 {
        let _ = std::fs::remove_file(dir.join(format!("node{id}.toml")));
    }
    for id in 1..=o.nodes {
        start(dir, &binary, id)?;
    }
    let leader = wait_for_leader(o.nodes)?;
    let endpoints: Vec<String> = (1..=o.nodes).map(client_addr).collect();
    println!(
        "\ncluster \"local\" is up: {} nodes ({}, {}), leader: node {leader}",
        o.nodes, o.transport, o.storage
    );
    for id in 1..=o.nodes {
        println!(
            "  node {id}: http://{}  raft {}  log {}",
            client_addr(id),
            raft_addr(id),
            dir.join(format!("node{id}.log")).display()
        );
    }
    let ctl = format!("{} ctl --endpoints {}", binary.display(), endpoints.join(","));
    println!("\ntry:\n  {ctl} put greeting hello\n  {ctl} get greeting\n  {ctl} status");
    println!(
        "  curl -s http://{}/v1/status\n  cargo xtask cluster kill 1 | restart 1 | status | down",
        client_addr(1)
    );
    Ok(())
}

fn start(dir: &Path, binary: &Path, id: u64) -> Result<()> {
    let child = spawn_node(
        Command::new(binary),
        &dir.join(format!("node{id}.toml")),
        &dir.join(format!("node{id}.log")),
    )?;
    std::fs::write(pid_file(dir, id), child.id().to_string())?;
    println!("started node {id} (pid {})", child.id());
    Ok(())
}

/// Builds `raft-node` (release or debug) and returns the binary's path.
pub fn build_raft_node(root: &Path, release: bool) -> Result<PathBuf> {
    let mut build = vec!["build", "-p", "raft-node"];
    if release {
        build.push("--release");
    }
    crate::cargo(&build)?;
    let target =
        std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| root.join("target"));
    Ok(target.join(if release { "release" } else { "debug" }).join("raft-node"))
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
    /// RocksDB's directory.
    pub data_dir: PathBuf,
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
    /// Dev certificates (`ca.pem`, `node-<id>.pem`, `node-<id>-key.pem`), for TLS.
    pub tls_dir: Option<PathBuf>,
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
                        m.id, m.raft_addr, m.client_addr
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
        text.push_str(&self.extra_toml);
        text
    }
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

fn wait_for_leader(nodes: u64) -> Result<u64> {
    let endpoints: Vec<String> = (1..=nodes).map(client_addr).collect();
    runtime()?
        .block_on(leader_elected(&endpoints, Duration::from_secs(30)))
        .context("see the logs in target/cluster/")
}

/// Waits (polling every node's `/v1/status`) for a leader that has committed an entry; its id.
pub async fn leader_elected(endpoints: &[String], within: Duration) -> Result<u64> {
    let options =
        ClientOptions { request_timeout: Duration::from_millis(500), max_retries: 0, ..Default::default() };
    let client = Client::new(endpoints, options)?;
    let deadline = Instant::now() + within;
    loop {
        for (_, status) in client.statuses().await {
            if let Ok(s) = status {
                if s.role == RoleView::Leader && s.commit_index > 0 {
                    return Ok(s.id);
                }
            }
        }
        if Instant::now() > deadline {
            bail!("no leader after {within:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Sends `sig` (`-KILL`, `-STOP`, ...) to `pid` with `kill(1)`.
pub fn signal(pid: u32, sig: &str) -> Result<()> {
    let status = Command::new("kill").args([sig, &pid.to_string()]).status()?;
    if !status.success() {
        bail!("kill {sig} {pid} failed");
    }
    Ok(())
}

/// Waits until `pid` is gone; false if it still runs after `within`.
pub fn wait_gone(pid: u32, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while Path::new(&format!("/proc/{pid}")).exists() {
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    true
}

fn down(dir: &Path, clean: bool) -> Result<()> {
    for id in node_ids(dir) {
        if let Some(pid) = running_pid(dir, id) {
            signal(pid, "-TERM")?;
            if !wait_gone(pid, Duration::from_secs(10)) {
                signal(pid, "-KILL")?;
                wait_gone(pid, Duration::from_secs(5));
            }
            println!("stopped node {id} (pid {pid})");
        }
        let _ = std::fs::remove_file(pid_file(dir, id));
    }
    if clean && dir.exists() {
        std::fs::remove_dir_all(dir)?;
        println!("removed {}", dir.display());
    }
    Ok(())
}

fn kill(dir: &Path, id: u64) -> Result<()> {
    let pid = running_pid(dir, id).with_context(|| format!("node {id} is not running"))?;
    signal(pid, "-KILL")?;
    wait_gone(pid, Duration::from_secs(5));
    println!("killed node {id} (pid {pid}) with SIGKILL");
    Ok(())
}

fn restart(dir: &Path, id: u64) -> Result<()> {
    if let Some(pid) = running_pid(dir, id) {
        signal(pid, "-TERM")?;
        wait_gone(pid, Duration::from_secs(10));
    }
    start(dir, &binary_path(dir)?, id)
}

fn status(dir: &Path) -> Result<()> {
    let ids = node_ids(dir);
    if ids.is_empty() {
        bail!("no cluster in {}; run `cargo xtask cluster up`", dir.display());
    }
    let options =
        ClientOptions { request_timeout: Duration::from_millis(500), max_retries: 0, ..Default::default() };
    println!(
        "{:<5} {:<7} {:<22} {:<10} {:>6} {:>8} {:>8} {:<18}",
        "node", "pid", "http", "role", "term", "commit", "applied", "state hash"
    );
    runtime()?.block_on(async {
        for id in ids {
            let pid = running_pid(dir, id).map_or("-".to_string(), |p| p.to_string());
            let client = Client::new([client_addr(id)], options.clone())?;
            match client.status().await {
                Ok(s) => println!(
                    "{:<5} {:<7} {:<22} {:<10} {:>6} {:>8} {:>8} {:<18}",
                    id,
                    pid,
                    client_addr(id),
                    format!("{:?}", s.role).to_lowercase(),
                    s.term,
                    s.commit_index,
                    s.applied_index,
                    s.state_hash
                ),
                Err(_) => println!("{:<5} {:<7} {:<22} down", id, pid, client_addr(id)),
            }
        }
        Ok(())
    })
}
