//! The nemesis: a seeded schedule of faults (printed at the start; the same `--seed` gives the
//! same schedule) and how each is applied and healed. Targets named by role ("the leader")
//! are resolved when the fault starts, so a replay repeats the schedule, not necessarily the
//! same victims.

use raft_core::SeededRng;
use std::collections::BTreeSet;
use std::fmt;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use raft_client::api::{MemberRole, RoleView};

use super::proxy::LinkMode;
use super::Env;

/// Which nodes a fault hits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Who {
    Node(u64),
    Leader,
    Nodes(Vec<u64>),
    All,
}

impl fmt::Display for Who {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Who::Node(id) => write!(f, "node {id}"),
            Who::Leader => write!(f, "the leader"),
            Who::Nodes(ids) => write!(f, "nodes {ids:?}"),
            Who::All => write!(f, "all nodes"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Partition {
    /// The leader cut off from everyone, both ways.
    IsolateLeader,
    /// These nodes (a minority) cut off from the rest, both ways.
    Split(Vec<u64>),
    /// Each node reaches only its two neighbours in this ring order (5+ nodes).
    Ring(Vec<u64>),
    /// Two halves that only `bridge` connects.
    Bridge { left: Vec<u64>, bridge: u64, right: Vec<u64> },
    /// Nothing from `who` reaches the others; it still hears them.
    OneWayOut(Who),
    /// Nothing from the others reaches `who`; it can still send.
    OneWayIn(Who),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyFault {
    Delay(u64),
    Stall,
    Drip,
    Reset,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// SIGKILL, then a restart after the hold.
    Kill(Who),
    /// SIGSTOP for the hold (longer than the election timeout), then SIGCONT.
    Pause(Who),
    Partition(Partition),
    /// Every link from and to a node through the proxy.
    Proxy(u64, ProxyFault),
    /// Leadership transfer through the API.
    Transfer(u64),
    /// Remove a node through the API, wipe it, join it again as a new voter.
    Membership(u64),
    /// Restart a node under libfaketime: clock offset and rate.
    ClockSkew {
        node: u64,
        offset_s: i64,
        rate_percent: u64,
    },
    /// Fill a node's data dir (a tmpfs) until writes fail with ENOSPC.
    DiskFull(u64),
    /// Stop a node, flip bytes in its RocksDB WAL or (`snapshot`) in its newest snapshot file
    /// (the WAL when it has none): it must refuse the damaged store and repair it from the
    /// cluster by itself (else it is removed and joined again by hand, a problem unless a
    /// voter was away).
    Corrupt {
        node: u64,
        snapshot: bool,
    },
    /// SIGKILL a node, then cut its largest RocksDB WAL file short by this many bytes (an
    /// older file when several are kept: a hole in the middle of the history; `None`: delete
    /// every WAL file); restart it after the hold. It must start, report the loss and
    /// recover by itself from the leader (no remove-and-rejoin).
    LoseWal {
        node: u64,
        cut: Option<u64>,
    },
    /// Stall a node's fsyncs for the hold (the leader's when `None`): a leader must give way
    /// to a node with a healthy disk.
    StallDisk(Option<u64>),
    /// Make a node's fsyncs fail with EIO for the hold (the leader's when `None`): it must
    /// acknowledge nothing it could not sync, and serve again after the disk heals (restarted
    /// if it stopped).
    DiskErrors(Option<u64>),
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fault::Kill(who) => write!(f, "kill -9 {who}, restart"),
            Fault::Pause(who) => write!(f, "SIGSTOP {who}, SIGCONT"),
            Fault::Partition(p) => match p {
                Partition::IsolateLeader => write!(f, "partition: isolate the leader"),
                Partition::Split(m) => write!(f, "partition: minority {m:?} | majority"),
                Partition::Ring(r) => write!(f, "partition: ring {r:?}"),
                Partition::Bridge { left, bridge, right } => {
                    write!(f, "partition: bridge {left:?} - {bridge} - {right:?}")
                }
                Partition::OneWayOut(w) => {
                    write!(f, "partition: one-way, nothing from {w} reaches the others")
                }
                Partition::OneWayIn(w) => write!(f, "partition: one-way, nothing reaches {w}"),
            },
            Fault::Proxy(node, p) => match p {
                ProxyFault::Delay(ms) => write!(f, "slow links of node {node}: +{ms} ms each way (proxy)"),
                ProxyFault::Stall => write!(f, "links of node {node} stall (proxy: loss)"),
                ProxyFault::Drip => write!(f, "links of node {node} drip 64 B / 50 ms (proxy)"),
                ProxyFault::Reset => write!(f, "connections of node {node} reset (proxy)"),
            },
            Fault::Transfer(to) => write!(f, "transfer leadership to node {to}"),
            Fault::Membership(n) => write!(f, "remove node {n} and join it again"),
            Fault::ClockSkew { node, offset_s, rate_percent } => {
                write!(f, "clock of node {node}: {offset_s:+} s, rate {rate_percent}% (libfaketime)")
            }
            Fault::DiskFull(n) => write!(f, "disk full on node {n}"),
            Fault::StallDisk(None) => write!(f, "stall the leader's fsyncs"),
            Fault::StallDisk(Some(n)) => write!(f, "stall node {n}'s fsyncs"),
            Fault::DiskErrors(None) => write!(f, "fail the leader's fsyncs with EIO"),
            Fault::DiskErrors(Some(n)) => write!(f, "fail node {n}'s fsyncs with EIO"),
            Fault::Corrupt { node, snapshot } => {
                let what = if *snapshot { "snapshot file" } else { "WAL" };
                write!(f, "corrupt node {node}'s {what} offline (expect self-repair from the cluster)")
            }
            Fault::LoseWal { node, cut: Some(bytes) } => {
                write!(
                    f,
                    "kill -9 node {node}, cut {bytes} bytes off its WAL, restart (expect self-recovery)"
                )
            }
            Fault::LoseWal { node, cut: None } => {
                write!(f, "kill -9 node {node}, delete its WAL, restart (expect self-recovery)")
            }
        }
    }
}

/// One step of the schedule.
#[derive(Debug, Clone)]
pub struct Step {
    /// When it starts, from the start of the workload.
    pub at: Duration,
    pub fault: Fault,
    /// How long the fault lasts before it is healed.
    pub hold: Duration,
}

/// Between the restarts of the nodes one fault killed.
const RESTART_GAP: Duration = Duration::from_millis(400);

/// How long a node restarted on damaged or lost data has to serve again (know a leader and
/// miss nothing) by itself; past it the run fails.
const SERVING_AGAIN_WITHIN: Duration = Duration::from_secs(60);

/// What following a restarted node found: how long until it served again (`None`: not within
/// [`SERVING_AGAIN_WITHIN`]) and the index it reported recovering to, if it did.
struct Serving {
    after: Option<Duration>,
    recovering_to: Option<u64>,
}

/// The kinds of faults, as `--faults` names them.
pub const KINDS: &[&str] = &[
    "kill",
    "pause",
    "partition",
    "transfer",
    "proxy",
    "membership",
    "clock",
    "disk",
    "corrupt",
    "lose",
    "stall",
    "eio",
];

fn pick(rng: &mut SeededRng, ids: &[u64]) -> u64 {
    ids[rng.range(0, ids.len() as u64) as usize]
}

fn shuffled(rng: &mut SeededRng, ids: &[u64]) -> Vec<u64> {
    let mut v = ids.to_vec();
    for i in (1..v.len()).rev() {
        let j = rng.range(0, i as u64 + 1) as usize;
        v.swap(i, j);
    }
    v
}

fn who_one(rng: &mut SeededRng, ids: &[u64]) -> Who {
    if rng.range(0, 2) == 0 {
        Who::Leader
    } else {
        Who::Node(pick(rng, ids))
    }
}

/// The seeded schedule for a run of `duration` over `ids`, with the fault kinds `kinds`.
pub fn schedule(seed: u64, duration: Duration, ids: &[u64], kinds: &[&str]) -> Vec<Step> {
    let mut rng = SeededRng::new(seed ^ 0x006e_656d_6573_6973);
    let n = ids.len();
    let mut steps = Vec::new();
    let mut t = Duration::from_secs(3);
    let end = duration.saturating_sub(Duration::from_secs(2));
    if kinds.is_empty() {
        return steps;
    }
    while t < end {
        let kind = kinds[rng.range(0, kinds.len() as u64) as usize];
        let hold = Duration::from_millis(1500 + rng.range(0, 4500));
        let fault = match kind {
            "kill" => Fault::Kill(match rng.range(0, 4) {
                0 => Who::Node(pick(&mut rng, ids)),
                1 => Who::Leader,
                2 => Who::Nodes(shuffled(&mut rng, ids)[..n / 2 + 1].to_vec()),
                _ => Who::All,
            }),
            "pause" => {
                // Longer than the election timeout (300 ms at most by default), and often
                // shorter than a client's timeout, so that requests queued at the paused node
                // are answered right after SIGCONT.
                steps.push(Step {
                    at: t,
                    fault: Fault::Pause(who_one(&mut rng, ids)),
                    hold: Duration::from_millis(400 + rng.range(0, 2600)),
                });
                t += Duration::from_millis(3000 + rng.range(0, 2000));
                continue;
            }
            "partition" if n >= 2 => Fault::Partition(match rng.range(0, 5) {
                0 => Partition::IsolateLeader,
                1 => {
                    let minority = ((n - 1) / 2).max(1);
                    Partition::Split(shuffled(&mut rng, ids)[..minority].to_vec())
                }
                2 if n >= 5 => Partition::Ring(shuffled(&mut rng, ids)),
                2 | 3 if n >= 3 => {
                    let order = shuffled(&mut rng, ids);
                    let half = (n - 1) / 2;
                    Partition::Bridge {
                        left: order[..half].to_vec(),
                        bridge: order[half],
                        right: order[half + 1..].to_vec(),
                    }
                }
                _ => {
                    let who = who_one(&mut rng, ids);
                    if rng.range(0, 2) == 0 {
                        Partition::OneWayOut(who)
                    } else {
                        Partition::OneWayIn(who)
                    }
                }
            }),
            "transfer" => Fault::Transfer(pick(&mut rng, ids)),
            "proxy" => {
                let node = pick(&mut rng, ids);
                Fault::Proxy(
                    node,
                    match rng.range(0, 4) {
                        0 => ProxyFault::Delay(50 + rng.range(0, 450)),
                        1 => ProxyFault::Stall,
                        2 => ProxyFault::Drip,
                        _ => ProxyFault::Reset,
                    },
                )
            }
            "membership" => Fault::Membership(pick(&mut rng, ids)),
            "clock" => Fault::ClockSkew {
                node: pick(&mut rng, ids),
                offset_s: rng.range(0, 600) as i64 - 300,
                // Within the drift the protocol assumes (max_clock_drift_percent = 10).
                rate_percent: 95 + rng.range(0, 11),
            },
            "disk" => Fault::DiskFull(pick(&mut rng, ids)),
            "stall" => Fault::StallDisk((rng.range(0, 3) == 0).then(|| pick(&mut rng, ids))),
            "eio" => Fault::DiskErrors((rng.range(0, 2) == 0).then(|| pick(&mut rng, ids))),
            "corrupt" => Fault::Corrupt { node: pick(&mut rng, ids), snapshot: rng.range(0, 2) == 0 },
            "lose" => Fault::LoseWal {
                node: pick(&mut rng, ids),
                cut: match rng.range(0, 3) {
                    0 => None,
                    1 => Some(100),
                    _ => Some(3_000 + rng.range(0, 60_000)),
                },
            },
            _ => continue,
        };
        steps.push(Step { at: t, fault, hold });
        t += hold + Duration::from_millis(1000 + rng.range(0, 2000));
    }
    steps
}

impl Env {
    fn resolve(&self, who: &Who, leader: Option<u64>) -> Vec<u64> {
        match who {
            Who::Node(id) => vec![*id],
            Who::Leader => leader.map(|l| vec![l]).unwrap_or_default(),
            Who::Nodes(ids) => ids.clone(),
            Who::All => self.nodes.ids(),
        }
    }

    /// Applies a fault; returns what it hit, for the log, and how to heal it.
    pub async fn apply(&mut self, fault: &Fault) -> Result<(String, Heal)> {
        let leader = self.leader().await;
        let ids = self.nodes.ids();
        Ok(match fault {
            Fault::Kill(who) => {
                let mut victims = self.resolve(who, leader);
                for &id in &victims {
                    self.nodes.kill(id)?;
                }
                // Restarted in this order (see `Heal::Restart`): the old leader last, so that
                // the others may elect a leader among themselves first, with the logs they
                // really kept.
                victims.sort_by_key(|&id| Some(id) == leader);
                (format!("killed {victims:?}"), Heal::Restart(victims))
            }
            Fault::Pause(who) => {
                let victims = self.resolve(who, leader);
                for &id in &victims {
                    self.nodes.pause(id)?;
                }
                (format!("paused {victims:?}"), Heal::Resume(victims))
            }
            Fault::Partition(p) => {
                let mut cuts = BTreeSet::new();
                let both = |cuts: &mut BTreeSet<(u64, u64)>, a: &[u64], b: &[u64]| {
                    for &x in a {
                        for &y in b {
                            if x != y {
                                cuts.insert((x, y));
                                cuts.insert((y, x));
                            }
                        }
                    }
                };
                let others = |x: &[u64]| ids.iter().copied().filter(|i| !x.contains(i)).collect::<Vec<_>>();
                match p {
                    Partition::IsolateLeader => {
                        let l: Vec<u64> = leader.into_iter().collect();
                        both(&mut cuts, &l, &others(&l));
                    }
                    Partition::Split(minority) => both(&mut cuts, minority, &others(minority)),
                    Partition::Ring(order) => {
                        let n = order.len();
                        for (a, &x) in order.iter().enumerate() {
                            for (b, &y) in order.iter().enumerate() {
                                let d = a.abs_diff(b);
                                if x != y && d != 1 && d != n - 1 {
                                    cuts.insert((x, y));
                                }
                            }
                        }
                    }
                    Partition::Bridge { left, right, .. } => both(&mut cuts, left, right),
                    Partition::OneWayOut(who) => {
                        for x in self.resolve(who, leader) {
                            for &y in &ids {
                                if x != y {
                                    cuts.insert((x, y));
                                }
                            }
                        }
                    }
                    Partition::OneWayIn(who) => {
                        for x in self.resolve(who, leader) {
                            for &y in &ids {
                                if x != y {
                                    cuts.insert((y, x));
                                }
                            }
                        }
                    }
                }
                self.set_cuts(&cuts)?;
                (format!("cut {cuts:?}"), Heal::Partitions)
            }
            Fault::Proxy(node, p) => {
                let Some(proxies) = &self.proxies else {
                    return Ok(("skipped: no proxy (QUIC)".into(), Heal::Nothing));
                };
                let mode = match p {
                    ProxyFault::Delay(ms) => LinkMode::Delay(Duration::from_millis(*ms)),
                    ProxyFault::Stall => LinkMode::Stall,
                    ProxyFault::Drip => LinkMode::Drip { bytes: 64 },
                    ProxyFault::Reset => LinkMode::Reset,
                };
                for &other in &ids {
                    if other != *node {
                        proxies.set(*node, other, mode);
                        proxies.set(other, *node, mode);
                    }
                }
                (format!("links of node {node}: {mode:?}"), Heal::Proxies)
            }
            Fault::Transfer(to) => {
                let target = if leader == Some(*to) {
                    ids.iter().copied().find(|i| Some(*i) != leader).unwrap_or(*to)
                } else {
                    *to
                };
                let result =
                    tokio::time::timeout(Duration::from_secs(5), self.admin.transfer_leader(Some(target)))
                        .await;
                let what = match result {
                    Ok(Ok(view)) => format!("leader {leader:?} -> {:?}", view.leader),
                    Ok(Err(e)) => format!("transfer to {target} failed: {e}"),
                    Err(_) => format!("transfer to {target} timed out"),
                };
                (what, Heal::Nothing)
            }
            Fault::Membership(node) => {
                self.rejoin(*node).await?;
                (format!("node {node} removed, wiped and joined again"), Heal::Nothing)
            }
            Fault::ClockSkew { node, offset_s, rate_percent } => {
                if !self.have_faketime {
                    return Ok(("skipped: libfaketime is not installed".into(), Heal::Nothing));
                }
                let spec = format!("{offset_s:+}s x{}.{:02}", rate_percent / 100, rate_percent % 100);
                self.nodes.kill(*node)?;
                self.nodes.nodes.get_mut(node).context("no such node")?.faketime = Some(spec.clone());
                self.nodes.start(*node)?;
                (format!("node {node} restarted with FAKETIME={spec:?}"), Heal::Clock(*node))
            }
            Fault::DiskFull(node) => {
                if !self.nodes.has_tmpfs() {
                    return Ok((
                        "skipped: data dirs are not size-limited (root mode only)".into(),
                        Heal::Nothing,
                    ));
                }
                let written = self.fill_disk(*node)?;
                (format!("node {node}'s tmpfs filled ({written} MiB of ballast)"), Heal::Disk(*node))
            }
            Fault::Corrupt { node, snapshot } => {
                let what = self.corrupt_and_repair(*node, *snapshot).await?;
                (what, Heal::Nothing)
            }
            Fault::LoseWal { node, cut } => {
                self.nodes.kill(*node)?;
                let what = self.damage_wal(*node, *cut)?;
                (what, Heal::Lost(*node))
            }
            Fault::StallDisk(who) => {
                if self.nodes.stall_shim.is_none() {
                    return Ok(("skipped: the stalled-disk shim was not built".into(), Heal::Nothing));
                }
                let Some(node) = who.or(leader) else {
                    return Ok(("skipped: no leader to stall".into(), Heal::Nothing));
                };
                std::fs::write(self.nodes.stall_flag(node), b"")?;
                let role = if Some(node) == leader { "the leader" } else { "a follower" };
                (
                    format!("node {node} ({role})'s fsyncs wait"),
                    Heal::Stall { node, was_leader: Some(node) == leader },
                )
            }
            Fault::DiskErrors(who) => {
                if self.nodes.stall_shim.is_none() {
                    return Ok(("skipped: the failing-disk shim was not built".into(), Heal::Nothing));
                }
                let Some(node) = who.or(leader) else {
                    return Ok(("skipped: no leader whose disk to fail".into(), Heal::Nothing));
                };
                std::fs::write(self.nodes.eio_flag(node), b"")?;
                let role = if Some(node) == leader { "the leader" } else { "a follower" };
                (format!("node {node} ({role})'s fsyncs fail with EIO"), Heal::DiskErrors(node))
            }
        })
    }

    /// The RocksDB write-ahead log files in `node`'s data dir, largest last.
    fn wal_files(&self, node: u64) -> Result<Vec<(std::path::PathBuf, u64)>> {
        let dir = self.nodes.nodes.get(&node).context("no such node")?.spec.data_dir.clone();
        let mut wals = Vec::new();
        for entry in std::fs::read_dir(&dir)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().to_string();
            if name.ends_with(".log") && name.trim_end_matches(".log").chars().all(|c| c.is_ascii_digit()) {
                wals.push((entry.path(), entry.metadata()?.len()));
            }
        }
        // Oldest first: RocksDB numbers its files in order (zero-padded), and the newest is
        // the live one (older ones may be kept to be recycled).
        wals.sort();
        Ok(wals)
    }

    /// Cuts the newest (live) WAL of a stopped node short, or deletes every WAL.
    fn damage_wal(&mut self, node: u64, cut: Option<u64>) -> Result<String> {
        let wals = self.wal_files(node)?;
        match cut {
            None => {
                let bytes: u64 = wals.iter().map(|(_, len)| len).sum();
                for (path, _) in &wals {
                    std::fs::remove_file(path)?;
                }
                Ok(format!("node {node}: deleted {} WAL file(s), {bytes} bytes", wals.len()))
            }
            Some(cut) => {
                let Some((path, len)) = wals.last() else {
                    return Ok(format!("node {node}: no WAL to cut"));
                };
                let keep = len.saturating_sub(cut);
                std::fs::OpenOptions::new().write(true).open(path)?.set_len(keep)?;
                Ok(format!("node {node}: WAL {} cut from {len} to {keep} bytes", path.display()))
            }
        }
    }

    /// Follows a node just started until it serves again: it knows a leader and misses no
    /// data. `Err` with its exit status when the process exited first.
    async fn until_serving(&mut self, node: u64) -> Result<Serving, std::process::ExitStatus> {
        let started = tokio::time::Instant::now();
        let mut recovering_to = None;
        loop {
            self.nodes.poll(node)?;
            if let Some(status) = self.status_of(node).await {
                recovering_to = recovering_to.or(status.recovering_to_index);
                if status.recovering_to_index.is_none() && status.leader.is_some() {
                    return Ok(Serving { after: Some(started.elapsed()), recovering_to });
                }
            }
            if started.elapsed() > SERVING_AGAIN_WITHIN {
                return Ok(Serving { after: None, recovering_to });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Restarts a node whose WAL was damaged and checks that it serves again by itself (it must
    /// not refuse, nor stay recovering): notes whether it reported lost data, and how long it
    /// took.
    async fn restart_after_loss(&mut self, node: u64) -> Result<()> {
        self.nodes.start(node)?;
        match self.until_serving(node).await {
            Err(status) => {
                let tail = self.nodes.log_tail(node, 3);
                self.problem(format!(
                    "node {node} exited ({status}) after losing part of its WAL instead of recovering: {}",
                    shorten(tail.trim(), 300)
                ));
                self.nodes.start(node)?;
            }
            Ok(Serving { after: None, recovering_to }) => self.problem(format!(
                "node {node} did not serve again within {} s of its restart after the WAL damage (recovering to {recovering_to:?})",
                SERVING_AGAIN_WITHIN.as_secs()
            )),
            Ok(Serving { after: Some(after), recovering_to: Some(index) }) => self.note(format!(
                "node {node} reported lost data up to index {index}, recovered it and served again {:.1} s after its restart",
                after.as_secs_f64()
            )),
            Ok(Serving { after: Some(after), recovering_to: None }) => self.note(format!(
                "node {node} restarted after the WAL damage and served again after {:.1} s; its status never showed missing data (nothing acknowledged was cut, or it recovered before the first poll)",
                after.as_secs_f64()
            )),
        }
        Ok(())
    }

    pub async fn heal(&mut self, heal: Heal) -> Result<()> {
        match heal {
            Heal::Nothing => {}
            Heal::Restart(ids) => {
                for (i, id) in ids.into_iter().enumerate() {
                    if i > 0 {
                        // Machines come back one by one: a gap longer than the election
                        // timeout (300 ms at most), so an election can happen in between.
                        tokio::time::sleep(RESTART_GAP).await;
                    }
                    if !self.nodes.is_running(id) {
                        self.nodes.start(id)?;
                    }
                }
            }
            Heal::Resume(ids) => {
                for id in ids {
                    self.nodes.resume(id)?;
                }
            }
            Heal::Partitions => self.set_cuts(&BTreeSet::new())?,
            Heal::Proxies => {
                if let Some(p) = &self.proxies {
                    p.heal();
                }
            }
            Heal::Clock(node) => {
                self.nodes.kill(node)?;
                if let Some(n) = self.nodes.nodes.get_mut(&node) {
                    n.faketime = None;
                }
                self.nodes.start(node)?;
            }
            Heal::Lost(node) => self.restart_after_loss(node).await?,
            Heal::DiskErrors(node) => {
                std::fs::remove_file(self.nodes.eio_flag(node))?;
                // A node whose sync failed stops and exits 1 (it acknowledges nothing it could
                // not sync, and what the disk holds is unknown until the store is opened
                // again): its supervisor's restart, done here now that the disk works.
                let outcome = match (self.nodes.poll(node), self.status_of(node).await) {
                    (Err(status), _) => format!("exited ({status})"),
                    (Ok(_), Some(s)) if s.fatal.is_none() => "kept running".to_owned(),
                    (Ok(_), Some(s)) => format!("stopped ({})", s.fatal.unwrap_or_default()),
                    (Ok(_), None) => "did not answer".to_owned(),
                };
                if outcome != "kept running" {
                    self.nodes.kill(node)?;
                    self.nodes.start(node)?;
                }
                self.note(format!(
                    "node {node} with failing fsyncs {outcome}{}",
                    if outcome == "kept running" { "" } else { "; restarted" }
                ));
            }
            Heal::Stall { node, was_leader } => {
                if was_leader {
                    let now = self.leader().await;
                    self.note(match now {
                        Some(l) if l != node => format!("node {node}'s fsyncs stalled while it led: node {l} took over"),
                        Some(_) => format!("node {node}'s fsyncs stalled while it led: it still leads (the stall was shorter than the bound)"),
                        None => format!("node {node}'s fsyncs stalled while it led: no leader at the end of the stall"),
                    });
                }
                std::fs::remove_file(self.nodes.stall_flag(node))?;
            }
            Heal::Disk(node) => {
                let ballast = self.ballast_path(node)?;
                let _ = std::fs::remove_file(&ballast);
                // A node that hit a full disk stops (it acknowledges nothing it could not
                // persist): restart it now that there is space.
                let fatal = match self.status_of(node).await {
                    Some(s) => s.fatal.is_some(),
                    None => true,
                };
                if fatal {
                    self.nodes.kill(node)?;
                    self.nodes.start(node)?;
                    self.note(format!("node {node} stopped on the full disk and was restarted"));
                }
            }
        }
        Ok(())
    }

    fn ballast_path(&self, node: u64) -> Result<std::path::PathBuf> {
        Ok(self.nodes.nodes.get(&node).context("no such node")?.spec.data_dir.join("chaos-ballast"))
    }

    fn fill_disk(&mut self, node: u64) -> Result<u64> {
        use std::io::Write;
        let path = self.ballast_path(node)?;
        let mut file = std::fs::File::create(&path)?;
        let chunk = vec![0u8; 1 << 20];
        let mut mib = 0;
        while file.write_all(&chunk).is_ok() {
            mib += 1;
        }
        let _ = file.sync_all();
        Ok(mib)
    }

    /// Removes `node` from the cluster through the API, wipes it and starts it again with
    /// `join`; waits until it is a voter again.
    pub async fn rejoin(&mut self, node: u64) -> Result<()> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            match tokio::time::timeout(Duration::from_secs(5), self.admin.remove_member(node, false)).await {
                Ok(Ok(_)) => break,
                Ok(Err(e)) if e.api_code() == Some(raft_client::api::ErrorCode::NotFound) => break,
                Ok(Err(e)) if tokio::time::Instant::now() > deadline => bail!("removing node {node}: {e}"),
                Err(_) if tokio::time::Instant::now() > deadline => bail!("removing node {node}: timed out"),
                _ => tokio::time::sleep(Duration::from_millis(300)).await,
            }
        }
        // The removal is complete on the node that answered; wait until the leader's view no
        // longer lists it.
        self.wait_members(|members| !members.iter().any(|m| m.id == node), Duration::from_secs(20)).await?;
        self.nodes.kill(node)?;
        self.nodes.wipe_data(node)?;
        // A node started with `join` while the cluster has no leader (right after removing
        // the leader) was seen to give up asking to be added (`no_leader`) and stay out for a
        // minute: wait for a leader first.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while self.leader().await.is_none_or(|l| l == node) {
            if tokio::time::Instant::now() > deadline {
                bail!("no leader after removing node {node}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let through: Vec<String> =
            self.nodes.ids().into_iter().filter(|&i| i != node).map(|i| self.endpoint(i)).collect();
        self.nodes.set_join_config(node, &through)?;
        self.nodes.start(node)?;
        self.wait_members(
            |members| members.iter().any(|m| m.id == node && m.role == MemberRole::Voter),
            Duration::from_secs(45),
        )
        .await
        .with_context(|| format!("node {node} did not become a voter again"))
    }

    /// Waits until the leader's view of the members (not any node's: a removed or lagging
    /// node's view is stale) satisfies `ok` and is not joint.
    async fn wait_members(
        &self,
        ok: impl Fn(&[raft_client::api::MemberView]) -> bool,
        within: Duration,
    ) -> Result<()> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Some(leader) = self.leader().await {
                if let Some(status) = self.status_of(leader).await {
                    if !status.joint && ok(&status.members) {
                        return Ok(());
                    }
                }
            }
            if tokio::time::Instant::now() > deadline {
                bail!("membership did not reach the expected state within {within:?}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The largest file of `dir` whose name `wanted` accepts, with its length.
    fn largest_file(
        dir: &std::path::Path,
        wanted: impl Fn(&str) -> bool,
    ) -> Result<Option<(std::path::PathBuf, u64)>> {
        let mut found: Option<(std::path::PathBuf, u64)> = None;
        let Ok(entries) = std::fs::read_dir(dir) else { return Ok(None) };
        for entry in entries {
            let entry = entry?;
            let len = entry.metadata()?.len();
            if wanted(&entry.file_name().to_string_lossy()) && found.as_ref().is_none_or(|(_, l)| len > *l) {
                found = Some((entry.path(), len));
            }
        }
        Ok(found)
    }

    async fn corrupt_and_repair(&mut self, node: u64, snapshot: bool) -> Result<String> {
        self.nodes.kill(node)?;
        let dir = self.nodes.nodes.get(&node).context("no such node")?.spec.data_dir.clone();
        // The snapshot files live in `snapshots/` (`g<group>-<index>-<term>.snap`).
        let snapshot_file = if snapshot {
            Self::largest_file(&dir.join("snapshots"), |name| name.ends_with(".snap"))?
        } else {
            None
        };
        // A WAL of a few records only may hold nothing the node needs; any snapshot file does.
        // The newest WAL is the live one (older ones may be kept to be recycled, and a
        // recycled one holds its new records from the start, an older file's after them).
        let in_snapshot = snapshot_file.as_ref().is_some_and(|(_, len)| *len >= 64);
        let target = match snapshot_file.filter(|(_, len)| *len >= 64) {
            Some(file) => Some(file),
            None => self.wal_files(node)?.pop().filter(|(_, len)| *len >= 4096),
        };
        let Some((path, len)) = target else {
            self.nodes.start(node)?;
            return Ok(format!(
                "node {node}: no WAL or snapshot file of 4 KiB or more to corrupt; restarted"
            ));
        };
        let mut bytes = std::fs::read(&path)?;
        // In a WAL, at its start too: a recycled file holds its new records from the start and
        // an older file's after them, so a file reused shortly before the kill may have written
        // fewer than 2 KiB (CI, seed 1: every flip landed in stale records, which replay
        // rightly ignores, and the run failed on "did not notice"). 64 is inside the first
        // record of any file that holds one.
        let places = if in_snapshot { [len / 4, len / 2, 3 * len / 4] } else { [64, 2_048, len / 4] };
        for at in places {
            for b in &mut bytes[at as usize..(at as usize + 8).min(len as usize)] {
                *b ^= 0x5a;
            }
        }
        std::fs::write(&path, &bytes)?;
        let what = path.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
        const REPAIRED: &str = "the data dir is damaged: moved aside";
        // raft-storage-rocks' line for a loss found at open (the status may show the recovery
        // over before the first poll).
        const LOST: &str = "the store lost data it had made durable";
        let before = self.nodes.log_tail(node, usize::MAX);
        let (repairs_before, losses_before) =
            (before.matches(REPAIRED).count(), before.matches(LOST).count());
        // The node must refuse its damaged store and repair it from the cluster by itself
        // (moving the damaged files aside). When the cluster cannot say what it had (a voter
        // away or itself recovering) it refuses to start, and the nemesis starts it again as
        // a supervisor would, until it repairs itself; by hand only past the deadline.
        let started = tokio::time::Instant::now();
        let mut refusals = 0;
        let outcome = loop {
            // Only what this start logged (a node's log file grows across its starts).
            let logged_before = self.nodes.log_tail(node, usize::MAX).len();
            self.nodes.start(node)?;
            match self.until_serving(node).await {
                Err(status) => {
                    let log = self.nodes.log_tail(node, usize::MAX);
                    let this_start = log.get(logged_before..).unwrap_or_default();
                    // Refusals while the cluster cannot say what the node had (a voter away or
                    // recovering), before or after the damaged files were moved aside; not a
                    // local failure to move them.
                    let refused_for_now = !this_start.contains("cannot finish moving")
                        && (this_start.contains("cannot be repaired from the cluster")
                            || this_start.contains("Start it again once every other voter is reachable"));
                    if refused_for_now && started.elapsed() < SERVING_AGAIN_WITHIN {
                        refusals += 1;
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        continue;
                    }
                    break Err(status);
                }
                Ok(serving) => break Ok(serving),
            }
        };
        let took = started.elapsed().as_secs_f64();
        let retried = match refusals {
            0 => String::new(),
            n => format!(" (refused {n} time(s) first: the cluster could not say what it had yet)"),
        };
        let log = self.nodes.log_tail(node, usize::MAX);
        let repaired = log.matches(REPAIRED).count() > repairs_before;
        let found_lost = log.matches(LOST).count() > losses_before;
        match outcome {
            Ok(Serving { after: None, recovering_to }) => {
                self.problem(format!(
                    "node {node} did not serve again within {} s of its restart on its corrupted {what} (repaired: {repaired}, recovering to {recovering_to:?})",
                    SERVING_AGAIN_WITHIN.as_secs()
                ));
                Ok(format!("node {node} did NOT serve again after its corrupted {what}"))
            }
            Ok(_) if repaired => {
                // The damaged copy is kept by the node; the tmpfs is small.
                let dir = self.nodes.nodes.get(&node).context("no such node")?.spec.data_dir.clone();
                for entry in std::fs::read_dir(&dir)? {
                    let entry = entry?;
                    if entry.file_name().to_string_lossy().starts_with("damaged-") {
                        let _ = std::fs::remove_dir_all(entry.path());
                    }
                }
                Ok(format!(
                    "node {node} refused its corrupted {what}, repaired itself from the cluster and served again after {took:.1} s{retried}"
                ))
            }
            // Replay of a recycled WAL stops at the damage; the durability record finds the
            // acknowledged entries that dropped, and the node recovers them from the cluster.
            Ok(serving) if serving.recovering_to.is_some() || found_lost => Ok(format!(
                "node {node} reported the entries after the damage in {what} lost, recovered them from the cluster and served again after {took:.1} s"
            )),
            Ok(_) => {
                self.problem(format!(
                    "node {node} started on a file with flipped bytes ({} at 3 places) without noticing",
                    path.display()
                ));
                Ok(format!("node {node} did NOT notice its corrupted {what}"))
            }
            Err(status) => {
                let reason = log.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("").to_owned();
                self.problem(format!(
                    "node {node} exited ({status}) on its corrupted {what} instead of repairing it within {} s{retried}: {}",
                    SERVING_AGAIN_WITHIN.as_secs(),
                    shorten(&reason, 200)
                ));
                // The run goes on: by hand, as an operator would (a problem already).
                self.rejoin(node).await.with_context(|| format!("repairing node {node}"))?;
                Ok(format!("node {node} refused to start ({status}); rejoined by hand"))
            }
        }
    }

    /// The leader with the highest term among the nodes that answer quickly.
    pub async fn leader(&self) -> Option<u64> {
        let mut best: Option<(u64, u64)> = None;
        for (_, status) in self.status_client.statuses().await {
            if let Ok(s) = status {
                if s.role == RoleView::Leader && best.is_none_or(|(term, _)| s.term > term) {
                    best = Some((s.term, s.id));
                }
            }
        }
        best.map(|(_, id)| id)
    }
}

pub(super) fn shorten(s: &str, max: usize) -> String {
    if s.len() <= max {
        s.to_owned()
    } else {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}...", &s[..end])
    }
}

/// What undoes a fault.
#[derive(Debug)]
pub enum Heal {
    Nothing,
    Restart(Vec<u64>),
    Resume(Vec<u64>),
    Partitions,
    Proxies,
    Clock(u64),
    Disk(u64),
    /// Restart a node whose WAL was damaged; it must recover by itself.
    Lost(u64),
    /// Let a node's fsyncs succeed again (restarting it if it stopped).
    DiskErrors(u64),
    /// Let a node's fsyncs go on (saying whether a stalled leader gave way first).
    Stall {
        node: u64,
        was_leader: bool,
    },
}
