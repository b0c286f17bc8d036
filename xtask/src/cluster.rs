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
    let mut build = vec!["build", "-p", "raft-node"];
    if o.release {
        build.push("--release");
    }
    crate::cargo(&build)?;
    let target =
        std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| root.join("target"));
    let binary = target.join(if o.release { "release" } else { "debug" }).join("raft-node");

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
    let members: String = (1..=o.nodes)
        .map(|id| {
            format!(
                "[[members]]\nid = {id}\nraft_addr = \"{}\"\nclient_addr = \"{}\"\n\n",
                raft_addr(id),
                client_addr(id)
            )
        })
        .collect();
    for id in 1..=o.nodes {
        let mut text = format!(
            "# Written by `cargo xtask cluster up`; see raft-node/node.example.toml for every key.\n\
             cluster = \"local\"\nid = {id}\nraft_addr = \"{}\"\nclient_addr = \"{}\"\ndata_dir = \"{}\"\n\
             transport = \"{}\"\nstorage = \"{}\"\n\n{members}",
            raft_addr(id),
            client_addr(id),
            dir.join(format!("data{id}")).display(),
            o.transport,
            o.storage,
        );
        if let Some(certs) = &tls {
            text.push_str(&format!(
                "[tls]\nca_cert = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\n",
                certs.join("ca.pem").display(),
                certs.join(format!("node-{id}.pem")).display(),
                certs.join(format!("node-{id}-key.pem")).display()
            ));
        }
        std::fs::write(dir.join(format!("node{id}.toml")), text)?;
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
    use std::os::unix::process::CommandExt;
    let log =
        std::fs::OpenOptions::new().create(true).append(true).open(dir.join(format!("node{id}.log")))?;
    let child = Command::new(binary)
        .args(["run", "--config"])
        .arg(dir.join(format!("node{id}.toml")))
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        // Its own process group: Ctrl-C in this terminal later does not reach it.
        .process_group(0)
        .spawn()
        .with_context(|| format!("starting {}", binary.display()))?;
    std::fs::write(pid_file(dir, id), child.id().to_string())?;
    println!("started node {id} (pid {})", child.id());
    Ok(())
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread().enable_all().build().context("starting tokio")
}

fn wait_for_leader(nodes: u64) -> Result<u64> {
    let endpoints: Vec<String> = (1..=nodes).map(client_addr).collect();
    let options =
        ClientOptions { request_timeout: Duration::from_millis(500), max_retries: 0, ..Default::default() };
    let client = Client::new(&endpoints, options)?;
    let deadline = Instant::now() + Duration::from_secs(30);
    runtime()?.block_on(async {
        loop {
            for (_, status) in client.statuses().await {
                if let Ok(s) = status {
                    if s.role == RoleView::Leader && s.commit_index > 0 {
                        return Ok(s.id);
                    }
                }
            }
            if Instant::now() > deadline {
                bail!("no leader after 30 s; see the logs in target/cluster/");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
}

fn signal(pid: u32, sig: &str) -> Result<()> {
    let status = Command::new("kill").args([sig, &pid.to_string()]).status()?;
    if !status.success() {
        bail!("kill {sig} {pid} failed");
    }
    Ok(())
}

fn wait_gone(pid: u32, within: Duration) -> bool {
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
