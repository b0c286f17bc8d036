//! `cargo xtask bench scale`: the large-state benchmark. Grows the state to `keys` distinct
//! keys of `value_bytes` (1,000,000 × 1 KiB by default: about 1 GB) under a closed-loop write
//! load, then (raft-node only) removes a follower, wipes it and lets it join again, so that it
//! catches up by snapshot while the load goes on, and finally SIGKILLs and restarts another
//! follower to time its restart with the whole state. The same growth runs against etcd when one
//! is installed (with a quota that fits the state), and the ratios are printed.
//!
//! Measures, as defined in the large-state issue:
//! - **state size**: the sum of key and value bytes (raft-node's `state_bytes`);
//! - **resident memory**: `VmRSS` of every server process sampled every 100 ms, and `VmHWM`
//!   (the kernel's exact peak); for raft-node also the largest `RSS - state size` seen at a
//!   sample (the state size read from the node's status once a second);
//! - **elections**: raft-node's highest term at the end minus at the start (each election
//!   raises it at least once); etcd's `etcd_server_leader_changes_seen_total` on member 1;
//! - **snapshots**: the `snapshot taken` lines of the node logs (count, largest, slowest);
//! - **catch-up**: from the wiped follower's start until it has applied the leader's commit
//!   index of that moment; MB/s = the snapshot it installed / that time (so it includes the
//!   join, the transfer and the restore: a lower bound of the transfer's own speed); the
//!   transfer alone is timed from the node logs (the leader's last `sending snapshot` to it
//!   until its `installing snapshot`); meanwhile the clients use the two nodes that stay
//!   members (the removed node's own clients would count its absence, not the cluster's);
//! - **restart**: from a SIGKILLed follower's new start until its API answers, and until its
//!   `/ready` says 200 (a leader known and every committed entry applied).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use raft_client::api::RoleView;
use serde::Serialize;

use super::load::{self, Api, Phase, Window, Workload};
use super::report::{self, CpuUse, Figures};
use super::{etcd, phase_template, raft_description, start_raft, Options};
use crate::cluster::{leader_elected, status_client, LocalCluster};
use crate::procs::{self, Children};

/// etcd's quota and compaction for a state of this size (its 2 GiB default quota stops it).
pub(super) const ETCD_ARGS: [&str; 3] = [
    "--quota-backend-bytes=8589934592",
    "--auto-compaction-mode=revision",
    "--auto-compaction-retention=10000",
];
/// Steady load measured before the catch-up, for comparison.
const STEADY: Duration = Duration::from_secs(10);
/// Longest wait for the wiped follower to catch up.
const CATCH_UP_WITHIN: Duration = Duration::from_secs(300);
/// How long a phase waits for a leader before it starts.
const LEADER_WITHIN: Duration = Duration::from_secs(30);

/// Memory of one server process over the run.
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct ProcessMemory {
    name: String,
    /// Largest `VmRSS` sampled (every 100 ms).
    sampled_peak_mib: f64,
    /// `VmHWM` at the end (the kernel's peak).
    peak_mib: f64,
    /// `VmRSS` at the end.
    end_mib: f64,
    /// raft-node: the largest `VmRSS - state size` at a sample.
    over_state_peak_mib: Option<f64>,
}

/// What growing the state measured on one target.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct GrowReport {
    target: String,
    description: String,
    keys: u64,
    state_bytes: u64,
    seconds: f64,
    figures: Figures,
    elections: u64,
    snapshots: SnapshotLines,
    memory: Vec<ProcessMemory>,
}

/// The `snapshot taken` lines of the node logs.
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct SnapshotLines {
    count: u64,
    largest_bytes: u64,
    slowest_ms: u64,
}

/// What the catch-up of a wiped follower measured.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct CatchUpReport {
    node: u64,
    catch_up_s: f64,
    snapshot_bytes: u64,
    mb_per_s: f64,
    /// The transfer that completed: from the leader's last `sending snapshot` to this node
    /// until the node's `installing snapshot` (both logs, same clock); `None` if not found.
    transfer_s: Option<f64>,
    transfer_mb_per_s: Option<f64>,
    steady: Figures,
    during: Figures,
    elections: u64,
    memory: Vec<ProcessMemory>,
}

/// What restarting a follower with the whole state measured.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct RestartReport {
    node: u64,
    /// From the start of the process until its HTTP API answers.
    answering_s: f64,
    /// From the start of the process until `/ready` says 200 (leader known, every committed
    /// entry applied).
    ready_s: f64,
    /// The restarted process's peak resident memory (`VmHWM`) when it was ready, in MiB.
    peak_rss_mib: Option<f64>,
    /// Its state size then, in MB.
    state_mb: Option<f64>,
}

/// The whole run, as saved.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct ScaleReport {
    grow: Vec<GrowReport>,
    catch_up: Option<CatchUpReport>,
    restart: Option<RestartReport>,
    skipped: Vec<String>,
}

/// Samples the servers' memory every 100 ms (and raft-node's state size and term every second)
/// until stopped.
struct Sampler {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<BTreeMap<String, ProcessMemory>>,
    terms: Arc<Mutex<(u64, u64)>>,
}

impl Sampler {
    /// `endpoints`: raft-node's HTTP addresses (node N at N-1), empty for etcd.
    fn start(children: &Children, prefix: &str, endpoints: Vec<String>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let terms = Arc::new(Mutex::new((0u64, 0u64)));
        let (children, prefix, flag, seen) =
            (children.clone(), prefix.to_string(), stop.clone(), terms.clone());
        let task = tokio::spawn(async move {
            let mut memory: BTreeMap<String, ProcessMemory> = BTreeMap::new();
            let mut state_bytes: BTreeMap<String, u64> = BTreeMap::new();
            let client = status_client(&endpoints).ok();
            let mut tick = 0u64;
            while !flag.load(Ordering::Relaxed) {
                if tick.is_multiple_of(10) {
                    if let Some(client) = &client {
                        for (_, status) in client.statuses().await {
                            let Ok(s) = status else { continue };
                            state_bytes.insert(format!("node{}", s.id), s.state_bytes);
                            let mut t = seen.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                            if t.0 == 0 {
                                t.0 = s.term;
                            }
                            t.1 = t.1.max(s.term);
                        }
                    }
                }
                for (name, pid) in children.running() {
                    if !name.starts_with(&prefix) {
                        continue;
                    }
                    let Some(m) = report::memory_of(&name, pid) else { continue };
                    let entry = memory
                        .entry(name.clone())
                        .or_insert_with(|| ProcessMemory { name: name.clone(), ..ProcessMemory::default() });
                    let rss = m.rss_kib as f64 / 1024.0;
                    entry.sampled_peak_mib = entry.sampled_peak_mib.max(rss);
                    entry.peak_mib = m.peak_rss_kib as f64 / 1024.0;
                    entry.end_mib = rss;
                    // Against the cluster's state: a node that restores a snapshot holds the
                    // state before its own figure says so.
                    if let Some(state) = state_bytes.values().max() {
                        let over = rss - *state as f64 / (1024.0 * 1024.0);
                        entry.over_state_peak_mib =
                            Some(entry.over_state_peak_mib.map_or(over, |o| o.max(over)));
                    }
                }
                tick += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            memory
        });
        Self { stop, task, terms }
    }

    /// Stops sampling: the memory per process and the highest term's rise.
    async fn finish(self) -> (Vec<ProcessMemory>, u64) {
        self.stop.store(true, Ordering::Relaxed);
        let memory = self.task.await.map(|m| m.into_values().collect()).unwrap_or_default();
        let (first, last) = *self.terms.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        (memory, last.saturating_sub(first))
    }
}

/// Reads the `snapshot taken` lines of the node logs.
fn snapshot_lines(cluster: &LocalCluster, nodes: u64) -> SnapshotLines {
    let mut out = SnapshotLines::default();
    let field = |line: &str, key: &str| -> Option<u64> {
        let at = line.find(&format!("{key}="))? + key.len() + 1;
        line[at..].split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
    };
    for id in 1..=nodes {
        let text = std::fs::read_to_string(cluster.log_path(id)).unwrap_or_default();
        for line in text.lines().filter(|l| l.contains("snapshot taken")) {
            out.count += 1;
            out.largest_bytes = out.largest_bytes.max(field(line, "bytes").unwrap_or(0));
            out.slowest_ms = out.slowest_ms.max(field(line, "took_ms").unwrap_or(0));
        }
    }
    out
}

/// etcd's leader changes seen by member 1 (from its `/metrics`).
async fn etcd_leader_changes(endpoint: &str) -> u64 {
    let Ok(mut conn) = load::Connection::open(endpoint).await else { return 0 };
    let Ok((_, body)) = conn.send(hyper::Method::GET, "/metrics", Default::default()).await else { return 0 };
    String::from_utf8_lossy(&body)
        .lines()
        .find_map(|l| l.strip_prefix("etcd_server_leader_changes_seen_total "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

/// Writes every key once with the benchmark's connections.
async fn grow(template: &Phase) -> Result<(Figures, f64)> {
    let began = Instant::now();
    let fill = Phase { fill: true, ..template.clone() };
    let result = load::run_phase(fill, Arc::new(AtomicBool::new(false)), None).await?;
    Ok((Figures::of(&result, CpuUse::default()), began.elapsed().as_secs_f64()))
}

fn print_grow(r: &GrowReport) {
    let f = &r.figures;
    println!(
        "{}: {} keys, state {:.0} MB in {:.0} s: {:.0} writes/s, p50 {:.1} ms, p99 {:.1} ms, max {:.0} ms, {} failed, {} elections, snapshots {} on all nodes (largest {:.0} MB, slowest {} ms)",
        r.target,
        r.keys,
        r.state_bytes as f64 / 1e6,
        r.seconds,
        f.writes_per_s,
        f.write.p50_ms,
        f.write.p99_ms,
        f.write.max_ms,
        f.errors.values().sum::<u64>(),
        r.elections,
        r.snapshots.count,
        r.snapshots.largest_bytes as f64 / 1e6,
        r.snapshots.slowest_ms
    );
    print_memory(&r.memory);
}

/// One line per process: its peak, sampled peak and last resident memory.
fn print_memory(memory: &[ProcessMemory]) {
    for m in memory {
        println!(
            "   {}: RSS peak {:.0} MiB (sampled {:.0}), end {:.0} MiB{}",
            m.name,
            m.peak_mib,
            m.sampled_peak_mib,
            m.end_mib,
            m.over_state_peak_mib
                .map_or(String::new(), |o| format!(", at most {o:.0} MiB over the state size"))
        );
    }
}

/// Runs the scale benchmark.
pub(crate) fn run(
    root: &std::path::Path,
    o: &Options,
    runtime: &tokio::runtime::Runtime,
) -> Result<ScaleReport> {
    let mut report = ScaleReport { grow: Vec::new(), catch_up: None, restart: None, skipped: Vec::new() };
    println!(
        "\n== bench scale: {} keys × {}-byte values (about {:.0} MB of state), {} connections writing",
        o.keys,
        o.value_bytes,
        o.keys as f64 * (o.value_bytes as f64 + 14.0) / 1e6,
        o.connections
    );
    if o.against != super::Against::Etcd {
        let (cluster, children) = start_raft(root, o)?;
        let template = phase_template(o, Api::Raft, cluster.endpoints());
        let (grown, catch_up, restart) = runtime.block_on(async {
            let sampler = Sampler::start(&children, "node", cluster.endpoints());
            let (figures, seconds) = grow(&template).await?;
            let (memory, elections) = sampler.finish().await;
            let client = status_client(&cluster.endpoints())?;
            let status = client.status().await.context("status after the growth")?;
            let grown = GrowReport {
                target: "raft".into(),
                description: raft_description(o),
                keys: status.keys,
                state_bytes: status.state_bytes,
                seconds,
                figures,
                elections,
                snapshots: snapshot_lines(&cluster, o.nodes),
                memory,
            };
            print_grow(&grown);
            let catch_up = catch_up(&cluster, &children, &template, o).await?;
            let restart = restart(&cluster, catch_up.node, o).await?;
            anyhow::Ok((grown, catch_up, restart))
        })?;
        report.grow.push(grown);
        report.catch_up = Some(catch_up);
        report.restart = Some(restart);
        drop(cluster);
    }
    if o.against != super::Against::Raft {
        match etcd::find_binary() {
            None => {
                let note = "etcd: skipped, no `etcd` binary on PATH (Debian: apt-get install etcd-server)";
                println!("\n{note}");
                report.skipped.push(note.into());
            }
            Some(binary) => {
                let description = format!(
                    "{} ({} members, WAL fsync on, {}, through gRPC as its clients use it)",
                    etcd::version(&binary),
                    o.nodes,
                    ETCD_ARGS.join(" ")
                );
                println!("\n{description}");
                let children = Children::default();
                procs::stop_on_ctrl_c(&children);
                let dir = root.join("target").join("bench").join("etcd");
                let grown = runtime.block_on(async {
                    let etcd = etcd::EtcdCluster::start(&binary, &dir, o.nodes, &ETCD_ARGS, children.clone())
                        .await?;
                    let endpoints = etcd.endpoints();
                    let template = phase_template(o, Api::EtcdGrpc, endpoints.clone());
                    let before = etcd_leader_changes(&endpoints[0]).await;
                    let sampler = Sampler::start(&children, "m", Vec::new());
                    let (figures, seconds) = grow(&template).await?;
                    let (memory, _) = sampler.finish().await;
                    let elections = etcd_leader_changes(&endpoints[0]).await.saturating_sub(before);
                    drop(etcd);
                    anyhow::Ok(GrowReport {
                        target: "etcd".into(),
                        description,
                        keys: o.keys,
                        state_bytes: o.keys * (o.value_bytes as u64 + 14),
                        seconds,
                        figures,
                        elections,
                        snapshots: SnapshotLines::default(),
                        memory,
                    })
                })?;
                print_grow(&grown);
                report.grow.push(grown);
            }
        }
    }
    if let [raft, etcd] = &report.grow[..] {
        let (r, e) = (&raft.figures, &etcd.figures);
        println!(
            "\nraft vs etcd growing the state: writes/s {:.2}x, p99 {:.2}x, max {:.2}x (below 1 is better for latency)",
            r.writes_per_s / e.writes_per_s.max(1e-9),
            r.write.p99_ms / e.write.p99_ms.max(1e-9),
            r.write.max_ms / e.write.max_ms.max(1e-9)
        );
    }
    Ok(report)
}

/// Measures a steady window, then removes a follower, wipes it and has it join again while
/// the load goes on; returns when it has caught up.
async fn catch_up(
    cluster: &LocalCluster,
    children: &Children,
    template: &Phase,
    o: &Options,
) -> Result<CatchUpReport> {
    let overwrite = Workload { keys: o.keys, value_bytes: o.value_bytes, read_ratio: 0.0 };
    let steady_phase = Phase {
        workload: overwrite.clone(),
        window: Window::Duration(STEADY),
        warmup: Duration::ZERO,
        ..template.clone()
    };
    let steady = load::run_phase(steady_phase, Arc::new(AtomicBool::new(false)), None).await?;
    let steady = Figures::of(&steady, CpuUse::default());
    println!(
        "raft steady before the catch-up: {:.0} writes/s, p99 {:.1} ms",
        steady.writes_per_s, steady.write.p99_ms
    );

    let client = status_client(&cluster.endpoints())?;
    let leader = leader_elected(&cluster.endpoints(), LEADER_WITHIN).await?;
    let node = (1..=o.nodes).find(|&id| id != leader).context("no follower")?;
    let stop = Arc::new(AtomicBool::new(false));
    // The clients use the nodes that stay members (a removed node refuses them, and a killed
    // one is not there): the failures counted are the cluster's, not a dead endpoint's.
    let staying: Vec<String> = (1..=o.nodes)
        .filter(|&id| id != node)
        .map(|id| cluster.endpoints()[id as usize - 1].clone())
        .collect();
    let during_phase = Phase {
        workload: overwrite,
        window: Window::UntilStopped,
        warmup: Duration::ZERO,
        endpoints: staying,
        ..template.clone()
    };
    let load = tokio::spawn(load::run_phase(during_phase, stop.clone(), None));
    let sampler = Sampler::start(children, "node", cluster.endpoints());

    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match client.remove_member(node, false).await {
            Ok(_) => break,
            Err(e) if Instant::now() > deadline => bail!("removing node {node}: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(300)).await,
        }
    }
    cluster.kill(node)?;
    cluster.wipe_for_rejoin(node)?;
    let target = client.status().await?.commit_index;
    let started = Instant::now();
    cluster.start_node(node)?;
    println!("node {node} removed, wiped and started again to join; catching up to index {target}");
    let own = status_client(&[cluster.endpoints()[node as usize - 1].clone()])?;
    let caught_up = loop {
        if started.elapsed() > CATCH_UP_WITHIN {
            stop.store(true, Ordering::Relaxed);
            bail!("node {node} did not catch up within {CATCH_UP_WITHIN:?}");
        }
        if let Ok(s) = own.status().await {
            // Caught up whatever its role: it may have been elected meanwhile (counted among
            // the elections).
            if s.applied_index >= target && !matches!(s.role, RoleView::PreCandidate | RoleView::Candidate) {
                break started.elapsed();
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    stop.store(true, Ordering::Relaxed);
    let during = Figures::of(&load.await.context("the load panicked")??, CpuUse::default());
    let (memory, elections) = sampler.finish().await;
    // The node publishes the gauge a moment after installing the snapshot.
    let endpoint = &cluster.endpoints()[node as usize - 1];
    let mut snapshot_bytes = 0;
    for _ in 0..50 {
        snapshot_bytes = metric(endpoint, "raft_snapshot_bytes").await;
        if snapshot_bytes > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let transfer_s = transfer_seconds(cluster, o.nodes, node);
    let report = CatchUpReport {
        node,
        catch_up_s: caught_up.as_secs_f64(),
        snapshot_bytes,
        mb_per_s: snapshot_bytes as f64 / 1e6 / caught_up.as_secs_f64().max(1e-9),
        transfer_s,
        transfer_mb_per_s: transfer_s.map(|t| snapshot_bytes as f64 / 1e6 / t.max(1e-9)),
        steady,
        during,
        elections,
        memory,
    };
    println!(
        "raft catch-up of wiped node {node}: {:.1} s for a {:.0} MB snapshot ({:.0} MB/s, join and restore included; the transfer itself {}); writes meanwhile {:.0}/s, p99 {:.1} ms ({:.1}x the steady p99), {} failed, {} elections",
        report.catch_up_s,
        snapshot_bytes as f64 / 1e6,
        report.mb_per_s,
        match (report.transfer_s, report.transfer_mb_per_s) {
            (Some(t), Some(r)) => format!("{t:.1} s, {r:.0} MB/s"),
            _ => "not found in the logs".to_string(),
        },
        report.during.writes_per_s,
        report.during.write.p99_ms,
        report.during.write.p99_ms / report.steady.write.p99_ms.max(1e-9),
        report.during.errors.values().sum::<u64>(),
        elections
    );
    print_memory(&report.memory);
    Ok(report)
}

/// SIGKILLs a follower other than `wiped` (no load running) and times its restart: until its
/// API answers, and until `/ready` (every committed entry applied again, a leader known).
async fn restart(cluster: &LocalCluster, wiped: u64, o: &Options) -> Result<RestartReport> {
    // Not the first status that answers: a node that just caught up may be in a pre-vote
    // (it missed its leader for an election timeout) and know no leader for a moment.
    let leader = leader_elected(&cluster.endpoints(), LEADER_WITHIN).await?;
    let node = (1..=o.nodes).find(|&id| id != leader && id != wiped).context("no other follower")?;
    cluster.kill(node)?;
    let started = Instant::now();
    cluster.start_node(node)?;
    let endpoint = cluster.endpoints()[node as usize - 1].clone();
    let mut answering = None;
    let ready = loop {
        if started.elapsed() > CATCH_UP_WITHIN {
            bail!("node {node} was not ready within {CATCH_UP_WITHIN:?} of its restart");
        }
        if let Ok(mut conn) = load::Connection::open(&endpoint).await {
            if let Ok((status, _)) = conn.send(hyper::Method::GET, "/ready", Default::default()).await {
                answering.get_or_insert_with(|| started.elapsed());
                if status == hyper::StatusCode::OK {
                    break started.elapsed();
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let answering = answering.unwrap_or(ready);
    // The new process's peak so far: reading the log and the snapshot, applying the log again.
    let peak_rss_mib = cluster
        .pid(node)
        .and_then(|pid| report::memory_of("restarted", pid))
        .map(|m| m.peak_rss_kib as f64 / 1024.0);
    let own = status_client(std::slice::from_ref(&endpoint))?;
    let state_mb = own.status().await.ok().map(|s| s.state_bytes as f64 / 1e6);
    println!(
        "raft restart of node {node} (SIGKILL, whole state): API answering after {:.1} s, ready after {:.1} s; peak RSS {} MiB (state {} MB)",
        answering.as_secs_f64(),
        ready.as_secs_f64(),
        peak_rss_mib.map_or("?".into(), |m| format!("{m:.0}")),
        state_mb.map_or("?".into(), |m| format!("{m:.0}")),
    );
    Ok(RestartReport {
        node,
        answering_s: answering.as_secs_f64(),
        ready_s: ready.as_secs_f64(),
        peak_rss_mib,
        state_mb,
    })
}

/// Seconds of the snapshot transfer to `node` that completed: from the leader's last
/// `sending snapshot` line for it before the node's last `installing snapshot` line.
fn transfer_seconds(cluster: &LocalCluster, nodes: u64, node: u64) -> Option<f64> {
    let at = |line: &str| humantime::parse_rfc3339(line.split_whitespace().next()?).ok();
    let logs: Vec<String> =
        (1..=nodes).map(|id| std::fs::read_to_string(cluster.log_path(id)).unwrap_or_default()).collect();
    let installed =
        logs[node as usize - 1].lines().rev().filter(|l| l.contains("installing snapshot")).find_map(at)?;
    let to = format!("to={node} ");
    let started = logs
        .iter()
        .flat_map(|log| log.lines())
        .filter(|l| l.contains("sending snapshot") && l.contains(&to))
        .filter_map(at)
        .filter(|t| *t <= installed)
        .max()?;
    installed.duration_since(started).ok().map(|d| d.as_secs_f64())
}

/// One gauge of a raft-node's `/metrics` (0 when missing).
async fn metric(endpoint: &str, name: &str) -> u64 {
    let Ok(mut conn) = load::Connection::open(endpoint).await else { return 0 };
    let Ok((_, body)) = conn.send(hyper::Method::GET, "/metrics", Default::default()).await else { return 0 };
    let prefix = format!("{name} ");
    String::from_utf8_lossy(&body)
        .lines()
        .find_map(|l| l.strip_prefix(prefix.as_str()))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}
