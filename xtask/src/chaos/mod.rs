//! `cargo xtask chaos`: a Jepsen-style test of real `raft-node` processes.
//!
//! As root, the run lives in a network namespace of its own (`raftchaos-<pid>`, created by the
//! outer process, which re-executes xtask inside it under `unshare -m` for a private mount
//! namespace and deletes the namespace, and kills whatever is left in it, afterwards, also on
//! failure and Ctrl-C). Inside: node N on 127.0.0.N, every data dir its own tmpfs, partitions
//! as nft drop rules, and (TCP) every link through a user-space proxy for delays, stalls,
//! drips and resets (`net.rs`, `proxy.rs`). A seeded nemesis (`nemesis.rs`) runs its schedule
//! while clients (`workload.rs`) record a history (`history.rs`); after the faults are healed
//! and a quiet period, the history is checked for linearizability, phantom reads and lost
//! writes, and every node must converge to the same applied index and state hash.
//!
//! Without root (or with `--rootless`) the run stays on the host's loopback: the nodes listen
//! on ports of their own and advertise the proxy in front of each, which makes the partitions
//! too (`net.rs`); data dirs are plain directories, so there is no disk-full fault.

mod history;
mod nemesis;
mod net;
mod nodes;
mod proxy;
mod timeline;
mod workload;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use raft_client::api::{Consistency, StatusView};
use raft_client::{Client, ClientOptions};

use crate::cluster::{build_raft_node, leader_elected, ConfigCommon, NodeSpec};
use history::Recorder;
use nodes::Nodes;
use workload::{Workload, WorkloadOptions};

const USAGE: &str = "usage: cargo xtask chaos [--duration SECS] [--seed S] [--nodes N] [--clients N] [--keys N] \
                     [--transport tcp|quic] [--faults kill,pause,partition,transfer,proxy,membership,clock,disk,corrupt,lose,stall] \
                     [--proxy] [--rootless] [--release] [--binary PATH]";

#[derive(Debug, Clone)]
struct Options {
    duration: Duration,
    seed: u64,
    nodes: u64,
    clients: u64,
    keys: u64,
    transport: String,
    faults: Vec<String>,
    partitions_by_proxy: bool,
    /// On the host's loopback, without a namespace, nft or tmpfs (forced when not root).
    rootless: bool,
    release: bool,
    /// Set in the process running inside the namespace: the raft-node binary.
    inner_binary: Option<PathBuf>,
    /// A `raft-node` binary to test instead of building one.
    binary: Option<PathBuf>,
}

fn parse(args: &[String]) -> Result<Options> {
    let seed_default = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64 % 1_000_000)
        .unwrap_or(1);
    let mut o = Options {
        duration: Duration::from_secs(60),
        seed: seed_default,
        nodes: 3,
        clients: 8,
        keys: 5,
        transport: "tcp".into(),
        faults: nemesis::KINDS.iter().map(|s| s.to_string()).collect(),
        partitions_by_proxy: false,
        rootless: false,
        release: false,
        inner_binary: None,
        binary: None,
    };
    let mut i = 0;
    while i < args.len() {
        // A flag alone.
        let flag = match args[i].as_str() {
            "--proxy" => Some(&mut o.partitions_by_proxy),
            "--release" => Some(&mut o.release),
            "--rootless" => Some(&mut o.rootless),
            _ => None,
        };
        if let Some(flag) = flag {
            *flag = true;
            i += 1;
            continue;
        }
        // An option and its value.
        let value =
            || args.get(i + 1).cloned().with_context(|| format!("{} needs a value\n{USAGE}", args[i]));
        let number =
            || -> Result<u64> { value()?.parse().with_context(|| format!("{}: not a number", args[i])) };
        match args[i].as_str() {
            "--duration" => o.duration = Duration::from_secs(number()?),
            "--seed" => o.seed = number()?,
            "--nodes" => o.nodes = number()?,
            "--clients" => o.clients = number()?,
            "--keys" => o.keys = number()?,
            "--transport" => o.transport = value()?,
            "--faults" => o.faults = value()?.split(',').map(str::to_owned).collect(),
            "--inner-binary" => o.inner_binary = Some(PathBuf::from(value()?)),
            "--binary" => o.binary = Some(PathBuf::from(value()?)),
            other => bail!("unknown option {other}\n{USAGE}"),
        }
        i += 2;
    }
    if !(1..=9).contains(&o.nodes) || o.clients == 0 || o.keys == 0 {
        bail!("--nodes 1 to 9, --clients and --keys at least 1");
    }
    if !["tcp", "quic"].contains(&o.transport.as_str()) {
        bail!("--transport tcp|quic");
    }
    for f in &o.faults {
        if !nemesis::KINDS.contains(&f.as_str()) {
            bail!("unknown fault {f:?}; known: {}", nemesis::KINDS.join(","));
        }
    }
    if o.partitions_by_proxy && o.transport == "quic" {
        bail!("--proxy needs --transport tcp (the proxy is a TCP proxy)");
    }
    if o.rootless && o.transport == "quic" {
        bail!("--rootless needs --transport tcp: its partitions are made by the proxy, a TCP proxy");
    }
    Ok(o)
}

/// Whether this process runs as root (chaos's namespace, nft and tmpfs need it).
pub fn is_root() -> bool {
    Command::new("id").arg("-u").output().map(|o| o.stdout == b"0\n").unwrap_or(false)
}

/// Runs `cargo xtask chaos ...`.
pub fn chaos(root: &Path, args: &[String]) -> Result<()> {
    let o = parse(args)?;
    match &o.inner_binary {
        Some(binary) => inner(root, &o, binary.clone()),
        None => outer(root, &o, args),
    }
}

/// Removes the namespace (after killing whatever still runs in it) when dropped.
struct NamespaceGuard(String);

impl Drop for NamespaceGuard {
    fn drop(&mut self) {
        if let Ok(out) = Command::new("ip").args(["netns", "pids", &self.0]).output() {
            for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                let _ = Command::new("kill").args(["-KILL", pid]).status();
            }
        }
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn outer(root: &Path, o: &Options, args: &[String]) -> Result<()> {
    if o.rootless || !is_root() {
        if o.transport == "quic" {
            bail!("without root, chaos runs only with --transport tcp (its partitions are made by the TCP proxy)");
        }
        println!(
            "chaos: rootless (on the host's loopback; partitions and link faults by the proxy, no disk-full \
             fault), seed {}, {} nodes, {:?}, mutual TLS between peers",
            o.seed, o.nodes, o.duration
        );
        let binary = raft_node_binary(root, o)?;
        let o = Options { rootless: true, partitions_by_proxy: true, ..o.clone() };
        return inner(root, &o, binary);
    }
    if Command::new("nft").arg("--version").output().is_err() {
        bail!("nft is missing: apt-get install -y nftables");
    }
    let binary = raft_node_binary(root, o)?;
    let name = format!("raftchaos-{}", std::process::id());
    let status = Command::new("ip").args(["netns", "add", &name]).status()?;
    if !status.success() {
        bail!("ip netns add {name} failed");
    }
    let _guard = NamespaceGuard(name.clone());
    let status = Command::new("ip").args(["-n", &name, "link", "set", "lo", "up"]).status()?;
    if !status.success() {
        bail!("bringing lo up in {name}");
    }
    let exe = std::env::current_exe()?;
    let mut inner_args: Vec<String> = vec!["chaos".into()];
    inner_args.extend(args.iter().cloned());
    inner_args.extend([
        "--seed".into(),
        o.seed.to_string(),
        "--inner-binary".into(),
        binary.display().to_string(),
    ]);
    println!(
        "chaos: namespace {name}, seed {}, {} nodes, {:?}, {} transport with mutual TLS between peers",
        o.seed, o.nodes, o.duration, o.transport
    );
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let code = runtime.block_on(async {
        let mut child = tokio::process::Command::new("ip")
            .args(["netns", "exec", &name, "unshare", "--mount", "--propagation", "private"])
            .arg(&exe)
            .args(&inner_args)
            .env("CARGO_MANIFEST_DIR", root.join("xtask"))
            .spawn()
            .context("starting the run inside the namespace")?;
        tokio::select! {
            status = child.wait() => Ok::<_, anyhow::Error>(status?.code()),
            _ = tokio::signal::ctrl_c() => {
                eprintln!("chaos: interrupted; tearing down");
                // The inner run got the same SIGINT and cleans up; give it a moment.
                if tokio::time::timeout(Duration::from_secs(15), child.wait()).await.is_err() {
                    let _ = child.kill().await;
                }
                Ok(Some(130))
            }
        }
    })?;
    match code {
        Some(0) => Ok(()),
        other => bail!("chaos run failed (exit {other:?}); replay: cargo xtask chaos {}", replay_args(o)),
    }
}

/// The `raft-node` to run: `--binary`, else a fresh build.
fn raft_node_binary(root: &Path, o: &Options) -> Result<PathBuf> {
    match &o.binary {
        Some(binary) if binary.is_file() => Ok(binary.clone()),
        Some(binary) => bail!("--binary {}: no such file", binary.display()),
        None => build_raft_node(root, o.release),
    }
}

fn replay_args(o: &Options) -> String {
    let mut s = format!(
        "--seed {} --duration {} --nodes {} --transport {}",
        o.seed,
        o.duration.as_secs(),
        o.nodes,
        o.transport
    );
    if o.faults.len() != nemesis::KINDS.len() {
        s.push_str(&format!(" --faults {}", o.faults.join(",")));
    }
    if o.clients != 8 {
        s.push_str(&format!(" --clients {}", o.clients));
    }
    if o.keys != 5 {
        s.push_str(&format!(" --keys {}", o.keys));
    }
    if o.rootless {
        s.push_str(" --rootless");
    } else if o.partitions_by_proxy {
        s.push_str(" --proxy");
    }
    s
}

/// Everything a nemesis acts on.
pub struct Env {
    pub nodes: Nodes,
    addrs: net::Addrs,
    /// Root mode only.
    firewall: Option<net::Firewall>,
    pub proxies: Option<proxy::Proxies>,
    partitions_by_proxy: bool,
    pub admin: Client,
    pub status_client: Client,
    pub have_faketime: bool,
    start: Instant,
    pub notes: Vec<String>,
    pub problems: Vec<String>,
}

impl Env {
    fn elapsed(&self) -> String {
        format!("{:7.2}s", self.start.elapsed().as_secs_f64())
    }

    pub fn note(&mut self, text: String) {
        println!("{} note: {text}", self.elapsed());
        self.notes.push(text);
    }

    pub fn problem(&mut self, text: String) {
        println!("{} PROBLEM: {text}", self.elapsed());
        self.problems.push(text);
    }

    pub fn endpoint(&self, id: u64) -> String {
        self.addrs.client_addr(id).to_string()
    }

    pub fn set_cuts(&self, cuts: &BTreeSet<(u64, u64)>) -> Result<()> {
        if self.partitions_by_proxy {
            let proxies = self.proxies.as_ref().context("no proxy")?;
            proxies.heal();
            for &(from, to) in cuts {
                proxies.set(from, to, proxy::LinkMode::Stall);
            }
            Ok(())
        } else {
            self.firewall.as_ref().context("no firewall")?.set_cuts(cuts)
        }
    }

    pub async fn status_of(&self, id: u64) -> Option<StatusView> {
        let client = Client::new([self.endpoint(id)], quick_options()).ok()?;
        client.status().await.ok()
    }

    /// Heals everything: cuts, proxies, pauses, clocks, disks; starts every stopped node.
    async fn heal_all(&mut self) -> Result<()> {
        self.set_cuts(&BTreeSet::new())?;
        if let (true, Some(firewall)) = (self.partitions_by_proxy, &self.firewall) {
            firewall.set_cuts(&BTreeSet::new())?;
        }
        if let Some(p) = &self.proxies {
            p.heal();
        }
        for id in self.nodes.ids() {
            self.nodes.resume(id)?;
            let skewed = self.nodes.nodes.get(&id).is_some_and(|n| n.faketime.is_some());
            if skewed {
                self.heal(nemesis::Heal::Clock(id)).await?;
            }
            let ballast = self.nodes.nodes[&id].spec.data_dir.join("chaos-ballast");
            if ballast.exists() {
                self.heal(nemesis::Heal::Disk(id)).await?;
            }
            if !self.nodes.is_running(id) {
                self.nodes.start(id)?;
            }
        }
        Ok(())
    }

    /// Nodes that exited although no fault stopped them.
    fn check_unexpected_exits(&mut self) {
        for id in self.nodes.ids() {
            if let Err(status) = self.nodes.poll(id) {
                let tail = self.nodes.log_tail(id, 5);
                self.problem(format!("node {id} exited by itself ({status}); last log lines:\n{tail}"));
            }
        }
    }
}

fn quick_options() -> ClientOptions {
    let options =
        ClientOptions { request_timeout: Duration::from_millis(500), max_retries: 0, ..Default::default() };
    crate::cluster::with_credentials(options)
}

fn inner(root: &Path, o: &Options, binary: PathBuf) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let out = root.join("target").join("chaos").join(o.seed.to_string());
    let result = runtime.block_on(async {
        tokio::select! {
            r = run(o, binary, &out) => r,
            _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
        }
    });
    // Everything the run started (processes, proxies, rules) was dropped with its future.
    runtime.shutdown_timeout(Duration::from_secs(2));
    match result {
        Ok(true) => {
            println!("chaos: PASS (seed {})", o.seed);
            Ok(())
        }
        Ok(false) => {
            println!("chaos: FAIL (seed {}); history and node logs in {}", o.seed, out.display());
            println!("replay: cargo xtask chaos {}", replay_args(o));
            bail!("chaos run failed")
        }
        Err(e) => {
            println!("chaos: ERROR (seed {}): {e:#}; node logs in {}", o.seed, out.display());
            println!("replay: cargo xtask chaos {}", replay_args(o));
            Err(e)
        }
    }
}

/// The whole run; `Ok(false)` when a check failed.
async fn run(o: &Options, binary: PathBuf, out: &Path) -> Result<bool> {
    if out.exists() {
        std::fs::remove_dir_all(out)?;
    }
    std::fs::create_dir_all(out)?;
    net::check_source_binding().await.context("source-address check")?;
    println!("source-address check: a socket bound to 127.0.0.2 arrives from 127.0.0.2");
    let ids: Vec<u64> = (1..=o.nodes).collect();
    let tcp = o.transport == "tcp";
    let addrs = net::Addrs { rootless: o.rootless };
    let firewall = if o.rootless { None } else { Some(net::Firewall::install(&ids, tcp)?) };
    let proxies = if tcp { Some(proxy::Proxies::start(&ids, addrs).await?) } else { None };

    let data_root = out.join("data");
    let specs: Vec<NodeSpec> = ids
        .iter()
        .map(|&id| NodeSpec {
            id,
            raft_addr: addrs.raft_addr(id).to_string(),
            client_addr: addrs.client_addr(id).to_string(),
            raft_advertise_addr: addrs.advertised_raft_addr(id).map(|a| a.to_string()),
            data_dir: data_root.join(format!("node{id}")),
        })
        .collect();
    // Mutual TLS between peers, the default set-up, for both transports.
    let tls_dir = {
        let dir = out.join("certs");
        raft_tls::generate_dev_certs("chaos", 1..=o.nodes)?.write_dev_certs(&dir)?;
        Some(dir)
    };
    // Client authentication, the default set-up: every client of the run presents the token.
    let token_file = Some(crate::cluster::write_admin_token(out)?);
    let common = ConfigCommon {
        cluster: "chaos".into(),
        transport: o.transport.clone(),
        storage: "rocks".into(),
        tls_dir,
        api_tls: false,
        token_file,
        // Snapshots every 2000 entries, so that restarted and rejoining nodes also catch up by
        // snapshot; requests time out before the clients give up on them.
        extra_toml: "[raft]\nsnapshot_threshold_entries = 2000\nsnapshot_keep_entries = 200\n\n\
                     [limits]\nrequest_timeout_ms = 1000\n\n[log]\nlevel = \"info\"\n"
            .into(),
        written_by: "cargo xtask chaos".into(),
    };
    let tmpfs_mib = if o.rootless { None } else { Some(256) };
    let nodes = Nodes::new(binary, common, &specs, out, tmpfs_mib)?;
    let endpoints: Vec<String> = specs.iter().map(|s| s.client_addr.clone()).collect();
    let admin_options = crate::cluster::with_credentials(ClientOptions {
        request_timeout: Duration::from_secs(3),
        max_retries: 5,
        ..Default::default()
    });
    let have_faketime = Path::new(nodes::FAKETIME_LIB).exists();
    let mut env = Env {
        nodes,
        addrs,
        firewall,
        proxies,
        partitions_by_proxy: o.partitions_by_proxy,
        admin: Client::new(&endpoints, admin_options)?,
        status_client: Client::new(&endpoints, quick_options())?,
        have_faketime,
        start: Instant::now(),
        notes: Vec::new(),
        problems: Vec::new(),
    };
    let mut faults: Vec<&str> = o.faults.iter().map(String::as_str).collect();
    if !tcp {
        faults.retain(|f| *f != "proxy");
        env.note("QUIC: no proxy faults (the proxy is TCP only); partitions with nft work".into());
    }
    if !have_faketime {
        faults.retain(|f| *f != "clock");
        env.note("libfaketime is not installed (apt-get install faketime libfaketime): no clock skew".into());
    }
    if o.nodes < 3 {
        faults.retain(|f| !["membership", "corrupt", "lose"].contains(f));
    }
    if faults.contains(&"stall") || faults.contains(&"eio") {
        match nodes::build_stall_shim(out) {
            Ok(shim) => env.nodes.stall_shim = Some(shim),
            Err(e) => {
                faults.retain(|f| *f != "stall" && *f != "eio");
                env.note(format!(
                    "no stalled- or failing-disk faults: the fsync shim cannot be built ({e:#})"
                ));
            }
        }
    }
    if o.rootless && faults.contains(&"disk") {
        faults.retain(|f| *f != "disk");
        env.note("rootless: no disk-full fault (the data dirs are plain directories, not tmpfs)".into());
    }

    for id in env.nodes.ids() {
        env.nodes.start(id)?;
    }
    let leader = leader_elected(&endpoints, Duration::from_secs(30)).await?;
    println!("cluster up: {} nodes, leader node {leader}; logs in {}", o.nodes, out.display());
    if let Some(p) = &env.proxies {
        // Every link carries traffic by now (heartbeats): each proxied connection must come
        // from its node's own address, which is what per-address partitions rely on.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let accepted = p.stats.accepted.load(std::sync::atomic::Ordering::Relaxed);
        let wrong = p.stats.wrong_sources.lock().map(|w| w.clone()).unwrap_or_default();
        if accepted == 0 || !wrong.is_empty() {
            bail!("source-address check of the nodes' own connections failed: {accepted} proxied, wrong: {wrong:?}");
        }
        println!("source-address check: {accepted} node connections proxied, each from its node's own address (127.0.0.N)");
    }

    let steps = nemesis::schedule(o.seed, o.duration, &ids, &faults);
    println!("nemesis schedule (seed {}):", o.seed);
    for s in &steps {
        println!("  at {:>5.1}s for {:>4.1}s: {}", s.at.as_secs_f64(), s.hold.as_secs_f64(), s.fault);
    }

    let start = Instant::now();
    env.start = start;
    let recorder = Recorder::new(start);
    let workload = Workload::start(
        &WorkloadOptions { clients: o.clients, keys: o.keys, seed: o.seed, endpoints: endpoints.clone() },
        recorder.clone(),
    )?;

    let mut failure: Option<anyhow::Error> = None;
    // The faults as they happened, for the timeline chart.
    let mut spans: Vec<crate::plot::Span> = Vec::new();
    for step in &steps {
        let at = tokio::time::Instant::from_std(start + step.at);
        tokio::time::sleep_until(at).await;
        env.check_unexpected_exits();
        let from = start.elapsed().as_secs_f64();
        match env.apply(&step.fault).await {
            Ok((what, heal)) => {
                println!("{} {}: {what}", env.elapsed(), step.fault);
                tokio::time::sleep(step.hold).await;
                let healed = env.heal(heal).await;
                spans.push(crate::plot::Span {
                    label: nemesis::shorten(&step.fault.to_string(), 32),
                    from,
                    to: start.elapsed().as_secs_f64(),
                });
                if let Err(e) = healed {
                    failure = Some(e.context(format!("healing {}", step.fault)));
                    break;
                }
                println!("{} healed", env.elapsed());
            }
            Err(e) => {
                env.problem(format!("{}: {e:#}", step.fault));
            }
        }
    }
    let end = tokio::time::Instant::from_std(start + o.duration);
    tokio::time::sleep_until(end).await;
    env.check_unexpected_exits();
    println!("{} healing everything", env.elapsed());
    env.heal_all().await?;
    if let Some(e) = failure {
        env.problem(format!("{e:#}"));
    }

    // Quiet period: the workload goes on against a healed cluster for a few seconds.
    let quiet = leader_elected(&endpoints, Duration::from_secs(30)).await;
    if let Err(e) = &quiet {
        env.problem(format!("no leader after healing: {e:#}"));
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    let ops = workload.ops.load(std::sync::atomic::Ordering::Relaxed);
    workload.stop().await;
    println!("{} workload stopped after {ops} operations", env.elapsed());

    // Final reads of every key, recorded in the history too.
    let final_client = Client::new(
        &endpoints,
        crate::cluster::with_credentials(ClientOptions {
            request_timeout: Duration::from_secs(3),
            max_retries: 10,
            ..Default::default()
        }),
    )?;
    let mut finals = BTreeMap::new();
    for k in 0..o.keys {
        let key = workload::key_name(k);
        let call = recorder.now_ns();
        match final_client.get(&key, Some(Consistency::Linearizable)).await {
            Ok(kv) => {
                let value = kv.map(|kv| kv.value);
                recorder.record(0, &key, history::Op::Get, call, history::Outcome::Ok(value.clone()));
                finals.insert(key, value);
            }
            Err(e) => env.problem(format!("final read of {key} failed: {e}")),
        }
    }

    converge(&mut env).await;
    env.check_unexpected_exits();

    let history = recorder.snapshot();
    println!("history: {} operations ({})", history.len(), history::summary(&history));
    let mut failed = !env.problems.is_empty();
    let mut report = Vec::new();
    let checks: Vec<(&str, Result<(), String>)> = vec![
        ("phantom reads", history::check_phantom_reads(&history)),
        ("acknowledged writes present at the end", history::check_final_values(&history, &finals)),
        ("linearizable", history::check_linearizable(&history, Duration::from_secs(120))),
    ];
    for (name, result) in checks {
        match result {
            Ok(()) => report.push(format!("  ok    {name}")),
            Err(e) => {
                failed = true;
                report.push(format!("  FAIL  {name}: {e}"));
            }
        }
    }
    for p in &env.problems {
        report.push(format!("  FAIL  {p}"));
    }
    println!("checks (seed {}):\n{}", o.seed, report.join("\n"));
    if !env.notes.is_empty() {
        println!("notes:\n  {}", env.notes.join("\n  "));
    }
    history::write_history(&out.join("history.jsonl"), &history)?;
    std::fs::write(out.join("report.txt"), report.join("\n") + "\n")?;
    let chart = out.join("timeline.svg");
    let title = format!("chaos seed {}: {} nodes, {} faults", o.seed, o.nodes, spans.len());
    match timeline::write(&chart, &title, &history, &spans) {
        Ok(()) => println!("timeline: {}", chart.display()),
        Err(e) => println!("timeline: not drawn: {e:#}"),
    }
    let data_root =
        env.nodes.nodes.values().next().and_then(|n| n.spec.data_dir.parent().map(Path::to_path_buf));
    drop(env);
    if !failed {
        // Keep the history only of failures. In root mode the data dirs are tmpfs mounts that
        // go with the run; rootless they are plain directories.
        let _ = std::fs::remove_file(out.join("history.jsonl"));
        if let (true, Some(data)) = (o.rootless, data_root) {
            let _ = std::fs::remove_dir_all(data);
        }
    }
    Ok(!failed)
}

/// Waits until every node reports the same applied index and state hash (and has applied
/// everything it knows committed).
async fn converge(env: &mut Env) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let ids = env.nodes.ids();
    loop {
        let mut statuses = Vec::new();
        for &id in &ids {
            statuses.push((id, env.status_of(id).await));
        }
        let all: Option<Vec<(u64, StatusView)>> =
            statuses.iter().map(|(id, s)| s.clone().map(|s| (*id, s))).collect();
        if let Some(all) = &all {
            let first = &all[0].1;
            if all.iter().all(|(_, s)| {
                s.applied_index == first.applied_index
                    && s.state_hash == first.state_hash
                    && s.commit_index == s.applied_index
            }) {
                println!(
                    "{} converged: every node at applied index {} with state hash {}",
                    env.elapsed(),
                    first.applied_index,
                    first.state_hash
                );
                return;
            }
        }
        if Instant::now() > deadline {
            let view: Vec<String> = statuses
                .iter()
                .map(|(id, s)| match s {
                    Some(s) => format!(
                        "node {id}: applied {} hash {} fatal {:?}",
                        s.applied_index, s.state_hash, s.fatal
                    ),
                    None => format!("node {id}: no answer"),
                })
                .collect();
            env.problem(format!("the nodes did not converge within 60 s: {}", view.join("; ")));
            return;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
