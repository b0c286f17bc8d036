//! `cargo xtask bench-http`: a load generator against local clusters — `raft-node` (started
//! like `cargo xtask cluster up`: release build, RocksDB, TCP, empty data) and, when an
//! `etcd` binary is installed, a 3-member etcd on loopback with the same workload through its
//! gRPC API (as its clients use it) or its v3 JSON gateway — all up at once and measured in
//! turns, side by side with their ratios; or a failover run (`--failover`).
//!
//! Everything runs on this machine: the load generator shares the cores with the servers.
//! Every process started is stopped at the end, on error and on Ctrl-C. Figures are printed
//! and saved to `target/bench/<timestamp>.json`.

mod charts;
mod etcd;
mod failover;
mod histogram;
mod load;
mod probe;
mod report;
mod scale;
mod watchers;

pub(crate) use watchers::{readers as watch_readers, READERS_COMMAND as WATCH_READERS_COMMAND};

use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context, Result};
use serde::Serialize;

use crate::cluster::{ClusterOptions, Layout, LocalCluster};
use crate::procs::{self, Children};
use load::{Api, Phase, Window, Workload};
use report::{CpuUse, Figures, PhaseReport, TargetReport};

/// Ports of the benchmark's raft cluster (node N: 17000+N and 18080+N), apart from those of
/// `cargo xtask cluster` so that a cluster left running there does not get in the way.
const RAFT_PORT_BASE: u16 = 17000;
const HTTP_PORT_BASE: u16 = 18080;

const USAGE: &str = "usage: cargo xtask bench-http [--against raft|etcd|both] [--nodes N] [--connections N] \
[--duration S | --requests N] [--warmup S] [--keys N] [--value-bytes N] [--workload write,read,mixed] \
[--read-ratio R] [--runs N] [--rate R] [--smoke] [--etcd-api grpc|json|both] [--client-threads N] [--timeout-ms N] [--storage rocks|mem] [--transport tcp|quic] [--peer-tls] [--preload] [--no-pause-idle] [--debug] \
| bench-http --failover [--kills N] [--nodes N] [--connections N] \
| bench scale [--keys N] [--value-bytes N] [--connections N] [--against raft|etcd|both] \
| bench watchers [--watchers N] [--watchers-nice N] [--rate R] [--duration S] [--runs N] [--value-bytes N]";

/// Which servers to measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
enum Against {
    Raft,
    Etcd,
    Both,
}

/// One phase of the workload as asked for.
#[derive(Debug, Clone, Serialize)]
struct PhaseSpec {
    name: String,
    read_ratio: f64,
}

#[derive(Debug, Clone, Serialize)]
struct Options {
    against: Against,
    nodes: u64,
    connections: usize,
    warmup_s: f64,
    duration_s: f64,
    /// Instead of a duration: requests per run.
    requests: Option<u64>,
    keys: u64,
    value_bytes: usize,
    phases: Vec<PhaseSpec>,
    runs: usize,
    client_threads: usize,
    request_timeout_ms: u64,
    storage: String,
    transport: String,
    /// Mutual TLS between peers on both systems (raft-node over TCP, etcd's peer URLs); the
    /// client APIs stay plain HTTP on both. Without it, TCP peers are plaintext on both.
    peer_tls: bool,
    /// Writes each of the `keys` once before the first phase, untimed (a state of `keys` ×
    /// `value-bytes` that the measured writes then overwrite); etcd gets the large-state
    /// benchmark's quota and compaction so that the state fits.
    preload: bool,
    /// Stops the systems not being measured (SIGSTOP) for each window and lets them go on
    /// (SIGCONT) after it, so that one system's background work (etcd's compactions, a
    /// snapshot of raft-node) never lands in another's window. On by default;
    /// `--no-pause-idle` leaves them running.
    pause_idle: bool,
    release: bool,
    failover: bool,
    kills: usize,
    /// The large-state benchmark (`cargo xtask bench scale`).
    scale: bool,
    /// `--smoke`: a short run of whatever binaries are at hand (debug ones in CI) that proves
    /// the benchmark still runs: no release build, no figures worth reading, and an error
    /// unless every target answered every phase without a failure.
    smoke: bool,
    /// The watcher benchmark (`cargo xtask bench watchers`): watchers on the leader.
    watchers_bench: bool,
    /// Watch streams of every key opened on the leader.
    watchers: usize,
    /// The nice value of the watcher process (`--watchers-nice`, default 10).
    watchers_nice: i32,
    /// Writes per second.
    rate: f64,
    /// `--rate` outside the watcher benchmark: requests per second of all connections
    /// together, sent when due (an open loop) instead of each after the last answer.
    open_loop_rate: Option<f64>,
    /// How the load reaches etcd: gRPC (as its clients do), its JSON gateway, or both as
    /// two targets.
    etcd_api: EtcdApi,
}

/// How the load reaches etcd.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
enum EtcdApi {
    Grpc,
    Json,
    Both,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            against: Against::Raft,
            nodes: 3,
            connections: 64,
            warmup_s: 2.0,
            duration_s: 10.0,
            requests: None,
            keys: 1000,
            value_bytes: 100,
            phases: vec![
                PhaseSpec { name: "write".into(), read_ratio: 0.0 },
                PhaseSpec { name: "read".into(), read_ratio: 1.0 },
            ],
            runs: 1,
            client_threads: 1,
            request_timeout_ms: 10_000,
            storage: "rocks".into(),
            transport: "tcp".into(),
            peer_tls: false,
            preload: false,
            pause_idle: true,
            release: true,
            failover: false,
            kills: 5,
            scale: false,
            smoke: false,
            watchers_bench: false,
            watchers: 1000,
            watchers_nice: 10,
            rate: 100.0,
            open_loop_rate: None,
            etcd_api: EtcdApi::Grpc,
        }
    }
}

fn parse_options(args: &[String]) -> Result<Options> {
    let mut o = Options::default();
    let mut read_ratio = 0.5;
    let mut workload: Option<String> = None;
    let mut i = 0;
    while i < args.len() {
        let name = args[i].as_str();
        let value = || args.get(i + 1).cloned().with_context(|| format!("{name} needs a value\n{USAGE}"));
        let number = |v: String| -> Result<f64> {
            let n: f64 = v.parse().with_context(|| format!("{name}: not a number: {v}"))?;
            if !n.is_finite() || n < 0.0 {
                bail!("{name}: must be a number ≥ 0");
            }
            Ok(n)
        };
        let mut takes_value = true;
        match name {
            "--against" => {
                o.against = match value()?.as_str() {
                    "raft" => Against::Raft,
                    "etcd" => Against::Etcd,
                    "both" => Against::Both,
                    other => bail!("--against raft|etcd|both, not {other}"),
                }
            }
            "--nodes" => o.nodes = number(value()?)? as u64,
            "--connections" => o.connections = number(value()?)? as usize,
            "--warmup" => o.warmup_s = number(value()?)?,
            "--duration" => o.duration_s = number(value()?)?,
            "--requests" => o.requests = Some(number(value()?)? as u64),
            "--keys" => o.keys = number(value()?)? as u64,
            "--value-bytes" => o.value_bytes = number(value()?)? as usize,
            "--workload" => workload = Some(value()?),
            "--read-ratio" => read_ratio = number(value()?)?,
            "--runs" => o.runs = number(value()?)? as usize,
            "--client-threads" => o.client_threads = number(value()?)? as usize,
            "--timeout-ms" => o.request_timeout_ms = number(value()?)? as u64,
            "--kills" => o.kills = number(value()?)? as usize,
            "--watchers" => o.watchers = number(value()?)? as usize,
            "--watchers-nice" => o.watchers_nice = number(value()?)? as i32,
            "--rate" => {
                o.rate = number(value()?)?;
                o.open_loop_rate = Some(o.rate);
            }
            "--etcd-api" => {
                o.etcd_api = match value()?.as_str() {
                    "grpc" => EtcdApi::Grpc,
                    "json" => EtcdApi::Json,
                    "both" => EtcdApi::Both,
                    other => bail!("--etcd-api grpc|json|both, not {other}"),
                }
            }
            "--watchers-bench" => {
                o.watchers_bench = true;
                takes_value = false;
            }
            "--storage" => o.storage = value()?,
            "--transport" => o.transport = value()?,
            "--peer-tls" => {
                o.peer_tls = true;
                takes_value = false;
            }
            "--debug" => {
                o.release = false;
                takes_value = false;
            }
            "--scale" => {
                o.scale = true;
                takes_value = false;
            }
            "--smoke" => {
                o.smoke = true;
                o.release = false;
                takes_value = false;
            }
            "--preload" => {
                o.preload = true;
                takes_value = false;
            }
            "--no-pause-idle" => {
                o.pause_idle = false;
                takes_value = false;
            }
            "--failover" => {
                o.failover = true;
                takes_value = false;
            }
            "--help" | "-h" => bail!(USAGE),
            other => bail!("unknown option {other}\n{USAGE}"),
        }
        i += if takes_value { 2 } else { 1 };
    }
    if let Some(workload) = workload {
        o.phases = workload
            .split(',')
            .map(|name| match name.trim() {
                "write" => Ok(PhaseSpec { name: "write".into(), read_ratio: 0.0 }),
                "read" => Ok(PhaseSpec { name: "read".into(), read_ratio: 1.0 }),
                "mixed" => Ok(PhaseSpec { name: "mixed".into(), read_ratio }),
                other => bail!("--workload: phases are write, read and mixed, not {other:?}"),
            })
            .collect::<Result<_>>()?;
    }
    if !(0.0..=1.0).contains(&read_ratio) {
        bail!("--read-ratio must be between 0 and 1");
    }
    if o.connections == 0 || o.keys == 0 || o.runs == 0 || o.client_threads == 0 || o.request_timeout_ms == 0
    {
        bail!("--connections, --keys, --runs, --client-threads and --timeout-ms must be at least 1");
    }
    if o.requests == Some(0) || (o.requests.is_none() && o.duration_s == 0.0) {
        bail!("--duration and --requests must be more than 0");
    }
    if let Some(rate) = o.open_loop_rate.filter(|_| !o.watchers_bench) {
        if rate <= 0.0 {
            bail!("--rate must be more than 0");
        }
        if o.failover {
            bail!("--failover runs a closed loop; --rate does not apply");
        }
        // Each connection sends one request every `connections / rate` seconds.
        if o.connections as f64 / rate > o.duration_s.max(1.0) {
            bail!(
                "--rate {rate} gives each of the {} connections less than one request in the window",
                o.connections
            );
        }
    }
    if o.watchers_bench && (o.rate <= 0.0 || o.watchers == 0) {
        bail!("--rate and --watchers must be more than 0");
    }
    if o.failover && o.against != Against::Raft {
        bail!("--failover runs against raft-node only");
    }
    if o.failover && o.nodes < 3 {
        bail!("--failover needs at least 3 nodes");
    }
    cluster_options(&o).validate()?;
    Ok(o)
}

fn cluster_options(o: &Options) -> ClusterOptions {
    ClusterOptions {
        nodes: o.nodes,
        transport: o.transport.clone(),
        storage: o.storage.clone(),
        release: o.release,
        clean: true,
        // Plaintext peers, as the etcd it is compared with, unless both get TLS (QUIC has it
        // always; the etcd side then gets none unless `--peer-tls`).
        insecure: o.transport == "tcp" && !o.peer_tls,
        // The load generator sends no token (nor does it to etcd).
        open_api: true,
    }
}

/// What the JSON file holds.
#[derive(Debug, Serialize)]
struct RunReport<'a> {
    timestamp: String,
    command: String,
    machine: Machine,
    options: &'a Options,
    targets: &'a [TargetReport],
    skipped: &'a [String],
    failover: Option<&'a failover::FailoverReport>,
    /// The machine's fdatasync and loopback round trip, measured with the systems up and idle
    /// before the first phase and after the last.
    floor: Vec<probe::Floor>,
}

#[derive(Debug, Serialize)]
struct Machine {
    cores: usize,
    note: &'static str,
}

/// Runs `cargo xtask bench-http` with these arguments.
pub fn bench_http(root: &Path, args: &[String]) -> Result<()> {
    let o = parse_options(args)?;
    if cfg!(debug_assertions) && !o.smoke {
        return rerun_in_release(args);
    }
    let started_at = SystemTime::now();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(o.client_threads)
        .enable_all()
        .build()
        .context("starting tokio")?;
    let mut targets = Vec::new();
    let mut skipped = Vec::new();
    let mut failover_report = None;
    let mut floor = Vec::new();
    if o.scale {
        let result = scale::run(root, &o, &runtime)?;
        return save_report(root, "scale", started_at, args, &o, &result);
    }
    if o.watchers_bench {
        let (cluster, _children) = start_raft(root, &o)?;
        println!(
            "\nwatchers: {} rounds without and {} with {} watchers of every key on the leader; {} writes/s of {} bytes for {} s each",
            o.runs, o.runs, o.watchers, o.rate, o.value_bytes, o.duration_s
        );
        let report = runtime.block_on(watchers::run(&cluster, &o))?;
        println!("median p99 with watchers / without: {:.2}x", report.p99_ratio);
        println!(
            "every watcher received every acknowledged write: {}",
            if report.every_event_delivered {
                "yes"
            } else {
                "NO (some watchers missed events: the ratio does not count)"
            }
        );
        drop(cluster);
        return save_report(root, "watchers", started_at, args, &o, &report);
    }
    if o.failover {
        let (cluster, children) = start_raft(root, &o)?;
        let phase = Phase {
            workload: Workload { keys: o.keys, value_bytes: o.value_bytes, read_ratio: 0.0 },
            window: Window::UntilStopped,
            warmup: Duration::ZERO,
            ..phase_template(&o, Api::Raft, cluster.endpoints())
        };
        println!(
            "\nfailover: {} kills of the leader under a write load of {} connections",
            o.kills, o.connections
        );
        let result = runtime.block_on(failover::run(&cluster, phase, o.kills))?;
        let memory = memory_of(&children, "node");
        drop(cluster);
        targets.push(TargetReport {
            target: "raft".into(),
            description: raft_description(&o),
            phases: Vec::new(),
            memory,
            fill_errors: 0,
        });
        failover_report = Some(result);
    } else {
        let (measured, measured_floor) = measure_side_by_side(root, &o, &runtime, &mut skipped)?;
        targets = measured;
        floor = measured_floor;
    }
    print_summary(&o, &targets, failover_report.as_ref());
    for f in &floor {
        print_floor(f);
    }
    if o.smoke {
        smoke_check(&targets, &skipped)?;
    }
    let out_dir = root.join("target").join("bench");
    std::fs::create_dir_all(&out_dir)?;
    let timestamp = report::timestamp(started_at);
    let path = out_dir.join(format!("{timestamp}.json"));
    let run = RunReport {
        timestamp,
        command: format!("cargo xtask bench-http {}", args.join(" ")).trim_end().to_string(),
        machine: Machine {
            cores: std::thread::available_parallelism().map_or(0, |n| n.get()),
            note: "load generator and servers on the same machine, sharing its cores",
        },
        options: &o,
        targets: &targets,
        skipped: &skipped,
        failover: failover_report.as_ref(),
        floor,
    };
    std::fs::write(&path, serde_json::to_string_pretty(&run)?)?;
    println!("\nsaved {}", path.display());
    match charts::write(&out_dir, &run.timestamp, &targets) {
        Ok(paths) => {
            for chart in paths {
                println!("chart {}", chart.display());
            }
        }
        Err(e) => println!("charts not drawn: {e:#}"),
    }
    Ok(())
}

/// Saves the report of `cargo xtask bench <name>` to `target/bench/<name>-<timestamp>.json`
/// with the command and options.
fn save_report(
    root: &Path,
    name: &str,
    started_at: SystemTime,
    args: &[String],
    o: &Options,
    report: &impl Serialize,
) -> Result<()> {
    let out_dir = root.join("target").join("bench");
    std::fs::create_dir_all(&out_dir)?;
    let path = out_dir.join(format!("{name}-{}.json", report::timestamp(started_at)));
    let saved = serde_json::json!({
        "command": format!("cargo xtask bench {name} {}", args.join(" ")).trim_end(),
        "options": o,
        "report": report,
    });
    std::fs::write(&path, serde_json::to_string_pretty(&saved)?)?;
    println!("\nsaved {}", path.display());
    Ok(())
}

/// `cargo xtask` is a debug build; a debug load generator would use much of the CPU the
/// servers share with it. Runs this command again from a release build of xtask, waiting for
/// it: Ctrl-C reaches both, and only the release one, which owns the processes, acts on it.
fn rerun_in_release(args: &[String]) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_io().build()?;
    // Registered and never read: SIGINT no longer ends this process.
    let _sigint = runtime
        .block_on(async { tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt()) })?;
    let mut command = vec!["run", "--release", "--quiet", "-p", "xtask", "--", "bench-http"];
    command.extend(args.iter().map(String::as_str));
    crate::cargo(&command)
}

fn raft_description(o: &Options) -> String {
    format!(
        "raft-node ({} node{}, {}, {}, {}, {} build)",
        o.nodes,
        if o.nodes == 1 { "" } else { "s" },
        o.transport,
        if cluster_options(o).insecure { "plaintext peers" } else { "mutual TLS between peers" },
        o.storage,
        if o.release { "release" } else { "debug" }
    )
}

/// Starts the benchmark's raft cluster (from empty data) with its processes stopped on
/// Ctrl-C.
fn start_raft(root: &Path, o: &Options) -> Result<(LocalCluster, Children)> {
    let layout = Layout {
        dir: root.join("target").join("bench").join("raft"),
        raft_port_base: RAFT_PORT_BASE,
        http_port_base: HTTP_PORT_BASE,
    };
    let children = Children::default();
    procs::stop_on_ctrl_c(&children);
    println!("\n{}", raft_description(o));
    let (cluster, leader) = LocalCluster::up(root, &layout, &cluster_options(o), children.clone())?;
    println!("raft cluster up under {}, leader: node {leader}", layout.dir.display());
    Ok((cluster, children))
}

fn memory_of(children: &Children, prefix: &str) -> Vec<report::ProcessMemory> {
    children
        .running()
        .into_iter()
        .filter(|(name, _)| name.starts_with(prefix))
        .filter_map(|(name, pid)| report::memory_of(&name, pid))
        .collect()
}

/// The parts of a phase that come from the options.
fn phase_template(o: &Options, api: Api, endpoints: Vec<String>) -> Phase {
    Phase {
        api,
        endpoints,
        connections: o.connections,
        workload: Workload { keys: o.keys, value_bytes: o.value_bytes, read_ratio: 0.0 },
        fill: false,
        warmup: Duration::from_secs_f64(o.warmup_s),
        window: match o.requests {
            Some(n) => Window::Requests(n),
            None => Window::Duration(Duration::from_secs_f64(o.duration_s)),
        },
        request_timeout: Duration::from_millis(o.request_timeout_ms),
        rate: o.open_loop_rate,
    }
}

/// A system under test, up and serving, and how the load reaches it.
struct Target {
    /// `raft`, `etcd` (gRPC) or `etcd-json` (its JSON gateway).
    name: &'static str,
    /// The system it measures: targets of one system share its processes and its state.
    system: &'static str,
    description: String,
    api: Api,
    /// The members' endpoints, member 1 first. Each turn puts the leader's first (looked up
    /// before the turn), so that a single connection talks to the leader on every system.
    members: Vec<String>,
    children: Children,
}

/// The processes of the systems not being measured, stopped with SIGSTOP; they go on
/// (SIGCONT) when this is dropped, also on error.
struct Paused(Vec<u32>);

impl Paused {
    fn none() -> Self {
        Self(Vec::new())
    }

    /// Stops every running process of the targets of other systems than `measured`. A
    /// process that cannot be stopped is reported and left running.
    fn all_but(targets: &[Target], measured: &str) -> Self {
        let mut pids: Vec<u32> = Vec::new();
        for target in targets.iter().filter(|t| t.system != measured) {
            for (name, pid) in target.children.running() {
                if pids.contains(&pid) {
                    continue;
                }
                match procs::signal(pid, "-STOP") {
                    Ok(()) => pids.push(pid),
                    Err(e) => eprintln!("could not pause {name} ({pid}) of {}: {e:#}", target.system),
                }
            }
        }
        Self(pids)
    }
}

impl Drop for Paused {
    fn drop(&mut self) {
        for pid in self.0.drain(..) {
            if let Err(e) = procs::signal(pid, "-CONT") {
                eprintln!("could not let process {pid} go on: {e:#}");
            }
        }
    }
}

impl Target {
    /// Waits until the same leader is found twice, two seconds apart (at most 30 s), after
    /// the system was stopped: it may hold an election on waking.
    async fn settle(&self) {
        let began = Instant::now();
        let mut last = None;
        while began.elapsed() < Duration::from_secs(30) {
            tokio::time::sleep(Duration::from_secs(2)).await;
            let now = self.leader().await;
            if now.is_some() && now == last {
                return;
            }
            last = now;
        }
        eprintln!("{}: no steady leader within 30 s of going on", self.name);
    }

    /// The position of the leader in `members`, looked up now (`None`: none found in 10 s).
    async fn leader(&self) -> Option<usize> {
        let within = Duration::from_secs(10);
        if self.system == "raft" {
            let id = crate::cluster::leader_elected(&self.members, within).await.ok()?;
            usize::try_from(id).ok()?.checked_sub(1)
        } else {
            etcd::leader_among(&self.members, within).await.ok()
        }
    }
}

/// Starts every system asked for, then runs each phase `runs` times on each target, the
/// targets taking turns within a round and the order rotating from round to round, so that
/// drift on this shared machine falls on all of them alike. Systems not being measured are
/// stopped through each window (see [`Paused`]; `--no-pause-idle`: they sit idle, and their
/// background work shares the cores with the measured one).
fn measure_side_by_side(
    root: &Path,
    o: &Options,
    runtime: &tokio::runtime::Runtime,
    skipped: &mut Vec<String>,
) -> Result<(Vec<TargetReport>, Vec<probe::Floor>)> {
    let mut targets = Vec::new();
    let mut raft_cluster = None;
    if o.against != Against::Etcd {
        let (cluster, children) = start_raft(root, o)?;
        targets.push(Target {
            name: "raft",
            system: "raft",
            description: raft_description(o),
            api: Api::Raft,
            members: cluster.endpoints(),
            children,
        });
        raft_cluster = Some(cluster);
    }
    let mut etcd_cluster = None;
    if o.against != Against::Raft {
        match etcd::find_binary() {
            None => {
                let note = "etcd: skipped, no `etcd` binary on PATH (Debian: apt-get install etcd-server)";
                println!("\n{note}");
                skipped.push(note.to_string());
            }
            Some(binary) => {
                let description = format!(
                    "{} ({} member{}, WAL fsync on, {}{})",
                    etcd::version(&binary),
                    o.nodes,
                    if o.nodes == 1 { "" } else { "s" },
                    if o.peer_tls { "mutual TLS between peers" } else { "plaintext peers" },
                    if o.preload { format!(", {}", scale::ETCD_ARGS.join(" ")) } else { String::new() }
                );
                println!("\n{description}");
                let children = Children::default();
                procs::stop_on_ctrl_c(&children);
                let dir = root.join("target").join("bench").join("etcd");
                let peer_tls = if o.peer_tls {
                    Some(etcd::PeerTls::generate(&root.join("target").join("bench"))?)
                } else {
                    None
                };
                let extra: &[&str] = if o.preload { &scale::ETCD_ARGS } else { &[] };
                let etcd = runtime.block_on(etcd::EtcdCluster::start_with(
                    &binary,
                    &dir,
                    o.nodes,
                    extra,
                    peer_tls.as_ref(),
                    children.clone(),
                ))?;
                let leader = runtime.block_on(etcd.leader())?;
                println!("etcd cluster up under {}, leader: m{}", dir.display(), leader + 1);
                for (name, api, via) in [
                    (
                        "etcd",
                        Api::EtcdGrpc,
                        "its gRPC API over HTTP/2, as its clients use it (one HTTP/2 connection per load connection, one call at a time on each)",
                    ),
                    ("etcd-json", Api::EtcdJson, "its JSON gateway, a proxy to its gRPC API inside etcd"),
                ] {
                    let wanted = match o.etcd_api {
                        EtcdApi::Grpc => api == Api::EtcdGrpc,
                        EtcdApi::Json => api == Api::EtcdJson,
                        EtcdApi::Both => true,
                    };
                    if wanted {
                        targets.push(Target {
                            name,
                            system: "etcd",
                            description: format!("{description}, through {via}"),
                            api,
                            members: etcd.endpoints(),
                            children: children.clone(),
                        });
                    }
                }
                etcd_cluster = Some(etcd);
            }
        }
    }
    let probe_dir = root.join("target").join("bench").join("probe");
    let before = probe::measure(&probe_dir)?;
    print_floor(&before);
    let reports = runtime.block_on(measure(&targets, o))?;
    let floor = vec![before, probe::measure(&probe_dir)?];
    let reports = targets
        .iter()
        .zip(reports)
        .map(|(target, mut report)| {
            let prefix = if target.system == "raft" { "node" } else { "m" };
            report.memory = memory_of(&target.children, prefix);
            report
        })
        .collect();
    drop(raft_cluster);
    drop(etcd_cluster);
    Ok((reports, floor))
}

/// Failed requests a smoke run tolerates, as a share of those answered: a debug cluster on a
/// loaded CI machine may lose its leader for a moment (a `503 no_leader` or two); a target
/// that fails as much as this is broken.
const SMOKE_FAILED_SHARE_MAX: f64 = 0.1;

/// A smoke run passes when no target asked for was skipped and every target answered
/// requests in every phase, with failures (in the window, outside it, and while the keys
/// were written first) under [`SMOKE_FAILED_SHARE_MAX`] of them.
fn smoke_check(targets: &[TargetReport], skipped: &[String]) -> Result<()> {
    if let Some(note) = skipped.first() {
        bail!("bench smoke: a target asked for was not run: {note}");
    }
    if targets.is_empty() {
        bail!("bench smoke: nothing was measured");
    }
    for target in targets {
        if target.phases.is_empty() {
            bail!("bench smoke: {} ran no phase", target.target);
        }
        let mut answered_all = 0u64;
        let mut failed_all = target.fill_errors;
        for phase in &target.phases {
            let answered: u64 = phase.runs.iter().map(|r| r.write.count + r.read.count).sum();
            let failed: u64 =
                phase.runs.iter().map(|r| r.errors.values().sum::<u64>() + r.errors_outside).sum();
            if answered == 0 {
                bail!(
                    "bench smoke: {} {}: no request answered, {failed} failed ({:?})",
                    target.target,
                    phase.phase,
                    phase.runs.iter().map(|r| &r.errors).collect::<Vec<_>>()
                );
            }
            answered_all += answered;
            failed_all += failed;
        }
        if failed_all as f64 > answered_all as f64 * SMOKE_FAILED_SHARE_MAX {
            bail!(
                "bench smoke: {}: {failed_all} requests failed (with {} while writing the keys first) against {answered_all} answered",
                target.target,
                target.fill_errors
            );
        }
        println!(
            "bench smoke: {} answered every phase ({answered_all} requests, {failed_all} failed)",
            target.target
        );
    }
    Ok(())
}

fn print_floor(f: &probe::Floor) {
    println!(
        "\nthis machine, measured in this run with the systems idle: 4 KiB write + fdatasync p50 {:.0} µs (p99 {:.0}) over \
         written blocks, {:.0} µs (p99 {:.0}) appending; loopback TCP round trip p50 {:.0} µs (p99 {:.0}); one-connection \
         target 2 × (sync + round trip, medians) = {:.2} ms ({:.2} ms with the appending sync)",
        f.fdatasync_p50_us,
        f.fdatasync_p99_us,
        f.fdatasync_append_p50_us,
        f.fdatasync_append_p99_us,
        f.loopback_rtt_p50_us,
        f.loopback_rtt_p99_us,
        f.one_connection_target_ms(),
        f.one_connection_target_append_ms()
    );
}

/// `endpoints` with the one at `leader` first, the others in their order after it.
fn leader_first(mut endpoints: Vec<String>, leader: usize) -> Vec<String> {
    if leader < endpoints.len() {
        endpoints.rotate_left(leader);
    }
    endpoints
}

/// The order of the targets in round `run` of phase `phase`: reversed every other round and
/// rotated every two (A B, B A, B A, A B for two targets), so that no target always follows
/// the same one (what one leaves behind, such as flushes and compactions after writes, lands
/// on each of the others in turn).
fn turn_order(targets: usize, phase: usize, run: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..targets).collect();
    if targets > 0 {
        order.rotate_left((phase + run / 2) % targets);
    }
    if run % 2 == 1 {
        order.reverse();
    }
    order
}

/// Runs every phase `runs` times on every target, taking turns (see
/// [`measure_side_by_side`]).
async fn measure(targets: &[Target], o: &Options) -> Result<Vec<TargetReport>> {
    let mut phases: Vec<Vec<PhaseReport>> = targets.iter().map(|_| Vec::new()).collect();
    let mut fill_errors: Vec<u64> = targets.iter().map(|_| 0).collect();
    let mut filled: Vec<&str> = Vec::new();
    // The system measured in the window before: the others were stopped through it.
    let mut last_measured: Option<&str> = None;
    for (phase_index, spec) in o.phases.iter().enumerate() {
        if spec.read_ratio > 0.0 || o.preload {
            // Reads of missing keys would be errors for raft-node and empty answers for etcd;
            // with `--preload`, the writes overwrite a state of every key. Once per system.
            for (which, target) in targets.iter().enumerate() {
                if filled.contains(&target.system) {
                    continue;
                }
                let began = Instant::now();
                let fill =
                    Phase { fill: true, rate: None, ..phase_template(o, target.api, target.members.clone()) };
                let result = load::run_phase(fill, Arc::new(AtomicBool::new(false)), None).await?;
                fill_errors[which] = result.error_count() + result.errors_outside;
                println!(
                    "{}: wrote each of the {} keys once in {:.0} ms ({} errors)",
                    target.system,
                    o.keys,
                    began.elapsed().as_secs_f64() * 1e3,
                    result.error_count()
                );
                filled.push(target.system);
            }
        }
        let mut runs: Vec<Vec<Figures>> = targets.iter().map(|_| Vec::new()).collect();
        for run in 0..o.runs {
            for which in turn_order(targets.len(), phase_index, run) {
                let target = &targets[which];
                if o.pause_idle && last_measured.is_some_and(|system| system != target.system) {
                    // It was stopped through the last window: its timers all fire at once when
                    // it goes on, which can cost it an election.
                    target.settle().await;
                }
                last_measured = Some(target.system);
                let paused =
                    if o.pause_idle { Paused::all_but(targets, target.system) } else { Paused::none() };
                let leader = target.leader().await;
                let endpoints = leader_first(target.members.clone(), leader.unwrap_or(0));
                let template = phase_template(o, target.api, endpoints);
                let phase = Phase {
                    workload: Workload { read_ratio: spec.read_ratio, ..template.workload.clone() },
                    ..template
                };
                let idle: Vec<&Children> =
                    targets.iter().filter(|t| t.system != target.system).map(|t| &t.children).collect();
                let (result, cpu) = measure_cpu(&target.children, &idle, phase).await?;
                let leader_after = target.leader().await;
                drop(paused);
                let figures = Figures::of(&result, cpu);
                let member = |position: Option<usize>| {
                    position.map_or_else(|| "none".to_string(), |p| format!("member {}", p + 1))
                };
                println!(
                    "{} {} run {}/{}: {:.0} writes/s, {:.0} reads/s, write p99 {:.2} ms, read p99 {:.2} ms, {:.0} µs server CPU per request, {} errors ({} outside the window), idle systems {:.0} % CPU, leader {}{}",
                    target.name,
                    spec.name,
                    run + 1,
                    o.runs,
                    figures.writes_per_s,
                    figures.reads_per_s,
                    figures.write.p99_ms,
                    figures.read.p99_ms,
                    figures.server_cpu_us_per_request(),
                    result.error_count(),
                    result.errors_outside,
                    figures.cpu.idle_systems_percent,
                    member(leader),
                    if leader_after == leader {
                        String::new()
                    } else {
                        format!(", then {} (the leader changed during this run)", member(leader_after))
                    }
                );
                runs[which].push(figures);
            }
        }
        for (which, runs) in runs.into_iter().enumerate() {
            let median = Figures::median(&runs);
            phases[which].push(PhaseReport {
                phase: spec.name.clone(),
                read_ratio: spec.read_ratio,
                runs,
                median,
            });
        }
    }
    Ok(targets
        .iter()
        .zip(phases)
        .zip(fill_errors)
        .map(|((target, phases), fill_errors)| TargetReport {
            target: target.name.to_string(),
            description: target.description.clone(),
            phases,
            memory: Vec::new(),
            fill_errors,
        })
        .collect())
}

/// Runs a phase and measures the CPU time of the servers and of this process over its
/// measured window (from the end of the warm-up until the phase returns).
async fn measure_cpu(
    children: &Children,
    idle: &[&Children],
    phase: Phase,
) -> Result<(load::PhaseResult, CpuUse)> {
    let cpu_of = |children: &Children| -> Duration {
        children.running().iter().map(|(_, pid)| report::cpu_time(&pid.to_string())).sum()
    };
    let sample = || {
        let idle: Duration = idle.iter().map(|c| cpu_of(c)).sum();
        (Instant::now(), cpu_of(children), report::cpu_time("self"), idle)
    };
    let warmup = phase.warmup;
    let first = tokio::spawn(async move {
        tokio::time::sleep(warmup).await;
    });
    let load = tokio::spawn(load::run_phase(phase, Arc::new(AtomicBool::new(false)), None));
    first.await.context("the sampler panicked")?;
    let before = sample();
    let result = load.await.context("the load panicked")??;
    let after = sample();
    let secs = after.0.duration_since(before.0).as_secs_f64().max(1e-9);
    let cpu = CpuUse {
        servers_percent: after.1.saturating_sub(before.1).as_secs_f64() / secs * 100.0,
        client_percent: after.2.saturating_sub(before.2).as_secs_f64() / secs * 100.0,
        idle_systems_percent: after.3.saturating_sub(before.3).as_secs_f64() / secs * 100.0,
    };
    Ok((result, cpu))
}

fn print_summary(o: &Options, targets: &[TargetReport], failover: Option<&failover::FailoverReport>) {
    let window = match o.requests {
        Some(n) => format!("{n} requests"),
        None => format!("{} s", o.duration_s),
    };
    if o.failover {
        println!(
            "\n== bench-http --failover: {} connections writing (closed loop, keep-alive), {}-byte values, {} keys",
            o.connections, o.value_bytes, o.keys
        );
    } else {
        let pacing = match o.open_loop_rate {
            Some(rate) => format!(
                "open loop at {rate} requests/s, latency from each request's due time when it went out late"
            ),
            None => "closed loop".to_string(),
        };
        println!(
            "\n== bench-http: {} connections ({pacing}, keep-alive), {}-byte values, {} keys, {} s warm-up + {window}, {}, targets taking turns",
            o.connections,
            o.value_bytes,
            o.keys,
            o.warmup_s,
            if o.runs > 1 { format!("median of {} runs", o.runs) } else { "1 run".to_string() }
        );
    }
    println!(
        "   load generator on the same {}-core machine as the servers ({} client thread(s)); CPU in % of one core",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        o.client_threads
    );
    for target in targets {
        println!("   {}: {}", target.target, target.description);
    }
    if targets.iter().any(|t| !t.phases.is_empty()) {
        println!("\n{}", report::figures_table(targets));
    }
    if let Some(raft) = targets.iter().find(|t| t.target == "raft") {
        for other in targets.iter().filter(|t| t.target != "raft") {
            println!("raft vs {} (medians):\n{}", other.target, report::ratio_table(raft, other));
        }
    }
    if let Some(f) = failover {
        println!(
            "failover over {} kills of the leader: writes succeed again after p50 {:.0} ms, max {:.0} ms, min {:.0} ms (resolution {:.0} ms); {} writes, {} errors",
            f.kills.len(),
            f.recovery_p50_ms,
            f.recovery_max_ms,
            f.recovery_min_ms,
            f.probe_timeout_ms,
            f.writes_ok,
            f.errors.values().sum::<u64>()
        );
        for (kind, count) in &f.errors {
            println!("   error {kind}: {count}");
        }
    }
    println!("\nresident memory after the run:\n{}", report::memory_table(targets));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn turns_rotate_and_reverse_so_that_no_target_always_follows_the_same_one() {
        assert_eq!(turn_order(2, 0, 0), vec![0, 1]);
        assert_eq!(turn_order(2, 0, 1), vec![1, 0]);
        assert_eq!(turn_order(2, 0, 2), vec![1, 0]);
        assert_eq!(turn_order(2, 0, 3), vec![0, 1]);
        assert_eq!(turn_order(2, 1, 0), vec![1, 0]);
        let mut followers = std::collections::BTreeSet::new();
        for run in 0..4 {
            let order = turn_order(3, 0, run);
            let mut sorted = order.clone();
            sorted.sort_unstable();
            assert_eq!(sorted, vec![0, 1, 2], "each target once per round");
            for pair in order.windows(2) {
                followers.insert((pair[0], pair[1]));
            }
        }
        // Over four rounds of three targets, each target is followed by each of the others.
        assert_eq!(followers.len(), 6, "{followers:?}");
        assert_eq!(turn_order(0, 3, 5), Vec::<usize>::new());
    }

    /// The state letter of a process (`T`: stopped) from `/proc/<pid>/stat`.
    fn state_of(pid: u32) -> char {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
        let after_name = stat.rfind(')').expect("a name in parentheses");
        stat[after_name + 1..].trim_start().chars().next().expect("a state")
    }

    #[test]
    fn the_other_systems_are_stopped_through_a_window_and_go_on_after_it() {
        let target = |system: &'static str| {
            let children = Children::default();
            let child = std::process::Command::new("sleep").arg("30").spawn().expect("sleep runs");
            children.insert(system, child);
            Target {
                name: system,
                system,
                description: String::new(),
                api: Api::Raft,
                members: Vec::new(),
                children,
            }
        };
        let targets = [target("raft"), target("etcd")];
        let pid = |which: usize| targets[which].children.running()[0].1;
        // The signal takes effect when the process next runs: wait for the state (at most 5 s).
        let wait_for = |pid: u32, stopped: bool| {
            let began = Instant::now();
            while (state_of(pid) == 'T') != stopped && began.elapsed() < Duration::from_secs(5) {
                std::thread::sleep(Duration::from_millis(10));
            }
            state_of(pid) == 'T'
        };
        let paused = Paused::all_but(&targets, "raft");
        let stopped = wait_for(pid(1), true);
        let measured_runs = state_of(pid(0)) != 'T';
        drop(paused);
        let resumed = !wait_for(pid(1), false);
        for t in &targets {
            t.children.stop_all();
        }
        assert!(stopped, "the system not measured is stopped");
        assert!(measured_runs, "the measured one runs");
        assert!(resumed, "it goes on after the window");
        assert!(Paused::none().0.is_empty());
    }

    #[test]
    fn the_leader_goes_first_and_the_rest_keep_their_order() {
        let members = vec!["a".to_string(), "b".to_string(), "c".to_string()];
        assert_eq!(leader_first(members.clone(), 1), vec!["b", "c", "a"]);
        assert_eq!(leader_first(members.clone(), 0), members);
        assert_eq!(leader_first(members.clone(), 7), members);
    }

    #[test]
    fn an_open_loop_rate_is_checked() {
        let args = |extra: &[&str]| -> Vec<String> { extra.iter().map(|s| s.to_string()).collect() };
        assert!(parse_options(&args(&["--rate", "0"])).is_err());
        assert!(parse_options(&args(&["--rate", "1", "--connections", "64", "--duration", "10"])).is_err());
        assert!(parse_options(&args(&["--rate", "100", "--failover"])).is_err());
        assert_eq!(parse_options(&args(&["--rate", "4000"])).expect("valid").open_loop_rate, Some(4000.0));
    }
}
